//! What the commands besides the run share: their error, which keeps the user's mistakes
//! (exit 2) apart from failed work (the class's code), and the lookups that make the first.

use burrow_config::{Config, Dump, Job};
use burrow_core::retention::Policy;
use burrow_core::{Exit, RunError};

/// A command's error: the command line or the config names what is not there, or the work
/// failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Fix the command line or the config file (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The work failed; its class decides the exit code (skipped 75, failed 1).
    #[error(transparent)]
    Run(#[from] RunError),
}

impl CommandError {
    /// The process exit code of this error.
    pub fn exit(&self) -> Exit {
        match self {
            CommandError::Usage(_) => Exit::Usage,
            CommandError::Run(e) => e.status().exit(),
        }
    }
}

/// The job `name` of the config.
pub fn job<'a>(cfg: &'a Config, name: &str) -> Result<&'a Job, CommandError> {
    cfg.job(name).ok_or_else(|| {
        CommandError::Usage(format!("no job named {name:?} in {}", cfg.file.display()))
    })
}

/// The dump `name` of the job, as the config names it.
pub fn dump<'a>(job: &'a Job, name: &str) -> Result<&'a Dump, CommandError> {
    (job.dumps.iter().find(|d| d.name == name))
        .ok_or_else(|| CommandError::Usage(format!("job {} has no dump named {name:?}", job.name)))
}

/// The retention policy of the job `name`.
pub fn retention(cfg: &Config, name: &str) -> Result<Policy, CommandError> {
    job(cfg, name)?.retention.ok_or_else(|| {
        CommandError::Usage(format!(
            "job {name} has no retention policy, so every snapshot is kept: add e.g. \
             `retention: {{keep_daily: 7}}` to jobs.{name} in {}",
            cfg.file.display()
        ))
    })
}
