//! One authenticated SSH connection: commands on exec channels and SFTP sessions.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle, Msg};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect, Sig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use crate::channel::{Activity, Watched};
use crate::sftp::Sftp;
use burrow_core::shell_quote;

use crate::error::{SshError, is_network_error};
use crate::hostkey::{HostKeyCheck, Verdict};
use burrow_core::server::SshTarget;

use burrow_core::exec::{ExecOutput, KILL_GRACE, OUTPUT_TAIL};

/// The first line a command started by [`wrap`] writes on stderr, followed by its process
/// group id. It is taken off stderr before anyone sees it.
const PGID_TAG: &[u8] = b"burrow-pgid ";

/// Runs `cmd` with `/bin/sh` in a session and process group of its own on the server, so that
/// it can be ended with everything it started: `setsid` makes the group, whose id goes to
/// stderr as the first line ([`PGID_TAG`]) before `cmd` starts. The outer shell waits and
/// exits as `cmd` did (a command killed by a signal is reported with that signal). Without
/// `setsid` on the server, `cmd` runs in the process group sshd made for the session (OpenSSH
/// starts every session in a new one), and that group's id is reported instead. stdin is
/// `/dev/null`. The login shell `exec`s the wrapper, so the exit status or signal reaches
/// the channel unchanged.
fn wrap(cmd: &str) -> String {
    let inner = format!(
        "echo \"burrow-pgid $$\" >&2 && exec /bin/sh -c {}",
        shell_quote(cmd)
    );
    let script = format!(
        "if command -v setsid >/dev/null 2>&1; then \
         setsid /bin/sh -c {inner} </dev/null & wait $! 2>/dev/null; st=$?; \
         if [ $st -gt 128 ]; then kill -s \"$(kill -l $st)\" $$ 2>/dev/null; fi; exit $st; \
         else exec /bin/sh -c {inner} </dev/null; fi",
        inner = shell_quote(&inner)
    );
    format!("exec /bin/sh -c {}", shell_quote(&script))
}

/// Sends TERM to process group `pgid`, waits up to [`KILL_GRACE`] for it to end, then sends
/// KILL. (`kill -s SIG -- -N` is the form dash, bash and busybox all accept.)
fn kill_group_script(pgid: u32) -> String {
    let tenths = KILL_GRACE.as_millis() / 200;
    format!(
        "g={pgid}; kill -s TERM -- -$g 2>/dev/null || exit 0; i=0; \
         while [ $i -lt {tenths} ] && kill -s 0 -- -$g 2>/dev/null; do \
         sleep 0.2 2>/dev/null || {{ sleep 1; i=$((i+4)); }}; i=$((i+1)); done; \
         kill -s KILL -- -$g 2>/dev/null; exit 0"
    )
}

/// The client's cipher preference: AES-GCM first where the CPU has AES instructions (it is
/// then several times faster than ChaCha20-Poly1305), ChaCha20-Poly1305 first elsewhere (a
/// Raspberry Pi 4 has no AES instructions). The set of ciphers stays russh's default.
fn cipher_order(default: &[russh::cipher::Name]) -> Vec<russh::cipher::Name> {
    let mut order = default.to_vec();
    if cpu_has_aes() {
        order.sort_by_key(|c| *c != russh::cipher::AES_256_GCM);
    }
    order
}

fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Keeps the last `cap` bytes pushed into it.
#[derive(Debug)]
pub(crate) struct Tail {
    buf: Vec<u8>,
    cap: usize,
}

impl Tail {
    pub(crate) fn new(cap: usize) -> Self {
        Tail {
            buf: Vec::new(),
            cap,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        if data.len() >= self.cap {
            self.buf.clear();
            self.buf.extend_from_slice(&data[data.len() - self.cap..]);
            return;
        }
        self.buf.extend_from_slice(data);
        // Trim only once twice the cap has piled up, so pushing stays amortised O(n).
        if self.buf.len() > 2 * self.cap {
            self.buf.drain(..self.buf.len() - self.cap);
        }
    }

    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        if self.buf.len() > self.cap {
            self.buf.drain(..self.buf.len() - self.cap);
        }
        self.buf
    }

    fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(self.cap);
        String::from_utf8_lossy(&self.buf[start..])
            .trim()
            .to_owned()
    }
}

struct Client {
    check: HostKeyCheck,
    verdict: Arc<Mutex<Option<Verdict>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = self.check.verify(&key.public_key());
        let ok = matches!(verdict, Verdict::Accepted);
        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(verdict);
        Ok(ok)
    }
}

struct Inner {
    handle: Handle<Client>,
    name: String,
    sftp_command: Option<String>,
    /// Set by [`Session::close`]: the disconnect is sent, the handle ends a little later.
    closed: std::sync::atomic::AtomicBool,
}

/// An authenticated connection to a server; cheap to clone, all clones share it.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.inner.name)
            .finish()
    }
}

fn read_passphrase(path: &PathBuf) -> Result<String, SshError> {
    let text = std::fs::read_to_string(path).map_err(|e| SshError::PassphraseFile {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

fn load_key(target: &SshTarget) -> Result<russh::keys::PrivateKey, SshError> {
    let passphrase = match &target.identity_passphrase_file {
        Some(p) => Some(read_passphrase(p)?),
        None => None,
    };
    let path = &target.identity_file;
    russh::keys::load_secret_key(path, passphrase.as_deref()).map_err(|e| match e {
        russh::keys::Error::KeyIsEncrypted => SshError::KeyEncrypted { path: path.clone() },
        russh::keys::Error::IO(io) => SshError::KeyFile {
            path: path.clone(),
            reason: io.to_string(),
        },
        other => SshError::KeyFile {
            path: path.clone(),
            reason: if passphrase.is_some() {
                format!("{other} (is the passphrase right?)")
            } else {
                other.to_string()
            },
        },
    })
}

fn sig_name(sig: &Sig) -> String {
    match sig {
        Sig::Custom(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// What the command behind an SFTP channel said besides SFTP.
#[derive(Debug, Default)]
struct CommandEnd {
    status: Mutex<Status>,
    /// The server refused to run the command.
    refused: std::sync::atomic::AtomicBool,
}

impl CommandEnd {
    /// Forwards the channel's data to the SFTP client's end of the pipe and records stderr
    /// (without the process id line), the exit status and a refusal, until the channel ends.
    async fn pump(
        &self,
        mut r: ChannelReadHalf,
        mut to_client: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        pid: &Mutex<Option<u32>>,
        name: &str,
    ) {
        let status = || self.status.lock().unwrap_or_else(|e| e.into_inner());
        let mut forwarding = true;
        while let Some(msg) = r.wait().await {
            match msg {
                ChannelMsg::Data { data } if forwarding => {
                    // Once the SFTP client is gone, keep draining for the exit status.
                    forwarding = to_client.write_all(&data).await.is_ok();
                }
                ChannelMsg::Eof => {
                    let _ = to_client.shutdown().await;
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    let data = take_pid(&data, pid);
                    if data.is_empty() {
                        continue;
                    }
                    debug!(target = %name, stderr = %String::from_utf8_lossy(&data).trim(), "sftp command");
                    status().stderr.push(&data);
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    status().exit_status = Some(exit_status);
                }
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    status().exit_signal = Some(sig_name(&signal_name));
                }
                ChannelMsg::Failure => {
                    self.refused
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                _ => {}
            }
        }
        let _ = to_client.shutdown().await;
    }
}

/// What the channel reported besides stdout.
#[derive(Debug)]
struct Status {
    stderr: Tail,
    exit_status: Option<u32>,
    exit_signal: Option<String>,
    /// The process group of a [`wrap`]ped command, once its first stderr line arrived.
    pgid: Option<u32>,
    /// Stderr held back while looking for that line; `None` once it is found (or not).
    first_line: Option<Vec<u8>>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            stderr: Tail::new(OUTPUT_TAIL),
            exit_status: None,
            exit_signal: None,
            pgid: None,
            first_line: None,
        }
    }
}

impl Status {
    /// For a [`wrap`]ped command: the first stderr line names its process group.
    fn wrapped() -> Self {
        Status {
            first_line: Some(Vec::new()),
            ..Status::default()
        }
    }

    fn push_stderr(&mut self, data: &[u8]) {
        let Some(held) = self.first_line.as_mut() else {
            self.stderr.push(data);
            return;
        };
        held.extend_from_slice(data);
        let Some(nl) = held.iter().position(|&b| b == b'\n') else {
            if held.len() > 64 {
                let held = self.first_line.take().unwrap_or_default();
                self.stderr.push(&held);
            }
            return;
        };
        let held = self.first_line.take().unwrap_or_default();
        let pgid = held[..nl]
            .strip_prefix(PGID_TAG)
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.trim().parse::<u32>().ok())
            .filter(|&n| n > 1);
        match pgid {
            Some(n) => {
                self.pgid = Some(n);
                self.stderr.push(&held[nl + 1..]);
            }
            None => self.stderr.push(&held),
        }
    }

    /// Stderr that is still held back counts as stderr when the command ends.
    fn flush_stderr(&mut self) {
        if let Some(held) = self.first_line.take() {
            self.stderr.push(&held);
        }
    }

    fn status_text(&self) -> String {
        match (&self.exit_status, &self.exit_signal) {
            (Some(s), _) => s.to_string(),
            (None, Some(sig)) => format!("signal {sig}"),
            (None, None) => "none".to_owned(),
        }
    }
}

enum PumpError {
    Refused,
    Io(std::io::Error),
}

/// Reads a channel until the server closes it. ExitStatus may arrive after Eof, so the loop
/// only ends when `wait` returns None.
async fn pump<W: AsyncWrite + Unpin + Send>(
    r: &mut ChannelReadHalf,
    mut stdout_writer: Option<&mut W>,
    stdout_tail: &mut Tail,
    status: &mut Status,
) -> Result<(), PumpError> {
    while let Some(msg) = r.wait().await {
        match msg {
            ChannelMsg::Data { data } => match stdout_writer.as_mut() {
                Some(w) => w.write_all(&data).await.map_err(PumpError::Io)?,
                None => stdout_tail.push(&data),
            },
            ChannelMsg::ExtendedData { data, ext: 1 } => status.push_stderr(&data),
            ChannelMsg::ExitStatus { exit_status } => status.exit_status = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => {
                status.exit_signal = Some(sig_name(&signal_name));
            }
            // The only request with want_reply on these channels is exec; a refusal leaves
            // the channel open with nothing running.
            ChannelMsg::Failure => return Err(PumpError::Refused),
            _ => {}
        }
    }
    status.flush_stderr();
    if let Some(w) = stdout_writer {
        w.flush().await.map_err(PumpError::Io)?;
    }
    Ok(())
}

/// Why a command was ended before it finished.
enum Cut {
    Timeout,
    Cancelled,
}

async fn stop(w: &ChannelWriteHalf<Msg>) {
    let _ = w.signal(Sig::KILL).await;
    let _ = w.eof().await;
    let _ = w.close().await;
}

impl Session {
    /// Connects, verifies the host key and authenticates with the identity file.
    pub async fn connect(target: &SshTarget) -> Result<Session, SshError> {
        let check =
            HostKeyCheck::prepare(&target.name, &target.host_key, &target.host, target.port)?;
        let key = load_key(target)?;
        let mut config = client::Config {
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            inactivity_timeout: None,
            window_size: 16 * 1024 * 1024,
            maximum_packet_size: 65535,
            nodelay: true,
            ..Default::default()
        };
        config.preferred.key = Cow::Owned(check.preferred_algorithms(&config.preferred.key));
        config.preferred.cipher = Cow::Owned(cipher_order(&config.preferred.cipher));
        let verdict = Arc::new(Mutex::new(None));
        let handler = Client {
            check,
            verdict: verdict.clone(),
        };
        let addr = target.addr();
        debug!(target = %target.name, %addr, user = %target.user, "connecting");

        let attempt = async {
            let mut handle = client::connect(
                Arc::new(config),
                (target.host.as_str(), target.port),
                handler,
            )
            .await
            .map_err(|e| connect_error(target, &addr, e, &verdict))?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| SshError::from_russh(&target.name, e))?
                .flatten();
            let auth = handle
                .authenticate_publickey(
                    target.user.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(|e| SshError::from_russh(&target.name, e))?;
            if !auth.success() {
                return Err(SshError::Auth {
                    target: target.name.clone(),
                    user: target.user.clone(),
                    key: target.identity_file.clone(),
                });
            }
            Ok(handle)
        };
        let handle = tokio::time::timeout(target.connect_timeout, attempt)
            .await
            .map_err(|_| SshError::ConnectTimeout {
                target: target.name.clone(),
                addr: addr.clone(),
                after: target.connect_timeout,
            })??;
        info!(target = %target.name, %addr, "connected");
        Ok(Session {
            inner: Arc::new(Inner {
                handle,
                name: target.name.clone(),
                sftp_command: target.sftp_command.clone(),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The target's name, for messages.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// True once the connection is gone, or [`Session::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(std::sync::atomic::Ordering::Relaxed)
            || self.inner.handle.is_closed()
    }

    fn channel_error(&self, e: russh::Error) -> SshError {
        if is_network_error(&e) {
            SshError::from_russh(&self.inner.name, e)
        } else {
            SshError::Channel {
                target: self.inner.name.clone(),
                reason: e.to_string().to_lowercase(),
            }
        }
    }

    fn refused(&self, cmd: &str) -> SshError {
        SshError::Channel {
            target: self.inner.name.clone(),
            reason: format!("the server refused to run {cmd:?}"),
        }
    }

    async fn start(&self, cmd: &str) -> Result<(ChannelReadHalf, ChannelWriteHalf<Msg>), SshError> {
        let ch = self
            .inner
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.channel_error(e))?;
        ch.exec(true, cmd)
            .await
            .map_err(|e| self.channel_error(e))?;
        debug!(target = %self.inner.name, command = %cmd, "exec");
        Ok(ch.split())
    }

    /// Runs `cmd` and collects its output (the last 64 KiB of stdout and of stderr) and exit
    /// status. `cmd` runs in a process group of its own on the server ([`wrap`]); after
    /// `timeout` that group is sent TERM, then KILL ([`KILL_GRACE`]), over a second channel,
    /// and [`SshError::ExecTimeout`] is returned.
    pub async fn exec(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput, SshError> {
        self.run::<tokio::io::Sink>(cmd, None, timeout, std::future::pending())
            .await
    }

    /// Runs `cmd` as it is, without [`wrap`]: for the short scripts that end wrapped commands.
    async fn exec_plain(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput, SshError> {
        let (mut r, w) = self.start(cmd).await?;
        let mut stdout = Tail::new(OUTPUT_TAIL);
        let mut status = Status::default();
        let res = tokio::time::timeout(
            timeout,
            pump::<tokio::io::Sink>(&mut r, None, &mut stdout, &mut status),
        )
        .await;
        match res {
            Err(_) => {
                stop(&w).await;
                Err(SshError::ExecTimeout {
                    target: self.inner.name.clone(),
                    command: cmd.to_owned(),
                    after: timeout,
                })
            }
            Ok(Err(PumpError::Refused)) => {
                stop(&w).await;
                Err(self.refused(cmd))
            }
            Ok(Err(PumpError::Io(e))) => Err(self.stream_error(cmd, e)),
            Ok(Ok(())) => self.finish(cmd, stdout, status).await,
        }
    }

    fn stream_error(&self, cmd: &str, e: impl std::fmt::Display) -> SshError {
        SshError::Stream {
            target: self.inner.name.clone(),
            command: cmd.to_owned(),
            reason: e.to_string(),
        }
    }

    /// Runs `cmd` and streams its stdout into `out` (flushed at the end); the returned output
    /// holds the exit status and stderr tail, and an empty stdout. Like [`Session::exec`],
    /// the command runs in its own process group, which is ended after `timeout`
    /// ([`SshError::ExecTimeout`]) or as soon as `cancel` resolves
    /// ([`SshError::ExecCancelled`]). A dead connection ends it through SSH keepalives.
    pub async fn exec_to_writer<W: AsyncWrite + Unpin + Send>(
        &self,
        cmd: &str,
        out: &mut W,
        timeout: Duration,
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> Result<ExecOutput, SshError> {
        self.run(cmd, Some(out), timeout, cancel).await
    }

    /// The [`wrap`]ped command with its limits: see [`Session::exec`].
    async fn run<W: AsyncWrite + Unpin + Send>(
        &self,
        cmd: &str,
        out: Option<&mut W>,
        timeout: Duration,
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> Result<ExecOutput, SshError> {
        let (mut r, w) = self.start(&wrap(cmd)).await?;
        let mut stdout = Tail::new(OUTPUT_TAIL);
        let mut status = Status::wrapped();
        let writing = out.is_some();
        let res = tokio::select! {
            res = pump(&mut r, out, &mut stdout, &mut status) => Ok(res),
            _ = tokio::time::sleep(timeout) => Err(Cut::Timeout),
            _ = cancel => Err(Cut::Cancelled),
        };
        match res {
            Ok(Ok(())) => self.finish(cmd, stdout, status).await,
            Ok(Err(PumpError::Refused)) => {
                stop(&w).await;
                Err(self.refused(cmd))
            }
            Ok(Err(PumpError::Io(e))) => {
                if writing {
                    // The local side cannot take more: end the command rather than leave it
                    // blocked on a full channel.
                    self.end_group(&mut r, &w, &mut status).await;
                }
                Err(self.stream_error(cmd, e))
            }
            Err(cut) => {
                self.end_group(&mut r, &w, &mut status).await;
                Err(match cut {
                    Cut::Timeout => SshError::ExecTimeout {
                        target: self.inner.name.clone(),
                        command: cmd.to_owned(),
                        after: timeout,
                    },
                    Cut::Cancelled => SshError::ExecCancelled {
                        target: self.inner.name.clone(),
                        command: cmd.to_owned(),
                    },
                })
            }
        }
    }

    /// Ends a [`wrap`]ped command that is still running: its process group gets TERM, then
    /// KILL, over a second channel; then its own channel is closed. When the group id never
    /// arrived (the command had not started yet), the channel is sent KILL and closed.
    async fn end_group(
        &self,
        r: &mut ChannelReadHalf,
        w: &ChannelWriteHalf<Msg>,
        status: &mut Status,
    ) {
        let _ = tokio::time::timeout(KILL_GRACE, async {
            while status.pgid.is_none() {
                match r.wait().await {
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => status.push_stderr(&data),
                    Some(_) => {}
                    None => break,
                }
            }
        })
        .await;
        if let Some(pgid) = status.pgid {
            debug!(target = %self.inner.name, pgid, "ending a command's process group");
            if let Err(e) = self
                .exec_plain(
                    &kill_group_script(pgid),
                    KILL_GRACE + Duration::from_secs(20),
                )
                .await
            {
                info!(target = %self.inner.name, pgid, error = %e, "cannot end a command's process group");
            }
            // The outer shell exits once the group is gone; wait for it so that nothing of
            // the command is left when this returns.
            let _ =
                tokio::time::timeout(KILL_GRACE, async { while r.wait().await.is_some() {} }).await;
        }
        stop(w).await;
    }

    /// Runs `cmd`, feeds it `input` on stdin followed by EOF, and collects its output. If
    /// reading `input` fails, the command is killed before it sees EOF, so a half-fed restore
    /// is not taken for a complete one.
    pub async fn exec_with_stdin<R: AsyncRead + Unpin + Send>(
        &self,
        cmd: &str,
        input: R,
    ) -> Result<ExecOutput, SshError> {
        let (mut r, w) = self.start(cmd).await?;
        let mut stdout = Tail::new(OUTPUT_TAIL);
        let mut status = Status::default();
        let input = InputWatch {
            inner: input,
            failed: None,
        };
        let mut input_error = None;
        let read_result = {
            let write = async {
                let mut input = input;
                let res = match w.data(&mut input).await {
                    Ok(()) => w.eof().await,
                    Err(e) => Err(e),
                };
                (res, input.failed)
            };
            let read = pump::<tokio::io::Sink>(&mut r, None, &mut stdout, &mut status);
            tokio::pin!(write, read);
            let mut writing = true;
            loop {
                tokio::select! {
                    (res, failed) = &mut write, if writing => {
                        writing = false;
                        // A channel error means the command went away; its status tells.
                        if let (Err(_), Some(e)) = (res, failed) {
                            input_error = Some(e);
                            break None;
                        }
                    }
                    res = &mut read => break Some(res),
                }
            }
        };
        match (read_result, input_error) {
            (None, Some(e)) => {
                stop(&w).await;
                Err(self.stream_error(cmd, format!("reading the input failed: {e}")))
            }
            (Some(Err(PumpError::Refused)), _) => {
                stop(&w).await;
                Err(self.refused(cmd))
            }
            (Some(Err(PumpError::Io(e))), _) => Err(self.stream_error(cmd, e)),
            // The command ended; whether it read all of stdin is for its exit status to say.
            (Some(Ok(())), _) => self.finish(cmd, stdout, status).await,
            (None, None) => unreachable!("the loop only ends with a read result or an input error"),
        }
    }

    /// Without an exit status or signal, a command most likely died with the connection.
    async fn finish(
        &self,
        cmd: &str,
        stdout: Tail,
        status: Status,
    ) -> Result<ExecOutput, SshError> {
        if status.exit_status.is_none() && status.exit_signal.is_none() {
            for _ in 0..10 {
                if self.is_closed() {
                    return Err(SshError::Disconnected {
                        target: self.inner.name.clone(),
                        reason: format!("command {cmd:?} ended without an exit status"),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(output(stdout, status))
    }

    /// Starts an SFTP session: the `sftp` subsystem, or `sftp_command` on an exec channel
    /// when the target sets one. Its requests have no timeout of their own (a dead
    /// connection is caught by SSH keepalives); [`crate::SftpSource`] bounds its own.
    pub async fn sftp(&self) -> Result<Arc<Sftp>, SshError> {
        Ok(self.sftp_channel().await?.sftp)
    }

    /// An SFTP session with what is needed to tell that it stalled and to stop its server
    /// process (see `crate::channel`).
    pub(crate) async fn sftp_channel(&self) -> Result<SftpChannel, SshError> {
        let activity = Activity::new();
        let (sftp, server) = match &self.inner.sftp_command {
            None => (
                self.sftp_subsystem(activity.clone()).await?,
                ServerProcess::Subsystem,
            ),
            Some(cmd) => {
                let pid = Arc::new(Mutex::new(None));
                let s = self.sftp_exec(cmd, activity.clone(), pid.clone()).await?;
                (s, ServerProcess::Command(pid))
            }
        };
        Ok(SftpChannel {
            sftp: Arc::new(sftp),
            activity,
            server,
        })
    }

    /// Stops the server process of an abandoned SFTP channel over an exec channel: TERM to
    /// its process group, KILL after 2 s. Closing the channel is not enough, since a
    /// sftp-server blocked in `open()` of a FIFO never notices. Returns what was done.
    pub(crate) async fn stop_sftp_server(
        &self,
        server: &ServerProcess,
    ) -> Result<String, SshError> {
        let groups = match server {
            ServerProcess::Command(pid) => match *pid.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(p) => format!("echo {p}"),
                None => return Ok("the sftp command never told its process id".to_owned()),
            },
            ServerProcess::Subsystem => SUBSYSTEM_SERVERS.to_owned(),
        };
        let script = format!("groups=$({groups}); {STOP_GROUPS}");
        let out = self
            // Unwrapped: the script finds this connection's sshd from its own parent.
            .exec_plain(
                &format!("exec /bin/sh -c {}", sh_quote(&script)),
                Duration::from_secs(10),
            )
            .await?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.success() {
            Ok(said)
        } else {
            Err(SshError::Channel {
                target: self.inner.name.clone(),
                reason: format!(
                    "stopping the sftp-server failed ({}): {} {}",
                    out.status_text(),
                    said,
                    out.stderr_text()
                ),
            })
        }
    }

    async fn sftp_subsystem(&self, activity: Arc<Activity>) -> Result<Sftp, SshError> {
        let start_error = |detail: String, temporary: bool| SshError::SftpStart {
            target: self.inner.name.clone(),
            how: "subsystem sftp".to_owned(),
            status: "none".to_owned(),
            detail,
            temporary,
        };
        let mut ch = self
            .inner
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.channel_error(e))?;
        ch.request_subsystem(true, "sftp")
            .await
            .map_err(|e| self.channel_error(e))?;
        // into_stream swallows the reply, so wait for it first; a refusal would otherwise
        // surface only as a 10 s timeout of the SFTP handshake.
        loop {
            match ch.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) => {
                    let _ = ch.close().await;
                    return Err(start_error(
                        "the server refused the sftp subsystem; enable it in sshd_config or set sftp_command".into(),
                        false,
                    ));
                }
                Some(ChannelMsg::Close) | None => {
                    return Err(start_error("the channel closed".into(), true));
                }
                Some(_) => {}
            }
        }
        Sftp::start(Watched::new(ch.into_stream(), activity))
            .await
            .map_err(|e| start_error(e.to_string(), true))
    }

    /// SFTP over a command's stdin/stdout. The channel is pumped through an in-memory pipe so
    /// that stderr and the exit status stay visible: when the command dies before the
    /// handshake (sudo asking for a password), the error carries its words at once.
    ///
    /// The command runs under `/bin/sh`, which first writes its process id (that of the
    /// process group the command runs in) to stderr, so that the server can be stopped later.
    async fn sftp_exec(
        &self,
        cmd: &str,
        activity: Arc<Activity>,
        pid: Arc<Mutex<Option<u32>>>,
    ) -> Result<Sftp, SshError> {
        let wrapped = format!(
            "exec /bin/sh -c {}",
            sh_quote(&format!("echo \"{PID_MARK}$$\" >&2; {cmd}"))
        );
        let (r, w) = self.start(&wrapped).await?;
        let (client_end, server_end) = tokio::io::duplex(256 * 1024);
        let (from_client, to_client) = tokio::io::split(server_end);
        let end = Arc::new(CommandEnd::default());
        let (ended_tx, mut ended_rx) = tokio::sync::oneshot::channel::<()>();
        // The writer closes the channel only once the reader has seen its end (or after a
        // moment): a close sent while the command is exiting can cost its exit status.
        let read_done = Arc::new(tokio::sync::Notify::new());
        {
            let (end, read_done) = (end.clone(), read_done.clone());
            let name = self.inner.name.clone();
            tokio::spawn(async move {
                end.pump(r, to_client, &pid, &name).await;
                read_done.notify_one();
                let _ = ended_tx.send(());
            });
        }
        tokio::spawn(async move {
            // Ends when the SFTP session is dropped (its end of the pipe closes).
            let _ = w.data(from_client).await;
            let _ = w.eof().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), read_done.notified()).await;
            let _ = w.close().await;
        });

        let failed = |detail: Option<String>| {
            let st = end.status.lock().unwrap_or_else(|e| e.into_inner());
            let was_refused = end.refused.load(std::sync::atomic::Ordering::Relaxed);
            let stderr = st.stderr.text();
            let detail = if was_refused {
                "the server refused to run the command".to_owned()
            } else if !stderr.is_empty() {
                stderr
            } else {
                detail.unwrap_or_else(|| "the command ended without speaking sftp".to_owned())
            };
            let ended = was_refused || st.exit_status.is_some() || st.exit_signal.is_some();
            SshError::SftpStart {
                target: self.inner.name.clone(),
                how: format!("command {cmd:?}"),
                status: st.status_text(),
                detail,
                temporary: !ended,
            }
        };

        let init = Sftp::start(Watched::new(client_end, activity));
        tokio::pin!(init);
        tokio::select! {
            res = &mut init => match res {
                Ok(s) => Ok(s),
                Err(e) => {
                    // Give the channel a moment to deliver stderr and the exit status.
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut ended_rx).await;
                    Err(failed(Some(e.to_string())))
                }
            },
            _ = &mut ended_rx => Err(failed(None)),
        }
    }

    /// Ends the connection politely; clones become unusable.
    pub async fn close(&self) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self
            .inner
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// How an SFTP channel's server process is found when it has to be stopped.
pub(crate) enum ServerProcess {
    /// `sftp_command`: the process group it told on stderr.
    Command(Arc<Mutex<Option<u32>>>),
    /// The `sftp` subsystem: every sftp-server process of this SSH connection.
    Subsystem,
}

/// An SFTP session, when bytes last arrived on it, and its server process.
pub(crate) struct SftpChannel {
    pub(crate) sftp: Arc<Sftp>,
    pub(crate) activity: Arc<Activity>,
    pub(crate) server: ServerProcess,
}

/// Written by the wrapper of `sftp_command` before the command starts.
const PID_MARK: &str = "burrow-sftp-pid ";

/// Records the process id from the wrapper's stderr line; returns the rest of `data`.
fn take_pid(data: &[u8], pid: &Mutex<Option<u32>>) -> Vec<u8> {
    let mut slot = pid.lock().unwrap_or_else(|e| e.into_inner());
    let mark = PID_MARK.as_bytes();
    let found = data.windows(mark.len()).position(|w| w == mark);
    let (true, Some(at)) = (slot.is_none(), found) else {
        return data.to_vec();
    };
    let digits = &data[at + mark.len()..];
    let end = digits
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(digits.len());
    *slot = std::str::from_utf8(&digits[..end])
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut rest = data[..at].to_vec();
    rest.extend_from_slice(&digits[(end + 1).min(digits.len())..]);
    rest
}

/// Shell: the process groups of the sftp-server processes of this SSH connection. The exec
/// shell's parent is the connection's sshd process, which is also the parent of the
/// subsystem's sftp-server (or of the shell that runs it). Reads Linux's /proc.
const SUBSYSTEM_SERVERS: &str = r#"conn=$PPID
for d in /proc/[0-9]*; do
  read -r l 2>/dev/null <"$d/stat" || continue
  c=${l#*\(}; c=${c%\)*}
  [ "$c" = sftp-server ] || continue
  set -- ${l##*\) }
  pp=$2; pg=$3
  if [ "$pp" != "$conn" ]; then
    read -r l 2>/dev/null <"/proc/$pp/stat" || continue
    set -- ${l##*\) }
    [ "$2" = "$conn" ] || continue
  fi
  echo "$pg"
done"#;

/// Shell: TERM to each process group in `$groups`, KILL to those left after 2 s.
const STOP_GROUPS: &str = r#"[ -n "$groups" ] || { echo "no sftp-server found"; exit 0; }
for g in $groups; do kill -s TERM -- "-$g" 2>/dev/null || kill -s TERM "$g" 2>/dev/null; done
i=0
while [ $i -lt 20 ]; do
  left=
  for g in $groups; do kill -s 0 -- "-$g" 2>/dev/null && left="$left $g"; done
  [ -n "$left" ] || { echo "stopped" $groups; exit 0; }
  sleep 0.1; i=$((i+1))
done
for g in $left; do kill -s KILL -- "-$g" 2>/dev/null; done
echo "killed" $left"#;

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Remembers why reading the input failed, to tell it apart from a closed channel.
struct InputWatch<R> {
    inner: R,
    failed: Option<String>,
}

impl<R: AsyncRead + Unpin> AsyncRead for InputWatch<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Err(e)) = &res {
            self.failed = Some(e.to_string());
        }
        res
    }
}

fn output(stdout: Tail, status: Status) -> ExecOutput {
    ExecOutput {
        exit_status: status.exit_status,
        exit_signal: status.exit_signal,
        stdout: stdout.into_vec(),
        stderr: status.stderr.into_vec(),
    }
}

fn connect_error(
    target: &SshTarget,
    addr: &str,
    e: russh::Error,
    verdict: &Mutex<Option<Verdict>>,
) -> SshError {
    let verdict = verdict.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match (e, verdict) {
        (russh::Error::UnknownKey, Some(Verdict::Mismatch { seen, expected })) => {
            SshError::HostKeyMismatch {
                target: target.name.clone(),
                addr: addr.to_owned(),
                seen,
                expected,
            }
        }
        (russh::Error::UnknownKey, Some(Verdict::Revoked { seen })) => SshError::HostKeyMismatch {
            target: target.name.clone(),
            addr: addr.to_owned(),
            seen,
            expected: "any key not marked @revoked in known_hosts".to_owned(),
        },
        (russh::Error::UnknownKey, Some(Verdict::Unknown { seen, known_hosts })) => {
            SshError::HostKeyUnknown {
                target: target.name.clone(),
                host: if target.port == 22 {
                    target.host.clone()
                } else {
                    format!("[{}]:{}", target.host, target.port)
                },
                seen,
                known_hosts,
            }
        }
        (russh::Error::IO(io), _) => SshError::Connect {
            target: target.name.clone(),
            addr: addr.to_owned(),
            reason: io.to_string().to_lowercase(),
        },
        (e, _) if is_network_error(&e) => SshError::Connect {
            target: target.name.clone(),
            addr: addr.to_owned(),
            reason: e.to_string().to_lowercase(),
        },
        (e, _) => SshError::Protocol {
            target: target.name.clone(),
            reason: e.to_string().to_lowercase(),
        },
    }
}

/// The server side of the [`Exec`](burrow_core::exec::Exec) port: the session's own methods,
/// with their errors classed ([`SshError::is_temporary`]).
impl burrow_core::exec::Exec for Session {
    fn describe(&self) -> &str {
        self.name()
    }

    async fn exec(
        &self,
        cmd: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, burrow_core::RunError> {
        Ok(Session::exec(self, cmd, timeout).await?)
    }

    async fn exec_to_writer<W: AsyncWrite + Unpin + Send>(
        &self,
        cmd: &str,
        out: &mut W,
        timeout: Duration,
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> Result<ExecOutput, burrow_core::RunError> {
        Ok(Session::exec_to_writer(self, cmd, out, timeout, cancel).await?)
    }

    async fn exec_with_stdin<R: AsyncRead + Unpin + Send>(
        &self,
        cmd: &str,
        input: R,
    ) -> Result<ExecOutput, burrow_core::RunError> {
        Ok(Session::exec_with_stdin(self, cmd, input).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrappers_pid_line_is_taken_out_of_stderr() {
        let pid = Mutex::new(None);
        let rest = take_pid(b"motd\nburrow-sftp-pid 4242\nsudo: oops\n", &pid);
        assert_eq!(*pid.lock().unwrap(), Some(4242));
        assert_eq!(rest, b"motd\nsudo: oops\n");
        // Only the first one counts.
        let rest = take_pid(b"burrow-sftp-pid 1\n", &pid);
        assert_eq!(*pid.lock().unwrap(), Some(4242));
        assert_eq!(rest, b"burrow-sftp-pid 1\n");
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(4);
        t.push(b"ab");
        t.push(b"cdef");
        t.push(b"g");
        assert_eq!(t.into_vec(), b"defg");
        let mut t = Tail::new(4);
        t.push(b"0123456789");
        assert_eq!(t.into_vec(), b"6789");
        let mut t = Tail::new(3);
        for b in b"abcdefghij" {
            t.push(&[*b]);
        }
        assert_eq!(t.into_vec(), b"hij");
    }
}
