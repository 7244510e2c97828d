//! The backup writer: a snapshot's packs, trees and index, written by burrow itself; rustic_core
//! reads what it writes (and open, check, forget, prune and restore stay rustic_core's).
//!
//! Three kinds of threads, joined before [`write`] returns:
//!
//! - **the walk** (the calling thread) takes the source's entries in walk order. A file the
//!   parent snapshot holds with the same size and mtime is not read. Any other file is read:
//!   one of at most the minimum chunk size is one blob and meets no chunker; a larger one is
//!   cut by [`Chunking`] as it streams in. Blobs go to the workers in batches (one hand-off per
//!   batch, not per blob); the bounded queue of batches is what bounds the memory of a run.
//! - **workers** (available cores − 1, at least one) hash each blob, skip it when the
//!   repository or this run already has it, compress it with a zstd context of their own,
//!   seal it, and append it to the open data pack ([`PackWriter`], streamed to disk).
//! - **the tree builder** receives every entry in walk order, waits for each read file's blob
//!   ids, and closes each directory as the walk leaves it: a directory whose entries equal
//!   the parent snapshot's takes the parent's subtree id without being serialised; others are
//!   serialised as restic does and stored in tree packs.
//!
//! Order of writes (the crash rule of the crate): a pack is complete and synced before any
//! index file names it, index files are written before the snapshot (by the caller), so a
//! crash at any moment leaves at worst packs no index names, which a later prune removes.
//!
//! A file whose content cannot be read is left out of the snapshot and named in the run's
//! problems, as before; blobs of it already stored are merely unreferenced.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use burrow_core::Problems;
use burrow_core::short_id;
use burrow_core::source::{Content, Entry, ParentIndex};
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use rustic_core::repofile::{BlobType, IndexFile, Metadata, Node, NodeType, Tree};
use rustic_core::{IndexedIdsStatus, Repository, TreeId};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::chunker::Chunking;
use crate::crypto::Sealer;
use crate::node::to_node;
use crate::pack::{PACK_SIZE, PackDone, PackWriter};

/// Blobs an index file lists at most before the next one is started (restic's "full" index).
const INDEX_BLOBS: usize = 50_000;
/// A batch goes to the workers once it holds this many blobs or bytes.
const BATCH_BLOBS: usize = 64;
const BATCH_BYTES: usize = 1 << 20;
/// Entries the walk may run ahead of the tree builder.
const EVENTS_AHEAD: usize = 4096;

/// What [`write`] needs besides the walk.
pub struct Target<'a> {
    pub sealer: Sealer,
    /// zstd level (0 = zstd's default), `None` for a version-1 repository.
    pub zstd: Option<i32>,
    pub chunking: Chunking,
    /// The repository's `data/` directory.
    pub data_dir: PathBuf,
    /// Refuses when the repository is no longer on the filesystem it was opened on.
    pub place: &'a (dyn Fn() -> io::Result<()> + Sync),
    /// Writes an index file (stored bytes, id).
    pub save_index: &'a (dyn Fn(Vec<u8>, rustic_core::Id) -> io::Result<()> + Sync),
    /// The repository, indexed, for the existing blobs and the parent's trees.
    pub repo: &'a Repository<IndexedIdsStatus>,
    /// The parent snapshot's root tree.
    pub parent_tree: Option<TreeId>,
    pub parent_index: Arc<dyn ParentIndex>,
    pub problems: Problems,
    pub cancel: Arc<AtomicBool>,
    /// CPU workers; 0 means available cores − 1 (at least 1).
    pub workers: usize,
}

/// What was written.
#[derive(Debug, Default, Clone)]
pub struct Written {
    pub tree: TreeId,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub dirs_new: u64,
    pub dirs_changed: u64,
    pub dirs_unmodified: u64,
    pub dirs: u64,
    pub data_blobs: u64,
    pub data_added: u64,
    pub data_added_packed: u64,
    pub tree_blobs: u64,
    pub tree_added: u64,
    pub tree_added_packed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Repo(String),
}

/// The ids of one read file's blobs, filled in by the workers in any order.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Default)]
struct SlotState {
    ids: Vec<Option<rustic_core::Id>>,
    filled: usize,
    /// Set by the walk when the file is read to its end (or given up).
    total: Option<usize>,
    len: u64,
    failed: bool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fill(&self, seq: usize, id: Option<rustic_core::Id>) {
        let mut s = self.lock();
        if s.ids.len() <= seq {
            s.ids.resize(seq + 1, None);
        }
        s.failed |= id.is_none();
        s.ids[seq] = id;
        s.filled += 1;
        if s.total == Some(s.filled) {
            self.ready.notify_all();
        }
    }

    fn close(&self, total: usize, len: u64, failed: bool) {
        let mut s = self.lock();
        s.total = Some(total);
        s.len = len;
        s.failed |= failed;
        if s.filled == total {
            self.ready.notify_all();
        }
    }

    /// The blob ids and the length read, once all are in; `None` when the file failed.
    fn wait(&self) -> Option<(Vec<rustic_core::Id>, u64)> {
        let mut s = self.lock();
        while s.total != Some(s.filled) {
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.failed {
            return None;
        }
        let ids = s.ids.iter().map(|id| id.expect("filled")).collect();
        Some((ids, s.len))
    }
}

struct Job {
    data: Vec<u8>,
    slot: Arc<Slot>,
    seq: usize,
}

/// One entry, as the tree builder gets it.
struct Event {
    path: PathBuf,
    node: Node,
    /// A file being read: its blob ids arrive here.
    slot: Option<Arc<Slot>>,
    /// A file the walk did not read because the parent has it unchanged; kept in case the
    /// parent's tree says otherwise (then the builder reads it itself).
    unread: Option<Box<dyn Content>>,
}

#[derive(Serialize)]
struct IndexJson<'a> {
    packs: &'a [PackDone],
}

/// State shared by all threads of one write.
struct Shared<'a> {
    t: &'a Target<'a>,
    known_data: Mutex<HashSet<rustic_core::Id>>,
    known_trees: Mutex<HashSet<rustic_core::Id>>,
    data_pack: Mutex<Option<PackWriter>>,
    index: Mutex<Vec<PackDone>>,
    error: Mutex<Option<String>>,
    abort: AtomicBool,
    data_blobs: AtomicU64,
    data_added: AtomicU64,
    data_added_packed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-thread buffers for [`Shared::encode`].
struct Encoder {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    packed: Vec<u8>,
    sealed: Vec<u8>,
}

impl Encoder {
    fn new(level: Option<i32>) -> io::Result<Encoder> {
        let zstd = level.map(zstd::bulk::Compressor::new).transpose()?;
        Ok(Encoder {
            zstd,
            packed: Vec::new(),
            sealed: Vec::new(),
        })
    }

    /// Seals `plain` (compressed when that makes it smaller) into `self.sealed`; the plain
    /// length when compressed.
    fn encode(&mut self, sealer: &Sealer, plain: &[u8]) -> io::Result<Option<u32>> {
        if let Some(z) = &mut self.zstd {
            // Both buffers are kept for the next blob: no allocation per blob.
            self.packed.clear();
            self.packed
                .reserve(zstd::zstd_safe::compress_bound(plain.len()));
            z.compress_to_buffer(plain, &mut self.packed)?;
            if self.packed.len() < plain.len() {
                sealer.seal_into(&self.packed, &mut self.sealed);
                return Ok(Some(plain.len() as u32));
            }
        }
        sealer.seal_into(plain, &mut self.sealed);
        Ok(None)
    }
}

impl Shared<'_> {
    fn fail(&self, e: impl std::fmt::Display) {
        let mut err = lock(&self.error);
        if err.is_none() {
            *err = Some(e.to_string());
        }
        self.abort.store(true, Ordering::Relaxed);
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Stores one data blob unless it is known; its id.
    fn data_blob(&self, enc: &mut Encoder, plain: &[u8]) -> io::Result<rustic_core::Id> {
        let digest: [u8; 32] = Sha256::digest(plain).into();
        let id = rustic_core::Id::new(digest);
        if !lock(&self.known_data).insert(id) {
            return Ok(id);
        }
        let plain_len = enc.encode(&self.t.sealer, plain)?;
        let full = {
            let mut open = lock(&self.data_pack);
            if open.is_none() {
                *open = Some(PackWriter::create(&self.t.data_dir)?);
            }
            let pack = open.as_mut().expect("just made");
            pack.add(digest, BlobType::Data, &enc.sealed, plain_len)?;
            if pack.size() >= PACK_SIZE {
                open.take()
            } else {
                None
            }
        };
        self.data_blobs.fetch_add(1, Ordering::Relaxed);
        self.data_added
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
        self.data_added_packed
            .fetch_add(enc.sealed.len() as u64, Ordering::Relaxed);
        if let Some(pack) = full {
            self.pack_done(pack)?;
        }
        Ok(id)
    }

    fn pack_done(&self, pack: PackWriter) -> io::Result<()> {
        let done = pack.finish(&self.t.sealer, self.t.place)?;
        let full = {
            let mut index = lock(&self.index);
            index.push(done);
            if index.iter().map(|p| p.blobs.len()).sum::<usize>() >= INDEX_BLOBS {
                std::mem::take(&mut *index)
            } else {
                Vec::new()
            }
        };
        self.save_index(&full)
    }

    fn save_index(&self, packs: &[PackDone]) -> io::Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_vec(&IndexJson { packs }).map_err(io::Error::other)?;
        let (data, id) = self.t.sealer.seal_file(&json, self.t.zstd.is_some());
        (self.t.save_index)(data, id)
    }

    fn worker(&self, jobs: Receiver<Vec<Job>>) {
        let mut enc = match Encoder::new(self.t.zstd) {
            Ok(e) => Some(e),
            Err(e) => {
                self.fail(format!("zstd: {e}"));
                None
            }
        };
        for batch in jobs {
            for job in batch {
                let id = match &mut enc {
                    Some(enc) if !self.aborted() => {
                        // A panic must still fill the slot, or the tree builder waits forever.
                        let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            self.data_blob(enc, &job.data)
                        }));
                        match stored {
                            Ok(Ok(id)) => Some(id),
                            Ok(Err(e)) => {
                                self.fail(format!("cannot write a pack: {e}"));
                                None
                            }
                            Err(_) => {
                                self.fail("a pack worker panicked");
                                None
                            }
                        }
                    }
                    _ => None,
                };
                job.slot.fill(job.seq, id);
            }
        }
    }
}

fn raw(id: &rustic_core::Id) -> [u8; 32] {
    let mut out = [0u8; 32];
    let hex = id.to_hex();
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

/// Writes the packs, trees and index of one snapshot from `walk`; returns its root tree.
pub fn write(
    target: &Target<'_>,
    walk: Box<dyn Iterator<Item = Entry> + Send>,
) -> Result<Written, WriteError> {
    let (known_data, known_trees) = known_blobs(target.repo)?;
    let shared = Shared {
        t: target,
        known_data: Mutex::new(known_data),
        known_trees: Mutex::new(known_trees),
        data_pack: Mutex::new(None),
        index: Mutex::new(Vec::new()),
        error: Mutex::new(None),
        abort: AtomicBool::new(false),
        data_blobs: AtomicU64::new(0),
        data_added: AtomicU64::new(0),
        data_added_packed: AtomicU64::new(0),
    };
    let workers = match target.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get().saturating_sub(1))
            .unwrap_or(1)
            .max(1),
        n => n,
    };
    let built = std::thread::scope(|s| {
        let (job_tx, job_rx) = bounded::<Vec<Job>>(workers * 2);
        let (ev_tx, ev_rx) = bounded::<Event>(EVENTS_AHEAD);
        for _ in 0..workers {
            let rx = job_rx.clone();
            let shared = &shared;
            std::thread::Builder::new()
                .name("burrow-pack".into())
                .spawn_scoped(s, move || shared.worker(rx))
                .expect("spawn a worker thread");
        }
        drop(job_rx);
        let builder = std::thread::Builder::new()
            .name("burrow-tree".into())
            .spawn_scoped(s, || Builder::new(&shared).run(ev_rx))
            .expect("spawn the tree thread");
        Walker {
            shared: &shared,
            jobs: job_tx,
            events: ev_tx,
            batch: Vec::new(),
            batch_bytes: 0,
        }
        .run(walk);
        builder.join()
    });
    let mut written = match built {
        Ok(w) => w,
        Err(p) => std::panic::resume_unwind(p),
    };
    // The last, partly filled data pack, then every index entry not yet in a file.
    let last = lock(&shared.data_pack).take();
    if let Some(pack) = last.filter(|p| !p.is_empty())
        && let Err(e) = shared.pack_done(pack)
    {
        shared.fail(format!("cannot write a pack: {e}"));
    }
    let rest = std::mem::take(&mut *lock(&shared.index));
    if let Err(e) = shared.save_index(&rest) {
        shared.fail(format!("cannot write an index file: {e}"));
    }
    if let Some(e) = lock(&shared.error).take() {
        return Err(WriteError::Io(e));
    }
    let mut w = written
        .take()
        .ok_or_else(|| WriteError::Io("the tree builder stopped".into()))?;
    w.data_blobs = shared.data_blobs.load(Ordering::Relaxed);
    w.data_added = shared.data_added.load(Ordering::Relaxed);
    w.data_added_packed = shared.data_added_packed.load(Ordering::Relaxed);
    Ok(w)
}

/// The ids of every blob the repository's index files list.
fn known_blobs(
    repo: &Repository<IndexedIdsStatus>,
) -> Result<(HashSet<rustic_core::Id>, HashSet<rustic_core::Id>), WriteError> {
    let (mut data, mut trees) = (HashSet::new(), HashSet::new());
    let files = repo
        .stream_files::<IndexFile>()
        .map_err(|e| WriteError::Repo(e.display_log()))?;
    for file in files {
        let (_, index) = file.map_err(|e| WriteError::Repo(e.display_log()))?;
        for pack in index.packs {
            for blob in pack.blobs {
                match blob.tpe {
                    BlobType::Data => data.insert(*blob.id),
                    BlobType::Tree => trees.insert(*blob.id),
                };
            }
        }
    }
    Ok((data, trees))
}

struct Walker<'a, 's> {
    shared: &'a Shared<'s>,
    jobs: Sender<Vec<Job>>,
    events: Sender<Event>,
    batch: Vec<Job>,
    batch_bytes: usize,
}

impl Walker<'_, '_> {
    fn run(mut self, walk: Box<dyn Iterator<Item = Entry> + Send>) {
        let t = self.shared.t;
        for entry in walk {
            if t.cancel.load(Ordering::Relaxed) || self.shared.aborted() {
                break;
            }
            let Some(node) = to_node(&entry) else {
                t.problems
                    .push(&entry.path, "path has no file name; skipped");
                continue;
            };
            let Some(content) = entry.content else {
                self.send(Event {
                    path: entry.path,
                    node,
                    slot: None,
                    unread: None,
                });
                continue;
            };
            let m = &entry.meta;
            if t.parent_index.unchanged(&entry.path, m.size, m.mtime) {
                self.send(Event {
                    path: entry.path,
                    node,
                    slot: None,
                    unread: Some(content),
                });
                continue;
            }
            let slot = Arc::new(Slot::default());
            let path = entry.path.clone();
            self.send(Event {
                path: entry.path,
                node,
                slot: Some(slot.clone()),
                unread: None,
            });
            self.read(&path, m.size, content, &slot);
        }
        self.flush();
    }

    /// Sends an entry to the tree builder; the blobs batched so far go out first whenever
    /// the builder is behind, since it may be waiting for them.
    fn send(&mut self, ev: Event) {
        match self.events.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(ev)) => {
                self.flush();
                let _ = self.events.send(ev);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn push(&mut self, job: Job) {
        self.batch_bytes += job.data.len();
        self.batch.push(job);
        if self.batch.len() >= BATCH_BLOBS || self.batch_bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            self.batch_bytes = 0;
            let batch = std::mem::take(&mut self.batch);
            if let Err(e) = self.jobs.send(batch) {
                // No worker left (they only stop when this sender is gone): fail the blobs.
                for job in e.into_inner() {
                    job.slot.fill(job.seq, None);
                }
            }
        }
    }

    fn read(&mut self, path: &Path, size: u64, content: Box<dyn Content>, slot: &Arc<Slot>) {
        let t = self.shared.t;
        let Some(mut reader) = Reader::open(content, path, t) else {
            slot.close(0, 0, true);
            return;
        };
        let min = t.chunking.min;
        let mut first = Vec::with_capacity(size.min(min as u64 + 1) as usize);
        if (&mut reader)
            .take(min as u64 + 1)
            .read_to_end(&mut first)
            .is_err()
        {
            slot.close(0, 0, true);
            return;
        }
        if first.len() <= min {
            let len = first.len() as u64;
            let n = usize::from(!first.is_empty());
            if n == 1 {
                self.push(Job {
                    data: first,
                    slot: slot.clone(),
                    seq: 0,
                });
            }
            slot.close(n, len, false);
            return;
        }
        let mut seq = 0;
        let got = t.chunking.chunk(first, &mut reader, &mut |data| {
            self.push(Job {
                data,
                slot: slot.clone(),
                seq,
            });
            seq += 1;
            Ok(())
        });
        match got {
            Ok(len) => slot.close(seq, len, false),
            Err(_) => slot.close(seq, 0, true),
        }
    }
}

/// A file's content as the walk reads it: stops when the run is cancelled, and names the
/// file in the run's problems when a read fails.
struct Reader<'a> {
    inner: Box<dyn Read + Send>,
    path: &'a Path,
    problems: &'a Problems,
    cancel: &'a AtomicBool,
}

impl<'a> Reader<'a> {
    /// Opens `content`; `None` (the file named in the problems) when it cannot be.
    fn open(content: Box<dyn Content>, path: &'a Path, t: &'a Target<'_>) -> Option<Self> {
        match content.open() {
            Ok(inner) => Some(Reader {
                inner,
                path,
                problems: &t.problems,
                cancel: &t.cancel,
            }),
            Err(e) => {
                push_once(&t.problems, path, format!("cannot read: {e}"));
                None
            }
        }
    }
}

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not ErrorKind::Interrupted: std's read loops retry on that.
            return Err(io::Error::other("burrow is stopping"));
        }
        self.inner.read(buf).inspect_err(|e| {
            push_once(self.problems, self.path, format!("read failed: {e}"));
        })
    }
}

/// Records a problem unless the source already recorded one for this path (the SFTP source
/// names what it saw, e.g. a file that changed while read), so each file is named once.
fn push_once(problems: &Problems, path: &Path, message: String) {
    if !problems.snapshot().iter().any(|p| p.path == path) {
        problems.push(path, message);
    }
}

/// A directory being built: its entries so far and, when the parent snapshot has it, the
/// parent's version.
struct Frame {
    path: PathBuf,
    /// `None` for the root.
    node: Option<Node>,
    nodes: Vec<Node>,
    parent: Option<(TreeId, Tree)>,
}

struct Builder<'a, 's> {
    shared: &'a Shared<'s>,
    stack: Vec<Frame>,
    pack: Option<PackWriter>,
    enc: Option<Encoder>,
    w: Written,
    /// A parent tree that could not be read was reported once.
    warned: bool,
}

impl<'a, 's> Builder<'a, 's> {
    fn new(shared: &'a Shared<'s>) -> Self {
        Builder {
            shared,
            stack: Vec::new(),
            pack: None,
            enc: None,
            w: Written::default(),
            warned: false,
        }
    }

    /// Builds the trees; `None` when the write failed (the error is in `shared`).
    fn run(mut self, events: Receiver<Event>) -> Option<Written> {
        let root_parent = self.shared.t.parent_tree.and_then(|id| self.load(id));
        self.stack.push(Frame {
            path: PathBuf::from("/"),
            node: None,
            nodes: Vec::new(),
            parent: root_parent,
        });
        for ev in events {
            if self.shared.aborted() {
                // Drain, so the walk is never stuck on a full queue.
                continue;
            }
            if let Err(e) = self.entry(ev) {
                self.shared.fail(e);
            }
        }
        let done = (|| -> io::Result<TreeId> {
            while self.stack.len() > 1 {
                self.close()?;
            }
            let root = self.stack.pop().expect("the root frame");
            let id = self.tree(root.nodes, root.parent)?;
            if let Some(pack) = self.pack.take().filter(|p| !p.is_empty()) {
                self.shared.pack_done(pack)?;
            }
            Ok(id)
        })();
        match done {
            Ok(id) if !self.shared.aborted() => {
                self.w.tree = id;
                Some(self.w)
            }
            Ok(_) => None,
            Err(e) => {
                self.shared.fail(format!("cannot write a tree: {e}"));
                None
            }
        }
    }

    fn load(&mut self, id: TreeId) -> Option<(TreeId, Tree)> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.shared.t.repo.get_tree(&id)
        })) {
            Ok(Ok(tree)) => Some((id, tree)),
            _ => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        "a tree of the parent snapshot ({}) cannot be read; what it held is \
                         read again",
                        short_id(&id.to_hex())
                    );
                }
                None
            }
        }
    }

    /// The parent's node named like `node` in the directory `frame` builds.
    fn parent_node<'f>(frame: &'f Frame, name: &str) -> Option<&'f Node> {
        let (_, tree) = frame.parent.as_ref()?;
        match tree.nodes.binary_search_by(|n| n.name.as_str().cmp(name)) {
            Ok(i) => Some(&tree.nodes[i]),
            // Not sorted as restic sorts (a foreign tree): look at every node.
            Err(_) => tree.nodes.iter().find(|n| n.name == name),
        }
    }

    fn push_dir(&mut self, path: PathBuf, node: Node) {
        let top = self.stack.last().expect("the root frame");
        let subtree = Self::parent_node(top, &node.name)
            .filter(|n| n.is_dir())
            .and_then(|n| n.subtree);
        let parent = subtree.and_then(|id| self.load(id));
        self.stack.push(Frame {
            path,
            node: Some(node),
            nodes: Vec::new(),
            parent,
        });
    }

    fn entry(&mut self, ev: Event) -> io::Result<()> {
        let Some(dir) = ev.path.parent() else {
            // The root itself ("/" as a job path): the snapshot's root tree has no node.
            return Ok(());
        };
        while !dir.starts_with(&self.stack.last().expect("the root frame").path) {
            self.close()?;
        }
        // Directories above a job path that the walk does not list: restic and rustic_core
        // store them with empty metadata.
        let top = self.stack.last().expect("the root frame").path.clone();
        if let Ok(rest) = dir.strip_prefix(&top) {
            let mut path = top;
            for part in rest.components() {
                path.push(part);
                let node = Node::new_node(part.as_os_str(), NodeType::Dir, Metadata::default());
                self.push_dir(path.clone(), node);
            }
        }
        let mut node = ev.node;
        if node.is_dir() {
            self.push_dir(ev.path, node);
            return Ok(());
        }
        if node.is_file() {
            let old = Self::parent_node(self.stack.last().expect("root"), &node.name)
                .filter(|p| p.is_file())
                .cloned();
            let content = match (ev.slot, ev.unread) {
                (Some(slot), _) => match slot.wait() {
                    Some((ids, len)) => {
                        node.meta.size = len;
                        Some(ids)
                    }
                    None => None,
                },
                (None, Some(unread)) => match &old {
                    Some(o)
                        if o.meta.size == node.meta.size
                            && o.meta.mtime == node.meta.mtime
                            && self.all_known(o) =>
                    {
                        self.w.files_unmodified += 1;
                        self.w.files += 1;
                        self.w.file_bytes += node.meta.size;
                        node.content = o.content.clone();
                        self.stack.last_mut().expect("root").nodes.push(node);
                        return Ok(());
                    }
                    _ => self.read_here(&ev.path, unread, &mut node),
                },
                (None, None) => None,
            };
            let Some(ids) = content else {
                // Unreadable: named in the problems, left out of the snapshot.
                return Ok(());
            };
            node.content = Some(ids.into_iter().map(Into::into).collect());
            match old {
                None => self.w.files_new += 1,
                Some(_) => self.w.files_changed += 1,
            }
            self.w.files += 1;
            self.w.file_bytes += node.meta.size;
        } else {
            // Symlinks, FIFOs, devices and sockets count as files, as in restic's summary.
            match Self::parent_node(self.stack.last().expect("root"), &node.name) {
                None => self.w.files_new += 1,
                Some(o) if *o == node => self.w.files_unmodified += 1,
                Some(_) => self.w.files_changed += 1,
            }
            self.w.files += 1;
        }
        self.stack.last_mut().expect("root").nodes.push(node);
        Ok(())
    }

    /// Every blob of the parent's `node` is still in the repository (a check may have taken
    /// a damaged pack out of the index since the parent was made).
    fn all_known(&self, node: &Node) -> bool {
        let known = lock(&self.shared.known_data);
        node.content
            .iter()
            .flatten()
            .all(|id| known.contains(&**id))
    }

    /// Reads a file the walk skipped although the parent's copy cannot be taken over (a hash
    /// collision in the parent index, or blobs lost to a repair): rare, so on this thread.
    fn read_here(
        &mut self,
        path: &Path,
        unread: Box<dyn Content>,
        node: &mut Node,
    ) -> Option<Vec<rustic_core::Id>> {
        let t = self.shared.t;
        let mut reader = Reader::open(unread, path, t)?;
        let mut enc = match Encoder::new(t.zstd) {
            Ok(e) => e,
            Err(e) => {
                self.shared.fail(format!("zstd: {e}"));
                return None;
            }
        };
        let mut ids = Vec::new();
        let len = t
            .chunking
            .chunk(Vec::new(), &mut reader, &mut |data| {
                ids.push(self.shared.data_blob(&mut enc, &data)?);
                Ok(())
            })
            .ok()?;
        node.meta.size = len;
        Some(ids)
    }

    /// Closes the innermost directory: its tree is stored (or the parent's reused) and its
    /// node added to the directory above.
    fn close(&mut self) -> io::Result<()> {
        let frame = self.stack.pop().expect("a frame above the root");
        let mut node = frame.node.expect("only the root has no node");
        node.subtree = Some(self.tree(frame.nodes, frame.parent)?);
        self.stack.last_mut().expect("root").nodes.push(node);
        Ok(())
    }

    /// The id of the tree of `nodes`: the parent's when equal, otherwise stored.
    fn tree(&mut self, mut nodes: Vec<Node>, parent: Option<(TreeId, Tree)>) -> io::Result<TreeId> {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.w.dirs += 1;
        match parent {
            Some((id, old))
                if old.nodes == nodes && lock(&self.shared.known_trees).contains(&*id) =>
            {
                self.w.dirs_unmodified += 1;
                return Ok(id);
            }
            Some(_) => self.w.dirs_changed += 1,
            None => self.w.dirs_new += 1,
        }
        let (json, id) = Tree { nodes }
            .serialize()
            .map_err(|e| io::Error::other(format!("tree: {e}")))?;
        if !lock(&self.shared.known_trees).insert(*id) {
            return Ok(id);
        }
        if self.enc.is_none() {
            self.enc = Some(Encoder::new(self.shared.t.zstd)?);
        }
        let enc = self.enc.as_mut().expect("just made");
        let plain_len = enc.encode(&self.shared.t.sealer, &json)?;
        if self.pack.is_none() {
            self.pack = Some(PackWriter::create(&self.shared.t.data_dir)?);
        }
        let pack = self.pack.as_mut().expect("just made");
        pack.add(raw(&id), BlobType::Tree, &enc.sealed, plain_len)?;
        self.w.tree_blobs += 1;
        self.w.tree_added += json.len() as u64;
        self.w.tree_added_packed += enc.sealed.len() as u64;
        if pack.size() >= PACK_SIZE {
            let full = self.pack.take().expect("open");
            self.shared.pack_done(full)?;
        }
        Ok(id)
    }
}
