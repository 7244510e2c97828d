//! The server port: how a run reaches a job's server. A connection is an [`Exec`] (hooks and
//! dumps) that also opens the server's files as a [`Source`] (read-only SFTP in the real
//! adapter, burrow-ssh). The config produces the [`SshTarget`]; the adapter consumes it.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::RunError;
use crate::exclude::Excludes;
use crate::exec::Exec;
use crate::source::Source;

/// How the server's host key is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// An OpenSSH public key line (`ssh-ed25519 AAAA... [comment]`) or a `SHA256:...`
    /// fingerprint as printed by `ssh-keygen -lf`.
    Pinned(String),
    /// A known_hosts file; hashed host names are understood, `@cert-authority` lines are not.
    KnownHosts(PathBuf),
}

/// A server to connect to.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Name used in messages (the job or server name).
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity_file: PathBuf,
    /// File whose first line is the identity file's passphrase.
    pub identity_passphrase_file: Option<PathBuf>,
    pub host_key: HostKeyPolicy,
    /// Run this command on an exec channel and speak SFTP over its stdin/stdout instead of
    /// requesting the `sftp` subsystem, e.g. `sudo -n /usr/lib/openssh/sftp-server -R`.
    pub sftp_command: Option<String>,
    /// Limit for TCP connect, key exchange and authentication together.
    pub connect_timeout: Duration,
}

impl SshTarget {
    /// `host:port`, with an IPv6 address in brackets.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What a run reads of the server's files: the job's roots without what `excludes` leaves
/// out; a request the server leaves unanswered for `io_timeout` makes its file a problem.
#[derive(Debug, Clone)]
pub struct FilesRequest {
    pub roots: Vec<PathBuf>,
    pub excludes: Excludes,
    pub io_timeout: Duration,
    /// Becomes `true` when burrow is shutting down: reading stops.
    pub cancel: watch::Receiver<bool>,
}

/// A connection to a server.
pub trait Connection: Exec + 'static {
    /// The server's name, for messages and the snapshot's host.
    fn name(&self) -> &str;
    /// The connection was lost (reads that failed then say nothing about the files).
    fn is_closed(&self) -> bool;
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// Connects to servers.
pub trait Servers: Clone + Send + Sync + 'static {
    type Connection: Connection;
    type Files: Source;

    fn connect(
        &self,
        target: &SshTarget,
    ) -> impl Future<Output = Result<Self::Connection, RunError>> + Send;
    /// Opens the server's files for one walk (on a channel of its own).
    fn files(
        &self,
        connection: &Self::Connection,
        request: FilesRequest,
    ) -> impl Future<Output = Result<Self::Files, RunError>> + Send;
}
