//! SFTP channels that a stuck server cannot hold on to.
//!
//! OpenSSH's sftp-server answers requests one after the other. When one of them blocks on
//! the server (an `open()` of a FIFO swapped in after the listing, a hung network mount),
//! every later request waits behind it. So every request of a walk runs under
//! [`Channels::step`]: when a request is pending and nothing at all has arrived from the
//! server for `io_timeout`, the oldest pending request is the one the server is stuck on. Its
//! file or directory becomes a problem, the server process behind the channel is killed over
//! an exec channel ([`crate::Session`]'s `stop_sftp_server`), and the other requests are sent
//! again over a fresh SFTP channel on the same SSH connection. Bytes arriving for any request
//! count as an answer, so a slow link with many requests queued is not taken for a stall.
//!
//! After [`MAX_STALLS`] replaced channels the rest of the pull is given up (each remaining
//! file and directory a problem), so a hostile server can cost a run at most about
//! `MAX_STALLS × io_timeout`. A shutdown ends every pending request at once, and stops the
//! server process of a channel that still had requests pending.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::session::{ServerProcess, Session, SftpChannel};
use crate::sftp::{Sftp, SftpLimits};

/// Channels replaced after a stall before the rest of the pull is given up.
pub const MAX_STALLS: usize = 8;

/// The default of `servers.NAME.io_timeout`.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A stopped sftp-server gets this long to go after TERM before KILL (in the exec script),
/// and the whole stop this long at most.
const STOP_BOUND: Duration = Duration::from_secs(15);

/// A fresh channel gets at least this long to start.
const FRESH_CHANNEL_BOUND: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// When the last byte arrived from the server.
pub(crate) struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that notes in [`Activity`] when bytes arrive.
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One SFTP channel and what is pending on it.
pub(crate) struct Gen {
    pub(crate) sftp: Arc<Sftp>,
    activity: Arc<Activity>,
    server: ServerProcess,
    pending: Mutex<BTreeSet<u64>>,
    /// The request the server was found stuck on; decided once.
    culprit: Mutex<Option<u64>>,
    abandoned: watch::Sender<bool>,
}

impl Gen {
    fn new(ch: SftpChannel) -> Arc<Self> {
        Arc::new(Gen {
            sftp: ch.sftp,
            activity: ch.activity,
            server: ch.server,
            pending: Mutex::new(BTreeSet::new()),
            culprit: Mutex::new(None),
            abandoned: watch::channel(false).0,
        })
    }

    fn is_abandoned(&self) -> bool {
        *self.abandoned.borrow()
    }
}

/// Removes a request from the pending set when it ends, however it ends.
struct Pending<'a> {
    chan: &'a Gen,
    seq: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        lock(&self.chan.pending).remove(&self.seq);
    }
}

/// The outcome of one request under [`Channels::step`].
pub(crate) enum Step<T> {
    Done(T),
    /// The channel was abandoned under this request: send it again on [`Channels::current`].
    Again,
    Fail(io::Error),
}

/// The SFTP channels of one source: the current one and how to replace it.
pub(crate) struct Channels {
    session: Session,
    io_timeout: Duration,
    current: Mutex<Arc<Gen>>,
    replacing: tokio::sync::Mutex<()>,
    stalls: AtomicUsize,
    /// Why no channel is left (too many stalls, no fresh channel, a shutdown).
    gave_up: Mutex<Option<String>>,
    cancel: watch::Receiver<bool>,
    next_seq: AtomicU64,
}

/// Resolves once `cancel` turns true; never when its sender is gone without that.
pub(crate) async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Channels {
    /// Starts the first channel.
    pub(crate) async fn start(
        session: Session,
        io_timeout: Duration,
        cancel: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, crate::SshError> {
        let first = session.sftp_channel().await?;
        Ok(Arc::new(Channels {
            session,
            io_timeout,
            current: Mutex::new(Gen::new(first)),
            replacing: tokio::sync::Mutex::new(()),
            stalls: AtomicUsize::new(0),
            gave_up: Mutex::new(None),
            cancel,
            next_seq: AtomicU64::new(0),
        }))
    }

    fn stopping(&self) -> bool {
        *self.cancel.borrow()
    }

    /// The channel to send new requests on.
    pub(crate) fn current(&self) -> io::Result<Arc<Gen>> {
        if self.stopping() {
            return Err(stopping());
        }
        if let Some(why) = lock(&self.gave_up).clone() {
            return Err(io::Error::other(why));
        }
        Ok(lock(&self.current).clone())
    }

    /// What the server allows (as the first channel's server said).
    pub(crate) fn limits(&self) -> SftpLimits {
        lock(&self.current).sftp.limits()
    }

    /// Runs one request on `chan`. See the module docs for when it counts as stalled.
    pub(crate) async fn step<T>(
        &self,
        chan: &Arc<Gen>,
        what: &str,
        fut: impl Future<Output = io::Result<T>>,
    ) -> Step<T> {
        enum Stop {
            Stalled,
            Retry,
            Cancelled,
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        lock(&chan.pending).insert(seq);
        let pending = Pending {
            chan: chan.as_ref(),
            seq,
        };
        let start = Instant::now();
        let mut abandoned = chan.abandoned.subscribe();
        let mut cancel = self.cancel.clone();
        tokio::pin!(fut);
        let stop = loop {
            let deadline = chan.activity.last().max(start) + self.io_timeout;
            tokio::select! {
                biased;
                out = &mut fut => match out {
                    Ok(t) => return Step::Done(t),
                    // Failed because the channel went away under it (killed, closed).
                    Err(_) if chan.is_abandoned() => break Stop::Retry,
                    Err(e) => return Step::Fail(e),
                },
                _ = cancelled(&mut cancel) => break Stop::Cancelled,
                _ = abandoned.wait_for(|a| *a) => break Stop::Retry,
                _ = tokio::time::sleep_until(deadline) => {
                    if chan.activity.last().max(start) + self.io_timeout > Instant::now() {
                        continue;
                    }
                    let oldest = lock(&chan.pending).first().copied().unwrap_or(seq);
                    let culprit = *lock(&chan.culprit).get_or_insert(oldest);
                    break if culprit == seq { Stop::Stalled } else { Stop::Retry };
                }
            }
        };
        drop(pending);
        // The request found stuck may also see its channel abandoned (or failing) first,
        // when another request noticed the stall before it did.
        let stop = match stop {
            Stop::Retry if *lock(&chan.culprit) == Some(seq) => Stop::Stalled,
            other => other,
        };
        match stop {
            Stop::Cancelled => {
                self.stop_on_shutdown(chan);
                Step::Fail(stopping())
            }
            Stop::Retry => {
                self.replace(chan).await;
                Step::Again
            }
            Stop::Stalled => {
                warn!(
                    request = what,
                    after = ?self.io_timeout,
                    "the SFTP server stopped answering; starting a fresh channel"
                );
                self.replace(chan).await;
                Step::Fail(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the server did not answer {what} within {}s (a FIFO or device swapped in, or a hung mount?); skipped, the pull went on over a fresh SFTP channel",
                        self.io_timeout.as_secs_f32()
                    ),
                ))
            }
        }
    }

    /// `f` on the current channel, sent again on a fresh one when its channel is abandoned.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, mut f: F) -> io::Result<T>
    where
        F: FnMut(Arc<Sftp>) -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        loop {
            let chan = self.current()?;
            match self.step(&chan, what, f(chan.sftp.clone())).await {
                Step::Done(t) => return Ok(t),
                Step::Again => continue,
                Step::Fail(e) => return Err(e),
            }
        }
    }

    /// Abandons `old` (if it is still the current channel): its server process is stopped
    /// and a fresh channel started, unless too many were replaced already.
    async fn replace(&self, old: &Arc<Gen>) {
        let _one = self.replacing.lock().await;
        if !Arc::ptr_eq(&*lock(&self.current), old) || lock(&self.gave_up).is_some() {
            return;
        }
        old.abandoned.send_replace(true);
        let n = self.stalls.fetch_add(1, Ordering::Relaxed) + 1;
        self.stop_server(old).await;
        if self.stopping() {
            return;
        }
        if n > MAX_STALLS {
            *lock(&self.gave_up) = Some(format!(
                "not read: the server stopped answering {n} times; the rest of the pull was given up"
            ));
            return;
        }
        // Starting a server process may take longer than answering a request.
        let fresh = tokio::time::timeout(
            self.io_timeout.max(FRESH_CHANNEL_BOUND),
            self.session.sftp_channel(),
        )
        .await;
        match fresh {
            Ok(Ok(ch)) => {
                info!("a fresh SFTP channel was started");
                *lock(&self.current) = Gen::new(ch);
            }
            Ok(Err(e)) => {
                *lock(&self.gave_up) = Some(format!(
                    "not read: the server stopped answering and a fresh SFTP channel failed: {e}"
                ));
            }
            Err(_) => {
                *lock(&self.gave_up) = Some(
                    "not read: the server stopped answering and a fresh SFTP channel did not start"
                        .to_owned(),
                );
            }
        }
    }

    async fn stop_server(&self, chan: &Gen) {
        stop_server(&self.session, chan).await;
    }

    /// On a shutdown, a channel with requests still pending is stopped too (in the
    /// background, so the shutdown does not wait for it): the server may be stuck on one of
    /// them, and closing the channel would leave it blocked there.
    fn stop_on_shutdown(&self, chan: &Arc<Gen>) {
        if chan.abandoned.send_replace(true) {
            return;
        }
        let (session, chan) = (self.session.clone(), chan.clone());
        tokio::spawn(async move { stop_server(&session, &chan).await });
    }
}

/// Kills the server process of an abandoned channel and closes the channel.
async fn stop_server(session: &Session, chan: &Gen) {
    match tokio::time::timeout(STOP_BOUND, session.stop_sftp_server(&chan.server)).await {
        Ok(Ok(what)) => info!(%what, "stopped the abandoned sftp-server"),
        Ok(Err(e)) => warn!(error = %e, "could not stop the abandoned sftp-server"),
        Err(_) => warn!("stopping the abandoned sftp-server did not finish in time"),
    }
    chan.sftp.close();
}

fn stopping() -> io::Error {
    io::Error::other("burrow is stopping")
}
