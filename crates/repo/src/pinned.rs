//! The local backend, pinned to the filesystem the repository was opened on.
//!
//! rustic_backend's local backend creates missing directories before every write. If the
//! backup disk disappears in the middle of a run, the next pack would then be written to an
//! empty mount-point directory on the SD card. This wrapper checks before every write and
//! remove that the repository directory still lives on the same device (`st_dev`) as when it
//! was opened, and refuses otherwise, so the run fails instead of filling the root filesystem.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rustic_backend::LocalBackend;
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
};

#[derive(Debug)]
pub struct Pinned {
    inner: LocalBackend,
    root: PathBuf,
    dev: u64,
}

/// The device of `path`, or of its nearest existing ancestor (before `init` creates it).
fn device_of(path: &Path) -> Option<u64> {
    path.ancestors()
        .find_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev())
}

impl Pinned {
    pub fn new(root: &Path) -> RusticResult<Self> {
        let inner = LocalBackend::new(root.to_string_lossy(), [])?;
        let dev = device_of(root).ok_or_else(|| {
            RusticError::new(ErrorKind::Backend, "cannot stat repository path `{path}`")
                .attach_context("path", root.display().to_string())
        })?;
        Ok(Pinned {
            inner,
            root: root.to_owned(),
            dev,
        })
    }

    fn check(&self) -> RusticResult<()> {
        if device_of(&self.root) == Some(self.dev) {
            return Ok(());
        }
        Err(RusticError::new(
            ErrorKind::Backend,
            "the repository at `{path}` is no longer on the filesystem it was opened on (was the \
             backup disk removed?); refusing to write",
        )
        .attach_context("path", self.root.display().to_string()))
    }
}

impl ReadBackend for Pinned {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        self.inner.list_with_size(tpe)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        self.inner.read_full(tpe, id)
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        self.inner.read_partial(tpe, id, cacheable, offset, length)
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.inner.warmup_path(tpe, id)
    }
}

impl WriteBackend for Pinned {
    fn create(&self) -> RusticResult<()> {
        self.check()?;
        self.inner.create()
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        self.check()?;
        self.inner.write_bytes(tpe, id, cacheable, content)
    }

    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.check()?;
        self.inner.remove(tpe, id, cacheable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_refused_once_the_directory_moved_to_another_device() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Pinned::new(tmp.path()).unwrap();
        assert!(p.check().is_ok());
        let moved = Pinned {
            dev: p.dev.wrapping_add(1),
            ..Pinned::new(tmp.path()).unwrap()
        };
        let err = moved.check().unwrap_err();
        assert!(err.to_string().contains("refusing to write"), "{err}");
    }
}
