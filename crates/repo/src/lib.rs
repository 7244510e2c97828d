//! The restic-format repository, through rustic_core and its local backend.
//!
//! Invariants kept here:
//! - a run only ever *adds* files to the repository (packs, index, snapshot); an interrupted
//!   run leaves unreferenced packs at worst, never a damaged snapshot;
//! - the snapshot of a job carries the tags `burrow` and `job=<name>`, so stock `restic
//!   snapshots --tag job=<name>` finds it; a snapshot with unreadable entries is re-tagged
//!   `partial` (written before the untagged one is removed);
//! - forget never removes the newest complete snapshot of a job;
//! - restore never writes outside its target directory, whatever names the repository holds.
//!
//! rustic_core is blocking (rayon, std threads): callers in async code use `spawn_blocking`.

mod adapter;
mod node;
mod parent;
mod pinned;
mod restore;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burrow_core::Problems;
use burrow_core::source::{Entry, NoParent, ParentIndex, WalkContext};
use rustic_core::repofile::SnapshotFile;
use rustic_core::{
    BackupOptions, CheckOptions, ConfigOptions, Credentials, ForgetGroups, Grouped, KeepOptions,
    KeyOptions, OpenStatus, ParentOptions, PruneOptions, ReadSubsetOption, Repository,
    RepositoryBackends, RepositoryOptions, RusticError, SnapshotGroupCriterion, SnapshotOptions,
};
use serde::Serialize;

pub use restore::RestoreOutcome;
pub use rustic_core::jiff::Zoned;

/// The tag every burrow snapshot carries.
pub const TAG: &str = "burrow";
/// The tag of a snapshot in which something could not be read.
pub const TAG_PARTIAL: &str = "partial";

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

    /// The password in `path`, read as restic's `--password-file` reads it, so that stock
    /// restic opens the repository with the same file: the whole file, a byte order mark
    /// removed (UTF-16 with a BOM is decoded), surrounding white space trimmed (Go's
    /// `strings.TrimSpace`, the Unicode White_Space set like [`str::trim`]). Inner lines and
    /// spaces are part of the password. Empty after trimming is an error.
    pub fn from_file(path: &Path) -> Result<Self, RepoError> {
        let bad = |reason: String| RepoError::PasswordFile {
            path: path.to_owned(),
            reason,
        };
        // A text file's content as restic's `textfile.Read` sees it: a UTF-8 BOM dropped, UTF-16
        // with a BOM (either byte order) decoded, anything else taken as UTF-8.
        fn decode_text(bytes: &[u8]) -> Option<String> {
            if let Some(rest) = bytes.strip_prefix(b"\xef\xbb\xbf") {
                return String::from_utf8(rest.to_vec()).ok();
            }
            let units = |be: bool, rest: &[u8]| -> Vec<u16> {
                rest.chunks(2)
                    .map(|c| {
                        let pair = [c[0], c.get(1).copied().unwrap_or(0)];
                        if be {
                            u16::from_be_bytes(pair)
                        } else {
                            u16::from_le_bytes(pair)
                        }
                    })
                    .collect()
            };
            if let Some(rest) = bytes.strip_prefix(b"\xfe\xff") {
                return String::from_utf16(&units(true, rest)).ok();
            }
            if let Some(rest) = bytes.strip_prefix(b"\xff\xfe") {
                return String::from_utf16(&units(false, rest)).ok();
            }
            String::from_utf8(bytes.to_vec()).ok()
        }

        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let text = decode_text(&bytes)
            .ok_or_else(|| bad("it is not UTF-8 (or UTF-16 with a byte order mark) text".into()))?;
        let password = text.trim();
        if password.is_empty() {
            return Err(bad(
                "the file is empty or white space only; write the password into it".into(),
            ));
        }
        Ok(Password(password.to_owned()))
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
    #[error("interrupted before the snapshot was complete; nothing was kept")]
    Interrupted,
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

pub struct Repo {
    path: PathBuf,
    repo: Repository<OpenStatus>,
}

fn backends(path: &Path) -> Result<RepositoryBackends, RepoError> {
    let be = pinned::Pinned::new(path)?;
    Ok(RepositoryBackends::new(Arc::new(be), None))
}

fn unopened(path: &Path) -> Result<Repository<()>, RepoError> {
    let opts = RepositoryOptions::default().no_cache(true);
    Ok(Repository::new(&opts, &backends(path)?)?)
}

/// Creates a repository at `path` (the directory may exist, but must hold no repository).
pub fn init(path: &Path, password: &Password) -> Result<Repo, RepoError> {
    let repo = unopened(path)?;
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
    })
}

impl Repo {
    /// A second handle on the same repository: rustic_core's typestate conversions
    /// (`to_indexed*`) consume the handle, and an open handle cannot be cloned.
    fn reopen(&self) -> Result<Repository<OpenStatus>, RepoError> {
        // With the master key of the open handle: no second key derivation (scrypt costs
        // about half a second and 128 MiB on a Pi).
        Ok(unopened(&self.path)?.open(&Credentials::Masterkey(self.repo.key()))?)
    }

    pub fn open(path: &Path, password: &Password) -> Result<Repo, RepoError> {
        if !path.join("config").is_file() {
            return Err(RepoError::NotInitialised {
                path: path.to_owned(),
            });
        }
        let repo = unopened(path)?;
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
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
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

    /// Archives one snapshot of a job. Unreadable entries end up in `req.problems`; the
    /// snapshot is then tagged `partial`.
    pub fn backup(&self, req: BackupRequest<'_>) -> Result<BackupOutcome, RepoError> {
        let indexed = self.reopen()?.to_indexed_ids()?;
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
            // The walk was cut short: this snapshot would look complete but is not.
            self.repo.delete_snapshots(&[snap.id])?;
            return Err(RepoError::Interrupted);
        }

        let partial = req.partial || !req.problems.is_empty();
        let mut id = snap.id.to_hex().to_string();
        if partial {
            id = self.retag_partial(snap.clone())?;
        }
        let s = snap.summary.clone().unwrap_or_default();
        Ok(BackupOutcome {
            snapshot_id: id,
            parent_id: parent.map(|p| p.id.to_hex().to_string()),
            files_new: s.files_new,
            files_changed: s.files_changed,
            files_unmodified: s.files_unmodified,
            dirs: s.total_dirs_processed,
            bytes_read: req.bytes_read.load(Ordering::Relaxed),
            bytes_added: s.data_added_packed,
            partial,
        })
    }

    /// Removes one snapshot (by full id) of `job`, e.g. one known to be incomplete.
    pub fn delete_snapshot(&self, job: &str, id: &str) -> Result<(), RepoError> {
        let snap = self.find(job, id)?;
        self.repo.delete_snapshots(&[snap.id])?;
        Ok(())
    }

    /// Saves a copy of `snap` tagged `partial`, then removes the untagged one: at every moment
    /// one of the two exists.
    fn retag_partial(&self, mut snap: SnapshotFile) -> Result<String, RepoError> {
        let old = snap.id;
        snap.tags.add(TAG_PARTIAL.to_owned());
        let (time, tree) = (snap.time.clone(), snap.tree);
        self.repo.save_snapshots(vec![snap])?;
        let new = self
            .repo
            .get_matching_snapshots(|s| {
                s.time == time && s.tree == tree && s.tags.contains(TAG_PARTIAL)
            })?
            .into_iter()
            .map(|s| s.id)
            .find(|id| *id != old)
            .ok_or_else(|| RepoError::Rustic("re-tagged snapshot not found after saving".into()))?;
        self.repo.delete_snapshots(&[old])?;
        Ok(new.to_hex().to_string())
    }

    /// Restores `snapshot` (an id prefix or `latest`) of `job` into `target`, or only
    /// `subpath` of it.
    pub fn restore(
        &self,
        job: &str,
        snapshot: &str,
        target: &Path,
        subpath: Option<&Path>,
    ) -> Result<RestoreOutcome, RepoError> {
        let snap = self.find(job, snapshot)?;
        restore::restore(self.reopen()?, &snap, target, subpath)
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

    /// Applies a retention policy to `job`'s snapshots at time `now`; returns the removed ids.
    /// The newest complete (not `partial`) snapshot is always kept.
    pub fn forget(
        &self,
        job: &str,
        keep: &Keep,
        now: &rustic_core::jiff::Zoned,
    ) -> Result<Vec<String>, RepoError> {
        let snaps = self.job_snapshots(Some(job))?;
        if snaps.is_empty() {
            return Ok(Vec::new());
        }
        let newest_complete = snaps
            .iter()
            .rev()
            .find(|s| !s.tags.contains(TAG_PARTIAL))
            .map(|s| s.id);
        let to_i32 = |v: Option<u32>| v.map(|n| n.min(i32::MAX as u32) as i32);
        let mut opts = KeepOptions::default();
        opts.keep_last = to_i32(keep.last);
        opts.keep_hourly = to_i32(keep.hourly);
        opts.keep_daily = to_i32(keep.daily);
        opts.keep_weekly = to_i32(keep.weekly);
        opts.keep_monthly = to_i32(keep.monthly);
        opts.keep_yearly = to_i32(keep.yearly);
        let grouped = Grouped::from_items(snaps, SnapshotGroupCriterion::new());
        let groups = ForgetGroups::from_grouped_snapshots_with_retention(grouped, &opts, now)?;
        let ids: Vec<_> = groups
            .into_forget_ids()
            .into_iter()
            .filter(|id| Some(*id) != newest_complete)
            .collect();
        if !ids.is_empty() {
            self.repo.delete_snapshots(&ids)?;
        }
        Ok(ids.iter().map(|i| i.to_hex().to_string()).collect())
    }

    /// Removes data no snapshot references any more. burrow is the only writer (it holds the
    /// repository lock), so packs are deleted at once instead of after rustic's grace period.
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

/// A retention policy (restic's `--keep-*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
}
