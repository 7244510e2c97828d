//! The restic-format repository, through rustic_core and its local backend.
//!
//! Invariants kept here:
//! - a run only ever *adds* files to the repository (packs, index, snapshot); an interrupted
//!   run leaves unreferenced packs at worst, never a damaged snapshot;
//! - the snapshot of a job carries the tags `burrow` and `job=<name>`, so stock `restic
//!   snapshots --tag job=<name>` finds it; a snapshot with unreadable entries is re-tagged
//!   `partial` (written before the untagged one is removed);
//! - forget removes what `restic forget --keep-*` (0.14) would remove from the job's snapshots,
//!   except the newest complete snapshot of the job (`retention::protected`), which it never removes;
//! - restore never writes outside its target directory nor through an entry already in it,
//!   whatever the repository holds (`restore.rs`).
//! - a snapshot file that cannot be read is named and skipped, never fatal to a listing
//!   ([`Repo::job_snapshots`] reads each file on its own); prune refuses while one exists;
//! - a check names damaged packs, and [`Repo::drop_damaged_packs`] takes them out of the
//!   index, so no later run reuses their blobs.
//!
//! rustic_core is blocking (rayon, std threads): callers in async code use `spawn_blocking`.

mod browse;
mod chunker;
mod crypto;
mod keys;
pub mod lock;
mod node;
mod pack;
mod parent;
mod pinned;
mod port;
mod restore;
mod writer;

use pinned::SnapshotGate;
use std::collections::{BTreeSet, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_core::retention::{self, Snap};
use burrow_core::short_id;
use burrow_core::source::{Entry, NoParent, ParentIndex, WalkContext};
use rustic_core::repofile::{Chunker, SnapshotFile, SnapshotId, SnapshotSummary};
use rustic_core::{
    CheckOptions, ConfigOptions, Credentials, FileType, Id, KeyOptions, OpenStatus, PruneOptions,
    ReadSubsetOption, RepairIndexOptions, Repository, RepositoryBackends, RepositoryOptions,
    RusticError, SnapshotOptions, WriteBackend,
};

use burrow_core::repository::{
    BackupOutcome, BackupRequest, CheckReport, DamagedPack, DamagedSnapshot, JobStats, PackRepair,
    PendingCounts, RestoreOutcome, RestoreRequest, SnapshotEntries, SnapshotInfo, SnapshotListing,
    TAG, TAG_PARTIAL, Verified, job_tag,
};
use burrow_core::retention::{Plan, Policy, PolicyError};
pub use lock::{LockInfo, Locks, RepoLockGuard};
pub use port::LocalRepositories;
pub use rustic_core::jiff::Zoned;

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
    /// A lock file of restic or another burrow forbids the lock (the message names its holder).
    #[error("{0}")]
    Locked(String),
    #[error("interrupted before the snapshot was complete; nothing was kept")]
    Interrupted,
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{}", prune_refusal(.0))]
    DamagedSnapshots(Vec<DamagedSnapshot>),
    #[error("repository: {0}")]
    Rustic(String),
}

/// The chunker of the repository's config; a repository of fixed-size chunks is refused.
fn chunking_of(config: &rustic_core::repofile::ConfigFile) -> Result<chunker::Chunking, RepoError> {
    if config.chunker() != Chunker::Rabin {
        return Err(RepoError::Rustic(
            "this repository cuts files into fixed-size chunks, which burrow does not \
             write; back up into a repository made by `burrow init` or `restic init`"
                .into(),
        ));
    }
    Ok(chunker::Chunking::new(
        config.poly()?,
        config.chunk_size(),
        config.chunk_min_size(),
        config.chunk_max_size(),
    ))
}

/// The snapshot's summary, as restic writes it, from what the writer counted; `start` is
/// when the backup began, `snap_time` the snapshot's time.
fn summary_of(w: &writer::Written, start: Zoned, snap_time: &Zoned) -> SnapshotSummary {
    let end = Zoned::now();
    let secs = |from: &Zoned| end.duration_since(from).as_secs_f64().max(0.0);
    let mut sum = SnapshotSummary::default();
    sum.files_new = w.files_new;
    sum.files_changed = w.files_changed;
    sum.files_unmodified = w.files_unmodified;
    sum.total_files_processed = w.files;
    sum.total_bytes_processed = w.file_bytes;
    sum.dirs_new = w.dirs_new;
    sum.dirs_changed = w.dirs_changed;
    sum.dirs_unmodified = w.dirs_unmodified;
    sum.total_dirs_processed = w.dirs;
    sum.data_blobs = w.data_blobs;
    sum.tree_blobs = w.tree_blobs;
    sum.data_added = w.data_added + w.tree_added;
    sum.data_added_packed = w.data_added_packed + w.tree_added_packed;
    sum.data_added_files = w.data_added;
    sum.data_added_files_packed = w.data_added_packed;
    sum.data_added_trees = w.tree_added;
    sum.data_added_trees_packed = w.tree_added_packed;
    sum.command = "burrow".into();
    sum.backup_duration = secs(&start);
    sum.total_duration = secs(snap_time);
    sum.backup_start = start;
    sum.backup_end = end;
    sum
}

impl From<RepoError> for burrow_core::RunError {
    /// A lock held by restic or another burrow goes away by itself; everything else needs a
    /// person (a password, a damaged repository, a missing one).
    fn from(e: RepoError) -> Self {
        let temporary = matches!(e, RepoError::Locked(_));
        burrow_core::RunError::classed(temporary, e.to_string())
    }
}

fn prune_refusal(d: &[DamagedSnapshot]) -> String {
    let names: Vec<String> = d
        .iter()
        .map(|s| format!("snapshot file {} ({})", s.file, s.error))
        .collect();
    let paths: Vec<&str> = d.iter().map(|s| s.path.as_str()).collect();
    let (it, they) = if d.len() == 1 {
        ("it", "it references")
    } else {
        ("them", "they reference")
    };
    format!(
        "{} cannot be read, so prune cannot know what {they}; nothing was pruned. Delete {it} \
         (rm {}; stock restic cannot forget a snapshot it cannot read) and prune again",
        names.join(", "),
        paths.join(" ")
    )
}

/// Runs a rustic_core call that may panic (several `unwrap`s on data read from the disk): a
/// panic becomes an error naming `what`.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, RepoError>) -> Result<T, RepoError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(RepoError::Rustic(format!(
            "{what} stopped on damaged data ({msg}); run `burrow check --read-data`"
        )))
    })
}

impl From<Box<RusticError>> for RepoError {
    fn from(e: Box<RusticError>) -> Self {
        RepoError::Rustic(e.display_log())
    }
}

/// `-tmp-` files untouched for longer than this are debris of an interrupted write.
pub const TMP_DEBRIS_AGE: Duration = Duration::from_secs(10 * 60);

/// The check findings (rustic_core's `CheckError` variants) that are about one pack's file,
/// its size or its content. The variants are not nameable outside rustic_core; their `Debug`
/// form (`Variant { id: PackId(<64 hex>), .. }`, or `id: <64 hex>`) is.
const PACK_FINDINGS: [&str; 10] = [
    "ErrorReadingPack",
    "ErrorCheckingPack",
    "PackSizeMismatchIndex",
    "NoPack",
    "PackSizeMismatch",
    "PackHashMismatch",
    "PackHeaderLengthMismatch",
    "PackHeaderMismatchIndex",
    "PackBlobLengthMismatch",
    "PackBlobHashMismatch",
];

/// The pack a check finding is about, from the finding's `Debug` form.
fn finding_pack(debug: &str) -> Option<Id> {
    let (variant, rest) = debug.split_once(" { id: ")?;
    if !PACK_FINDINGS.contains(&variant) {
        return None;
    }
    let rest = rest.strip_prefix("PackId(").unwrap_or(rest);
    let hex = rest.get(..64)?;
    hex.parse().ok()
}

/// A snapshot file as `burrow snapshots` lists it.
fn info(s: &SnapshotFile) -> SnapshotInfo {
    let tags: Vec<String> = s.tags.iter().cloned().collect();
    let id = s.id.to_hex().to_string();
    SnapshotInfo {
        short_id: short_id(&id).to_owned(),
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
}

/// An archived snapshot whose snapshot file is not written yet (see [`Repo::archive`]).
pub struct Pending {
    snap: SnapshotFile,
    parent: Option<SnapshotFile>,
    partial: bool,
    bytes_read: u64,
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
            data_blobs: s.data_blobs,
            partial: tags.contains(&TAG_PARTIAL),
        })
    }
}

pub struct Repo {
    path: PathBuf,
    repo: Repository<OpenStatus>,
    /// Sees every snapshot file this handle writes (see [`Pending::commit`]).
    gate: Arc<SnapshotGate>,
    /// The backend under `repo`.
    be: Arc<pinned::Pinned>,
    /// Damaged snapshot files already logged by this handle (once each).
    warned: Mutex<HashSet<Id>>,
}

fn unopened(
    path: &Path,
    gate: Arc<SnapshotGate>,
) -> Result<(Repository<()>, Arc<pinned::Pinned>), RepoError> {
    let be = Arc::new(pinned::Pinned::new(path, gate)?);
    let opts = RepositoryOptions::default().no_cache(true);
    let repo = Repository::new(&opts, &RepositoryBackends::new(be.clone(), None))?;
    Ok((repo, be))
}

/// Snapshot files as read one by one.
struct Listed {
    snaps: Vec<SnapshotFile>,
    damaged: Vec<DamagedSnapshot>,
}

/// Creates a repository at `path` (the directory may exist, but must hold no repository).
pub fn init(path: &Path, password: &Password) -> Result<Repo, RepoError> {
    let gate = Arc::new(SnapshotGate::default());
    let (repo, be) = unopened(path, gate.clone())?;
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
    // rustic_core's key costs 128 MiB at every open: replaced by one at restic's cost.
    let (bytes, id) = keys::key_file(&repo.key(), &password.0, keys::calibrate())?;
    be.write_bytes(FileType::Key, &id, false, bytes::Bytes::from(bytes).into())?;
    if let Some(old) = repo.key_id() {
        be.remove(FileType::Key, old, false)?;
    }
    Ok(Repo {
        path: path.to_owned(),
        repo,
        gate,
        be,
        warned: Mutex::default(),
    })
}

impl Repo {
    /// A second handle on the same repository: rustic_core's typestate conversions
    /// (`to_indexed*`) consume the handle, and an open handle cannot be cloned.
    fn reopen(&self) -> Result<Repository<OpenStatus>, RepoError> {
        // With the master key of the open handle: no second key derivation (scrypt costs
        // about half a second and 128 MiB on a Pi).
        Ok(unopened(&self.path, Arc::default())?
            .0
            .open(&Credentials::Masterkey(self.repo.key()))?)
    }

    pub fn open(path: &Path, password: &Password) -> Result<Repo, RepoError> {
        if !path.join("config").is_file() {
            return Err(RepoError::NotInitialised {
                path: path.to_owned(),
            });
        }
        let gate = Arc::new(SnapshotGate::default());
        let (repo, be) = unopened(path, gate.clone())?;
        if repo.config_id()?.is_none() {
            return Err(RepoError::NotInitialised {
                path: path.to_owned(),
            });
        }
        let repo =
            keys::bounded(|| repo.open(&Credentials::password(&password.0))).map_err(|e| {
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
            be,
            warned: Mutex::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// restic's shared lock for a backup, without waiting out its settle: the lock file is
    /// written and held at once, and the second look (200 ms later, `lock.rs`) runs on a
    /// thread of its own while the backup reads its parent and walks the source. Every
    /// write through this handle waits for that look, and is refused when it found another
    /// process's exclusive lock; the pull then fails with that process named.
    pub fn lock_for_backup(&self) -> Result<RepoLockGuard, RepoError> {
        let (guard, look) = self.locks()?.shared_settling()?;
        self.be.writes.hold();
        let be = self.be.clone();
        let settle = move |look: lock::SecondLook| {
            be.writes.settle(look.take());
        };
        let (settle_there, look_there) = (settle.clone(), look.clone());
        if let Err(e) = std::thread::Builder::new()
            .name("lock-look".into())
            .spawn(move || settle_there(look_there))
        {
            // The same look, taken here: the lock is the same, the backup only starts later.
            tracing::debug!(error = %e, "no thread for the lock's second look");
            settle(look);
        }
        Ok(guard)
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

    /// Reads every snapshot file on its own, so one that cannot be read, decrypted or parsed
    /// is named (a warning, once per file and handle) and skipped instead of failing the
    /// listing. Damaged files cannot be told apart by job: they are listed for every job.
    fn read_snapshots(&self, job: Option<&str>) -> Result<Listed, RepoError> {
        let ids: Vec<SnapshotId> = guarded("listing snapshots", || {
            Ok(self.repo.list::<SnapshotId>()?.collect())
        })?;
        let tag = job.map(job_tag);
        let mut snaps = Vec::with_capacity(ids.len());
        let mut damaged = Vec::new();
        for id in ids {
            let hex = id.to_hex().to_string();
            let read = guarded("reading a snapshot file", || {
                Ok(self.repo.get_snapshots(&[hex.as_str()])?)
            });
            let file = format!("snapshots/{hex}");
            let path = self.path.join(&file);
            match read {
                Ok(found) => snaps.extend(found.into_iter().filter(|s| match &tag {
                    Some(t) => s.tags.contains(t),
                    None => true,
                })),
                // removed since it was listed (a forget at the same moment): not damage
                Err(_) if !path.exists() => {}
                Err(e) => {
                    let error = match e {
                        RepoError::Rustic(m) => m,
                        other => other.to_string(),
                    };
                    let first = self
                        .warned
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(*id);
                    if first {
                        tracing::warn!(
                            "snapshot file {file} cannot be read and is skipped: {error}; \
                             if it stays so, delete it: rm {}",
                            path.display()
                        );
                    }
                    damaged.push(DamagedSnapshot {
                        short_id: short_id(&hex).to_owned(),
                        id: hex,
                        file,
                        path: path.display().to_string(),
                        error,
                        damaged: true,
                    });
                }
            }
        }
        snaps.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(Listed { snaps, damaged })
    }

    /// The readable snapshots (of `job` when given), oldest first. Everything that picks
    /// snapshots goes through here: parent selection, listing, restore, forget.
    fn job_snapshots(&self, job: Option<&str>) -> Result<Vec<SnapshotFile>, RepoError> {
        Ok(self.read_snapshots(job)?.snaps)
    }

    /// Snapshots, oldest first; only those of `job` when given. Damaged snapshot files are
    /// skipped (see [`Repo::snapshot_listing`]).
    pub fn snapshots(&self, job: Option<&str>) -> Result<Vec<SnapshotInfo>, RepoError> {
        Ok(self.snapshot_listing(job)?.snapshots)
    }

    /// Snapshots, oldest first (only those of `job` when given), and the snapshot files that
    /// cannot be read.
    pub fn snapshot_listing(&self, job: Option<&str>) -> Result<SnapshotListing, RepoError> {
        let listed = self.read_snapshots(job)?;
        let snapshots = listed.snaps.iter().map(info).collect();
        Ok(SnapshotListing {
            snapshots,
            damaged: listed.damaged,
        })
    }

    /// Finds one snapshot of `job` by id prefix or `latest`.
    fn find(&self, job: &str, which: &str) -> Result<SnapshotFile, RepoError> {
        let Listed { snaps, damaged } = self.read_snapshots(Some(job))?;
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
            if m.is_empty()
                && let Some(d) = damaged.iter().find(|d| d.id.starts_with(which))
            {
                return Err(RepoError::NoSnapshot {
                    what: format!(
                        "{which:?}: its file {} cannot be read ({}); pick another with \
                         `burrow snapshots {job}`",
                        d.file, d.error
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
        let indexed = self.reopen()?.to_indexed_ids()?;
        let parent = self.job_snapshots(Some(req.job))?.pop();
        let parent_index: Arc<dyn ParentIndex> = match &parent {
            Some(p) => parent::SnapshotParent::load_or_none(&indexed, p),
            None => Arc::new(NoParent),
        };
        let mut ctx = WalkContext::new(parent_index.clone(), req.problems.clone());
        ctx.bytes_read = req.bytes_read.clone();
        let walk = req.source.entries(ctx);
        let walk: Box<dyn Iterator<Item = Entry> + Send> = if req.extra.is_empty() {
            walk
        } else {
            burrow_core::source::merge_walks(walk, Box::new(req.extra.into_iter()))
        };

        let config = self.repo.config();
        let chunking = chunking_of(config)?;
        let sealer = crypto::Sealer::new(&self.repo.key())
            .ok_or_else(|| RepoError::Rustic("the repository key has an unknown form".into()))?;
        let be = &self.be;
        let place = || {
            be.check_place()
                .map_err(|e| std::io::Error::other(e.display_log()))
        };
        let save_index = |data: Vec<u8>, id: Id| {
            be.write_bytes(FileType::Index, &id, false, bytes::Bytes::from(data).into())
                .map_err(|e| std::io::Error::other(e.display_log()))
        };
        let start = Zoned::now();
        let target = writer::Target {
            sealer,
            zstd: config.zstd()?,
            chunking,
            data_dir: self.path.join("data"),
            place: &place,
            save_index: &save_index,
            repo: &indexed,
            parent_tree: parent.as_ref().map(|p| p.tree),
            parent_index,
            problems: req.problems.clone(),
            cancel: req.cancel.clone(),
            workers: 0,
        };
        let w = guarded("backup", || {
            writer::write(&target, walk).map_err(|e| RepoError::Rustic(e.to_string()))
        })?;
        if req.cancel.load(Ordering::Relaxed) {
            // The walk was cut short: what was stored stays (the next run reuses it), but no
            // snapshot is made of it.
            return Err(RepoError::Interrupted);
        }

        let mut snap = SnapshotOptions::default()
            .host(req.host.to_owned())
            .add_tags(&format!("{TAG},{}", job_tag(req.job)))?
            .to_snapshot()?;
        snap.tree = w.tree;
        snap.parent = parent.as_ref().map(|p| p.id);
        let mut paths = req.paths.clone();
        paths.sort();
        for p in &paths {
            snap.paths.add(p.display().to_string());
        }
        snap.summary = Some(summary_of(&w, start, &snap.time));
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

    /// Restores the request's snapshot (an id prefix or `latest`) of its job into its
    /// target, or only its path (a directory's contents go into the target, a single entry
    /// to `target/<name>`; with `only_file`, a regular file such as a dump,
    /// `/burrow-dumps/<name>`). Nothing is written outside the target; entries that were not
    /// written are listed in the outcome (`refused`, `failed`), the rest is restored.
    /// `workers` threads write file contents (0: one per core).
    pub fn restore(&self, req: RestoreRequest<'_>) -> Result<RestoreOutcome, RepoError> {
        let snap = self.find(req.job, req.snapshot)?;
        let workers = if req.only_file { 1 } else { req.workers };
        restore::restore(
            self.reopen()?,
            &snap,
            req.target,
            req.path,
            req.only_file,
            workers,
        )
    }

    /// The job's snapshot and its entries at `path` (see
    /// [`burrow_core::repository::Repository::entries`]).
    pub fn entries(
        &self,
        job: &str,
        snapshot: &str,
        path: Option<&Path>,
        recursive: bool,
    ) -> Result<SnapshotEntries, RepoError> {
        let snap = self.find(job, snapshot)?;
        let entries = browse::entries(self.reopen()?, &snap, path, recursive)?;
        Ok(SnapshotEntries {
            snapshot: info(&snap),
            entries,
        })
    }

    /// What the job's snapshots hold and take in the repository.
    pub fn stats(&self, job: &str) -> Result<JobStats, RepoError> {
        let Listed { snaps, .. } = self.read_snapshots(Some(job))?;
        let repo = self.reopen()?.to_indexed()?;
        browse::Census::new(&repo).stats(job, &snaps)
    }

    /// Reads back what [`Repo::restore`] of `req` wrote and compares it with the snapshot.
    pub fn verify(&self, req: RestoreRequest<'_>) -> Result<Verified, RepoError> {
        let snap = self.find(req.job, req.snapshot)?;
        let entries = browse::entries(self.reopen()?, &snap, req.path, true)?;
        let chunking = chunking_of(self.repo.config())?;
        Ok(browse::verify(&entries, &req, &chunking))
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
    pub fn forget_plan(&self, job: &str, keep: &Policy) -> Result<Plan, RepoError> {
        let snaps: Vec<Snap> = self.job_snapshots(Some(job))?.iter().map(snap_of).collect();
        Ok(retention::forget_plan(&snaps, keep)?)
    }

    /// Computes [`Repo::forget_plan`] and removes the snapshots in its `remove` list; returns
    /// the plan applied. Data of the removed snapshots stays until [`Repo::prune`].
    pub fn forget(&self, job: &str, keep: &Policy) -> Result<Plan, RepoError> {
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
    ///
    /// Refused while a snapshot file cannot be read: what it references would be deleted.
    pub fn prune(&self) -> Result<(), RepoError> {
        let damaged = self.read_snapshots(None)?.damaged;
        if !damaged.is_empty() {
            return Err(RepoError::DamagedSnapshots(damaged));
        }
        let opts = PruneOptions::default().instant_delete(true);
        let plan = self.repo.prune_plan(&opts)?;
        self.repo.prune(&opts, plan)?;
        Ok(())
    }

    /// Checks the repository's structure, and reads back `read_data` of the packs
    /// (`"5%"`, `"1/7"`, `"all"`) when given. `Err` when anything is damaged.
    pub fn check(&self, read_data: Option<&str>) -> Result<(), RepoError> {
        let report = self.check_report(read_data)?;
        if report.is_clean() {
            return Ok(());
        }
        let mut all: Vec<String> = report
            .damaged_snapshots
            .iter()
            .map(|d| format!("snapshot file {} cannot be read: {}", d.file, d.error))
            .collect();
        all.extend(report.errors);
        Err(RepoError::Rustic(all.join("; ")))
    }

    /// The repository check (`read_data` as for [`Repo::check`]), with every finding. The
    /// trees checked are those of the readable snapshots; unreadable snapshot files are
    /// findings of their own. Packs the check names are re-read whole: a missing file or one
    /// whose bytes do not hash to its name is a [`DamagedPack`]; an intact one is left alone
    /// (the finding stays in `errors`), and so is one that cannot be read now.
    pub fn check_report(&self, read_data: Option<&str>) -> Result<CheckReport, RepoError> {
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
        let listed = self.read_snapshots(None)?;
        let trees = listed.snaps.iter().map(|s| s.tree).collect();
        let results = guarded("the check", || {
            Ok(self.repo.check_with_trees(opts, trees)?)
        })?;
        let mut report = CheckReport {
            damaged_snapshots: listed.damaged,
            ..CheckReport::default()
        };
        let mut named: Vec<Id> = Vec::new();
        for (level, finding) in &results.0 {
            let pack = finding_pack(&format!("{finding:?}"));
            let text = match pack {
                Some(id) => format!("pack {}: {finding}", &*id.to_hex()),
                None => finding.to_string(),
            };
            // `CheckErrorLevel` is not nameable either: `Warn` or `Error`.
            if format!("{level:?}") == "Warn" {
                report.warnings.push(text);
                continue;
            }
            report.errors.push(text);
            if let Some(id) = pack
                && !named.contains(&id)
            {
                named.push(id);
            }
        }
        for id in named {
            let hex = id.to_hex().to_string();
            match self.be.pack_state(&id) {
                pinned::PackState::Missing => report.damaged_packs.push(DamagedPack {
                    id: hex,
                    present: false,
                    detail: "the pack file is missing".into(),
                }),
                pinned::PackState::Damaged(detail) => report.damaged_packs.push(DamagedPack {
                    id: hex,
                    present: true,
                    detail,
                }),
                pinned::PackState::Intact => report.warnings.push(format!(
                    "pack {hex}: its file is intact (the finding is about the index); \
                     `restic repair index` rebuilds it"
                )),
                pinned::PackState::Unreadable(e) => report.warnings.push(format!(
                    "pack {hex}: cannot be re-read now ({e}); it is left as it is"
                )),
            }
        }
        Ok(report)
    }

    /// Takes `packs` (from [`Repo::check_report`]) out of the index, as `restic repair index`
    /// would once they are gone: every index file that lists one is replaced by one without
    /// it (rustic_core's `repair_index`, with the packs hidden from its pack listing), then
    /// the damaged files are deleted. Afterwards no run reuses their blobs: a run stores
    /// them again from the source, under the same ids, which makes older snapshots that
    /// share them whole again. Blobs whose source is gone stay missing; `burrow check`
    /// keeps naming the snapshots that need them.
    ///
    /// Rewrites the index: the caller holds the repository lock, and no other process may
    /// write the repository meanwhile.
    pub fn drop_damaged_packs(&self, packs: &[DamagedPack]) -> Result<PackRepair, RepoError> {
        if packs.is_empty() {
            return Ok(PackRepair::default());
        }
        let ids: Vec<Id> = packs
            .iter()
            .map(|p| p.id.parse::<Id>())
            .collect::<Result<_, _>>()?;
        self.be.hide_packs(&ids);
        let repaired = guarded("repairing the index", || {
            Ok(self
                .repo
                .repair_index(&RepairIndexOptions::default(), false)?)
        });
        self.be.unhide_packs();
        repaired?;
        let mut out = PackRepair {
            dropped: packs.iter().map(|p| p.id.clone()).collect(),
            deleted: Vec::new(),
        };
        for (p, id) in packs.iter().zip(&ids) {
            if p.present {
                self.be.remove(FileType::Pack, id, false)?;
                out.deleted.push(p.id.clone());
            }
        }
        Ok(out)
    }

    /// Removes the `-tmp-` files of writes interrupted by a kill or a power cut (untouched
    /// for [`TMP_DEBRIS_AGE`]); returns their paths. The caller holds the repository lock.
    pub fn remove_tmp_debris(&self) -> Result<Vec<PathBuf>, RepoError> {
        Ok(self.be.remove_tmp_debris(TMP_DEBRIS_AGE)?)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_findings_are_read_from_their_debug_form() {
        let hex = "0123456789abcdef".repeat(4);
        let id: Id = hex.parse().unwrap();
        let a = format!("ErrorReadingPack {{ id: PackId({hex}), source: x }}");
        assert_eq!(finding_pack(&a), Some(id));
        let b = format!("PackSizeMismatchIndex {{ id: {hex}, to_delete: false }}");
        assert_eq!(finding_pack(&b), Some(id));
        let c = format!("PackBlobOffsetMismatch {{ id: PackId({hex}), blob_id: x }}");
        assert_eq!(finding_pack(&c), None, "about the index, not the pack file");
        assert_eq!(finding_pack("ErrorCheckingTrees { source: x }"), None);
        assert_eq!(finding_pack("NoPack { id: PackId(12ab) }"), None);
    }
}
