//! The SFTP source: a server's files as one ordered, streamed walk.
//!
//! The walk runs as a task on the tokio runtime and hands entries to the archiver's thread
//! through a bounded channel. Directory listings are requested ahead of the emit position
//! (the directories the walk will reach next, in order) so that a distant server costs
//! round trips in parallel rather than one after the other; entries still come out in exact
//! depth-first, byte-sorted order. File content is fetched ahead by [`crate::prefetch`].

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use burrow_core::exclude::Excludes;
use burrow_core::problems::Problems;
use burrow_core::source::{Entry, EntryKind, Meta, Source, Time, WalkContext, normalize_roots};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::channel::Channels;
use crate::prefetch::{PrefetchLimits, Prefetcher};
use crate::wire::Attrs;
use crate::{Session, SshError};

/// Entries the walk may run ahead of the archiver (metadata only; content is bounded by
/// [`PrefetchLimits`]). A file's fetch starts when the walk emits it, so this is also how
/// many files can be in flight at most: above [`PrefetchLimits::small_files`].
const ENTRY_LOOKAHEAD: usize = 2048;

/// Symlink targets resolved at once per directory.
const READLINK_CONCURRENCY: usize = 16;

pub(crate) const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFIFO: u32 = 0o010000;
const S_IFSOCK: u32 = 0o140000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

/// A file type (`mode & S_IFMT`) in words, for messages.
pub(crate) fn type_name(kind: u32) -> String {
    match kind {
        S_IFDIR => "a directory".to_owned(),
        S_IFREG => "a regular file".to_owned(),
        S_IFLNK => "a symlink".to_owned(),
        S_IFIFO => "a FIFO".to_owned(),
        S_IFSOCK => "a socket".to_owned(),
        S_IFCHR => "a character device".to_owned(),
        S_IFBLK => "a block device".to_owned(),
        other => format!("of unknown type {other:o}"),
    }
}

/// Files on a server, read over SFTP. See the module docs.
#[derive(Clone)]
pub struct SftpSource {
    ch: Arc<Channels>,
    runtime: tokio::runtime::Handle,
    roots: Vec<PathBuf>,
    excludes: Excludes,
    limits: PrefetchLimits,
}

impl std::fmt::Debug for SftpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpSource")
            .field("roots", &self.roots)
            .field("limits", &self.limits)
            .finish()
    }
}

impl SftpSource {
    /// Starts an SFTP channel on `session`. `runtime` runs the walk and the transfers;
    /// `entries()` and the contents' readers must be used from threads outside it (they
    /// block).
    ///
    /// A request that gets no answer for `io_timeout` (while nothing else arrives either)
    /// makes its file or directory a problem, and the walk goes on over a fresh channel (see
    /// `crate::channel`). When `cancel` turns true, every pending request ends at once.
    pub async fn start(
        session: &Session,
        io_timeout: Duration,
        cancel: watch::Receiver<bool>,
        runtime: tokio::runtime::Handle,
        roots: &[PathBuf],
        excludes: Excludes,
    ) -> Result<Self, SshError> {
        let ch = Channels::start(session.clone(), io_timeout, cancel).await?;
        let limits = PrefetchLimits::default().within(ch.limits());
        Ok(SftpSource {
            ch,
            runtime,
            roots: normalize_roots(roots),
            excludes,
            limits,
        })
    }

    /// Replaces the default concurrency and memory limits (kept within what the server
    /// allows: [`PrefetchLimits::within`]).
    pub fn with_limits(mut self, limits: PrefetchLimits) -> Self {
        self.limits = limits.within(self.ch.limits());
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> PrefetchLimits {
        self.limits
    }
}

impl Source for SftpSource {
    /// Must be consumed outside the runtime (it blocks on a channel).
    fn entries(&self, ctx: WalkContext) -> Box<dyn Iterator<Item = Entry> + Send> {
        let (tx, rx) = mpsc::channel(ENTRY_LOOKAHEAD);
        let walker = Walker {
            ch: self.ch.clone(),
            excludes: Arc::new(self.excludes.clone()),
            limits: self.limits,
            prefetch: Prefetcher::new(
                self.ch.clone(),
                self.runtime.clone(),
                self.limits,
                ctx.bytes_read.clone(),
                ctx.problems.clone(),
            ),
            ctx: ctx.clone(),
            stack: Vec::new(),
            ahead: Lookahead::new(&self.limits),
        };
        let first_root = self.roots.first().cloned().unwrap_or_default();
        let task = self.runtime.spawn(walker.run(self.roots.clone(), tx));
        Box::new(EntryIter {
            rx,
            _task: AbortOnDrop(task),
            finished: false,
            problems: ctx.problems,
            first_root,
        })
    }
}

/// Aborts a task when the owner goes away (the walk was abandoned).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `None` is the walk's end marker, so that an aborted walk is not taken for a complete one.
type Msg = Option<Entry>;

struct EntryIter {
    rx: mpsc::Receiver<Msg>,
    _task: AbortOnDrop<()>,
    finished: bool,
    problems: Problems,
    first_root: PathBuf,
}

impl Iterator for EntryIter {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if self.finished {
            return None;
        }
        match self.rx.blocking_recv() {
            Some(Some(e)) => Some(e),
            Some(None) => {
                self.finished = true;
                None
            }
            None => {
                self.finished = true;
                self.problems.push(
                    &self.first_root,
                    "the walk stopped early (the runtime shut down or the walk failed); the snapshot is incomplete",
                );
                None
            }
        }
    }
}

#[derive(Debug)]
struct Child {
    name: Bytes,
    attrs: Attrs,
    /// Target of a symlink; `Err` holds why it could not be read.
    link: Option<io::Result<Bytes>>,
}

impl Child {
    fn file_type(&self) -> u32 {
        self.attrs.permissions.unwrap_or(0) & S_IFMT
    }

    fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }
}

struct Listed {
    /// Sorted by name bytes.
    children: Vec<Child>,
    /// Indices of the directories among `children`, ascending.
    dirs: Vec<usize>,
}

type Listing = Result<Listed, ListError>;

/// Why a directory could not be listed (a problem of the snapshot, under the directory).
#[derive(Debug, thiserror::Error)]
enum ListError {
    #[error("{0}")]
    Sftp(io::Error),
    #[error("listing task failed: {0}")]
    Task(tokio::task::JoinError),
    #[error("listing was lost")]
    Lost,
}

type ListingFuture = Pin<Box<dyn Future<Output = (PathBuf, Listing)> + Send>>;

struct Frame {
    dir: PathBuf,
    listed: Listed,
    /// Next child to emit.
    next: usize,
}

/// Listings fetched ahead of the walk, in the order the walk will need them.
///
/// The walk's future is known as far as listings go: the remaining children of every open
/// directory, and inside those, the children of directories already listed ahead. Requests
/// go out in that depth-first order, so a chain of nested directories is fetched as soon as
/// each level arrives instead of one level per emitted directory.
struct Lookahead {
    in_flight: FuturesUnordered<ListingFuture>,
    /// Listings that arrived and wait for the walk to reach their directory.
    done: HashMap<OsString, Listing>,
    /// Everything in flight or done. (Keyed by the path's bytes: hashing and comparing a
    /// `Path` goes component by component, and this is asked for every directory ahead.)
    scheduled: HashSet<OsString>,
    /// The last search found every directory known ahead already scheduled; only a listing
    /// that arrives with directories in it can change that.
    exhausted: bool,
    max_in_flight: usize,
    max_ahead: usize,
}

impl Lookahead {
    fn new(limits: &PrefetchLimits) -> Self {
        let max_in_flight = limits.listings.max(1);
        Lookahead {
            in_flight: FuturesUnordered::new(),
            done: HashMap::new(),
            scheduled: HashSet::new(),
            exhausted: false,
            max_in_flight,
            max_ahead: max_in_flight * 8,
        }
    }
}

struct Walker {
    ch: Arc<Channels>,
    excludes: Arc<Excludes>,
    limits: PrefetchLimits,
    prefetch: Prefetcher,
    ctx: WalkContext,
    stack: Vec<Frame>,
    ahead: Lookahead,
}

/// A path as the server names it: the bytes it sent, joined with `/`.
fn remote(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

fn name_path(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

impl Walker {
    async fn run(mut self, roots: Vec<PathBuf>, tx: mpsc::Sender<Msg>) {
        debug!(limits = ?self.limits, "walk starts");
        for root in roots {
            if self.excludes.is_excluded(&root) {
                continue;
            }
            let r = remote(&root);
            let attrs = match self
                .ch
                .run("LSTAT", |s| async move { s.lstat(r).await })
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    self.ctx.problems.push(&root, format!("cannot stat: {e}"));
                    continue;
                }
            };
            let mut child = Child {
                name: Bytes::new(),
                attrs,
                link: None,
            };
            if child.file_type() == S_IFLNK {
                let link = self
                    .ch
                    .run("READLINK", |s| async move { s.read_link(r).await })
                    .await;
                child.link = Some(link);
            }
            if !self.emit(root, child, &tx).await {
                return;
            }
            while let Some(frame) = self.stack.last_mut() {
                let children = &mut frame.listed.children;
                if frame.next == children.len() {
                    self.stack.pop();
                    continue;
                }
                let i = frame.next;
                frame.next += 1;
                let path = name_path(&frame.dir, &children[i].name);
                // Children are emitted once; move the record out instead of cloning it.
                let child = std::mem::replace(
                    &mut children[i],
                    Child {
                        name: Bytes::new(),
                        attrs: Attrs::default(),
                        link: None,
                    },
                );
                if !self.emit(path, child, &tx).await {
                    return;
                }
            }
        }
        let _ = tx.send(None).await;
    }

    /// Sends one entry; for a directory, pushes its listing. False when the consumer is gone.
    async fn emit(&mut self, path: PathBuf, child: Child, tx: &mpsc::Sender<Msg>) -> bool {
        let Some(kind) = self.kind_of(&path, &child) else {
            return true;
        };
        let meta = meta_of(&child.attrs, kind == EntryKind::File);
        let content = if kind == EntryKind::File {
            let r = Bytes::copy_from_slice(remote(&path));
            let prefetch = !self.ctx.parent.unchanged(&path, meta.size, meta.mtime);
            Some(self.prefetch.content(path.clone(), r, meta.size, prefetch))
        } else {
            None
        };
        let is_dir = kind == EntryKind::Dir;
        if is_dir && !self.ahead.scheduled.contains(path.as_os_str()) {
            // Request it before waiting for the consumer.
            self.spawn_listing(path.clone());
        }
        let entry = Entry {
            path: path.clone(),
            kind,
            meta,
            content,
        };
        // Wait for room in the channel, taking in listings as they arrive meanwhile.
        loop {
            tokio::select! {
                permit = tx.reserve() => match permit {
                    Ok(permit) => {
                        permit.send(Some(entry));
                        break;
                    }
                    Err(_) => return false,
                },
                Some((p, l)) = self.ahead.in_flight.next() => self.arrived(p, l),
            }
        }
        if is_dir {
            self.descend(path).await;
        }
        true
    }

    /// The kind of entry `child` is; `None` (recorded as a problem) when it cannot be stored.
    fn kind_of(&self, path: &Path, child: &Child) -> Option<EntryKind> {
        let mode = child.attrs.permissions.unwrap_or(0);
        Some(match mode & S_IFMT {
            S_IFDIR => EntryKind::Dir,
            S_IFREG => EntryKind::File,
            S_IFLNK => match &child.link {
                Some(Ok(t)) => EntryKind::Symlink {
                    target: OsString::from(OsStr::from_bytes(t)),
                },
                Some(Err(e)) => {
                    self.ctx
                        .problems
                        .push(path, format!("cannot read symlink: {e}"));
                    return None;
                }
                None => {
                    self.ctx.problems.push(path, "cannot read symlink");
                    return None;
                }
            },
            S_IFIFO => EntryKind::Fifo,
            S_IFSOCK => EntryKind::Socket,
            S_IFCHR => EntryKind::CharDevice { rdev: 0 },
            S_IFBLK => EntryKind::BlockDevice { rdev: 0 },
            other => {
                self.ctx.problems.push(
                    path,
                    format!("unknown file type {other:o} reported by the server; skipped"),
                );
                return None;
            }
        })
    }

    /// The directory `path` was sent: waits for its listing (taking in others as they
    /// arrive) and walks into it.
    async fn descend(&mut self, path: PathBuf) {
        let listing = loop {
            if let Some(l) = self.ahead.done.remove(path.as_os_str()) {
                self.ahead.scheduled.remove(path.as_os_str());
                break l;
            }
            match self.ahead.in_flight.next().await {
                Some((p, l)) => self.arrived(p, l),
                None => break Err(ListError::Lost),
            }
        };
        let listed = listing.unwrap_or_else(|e| {
            self.ctx
                .problems
                .push(&path, format!("cannot list directory: {e}"));
            Listed {
                children: Vec::new(),
                dirs: Vec::new(),
            }
        });
        self.stack.push(Frame {
            dir: path,
            listed,
            next: 0,
        });
        // What the walk will need next changes only here and when a listing arrives
        // (`arrived`); a file emitted changes nothing, and scheduling walks the known
        // future, so it is not done per file.
        self.schedule();
    }

    fn arrived(&mut self, path: PathBuf, listing: Listing) {
        if listing.as_ref().is_ok_and(|l| !l.dirs.is_empty()) {
            self.ahead.exhausted = false;
        }
        self.ahead.done.insert(path.into_os_string(), listing);
        self.schedule();
    }

    fn spawn_listing(&mut self, path: PathBuf) {
        let handle = tokio::spawn(list_dir(
            self.ch.clone(),
            path.clone(),
            self.excludes.clone(),
            self.ctx.problems.clone(),
        ));
        let task = AbortOnDrop(handle);
        self.ahead.scheduled.insert(path.clone().into_os_string());
        self.ahead.in_flight.push(Box::pin(async move {
            let mut task = task;
            let listing = match (&mut task.0).await {
                Ok(l) => l,
                Err(e) => Err(ListError::Task(e)),
            };
            (path, listing)
        }));
    }

    /// Requests listings in the order the walk will need them, within the limits. Finding
    /// them walks the known future past what is already scheduled, so it refills in batches:
    /// only once at least half of the listings in flight have come back. (The listing the
    /// walk waits for is requested by `emit` itself if it is not yet.)
    fn schedule(&mut self) {
        let mut wanted: Vec<PathBuf> = Vec::new();
        let room = self
            .ahead
            .max_in_flight
            .saturating_sub(self.ahead.in_flight.len());
        if room == 0
            || self.ahead.exhausted
            || room < self.ahead.max_in_flight.div_ceil(2)
            || self.ahead.scheduled.len() >= self.ahead.max_ahead
        {
            return;
        }
        let budget = room.min(self.ahead.max_ahead - self.ahead.scheduled.len());
        // Depth-first over the known future: innermost open directory first.
        'frames: for frame in self.stack.iter().rev() {
            let l = &frame.listed;
            let first = l.dirs.partition_point(|&i| i < frame.next);
            for &i in &l.dirs[first..] {
                let path = name_path(&frame.dir, &l.children[i].name);
                self.collect_unscheduled(path, &mut wanted, budget);
                if wanted.len() >= budget {
                    break 'frames;
                }
            }
        }
        self.ahead.exhausted = wanted.len() < budget;
        for p in wanted {
            self.spawn_listing(p);
        }
    }

    /// Adds `path`, or if it is already scheduled, the unscheduled directories below it that
    /// fetched listings reveal, in walk order. Visits at most the scheduled directories plus
    /// `budget` others.
    fn collect_unscheduled(&self, path: PathBuf, wanted: &mut Vec<PathBuf>, budget: usize) {
        let ahead = &self.ahead;
        if !ahead.scheduled.contains(path.as_os_str()) {
            wanted.push(path);
            return;
        }
        let mut stack: Vec<(PathBuf, &Listed, usize)> = Vec::new();
        if let Some(Ok(l)) = ahead.done.get(path.as_os_str()) {
            stack.push((path, l, 0));
        }
        while let Some((dir, l, pos)) = stack.last_mut() {
            if wanted.len() >= budget {
                return;
            }
            let Some(&i) = l.dirs.get(*pos) else {
                stack.pop();
                continue;
            };
            *pos += 1;
            let p = name_path(dir, &l.children[i].name);
            if !ahead.scheduled.contains(p.as_os_str()) {
                wanted.push(p);
            } else if let Some(Ok(sub)) = ahead.done.get(p.as_os_str()) {
                stack.push((p, sub, 0));
            }
        }
    }
}

/// Lists a directory: excluded names are dropped, names no file can have are named as
/// problems and dropped, symlink targets are read, and the result is sorted by name bytes.
async fn list_dir(
    ch: Arc<Channels>,
    dir: PathBuf,
    excludes: Arc<Excludes>,
    problems: Problems,
) -> Listing {
    let d = remote(&dir);
    let names = ch
        .run(
            "a directory listing",
            |s| async move { s.read_dir(d).await },
        )
        .await
        .map_err(ListError::Sftp)?;
    let mut children = Vec::with_capacity(names.len());
    for de in names {
        // `.` and `..` are dropped by the client. A name with a `/` or a NUL, or an empty
        // one, is no file's name: only a broken or hostile server sends it.
        if de.name.is_empty() || de.name.contains(&b'/') || de.name.contains(&0) {
            problems.push(
                &dir,
                format!(
                    "the server listed a name no file can have ({:?}); skipped",
                    String::from_utf8_lossy(&de.name)
                ),
            );
            continue;
        }
        if excludes.is_excluded(&name_path(&dir, &de.name)) {
            continue;
        }
        children.push(Child {
            name: de.name,
            attrs: de.attrs,
            link: None,
        });
    }
    children.sort_unstable_by(|a, b| a.name.cmp(&b.name));

    let links: Vec<usize> = children
        .iter()
        .enumerate()
        .filter(|(_, c)| c.file_type() == S_IFLNK)
        .map(|(i, _)| i)
        .collect();
    if !links.is_empty() {
        let resolved: Vec<(usize, io::Result<Bytes>)> = futures::stream::iter(links)
            .map(|i| {
                let ch = ch.clone();
                let p = name_path(&dir, &children[i].name);
                async move {
                    let link = ch
                        .run("READLINK", |s| {
                            let p = &p;
                            async move { s.read_link(remote(p)).await }
                        })
                        .await;
                    (i, link)
                }
            })
            .buffer_unordered(READLINK_CONCURRENCY)
            .collect()
            .await;
        for (i, t) in resolved {
            children[i].link = Some(t);
        }
    }
    debug!(dir = %dir.display(), entries = children.len(), "listed");
    let dirs = children
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_dir())
        .map(|(i, _)| i)
        .collect();
    Ok(Listed { children, dirs })
}

fn meta_of(a: &Attrs, is_file: bool) -> Meta {
    Meta {
        mode: a.permissions.unwrap_or(0) & 0o7777,
        uid: a.uid,
        gid: a.gid,
        user: None,
        group: None,
        size: if is_file { a.size.unwrap_or(0) } else { 0 },
        mtime: a.mtime.map(|s| Time::from_secs(i64::from(s))),
        atime: a.atime.map(|s| Time::from_secs(i64::from(s))),
        ctime: None,
        inode: 0,
        device: 0,
        links: 0,
    }
}
