//! The log of one run: every line goes to tracing with the `job`, `run_id` and `server`
//! fields (journald turns them into `JOB=`, `RUN_ID=`, `SERVER=`), and the last lines are
//! kept for the monitoring ping body.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// At most this much of the log is kept for the ping body (healthchecks' default limit is
/// 100 kB; the client cuts further to the server's announced limit).
const TAIL_BYTES: usize = 100_000;

#[derive(Clone)]
pub struct RunLog {
    pub job: String,
    pub run_id: String,
    pub server: String,
    lines: Arc<Mutex<(VecDeque<String>, usize)>>,
}

impl RunLog {
    pub fn new(job: &str, run_id: &str, server: &str) -> Self {
        RunLog {
            job: job.to_owned(),
            run_id: run_id.to_owned(),
            server: server.to_owned(),
            lines: Arc::default(),
        }
    }

    fn keep(&self, level: &str, msg: &str) {
        let line = format!(
            "{} {level} {msg}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
        let mut g = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        g.1 += line.len() + 1;
        g.0.push_back(line);
        while g.1 > TAIL_BYTES && g.0.len() > 1 {
            if let Some(old) = g.0.pop_front() {
                g.1 -= old.len() + 1;
            }
        }
    }

    pub fn info(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        tracing::info!(job = %self.job, run_id = %self.run_id, server = %self.server, "{msg}");
        self.keep("INFO", msg);
    }

    pub fn warn(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        tracing::warn!(job = %self.job, run_id = %self.run_id, server = %self.server, "{msg}");
        self.keep("WARN", msg);
    }

    pub fn error(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        tracing::error!(job = %self.job, run_id = %self.run_id, server = %self.server, "{msg}");
        self.keep("ERROR", msg);
    }

    /// The kept lines, oldest first.
    pub fn tail(&self) -> String {
        let g = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(g.1);
        for l in &g.0 {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}
