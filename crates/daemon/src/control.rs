//! The control socket: `burrow status` and `burrow run JOB` talk to a running daemon here.
//!
//! One JSON object per line each way. The socket is owner-only (0600 in a 0700 directory):
//! whoever can use it can start runs.

use std::path::PathBuf;

use burrow_core::RunSummary;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// `$RUNTIME_DIRECTORY/control.sock` (systemd's `RuntimeDirectory=burrow`), else
/// `/run/burrow/control.sock`; `BURROW_SOCKET` overrides both (tests, several daemons).
pub fn socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BURROW_SOCKET") {
        return PathBuf::from(p);
    }
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .map(|d| {
            // systemd may list several directories separated by ':'; ours is the first.
            let s = d.to_string_lossy().into_owned();
            PathBuf::from(s.split(':').next().unwrap_or("/run/burrow"))
        })
        .unwrap_or_else(|| PathBuf::from("/run/burrow"));
    dir.join("control.sock")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Run { job: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub enum Reply {
    Status { status: serde_json::Value },
    Finished { summary: Box<RunSummary> },
    Error { message: String },
}

pub struct Client {
    stream: UnixStream,
}

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the daemon at {}: {source}", path.display())]
    Reach {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot send to the daemon: {0}")]
    Send(std::io::Error),
    #[error("no answer from the daemon: {0}")]
    NoAnswer(std::io::Error),
    #[error("the daemon closed the connection (shutting down?)")]
    Closed,
    #[error("bad answer from the daemon: {0}")]
    BadAnswer(serde_json::Error),
    #[error("unexpected answer from the daemon")]
    Unexpected,
    /// The daemon refused (no such job, shutting down): its own words.
    #[error("{0}")]
    Refused(String),
}

impl Client {
    /// Connects to the daemon; `Ok(None)` when no daemon is listening.
    pub async fn connect() -> Result<Option<Client>, ControlError> {
        let path = socket_path();
        match UnixStream::connect(&path).await {
            Ok(stream) => Ok(Some(Client { stream })),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(source) => Err(ControlError::Reach { path, source }),
        }
    }

    async fn call(mut self, req: &Request) -> Result<Reply, ControlError> {
        let mut line = serde_json::to_string(req).map_err(ControlError::BadAnswer)?;
        line.push('\n');
        self.stream
            .write_all(line.as_bytes())
            .await
            .map_err(ControlError::Send)?;
        let mut reader = BufReader::new(self.stream);
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .await
            .map_err(ControlError::NoAnswer)?;
        if answer.is_empty() {
            return Err(ControlError::Closed);
        }
        serde_json::from_str(&answer).map_err(ControlError::BadAnswer)
    }

    /// Asks the daemon to run `job` (queued behind a running job) and waits for the result.
    pub async fn run(self, job: &str) -> Result<RunSummary, ControlError> {
        match self
            .call(&Request::Run {
                job: job.to_owned(),
            })
            .await?
        {
            Reply::Finished { summary } => Ok(*summary),
            Reply::Error { message } => Err(ControlError::Refused(message)),
            Reply::Status { .. } => Err(ControlError::Unexpected),
        }
    }

    pub async fn status(self) -> Result<serde_json::Value, ControlError> {
        match self.call(&Request::Status).await? {
            Reply::Status { status } => Ok(status),
            Reply::Error { message } => Err(ControlError::Refused(message)),
            Reply::Finished { .. } => Err(ControlError::Unexpected),
        }
    }
}

/// `burrow status` for people.
pub fn render_status(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let d = &v["daemon"];
    if d["running"].as_bool() == Some(false) {
        out.push_str(&format!(
            "burrow daemon is not running (start it with `systemctl start burrow`); last runs \
             as kept in {}\n",
            text(&d["state_dir"])
        ));
    } else {
        out.push_str(&format!(
            "burrow daemon pid {} since {}{}\n",
            d["pid"],
            text(&d["started"]),
            if d["sim"].as_bool() == Some(true) {
                " (simulated disks)"
            } else {
                ""
            }
        ));
    }
    for p in v["problems"].as_array().into_iter().flatten() {
        out.push_str(&format!("problem: {}\n", text(p)));
    }
    if let Some(cur) = v["current"].as_object() {
        out.push_str(&format!(
            "running: {} (run {}), {} bytes read\n",
            text(&cur["job"]),
            text(&cur["run_id"]),
            cur["bytes_read"]
        ));
    }
    let disk = &v["disk"];
    if !disk.is_null() {
        let say = |key: &str, yes: &'static str, no: &'static str| {
            if disk[key].as_bool() == Some(true) {
                yes
            } else {
                no
            }
        };
        out.push_str(&format!(
            "disk: key {}, disk {}, {}, mounted at {}, {} bytes free\n",
            say("key_present", "present", "absent"),
            say("disk_present", "present", "absent"),
            say("unlocked", "unlocked", "locked"),
            text(&disk["mount_point"]),
            disk["free_bytes"]
        ));
    }
    let repo = &v["repository"];
    out.push_str(&format!(
        "repository: {} ({} bytes)\n",
        text(&repo["path"]),
        repo["size_bytes"]
    ));
    for j in v["jobs"].as_array().into_iter().flatten() {
        out.push_str(&job_line(j));
    }
    out
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}

/// One job of `burrow status`: its last run, its next, a try again after a temporary failure.
fn job_line(j: &serde_json::Value) -> String {
    let last = &j["last"];
    let last_txt = if last.is_null() {
        "never ran".to_owned()
    } else {
        let peak = last["peak_rss_bytes"]
            .as_u64()
            .map(|b| format!(", peak memory {}", burrow_core::bytes::human(b)))
            .unwrap_or_default();
        format!(
            "last {} at {} ({:.1}s, {} bytes added{peak})",
            text(&last["status"]),
            text(&last["started"]),
            last["duration_s"].as_f64().unwrap_or(0.0),
            last["bytes_added"]
        )
    };
    let retry = j["retry_at"]
        .as_str()
        .map(|t| format!("; tries again at {t}"))
        .unwrap_or_default();
    format!(
        "job {}: {last_txt}{retry}; next {}{}\n",
        text(&j["name"]),
        text(&j["next_run"]),
        if j["enabled"].as_bool() == Some(false) {
            " (disabled)"
        } else {
            ""
        }
    )
}
