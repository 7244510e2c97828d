//! Where a job's commands run: on its server over SSH, or on this machine for local jobs.
//! Both give the same [`ExecOutput`], so hooks and dumps have one code path.

use std::process::Stdio;
use std::time::Duration;

use burrow_ssh::{ExecOutput, OUTPUT_TAIL, Session};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;

pub enum Host {
    Local,
    Remote(Session),
}

fn tail(mut v: Vec<u8>) -> Vec<u8> {
    if v.len() > OUTPUT_TAIL {
        v.drain(..v.len() - OUTPUT_TAIL);
    }
    v
}

fn local_output(status: std::process::ExitStatus, stdout: Vec<u8>, stderr: Vec<u8>) -> ExecOutput {
    use std::os::unix::process::ExitStatusExt;
    ExecOutput {
        exit_status: status.code().map(|c| c as u32),
        exit_signal: status.signal().map(|s| format!("signal {s}")),
        stdout: tail(stdout),
        stderr: tail(stderr),
    }
}

fn sh(cmd: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(cmd).kill_on_drop(true).stdin(Stdio::null());
    c
}

impl Host {
    pub fn describe(&self) -> &str {
        match self {
            Host::Local => "this machine",
            Host::Remote(s) => s.name(),
        }
    }

    /// Runs `cmd` to completion or until `timeout` (then it is killed: the SSH channel is
    /// closed, a local process group is killed).
    pub async fn exec(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput, String> {
        match self {
            Host::Remote(s) => s.exec(cmd, timeout).await.map_err(|e| e.to_string()),
            Host::Local => {
                let mut c = sh(cmd);
                c.stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
                let child = c
                    .spawn()
                    .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
                let pid = child.id();
                match tokio::time::timeout(timeout, child.wait_with_output()).await {
                    Ok(Ok(out)) => Ok(local_output(out.status, out.stdout, out.stderr)),
                    Ok(Err(e)) => Err(format!("waiting for the command failed: {e}")),
                    Err(_) => {
                        if let Some(pid) = pid {
                            let _ = nix::sys::signal::killpg(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                        Err(format!("timed out after {}", humanize(timeout)))
                    }
                }
            }
        }
    }

    /// Runs `cmd` and streams its stdout into `out` (a dump).
    pub async fn exec_to_writer<W: AsyncWrite + Unpin + Send>(
        &self,
        cmd: &str,
        out: &mut W,
    ) -> Result<ExecOutput, String> {
        match self {
            Host::Remote(s) => s.exec_to_writer(cmd, out).await.map_err(|e| e.to_string()),
            Host::Local => {
                let mut c = sh(cmd);
                c.stdout(Stdio::piped()).stderr(Stdio::piped());
                let mut child = c
                    .spawn()
                    .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
                let mut stdout = child.stdout.take().ok_or("no stdout")?;
                let mut stderr = child.stderr.take().ok_or("no stderr")?;
                let err_task = tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let _ = stderr.read_to_end(&mut buf).await;
                    buf
                });
                let copied = tokio::io::copy(&mut stdout, out).await;
                let status = child.wait().await.map_err(|e| e.to_string())?;
                let stderr = err_task.await.unwrap_or_default();
                copied.map_err(|e| format!("writing the output failed: {e}"))?;
                out.flush().await.map_err(|e| e.to_string())?;
                Ok(local_output(status, Vec::new(), stderr))
            }
        }
    }

    /// Runs `cmd` with `input` as its stdin (restoring a dump).
    pub async fn exec_with_stdin<R: AsyncRead + Unpin + Send>(
        &self,
        cmd: &str,
        mut input: R,
    ) -> Result<ExecOutput, String> {
        match self {
            Host::Remote(s) => s
                .exec_with_stdin(cmd, input)
                .await
                .map_err(|e| e.to_string()),
            Host::Local => {
                let mut c = sh(cmd);
                c.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = c
                    .spawn()
                    .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
                let mut stdin = child.stdin.take().ok_or("no stdin")?;
                let feed = async {
                    let r = tokio::io::copy(&mut input, &mut stdin).await;
                    drop(stdin);
                    r
                };
                let (fed, out) = tokio::join!(feed, child.wait_with_output());
                let out = out.map_err(|e| e.to_string())?;
                if let Err(e) = fed
                    && out.status.success()
                {
                    return Err(format!("feeding the command failed: {e}"));
                }
                Ok(local_output(out.status, out.stdout, out.stderr))
            }
        }
    }
}

/// `2h`, `10m`, `30s`, `250ms`: durations as the config file writes them.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}
