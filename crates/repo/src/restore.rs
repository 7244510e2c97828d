//! Restore and dump, with the target directory as a hard boundary.
//!
//! A repository is data from elsewhere (a compromised server chose the names and types that
//! were backed up; a repository could be tampered with), and the target may already hold
//! entries (left by an earlier restore, or planted there). So:
//!
//! - Names are checked before anything is written ([`safe_entries`]): one plain component per
//!   entry (no `/`, `.`, `..`, empty or absolute name), no duplicates in a directory. Offending
//!   entries are refused and reported.
//! - Everything is created relative to an open handle of its parent directory, starting from
//!   the target itself, one component at a time, with `O_NOFOLLOW` (and `O_DIRECTORY` for
//!   directories). No path below the target is ever resolved as a whole, so no symlink in the
//!   target, planted or just restored, is ever followed.
//! - An existing entry is never written through. A file, symlink or FIFO is made under a fresh
//!   `O_EXCL` temporary name in the same directory and renamed over the entry; a non-directory
//!   (a symlink too) where a directory must be is unlinked and a real directory made. An
//!   existing empty directory where a non-directory must be is removed; a non-empty one is left
//!   alone and the entry refused.
//! - Content comes from the repository one file at a time (`Repository::dump` into the open
//!   temporary file), so memory does not grow with the number of files. A file whose content
//!   cannot be read (blob missing, pack short, decryption failure) is reported with the reason,
//!   its temporary file removed, and the restore goes on. Every rustic_core call runs under
//!   `catch_unwind`: a panic in it becomes that entry's error.
//! - Modes (setuid, setgid and sticky only as stored), mtimes, and owners when running as root
//!   (otherwise the owner is the restoring user, silently) are set as stored; a directory's
//!   after its children. Directories start as 0700 so their children can be written.
//! - FIFOs are recreated. Devices and sockets are refused: a device node from the repository
//!   could give whoever reads the target raw access to a disk, and a socket file is made by the
//!   program that listens on it.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use burrow_core::repository::{NotRestored, RestoreOutcome};
use burrow_core::short_id;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, fchmod, fstat, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, mkfifoat, symlinkat, unlinkat};
use rustic_core::repofile::{Node, NodeType, SnapshotFile};
use rustic_core::{IndexedFullStatus, OpenStatus, Repository, RusticError, TreeId};

use crate::RepoError;
use crate::node::unix_perm;

fn in_snapshot(path: Option<&Path>) -> String {
    path.map(|p| p.to_string_lossy().trim_start_matches('/').to_owned())
        .unwrap_or_default()
}

/// Keeps the entries that are safe to write below the target, in order; the others are
/// added to `refused`. Paths are relative; each must be made of plain components and end in
/// the node's own name (so a name holding `/`, `.` or nothing is refused), appear once, and
/// not lie below a non-directory of the same listing.
fn safe_entries(items: Vec<(PathBuf, Node)>, refused: &mut Vec<PathBuf>) -> Vec<(PathBuf, Node)> {
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut non_dirs: HashSet<PathBuf> = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (path, node) in items {
        let plain = path.components().all(|c| matches!(c, Component::Normal(_)))
            && path.file_name() == Some(node.name().as_ref());
        let under_non_dir = path.ancestors().skip(1).any(|a| non_dirs.contains(a));
        if !plain || under_non_dir || !seen.insert(path.clone()) {
            refused.push(path);
            continue;
        }
        if !node.is_dir() {
            non_dirs.insert(path.clone());
        }
        out.push((path, node));
    }
    out
}

/// Where listings and content come from: the repository, or a fake in tests. Shared by the
/// file workers.
trait Store: Sync {
    /// The entries of the directory stored as tree `id`.
    fn tree(&self, id: &TreeId) -> Result<Vec<Node>, EntryError>;
    /// Writes the content of file `node` to `w`.
    fn content(&self, node: &Node, w: &mut dyn Write) -> Result<(), EntryError>;
}

/// Why one entry (or a listing) could not be restored; the outcome names it with its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EntryError {
    /// What the repository said, in one line.
    #[error("{0}")]
    Repository(String),
    #[error("internal error while reading the repository: {0}")]
    Panic(String),
    #[error("{what}: {}", .errno.desc())]
    Sys { what: &'static str, errno: Errno },
    #[error("cannot find a free temporary name")]
    NoTmpName,
    #[error("content unreadable: {0}")]
    Content(Box<EntryError>),
}

/// A rustic_core error in one line, for the report.
fn describe(e: &RusticError) -> EntryError {
    EntryError::Repository(e.to_string().lines().next().unwrap_or("").trim().to_owned())
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Runs `f`, turning a panic into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, EntryError>) -> Result<T, EntryError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(EntryError::Panic(panic_text(p.as_ref()))))
}

struct RepoStore<'a>(&'a Repository<IndexedFullStatus>);

impl Store for RepoStore<'_> {
    fn tree(&self, id: &TreeId) -> Result<Vec<Node>, EntryError> {
        self.0
            .get_tree(id)
            .map(|t| t.nodes)
            .map_err(|e| describe(&e))
    }

    fn content(&self, node: &Node, mut w: &mut dyn Write) -> Result<(), EntryError> {
        self.0.dump(node, &mut w).map_err(|e| describe(&e))
    }
}

/// Temporary names are unique within this process; `O_EXCL` makes them unique on disk.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn tmp_name() -> OsString {
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    OsString::from(format!(".burrow-restore.{}.{n}", std::process::id()))
}

/// Makes something under a fresh temporary name in `dir`, retrying on a name that exists.
fn with_tmp_name<T>(
    mut make: impl FnMut(&OsStr) -> nix::Result<T>,
) -> Result<(OsString, T), EntryError> {
    for _ in 0..64 {
        let name = tmp_name();
        match make(&name) {
            Ok(v) => return Ok((name, v)),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(errno("cannot create a temporary entry", e)),
        }
    }
    Err(EntryError::NoTmpName)
}

fn timespec(t: Option<rustic_core::jiff::Timestamp>) -> TimeSpec {
    t.map_or(TimeSpec::UTIME_OMIT, |t| {
        TimeSpec::new(t.as_second() as _, t.subsec_nanosecond().max(0) as _)
    })
}

fn owner(node: &Node) -> (Option<Uid>, Option<Gid>) {
    (
        node.meta.uid.map(Uid::from_raw),
        node.meta.gid.map(Gid::from_raw),
    )
}

fn errno(what: &'static str, errno: Errno) -> EntryError {
    EntryError::Sys { what, errno }
}

/// What happened to one entry.
enum Fate {
    Written,
    Refused(String),
    Failed(String),
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// A directory being filled: its handle, its node (`None` for the target itself), its path in
/// the snapshot, the entries still to write, and how many of its files the workers still
/// have.
struct Frame {
    dir: Arc<OwnedFd>,
    node: Option<Node>,
    path: PathBuf,
    entries: std::vec::IntoIter<(PathBuf, Node)>,
    left: Arc<AtomicUsize>,
}

/// A directory whose entries are all handed out; its own metadata is set once the workers
/// have placed its last file (placing a file changes the directory's mtime).
struct Waiting {
    dir: Arc<OwnedFd>,
    node: Node,
    path: PathBuf,
    left: Arc<AtomicUsize>,
}

/// Directories waiting for their files at most; beyond that the walk waits (each holds an
/// open handle).
const MAX_WAITING: usize = 256;

/// One regular file for a worker.
struct FileJob {
    dir: Arc<OwnedFd>,
    name: OsString,
    node: Node,
    path: PathBuf,
    left: Arc<AtomicUsize>,
}

/// What a worker did with a [`FileJob`].
struct FileDone {
    path: PathBuf,
    fate: Fate,
    bytes: u64,
}

/// Makes entries; shared by the walk and the file workers.
#[derive(Clone, Copy)]
struct Maker<'a> {
    store: &'a dyn Store,
    /// Owners are set only when running as root.
    as_root: bool,
}

struct Writer<'a> {
    maker: Maker<'a>,
    jobs: crossbeam_channel::Sender<FileJob>,
    done: crossbeam_channel::Receiver<FileDone>,
    waiting: VecDeque<Waiting>,
    /// Files sent to the workers whose results are not in yet.
    in_flight: usize,
    out: RestoreOutcome,
}

/// What [`write_all`] restores: these entries, or what is below this directory.
enum Items {
    These(Vec<(PathBuf, Node)>),
    Below(Box<Node>),
}

/// Restores `items` (paths relative to `base`, the snapshot path of `target`) into `target`
/// with `workers` threads writing file contents (at least one), and what is below the
/// directories among them.
fn write_all(
    store: &dyn Store,
    snapshot_id: String,
    target: OwnedFd,
    base: &Path,
    items: Items,
    workers: usize,
) -> RestoreOutcome {
    let maker = Maker {
        store,
        as_root: Uid::effective().is_root(),
    };
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    std::thread::scope(|s| {
        let (jobs, job_rx) = crossbeam_channel::bounded::<FileJob>(workers * 4);
        let (done_tx, done) = crossbeam_channel::unbounded::<FileDone>();
        for _ in 0..workers {
            let (rx, tx) = (job_rx.clone(), done_tx.clone());
            s.spawn(move || {
                for job in rx {
                    let (fate, bytes) = maker.write_entry(job.dir.as_fd(), &job.name, &job.node);
                    job.left.fetch_sub(1, Ordering::AcqRel);
                    let _ = tx.send(FileDone {
                        path: job.path,
                        fate,
                        bytes,
                    });
                }
            });
        }
        drop((job_rx, done_tx));
        let mut w = Writer {
            maker,
            jobs,
            done,
            waiting: VecDeque::new(),
            in_flight: 0,
            out: RestoreOutcome {
                snapshot_id,
                files: 0,
                dirs: 0,
                bytes: 0,
                refused: Vec::new(),
                failed: Vec::new(),
            },
        };
        let items = match items {
            Items::These(items) => items,
            Items::Below(dir) => w.listing(base, Path::new(""), &dir),
        };
        w.run(target, base, items);
        w.settle(true);
        let Writer { jobs, mut out, .. } = w;
        drop(jobs);
        // The workers finish in any order; the report is in path order.
        out.refused.sort_by(|a, b| a.path.cmp(&b.path));
        out.failed.sort_by(|a, b| a.path.cmp(&b.path));
        out
    })
}

impl Writer<'_> {
    fn refuse(&mut self, path: &Path, reason: impl Into<String>) {
        self.out.refused.push(NotRestored {
            path: path.to_string_lossy().into_owned(),
            reason: reason.into(),
        });
    }

    fn fail(&mut self, path: &Path, reason: impl Into<String>) {
        self.out.failed.push(NotRestored {
            path: path.to_string_lossy().into_owned(),
            reason: reason.into(),
        });
    }

    /// `items` (paths relative to `base`, the snapshot path of `target`) and, for
    /// directories among them, everything below, written into the directory `target`.
    fn run(&mut self, target: OwnedFd, base: &Path, items: Vec<(PathBuf, Node)>) {
        let entries = self.checked(base, items);
        let mut stack = vec![Frame {
            dir: Arc::new(target),
            node: None,
            path: base.to_owned(),
            entries: entries.into_iter(),
            left: Arc::default(),
        }];
        while let Some(frame) = stack.last_mut() {
            let Some((rel, node)) = frame.entries.next() else {
                let done = stack.pop().expect("the stack is not empty");
                if let Some(node) = done.node {
                    self.waiting.push_back(Waiting {
                        dir: done.dir,
                        node,
                        path: done.path,
                        left: done.left,
                    });
                }
                self.settle(false);
                continue;
            };
            let path = base.join(&rel);
            let name = rel.file_name().expect("checked by safe_entries").to_owned();
            if node.is_dir() {
                match open_dir(frame.dir.as_fd(), &name) {
                    Ok(dir) => {
                        self.out.dirs += 1;
                        let children = self.listing(base, &rel, &node);
                        let children = self.checked(base, children);
                        stack.push(Frame {
                            dir: Arc::new(dir),
                            node: Some(node),
                            path,
                            entries: children.into_iter(),
                            left: Arc::default(),
                        });
                    }
                    Err(e) => self.fail(&path, format!("{e}; nothing below it was restored")),
                }
                continue;
            }
            if node.is_file() {
                frame.left.fetch_add(1, Ordering::AcqRel);
                let job = FileJob {
                    dir: frame.dir.clone(),
                    name,
                    node,
                    path,
                    left: frame.left.clone(),
                };
                match self.jobs.send(job) {
                    Ok(()) => self.in_flight += 1,
                    Err(e) => {
                        // No worker left (one panicked): the file is not restored.
                        let job = e.into_inner();
                        job.left.fetch_sub(1, Ordering::AcqRel);
                        self.fail(&job.path, "no file worker is left");
                    }
                }
                self.settle(false);
                continue;
            }
            let (fate, bytes) = self.maker.write_entry(frame.dir.as_fd(), &name, &node);
            self.record(&path, fate, bytes);
        }
    }

    fn done(&mut self, d: FileDone) {
        self.in_flight -= 1;
        self.record(&d.path, d.fate, d.bytes);
    }

    fn record(&mut self, path: &Path, fate: Fate, bytes: u64) {
        self.out.bytes += bytes;
        match fate {
            Fate::Written => self.out.files += 1,
            Fate::Refused(r) => self.refuse(path, r),
            Fate::Failed(r) => self.fail(path, r),
        }
    }

    /// Takes the workers' results and finishes the directories whose files are all placed,
    /// oldest first (a directory is queued after those below it). With `all`, or when too
    /// many wait, it waits for them.
    fn settle(&mut self, all: bool) {
        loop {
            while let Ok(d) = self.done.try_recv() {
                self.done(d);
            }
            while let Some(front) = self.waiting.front() {
                if front.left.load(Ordering::Acquire) != 0 {
                    break;
                }
                let w = self.waiting.pop_front().expect("front exists");
                if let Err(e) = self.maker.set_meta(w.dir.as_fd(), &w.node) {
                    self.fail(&w.path, e.to_string());
                }
            }
            let must_wait = (all && (self.in_flight > 0 || !self.waiting.is_empty()))
                || self.waiting.len() > MAX_WAITING;
            if !must_wait {
                return;
            }
            match self.done.recv() {
                Ok(d) => self.done(d),
                Err(_) => {
                    // Every worker is gone: what they had is lost; finish the directories.
                    for w in std::mem::take(&mut self.waiting) {
                        if let Err(e) = self.maker.set_meta(w.dir.as_fd(), &w.node) {
                            self.fail(&w.path, e.to_string());
                        }
                    }
                    return;
                }
            }
        }
    }

    fn checked(&mut self, base: &Path, items: Vec<(PathBuf, Node)>) -> Vec<(PathBuf, Node)> {
        let mut refused = Vec::new();
        let kept = safe_entries(items, &mut refused);
        for r in refused {
            self.refuse(
                &base.join(&r),
                "unsafe or duplicate name (it would leave its directory or clash)",
            );
        }
        kept
    }

    /// The entries of directory `node` at path `rel` below `base`.
    fn listing(&mut self, base: &Path, rel: &Path, node: &Node) -> Vec<(PathBuf, Node)> {
        let Some(id) = node.subtree else {
            return Vec::new();
        };
        match guarded(|| self.maker.store.tree(&id)) {
            Ok(nodes) => nodes
                .into_iter()
                .map(|n| (rel.join(&*n.name()), n))
                .collect(),
            Err(e) => {
                self.fail(
                    &base.join(rel),
                    format!(
                        "cannot read its listing in the repository: {e}; nothing below it \
                         was restored"
                    ),
                );
                Vec::new()
            }
        }
    }
}

impl Maker<'_> {
    /// Writes one non-directory entry; what became of it and the content bytes written.
    fn write_entry(&self, dir: BorrowedFd<'_>, name: &OsStr, node: &Node) -> (Fate, u64) {
        let mut bytes = 0;
        let made = match &node.node_type {
            NodeType::File => self.make_file(dir, node, &mut bytes),
            NodeType::Symlink { .. } => self.make_symlink(dir, node),
            NodeType::Fifo => self.make_fifo(dir, node),
            NodeType::Dev { .. } | NodeType::Chardev { .. } => {
                return (
                    Fate::Refused(
                        "device nodes are not recreated (make it with mknod if it is needed)"
                            .into(),
                    ),
                    0,
                );
            }
            NodeType::Socket => {
                return (
                    Fate::Refused(
                        "sockets are not recreated (the program that listens on it makes it)"
                            .into(),
                    ),
                    0,
                );
            }
            NodeType::Dir => unreachable!("directories are opened by the caller"),
        };
        let (tmp, meta_err) = match made {
            Ok(v) => v,
            Err(e) => return (Fate::Failed(e.to_string()), 0),
        };
        let fate = match place(dir, &tmp, name) {
            Fate::Written => match meta_err {
                None => Fate::Written,
                Some(e) => Fate::Failed(format!("written, but {e}")),
            },
            other => other,
        };
        (fate, bytes)
    }

    /// A regular file with the node's content and metadata, under a temporary name.
    fn make_file(
        &self,
        dir: BorrowedFd<'_>,
        node: &Node,
        bytes: &mut u64,
    ) -> Result<(OsString, Option<EntryError>), EntryError> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let (tmp, fd) = with_tmp_name(|n| openat(dir, n, flags, Mode::from_bits_truncate(0o600)))?;
        let mut file = std::fs::File::from(fd);
        let mut counted = Counting {
            inner: &mut file,
            n: 0,
        };
        let store = self.store;
        let read = guarded(|| store.content(node, &mut counted));
        let n = counted.n;
        if let Err(e) = read {
            drop(file);
            let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            return Err(EntryError::Content(Box::new(e)));
        }
        *bytes = n;
        let meta = self.set_meta(file.as_fd(), node).err();
        Ok((tmp, meta))
    }

    fn make_symlink(
        &self,
        dir: BorrowedFd<'_>,
        node: &Node,
    ) -> Result<(OsString, Option<EntryError>), EntryError> {
        let target = node.node_type.to_link().to_owned();
        let (tmp, ()) = with_tmp_name(|n| symlinkat(target.as_os_str(), dir, n))?;
        let mut meta = None;
        if self.as_root {
            let (u, g) = owner(node);
            if let Err(e) = fchownat(dir, tmp.as_os_str(), u, g, AtFlags::AT_SYMLINK_NOFOLLOW) {
                meta = Some(errno("setting its owner failed", e));
            }
        }
        let (a, m) = (timespec(node.meta.atime), timespec(node.meta.mtime));
        if let Err(e) = utimensat(
            dir,
            tmp.as_os_str(),
            &a,
            &m,
            UtimensatFlags::NoFollowSymlink,
        ) {
            meta.get_or_insert(errno("setting its times failed", e));
        }
        Ok((tmp, meta))
    }

    fn make_fifo(
        &self,
        dir: BorrowedFd<'_>,
        node: &Node,
    ) -> Result<(OsString, Option<EntryError>), EntryError> {
        let (tmp, ()) = with_tmp_name(|n| mkfifoat(dir, n, Mode::from_bits_truncate(0o600)))?;
        // Opened for reading without blocking, only to set its metadata through the handle.
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let opened = openat(dir, tmp.as_os_str(), flags, Mode::empty()).and_then(|fd| {
            let st = fstat(&fd)?;
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
                return Err(Errno::EEXIST);
            }
            Ok(fd)
        });
        match opened {
            Ok(fd) => {
                let meta = self.set_meta(fd.as_fd(), node).err();
                Ok((tmp, meta))
            }
            Err(e) => {
                let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
                Err(errno("cannot open the new FIFO", e))
            }
        }
    }

    /// Owner (as root), mode and times of an open file or directory. The owner goes first:
    /// `fchown` clears setuid and setgid.
    fn set_meta(&self, fd: BorrowedFd<'_>, node: &Node) -> Result<(), EntryError> {
        let mut first_err = None;
        if self.as_root {
            let (u, g) = owner(node);
            if let Err(e) = fchown(fd, u, g) {
                first_err.get_or_insert(errno("setting its owner failed", e));
            }
        }
        if let Some(mode) = node.meta.mode
            && let Err(e) = fchmod(fd, Mode::from_bits_truncate(unix_perm(mode)))
        {
            first_err.get_or_insert(errno("setting its mode failed", e));
        }
        let (a, m) = (timespec(node.meta.atime), timespec(node.meta.mtime));
        if let Err(e) = futimens(fd, &a, &m) {
            first_err.get_or_insert(errno("setting its times failed", e));
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Opens directory `name` in `parent` without following a symlink; anything else found there
/// (a symlink, a file) is unlinked and a real directory made.
fn open_dir(parent: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, EntryError> {
    match openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| errno("cannot remove the non-directory in its place", e))?;
        }
        Err(e) => return Err(errno("cannot open the directory", e)),
    }
    mkdirat(parent, name, Mode::from_bits_truncate(0o700))
        .map_err(|e| errno("cannot create the directory", e))?;
    openat(parent, name, DIR_FLAGS, Mode::empty())
        .map_err(|e| errno("cannot open the new directory", e))
}

/// Renames `tmp` over `name` in `dir` (which replaces a file or symlink there, never writing
/// through it). An empty directory in the way is removed first; a non-empty one is left and
/// the entry refused. On any failure `tmp` is removed.
fn place(dir: BorrowedFd<'_>, tmp: &OsStr, name: &OsStr) -> Fate {
    let fate = match renameat(dir, tmp, dir, name) {
        Ok(()) => return Fate::Written,
        Err(Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST) => {
            match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
                Ok(()) => match renameat(dir, tmp, dir, name) {
                    Ok(()) => return Fate::Written,
                    Err(e) => Fate::Failed(errno("cannot move it into place", e).to_string()),
                },
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => Fate::Refused(
                    "a non-empty directory of that name is in the target; move it away and \
                     restore again"
                        .into(),
                ),
                Err(e) => {
                    Fate::Failed(errno("cannot remove the directory in its place", e).to_string())
                }
            }
        }
        Err(e) => Fate::Failed(errno("cannot move it into place", e).to_string()),
    };
    let _ = unlinkat(dir, tmp, UnlinkatFlags::NoRemoveDir);
    fate
}

/// Creates `target` if needed and opens it. The target's own path is the caller's choice and
/// is resolved normally; nothing below it is.
fn open_target(target: &Path) -> Result<OwnedFd, RepoError> {
    let fail = |e: std::io::Error| {
        RepoError::Restore(format!("cannot use target {}: {e}", target.display()))
    };
    std::fs::create_dir_all(target).map_err(fail)?;
    let f = std::fs::File::open(target).map_err(fail)?;
    if !f.metadata().map_err(fail)?.is_dir() {
        return Err(RepoError::Restore(format!(
            "target {} is not a directory",
            target.display()
        )));
    }
    Ok(OwnedFd::from(f))
}

/// Restores `subpath` of `snap` (the whole snapshot without it) into `target`: a directory's
/// contents go into `target`, a single entry goes to `target/<its name>`. With `only_file`,
/// the entry must be a regular file (a dump).
pub fn restore(
    repo: Repository<OpenStatus>,
    snap: &SnapshotFile,
    target: &Path,
    subpath: Option<&Path>,
    only_file: bool,
    workers: usize,
) -> Result<RestoreOutcome, RepoError> {
    let repo = guarded(|| repo.to_indexed().map_err(|e| describe(&e)))
        .map_err(|e| RepoError::Rustic(format!("cannot read the repository index: {e}")))?;
    let not_found = |e: EntryError| RepoError::NoSnapshot {
        what: format!(
            "path {} in snapshot {} ({e})",
            subpath.map(|p| p.display().to_string()).unwrap_or_default(),
            short_id(&snap.id.to_hex())
        ),
    };
    let node = guarded(|| {
        repo.node_from_snapshot_and_path(snap, &in_snapshot(subpath))
            .map_err(|e| describe(&e))
    })
    .map_err(not_found)?;
    if only_file && !matches!(node.node_type, NodeType::File) {
        return Err(RepoError::Restore(format!(
            "{} is not a file in snapshot {}",
            subpath.map(|p| p.display().to_string()).unwrap_or_default(),
            short_id(&snap.id.to_hex())
        )));
    }
    let dir = open_target(target)?;
    let store = RepoStore(&repo);
    let id = snap.id.to_hex().to_string();
    let sub = subpath.unwrap_or(Path::new("/"));
    if node.is_dir() {
        Ok(write_all(
            &store,
            id,
            dir,
            sub,
            Items::Below(Box::new(node)),
            workers,
        ))
    } else {
        let base = sub.parent().unwrap_or(Path::new("/"));
        let name = PathBuf::from(node.name().into_owned());
        Ok(write_all(
            &store,
            id,
            dir,
            base,
            Items::These(vec![(name, node)]),
            workers,
        ))
    }
}

pub fn dump(
    repo: Repository<OpenStatus>,
    snap: &SnapshotFile,
    path: &Path,
    w: &mut dyn std::io::Write,
) -> Result<u64, RepoError> {
    let repo = guarded(|| repo.to_indexed().map_err(|e| describe(&e)))
        .map_err(|e| RepoError::Rustic(format!("cannot read the repository index: {e}")))?;
    let node = guarded(|| {
        repo.node_from_snapshot_and_path(snap, &in_snapshot(Some(path)))
            .map_err(|e| describe(&e))
    })
    .map_err(|_| RepoError::NoSnapshot {
        what: format!(
            "file {} in snapshot {}",
            path.display(),
            short_id(&snap.id.to_hex())
        ),
    })?;
    if !matches!(node.node_type, NodeType::File) {
        return Err(RepoError::Restore(format!(
            "{} is not a file",
            path.display()
        )));
    }
    let mut counted = Counting { inner: w, n: 0 };
    guarded(|| RepoStore(&repo).content(&node, &mut counted))
        .map_err(|e| RepoError::Restore(format!("cannot read {}: {e}", path.display())))?;
    Ok(counted.n)
}

struct Counting<'a> {
    inner: &'a mut dyn std::io::Write,
    n: u64,
}

impl std::io::Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::go_mode;
    use burrow_core::source::EntryKind;
    use rustic_core::Id;
    use rustic_core::jiff::Timestamp;
    use rustic_core::repofile::Metadata;
    use std::collections::HashMap;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn n(name: &str, t: NodeType) -> Node {
        Node::new_node(std::ffi::OsStr::new(name), t, Metadata::default())
    }

    const MTIME: i64 = 1_600_000_000;

    fn meta(kind: &EntryKind, mode: u32) -> Metadata {
        Metadata {
            mode: Some(go_mode(kind, mode)),
            mtime: Some(Timestamp::new(MTIME, 500).unwrap()),
            ..Metadata::default()
        }
    }

    /// Listings and contents in memory: a file's content is found by its inode number.
    #[derive(Default)]
    struct Fake {
        trees: HashMap<TreeId, Vec<Node>>,
        content: HashMap<u64, Result<Vec<u8>, EntryError>>,
    }

    impl Store for Fake {
        fn tree(&self, id: &TreeId) -> Result<Vec<Node>, EntryError> {
            self.trees
                .get(id)
                .cloned()
                .ok_or_else(|| EntryError::Repository("tree not in the repository".into()))
        }
        fn content(&self, node: &Node, w: &mut dyn Write) -> Result<(), EntryError> {
            match self.content.get(&node.meta.inode) {
                Some(Ok(b)) => w
                    .write_all(b)
                    .map_err(|e| EntryError::Repository(e.to_string())),
                Some(Err(EntryError::Repository(e))) if e == "panic" => {
                    panic!("pack shorter than its header says")
                }
                Some(Err(e)) => {
                    w.write_all(b"partial").unwrap();
                    Err(e.clone())
                }
                None => Ok(()),
            }
        }
    }

    impl Fake {
        fn with_content(&mut self, name: &str, mode: u32, c: Result<Vec<u8>, EntryError>) -> Node {
            let inode = self.content.len() as u64 + 1;
            self.content.insert(inode, c);
            let mut m = meta(&EntryKind::File, mode);
            m.inode = inode;
            Node::new_node(OsStr::new(name), NodeType::File, m)
        }
        fn file(&mut self, name: &str, mode: u32, content: &str) -> Node {
            self.with_content(name, mode, Ok(content.as_bytes().to_vec()))
        }
        fn broken(&mut self, name: &str, reason: &str) -> Node {
            self.with_content(name, 0o644, Err(EntryError::Repository(reason.to_owned())))
        }
        fn dir(&mut self, name: &str, mode: u32, children: Vec<Node>) -> Node {
            let id = TreeId::from(Id::random());
            self.trees.insert(id, children);
            let mut d =
                Node::new_node(OsStr::new(name), NodeType::Dir, meta(&EntryKind::Dir, mode));
            d.subtree = Some(id);
            d
        }
        fn link(&self, name: &str, target: &Path) -> Node {
            Node::new_node(
                OsStr::new(name),
                NodeType::from_link(target),
                meta(
                    &EntryKind::Symlink {
                        target: target.as_os_str().to_owned(),
                    },
                    0o777,
                ),
            )
        }
    }

    /// With three file workers, so the tests see files placed in any order.
    fn restore_into(store: &Fake, target: &Path, items: Vec<Node>) -> RestoreOutcome {
        let items = items
            .into_iter()
            .map(|n| (PathBuf::from(n.name().into_owned()), n))
            .collect();
        let target = open_target(target).unwrap();
        write_all(
            store,
            "0".repeat(64),
            target,
            Path::new("/"),
            Items::These(items),
            3,
        )
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn paths(list: &[NotRestored]) -> Vec<&str> {
        list.iter().map(|x| x.path.as_str()).collect()
    }

    #[test]
    fn unsafe_names_are_refused() {
        let items = vec![
            (PathBuf::from("a"), n("a", NodeType::Dir)),
            (PathBuf::from("a/f"), n("f", NodeType::File)),
            (PathBuf::from("../etc/passwd"), n("passwd", NodeType::File)),
            (PathBuf::from("/abs"), n("abs", NodeType::File)),
            (
                PathBuf::from("l"),
                n("l", NodeType::from_link(Path::new("/etc"))),
            ),
            (PathBuf::from("l/passwd"), n("passwd", NodeType::File)),
            (PathBuf::from("a/f"), n("f", NodeType::File)),
            // a name holding a slash, a dot, nothing
            (PathBuf::from("a/x/y"), n("x/y", NodeType::File)),
            (PathBuf::from("a/."), n(".", NodeType::File)),
            (PathBuf::from("a/"), n("", NodeType::File)),
        ];
        let mut refused = Vec::new();
        let kept: Vec<PathBuf> = safe_entries(items, &mut refused)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            kept,
            [PathBuf::from("a"), PathBuf::from("a/f"), PathBuf::from("l")]
        );
        let refused: Vec<&str> = refused.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            refused,
            [
                "../etc/passwd",
                "/abs",
                "l/passwd",
                "a/f",
                "a/x/y",
                "a/.",
                "a/"
            ]
        );
    }

    #[test]
    fn hostile_names_in_a_listing_write_nothing_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        let mut s = Fake::default();
        let kids = vec![
            s.file("../escape", 0o644, "x"),
            s.file("a/b", 0o644, "x"),
            s.file("ok", 0o644, "fine"),
            s.file("ok", 0o644, "duplicate"),
        ];
        let d = s.dir("d", 0o755, kids);
        let out = restore_into(&s, &target, vec![d]);
        assert_eq!(names(tmp.path()), ["t"], "nothing beside the target");
        assert_eq!(names(&target.join("d")), ["ok"]);
        assert_eq!(fs::read(target.join("d/ok")).unwrap(), b"fine");
        assert_eq!(
            paths(&out.refused),
            ["/d/../escape", "/d/a/b", "/d/ok"],
            "{out:?}"
        );
        assert!(out.failed.is_empty(), "{out:?}");
    }

    #[test]
    fn planted_directory_symlink_is_replaced_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (target, outside) = (tmp.path().join("t"), tmp.path().join("o"));
        fs::create_dir_all(&target).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("tmp")).unwrap();
        let mut s = Fake::default();
        let f = s.file("f", 0o644, "x");
        let deep = s.file("g", 0o644, "y");
        let sub = s.dir("sub", 0o755, vec![deep]);
        let d = s.dir("tmp", 0o755, vec![f, sub]);
        let out = restore_into(&s, &target, vec![d]);
        assert!(out.complete(), "{out:?}");
        assert!(
            names(&outside).is_empty(),
            "written through the planted link"
        );
        let m = fs::symlink_metadata(target.join("tmp")).unwrap();
        assert!(m.is_dir(), "the link must be replaced by a real directory");
        assert_eq!(fs::read(target.join("tmp/f")).unwrap(), b"x");
        assert_eq!(fs::read(target.join("tmp/sub/g")).unwrap(), b"y");
        assert_eq!((out.files, out.dirs, out.bytes), (2, 2, 2));
    }

    #[test]
    fn planted_leaf_symlink_is_replaced_and_the_victim_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        fs::create_dir_all(&target).unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, target.join("top")).unwrap();
        let mut s = Fake::default();
        let f = s.file("top", 0o644, "restored");
        let out = restore_into(&s, &target, vec![f]);
        assert!(out.complete(), "{out:?}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let m = fs::symlink_metadata(target.join("top")).unwrap();
        assert!(m.is_file());
        assert_eq!(fs::read(target.join("top")).unwrap(), b"restored");
        assert_eq!(names(&target), ["top"], "no temporary file left");
    }

    #[test]
    fn a_symlink_restored_earlier_is_not_followed_later() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        let outside = tmp.path().join("o");
        fs::create_dir_all(&outside).unwrap();
        let victim = outside.join("victim");
        fs::write(&victim, "precious").unwrap();
        let mut s = Fake::default();
        // first snapshot: p is a link to the victim, q a link to a directory outside
        let p = s.link("p", &victim);
        let q = s.link("q", &outside);
        let out = restore_into(&s, &target, vec![p, q]);
        assert!(out.complete(), "{out:?}");
        assert_eq!(fs::read_link(target.join("p")).unwrap(), victim);
        // second snapshot: p is a file, q a directory with a file
        let p = s.file("p", 0o644, "new");
        let inner = s.file("victim", 0o644, "new");
        let q = s.dir("q", 0o755, vec![inner]);
        let out = restore_into(&s, &target, vec![p, q]);
        assert!(out.complete(), "{out:?}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(names(&outside), ["victim"]);
        assert!(fs::symlink_metadata(target.join("p")).unwrap().is_file());
        assert!(fs::symlink_metadata(target.join("q")).unwrap().is_dir());
        assert_eq!(fs::read(target.join("q/victim")).unwrap(), b"new");
    }

    #[test]
    fn modes_and_times_as_stored_directories_last() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        let mut s = Fake::default();
        let suid = s.file("suid", 0o4755, "#!/bin/sh\n");
        let secret = s.file("secret", 0o600, "s");
        let sticky = s.dir("sticky", 0o1777, vec![]);
        // a read-only directory still gets its children: its mode is set after them
        let ro = s.dir("ro", 0o555, vec![suid, secret, sticky]);
        let out = restore_into(&s, &target, vec![ro]);
        assert!(out.complete(), "{out:?}");
        let mode = |p: &str| fs::symlink_metadata(target.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("ro"), 0o555);
        assert_eq!(mode("ro/suid"), 0o4755);
        assert_eq!(mode("ro/secret"), 0o600);
        assert_eq!(mode("ro/sticky"), 0o1777);
        for p in ["ro", "ro/suid", "ro/secret", "ro/sticky"] {
            let m = fs::symlink_metadata(target.join(p)).unwrap();
            assert_eq!((m.mtime(), m.mtime_nsec()), (MTIME, 500), "mtime of {p}");
        }
        fs::set_permissions(
            target.join("ro"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }

    #[test]
    fn a_dump_keeps_its_stored_mode_and_does_not_follow_a_planted_link() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        fs::create_dir_all(&target).unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&victim, target.join("db.dump")).unwrap();
        let mut s = Fake::default();
        let dump = s.file("db.dump", 0o600, "-- dump");
        let out = restore_into(&s, &target, vec![dump]);
        assert!(out.complete(), "{out:?}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let m = fs::symlink_metadata(target.join("db.dump")).unwrap();
        assert!(m.is_file());
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o7777, 0o644);
    }

    #[test]
    fn unreadable_content_is_reported_and_the_rest_restored() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        let mut s = Fake::default();
        let a = s.file("a", 0o644, "alpha");
        let b = s.broken("b", "pack 1234abcd is shorter than its index says");
        let c = s.broken("c", "panic");
        let z = s.file("z", 0o644, "zulu");
        let missing = {
            let mut d = Node::new_node(
                OsStr::new("gone"),
                NodeType::Dir,
                meta(&EntryKind::Dir, 0o755),
            );
            d.subtree = Some(TreeId::from(Id::random()));
            d
        };
        let d = s.dir("d", 0o755, vec![a, b, c, missing, z]);
        let out = restore_into(&s, &target, vec![d]);
        assert_eq!(paths(&out.failed), ["/d/b", "/d/c", "/d/gone"], "{out:?}");
        assert!(
            out.failed[0].reason.contains("shorter than its index"),
            "{out:?}"
        );
        assert!(out.failed[1].reason.contains("internal error"), "{out:?}");
        assert!(out.failed[2].reason.contains("listing"), "{out:?}");
        assert!(out.refused.is_empty());
        assert!(!out.complete());
        assert_eq!(
            names(&target.join("d")),
            ["a", "gone", "z"],
            "no partial or temporary file left"
        );
        assert_eq!(fs::read(target.join("d/z")).unwrap(), b"zulu");
        assert_eq!(out.bytes, 9);
    }

    #[test]
    fn a_directory_in_the_way_of_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        fs::create_dir_all(target.join("full")).unwrap();
        fs::write(target.join("full/keep"), "mine").unwrap();
        fs::create_dir_all(target.join("empty")).unwrap();
        let mut s = Fake::default();
        let full = s.file("full", 0o644, "f");
        let empty = s.file("empty", 0o644, "e");
        let out = restore_into(&s, &target, vec![empty, full]);
        assert_eq!(paths(&out.refused), ["/full"], "{out:?}");
        assert!(out.refused[0].reason.contains("non-empty directory"));
        assert_eq!(fs::read(target.join("full/keep")).unwrap(), b"mine");
        assert_eq!(fs::read(target.join("empty")).unwrap(), b"e");
        assert_eq!(names(&target), ["empty", "full"]);
    }

    #[test]
    fn fifos_are_made_devices_and_sockets_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        let fifo = Node::new_node(
            OsStr::new("pipe"),
            NodeType::Fifo,
            meta(&EntryKind::Fifo, 0o640),
        );
        let dev = Node::new_node(
            OsStr::new("sda"),
            NodeType::Dev { device: 0x800 },
            meta(&EntryKind::BlockDevice { rdev: 0x800 }, 0o666),
        );
        let sock = Node::new_node(
            OsStr::new("sock"),
            NodeType::Socket,
            meta(&EntryKind::Socket, 0o777),
        );
        let out = restore_into(&Fake::default(), &target, vec![fifo, dev, sock]);
        assert_eq!(paths(&out.refused), ["/sda", "/sock"], "{out:?}");
        let m = fs::symlink_metadata(target.join("pipe")).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(names(&target), ["pipe"]);
    }
}
