//! The source port: where the files of a job come from (this machine, or a server over SFTP).
//!
//! A source yields the entries of all of a job's roots as one depth-first walk: a directory
//! comes before its children, a subtree is contiguous, and names within a directory are
//! byte-sorted. rustic_core's archiver merges this walk with the parent snapshot by name and
//! relies on that order; it never sorts by itself.
//!
//! Content is opened lazily through [`Content`]. A source may start fetching content ahead of
//! the archiver (latency hiding over SSH); it asks [`ParentIndex`] first, so unchanged files
//! are never read.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::problems::Problems;

/// The kind of a directory entry. Special files are recorded, never read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink { target: OsString },
    Fifo,
    Socket,
    CharDevice { rdev: u64 },
    BlockDevice { rdev: u64 },
}

/// A timestamp as seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    pub fn from_secs(secs: i64) -> Self {
        Time { secs, nanos: 0 }
    }
}

/// Metadata of an entry. `mode` holds the Unix permission bits (`st_mode & 0o7777`);
/// the file type is in [`EntryKind`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub size: u64,
    pub mtime: Option<Time>,
    pub atime: Option<Time>,
    pub ctime: Option<Time>,
    pub inode: u64,
    pub device: u64,
    pub links: u64,
}

/// Opens the content of a file; called at most once, on an archiver worker thread (a plain
/// std thread, not inside an async runtime). Dropping it without calling `open` must release
/// whatever the source reserved for it (prefetch buffers, handles).
pub trait Content: Send + 'static {
    fn open(self: Box<Self>) -> std::io::Result<Box<dyn Read + Send>>;
}

/// One entry of the walk.
pub struct Entry {
    /// Absolute path as it will appear in the snapshot.
    pub path: PathBuf,
    pub kind: EntryKind,
    pub meta: Meta,
    /// `Some` for regular files only.
    pub content: Option<Box<dyn Content>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("meta", &self.meta)
            .field("content", &self.content.is_some())
            .finish()
    }
}

/// What the previous snapshot of the job holds, so a source can tell which files the
/// archiver will take from the parent (same size and mtime) and must not read.
pub trait ParentIndex: Send + Sync {
    /// True when the parent snapshot has a regular file at `path` with this size and mtime.
    fn unchanged(&self, path: &Path, size: u64, mtime: Option<Time>) -> bool;
}

/// A parent index for the first snapshot of a job: everything is new.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoParent;

impl ParentIndex for NoParent {
    fn unchanged(&self, _: &Path, _: u64, _: Option<Time>) -> bool {
        false
    }
}

/// Everything a source needs for one walk.
#[derive(Clone)]
pub struct WalkContext {
    pub parent: Arc<dyn ParentIndex>,
    /// Unreadable entries are recorded here and left out of the walk.
    pub problems: Problems,
    /// Content bytes handed to the archiver (for `bytes_read` and progress).
    pub bytes_read: Arc<std::sync::atomic::AtomicU64>,
}

impl WalkContext {
    pub fn new(parent: Arc<dyn ParentIndex>, problems: Problems) -> Self {
        WalkContext {
            parent,
            problems,
            bytes_read: Arc::default(),
        }
    }
}

/// A place files come from.
pub trait Source: Send + Sync + 'static {
    /// The walk over all roots, in the order described in the module docs. Called once per
    /// snapshot; errors are recorded in `ctx.problems` and the entry is skipped.
    fn entries(&self, ctx: WalkContext) -> Box<dyn Iterator<Item = Entry> + Send>;
}

/// Sorts and de-duplicates a job's roots so that walking them one after the other gives a
/// single ordered walk: byte-wise by path components, and a root inside another is dropped.
pub fn normalize_roots(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = roots.to_vec();
    roots.sort_by(|a, b| a.components().cmp(b.components()));
    let mut out: Vec<PathBuf> = Vec::with_capacity(roots.len());
    for r in roots {
        if out.last().is_some_and(|prev| r.starts_with(prev)) {
            continue;
        }
        out.push(r);
    }
    out
}

/// Merges two walks into one ordered walk. Both must be in walk order (see module docs) and
/// their roots disjoint; used to put the spooled dumps (`/burrow-dumps/...`) beside the files.
pub fn merge_walks(
    a: Box<dyn Iterator<Item = Entry> + Send>,
    b: Box<dyn Iterator<Item = Entry> + Send>,
) -> Box<dyn Iterator<Item = Entry> + Send> {
    Box::new(Merge {
        a: a.peekable(),
        b: b.peekable(),
    })
}

struct Merge {
    a: std::iter::Peekable<Box<dyn Iterator<Item = Entry> + Send>>,
    b: std::iter::Peekable<Box<dyn Iterator<Item = Entry> + Send>>,
}

impl Iterator for Merge {
    type Item = Entry;
    fn next(&mut self) -> Option<Entry> {
        let take_a = match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) => x.path.components().le(y.path.components()),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_a { self.a.next() } else { self.b.next() }
    }
}

/// A counting reader: adds every byte read to `counter`.
pub struct CountingReader<R> {
    inner: R,
    counter: Arc<std::sync::atomic::AtomicU64>,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R, counter: Arc<std::sync::atomic::AtomicU64>) -> Self {
        CountingReader { inner, counter }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_sorted_by_components_and_nested_ones_dropped() {
        let roots = [
            PathBuf::from("/var/lib/b"),
            PathBuf::from("/var/lib/a/x"),
            PathBuf::from("/var/lib/a"),
            PathBuf::from("/var/lib-x"),
            PathBuf::from("/etc"),
        ];
        let got = normalize_roots(&roots);
        let want: Vec<PathBuf> = ["/etc", "/var/lib/a", "/var/lib/b", "/var/lib-x"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }

    fn dir(p: &str) -> Entry {
        Entry {
            path: PathBuf::from(p),
            kind: EntryKind::Dir,
            meta: Meta::default(),
            content: None,
        }
    }

    #[test]
    fn merged_walks_stay_in_walk_order() {
        let a: Vec<Entry> = ["/a", "/a/x", "/c", "/c/d"].into_iter().map(dir).collect();
        let b: Vec<Entry> = ["/b", "/b/1", "/b/2"].into_iter().map(dir).collect();
        let got: Vec<PathBuf> = merge_walks(Box::new(a.into_iter()), Box::new(b.into_iter()))
            .map(|e| e.path)
            .collect();
        let want: Vec<PathBuf> = ["/a", "/a/x", "/b", "/b/1", "/b/2", "/c", "/c/d"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }
}
