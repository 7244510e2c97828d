//! The restic-format repository, through rustic_core and its local backend.
//!
//! Invariants kept here:
//! - a run only ever *adds* files to the repository (packs, index, snapshot); an interrupted
//!   run leaves unreferenced packs at worst, never a damaged snapshot;
//! - the snapshot of a job carries the tags `burrow` and `job=<name>`, so stock `restic
//!   snapshots --tag job=<name>` finds it; a snapshot with unreadable entries is re-tagged
//!   `partial` (written before the untagged one is removed);
//! - forget removes what `restic forget --keep-*` (0.14) would remove from the job's snapshots,
//!   except the newest complete snapshot of the job ([`protected`]), which it never removes;
//! - restore never writes outside its target directory nor through an entry already in it,
//!   whatever the repository holds (`restore.rs`).
//!
//! rustic_core is blocking (rayon, std threads): callers in async code use `spawn_blocking`.

mod adapter;
pub mod lock;
mod node;
mod parent;
mod pinned;
mod restore;

use pinned::SnapshotGate;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burrow_core::Problems;
use burrow_core::retention::{self, Snap};
use burrow_core::source::{Entry, NoParent, ParentIndex, WalkContext};
use rustic_core::repofile::SnapshotFile;
use rustic_core::{
    BackupOptions, CheckOptions, ConfigOptions, Credentials, KeyOptions, OpenStatus, ParentOptions,
    PruneOptions, ReadSubsetOption, Repository, RepositoryBackends, RepositoryOptions, RusticError,
    SnapshotOptions,
};
use serde::Serialize;

pub use burrow_core::retention::{Plan, Policy as Keep, PolicyError};
pub use restore::{NotRestored, RestoreOutcome};
pub use lock::{LockInfo, Locks, RepoLockGuard};
pub use rustic_core::jiff::Zoned;

/// The tag every burrow snapshot carries.
pub const TAG: &str = "burrow";
/// The tag of a snapshot in which something could not be read.
pub const TAG_PARTIAL: &str = "partial";
/// The tag of a snapshot the anomaly guard found suspicious (most files gone or changed, or
/// none at all).
pub const TAG_ANOMALY: &str = "anomaly";

pub fn job_tag(job: &str) -> String {
    format!("job={job}")
}

/// The repository password. Never printed.
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }

    /// The first line of `path`, as restic's `--password-file` reads it.
    pub fn from_file(path: &Path) -> Result<Self, RepoError> {
        let text = std::fs::read_to_string(path).map_err(|e| RepoError::PasswordFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            return Err(RepoError::PasswordFile {
                path: path.to_owned(),
                reason: "the first line is empty".into(),
            });
        }
        Ok(Password(line.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no repository at {}: create it with `burrow init`", path.display())]
    NotInitialised { path: PathBuf },
    #[error("a repository already exists at {}; nothing was changed", path.display())]
    AlreadyExists { path: PathBuf },
    #[error("wrong password for the repository at {}: check repository.password_file", path.display())]
    WrongPassword { path: PathBuf },
    #[error("cannot read the repository password from {}: {reason}", path.display())]
    PasswordFile { path: PathBuf, reason: String },
    #[error("no snapshot {what}")]
    NoSnapshot { what: String },
    #[error("{0}")]
    Restore(String),
    /// A lock file of restic or another burrow forbids the lock (the message names its holder).
    #[error("{0}")]
    Locked(String),
    #[error("interrupted before the snapshot was complete; nothing was kept")]
    Interrupted,
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("repository: {0}")]
    Rustic(String),
}

impl From<Box<RusticError>> for RepoError {
    fn from(e: Box<RusticError>) -> Self {
        RepoError::Rustic(e.display_log())
    }
}

/// A snapshot as listed by `burrow snapshots`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub short_id: String,
    /// RFC 3339.
    pub time: String,
    pub job: Option<String>,
    pub host: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub partial: bool,
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    pub bytes_added: Option<u64>,
}

/// What to back up.
pub struct BackupRequest<'a> {
    pub job: &'a str,
    /// The snapshot's host name: the server's name, or this machine's for local jobs.
    pub host: &'a str,
    pub paths: Vec<PathBuf>,
    pub source: &'a dyn burrow_core::source::Source,
    /// Extra entries in walk order (the spooled dumps), merged into the walk.
    pub extra: Vec<Entry>,
    pub problems: Problems,
    /// Tag the snapshot `partial` even when the walk itself had no problems (failed dumps).
    pub partial: bool,
    /// Content bytes handed to the archiver; shared so a progress display can read it.
    pub bytes_read: Arc<AtomicU64>,
    /// Set from another thread to stop the walk; the snapshot made so far is then removed
    /// and [`RepoError::Interrupted`] returned.
    pub cancel: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupOutcome {
    pub snapshot_id: String,
    pub parent_id: Option<String>,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    pub bytes_read: u64,
    pub bytes_added: u64,
    pub partial: bool,
}

/// An archived snapshot whose snapshot file is not written yet (see [`Repo::archive`]).
pub struct Pending {
    snap: SnapshotFile,
    parent: Option<SnapshotFile>,
    partial: bool,
    bytes_read: u64,
}

/// File counts of a pending snapshot and of its parent, for the anomaly guard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PendingCounts {
    pub files: u64,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    /// Files in the parent snapshot, when there is one with a summary.
    pub parent_files: Option<u64>,
}

impl Pending {
    /// Something could not be read (the problems of the walk), or the caller said so.
    pub fn partial(&self) -> bool {
        self.partial
    }

    pub fn counts(&self) -> PendingCounts {
        let s = self.snap.summary.clone().unwrap_or_default();
        PendingCounts {
            files: s.total_files_processed,
            files_new: s.files_new,
            files_changed: s.files_changed,
            files_unmodified: s.files_unmodified,
            parent_files: self
                .parent
                .as_ref()
                .and_then(|p| p.summary.as_ref())
                .map(|p| p.total_files_processed),
        }
    }

    /// Writes the snapshot file with `tags` added: the first and only snapshot file of this
    /// run, so there is no moment at which an untagged version of it exists.
    pub fn commit(self, repo: &Repo, tags: &[&str]) -> Result<BackupOutcome, RepoError> {
        let mut snap = self.snap;
        for t in tags {
            snap.tags.add((*t).to_owned());
        }
        let s = snap.summary.clone().unwrap_or_default();
        let id = repo.save_snapshot(snap)?;
        Ok(BackupOutcome {
            snapshot_id: id,
            parent_id: self.parent.map(|p| p.id.to_hex().to_string()),
            files_new: s.files_new,
            files_changed: s.files_changed,
            files_unmodified: s.files_unmodified,
            dirs: s.total_dirs_processed,
            bytes_read: self.bytes_read,
            bytes_added: s.data_added_packed,
            partial: tags.contains(&TAG_PARTIAL),
        })
    }
}

pub struct Repo {
    path: PathBuf,
    repo: Repository<OpenStatus>,
    /// Sees every snapshot file this handle writes (see [`Pending::commit`]).
    gate: Arc<SnapshotGate>,
}

fn backends(path: &Path, gate: Arc<SnapshotGate>) -> Result<RepositoryBackends, RepoError> {
    let be = pinned::Pinned::new(path, gate)?;
    Ok(RepositoryBackends::new(Arc::new(be), None))
}

fn unopened(path: &Path, gate: Arc<SnapshotGate>) -> Result<Repository<()>, RepoError> {
    let opts = RepositoryOptions::default().no_cache(true);
    Ok(Repository::new(&opts, &backends(path, gate)?)?)
}

/// Creates a repository at `path` (the directory may exist, but must hold no repository).
pub fn init(path: &Path, password: &Password) -> Result<Repo, RepoError> {
    let gate = Arc::new(SnapshotGate::default());
    let repo = unopened(path, gate.clone())?;
    if repo.config_id()?.is_some() {
        return Err(RepoError::AlreadyExists {
            path: path.to_owned(),
        });
    }
    let repo = repo.init(
        &Credentials::password(&password.0),
        &KeyOptions::default(),
        &ConfigOptions::default(),
    )?;
    Ok(Repo {
        path: path.to_owned(),
        repo,
        gate,
    })
}

impl Repo {
    /// A second handle on the same repository: rustic_core's typestate conversions
    /// (`to_indexed*`) consume the handle, and an open handle cannot be cloned.
    fn reopen(&self) -> Result<Repository<OpenStatus>, RepoError> {
        self.reopen_with(Arc::default())
    }

    fn reopen_with(&self, gate: Arc<SnapshotGate>) -> Result<Repository<OpenStatus>, RepoError> {
        // With the master key of the open handle: no second key derivation (scrypt costs
        // about half a second and 128 MiB on a Pi).
        Ok(unopened(&self.path, gate)?.open(&Credentials::Masterkey(self.repo.key()))?)
    }

    pub fn open(path: &Path, password: &Password) -> Result<Repo, RepoError> {
        if !path.join("config").is_file() {
            return Err(RepoError::NotInitialised {
                path: path.to_owned(),
            });
        }
        let gate = Arc::new(SnapshotGate::default());
        let repo = unopened(path, gate.clone())?;
        if repo.config_id()?.is_none() {
            return Err(RepoError::NotInitialised {
                path: path.to_owned(),
            });
        }
        let repo = repo
            .open(&Credentials::password(&password.0))
            .map_err(|e| {
                if e.is_code("C002") {
                    RepoError::WrongPassword {
                        path: path.to_owned(),
                    }
                } else {
                    e.into()
                }
            })?;
        Ok(Repo {
            path: path.to_owned(),
            repo,
            gate,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The repository's restic lock files (`locks/`), for taking a lock on another thread.
    pub fn locks(&self) -> Result<Locks, RepoError> {
        Locks::new(&self.path, &self.repo.key())
    }

    /// A shared restic lock, as `restic backup` takes: for backup and check. Blocks for about
    /// 200 ms (restic's settle time); held until the guard is dropped.
    pub fn lock_shared(&self) -> Result<RepoLockGuard, RepoError> {
        self.locks()?.shared()
    }

    /// An exclusive restic lock, as `restic prune` takes: for forget, prune and repairs.
    pub fn lock_exclusive(&self) -> Result<RepoLockGuard, RepoError> {
        self.locks()?.exclusive()
    }

    /// The repository's id (from its config file), as stock restic shows it.
    pub fn id(&self) -> String {
        self.repo.config().id.to_hex().to_string()
    }

    fn job_snapshots(&self, job: Option<&str>) -> Result<Vec<SnapshotFile>, RepoError> {
        let tag = job.map(job_tag);
        let mut snaps = self.repo.get_matching_snapshots(|s| match &tag {
            Some(t) => s.tags.contains(t),
            None => true,
        })?;
        snaps.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(snaps)
    }

    /// Snapshots, oldest first; only those of `job` when given.
    pub fn snapshots(&self, job: Option<&str>) -> Result<Vec<SnapshotInfo>, RepoError> {
        Ok(self
            .job_snapshots(job)?
            .iter()
            .map(|s| {
                let tags: Vec<String> = s.tags.iter().cloned().collect();
                let id = s.id.to_hex().to_string();
                SnapshotInfo {
                    short_id: id[..8].to_owned(),
                    id,
                    time: s.time.timestamp().to_string(),
                    job: tags
                        .iter()
                        .find_map(|t| t.strip_prefix("job=").map(str::to_owned)),
                    host: s.hostname.clone(),
                    paths: s.paths.iter().cloned().collect(),
                    partial: tags.iter().any(|t| t == TAG_PARTIAL),
                    tags,
                    files: s.summary.as_ref().map(|x| x.total_files_processed),
                    bytes: s.summary.as_ref().map(|x| x.total_bytes_processed),
                    bytes_added: s.summary.as_ref().map(|x| x.data_added_packed),
                }
            })
            .collect())
    }

    /// Finds one snapshot of `job` by id prefix or `latest`.
    fn find(&self, job: &str, which: &str) -> Result<SnapshotFile, RepoError> {
        let snaps = self.job_snapshots(Some(job))?;
        let found = if which == "latest" {
            snaps.last().cloned()
        } else {
            let m: Vec<&SnapshotFile> = snaps
                .iter()
                .filter(|s| s.id.to_hex().starts_with(which))
                .collect();
            if m.len() > 1 {
                return Err(RepoError::NoSnapshot {
                    what: format!(
                        "{which:?} (ambiguous: {} snapshots of job {job} match)",
                        m.len()
                    ),
                });
            }
            m.first().map(|s| (*s).clone())
        };
        found.ok_or_else(|| RepoError::NoSnapshot {
            what: format!("{which:?} for job {job} (see `burrow snapshots {job}`)"),
        })
    }

    /// Archives one snapshot of a job and saves it, tagged `partial` when something could not
    /// be read. See [`Repo::archive`] for the two steps.
    pub fn backup(&self, req: BackupRequest<'_>) -> Result<BackupOutcome, RepoError> {
        let pending = self.archive(req)?;
        let tags: &[&str] = if pending.partial() {
            &[TAG_PARTIAL]
        } else {
            &[]
        };
        pending.commit(self, tags)
    }

    /// Archives one snapshot of a job without saving the snapshot file: packs, trees and index
    /// are written, the snapshot itself is held back in the returned [`Pending`], which the
    /// caller commits with its final tags once it knows them (or drops: then no snapshot
    /// exists, and the data written is unreferenced until a prune). Unreadable entries end up
    /// in `req.problems`. A walk cut short by `req.cancel` gives [`RepoError::Interrupted`].
    pub fn archive(&self, req: BackupRequest<'_>) -> Result<Pending, RepoError> {
        let gate = Arc::new(SnapshotGate::default());
        gate.hold();
        let indexed = self.reopen_with(gate)?.to_indexed_ids()?;
        let parent = self.job_snapshots(Some(req.job))?.pop();
        let parent_index: Arc<dyn ParentIndex> = match &parent {
            Some(p) => Arc::new(parent::SnapshotParent::load(&indexed, p)?),
            None => Arc::new(NoParent),
        };
        let mut ctx = WalkContext::new(parent_index, req.problems.clone());
        ctx.bytes_read = req.bytes_read.clone();
        let cancel = req.cancel.clone();
        let walk = req.source.entries(ctx);
        let walk: Box<dyn Iterator<Item = Entry> + Send> =
            Box::new(walk.take_while(move |_| !cancel.load(Ordering::Relaxed)));
        let walk = if req.extra.is_empty() {
            walk
        } else {
            burrow_core::source::merge_walks(walk, Box::new(req.extra.into_iter()))
        };
        let src = adapter::Adapter::new(walk, req.problems.clone(), req.cancel.clone());

        let snap_opts = SnapshotOptions::default()
            .host(req.host.to_owned())
            .add_tags(&format!("{TAG},{}", job_tag(req.job)))?;
        let snap = snap_opts.to_snapshot()?;
        let mut parent_opts = ParentOptions::default();
        match &parent {
            Some(p) => parent_opts.parents = vec![p.id.to_hex().to_string()],
            None => parent_opts.force = true,
        }
        let opts = BackupOptions::default().parent_opts(parent_opts);
        let mut paths = req.paths.clone();
        paths.sort();
        let snap = indexed.archive(&opts, &src, snap, &paths)?;
        if req.cancel.load(Ordering::Relaxed) {
            // The walk was cut short: the snapshot was held back and is dropped here.
            return Err(RepoError::Interrupted);
        }
        Ok(Pending {
            partial: req.partial || !req.problems.is_empty(),
            snap,
            parent,
            bytes_read: req.bytes_read.load(Ordering::Relaxed),
        })
    }

    /// Saves `snap` and returns the id of the file written.
    fn save_snapshot(&self, snap: SnapshotFile) -> Result<String, RepoError> {
        self.gate.take();
        self.repo.save_snapshots(vec![snap])?;
        match self.gate.take().as_slice() {
            [id] => Ok(id.to_hex().to_string()),
            ids => Err(RepoError::Rustic(format!(
                "saving one snapshot wrote {} snapshot files",
                ids.len()
            ))),
        }
    }

    /// Removes one snapshot (by full id) of `job`.
    pub fn delete_snapshot(&self, job: &str, id: &str) -> Result<(), RepoError> {
        let snap = self.find(job, id)?;
        self.repo.delete_snapshots(&[snap.id])?;
        Ok(())
    }

    /// Restores `snapshot` (an id prefix or `latest`) of `job` into `target`, or only
    /// `subpath` of it (a directory's contents go into `target`, a single entry to
    /// `target/<name>`). Nothing is written outside `target`; entries that were not written
    /// are listed in the outcome (`refused`, `failed`), the rest is restored.
    pub fn restore(
        &self,
        job: &str,
        snapshot: &str,
        target: &Path,
        subpath: Option<&Path>,
    ) -> Result<RestoreOutcome, RepoError> {
        let snap = self.find(job, snapshot)?;
        restore::restore(self.reopen()?, &snap, target, subpath, false)
    }

    /// Restores the regular file `path` of a snapshot (a dump, `/burrow-dumps/<name>`) as
    /// `target/<name>`, with its stored mode, through the same confined writer as
    /// [`Repo::restore`].
    pub fn restore_file(
        &self,
        job: &str,
        snapshot: &str,
        path: &Path,
        target: &Path,
    ) -> Result<RestoreOutcome, RepoError> {
        let snap = self.find(job, snapshot)?;
        restore::restore(self.reopen()?, &snap, target, Some(path), true)
    }

    /// Writes one file of a snapshot to `w` (a dump, to a file or to the server).
    pub fn dump(
        &self,
        job: &str,
        snapshot: &str,
        path: &Path,
        w: &mut dyn std::io::Write,
    ) -> Result<u64, RepoError> {
        let snap = self.find(job, snapshot)?;
        restore::dump(self.reopen()?, &snap, path, w)
    }

    /// The retention plan for `job`: restic 0.14's `forget --keep-*` decision over the job's
    /// snapshots ([`burrow_core::retention::apply_policy`]), then burrow's one deviation: the
    /// snapshots named by [`protected`] are kept whatever the policy says. Nothing is changed.
    pub fn forget_plan(&self, job: &str, keep: &Keep) -> Result<Plan, RepoError> {
        let snaps: Vec<Snap> = self.job_snapshots(Some(job))?.iter().map(snap_of).collect();
        let plan = retention::apply_policy(&snaps, keep)?;
        Ok(retention::protect(plan, &protected(&snaps)))
    }

    /// Computes [`Repo::forget_plan`] and removes the snapshots in its `remove` list; returns
    /// the plan applied. Data of the removed snapshots stays until [`Repo::prune`].
    pub fn forget(&self, job: &str, keep: &Keep) -> Result<Plan, RepoError> {
        let plan = self.forget_plan(job, keep)?;
        if plan.remove.is_empty() {
            return Ok(plan);
        }
        let gone: BTreeSet<&str> = plan.remove.iter().map(|d| d.id.as_str()).collect();
        let ids: Vec<_> = self
            .job_snapshots(Some(job))?
            .into_iter()
            .filter(|s| gone.contains(s.id.to_hex().to_string().as_str()))
            .map(|s| s.id)
            .collect();
        if ids.len() != gone.len() {
            return Err(RepoError::Rustic(format!(
                "the snapshots of job {job} changed while retention was planned; nothing was forgotten, run it again"
            )));
        }
        self.repo.delete_snapshots(&ids)?;
        Ok(plan)
    }

    /// Removes data no snapshot references any more. The caller holds the exclusive lock
    /// ([`Repo::lock_exclusive`]), so no other writer exists and packs are deleted at once
    /// instead of after rustic's grace period.
    pub fn prune(&self) -> Result<(), RepoError> {
        let opts = PruneOptions::default().instant_delete(true);
        let plan = self.repo.prune_plan(&opts)?;
        self.repo.prune(&opts, plan)?;
        Ok(())
    }

    /// Checks the repository's structure, and reads back `read_data` of the packs
    /// (`"5%"`, `"1/7"`, `"all"`) when given.
    pub fn check(&self, read_data: Option<&str>) -> Result<(), RepoError> {
        let mut opts = CheckOptions::default();
        if let Some(rd) = read_data {
            opts = opts.read_data(true);
            if rd != "all" {
                let subset = rd
                    .parse::<ReadSubsetOption>()
                    .map_err(|e| RepoError::Rustic(format!("read_data {rd:?}: {e}")))?;
                opts = opts.read_data_subset(subset);
            }
        }
        self.repo.check(opts)?.is_ok()?;
        Ok(())
    }
}

/// The snapshots of a job that retention never removes, whatever the policy: burrow's one
/// deviation from restic's `forget`. Today the newest complete (not `partial`) snapshot.
pub fn protected(snaps: &[Snap]) -> BTreeSet<String> {
    snaps
        .iter()
        .filter(|s| !s.tags.iter().any(|t| t == TAG_PARTIAL || t == TAG_ANOMALY))
        .max_by(|a, b| a.time.cmp(&b.time).then_with(|| b.id.cmp(&a.id)))
        .map(|s| BTreeSet::from([s.id.clone()]))
        .unwrap_or_default()
}

/// A snapshot as the retention policy sees it: id, time in the offset it was stored with, tags.
fn snap_of(s: &SnapshotFile) -> Snap {
    let ts = s.time.timestamp();
    let offset = chrono::FixedOffset::east_opt(s.time.offset().seconds())
        .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("0 is a valid offset"));
    let utc =
        chrono::DateTime::from_timestamp(ts.as_second(), ts.subsec_nanosecond().max(0) as u32)
            .unwrap_or_default();
    Snap {
        id: s.id.to_hex().to_string(),
        time: utc.with_timezone(&offset),
        tags: s.tags.iter().cloned().collect(),
    }
}
