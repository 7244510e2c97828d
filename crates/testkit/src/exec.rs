//! A scripted [`Exec`]: the fake of the port hooks and dumps run through. Each command is
//! answered by the first rule whose pattern it contains (exit 0 with no output when none
//! matches), and every command is recorded, with the stdin it was given, in order.

use std::sync::Mutex;
use std::time::Duration;

use burrow_core::RunError;
use burrow_core::exec::{Exec, ExecOutput, output_tail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How a scripted command ends.
#[derive(Debug, Clone)]
pub enum Reply {
    /// It exits with `status` after printing `stdout` and `stderr`.
    Exit {
        status: u32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// It never ends by itself: the call fails at its timeout (or its cancel), as a hung
    /// command does on a real place.
    Hang,
    /// The call itself fails (the connection broke, `/bin/sh` cannot start).
    Fail(RunError),
}

impl Reply {
    /// Exit 0, printing `stdout`.
    pub fn ok(stdout: &str) -> Reply {
        Reply::Exit {
            status: 0,
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        }
    }

    /// Exit `status`, printing `stderr`.
    pub fn fails(status: u32, stderr: &str) -> Reply {
        Reply::Exit {
            status,
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }
}

/// One command as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub cmd: String,
    /// What was fed to it (`exec_with_stdin`), `None` for the other calls.
    pub stdin: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct ScriptedExec {
    name: String,
    rules: Mutex<Vec<(String, Reply)>>,
    ran: Mutex<Vec<Ran>>,
}

impl ScriptedExec {
    /// A place named `name` (as [`Exec::describe`] says) where every command succeeds.
    pub fn new(name: &str) -> ScriptedExec {
        ScriptedExec {
            name: name.to_owned(),
            ..ScriptedExec::default()
        }
    }

    /// Commands containing `pattern` end as `reply` (the first matching rule wins).
    pub fn on(self, pattern: &str, reply: Reply) -> ScriptedExec {
        lock(&self.rules).push((pattern.to_owned(), reply));
        self
    }

    /// Every command run so far, in order.
    pub fn ran(&self) -> Vec<Ran> {
        lock(&self.ran).clone()
    }

    /// The command lines run so far, in order.
    pub fn commands(&self) -> Vec<String> {
        self.ran().into_iter().map(|r| r.cmd).collect()
    }

    fn answer(&self, cmd: &str, stdin: Option<Vec<u8>>) -> Reply {
        lock(&self.ran).push(Ran {
            cmd: cmd.to_owned(),
            stdin,
        });
        lock(&self.rules)
            .iter()
            .find(|(p, _)| cmd.contains(p.as_str()))
            .map_or_else(|| Reply::ok(""), |(_, r)| r.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a real place reports of a command that exited: the tails of its output.
fn exited(status: u32, stdout: Vec<u8>, stderr: Vec<u8>) -> ExecOutput {
    ExecOutput {
        exit_status: Some(status),
        exit_signal: None,
        stdout: output_tail(stdout),
        stderr: output_tail(stderr),
    }
}

fn hung(timeout: Duration) -> RunError {
    RunError::temporary(format!(
        "timed out: it did not finish within {} and was stopped",
        burrow_core::exec::humanize(timeout)
    ))
}

impl Exec for ScriptedExec {
    fn describe(&self) -> &str {
        &self.name
    }

    async fn exec(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput, RunError> {
        match self.answer(cmd, None) {
            Reply::Exit {
                status,
                stdout,
                stderr,
            } => Ok(exited(status, stdout, stderr)),
            Reply::Hang => {
                tokio::time::sleep(timeout).await;
                Err(hung(timeout))
            }
            Reply::Fail(e) => Err(e),
        }
    }

    async fn exec_to_writer<W: AsyncWrite + Unpin + Send>(
        &self,
        cmd: &str,
        out: &mut W,
        timeout: Duration,
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> Result<ExecOutput, RunError> {
        match self.answer(cmd, None) {
            Reply::Exit {
                status,
                stdout,
                stderr,
            } => {
                out.write_all(&stdout)
                    .await
                    .and(out.flush().await)
                    .map_err(|e| RunError::permanent(format!("writing the output failed: {e}")))?;
                Ok(exited(status, Vec::new(), stderr))
            }
            Reply::Hang => {
                tokio::select! {
                    _ = tokio::time::sleep(timeout) => Err(hung(timeout)),
                    _ = cancel => Err(RunError::temporary("interrupted: burrow is stopping")),
                }
            }
            Reply::Fail(e) => Err(e),
        }
    }

    async fn exec_with_stdin<R: AsyncRead + Unpin + Send>(
        &self,
        cmd: &str,
        mut input: R,
    ) -> Result<ExecOutput, RunError> {
        let mut fed = Vec::new();
        input
            .read_to_end(&mut fed)
            .await
            .map_err(|e| RunError::permanent(format!("feeding the command failed: {e}")))?;
        match self.answer(cmd, Some(fed)) {
            Reply::Exit {
                status,
                stdout,
                stderr,
            } => Ok(exited(status, stdout, stderr)),
            Reply::Hang => Err(RunError::temporary("the command did not end")),
            Reply::Fail(e) => Err(e),
        }
    }
}
