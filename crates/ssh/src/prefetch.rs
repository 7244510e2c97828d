//! Fetching file content ahead of the archiver.
//!
//! Every file the parent snapshot does not cover gets a job when the walk emits it. Jobs wait
//! in two FIFO queues (small files, large files) in walk order and start as slots free up;
//! a slot is held until the archiver has read the file or dropped its [`Content`], so memory
//! stays bounded no matter how far the walk runs ahead. A job the archiver opens before its
//! turn (or a file the parent index called unchanged) is fetched on demand, outside the
//! limits, so a consumer holding many unopened contents can never deadlock the walk.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use burrow_core::problems::Problems;
use burrow_core::source::{Content, CountingReader};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::channel::{Channels, Step};
use crate::sftp::SftpLimits;
use crate::wire::{self, Reply};

/// Concurrency and memory limits of an [`crate::SftpSource`] walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchLimits {
    /// Directories listed ahead of the walk.
    pub listings: usize,
    /// Files of at most `chunk` bytes fetched (and buffered whole) ahead of the archiver.
    /// Each costs two round trips (OPEN, then READ + FSTAT + CLOSE), so on a distant link
    /// this count is what bounds the rate: 1,024 in flight at 50 ms is ~10,000 files/s.
    pub small_files: usize,
    /// Bytes of small files buffered at most (their sizes are known from the listing).
    pub small_bytes: u64,
    /// Larger files streamed ahead of the archiver.
    pub large_files: usize,
    /// Read size and buffer unit, in bytes (at most what the server answers in one READ).
    pub chunk: usize,
    /// READs in flight per large file (what hides the round trip). Besides these, a large
    /// file buffers [`LARGE_FILE_BUFFERED`] chunks before its fetch waits for the archiver.
    pub large_file_chunks: usize,
}

/// Chunks a large file holds for the archiver beyond its READs in flight: the archiver reads
/// them as fast as it stores them, so more would only cost memory.
const LARGE_FILE_BUFFERED: usize = 2;

/// Handles kept free of the prefetch limits: files the archiver opens on demand (one per
/// reading thread) and the walk's own requests.
const RESERVED_HANDLES: usize = 8;

impl PrefetchLimits {
    /// These limits, kept within what the server allows: reads no larger than it answers,
    /// and directories plus files in flight below its open handles (less
    /// [`RESERVED_HANDLES`]). Every limit stays at least 1.
    pub fn within(mut self, server: SftpLimits) -> Self {
        self.chunk = self.chunk.min(server.max_read).max(1);
        let budget = server.max_handles.saturating_sub(RESERVED_HANDLES).max(3);
        self.listings = self.listings.clamp(1, (budget / 4).max(1));
        self.large_files = self.large_files.clamp(1, (budget / 4).max(1));
        self.small_files = self
            .small_files
            .clamp(1, budget - self.listings - self.large_files);
        self.large_file_chunks = self.large_file_chunks.max(1);
        self
    }
}

impl Default for PrefetchLimits {
    /// 64 listings in flight; up to 1,024 small files but at most 16 MiB of them; 4 large
    /// files × (8 READs of 256 KiB in flight + 2 buffered) = 10 MiB: under 30 MiB, plus
    /// files the archiver opens on demand (one per reading thread). At 50 ms round trips
    /// that is still ~20,000 small files/s or 160 MB/s of large files, more than a Pi's
    /// cores store.
    fn default() -> Self {
        PrefetchLimits {
            listings: 64,
            small_files: 1024,
            small_bytes: 16 << 20,
            large_files: 4,
            chunk: 256 * 1024,
            large_file_chunks: 8,
        }
    }
}

/// A message from a fetch task: data, or `None` once the whole file was sent.
type Chunk = io::Result<Option<Bytes>>;

struct Job {
    path: PathBuf,
    remote: Bytes,
    size: u64,
    state: Mutex<JobState>,
}

enum JobState {
    /// Not prefetched (the parent has it); fetched only if opened.
    Idle,
    Queued,
    Running(Stream),
    /// Opened or dropped.
    Gone,
}

struct Stream {
    rx: mpsc::Receiver<Chunk>,
    _slot: Option<Slot>,
}

struct Sched {
    small: VecDeque<Arc<Job>>,
    large: VecDeque<Arc<Job>>,
    small_active: usize,
    large_active: usize,
    /// Bytes of the small files in flight.
    small_bytes: u64,
}

struct Shared {
    ch: Arc<Channels>,
    runtime: tokio::runtime::Handle,
    limits: PrefetchLimits,
    counter: Arc<AtomicU64>,
    problems: Problems,
    sched: Mutex<Sched>,
}

/// Gives a prefetch slot back when dropped.
struct Slot {
    shared: Arc<Shared>,
    large: bool,
    size: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut s = lock(&self.shared.sched);
            if self.large {
                s.large_active -= 1;
            } else {
                s.small_active -= 1;
                s.small_bytes -= self.size;
            }
        }
        pump(&self.shared);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
pub(crate) struct Prefetcher {
    shared: Arc<Shared>,
}

impl Prefetcher {
    pub(crate) fn new(
        ch: Arc<Channels>,
        runtime: tokio::runtime::Handle,
        limits: PrefetchLimits,
        counter: Arc<AtomicU64>,
        problems: Problems,
    ) -> Self {
        Prefetcher {
            shared: Arc::new(Shared {
                ch,
                runtime,
                limits,
                counter,
                problems,
                sched: Mutex::new(Sched {
                    small: VecDeque::new(),
                    large: VecDeque::new(),
                    small_active: 0,
                    large_active: 0,
                    small_bytes: 0,
                }),
            }),
        }
    }

    /// The content of a file about to be emitted; with `prefetch` its fetch is queued now.
    pub(crate) fn content(
        &self,
        path: PathBuf,
        remote: Bytes,
        size: u64,
        prefetch: bool,
    ) -> Box<dyn Content> {
        let job = Arc::new(Job {
            path,
            remote,
            size,
            state: Mutex::new(if prefetch {
                JobState::Queued
            } else {
                JobState::Idle
            }),
        });
        if prefetch {
            {
                let mut s = lock(&self.shared.sched);
                if self.shared.is_large(size) {
                    s.large.push_back(job.clone());
                } else {
                    s.small.push_back(job.clone());
                }
            }
            pump(&self.shared);
        }
        Box::new(SftpContent {
            job,
            shared: self.shared.clone(),
        })
    }
}

impl Shared {
    fn is_large(&self, size: u64) -> bool {
        size > self.limits.chunk as u64
    }

    fn start(&self, job: &Job, slot: Option<Slot>) -> Stream {
        // READs in flight, and chunks buffered for the archiver.
        let (depth, buffered) = if self.is_large(job.size) {
            (self.limits.large_file_chunks.max(1), LARGE_FILE_BUFFERED)
        } else {
            (1, 1)
        };
        let (tx, rx) = mpsc::channel(buffered);
        if job.size == 0 {
            // Nothing to read: no round trip at all.
            let _ = tx.try_send(Ok(None));
        } else {
            self.runtime.spawn(fetch(
                self.ch.clone(),
                Target {
                    path: job.path.clone(),
                    remote: job.remote.clone(),
                    size: job.size,
                },
                self.limits.chunk,
                depth,
                self.problems.clone(),
                tx,
            ));
        }
        Stream { rx, _slot: slot }
    }
}

/// Starts queued jobs while slots are free, in walk order.
fn pump(shared: &Arc<Shared>) {
    let mut s = lock(&shared.sched);
    let s = &mut *s;
    for large in [false, true] {
        let (queue, active, max) = if large {
            (&mut s.large, &mut s.large_active, shared.limits.large_files)
        } else {
            (&mut s.small, &mut s.small_active, shared.limits.small_files)
        };
        while *active < max.max(1) {
            let Some(job) = queue.front().cloned() else {
                break;
            };
            // Small files also respect a byte budget; one always fits, so nothing starves.
            if !large && *active > 0 && s.small_bytes + job.size > shared.limits.small_bytes {
                break;
            }
            queue.pop_front();
            let mut st = lock(&job.state);
            if !matches!(*st, JobState::Queued) {
                continue;
            }
            *active += 1;
            if !large {
                s.small_bytes += job.size;
            }
            let slot = Slot {
                shared: shared.clone(),
                large,
                size: if large { 0 } else { job.size },
            };
            *st = JobState::Running(shared.start(&job, Some(slot)));
        }
    }
}

/// The file a fetch reads.
struct Target {
    path: PathBuf,
    remote: Bytes,
    /// As the listing showed it.
    size: u64,
}

/// Reads the `size` bytes the listing showed, with up to `depth` READs in flight, then checks
/// the open handle with FSTAT (what the file is now). The FSTAT and the CLOSE go out with the
/// last READ, so a small file costs two round trips: OPEN, then READ + FSTAT + CLOSE.
/// - fewer bytes than listed (the file shrank or was replaced while read): an error, so the
///   archiver leaves the file out of this snapshot rather than store a node whose size
///   differs from its content;
/// - not a regular file (a directory swapped in, or a symlink to one): an error as well;
/// - a different size now, after all listed bytes were read (it grew, or changed after the
///   read): the listed bytes are stored and the file is named as a problem.
///
/// Every reply is awaited under [`Channels::step`]; when a channel is abandoned mid-file, the
/// file is opened again on the fresh one and read on from where it was.
async fn fetch(
    ch: Arc<Channels>,
    t: Target,
    chunk: usize,
    depth: usize,
    problems: Problems,
    tx: mpsc::Sender<Chunk>,
) {
    match read_file(&ch, &t, chunk, depth, &problems, &tx).await {
        Ok(true) => {
            let _ = tx.send(Ok(None)).await;
        }
        // The archiver dropped the content.
        Ok(false) => {}
        Err(e) => {
            let _ = tx.send(Err(e)).await;
        }
    }
}

fn changed_while_read(t: &Target, done: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "changed while read: listed {} bytes, read {done}; left out of this snapshot",
            t.size
        ),
    )
}

/// False when the consumer went away.
async fn read_file(
    ch: &Channels,
    t: &Target,
    mut chunk: usize,
    depth: usize,
    problems: &Problems,
    tx: &mpsc::Sender<Chunk>,
) -> io::Result<bool> {
    let mut done: u64 = 0;
    'channel: loop {
        let chan = ch.current()?;
        let h = match ch.step(&chan, "OPEN", chan.sftp.open(&t.remote)).await {
            Step::Done(h) => h,
            Step::Again => continue,
            Step::Fail(e) => return Err(e),
        };
        let mut window = VecDeque::new();
        let mut next = done;
        let mut fstat = None;
        loop {
            {
                let mut b = chan.sftp.batch();
                while window.len() < depth && next < t.size {
                    let len = (t.size - next).min(chunk as u64) as u32;
                    window.push_back((len, b.read(&h, next, len)));
                    next += u64::from(len);
                }
                if next >= t.size && fstat.is_none() {
                    fstat = Some(b.fstat(&h));
                    b.close(&h);
                }
                b.send();
            }
            let Some((len, read)) = window.pop_front() else {
                break;
            };
            let data = match ch.step(&chan, "READ", read).await {
                Step::Done(Reply::Data(d)) if !d.is_empty() && d.len() <= len as usize => d,
                Step::Done(Reply::Status {
                    code: wire::FX_EOF, ..
                }) => {
                    if fstat.is_none() {
                        chan.sftp.close_handle(&h);
                    }
                    return Err(changed_while_read(t, done));
                }
                Step::Done(other) => return Err(wire::unexpected("READ", &other)),
                Step::Again => continue 'channel,
                Step::Fail(e) => return Err(e),
            };
            let n = data.len();
            done += n as u64;
            if tx.send(Ok(Some(data))).await.is_err() {
                if fstat.is_none() {
                    chan.sftp.close_handle(&h);
                }
                return Ok(false);
            }
            if n < len as usize {
                // A short read: this server answers less than asked. Read on from here in
                // its size; the READs already sent are dropped as their replies come.
                chunk = n.max(1);
                if fstat.is_some() {
                    continue 'channel;
                }
                window.clear();
                next = done;
            }
        }
        // The fill that sends the last READ (or finds none left) sends the FSTAT.
        let Some(fstat) = fstat else {
            return Err(io::Error::other("no FSTAT was sent for the file"));
        };
        let attrs = match ch.step(&chan, "FSTAT", fstat).await {
            Step::Done(Reply::Attrs(a)) => a,
            Step::Done(other) => return Err(wire::unexpected("FSTAT", &other)),
            // Everything was read; only the check is missing: check on a fresh handle.
            Step::Again => continue,
            Step::Fail(e) => return Err(e),
        };
        checked_after_read(t, &attrs, problems)?;
        return Ok(true);
    }
}

/// The file's attributes on the handle it was read through, after the read: a file that
/// became something else is refused; a size other than the listed one is a problem (the
/// listed bytes are stored).
fn checked_after_read(t: &Target, attrs: &wire::Attrs, problems: &Problems) -> io::Result<()> {
    let kind = attrs.permissions.unwrap_or(0) & crate::source::S_IFMT;
    if attrs.permissions.is_some() && kind != crate::source::S_IFREG {
        return Err(io::Error::other(format!(
            "changed type while read: listed as a regular file, the opened file is {}; left out of this snapshot",
            crate::source::type_name(kind)
        )));
    }
    if let Some(now) = attrs.size
        && now != t.size
    {
        problems.push(
            &t.path,
            format!(
                "changed while read: listed {} bytes, {now} bytes after the read; the {} listed bytes are stored",
                t.size, t.size
            ),
        );
    }
    Ok(())
}

struct SftpContent {
    job: Arc<Job>,
    shared: Arc<Shared>,
}

impl SftpContent {
    fn take(&self) -> JobState {
        std::mem::replace(&mut *lock(&self.job.state), JobState::Gone)
    }
}

impl Drop for SftpContent {
    fn drop(&mut self) {
        // Dropped outside the lock: releasing a slot starts the next job.
        let state = self.take();
        drop(state);
    }
}

impl Content for SftpContent {
    fn open(self: Box<Self>) -> io::Result<Box<dyn Read + Send>> {
        let stream = match self.take() {
            JobState::Running(s) => s,
            JobState::Idle | JobState::Queued => self.shared.start(&self.job, None),
            JobState::Gone => {
                return Err(io::Error::other(format!(
                    "content of {} was already opened",
                    self.job.path.display()
                )));
            }
        };
        let reader = ChunkReader {
            stream: Some(stream),
            current: Bytes::new(),
            path: self.job.path.clone(),
            problems: self.shared.problems.clone(),
        };
        Ok(Box::new(CountingReader::new(
            reader,
            self.shared.counter.clone(),
        )))
    }
}

/// Blocking reader over a fetch task's chunks, used on the archiver's std threads.
struct ChunkReader {
    /// `None` once the file is finished (or failed): the slot is released at that point,
    /// not when the archiver gets round to dropping the reader.
    stream: Option<Stream>,
    current: Bytes,
    path: PathBuf,
    problems: Problems,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                buf[..n].copy_from_slice(&self.current[..n]);
                bytes::Buf::advance(&mut self.current, n);
                return Ok(n);
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(0);
            };
            match stream.rx.blocking_recv() {
                Some(Ok(Some(data))) => self.current = data,
                Some(Ok(None)) => {
                    self.stream = None;
                    return Ok(0);
                }
                Some(Err(e)) => {
                    self.stream = None;
                    self.problems.push(&self.path, format!("cannot read: {e}"));
                    return Err(e);
                }
                None => {
                    self.stream = None;
                    let e =
                        io::Error::other("the transfer was cut off (connection or runtime gone)");
                    self.problems.push(&self.path, format!("cannot read: {e}"));
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_stay_within_the_servers() {
        let d = PrefetchLimits::default();
        let openssh = SftpLimits {
            max_read: 261_120,
            max_handles: 1019,
        };
        let l = d.within(openssh);
        assert_eq!(l.chunk, 261_120, "the server's largest read");
        assert!(l.listings + l.small_files + l.large_files + RESERVED_HANDLES <= 1019);
        assert_eq!((l.listings, l.large_files), (64, 4));
        let tiny = d.within(SftpLimits {
            max_read: 32 * 1024,
            max_handles: 16,
        });
        assert_eq!(tiny.chunk, 32 * 1024);
        assert!(tiny.listings + tiny.small_files + tiny.large_files + RESERVED_HANDLES <= 16);
        let none = d.within(SftpLimits {
            max_read: 0,
            max_handles: 0,
        });
        assert!(none.chunk >= 1 && none.listings >= 1 && none.small_files >= 1);
    }
}
