//! The repository commands besides the run and the check, on the same ports: `burrow init`,
//! `snapshots`, `forget` and `prune`. Each finds the repository as a run does (on the verified
//! volume, marker checked); those that write hold the local lock and restic's exclusive lock.

use std::path::PathBuf;

use burrow_config::Config;
use burrow_core::RunError;
use burrow_core::disk::DiskManager;
use burrow_core::repository::{Repositories, Repository, SnapshotListing};
use burrow_core::retention::{Plan, Policy};

use crate::anomaly::{PauseError, PauseFile, Paused};
use crate::command::{self, CommandError};
use crate::place::{self, RepoLock};
use crate::{Ports, blocking};

/// Creates the repository where the config says, on the verified volume with `disk`, and
/// writes the volume's marker naming it; returns its id and where it is.
pub async fn init<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
) -> Result<(String, PathBuf), RunError> {
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
    Ok((id, place.repo_path))
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
    Ok(Forgotten { plan, resumed })
}

/// Removes the data no snapshot references; returns the repository's path.
pub async fn prune<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
) -> Result<PathBuf, RunError> {
    let _lock = RepoLock::acquire(&cfg.state_dir)?;
    let place = place::locate(cfg, ports.disk).await?;
    let repo = place.open(ports.repos).await?;
    blocking(move || {
        let _exclusive = repo.lock(true)?;
        repo.prune()
    })
    .await?
    .map_err(|e| e.context("prune failed"))?;
    Ok(place.repo_path)
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
