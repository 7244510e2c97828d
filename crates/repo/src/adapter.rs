//! Our [`Source`] seen as rustic_core's `ReadSource`. rustic_core only logs a file it cannot
//! open or read and leaves it out of the snapshot; this adapter records every such failure in
//! the run's [`Problems`] so the run can say `partial` and name the files.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use burrow_core::Problems;
use burrow_core::source::{Content, Entry};
use rustic_core::{
    ErrorKind, ReadSource, ReadSourceEntry, ReadSourceOpen, RusticError, RusticResult,
};

use crate::node::to_node;

type Walk = Box<dyn Iterator<Item = Entry> + Send>;

pub struct Adapter {
    walk: Mutex<Option<Walk>>,
    problems: Problems,
    cancel: Arc<AtomicBool>,
}

impl Adapter {
    /// `cancel` also stops files being read (a large file would otherwise be read to its end
    /// before a shutdown could complete).
    pub fn new(walk: Walk, problems: Problems, cancel: Arc<AtomicBool>) -> Self {
        Adapter {
            walk: Mutex::new(Some(walk)),
            problems,
            cancel,
        }
    }
}

pub struct Opener {
    path: PathBuf,
    content: Box<dyn Content>,
    problems: Problems,
    cancel: Arc<AtomicBool>,
}

impl ReadSourceOpen for Opener {
    type Reader = Reader;

    fn open(self) -> RusticResult<Reader> {
        match self.content.open() {
            Ok(inner) => Ok(Reader {
                inner,
                path: self.path,
                problems: self.problems,
                cancel: self.cancel,
            }),
            Err(e) => {
                push_once(&self.problems, &self.path, format!("cannot read: {e}"));
                Err(
                    RusticError::with_source(ErrorKind::InputOutput, "cannot open `{path}`", e)
                        .attach_context("path", self.path.display().to_string()),
                )
            }
        }
    }
}

pub struct Reader {
    inner: Box<dyn Read + Send>,
    path: PathBuf,
    problems: Problems,
    cancel: Arc<AtomicBool>,
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not ErrorKind::Interrupted: std's read loops retry on that.
            return Err(std::io::Error::other("burrow is stopping"));
        }
        self.inner.read(buf).inspect_err(|e| {
            push_once(&self.problems, &self.path, format!("read failed: {e}"));
        })
    }
}

/// Records a problem unless the source already recorded one for this path (the SFTP source
/// names what it saw, e.g. a file that changed while read), so each file is named once.
fn push_once(problems: &Problems, path: &std::path::Path, message: String) {
    if !problems.snapshot().iter().any(|p| p.path == path) {
        problems.push(path, message);
    }
}

pub struct Iter {
    walk: Walk,
    problems: Problems,
    cancel: Arc<AtomicBool>,
}

impl Iterator for Iter {
    type Item = RusticResult<ReadSourceEntry<Opener>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let entry = self.walk.next()?;
            let Some(node) = to_node(&entry) else {
                self.problems
                    .push(&entry.path, "path has no file name; skipped");
                continue;
            };
            let open = entry.content.map(|content| Opener {
                path: entry.path.clone(),
                content,
                problems: self.problems.clone(),
                cancel: self.cancel.clone(),
            });
            return Some(Ok(ReadSourceEntry {
                path: entry.path,
                node,
                open,
            }));
        }
    }
}

impl ReadSource for Adapter {
    type Open = Opener;
    type Iter = Iter;

    fn size(&self) -> RusticResult<Option<u64>> {
        Ok(None)
    }

    fn entries(&self) -> Iter {
        let walk = self
            .walk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| Box::new(std::iter::empty()));
        Iter {
            walk,
            problems: self.problems.clone(),
            cancel: self.cancel.clone(),
        }
    }
}
