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
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use crate::channel::{Channels, Step, sftp_io_error};

/// Concurrency and memory limits of an [`crate::SftpSource`] walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchLimits {
    /// Directories listed ahead of the walk.
    pub listings: usize,
    /// Files of at most `chunk` bytes fetched (and buffered whole) ahead of the archiver.
    /// Each costs two round trips (open, read), so on a distant link this count is what
    /// bounds the rate: 96 in flight at 50 ms is ~1,000 files/s.
    pub small_files: usize,
    /// Bytes of small files buffered at most (their sizes are known from the listing).
    pub small_bytes: u64,
    /// Larger files streamed ahead of the archiver.
    pub large_files: usize,
    /// Read size and buffer unit, in bytes.
    pub chunk: usize,
    /// Chunks buffered per large file before its fetch waits for the archiver.
    pub large_file_chunks: usize,
}

/// Open handles (directories being listed plus files being read) that stay below OpenSSH's
/// handle number 128 with room for the archiver's on-demand opens (see the docs of
/// [`PrefetchLimits::default`]).
pub const MAX_OPEN_HANDLES: usize = 120;

impl PrefetchLimits {
    /// These limits, with small files reduced so that every handle stays below
    /// [`MAX_OPEN_HANDLES`].
    pub fn clamped(mut self) -> Self {
        let others = self.listings.max(1) + self.large_files.max(1) + 2;
        self.small_files = self
            .small_files
            .min(MAX_OPEN_HANDLES.saturating_sub(others).max(1));
        self
    }
}

impl Default for PrefetchLimits {
    /// 16 listings in flight, up to 96 small files but at most 24 MiB of them, and 4 large
    /// files × (1 MiB buffered + up to 4 MiB of russh-sftp read-ahead) (21 MiB): under 48 MiB
    /// in flight, plus files the archiver opens on demand (one per archiver thread at most).
    ///
    /// Why not more: russh-sftp 3 decodes SFTP handles as UTF-8 text, and OpenSSH's
    /// sftp-server numbers its handles; a handle number of 128 or more is not valid UTF-8 on
    /// its own, comes back mangled and the server answers "Failure". So fewer than 128
    /// handles (files plus directories) may be open at once; see [`MAX_OPEN_HANDLES`].
    fn default() -> Self {
        PrefetchLimits {
            listings: 16,
            small_files: 96,
            small_bytes: 24 << 20,
            large_files: 4,
            chunk: 256 * 1024,
            large_file_chunks: 4,
        }
    }
}

/// A message from a fetch task: data, or `None` once the whole file was sent.
type Chunk = io::Result<Option<Bytes>>;

struct Job {
    path: PathBuf,
    remote: String,
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
        remote: String,
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
        let cap = if self.is_large(job.size) {
            self.limits.large_file_chunks.max(1)
        } else {
            1
        };
        let (tx, rx) = mpsc::channel(cap);
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
    remote: String,
    /// As the listing showed it.
    size: u64,
}

/// Reads the `size` bytes the listing showed, in chunks, then checks the open handle with
/// FSTAT (what the file is now):
/// - fewer bytes than listed (the file shrank or was replaced while read): an error, so the
///   archiver leaves the file out of this snapshot rather than store a node whose size
///   differs from its content;
/// - not a regular file (a directory swapped in, or a symlink to one): an error as well;
/// - a different size now, after all listed bytes were read (it grew, or changed after the
///   read): the listed bytes are stored and the file is named as a problem.
///
/// Every request runs under [`Channels::step`]; when a channel is abandoned mid-file, the
/// file is opened again on the fresh one and read on from where it was.
async fn fetch(
    ch: Arc<Channels>,
    t: Target,
    chunk: usize,
    problems: Problems,
    tx: mpsc::Sender<Chunk>,
) {
    match read_file(&ch, &t, chunk, &problems, &tx).await {
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

/// False when the consumer went away.
async fn read_file(
    ch: &Channels,
    t: &Target,
    chunk: usize,
    problems: &Problems,
    tx: &mpsc::Sender<Chunk>,
) -> io::Result<bool> {
    let mut done: u64 = 0;
    'channel: loop {
        let chan = ch.current()?;
        let remote = t.remote.clone();
        let open = async { chan.sftp.open(remote).await.map_err(sftp_io_error) };
        let mut f = match ch.step(&chan, "OPEN", open).await {
            Step::Done(f) => f,
            Step::Again => continue,
            Step::Fail(e) => return Err(e),
        };
        if done > 0 {
            let seek = f.seek(io::SeekFrom::Start(done));
            match ch.step(&chan, "a seek", seek).await {
                Step::Done(_) => {}
                Step::Again => continue,
                Step::Fail(e) => return Err(e),
            }
        }
        while done < t.size {
            let want = (t.size - done).min(chunk as u64) as usize;
            let mut buf = vec![0u8; want];
            let mut n = 0;
            let mut again = false;
            while n < want {
                match ch.step(&chan, "READ", f.read(&mut buf[n..])).await {
                    Step::Done(0) => break,
                    Step::Done(k) => n += k,
                    Step::Again => {
                        again = true;
                        break;
                    }
                    Step::Fail(e) => return Err(e),
                }
            }
            let short = n < want && !again;
            if n > 0 {
                buf.truncate(n);
                done += n as u64;
                if tx.send(Ok(Some(Bytes::from(buf)))).await.is_err() {
                    return Ok(false);
                }
            }
            if again {
                continue 'channel;
            }
            if short {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "changed while read: listed {} bytes, read {done}; left out of this snapshot",
                        t.size
                    ),
                ));
            }
        }
        let attrs = match ch
            .step(&chan, "FSTAT", async {
                f.metadata().await.map_err(sftp_io_error)
            })
            .await
        {
            Step::Done(a) => a,
            // Everything was read; only the check is missing: check on a fresh handle.
            Step::Again => continue,
            Step::Fail(e) => return Err(e),
        };
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
        return Ok(true);
    }
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
    fn limits_keep_handles_below_what_survives_russh_sftp() {
        let d = PrefetchLimits::default();
        assert!(d.listings + d.small_files + d.large_files + 2 <= MAX_OPEN_HANDLES);
        let wide = PrefetchLimits {
            small_files: 1000,
            ..PrefetchLimits::default()
        }
        .clamped();
        assert!(wide.listings + wide.small_files + wide.large_files + 2 <= MAX_OPEN_HANDLES);
    }
}
