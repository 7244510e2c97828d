use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong talking to a server. [`SshError::is_temporary`] tells a retry
/// loop whether trying again later can help.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "cannot connect to {target} at {addr}: {reason}; check that the server is up and the port is reachable"
    )]
    Connect {
        target: String,
        addr: String,
        reason: String,
    },

    #[error("connecting to {target} at {addr} timed out after {}s; check that the server is up and the port is reachable", .after.as_secs())]
    ConnectTimeout {
        target: String,
        addr: String,
        after: Duration,
    },

    #[error(
        "host key of {target} at {addr} does not match: the server offered {seen}, expected {expected}; if the server's key really changed, update host_key"
    )]
    HostKeyMismatch {
        target: String,
        addr: String,
        seen: String,
        expected: String,
    },

    #[error(
        "host key of {target} is unknown: the server offered {seen} but {known_hosts} has no entry for {host}; add one (ssh-keyscan) or pin the key in host_key"
    )]
    HostKeyUnknown {
        target: String,
        host: String,
        seen: String,
        known_hosts: PathBuf,
    },

    #[error(
        "host_key of {target} is invalid ({value:?}): {reason}; give an OpenSSH public key line or a SHA256: fingerprint"
    )]
    HostKeyPolicy {
        target: String,
        value: String,
        reason: String,
    },

    #[error("cannot read known_hosts file {path}: {reason}")]
    KnownHosts { path: PathBuf, reason: String },

    #[error("cannot load identity file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },

    #[error("identity file {path} is encrypted; set identity_passphrase_file")]
    KeyEncrypted { path: PathBuf },

    #[error("cannot read passphrase file {path}: {reason}")]
    PassphraseFile { path: PathBuf, reason: String },

    #[error(
        "{target} rejected public key authentication of user {user} with key {key}; add its public key to the user's authorized_keys"
    )]
    Auth {
        target: String,
        user: String,
        key: PathBuf,
    },

    #[error("connection to {target} lost: {reason}")]
    Disconnected { target: String, reason: String },

    #[error("ssh protocol error with {target}: {reason}")]
    Protocol { target: String, reason: String },

    #[error("channel to {target} failed: {reason}")]
    Channel { target: String, reason: String },

    #[error("command on {target} timed out: it did not finish within {} and was stopped: {command}", burrow_core::exec::humanize(*.after))]
    ExecTimeout {
        target: String,
        command: String,
        after: Duration,
    },

    #[error("command on {target} was stopped because burrow is stopping: {command}")]
    ExecCancelled { target: String, command: String },

    #[error("i/o error while streaming command {command:?} on {target}: {reason}")]
    Stream {
        target: String,
        command: String,
        reason: String,
    },

    #[error("sftp on {target} did not start ({how}, exit status {status}): {detail}")]
    SftpStart {
        target: String,
        /// `subsystem sftp` or `command "..."`.
        how: String,
        /// The command's exit status or signal, `none` when it did not end.
        status: String,
        /// The command's stderr, or what went wrong.
        detail: String,
        /// False when the server or command refused (a retry cannot help).
        temporary: bool,
    },

    #[error("sftp on {target} failed: {reason}")]
    Sftp { target: String, reason: String },
}

impl From<SshError> for burrow_core::RunError {
    fn from(e: SshError) -> Self {
        burrow_core::RunError::classed(e.is_temporary(), e.to_string())
    }
}

impl SshError {
    /// True when the cause is likely to go away by itself (network trouble, a server that
    /// is rebooting); false for configuration problems a retry cannot fix (host key,
    /// authentication, key files).
    pub fn is_temporary(&self) -> bool {
        match self {
            SshError::Connect { .. }
            | SshError::ConnectTimeout { .. }
            | SshError::Disconnected { .. }
            | SshError::Channel { .. }
            | SshError::ExecTimeout { .. }
            | SshError::ExecCancelled { .. }
            | SshError::Stream { .. }
            | SshError::Sftp { .. } => true,
            SshError::SftpStart { temporary, .. } => *temporary,
            SshError::HostKeyMismatch { .. }
            | SshError::HostKeyUnknown { .. }
            | SshError::HostKeyPolicy { .. }
            | SshError::KnownHosts { .. }
            | SshError::KeyFile { .. }
            | SshError::KeyEncrypted { .. }
            | SshError::PassphraseFile { .. }
            | SshError::Auth { .. }
            | SshError::Protocol { .. } => false,
        }
    }

    /// Classifies a russh error on an established connection.
    pub(crate) fn from_russh(target: &str, e: russh::Error) -> SshError {
        let reason = e.to_string().to_lowercase();
        if is_network_error(&e) {
            SshError::Disconnected {
                target: target.to_owned(),
                reason,
            }
        } else {
            SshError::Protocol {
                target: target.to_owned(),
                reason,
            }
        }
    }
}

pub(crate) fn is_network_error(e: &russh::Error) -> bool {
    matches!(
        e,
        russh::Error::IO(_)
            | russh::Error::HUP
            | russh::Error::Disconnect
            | russh::Error::ConnectionTimeout
            | russh::Error::KeepaliveTimeout
            | russh::Error::InactivityTimeout
            | russh::Error::SendError
            | russh::Error::RecvError
            | russh::Error::Elapsed(_)
            | russh::Error::WrongChannel
    )
}
