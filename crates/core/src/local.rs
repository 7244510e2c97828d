//! The local source: paths on this machine (the Pi's own configuration, the quick start).
//! Streams the walk: memory grows with the depth of the tree, not with the number of files.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::exclude::Excludes;
use crate::source::{
    Content, CountingReader, Entry, EntryKind, Meta, Source, Time, WalkContext, normalize_roots,
};

#[derive(Debug, Clone)]
pub struct LocalSource {
    roots: Vec<PathBuf>,
    excludes: Excludes,
}

impl LocalSource {
    pub fn new(roots: &[PathBuf], excludes: Excludes) -> Self {
        LocalSource {
            roots: normalize_roots(roots),
            excludes,
        }
    }
}

impl Source for LocalSource {
    fn entries(&self, ctx: WalkContext) -> Box<dyn Iterator<Item = Entry> + Send> {
        let mut roots = self.roots.clone();
        roots.reverse();
        Box::new(LocalWalk {
            roots,
            stack: Vec::new(),
            excludes: self.excludes.clone(),
            ctx,
        })
    }
}

struct Frame {
    dir: PathBuf,
    /// Sorted in reverse so that `pop` yields names in byte order.
    names: Vec<OsString>,
}

struct LocalWalk {
    roots: Vec<PathBuf>,
    stack: Vec<Frame>,
    excludes: Excludes,
    ctx: WalkContext,
}

impl Iterator for LocalWalk {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        loop {
            let path = if let Some(frame) = self.stack.last_mut() {
                match frame.names.pop() {
                    Some(name) => frame.dir.join(name),
                    None => {
                        self.stack.pop();
                        continue;
                    }
                }
            } else {
                self.roots.pop()?
            };
            if let Some(entry) = self.visit(path) {
                return Some(entry);
            }
        }
    }
}

impl LocalWalk {
    fn visit(&mut self, path: PathBuf) -> Option<Entry> {
        if self.excludes.is_excluded(&path) {
            return None;
        }
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) => {
                self.ctx.problems.push(&path, format!("cannot stat: {e}"));
                return None;
            }
        };
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_symlink() {
            match fs::read_link(&path) {
                Ok(t) => EntryKind::Symlink {
                    target: t.into_os_string(),
                },
                Err(e) => {
                    self.ctx
                        .problems
                        .push(&path, format!("cannot read symlink: {e}"));
                    return None;
                }
            }
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_socket() {
            EntryKind::Socket
        } else if ft.is_char_device() {
            EntryKind::CharDevice { rdev: md.rdev() }
        } else {
            EntryKind::BlockDevice { rdev: md.rdev() }
        };
        let meta = meta_of(&md);
        let content: Option<Box<dyn Content>> = if kind == EntryKind::File {
            Some(Box::new(FileContent::new(
                path.clone(),
                self.ctx.bytes_read.clone(),
            )))
        } else {
            None
        };
        if kind == EntryKind::Dir {
            match fs::read_dir(&path) {
                Ok(rd) => {
                    let mut names = Vec::new();
                    for de in rd {
                        match de {
                            Ok(de) => names.push(de.file_name()),
                            Err(e) => {
                                self.ctx
                                    .problems
                                    .push(&path, format!("cannot list directory: {e}"));
                                break;
                            }
                        }
                    }
                    names.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
                    self.stack.push(Frame {
                        dir: path.clone(),
                        names,
                    });
                }
                Err(e) => self
                    .ctx
                    .problems
                    .push(&path, format!("cannot list directory: {e}")),
            }
        }
        Some(Entry {
            path,
            kind,
            meta,
            content,
        })
    }
}

fn meta_of(md: &fs::Metadata) -> Meta {
    Meta {
        mode: md.mode() & 0o7777,
        uid: Some(md.uid()),
        gid: Some(md.gid()),
        user: None,
        group: None,
        size: if md.is_file() { md.size() } else { 0 },
        mtime: Some(Time {
            secs: md.mtime(),
            nanos: md.mtime_nsec() as u32,
        }),
        atime: Some(Time {
            secs: md.atime(),
            nanos: md.atime_nsec() as u32,
        }),
        ctime: Some(Time {
            secs: md.ctime(),
            nanos: md.ctime_nsec() as u32,
        }),
        inode: md.ino(),
        device: md.dev(),
        links: md.nlink(),
    }
}

/// The content of a file on this machine, opened when the archiver asks for it.
pub struct FileContent {
    path: PathBuf,
    counter: Arc<AtomicU64>,
}

impl FileContent {
    pub fn new(path: PathBuf, counter: Arc<AtomicU64>) -> Self {
        FileContent { path, counter }
    }
}

impl Content for FileContent {
    fn open(self: Box<Self>) -> std::io::Result<Box<dyn Read + Send>> {
        let f = fs::File::open(&self.path)?;
        Ok(Box::new(CountingReader::new(f, self.counter)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problems::Problems;
    use crate::source::NoParent;

    #[test]
    fn walk_is_depth_first_and_byte_sorted_with_excludes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("r");
        fs::create_dir_all(root.join("b/sub")).unwrap();
        fs::create_dir_all(root.join("a")).unwrap();
        fs::create_dir_all(root.join("B")).unwrap();
        fs::write(root.join("b/sub/f"), "x").unwrap();
        fs::write(root.join("a/z.tmp"), "x").unwrap();
        fs::write(root.join("a/y"), "yy").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let src = LocalSource::new(
            std::slice::from_ref(&root),
            Excludes::new(&["*.tmp"]).unwrap(),
        );
        let ctx = WalkContext::new(Arc::new(NoParent), Problems::new());
        let got: Vec<String> = src
            .entries(ctx)
            .map(|e| {
                e.path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(got, ["", "B", "a", "a/y", "b", "b/sub", "b/sub/f", "link"]);
    }

    #[test]
    fn missing_root_is_a_problem_not_a_panic() {
        let problems = Problems::new();
        let src = LocalSource::new(&[PathBuf::from("/nonexistent/burrow")], Excludes::none());
        let n = src
            .entries(WalkContext::new(Arc::new(NoParent), problems.clone()))
            .count();
        assert_eq!(n, 0);
        assert_eq!(problems.snapshot().len(), 1);
    }
}
