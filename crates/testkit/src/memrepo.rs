//! An in-memory fake of core's repository port: snapshots hold the files' contents, the
//! password is the one given at [`MemRepos::init`] and checked against the password file at
//! open (trimmed, as restic reads it), restic's locks conflict as they do on disk, and forget applies core's retention.
//! For in-process tests of whole runs; the contract it shares with the real repository is
//! what `burrow-run`'s run tests assert of both.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use burrow_core::repository::{
    BackupOutcome, BackupRequest, CheckReport, DamagedPack, JobStats, NodeKind, NotRestored,
    PackRepair, PendingCounts, PendingSnapshot, Repositories, Repository, RestoreOutcome,
    RestoreRequest, SnapshotEntries, SnapshotEntry, SnapshotInfo, SnapshotListing, TAG, Verified,
    job_tag,
};
use burrow_core::retention::{self, Plan, Policy, Snap};
use burrow_core::source::{Entry, EntryKind, ParentIndex, Time, WalkContext};
use burrow_core::{RunError, short_id};
use chrono::{DateTime, FixedOffset, Utc};

/// A file as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemFile {
    pub content: Vec<u8>,
    pub mtime: Option<Time>,
}

/// A saved snapshot.
#[derive(Debug, Clone)]
pub struct MemSnapshot {
    pub id: String,
    pub job: String,
    pub host: String,
    pub time: DateTime<FixedOffset>,
    pub tags: Vec<String>,
    pub paths: Vec<PathBuf>,
    pub files: BTreeMap<PathBuf, MemFile>,
    pub dirs: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct State {
    snapshots: Vec<MemSnapshot>,
    shared: usize,
    exclusive: bool,
    saved: u64,
    prunes: usize,
}

#[derive(Debug)]
struct Inner {
    id: String,
    password: String,
    state: Mutex<State>,
}

/// One repository; clones are the same repository.
#[derive(Debug, Clone)]
pub struct MemRepo(Arc<Inner>);

/// The repositories of an in-process test, by path.
#[derive(Debug, Clone, Default)]
pub struct MemRepos(Arc<Mutex<BTreeMap<PathBuf, MemRepo>>>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemRepos {
    /// Creates the repository at `path` with `password` (a test's set-up; `burrow init`
    /// is [`Repositories::init`]).
    pub fn create(&self, path: &Path, password: &str) -> MemRepo {
        let mut repos = lock(&self.0);
        let id = format!("{:0>64}", repos.len() + 1);
        let repo = MemRepo(Arc::new(Inner {
            id,
            password: password.to_owned(),
            state: Mutex::default(),
        }));
        repos.insert(path.to_owned(), repo.clone());
        repo
    }
}

impl Repositories for MemRepos {
    type Repo = MemRepo;

    fn open(&self, path: &Path, password_file: &Path) -> Result<MemRepo, RunError> {
        let text = std::fs::read_to_string(password_file).map_err(|e| {
            RunError::permanent(format!(
                "cannot read the repository password from {}: {e}",
                password_file.display()
            ))
        })?;
        let text = text.trim();
        let repo = lock(&self.0).get(path).cloned().ok_or_else(|| {
            RunError::permanent(format!(
                "no repository at {}: create it with `burrow init`",
                path.display()
            ))
        })?;
        if text != repo.0.password {
            return Err(RunError::permanent(format!(
                "wrong password for the repository at {}: check repository.password_file",
                path.display()
            )));
        }
        Ok(repo)
    }

    fn init(&self, path: &Path, password_file: &Path) -> Result<MemRepo, RunError> {
        let text = std::fs::read_to_string(password_file).map_err(|e| {
            RunError::permanent(format!(
                "cannot read the repository password from {}: {e}",
                password_file.display()
            ))
        })?;
        if lock(&self.0).contains_key(path) {
            return Err(RunError::permanent(format!(
                "a repository already exists at {}; nothing was changed",
                path.display()
            )));
        }
        Ok(self.create(path, text.trim()))
    }
}

/// restic's lock on a [`MemRepo`], released when dropped.
#[derive(Debug)]
pub struct MemLock {
    repo: MemRepo,
    exclusive: bool,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut st = lock(&self.repo.0.state);
        if self.exclusive {
            st.exclusive = false;
        } else {
            st.shared -= 1;
        }
    }
}

impl MemRepo {
    /// The saved snapshots, oldest first.
    pub fn snapshots(&self) -> Vec<MemSnapshot> {
        lock(&self.0.state).snapshots.clone()
    }

    /// How often prune ran.
    pub fn prunes(&self) -> usize {
        lock(&self.0.state).prunes
    }

    /// Takes restic's lock as another process would (a `restic prune` elsewhere holds the
    /// exclusive one); refused when it conflicts.
    pub fn lock_as_another(&self, exclusive: bool) -> Result<MemLock, RunError> {
        let mut st = lock(&self.0.state);
        if st.exclusive || (exclusive && st.shared > 0) {
            return Err(RunError::temporary(
                "the repository is locked by another process (restic or burrow); it is \
                 released when that process ends",
            ));
        }
        if exclusive {
            st.exclusive = true;
        } else {
            st.shared += 1;
        }
        Ok(MemLock {
            repo: self.clone(),
            exclusive,
        })
    }

    /// The job's snapshot `which`: `latest`, or an id or a unique prefix of one.
    fn find(&self, job: &str, which: &str) -> Result<MemSnapshot, RunError> {
        let st = lock(&self.0.state);
        let mut of_job = st.snapshots.iter().filter(|s| s.job == job);
        let found = if which == "latest" {
            of_job.next_back()
        } else {
            let m: Vec<&MemSnapshot> = of_job.filter(|s| s.id.starts_with(which)).collect();
            if m.len() > 1 {
                return Err(RunError::permanent(format!(
                    "no snapshot {which:?} (ambiguous: {} snapshots of job {job} match)",
                    m.len()
                )));
            }
            m.first().copied()
        };
        found
            .cloned()
            .ok_or_else(|| RunError::permanent(format!("no snapshot {which:?} for job {job}")))
    }

    fn latest(&self, job: &str) -> Option<MemSnapshot> {
        let st = lock(&self.0.state);
        st.snapshots.iter().rev().find(|s| s.job == job).cloned()
    }
}

/// The parent snapshot's files, for the walk's unchanged-file test.
struct Parent(BTreeMap<PathBuf, MemFile>);

impl ParentIndex for Parent {
    fn unchanged(&self, path: &Path, size: u64, mtime: Option<Time>) -> bool {
        self.0
            .get(path)
            .is_some_and(|f| f.content.len() as u64 == size && f.mtime == mtime)
    }
}

/// A snapshot archived and not saved yet.
#[derive(Debug)]
pub struct MemPending {
    snapshot: MemSnapshot,
    counts: PendingCounts,
    partial: bool,
    parent: Option<String>,
    bytes_read: u64,
}

impl PendingSnapshot for MemPending {
    fn partial(&self) -> bool {
        self.partial
    }

    fn counts(&self) -> PendingCounts {
        self.counts
    }
}

/// Reads one regular file of the walk into `snap`, from the parent when it is unchanged (the
/// source counts the bytes it hands over).
fn take_file(
    e: Entry,
    parent: &Parent,
    snap: &mut MemSnapshot,
    counts: &mut PendingCounts,
    ctx: &WalkContext,
) {
    let mtime = e.meta.mtime;
    let old = parent.0.get(&e.path);
    if parent.unchanged(&e.path, e.meta.size, mtime)
        && let Some(old) = old
    {
        counts.files_unmodified += 1;
        snap.files.insert(e.path, old.clone());
        return;
    }
    let mut content = Vec::new();
    let read = e
        .content
        .map(|c| c.open().and_then(|mut r| r.read_to_end(&mut content)));
    if let Some(Err(err)) = read {
        ctx.problems.push(&e.path, err.to_string());
        return;
    }
    match old {
        Some(_) => counts.files_changed += 1,
        None => counts.files_new += 1,
    }
    snap.files.insert(e.path, MemFile { content, mtime });
}

/// Writes `file` to `dest` with its mtime.
fn write_file(dest: &Path, file: &MemFile) -> std::io::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let f = std::fs::File::create(dest)?;
    std::io::Write::write_all(&mut &f, &file.content)?;
    if let Some(t) = file.mtime {
        let when = std::time::UNIX_EPOCH
            + std::time::Duration::new(u64::try_from(t.secs).unwrap_or(0), t.nanos);
        f.set_modified(when)?;
    }
    Ok(())
}

/// `path` below `root` as a path made only of plain names (no `..`, no root), or `None`.
fn below(path: &Path, root: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(root).ok()?;
    rel.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        .then(|| rel.to_owned())
}

impl MemSnapshot {
    /// Writes what lies at `root` into `target` as the real restore does: a directory's
    /// contents into the target, a file to `target/<its name>`; a path that would leave the
    /// target is refused.
    fn restore_into(&self, root: &Path, target: &Path, out: &mut RestoreOutcome) {
        let not_restored = |path: &Path, reason: String| NotRestored {
            path: path.display().to_string(),
            reason,
        };
        if let Some(file) = self.files.get(root) {
            let name = root.file_name().map(PathBuf::from).unwrap_or_default();
            match write_file(&target.join(name), file) {
                Ok(()) => {
                    out.files += 1;
                    out.bytes += file.content.len() as u64;
                }
                Err(e) => out.failed.push(not_restored(root, e.to_string())),
            }
            return;
        }
        for d in self
            .dirs
            .iter()
            .filter(|d| d.starts_with(root) && *d != root)
        {
            match below(d, root) {
                Some(rel) => match std::fs::create_dir_all(target.join(rel)) {
                    Ok(()) => out.dirs += 1,
                    Err(e) => out.failed.push(not_restored(d, e.to_string())),
                },
                None => out.refused.push(not_restored(d, "not a plain name".into())),
            }
        }
        for (p, file) in self.files.iter().filter(|(p, _)| p.starts_with(root)) {
            let Some(rel) = below(p, root) else {
                out.refused.push(not_restored(p, "not a plain name".into()));
                continue;
            };
            match write_file(&target.join(rel), file) {
                Ok(()) => {
                    out.files += 1;
                    out.bytes += file.content.len() as u64;
                }
                Err(e) => out.failed.push(not_restored(p, e.to_string())),
            }
        }
    }
}

impl MemSnapshot {
    /// Every directory and file of the snapshot with the directories above its paths, as
    /// the real repository's trees hold them, in depth-first name order.
    fn tree(&self) -> BTreeMap<PathBuf, Option<&MemFile>> {
        let mut all: BTreeMap<PathBuf, Option<&MemFile>> = BTreeMap::new();
        for d in self.dirs.iter().chain(&self.paths) {
            for a in d.ancestors().filter(|a| *a != Path::new("/")) {
                all.insert(a.to_owned(), None);
            }
        }
        for (p, f) in &self.files {
            for a in p.ancestors().skip(1).filter(|a| *a != Path::new("/")) {
                all.insert(a.to_owned(), None);
            }
            all.insert(p.clone(), Some(f));
        }
        all
    }
}

/// A file or directory of a [`MemSnapshot`] as a listing shows it (modes and owners are
/// not kept by the fake: 0).
fn mem_entry(path: &Path, file: Option<&MemFile>) -> SnapshotEntry {
    use std::hash::{Hash, Hasher};
    let content = file.map(|f| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        f.content.hash(&mut h);
        format!("{:016x}", h.finish())
    });
    let mtime = file.and_then(|f| f.mtime).and_then(|t| {
        DateTime::from_timestamp(t.secs, t.nanos)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    });
    SnapshotEntry {
        path: path.display().to_string(),
        kind: if file.is_some() {
            NodeKind::File
        } else {
            NodeKind::Dir
        },
        size: file.map_or(0, |f| f.content.len() as u64),
        mode: 0,
        uid: 0,
        gid: 0,
        mtime,
        link_target: None,
        content: content.into_iter().collect(),
    }
}

impl Repository for MemRepo {
    type Lock = MemLock;
    type Pending = MemPending;

    fn id(&self) -> String {
        self.0.id.clone()
    }

    fn lock_for_backup(&self) -> Result<MemLock, RunError> {
        self.lock(false)
    }

    fn lock(&self, exclusive: bool) -> Result<MemLock, RunError> {
        self.lock_as_another(exclusive)
    }

    fn remove_tmp_debris(&self) -> Result<Vec<PathBuf>, RunError> {
        Ok(Vec::new())
    }

    fn snapshot_listing(&self, job: Option<&str>) -> Result<SnapshotListing, RunError> {
        let snapshots = self
            .snapshots()
            .into_iter()
            .filter(|s| job.is_none_or(|j| s.job == j))
            .map(|s| SnapshotInfo {
                short_id: short_id(&s.id).to_owned(),
                id: s.id,
                time: s.time.to_rfc3339(),
                job: Some(s.job),
                host: s.host,
                paths: s.paths.iter().map(|p| p.display().to_string()).collect(),
                partial: s
                    .tags
                    .iter()
                    .any(|t| t == burrow_core::repository::TAG_PARTIAL),
                tags: s.tags,
                files: Some(s.files.len() as u64),
                bytes: Some(s.files.values().map(|f| f.content.len() as u64).sum()),
                bytes_added: None,
            })
            .collect();
        Ok(SnapshotListing {
            snapshots,
            damaged: Vec::new(),
        })
    }

    fn archive(&self, req: BackupRequest<'_>) -> Result<MemPending, RunError> {
        let parent = self.latest(req.job);
        let index = Parent(parent.as_ref().map(|p| p.files.clone()).unwrap_or_default());
        let ctx = WalkContext {
            parent: Arc::new(Parent(index.0.clone())),
            problems: req.problems.clone(),
            bytes_read: req.bytes_read.clone(),
        };
        let mut snap = MemSnapshot {
            id: String::new(),
            job: req.job.to_owned(),
            host: req.host.to_owned(),
            time: Utc::now().fixed_offset(),
            tags: vec![TAG.to_owned(), job_tag(req.job)],
            paths: req.paths,
            files: BTreeMap::new(),
            dirs: Vec::new(),
        };
        let mut counts = PendingCounts {
            parent_files: parent.as_ref().map(|p| p.files.len() as u64),
            ..PendingCounts::default()
        };
        for e in req.source.entries(ctx.clone()).chain(req.extra) {
            if req.cancel.load(Ordering::Relaxed) {
                return Err(RunError::permanent(
                    "interrupted before the snapshot was complete; nothing was kept",
                ));
            }
            match e.kind {
                EntryKind::File => take_file(e, &index, &mut snap, &mut counts, &ctx),
                EntryKind::Dir => snap.dirs.push(e.path),
                _ => {}
            }
        }
        counts.files = snap.files.len() as u64;
        Ok(MemPending {
            snapshot: snap,
            counts,
            partial: req.partial || !req.problems.is_empty(),
            parent: parent.map(|p| p.id),
            bytes_read: req.bytes_read.load(Ordering::Relaxed),
        })
    }

    fn commit(&self, p: MemPending, tags: &[&str]) -> Result<BackupOutcome, RunError> {
        let mut snap = p.snapshot;
        snap.tags.extend(tags.iter().map(|t| (*t).to_owned()));
        let mut st = lock(&self.0.state);
        st.saved += 1;
        snap.id = format!("{:064x}", st.saved);
        let out = BackupOutcome {
            snapshot_id: snap.id.clone(),
            parent_id: p.parent,
            files_new: p.counts.files_new,
            files_changed: p.counts.files_changed,
            files_unmodified: p.counts.files_unmodified,
            dirs: snap.dirs.len() as u64,
            bytes_read: p.bytes_read,
            bytes_added: snap.files.values().map(|f| f.content.len() as u64).sum(),
            data_blobs: p.counts.files_new + p.counts.files_changed,
            partial: tags.contains(&burrow_core::repository::TAG_PARTIAL),
        };
        st.snapshots.push(snap);
        Ok(out)
    }

    fn forget_plan(&self, job: &str, keep: &Policy) -> Result<Plan, RunError> {
        let snaps: Vec<Snap> = lock(&self.0.state)
            .snapshots
            .iter()
            .filter(|s| s.job == job)
            .map(|s| Snap {
                id: s.id.clone(),
                time: s.time,
                tags: s.tags.clone(),
            })
            .collect();
        retention::forget_plan(&snaps, keep).map_err(|e| RunError::permanent(e.to_string()))
    }

    fn forget(&self, job: &str, keep: &Policy) -> Result<Plan, RunError> {
        let plan = self.forget_plan(job, keep)?;
        lock(&self.0.state)
            .snapshots
            .retain(|s| !plan.remove.iter().any(|d| d.id == s.id));
        Ok(plan)
    }

    fn prune(&self) -> Result<(), RunError> {
        lock(&self.0.state).prunes += 1;
        Ok(())
    }

    fn check_report(&self, _read_data: Option<&str>) -> Result<CheckReport, RunError> {
        Ok(CheckReport::default())
    }

    fn drop_damaged_packs(&self, _packs: &[DamagedPack]) -> Result<PackRepair, RunError> {
        Ok(PackRepair::default())
    }

    fn restore(&self, req: RestoreRequest<'_>) -> Result<RestoreOutcome, RunError> {
        let snap = self.find(req.job, req.snapshot)?;
        let root = req.path.unwrap_or(Path::new("/"));
        let is_file = snap.files.contains_key(root);
        let is_dir = root == Path::new("/") || snap.dirs.iter().any(|d| d == root);
        if !is_file && !is_dir {
            return Err(RunError::permanent(format!(
                "no snapshot path {} in snapshot {}",
                root.display(),
                short_id(&snap.id)
            )));
        }
        if req.only_file && !is_file {
            return Err(RunError::permanent(format!(
                "{} is not a file in snapshot {}",
                root.display(),
                short_id(&snap.id)
            )));
        }
        std::fs::create_dir_all(req.target).map_err(|e| {
            RunError::permanent(format!("cannot use target {}: {e}", req.target.display()))
        })?;
        let mut out = RestoreOutcome {
            snapshot_id: snap.id.clone(),
            ..RestoreOutcome::default()
        };
        snap.restore_into(root, req.target, &mut out);
        Ok(out)
    }

    fn entries(
        &self,
        job: &str,
        snapshot: &str,
        path: Option<&Path>,
        recursive: bool,
    ) -> Result<SnapshotEntries, RunError> {
        let snap = self.find(job, snapshot)?;
        let at = path.unwrap_or(Path::new("/"));
        let tree = snap.tree();
        let mut entries = Vec::new();
        if at != Path::new("/") {
            let Some(file) = tree.get(at) else {
                return Err(RunError::permanent(format!(
                    "no snapshot path {} in snapshot {}",
                    at.display(),
                    short_id(&snap.id)
                )));
            };
            entries.push(mem_entry(at, *file));
        }
        let depth = at.components().count();
        for (p, file) in tree.range(at.to_owned()..) {
            if !p.starts_with(at) {
                break;
            }
            let below = p.components().count() - depth;
            if below == 1 || (recursive && below > 1) {
                entries.push(mem_entry(p, *file));
            }
        }
        let listing = self.snapshot_listing(Some(job))?;
        let info = (listing.snapshots.into_iter().find(|s| s.id == snap.id))
            .ok_or_else(|| RunError::permanent("the snapshot went away"))?;
        Ok(SnapshotEntries {
            snapshot: info,
            entries,
        })
    }

    /// A blob here is a file's whole content, stored as it is; trees take no room.
    fn stats(&self, job: &str) -> Result<JobStats, RunError> {
        let snaps: Vec<MemSnapshot> = (self.snapshots().into_iter())
            .filter(|s| s.job == job)
            .collect();
        let mut stats = JobStats {
            job: job.to_owned(),
            snapshots: snaps.len() as u64,
            ..JobStats::default()
        };
        let mut contents = std::collections::BTreeSet::new();
        for snap in &snaps {
            let tree = snap.tree();
            let bytes: u64 = snap.files.values().map(|f| f.content.len() as u64).sum();
            stats.all_bytes += bytes;
            (stats.entries, stats.files, stats.bytes) =
                (tree.len() as u64, snap.files.len() as u64, bytes);
            contents.extend(snap.files.values().map(|f| f.content.clone()));
        }
        stats.blobs = contents.len() as u64;
        stats.stored_bytes = contents.iter().map(|c| c.len() as u64).sum();
        Ok(stats)
    }

    fn verify(&self, req: RestoreRequest<'_>) -> Result<Verified, RunError> {
        let snap = self.find(req.job, req.snapshot)?;
        let root = req.path.unwrap_or(Path::new("/"));
        let is_dir = root == Path::new("/") || !snap.files.contains_key(root);
        let mut out = Verified::default();
        for (p, file) in snap.tree() {
            let Some(at) = (p.starts_with(root) || p == root)
                .then(|| req.target_of(is_dir, &p))
                .flatten()
            else {
                continue;
            };
            let differs = |reason: String| NotRestored {
                path: p.display().to_string(),
                reason,
            };
            match (file, std::fs::read(&at)) {
                (None, _) if at.is_dir() => {}
                (None, _) => out.differ.push(differs("not a directory".into())),
                (Some(f), Ok(c)) if c == f.content => {
                    out.files += 1;
                    out.bytes += c.len() as u64;
                }
                (Some(_), Ok(_)) => out.differ.push(differs("its content differs".into())),
                (Some(_), Err(e)) => out.differ.push(differs(e.to_string())),
            }
        }
        Ok(out)
    }

    fn dump(
        &self,
        job: &str,
        snapshot: &str,
        path: &Path,
        w: &mut dyn std::io::Write,
    ) -> Result<u64, RunError> {
        let snap = self.find(job, snapshot)?;
        let file = snap.files.get(path).ok_or_else(|| {
            RunError::permanent(format!(
                "no snapshot file {} in snapshot {}",
                path.display(),
                short_id(&snap.id)
            ))
        })?;
        w.write_all(&file.content)
            .map_err(|e| RunError::permanent(format!("cannot write {}: {e}", path.display())))?;
        Ok(file.content.len() as u64)
    }
}
