//! burrow's SFTP client: version 3, read-only, built for many requests in flight.
//!
//! One task writes, one task reads. A request is registered under its id before it is
//! queued; the reader hands each reply to whoever waits for that id, so any number of
//! requests, for any number of files, are in flight at once and the server's strictly
//! in-order answers cost no extra round trips. Requests queued together ([`Batch`]) go out
//! in one write: a small file is OPEN, then READ + FSTAT + CLOSE in one go, two round trips
//! in all; a CLOSE is never waited for.
//!
//! Handles, names and paths are bytes. (A client that keeps handles as text mangles OpenSSH's
//! handle 128 and above, which caps it below 128 open files; one that decodes names as text
//! loses every name that is not UTF-8.) The server's limits come from `limits@openssh.com`
//! when it offers them; otherwise the protocol's guaranteed 32 KiB reads and a cautious 64
//! open handles.
//!
//! There are no timeouts here: the SFTP source bounds every request by the channel's
//! activity (`crate::channel`), and closing a client fails everything still pending at once.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::wire::{self, Attrs, DirEntry, Reply, Request};

/// Reads of this size are what every SFTP server must serve (draft-02 §6.4 allows servers to
/// return less for larger ones).
const FALLBACK_MAX_READ: usize = 32 * 1024;
/// Open handles assumed when the server does not say.
const FALLBACK_MAX_HANDLES: usize = 64;
/// Whatever a server advertises, reads stay within what the reader accepts as one packet.
const MAX_READ: usize = wire::MAX_PACKET - 1024;
/// An advertised "no limit" on handles is taken as this many.
const UNLIMITED_HANDLES: usize = 4096;
/// READDIR requests in flight per directory listing.
const READDIR_DEPTH: usize = 2;
/// How much the writer gathers into one write.
const WRITE_GATHER: usize = 256 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the server allows, as it advertised it (or the cautious defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SftpLimits {
    /// The largest READ the server answers in full.
    pub max_read: usize,
    /// Files and directories it keeps open at once.
    pub max_handles: usize,
}

/// Requests waiting for their replies, and why the client ended once it has.
struct Waiting {
    replies: HashMap<u32, oneshot::Sender<Reply>>,
    closed: Option<String>,
}

struct Shared {
    waiting: Mutex<Waiting>,
}

impl Shared {
    /// Fails every waiting request and every later one with `why` (the first reason stays).
    fn close(&self, why: String) {
        let mut w = lock(&self.waiting);
        w.closed.get_or_insert(why);
        w.replies.clear();
    }

    fn closed(&self) -> io::Error {
        let why = lock(&self.waiting).closed.clone();
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!(
                "the SFTP channel closed: {}",
                why.as_deref().unwrap_or("it ended")
            ),
        )
    }
}

/// An SFTP session. Cheap to share (`Arc`); every method may be called from many tasks.
pub struct Sftp {
    shared: Arc<Shared>,
    out: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    next_id: AtomicU32,
    limits: SftpLimits,
}

impl std::fmt::Debug for Sftp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sftp")
            .field("limits", &self.limits)
            .finish()
    }
}

/// The reply to one request, once it comes.
pub(crate) struct Waiter {
    rx: Option<oneshot::Receiver<Reply>>,
    shared: Arc<Shared>,
}

impl Future for Waiter {
    type Output = io::Result<Reply>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(Err(self.shared.closed()));
        };
        match Pin::new(rx).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(Ok(r)),
            Poll::Ready(Err(_)) => Poll::Ready(Err(self.shared.closed())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Requests that go out together, in one write, on [`Batch::send`] (or when the batch is
/// dropped). Nothing is sent before that: never await a request of a batch still held.
pub(crate) struct Batch<'a> {
    sftp: &'a Sftp,
    buf: BytesMut,
}

impl Batch<'_> {
    fn id(&self) -> u32 {
        self.sftp.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a request and encodes it; `fields` adds what follows the id.
    fn add(&mut self, kind: u8, fields: impl FnOnce(Request<'_>) -> Request<'_>) -> Waiter {
        let id = self.id();
        let (tx, rx) = oneshot::channel();
        let rx = {
            let mut w = lock(&self.sftp.shared.waiting);
            if w.closed.is_none() {
                w.replies.insert(id, tx);
                Some(rx)
            } else {
                None
            }
        };
        fields(Request::new(&mut self.buf, kind, id)).finish();
        Waiter {
            rx,
            shared: self.sftp.shared.clone(),
        }
    }

    pub(crate) fn read(&mut self, handle: &[u8], offset: u64, len: u32) -> Waiter {
        self.add(wire::READ, |r| r.string(handle).u64(offset).u32(len))
    }

    pub(crate) fn fstat(&mut self, handle: &[u8]) -> Waiter {
        self.add(wire::FSTAT, |r| r.string(handle))
    }

    /// CLOSE, never waited for: its reply (if any) is dropped when it comes.
    pub(crate) fn close(&mut self, handle: &[u8]) {
        let id = self.id();
        Request::new(&mut self.buf, wire::CLOSE, id)
            .string(handle)
            .finish();
    }

    pub(crate) fn send(self) {}
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.buf).freeze();
        let sent = lock(&self.sftp.out)
            .as_ref()
            .is_some_and(|tx| tx.send(data).is_ok());
        if !sent {
            self.sftp.shared.close("the client was closed".to_owned());
        }
    }
}

impl Sftp {
    /// Speaks SFTP version 3 over `stream` (a subsystem channel, or a command's stdin and
    /// stdout): the version exchange, then the server's limits when it offers them.
    pub(crate) async fn start<S>(stream: S) -> io::Result<Sftp>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (r, mut w) = tokio::io::split(stream);
        // Small: replies larger than the buffer are read straight into their own buffers
        // (`read_packet`), past this one, so only small replies are copied twice.
        let mut r = BufReader::with_capacity(16 * 1024, r);
        w.write_all(&wire::init()).await?;
        w.flush().await?;
        let version = read_packet(&mut r).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the channel instead of answering SFTP's version exchange",
            )
        })?;
        let mut c = wire::Cursor::new(version);
        if c.u8()? != wire::VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server did not answer SFTP's version exchange with its version",
            ));
        }
        let v = c.u32()?;
        if v < 3 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the server speaks SFTP version {v}; burrow needs version 3"),
            ));
        }
        let mut has_limits = false;
        while !c.is_empty() {
            let name = c.string()?;
            c.string()?;
            has_limits |= &name[..] == b"limits@openssh.com";
        }

        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting {
                replies: HashMap::new(),
                closed: None,
            }),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(w, rx, shared.clone()));
        tokio::spawn(read_loop(r, shared.clone()));
        let mut sftp = Sftp {
            shared,
            out: Mutex::new(Some(tx)),
            next_id: AtomicU32::new(1),
            limits: SftpLimits {
                max_read: FALLBACK_MAX_READ,
                max_handles: FALLBACK_MAX_HANDLES,
            },
        };
        if has_limits {
            let w = sftp.request(wire::EXTENDED, |r| r.string(b"limits@openssh.com"));
            match w.await? {
                Reply::Extended(data) => {
                    let mut c = wire::Cursor::new(data);
                    let _max_packet = c.u64()?;
                    let max_read = c.u64()?;
                    let _max_write = c.u64()?;
                    let max_handles = c.u64()?;
                    if max_read > 0 {
                        sftp.limits.max_read = (max_read as usize).min(MAX_READ);
                    }
                    sftp.limits.max_handles = match max_handles {
                        0 => UNLIMITED_HANDLES,
                        n => (n as usize).min(UNLIMITED_HANDLES),
                    };
                }
                other => {
                    debug!(reply = ?other, "limits@openssh.com was not answered; defaults kept")
                }
            }
        }
        debug!(limits = ?sftp.limits, "SFTP session started");
        Ok(sftp)
    }

    /// What the server allows.
    pub fn limits(&self) -> SftpLimits {
        self.limits
    }

    pub(crate) fn batch(&self) -> Batch<'_> {
        Batch {
            sftp: self,
            buf: BytesMut::new(),
        }
    }

    /// One request, sent at once.
    fn request(&self, kind: u8, fields: impl FnOnce(Request<'_>) -> Request<'_>) -> Waiter {
        let mut b = self.batch();
        let w = b.add(kind, fields);
        b.send();
        w
    }

    /// CLOSE, sent at once and never waited for.
    pub(crate) fn close_handle(&self, handle: &[u8]) {
        let mut b = self.batch();
        b.close(handle);
        b.send();
    }

    /// Ends the session: the channel's input is closed, and every pending request fails now.
    pub fn close(&self) {
        lock(&self.out).take();
        self.shared.close("the client was closed".to_owned());
    }

    /// The attributes of `path` itself (a symlink is not followed).
    pub async fn lstat(&self, path: &[u8]) -> io::Result<Attrs> {
        let w = self.request(wire::LSTAT, |r| r.string(path));
        match w.await? {
            Reply::Attrs(a) => Ok(a),
            other => Err(wire::unexpected("LSTAT", &other)),
        }
    }

    /// A symlink's target, as bytes.
    pub async fn read_link(&self, path: &[u8]) -> io::Result<Bytes> {
        let w = self.request(wire::READLINK, |r| r.string(path));
        match w.await? {
            Reply::Name(mut n) if n.len() == 1 => Ok(n.remove(0).name),
            other => Err(wire::unexpected("READLINK", &other)),
        }
    }

    /// A file opened for reading: its handle.
    pub(crate) async fn open(&self, path: &[u8]) -> io::Result<Bytes> {
        let w = self.request(wire::OPEN, |r| {
            r.string(path).u32(wire::OPEN_READ).u32(0) // no attributes
        });
        handle(w.await?, "OPEN")
    }

    /// Every name in a directory but `.` and `..`, in the server's order. READDIR requests
    /// are kept [`READDIR_DEPTH`] deep, so a directory of up to 100 names (OpenSSH's batch)
    /// costs two round trips: OPENDIR, then READDIR + READDIR.
    pub async fn read_dir(&self, path: &[u8]) -> io::Result<Vec<DirEntry>> {
        let opened = self.request(wire::OPENDIR, |r| r.string(path));
        let h = handle(opened.await?, "OPENDIR")?;
        let mut names = Vec::new();
        let listed = async {
            loop {
                let waiters: Vec<Waiter> = {
                    let mut b = self.batch();
                    let w = (0..READDIR_DEPTH)
                        .map(|_| b.add(wire::READDIR, |r| r.string(&h)))
                        .collect();
                    b.send();
                    w
                };
                for w in waiters {
                    match w.await? {
                        Reply::Name(n) => names.extend(n),
                        Reply::Status {
                            code: wire::FX_EOF, ..
                        } => return Ok(()),
                        other => return Err(wire::unexpected("READDIR", &other)),
                    }
                }
            }
        }
        .await;
        self.close_handle(&h);
        listed?;
        names.retain(|n| &n.name[..] != b"." && &n.name[..] != b"..");
        Ok(names)
    }

    /// A whole file, read to its end one request at a time (for small files and checks; the
    /// SFTP source reads with many requests in flight).
    pub async fn read(&self, path: &[u8]) -> io::Result<Vec<u8>> {
        let h = self.open(path).await?;
        let mut data = Vec::new();
        let read = async {
            loop {
                let w = self.request(wire::READ, |r| {
                    r.string(&h)
                        .u64(data.len() as u64)
                        .u32(self.limits.max_read as u32)
                });
                match w.await? {
                    Reply::Data(d) => data.extend_from_slice(&d),
                    Reply::Status {
                        code: wire::FX_EOF, ..
                    } => return Ok(()),
                    other => return Err(wire::unexpected("READ", &other)),
                }
            }
        }
        .await;
        self.close_handle(&h);
        read.map(|()| data)
    }
}

fn handle(reply: Reply, what: &str) -> io::Result<Bytes> {
    match reply {
        Reply::Handle(h) => Ok(h),
        other => Err(wire::unexpected(what, &other)),
    }
}

/// One packet's body (type byte onwards); `None` at a clean end of the stream.
async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Bytes>> {
    let len = match r.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len == 0 || len > wire::MAX_PACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the server sent an SFTP packet of {len} bytes; not SFTP, or a broken stream"),
        ));
    }
    // A buffer of exactly the packet's size: a reply's data is a slice of it, so a small
    // file held for the archiver keeps nothing else alive.
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(Bytes::from(body)))
}

async fn read_loop<R: AsyncRead + Unpin>(mut r: R, shared: Arc<Shared>) {
    let why = loop {
        match read_packet(&mut r).await {
            Ok(Some(p)) => match wire::parse_reply(p) {
                Ok((id, reply)) => {
                    // A reply nobody waits for (a CLOSE, an abandoned request) is dropped.
                    let tx = lock(&shared.waiting).replies.remove(&id);
                    if let Some(tx) = tx {
                        let _ = tx.send(reply);
                    }
                }
                Err(e) => break e.to_string(),
            },
            Ok(None) => break "the server ended it".to_owned(),
            Err(e) => break e.to_string(),
        }
    };
    debug!(%why, "SFTP reader ends");
    shared.close(why);
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    shared: Arc<Shared>,
) {
    let mut gathered = BytesMut::new();
    while let Some(first) = rx.recv().await {
        gathered.clear();
        gathered.extend_from_slice(&first);
        while gathered.len() < WRITE_GATHER {
            match rx.try_recv() {
                Ok(more) => gathered.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let sent = async {
            w.write_all(&gathered).await?;
            w.flush().await
        }
        .await;
        if let Err(e) = sent {
            shared.close(format!("writing to the server failed: {e}"));
            break;
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use bytes::{Buf, BufMut};

    use super::*;

    /// A scripted server on the other end of a pipe: answers the version exchange (with
    /// `limits@openssh.com`), then every request with `answer`, and records what it got.
    fn server(
        answer: impl Fn(u8, u32, &mut Bytes) -> Option<BytesMut> + Send + 'static,
    ) -> (tokio::io::DuplexStream, Arc<Mutex<Vec<u8>>>) {
        let (client, mut srv) = tokio::io::duplex(1 << 16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kinds = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(mut p)) = read_packet(&mut srv).await {
                let kind = p.get_u8();
                let mut out = BytesMut::new();
                if kind == wire::INIT {
                    let mut body = BytesMut::new();
                    body.put_u8(wire::VERSION);
                    body.put_u32(3);
                    for s in [&b"limits@openssh.com"[..], b"1"] {
                        body.put_u32(s.len() as u32);
                        body.put_slice(s);
                    }
                    out.put_u32(body.len() as u32);
                    out.put_slice(&body);
                } else {
                    let id = p.get_u32();
                    lock(&kinds).push(kind);
                    let reply = if kind == wire::EXTENDED {
                        let mut r = BytesMut::new();
                        r.put_u8(201);
                        r.put_u32(id);
                        for v in [1u64 << 18, 100_000, 1 << 18, 200] {
                            r.put_u64(v);
                        }
                        Some(r)
                    } else {
                        answer(kind, id, &mut p)
                    };
                    if let Some(r) = reply {
                        out.put_u32(r.len() as u32);
                        out.put_slice(&r);
                    }
                }
                if srv.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
        (client, seen)
    }

    fn reply(kind: u8, id: u32) -> BytesMut {
        let mut r = BytesMut::new();
        r.put_u8(kind);
        r.put_u32(id);
        r
    }

    fn string(r: &mut BytesMut, s: &[u8]) {
        r.put_u32(s.len() as u32);
        r.put_slice(s);
    }

    fn status(id: u32, code: u32) -> BytesMut {
        let mut r = reply(101, id);
        r.put_u32(code);
        r
    }

    #[tokio::test]
    async fn handles_are_bytes_dots_are_dropped_and_the_limits_are_the_servers() {
        let handle = b"\x00\x00\x00\x80";
        let listed = Arc::new(Mutex::new(0));
        let (stream, seen) = server(move |kind, id, p| match kind {
            wire::OPENDIR => {
                let mut r = reply(102, id);
                string(&mut r, handle);
                Some(r)
            }
            wire::READDIR => {
                let mut h = p.clone();
                let n = h.get_u32() as usize;
                assert_eq!(&h[..n], handle, "the handle comes back as it was sent");
                let mut calls = lock(&listed);
                *calls += 1;
                if *calls > 1 {
                    return Some(status(id, wire::FX_EOF));
                }
                let mut r = reply(104, id);
                let names: [&[u8]; 4] = [b".", b"..", b"bad\xff", b"ok"];
                r.put_u32(names.len() as u32);
                for n in names {
                    string(&mut r, n);
                    string(&mut r, b"");
                    r.put_u32(0x4);
                    r.put_u32(0o100644);
                }
                Some(r)
            }
            // CLOSE is not waited for; this server does not even answer it.
            _ => None,
        });
        let sftp = Sftp::start(stream).await.unwrap();
        assert_eq!(
            sftp.limits(),
            SftpLimits {
                max_read: 100_000,
                max_handles: 200
            }
        );
        let names: Vec<Bytes> = sftp
            .read_dir(b"/d")
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, [&b"bad\xff"[..], b"ok"]);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // OPENDIR, then two READDIRs in one go, then CLOSE.
        assert_eq!(
            *lock(&seen),
            [
                wire::EXTENDED,
                wire::OPENDIR,
                wire::READDIR,
                wire::READDIR,
                wire::CLOSE
            ]
        );
    }

    #[tokio::test]
    async fn closing_fails_what_is_pending_and_everything_after() {
        // A server that never answers anything but the version exchange and limits.
        let (stream, _) = server(|_, _, _| None);
        let sftp = Arc::new(Sftp::start(stream).await.unwrap());
        let pending = tokio::spawn({
            let sftp = sftp.clone();
            async move { sftp.lstat(b"/stuck").await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        sftp.close();
        let e = pending.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
        assert!(sftp.lstat(b"/later").await.is_err());
    }

    #[tokio::test]
    async fn a_stream_that_is_not_sftp_is_an_error_not_a_hang() {
        let (client, mut srv) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut b = [0u8; 9];
            let _ = srv.read_exact(&mut b).await;
            let _ = srv.write_all(b"SSH-2.0-hello this is not sftp\r\n").await;
        });
        let e = Sftp::start(client).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }
}
