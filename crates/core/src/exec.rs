//! The port through which a job's commands run: hooks (`before`, `after`, the dead-man's
//! switch) and dumps. The SSH session (crates/ssh) runs them on the job's server, burrow-run's
//! local adapter on this machine for local jobs, and testkit's scripted fake in tests. All of
//! them keep one contract (`crates/run/tests/exec_contract.rs` for the real two):
//!
//! - a command runs under `/bin/sh -c` in a process group of its own; one still running at its
//!   `timeout` (or when `cancel` resolves) is ended with that group: TERM, then KILL after
//!   [`KILL_GRACE`], and the call fails with a temporary error that says it timed out and
//!   did not finish within the limit ([`humanize`]d);
//! - [`ExecOutput`] keeps the exit status (or the signal) and the last [`OUTPUT_TAIL`] bytes
//!   of stdout and stderr;
//! - an error is a [`RunError`] with its class: the connection broke or the command hung is
//!   temporary, a command that cannot be started is permanent.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::RunError;

/// How much of a command's stdout and stderr [`ExecOutput`] keeps: the last 64 KiB of each.
pub const OUTPUT_TAIL: usize = 64 * 1024;

/// How long a command that is being stopped gets between TERM and KILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

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

/// The last [`OUTPUT_TAIL`] bytes of `v`: what an [`ExecOutput`] keeps of a long output.
pub fn output_tail(mut v: Vec<u8>) -> Vec<u8> {
    if v.len() > OUTPUT_TAIL {
        v.drain(..v.len() - OUTPUT_TAIL);
    }
    v
}

/// What a command left behind. stdout and stderr are the last [`OUTPUT_TAIL`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_status == Some(0)
    }

    /// `exit status 3`, `signal KILL` or `no exit status`.
    pub fn status_text(&self) -> String {
        match (&self.exit_status, &self.exit_signal) {
            (Some(s), _) => format!("exit status {s}"),
            (None, Some(sig)) => format!("signal {sig}"),
            (None, None) => "no exit status".to_owned(),
        }
    }

    /// stderr as text, trimmed.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

/// Where a job's commands run (see the module docs for the contract).
pub trait Exec: Send + Sync {
    /// The place, for messages: the server's name, or "this machine".
    fn describe(&self) -> &str;

    /// Runs `cmd` to completion or until `timeout`.
    fn exec(
        &self,
        cmd: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput, RunError>> + Send;

    /// Runs `cmd` and streams its stdout into `out` (a dump); `stdout` of the result is
    /// empty. Ended after `timeout`, or as soon as `cancel` resolves.
    fn exec_to_writer<W: AsyncWrite + Unpin + Send>(
        &self,
        cmd: &str,
        out: &mut W,
        timeout: Duration,
        cancel: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Result<ExecOutput, RunError>> + Send;

    /// Runs `cmd` with `input` as its stdin (restoring a dump).
    fn exec_with_stdin<R: AsyncRead + Unpin + Send>(
        &self,
        cmd: &str,
        input: R,
    ) -> impl Future<Output = Result<ExecOutput, RunError>> + Send;
}
