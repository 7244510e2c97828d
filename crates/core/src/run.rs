//! The result of one run of a job, as printed by `burrow run --json`, kept in the run history
//! and sent to monitoring.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::exit::Exit;
use crate::monitor::Outcome;
use crate::problems::Problem;

/// The name the repository check (`check:` in the config) runs under: in its run summary, the
/// daemon's queue and state files, `burrow status` and monitoring. No job may be named so.
pub const CHECK_RUN: &str = "check";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Ok,
    Partial,
    /// The snapshot is saved and complete, but retention or another step after it failed.
    Warning,
    Failed,
    Skipped,
    /// A snapshot was saved, but it looks nothing like the one before it (tagged `anomaly`;
    /// retention of the job is paused until the user accepts it).
    Anomaly,
}

impl RunStatus {
    pub fn exit(self) -> Exit {
        match self {
            RunStatus::Ok => Exit::Ok,
            RunStatus::Partial => Exit::Partial,
            RunStatus::Warning => Exit::Warning,
            RunStatus::Failed => Exit::Failed,
            RunStatus::Skipped => Exit::Skipped,
            RunStatus::Anomaly => Exit::Anomaly,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Partial => "partial",
            RunStatus::Warning => "warning",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
            RunStatus::Anomaly => "anomaly",
        }
    }
}

/// What a run did. Field names are part of the `--json` contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub job: String,
    pub run_id: String,
    pub status: RunStatus,
    /// RFC 3339 start time.
    pub started: String,
    pub snapshot_id: Option<String>,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    /// File content bytes read from the source (0 when nothing changed).
    pub bytes_read: u64,
    /// Bytes added to the repository after deduplication and compression.
    pub bytes_added: u64,
    pub duration_s: f64,
    /// The highest resident memory of burrow's process during the run, in bytes.
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    /// Unreadable files, failed dumps, failed hooks.
    pub errors: Vec<ErrorItem>,
    /// Why the run failed or was skipped, when it did not produce a snapshot; for a `warning`,
    /// which step after the snapshot failed.
    pub reason: Option<String>,
    /// The class of the error that ended a run without a snapshot (`None` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
}

/// Why a run ended without a snapshot, and whether trying again later can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The backup disk or the key stick is absent, or it is the wrong disk: the run waits for
    /// the disk (skipped, 75).
    Skip,
    /// Likely to go away by itself: a server that is rebooting, the network, a repository
    /// lock held by a prune. The daemon tries again (`retries`, `retry_wait`).
    Temporary,
    /// Needs a person: a refused host key, a wrong password, a damaged repository, a failed
    /// `before` command.
    Permanent,
}

/// A run's error with its class: the one error type of a run's steps, mapped to the run's
/// status (and with it the exit code) in [`RunError::status`] alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RunError {
    pub class: ErrorClass,
    pub message: String,
}

impl RunError {
    pub fn skip(message: impl Into<String>) -> RunError {
        RunError {
            class: ErrorClass::Skip,
            message: message.into(),
        }
    }

    pub fn temporary(message: impl Into<String>) -> RunError {
        RunError {
            class: ErrorClass::Temporary,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> RunError {
        RunError {
            class: ErrorClass::Permanent,
            message: message.into(),
        }
    }

    /// Temporary when `temporary`, permanent otherwise.
    pub fn classed(temporary: bool, message: impl Into<String>) -> RunError {
        if temporary {
            RunError::temporary(message)
        } else {
            RunError::permanent(message)
        }
    }

    /// The same error with `prefix: ` before its message.
    pub fn context(self, prefix: impl std::fmt::Display) -> RunError {
        RunError {
            class: self.class,
            message: format!("{prefix}: {}", self.message),
        }
    }

    /// How a run ends on this error: skipped (75) for the disk, failed (1) otherwise.
    pub fn status(&self) -> RunStatus {
        match self.class {
            ErrorClass::Skip => RunStatus::Skipped,
            ErrorClass::Temporary | ErrorClass::Permanent => RunStatus::Failed,
        }
    }
}

impl From<crate::disk::DiskError> for RunError {
    /// An absent or wrong disk or key skips the run; a disk that fails fails it.
    fn from(e: crate::disk::DiskError) -> Self {
        if e.is_skip() {
            RunError::skip(e.to_string())
        } else {
            RunError::permanent(e.to_string())
        }
    }
}

/// One entry of `errors` in the JSON summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorItem {
    pub path: String,
    pub message: String,
}

impl From<&Problem> for ErrorItem {
    fn from(p: &Problem) -> Self {
        ErrorItem {
            path: p.path.to_string_lossy().into_owned(),
            message: p.message.clone(),
        }
    }
}

impl RunSummary {
    /// A summary of a run without a snapshot and without errors (so far).
    pub fn new(job: &str, run_id: &str, started: &str, status: RunStatus, duration_s: f64) -> Self {
        RunSummary {
            job: job.to_owned(),
            run_id: run_id.to_owned(),
            status,
            started: started.to_owned(),
            snapshot_id: None,
            files_new: 0,
            files_changed: 0,
            files_unmodified: 0,
            dirs: 0,
            bytes_read: 0,
            bytes_added: 0,
            duration_s,
            peak_rss_bytes: None,
            errors: Vec::new(),
            reason: None,
            error_class: None,
        }
    }

    /// The summary of a run that could not even start (no disk manager, daemon refused).
    pub fn without_run(job: &str, error: &RunError) -> Self {
        RunSummary::without_snapshot(
            job,
            &uuid::Uuid::new_v4().to_string(),
            &chrono::Utc::now().to_rfc3339(),
            error,
            0.0,
        )
    }

    /// A summary for a run that ended on `error` before a snapshot could be made.
    pub fn without_snapshot(
        job: &str,
        run_id: &str,
        started: &str,
        error: &RunError,
        duration_s: f64,
    ) -> Self {
        RunSummary {
            reason: Some(error.message.clone()),
            error_class: Some(error.class),
            ..RunSummary::new(job, run_id, started, error.status(), duration_s)
        }
    }
}

/// What the caller of a run can watch and stop.
#[derive(Debug, Clone)]
pub struct RunControl {
    pub run_id: String,
    /// Becomes `true` when burrow is shutting down: the pull stops, `after` still runs.
    pub cancel: watch::Receiver<bool>,
    /// Content bytes read so far (for progress displays and `STATUS=`).
    pub bytes_read: Arc<AtomicU64>,
}

impl RunControl {
    pub fn new(cancel: watch::Receiver<bool>) -> Self {
        RunControl {
            run_id: uuid::Uuid::new_v4().to_string(),
            cancel,
            bytes_read: Arc::default(),
        }
    }
}

/// The result of a run: the summary and the log tail for monitoring.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub summary: RunSummary,
    pub log: String,
}

impl RunReport {
    /// What monitoring is told of this run.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            status: self.summary.status,
            exit_code: self.summary.status.exit().code(),
            log: self.log.clone(),
        }
    }
}

/// The runs the daemon starts, as a port: burrow-run's job run and repository check are the
/// real ones (`burrow_run::Runs`); the daemon loop's tests script them.
pub trait Runner: Send + Sync + 'static {
    /// One run of `job` (or of the repository check, [`CHECK_RUN`]) to its end.
    fn run(&self, job: &str, ctl: RunControl) -> impl Future<Output = RunReport> + Send;
}
