//! The repository commands besides the run and the check, on the same ports: `burrow init`,
//! `snapshots`, `forget` and `prune`. Each finds the repository as a run does (on the verified
//! volume, marker checked); those that write hold the local lock and restic's exclusive lock.

use std::path::PathBuf;

use serde::Serialize;

use burrow_config::Config;
use burrow_core::RunError;
use burrow_core::disk::DiskManager;
use burrow_core::repository::{Repositories, Repository, SnapshotListing};
use burrow_core::retention::{Plan, Policy};

use crate::anomaly::{PauseError, PauseFile, Paused};
use crate::command::{self, CommandError};
use crate::place::{self, RepoLock};
use crate::{Ports, blocking};

/// A repository `burrow init` created.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub id: String,
    pub path: PathBuf,
}

/// Creates the repository where the config says, on the verified volume with `disk`, and
/// writes the volume's marker naming it.
pub async fn init<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
) -> Result<Created, RunError> {
    let _lock = RepoLock::acquire(&cfg.state_dir)?;
    let place = place::locate_for_init(cfg, ports.disk).await?;
    let (path, password_file) = (place.repo_path.clone(), place.password_file.clone());
    let repos = ports.repos.clone();
    let id = blocking(move || repos.init(&path, &password_file).map(|r| r.id())).await??;
    place::write_marker(&place, &id).map_err(|e| {
        RunError::permanent(format!(
            "repository created but the volume marker could not be written: {e}"
        ))
    })?;
    Ok(Created {
        id,
        path: place.repo_path,
    })
}

/// The snapshots (of `job`, when given), oldest first, and the snapshot files that cannot be
/// read. Nothing is locked: nothing is written.
pub async fn snapshots<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    job: Option<&str>,
) -> Result<SnapshotListing, CommandError> {
    if let Some(j) = job {
        command::job(cfg, j)?;
    }
    let repo = open(cfg, ports).await?;
    let job = job.map(str::to_owned);
    Ok(blocking(move || repo.snapshot_listing(job.as_deref())).await??)
}

/// What `burrow forget` did.
#[derive(Debug)]
pub struct Forgotten {
    pub job: String,
    pub dry_run: bool,
    pub plan: Plan,
    /// A retention the anomaly guard had paused, resumed: forgetting by hand is the user's
    /// look at the job. `None` on a dry run.
    pub resumed: Option<Result<Option<Paused>, PauseError>>,
}

/// Applies `keep` (the job's retention policy) to the job's snapshots, or, `dry_run`, says
/// what it would remove.
pub async fn forget<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    job: &str,
    keep: Policy,
    dry_run: bool,
) -> Result<Forgotten, RunError> {
    // Writing takes the local lock (one burrow process writes at a time); a dry run only reads.
    let _lock = (!dry_run)
        .then(|| RepoLock::acquire(&cfg.state_dir))
        .transpose()?;
    let repo = open(cfg, ports).await?;
    let name = job.to_owned();
    let plan = blocking(move || {
        if dry_run {
            repo.forget_plan(&name, &keep)
        } else {
            let _exclusive = repo.lock(true)?;
            repo.forget(&name, &keep)
        }
    })
    .await??;
    let resumed = (!dry_run).then(|| PauseFile::new(&cfg.state_dir).resume(job));
    Ok(Forgotten {
        job: job.to_owned(),
        dry_run,
        plan,
        resumed,
    })
}

/// A repository `burrow prune` pruned.
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    pub path: PathBuf,
}

/// Removes the data no snapshot references.
pub async fn prune<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
) -> Result<Pruned, RunError> {
    let _lock = RepoLock::acquire(&cfg.state_dir)?;
    let place = place::locate(cfg, ports.disk).await?;
    let repo = place.open(ports.repos).await?;
    blocking(move || {
        let _exclusive = repo.lock(true)?;
        repo.prune()
    })
    .await?
    .map_err(|e| e.context("prune failed"))?;
    Ok(Pruned {
        path: place.repo_path,
    })
}

/// What `burrow accept JOB` did: the pause it lifted, if retention was paused.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub job: String,
    pub paused: Option<Paused>,
}

/// Accepts the anomaly that paused the job's retention: it resumes at the next run.
pub fn accept(cfg: &Config, job: &str) -> Result<Accepted, CommandError> {
    command::job(cfg, job)?;
    let paused = (PauseFile::new(&cfg.state_dir).resume(job))
        .map_err(|e| RunError::permanent(e.to_string()))?;
    Ok(Accepted {
        job: job.to_owned(),
        paused,
    })
}

/// The repository, for a command about `job`, which the config must name.
pub(crate) async fn open_for_job<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    job: &str,
) -> Result<R::Repo, CommandError> {
    command::job(cfg, job)?;
    Ok(open(cfg, ports).await?)
}

pub(crate) async fn open<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
) -> Result<R::Repo, RunError> {
    place::locate(cfg, ports.disk)
        .await?
        .open(ports.repos)
        .await
}
