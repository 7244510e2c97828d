//! The repository port: what a run, a check and retention need of the restic-format
//! repository, and the types they exchange with it. burrow-repo implements it on the local
//! backend (rustic_core and burrow's own writer); burrow-testkit keeps an in-memory fake for
//! in-process tests of whole runs.
//!
//! The calls are blocking (the real repository hashes, compresses and encrypts on threads of
//! its own): async callers make them on a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use serde::Serialize;

use crate::retention::{Plan, Policy};
use crate::source::Entry;
use crate::{Problems, RunError};

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

/// A snapshot file that could not be read, decrypted or parsed. Listed by `burrow snapshots`
/// (in `--json` as an entry with `"damaged": true`) and otherwise skipped.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedSnapshot {
    pub id: String,
    pub short_id: String,
    /// The file, relative to the repository (`snapshots/<id>`).
    pub file: String,
    /// The file's full path.
    pub path: String,
    pub error: String,
    /// Always `true`.
    pub damaged: bool,
}

/// Every snapshot file: those read, oldest first, and those that could not be read.
#[derive(Debug, Clone, Default)]
pub struct SnapshotListing {
    pub snapshots: Vec<SnapshotInfo>,
    pub damaged: Vec<DamagedSnapshot>,
}

/// What a repository check found. Clean when `errors` and `damaged_snapshots` are empty.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Each error, as rustic_core words it (ids shortened to 8 characters), or, for a pack,
    /// prefixed with the pack's full id.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Packs whose file is missing or whose bytes do not hash to their name (re-read and
    /// confirmed after the check named them).
    pub damaged_packs: Vec<DamagedPack>,
    pub damaged_snapshots: Vec<DamagedSnapshot>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.damaged_snapshots.is_empty()
    }
}

/// A pack a check found damaged, confirmed by reading its file whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedPack {
    pub id: String,
    /// The file is gone (`false`), or it is there with other bytes than written (`true`).
    pub present: bool,
    pub detail: String,
}

/// What [`Repository::drop_damaged_packs`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PackRepair {
    /// Packs no index file lists any more.
    pub dropped: Vec<String>,
    /// Damaged pack files deleted once no index referred to them.
    pub deleted: Vec<String>,
}

/// What to back up.
pub struct BackupRequest<'a> {
    pub job: &'a str,
    /// The snapshot's host name: the server's name, or this machine's for local jobs.
    pub host: &'a str,
    pub paths: Vec<PathBuf>,
    pub source: &'a dyn crate::source::Source,
    /// Extra entries in walk order (the spooled dumps), merged into the walk.
    pub extra: Vec<Entry>,
    pub problems: Problems,
    /// Tag the snapshot `partial` even when the walk itself had no problems (failed dumps).
    pub partial: bool,
    /// Content bytes handed to the archiver; shared so a progress display can read it.
    pub bytes_read: Arc<AtomicU64>,
    /// Set from another thread to stop the walk; the snapshot made so far is then removed
    /// and an error returned.
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
    /// Data blobs this run stored (new content after deduplication).
    pub data_blobs: u64,
    pub partial: bool,
}

/// What to restore, and where.
#[derive(Debug, Clone, Copy)]
pub struct RestoreRequest<'a> {
    pub job: &'a str,
    /// `latest` (the job's newest snapshot) or a snapshot id or its prefix.
    pub snapshot: &'a str,
    /// The directory written into; nothing is written outside it.
    pub target: &'a Path,
    /// A path in the snapshot: a directory's contents go into the target, any other entry
    /// to `target/<its name>`. `None`: the whole snapshot.
    pub path: Option<&'a Path>,
    /// The entry at `path` must be a regular file (a dump).
    pub only_file: bool,
    /// Files written at once (0: one per core).
    pub workers: usize,
}

impl<'a> RestoreRequest<'a> {
    /// The whole snapshot into `target`, one writer per core.
    pub fn new(job: &'a str, snapshot: &'a str, target: &'a Path) -> Self {
        RestoreRequest {
            job,
            snapshot,
            target,
            path: None,
            only_file: false,
            workers: 0,
        }
    }

    /// Only `path` of the snapshot.
    pub fn at(self, path: &'a Path) -> Self {
        RestoreRequest {
            path: Some(path),
            ..self
        }
    }

    /// Where the restore puts the snapshot's entry `entry`, by the rule of
    /// [`Repository::restore`]: without a path `target/<entry's whole path>`; below a
    /// directory path, `target/<entry's path below it>` (the directory itself is the target);
    /// a path that is not a directory, `target/<its name>`. `None`: not part of the restore.
    pub fn target_of(&self, path_is_dir: bool, entry: &Path) -> Option<PathBuf> {
        let Some(root) = self.path.filter(|p| *p != Path::new("/")) else {
            return Some(self.target.join(entry.strip_prefix("/").unwrap_or(entry)));
        };
        if !path_is_dir {
            return (entry == root).then(|| self.target.join(root.file_name().unwrap_or_default()));
        }
        let below = entry.strip_prefix(root).ok()?;
        Some(if below.as_os_str().is_empty() {
            self.target.to_owned()
        } else {
            self.target.join(below)
        })
    }

    /// Each entry of `entries` (the listing of this request's path, as
    /// [`Repository::entries`] gives it, the path's own entry first) with where the restore
    /// puts it ([`RestoreRequest::target_of`]); entries outside the restore are left out.
    pub fn placed<'e>(
        &self,
        entries: &'e [SnapshotEntry],
    ) -> impl Iterator<Item = (&'e SnapshotEntry, PathBuf)> + use<'e, '_, 'a> {
        let path_is_dir =
            self.path.is_none() || entries.first().is_some_and(|e| e.kind == NodeKind::Dir);
        entries.iter().filter_map(move |e| {
            let at = self.target_of(path_is_dir, Path::new(&e.path))?;
            Some((e, at))
        })
    }
}

/// What `restore --verify` found when it read back what was restored.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verified {
    /// Files read back and found equal.
    pub files: u64,
    pub bytes: u64,
    /// Entries that are not as the snapshot holds them, and how.
    pub differ: Vec<NotRestored>,
}

/// An entry a restore did not write, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotRestored {
    /// The entry's path in the snapshot.
    pub path: String,
    pub reason: String,
}

/// What a restore wrote, and what it did not.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreOutcome {
    pub snapshot_id: String,
    /// Non-directories written (files, symlinks, FIFOs).
    pub files: u64,
    pub dirs: u64,
    /// Content bytes written.
    pub bytes: u64,
    /// Entries refused: unsafe or duplicate names, devices and sockets, or a non-empty
    /// directory in the target where a non-directory must go. Nothing was written for them.
    pub refused: Vec<NotRestored>,
    /// Entries that could not be written: content or listing unreadable in the repository,
    /// or an error of the target's filesystem. Partial content is removed.
    pub failed: Vec<NotRestored>,
}

impl RestoreOutcome {
    /// True when every entry of the snapshot (or sub path) was written.
    pub fn complete(&self) -> bool {
        self.refused.is_empty() && self.failed.is_empty()
    }
}

/// What an entry of a snapshot is, by restic's names for its node types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    /// A block device.
    Dev,
    Chardev,
    Fifo,
    Socket,
}

/// One entry of a snapshot, as `burrow ls`, `find` and `diff` see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotEntry {
    /// Its absolute path in the snapshot (`/srv/www/index.html`).
    pub path: String,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Content bytes (files); 0 for the others.
    pub size: u64,
    /// The Unix permission bits, setuid, setgid and sticky included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// RFC 3339.
    pub mtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// The ids of its content's blobs, in order: two files hold the same content exactly
    /// when these are equal.
    #[serde(skip)]
    pub content: Vec<String>,
}

/// A snapshot and the entries of it that were asked for.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotEntries {
    pub snapshot: SnapshotInfo,
    pub entries: Vec<SnapshotEntry>,
}

/// What a job's snapshots hold, and what they take in the repository (`burrow stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobStats {
    pub job: String,
    pub snapshots: u64,
    /// Entries (of every type), regular files and their bytes in the newest snapshot: what
    /// a restore of it writes (restic's `stats --mode restore-size`).
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// The file bytes of all the job's snapshots added up: what as many full copies would
    /// take.
    pub all_bytes: u64,
    /// The blobs (data and trees) the job's snapshots refer to, each counted once, and their
    /// size as stored, compressed and encrypted (restic's `stats --mode raw-data`).
    pub blobs: u64,
    pub stored_bytes: u64,
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

/// A snapshot archived but not yet saved: the run looks at it (anomaly guard) before it
/// decides the snapshot's tags and commits it ([`Repository::commit`]).
pub trait PendingSnapshot: Send + 'static {
    /// Something could not be read (the problems of the walk), or the request said so.
    fn partial(&self) -> bool;
    fn counts(&self) -> PendingCounts;
}

/// An open repository.
pub trait Repository: Send + Sync + 'static {
    /// restic's lock in `locks/`, held until dropped.
    type Lock: Send + 'static;
    type Pending: PendingSnapshot;

    /// The repository's id (from its config file), as stock restic shows it; the volume's
    /// marker names it.
    fn id(&self) -> String;
    /// restic's shared lock for a backup: written at once; every write of the backup waits
    /// for the lock to settle and is refused when another process holds it exclusively.
    fn lock_for_backup(&self) -> Result<Self::Lock, RunError>;
    /// restic's shared lock (backup, check) or exclusive lock (forget, prune, repairs).
    fn lock(&self, exclusive: bool) -> Result<Self::Lock, RunError>;
    /// Removes the `-tmp-` files of interrupted writes; returns what it removed.
    fn remove_tmp_debris(&self) -> Result<Vec<PathBuf>, RunError>;
    /// Every snapshot file (of `job` when given): those read, oldest first, and those that
    /// cannot be read.
    fn snapshot_listing(&self, job: Option<&str>) -> Result<SnapshotListing, RunError>;
    /// Reads the request's source into packs, trees and index; the snapshot file is held
    /// back in the returned pending snapshot. Cancelled: an error, and nothing references
    /// what was written.
    fn archive(&self, req: BackupRequest<'_>) -> Result<Self::Pending, RunError>;
    /// Writes the pending snapshot's file with `tags` added.
    fn commit(&self, pending: Self::Pending, tags: &[&str]) -> Result<BackupOutcome, RunError>;
    /// What [`Repository::forget`] would do, changing nothing (`burrow forget --dry-run`).
    fn forget_plan(&self, job: &str, keep: &Policy) -> Result<Plan, RunError>;
    /// Forgets the job's snapshots the policy does not keep (never the newest complete one).
    fn forget(&self, job: &str, keep: &Policy) -> Result<Plan, RunError>;
    /// Removes the data no snapshot references any more.
    fn prune(&self) -> Result<(), RunError>;
    /// Checks the repository, reading back `read_data` of the packs when given (`"5%"`,
    /// `"1/7"`, `"all"`).
    fn check_report(&self, read_data: Option<&str>) -> Result<CheckReport, RunError>;
    /// Takes damaged packs out of the index (and deletes their files), so no later run
    /// reuses their blobs.
    fn drop_damaged_packs(&self, packs: &[DamagedPack]) -> Result<PackRepair, RunError>;
    /// Writes the request's entries into its target, confined to it: an entry that would
    /// land outside it, or replace what is not the restore's to replace, is refused.
    fn restore(&self, req: RestoreRequest<'_>) -> Result<RestoreOutcome, RunError>;
    /// The job's snapshot (`latest`, an id or its prefix) and its entries at `path`: the
    /// entry itself and, for a directory, what is below it (the whole snapshot without a
    /// path), depth first in name order; below the first level only when `recursive`.
    fn entries(
        &self,
        job: &str,
        snapshot: &str,
        path: Option<&Path>,
        recursive: bool,
    ) -> Result<SnapshotEntries, RunError>;
    /// What the job's snapshots hold and take (see [`JobStats`]).
    fn stats(&self, job: &str) -> Result<JobStats, RunError>;
    /// Reads back what [`Repository::restore`] of `req` wrote and compares it with the
    /// snapshot: each entry's type, each file's size and content (chunk by chunk, against the
    /// stored blobs' ids), each link's target.
    fn verify(&self, req: RestoreRequest<'_>) -> Result<Verified, RunError>;
    /// Writes the regular file `path` of the job's snapshot to `w` (a dump, into its restore
    /// command); returns the bytes written.
    fn dump(
        &self,
        job: &str,
        snapshot: &str,
        path: &Path,
        w: &mut dyn std::io::Write,
    ) -> Result<u64, RunError>;
}

/// Opens repositories: the one way every run and command reaches an existing one.
pub trait Repositories: Clone + Send + Sync + 'static {
    type Repo: Repository;

    /// Opens the repository at `path` with the password in `password_file` (a key
    /// derivation: blocking, about half a second).
    fn open(&self, path: &Path, password_file: &Path) -> Result<Self::Repo, RunError>;
    /// Creates a repository at `path` (and the directory) with the password in
    /// `password_file`, as `burrow init` and `restic init` do; an existing one is refused.
    fn init(&self, path: &Path, password_file: &Path) -> Result<Self::Repo, RunError>;
}
