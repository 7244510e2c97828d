//! SSH transport (russh): host-key policy, exec channels, SFTP source.
//!
//! [`Session`] is one authenticated connection: commands run on exec channels
//! ([`Session::exec`], [`Session::exec_to_writer`], [`Session::exec_with_stdin`]) and SFTP
//! sessions start on the subsystem or a configured command ([`Session::sftp`]).
//! [`SftpSource`] turns an SFTP session into a [`burrow_core::source::Source`]; a server that
//! stops answering costs it a bounded time (`channel`).

mod channel;
mod error;
mod hostkey;
mod prefetch;
mod session;
mod source;

pub use channel::{DEFAULT_IO_TIMEOUT, MAX_STALLS};
pub use error::SshError;
pub use hostkey::HostKeyPolicy;
pub use prefetch::{MAX_OPEN_HANDLES, PrefetchLimits};
pub use russh_sftp::client::SftpSession;
pub use session::{ExecOutput, KILL_GRACE, OUTPUT_TAIL, Session, SshTarget};
pub use source::SftpSource;
