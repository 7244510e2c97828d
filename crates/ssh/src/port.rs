//! burrow-core's server port over SSH: a [`Session`] is the connection, an [`SftpSource`]
//! on a channel of its own the server's files.

use burrow_core::RunError;
use burrow_core::server::{Connection, FilesRequest, Servers, SshTarget};

use crate::{Session, SftpSource};

impl Connection for Session {
    fn name(&self) -> &str {
        Session::name(self)
    }

    fn is_closed(&self) -> bool {
        Session::is_closed(self)
    }

    async fn close(&self) {
        Session::close(self).await;
    }
}

/// Servers reached over SSH with burrow's embedded client.
#[derive(Debug, Clone, Copy, Default)]
pub struct SshServers;

impl Servers for SshServers {
    type Connection = Session;
    type Files = SftpSource;

    async fn connect(&self, target: &SshTarget) -> Result<Session, RunError> {
        Ok(Session::connect(target).await?)
    }

    async fn files(&self, session: &Session, r: FilesRequest) -> Result<SftpSource, RunError> {
        Ok(SftpSource::start(
            session,
            r.io_timeout,
            r.cancel,
            tokio::runtime::Handle::current(),
            &r.roots,
            r.excludes,
        )
        .await?)
    }
}
