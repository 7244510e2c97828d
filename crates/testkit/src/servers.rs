//! A fake of core's server port for in-process runs: each server's commands are answered by
//! a [`ScriptedExec`], its files are this machine's (read by core's `LocalSource`, so the
//! walk is the real one), and a server can be unreachable or lose the connection during the
//! pull.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_core::RunError;
use burrow_core::exec::{Exec, ExecOutput};
use burrow_core::local::LocalSource;
use burrow_core::server::{Connection, FilesRequest, Servers, SshTarget};
use burrow_core::source::{Entry, Source, WalkContext};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::exec::ScriptedExec;

#[derive(Debug, Clone)]
struct Server {
    exec: Arc<ScriptedExec>,
    reachable: bool,
    drops_during_pull: bool,
}

/// The servers of an in-process test, by the name in the config.
#[derive(Debug, Clone, Default)]
pub struct FakeServers {
    servers: Arc<Mutex<BTreeMap<String, Server>>>,
    connects: Arc<AtomicUsize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeServers {
    /// Server `name` answers commands as `exec` does.
    pub fn with(self, name: &str, exec: Arc<ScriptedExec>) -> Self {
        let server = Server {
            exec,
            reachable: true,
            drops_during_pull: false,
        };
        lock(&self.servers).insert(name.to_owned(), server);
        self
    }

    /// Connecting to `name` fails as a server that is down does (a temporary error).
    pub fn unreachable(self, name: &str) -> Self {
        self.change(name, |s| s.reachable = false)
    }

    /// The connection to `name` is lost while its files are read.
    pub fn drops_during_pull(self, name: &str) -> Self {
        self.change(name, |s| s.drops_during_pull = true)
    }

    /// Connections made so far, to any server.
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::Relaxed)
    }

    fn change(self, name: &str, f: impl FnOnce(&mut Server)) -> Self {
        if let Some(s) = lock(&self.servers).get_mut(name) {
            f(s);
        }
        self
    }
}

/// A connection to a [`FakeServers`] server.
#[derive(Debug)]
pub struct FakeConnection {
    name: String,
    exec: Arc<ScriptedExec>,
    closed: Arc<AtomicBool>,
    drops_during_pull: bool,
}

impl Exec for FakeConnection {
    fn describe(&self) -> &str {
        self.exec.describe()
    }

    async fn exec(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput, RunError> {
        self.exec.exec(cmd, timeout).await
    }

    async fn exec_to_writer<W: AsyncWrite + Unpin + Send>(
        &self,
        cmd: &str,
        out: &mut W,
        timeout: Duration,
        cancel: impl Future<Output = ()> + Send,
    ) -> Result<ExecOutput, RunError> {
        self.exec.exec_to_writer(cmd, out, timeout, cancel).await
    }

    async fn exec_with_stdin<R: AsyncRead + Unpin + Send>(
        &self,
        cmd: &str,
        input: R,
    ) -> Result<ExecOutput, RunError> {
        self.exec.exec_with_stdin(cmd, input).await
    }
}

impl Connection for FakeConnection {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// The files of a fake server: this machine's, and the connection lost during the walk
/// when the server was set up so.
pub struct FakeFiles {
    local: LocalSource,
    lost: Option<Arc<AtomicBool>>,
}

impl Source for FakeFiles {
    fn entries(&self, ctx: WalkContext) -> Box<dyn Iterator<Item = Entry> + Send> {
        if let Some(lost) = &self.lost {
            lost.store(true, Ordering::Relaxed);
        }
        self.local.entries(ctx)
    }
}

impl Servers for FakeServers {
    type Connection = FakeConnection;
    type Files = FakeFiles;

    async fn connect(&self, target: &SshTarget) -> Result<FakeConnection, RunError> {
        let server = lock(&self.servers).get(&target.name).cloned();
        let server = server
            .ok_or_else(|| RunError::permanent(format!("no fake server named {}", target.name)))?;
        if !server.reachable {
            return Err(RunError::temporary(format!(
                "cannot reach {}: connection refused",
                target.addr()
            )));
        }
        self.connects.fetch_add(1, Ordering::Relaxed);
        Ok(FakeConnection {
            name: target.name.clone(),
            exec: server.exec,
            closed: Arc::default(),
            drops_during_pull: server.drops_during_pull,
        })
    }

    async fn files(&self, c: &FakeConnection, r: FilesRequest) -> Result<FakeFiles, RunError> {
        Ok(FakeFiles {
            local: LocalSource::new(&r.roots, r.excludes),
            lost: c.drops_during_pull.then(|| c.closed.clone()),
        })
    }
}
