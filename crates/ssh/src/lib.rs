//! SSH transport (russh): host-key policy, exec channels, an SFTP client and source.
//!
//! [`Session`] is one authenticated connection: commands run on exec channels
//! ([`Session::exec`], [`Session::exec_to_writer`], [`Session::exec_with_stdin`]) and SFTP
//! sessions start on the subsystem or a configured command ([`Session::sftp`]), spoken by
//! burrow's own client ([`Sftp`]).
//! [`SftpSource`] turns an SFTP session into a [`burrow_core::source::Source`]; a server that
//! stops answering costs it a bounded time (`channel`). [`SshServers`] is core's server port
//! on both: a [`Session`] is its `Connection`, an [`SftpSource`] a connection's files.

mod channel;
mod error;
mod hostkey;
pub mod keys;
mod port;
mod prefetch;
mod session;
mod sftp;
mod source;
pub mod trust;
mod wire;

pub use channel::{DEFAULT_IO_TIMEOUT, MAX_STALLS};
pub use error::SshError;
pub use hostkey::{fetch_host_key, pinned_accepts};
pub use port::SshServers;
pub use prefetch::PrefetchLimits;
pub use session::Session;
pub use sftp::{Sftp, SftpLimits};
pub use source::SftpSource;
pub use wire::{Attrs, DirEntry};
