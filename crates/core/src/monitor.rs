//! The monitoring port: tells an external service (healthchecks.io) that a run started and
//! how it ended. Monitoring never fails a backup: implementations log their own errors.

use std::future::Future;

use crate::ping::PingUrl;
use crate::run::{RunReport, RunStatus};

/// How a run ended, as sent to monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: RunStatus,
    pub exit_code: i32,
    /// The tail of the run's log (the adapter cuts it to the server's limit).
    pub log: String,
}

pub trait Monitor: Send + Sync + 'static {
    fn start(&self, job: &str, run_id: &str) -> impl Future<Output = ()> + Send;
    fn finish(&self, job: &str, run_id: &str, outcome: &Outcome)
    -> impl Future<Output = ()> + Send;
    /// The daemon is alive (`healthchecks.heartbeat`, every few minutes), so a dead Pi
    /// alerts too.
    fn heartbeat(&self, url: &PingUrl) -> impl Future<Output = ()> + Send;
}

/// Runs `run` (a job's run or the check) between the monitor's start and finish pings: the
/// one wrapper of `burrow run` and the daemon's runs.
pub async fn monitored<M: Monitor>(
    monitor: &M,
    job: &str,
    run_id: &str,
    run: impl Future<Output = RunReport>,
) -> RunReport {
    monitor.start(job, run_id).await;
    let report = run.await;
    monitor.finish(job, run_id, &report.outcome()).await;
    report
}
