//! The runs the daemon starts, behind a port of its own: the real ones are burrow-run's job
//! run and repository check; the loop's tests give it scripted runs instead.

use std::future::Future;
use std::sync::Arc;

use burrow_config::Config;
use burrow_core::disk::DiskManager;
use burrow_run::{RunControl, RunReport};

use crate::serve::CHECK;

pub trait Runner: Send + Sync + 'static {
    /// One run of `job` (or of the repository check, [`CHECK`]) to its end.
    fn run(&self, job: &str, ctl: RunControl) -> impl Future<Output = RunReport> + Send;
}

/// burrow-run's runs on the configured disk.
pub struct Runs<D> {
    pub cfg: Arc<Config>,
    pub disk: Option<Arc<D>>,
}

impl<D: DiskManager> Runner for Runs<D> {
    async fn run(&self, job: &str, ctl: RunControl) -> RunReport {
        if job == CHECK {
            burrow_run::run_check(&self.cfg, self.disk.as_deref(), ctl).await
        } else {
            burrow_run::run_job(&self.cfg, self.disk.as_deref(), job, ctl).await
        }
    }
}
