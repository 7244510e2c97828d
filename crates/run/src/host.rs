//! Where a job's commands run: on its server over SSH, or on this machine for local jobs
//! ([`Local`]). Both are [`Exec`] adapters, so hooks and dumps have one code path.

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use burrow_core::RunError;
use burrow_core::exec::{Exec, ExecOutput, KILL_GRACE, humanize, output_tail};
use burrow_core::server::Connection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;

pub enum Host<C> {
    Local,
    Remote(C),
}

impl<C: Connection> Host<C> {
    /// The snapshot's host name: the server's, or this machine's for a local job.
    pub fn name(&self) -> String {
        match self {
            Host::Local => crate::local_hostname(),
            Host::Remote(c) => c.name().to_owned(),
        }
    }

    /// The connection was lost (a local job has none to lose).
    pub fn is_closed(&self) -> bool {
        matches!(self, Host::Remote(c) if c.is_closed())
    }

    pub async fn close(&self) {
        if let Host::Remote(c) = self {
            c.close().await;
        }
    }
}

fn local_output(status: std::process::ExitStatus, stdout: Vec<u8>, stderr: Vec<u8>) -> ExecOutput {
    use std::os::unix::process::ExitStatusExt;
    ExecOutput {
        exit_status: status.code().map(|c| c as u32),
        exit_signal: status.signal().map(|s| format!("signal {s}")),
        stdout: output_tail(stdout),
        stderr: output_tail(stderr),
    }
}

fn sh(cmd: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(cmd).kill_on_drop(true).stdin(Stdio::null());
    c
}

/// This machine as the place of a local job's commands: `/bin/sh -c` in a process group of
/// its own (`process_group(0)`), ended with that group after its timeout.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Exec for Local {
    fn describe(&self) -> &str {
        "this machine"
    }

    async fn exec(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput, RunError> {
        local_run::<tokio::io::Sink>(cmd, None, timeout, std::future::pending()).await
    }

    async fn exec_to_writer<W: AsyncWrite + Unpin + Send>(
        &self,
        cmd: &str,
        out: &mut W,
        timeout: Duration,
        cancel: impl Future<Output = ()> + Send,
    ) -> Result<ExecOutput, RunError> {
        local_run(cmd, Some(out), timeout, cancel).await
    }

    async fn exec_with_stdin<R: AsyncRead + Unpin + Send>(
        &self,
        cmd: &str,
        mut input: R,
    ) -> Result<ExecOutput, RunError> {
        let mut c = sh(cmd);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .map_err(|e| RunError::permanent(format!("cannot start /bin/sh: {e}")))?;
        let mut stdin = child.stdin.take().ok_or_else(|| piped("stdin"))?;
        let feed = async {
            let r = tokio::io::copy(&mut input, &mut stdin).await;
            drop(stdin);
            r
        };
        let (fed, out) = tokio::join!(feed, child.wait_with_output());
        let out = out.map_err(|e| RunError::permanent(e.to_string()))?;
        if let Err(e) = fed
            && out.status.success()
        {
            return Err(RunError::permanent(format!(
                "feeding the command failed: {e}"
            )));
        }
        Ok(local_output(out.status, out.stdout, out.stderr))
    }
}

/// A job's place: the server's SSH session, or this machine.
impl<C: Connection> Exec for Host<C> {
    fn describe(&self) -> &str {
        match self {
            Host::Local => Local.describe(),
            Host::Remote(s) => s.describe(),
        }
    }

    async fn exec(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput, RunError> {
        match self {
            Host::Local => Local.exec(cmd, timeout).await,
            Host::Remote(s) => Exec::exec(s, cmd, timeout).await,
        }
    }

    async fn exec_to_writer<W: AsyncWrite + Unpin + Send>(
        &self,
        cmd: &str,
        out: &mut W,
        timeout: Duration,
        cancel: impl Future<Output = ()> + Send,
    ) -> Result<ExecOutput, RunError> {
        match self {
            Host::Local => Local.exec_to_writer(cmd, out, timeout, cancel).await,
            Host::Remote(s) => Exec::exec_to_writer(s, cmd, out, timeout, cancel).await,
        }
    }

    async fn exec_with_stdin<R: AsyncRead + Unpin + Send>(
        &self,
        cmd: &str,
        input: R,
    ) -> Result<ExecOutput, RunError> {
        match self {
            Host::Local => Local.exec_with_stdin(cmd, input).await,
            Host::Remote(s) => Exec::exec_with_stdin(s, cmd, input).await,
        }
    }
}

fn timed_out(after: Duration) -> RunError {
    RunError::temporary(format!(
        "timed out: it did not finish within {} and was stopped",
        humanize(after)
    ))
}

fn piped(which: &str) -> RunError {
    RunError::permanent(format!("the local command has no {which} pipe"))
}

/// Sends `sig` to the process group `pgid` (a local command started by [`local_run`]).
fn signal_group(pgid: Option<u32>, sig: nix::sys::signal::Signal) {
    if let Some(pgid) = pgid {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), sig);
    }
}

/// A local command in a process group of its own (`process_group(0)`), with stdout to `out`
/// (or kept, the last [`burrow_core::exec::OUTPUT_TAIL`] bytes), ended with its group after `timeout` or when
/// `cancel` resolves: TERM, then KILL after [`KILL_GRACE`].
async fn local_run<W: AsyncWrite + Unpin + Send>(
    cmd: &str,
    out: Option<&mut W>,
    timeout: Duration,
    cancel: impl Future<Output = ()> + Send,
) -> Result<ExecOutput, RunError> {
    use nix::sys::signal::Signal;
    let mut c = sh(cmd);
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = c
        .spawn()
        .map_err(|e| RunError::permanent(format!("cannot start /bin/sh: {e}")))?;
    let pgid = child.id();
    let mut stdout = child.stdout.take().ok_or_else(|| piped("stdout"))?;
    let mut stderr = child.stderr.take().ok_or_else(|| piped("stderr"))?;
    let err_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    });
    let writing = out.is_some();
    let ran = {
        let run = async {
            let kept = match out {
                Some(w) => match tokio::io::copy(&mut stdout, w).await {
                    Ok(_) => w.flush().await.map(|()| Vec::new()),
                    Err(e) => Err(e),
                },
                None => {
                    let mut buf = Vec::new();
                    stdout.read_to_end(&mut buf).await.map(|_| buf)
                }
            };
            match kept {
                Ok(kept) => Ok((child.wait().await, kept)),
                Err(e) => Err(e),
            }
        };
        tokio::select! {
            res = run => Ok(res),
            // as on a server: a command that hung or was stopped may do better next time
            _ = tokio::time::sleep(timeout) => Err(timed_out(timeout)),
            _ = cancel => Err(RunError::temporary("interrupted: burrow is stopping")),
        }
    };
    let reason = match ran {
        Ok(Ok((Ok(status), kept))) => {
            let stderr = err_task.await.unwrap_or_default();
            return Ok(local_output(status, kept, stderr));
        }
        Ok(Ok((Err(e), _))) => RunError::permanent(format!("waiting for the command failed: {e}")),
        Ok(Err(e)) if writing => RunError::permanent(format!("writing the output failed: {e}")),
        Ok(Err(e)) => RunError::permanent(format!("reading the output failed: {e}")),
        Err(reason) => reason,
    };
    signal_group(pgid, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        signal_group(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    err_task.abort();
    Err(reason)
}
