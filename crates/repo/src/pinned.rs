//! The local backend, pinned to the filesystem the repository was opened on.
//!
//! rustic_backend's local backend creates missing directories before every write. If the
//! backup disk disappears in the middle of a run, the next pack would then be written to an
//! empty mount-point directory on the SD card. This wrapper checks before every write and
//! remove that the repository directory still lives on the same device (`st_dev`) as when it
//! was opened, and refuses otherwise, so the run fails instead of filling the root filesystem.
//!
//! The wrapper also holds back snapshot files while a backup runs ([`SnapshotGate`]):
//! rustic_core's archiver writes the snapshot as its last step, before burrow knows whether
//! the run was cut short or must be tagged `partial`/`anomaly`. The held snapshot is never
//! written; burrow writes the final one itself (`Pending::commit`), so no snapshot with the
//! wrong tags ever exists, not even for a moment.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    gate: Arc<SnapshotGate>,
}

/// What happens to snapshot files written through a [`Pinned`] backend.
#[derive(Debug, Default)]
pub struct SnapshotGate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    /// Snapshot writes are swallowed (recorded, not written).
    hold: bool,
    /// Ids of the snapshot files written or swallowed since the last [`SnapshotGate::take`].
    seen: Vec<Id>,
}

impl SnapshotGate {
    pub fn hold(&self) {
        self.lock().hold = true;
    }

    /// The ids of the snapshot files seen since the last call.
    pub fn take(&self) -> Vec<Id> {
        std::mem::take(&mut self.lock().seen)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a snapshot write; true when it must be written.
    fn pass(&self, id: &Id) -> bool {
        let mut s = self.lock();
        s.seen.push(*id);
        !s.hold
    }
}

/// The device of `path`, or of its nearest existing ancestor (before `init` creates it).
fn device_of(path: &Path) -> Option<u64> {
    path.ancestors()
        .find_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev())
}

impl Pinned {
    pub fn new(root: &Path, gate: Arc<SnapshotGate>) -> RusticResult<Self> {
        let inner = LocalBackend::new(root.to_string_lossy(), [])?;
        let dev = device_of(root).ok_or_else(|| {
            RusticError::new(ErrorKind::Backend, "cannot stat repository path `{path}`")
                .attach_context("path", root.display().to_string())
        })?;
        Ok(Pinned {
            inner,
            root: root.to_owned(),
            dev,
            gate,
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
        if tpe == FileType::Snapshot && !self.gate.pass(id) {
            return Ok(());
        }
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
        let p = Pinned::new(tmp.path(), Arc::default()).unwrap();
        assert!(p.check().is_ok());
        let moved = Pinned {
            dev: p.dev.wrapping_add(1),
            ..Pinned::new(tmp.path(), Arc::default()).unwrap()
        };
        let err = moved.check().unwrap_err();
        assert!(err.to_string().contains("refusing to write"), "{err}");
    }
}
