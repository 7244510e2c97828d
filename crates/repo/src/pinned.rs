//! The local backend, pinned to the filesystem the repository was opened on.
//!
//! rustic_backend's local backend creates missing directories before every write. If the
//! backup disk disappears in the middle of a run, the next pack would then be written to an
//! empty mount-point directory on the SD card. This wrapper checks before every write and
//! remove that the repository directory still lives on the same device (`st_dev`) as when it
//! was opened, and refuses otherwise, so the run fails instead of filling the root filesystem.
//!
//! The wrapper also tells which snapshot file a save wrote ([`SnapshotGate`]), so that
//! `Pending::commit` can return its id, and holds every write while the backup's repository
//! lock is still being taken ([`WriteGate`]).
//!
//! It also knows the local backend's file layout for two repairs rustic_core has no API for:
//! removing `-tmp-` debris of interrupted writes, and telling a damaged pack file from an
//! intact one by its content hash (a pack is named by the SHA-256 of its bytes). While packs
//! are [hidden](Pinned::hide_packs), listings leave them out, so an index repair drops them.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rustic_backend::LocalBackend;
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
};
use sha2::{Digest, Sha256};

use crate::RepoError;

#[derive(Debug)]
pub struct Pinned {
    inner: LocalBackend,
    root: PathBuf,
    dev: u64,
    gate: Arc<SnapshotGate>,
    hidden: Mutex<HashSet<Id>>,
    pub(crate) writes: WriteGate,
}

/// The ids of the snapshot files written through a [`Pinned`] backend (rustic_core's
/// `save_snapshots` does not return them).
#[derive(Debug, Default)]
pub struct SnapshotGate {
    seen: Mutex<Vec<Id>>,
}

impl SnapshotGate {
    /// The ids of the snapshot files written since the last call.
    pub fn take(&self) -> Vec<Id> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn pass(&self, id: &Id) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(*id);
    }
}

/// Writes wait here while restic's lock is settling (lock.rs: the second look, 200 ms after
/// ours was written), so a backup reads its parent and walks the server meanwhile; once the
/// look found another process's conflicting lock, every write is refused with its message.
#[derive(Debug, Default)]
pub struct WriteGate {
    state: Mutex<Writes>,
    settled: Condvar,
}

#[derive(Debug, Default)]
enum Writes {
    #[default]
    Open,
    Settling,
    Refused(Refused),
}

/// Why writes are refused: the lock's second look found a conflict (its message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(String);

impl WriteGate {
    pub(crate) fn hold(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Writes::Settling;
    }

    pub(crate) fn settle(&self, look: Result<(), RepoError>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = match look {
            Ok(()) => Writes::Open,
            Err(e) => Writes::Refused(Refused(e.to_string())),
        };
        self.settled.notify_all();
    }

    fn pass(&self) -> Result<(), Refused> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while matches!(*state, Writes::Settling) {
            state = self.settled.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        match &*state {
            Writes::Refused(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }
}

/// What a pack file's bytes say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackState {
    /// Its SHA-256 is its name: every byte is as written.
    Intact,
    /// No such file.
    Missing,
    /// Short, or its content does not hash to its name.
    Damaged(String),
    /// It could not be read (I/O error): nothing is concluded.
    Unreadable(String),
}

fn sha256_hex(h: Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The directories in which rustic_backend's local backend writes files (`<name>-tmp-` first).
const WRITE_DIRS: [&str; 4] = ["keys", "snapshots", "index", "locks"];

/// A name rustic_backend (`<64 hex>-tmp-`, `config-tmp-`) or restic (`<name>-tmp-<random>`)
/// gives a file while it is written.
fn is_tmp_name(name: &str) -> bool {
    let Some((base, _)) = name.split_once("-tmp-") else {
        return false;
    };
    base == "config" || (base.len() == 64 && base.bytes().all(|b| b.is_ascii_hexdigit()))
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
            hidden: Mutex::default(),
            writes: WriteGate::default(),
        })
    }

    /// Leaves `ids` out of pack listings until [`Pinned::unhide_packs`].
    pub fn hide_packs(&self, ids: &[Id]) {
        let mut h = self.hidden.lock().unwrap_or_else(|e| e.into_inner());
        h.extend(ids.iter().copied());
    }

    pub fn unhide_packs(&self) {
        self.hidden
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn pack_path(&self, id: &Id) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("data").join(&hex[..2]).join(&*hex)
    }

    /// Reads a pack file whole and compares its SHA-256 with its name.
    pub fn pack_state(&self, id: &Id) -> PackState {
        let path = self.pack_path(id);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return PackState::Missing,
            Err(e) => return PackState::Unreadable(format!("{}: {e}", path.display())),
        };
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    h.update(&buf[..n]);
                    len += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return PackState::Unreadable(format!("{}: {e}", path.display())),
            }
        }
        if sha256_hex(h) == *id.to_hex() {
            PackState::Intact
        } else {
            PackState::Damaged(format!(
                "{} ({len} bytes) does not hash to its name",
                path.display()
            ))
        }
    }

    /// Removes `-tmp-` files last modified more than `age` ago: what a write interrupted by
    /// a kill or a power cut leaves. Never follows a symlink. Returns the removed paths.
    pub fn remove_tmp_debris(&self, age: Duration) -> RusticResult<Vec<PathBuf>> {
        self.check_device()?;
        let mut dirs: Vec<PathBuf> = vec![self.root.clone()];
        dirs.extend(WRITE_DIRS.iter().map(|d| self.root.join(d)));
        if let Ok(rd) = std::fs::read_dir(self.root.join("data")) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
        let now = SystemTime::now();
        let mut removed = Vec::new();
        for dir in dirs {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                if !name.to_str().is_some_and(is_tmp_name) {
                    continue;
                }
                let Ok(meta) = e.metadata() else { continue };
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|d| d > age);
                if meta.is_file() && old {
                    let path = e.path();
                    std::fs::remove_file(&path).map_err(|err| {
                        RusticError::with_source(
                            ErrorKind::InputOutput,
                            "cannot remove the leftover `{path}`",
                            err,
                        )
                        .attach_context("path", path.display().to_string())
                    })?;
                    removed.push(path);
                }
            }
        }
        Ok(removed)
    }

    /// Refuses when the repository directory is no longer on the device it was opened on,
    /// and while the lock is settling waits for it ([`WriteGate`]).
    pub fn check_place(&self) -> RusticResult<()> {
        self.writes.pass().map_err(|e| {
            RusticError::new(ErrorKind::Backend, "refusing to write: {reason}")
                .attach_context("reason", e.to_string())
        })?;
        self.check_device()
    }

    /// The device half of [`Pinned::check_place`], for removing debris: that adds nothing a
    /// racing process could lose, so it need not wait for the lock to settle.
    fn check_device(&self) -> RusticResult<()> {
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
        let mut list = self.inner.list_with_size(tpe)?;
        if tpe == FileType::Pack {
            let hidden = self.hidden.lock().unwrap_or_else(|e| e.into_inner());
            if !hidden.is_empty() {
                list.retain(|(id, _)| !hidden.contains(id));
            }
        }
        Ok(list)
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
        self.check_place()?;
        self.inner.create()
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        self.check_place()?;
        if tpe == FileType::Snapshot {
            self.gate.pass(id);
        }
        self.inner.write_bytes(tpe, id, cacheable, content)
    }

    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.check_place()?;
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
        assert!(p.check_place().is_ok());
        let moved = Pinned {
            dev: p.dev.wrapping_add(1),
            ..Pinned::new(tmp.path(), Arc::default()).unwrap()
        };
        let err = moved.check_place().unwrap_err();
        assert!(err.to_string().contains("refusing to write"), "{err}");
        assert!(moved.remove_tmp_debris(Duration::ZERO).is_err());
    }

    #[test]
    fn writes_wait_for_the_lock_to_settle_and_are_refused_when_it_did_not() {
        let gate = Arc::new(WriteGate::default());
        assert_eq!(gate.pass(), Ok(()), "open unless held");
        gate.hold();
        let waiting = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.pass())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiting.is_finished(),
            "a write went ahead of the second look"
        );
        gate.settle(Err(RepoError::Locked(
            "the repository is locked by restic".into(),
        )));
        assert_eq!(
            waiting.join().unwrap(),
            Err(Refused("the repository is locked by restic".into()))
        );
        assert!(gate.pass().is_err(), "and every write after it");
        gate.hold();
        gate.settle(Ok(()));
        assert_eq!(gate.pass(), Ok(()));
    }

    #[test]
    fn tmp_names() {
        let hex = "ab".repeat(32);
        assert!(is_tmp_name(&format!("{hex}-tmp-")));
        assert!(is_tmp_name(&format!("{hex}-tmp-1234")));
        assert!(is_tmp_name("config-tmp-"));
        assert!(!is_tmp_name(&hex));
        assert!(!is_tmp_name("notes-tmp-"));
        assert!(!is_tmp_name(&format!("{}-tmp-", &hex[..63])));
    }

    #[test]
    fn a_pack_is_judged_by_its_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Pinned::new(tmp.path(), Arc::default()).unwrap();
        let body = b"pack bytes".to_vec();
        let mut h = Sha256::new();
        h.update(&body);
        let id: Id = sha256_hex(h).parse().unwrap();
        assert_eq!(p.pack_state(&id), PackState::Missing);
        let path = p.pack_path(&id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &body).unwrap();
        assert_eq!(p.pack_state(&id), PackState::Intact);
        std::fs::write(&path, &body[..4]).unwrap();
        assert!(matches!(p.pack_state(&id), PackState::Damaged(_)));
        p.hide_packs(&[id]);
        assert!(p.list_with_size(FileType::Pack).unwrap().is_empty());
        p.unhide_packs();
        assert_eq!(p.list_with_size(FileType::Pack).unwrap().len(), 1);
    }
}
