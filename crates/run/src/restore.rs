//! `burrow restore`: a snapshot, a path of it or a dump into a local directory, or a dump
//! through its restore command on the job's server. Nothing is locked and nothing is written
//! to the repository (restic's restore takes no lock either); the repository is found as a
//! run finds it, on the verified volume with its marker checked.

use std::path::{Path, PathBuf};

use burrow_config::Config;
use burrow_core::RunError;
use burrow_core::disk::DiskManager;
use burrow_core::exec::Exec;
use burrow_core::repository::{Repositories, Repository, RestoreOutcome, RestoreRequest};
use burrow_core::server::Servers;

use crate::command::{self, CommandError};
use crate::host::Host;
use crate::{Ports, blocking, dumps, maintain};

/// `burrow restore`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    pub job: String,
    /// A snapshot id (or its first characters), or `latest`.
    #[arg(default_value = "latest")]
    pub snapshot: String,
    /// Directory to restore into (created if missing); nothing is written outside it.
    #[arg(long, required_unless_present = "to_server")]
    pub target: Option<PathBuf>,
    /// Restore only this path of the snapshot.
    #[arg(long, conflicts_with = "dump")]
    pub path: Option<PathBuf>,
    /// Restore this dump (its `dumps[].name`; found in the snapshot, `/burrow-dumps/NAME`).
    #[arg(long)]
    pub dump: Option<String>,
    /// Stream the dump into its restore_command on the job's server.
    #[arg(long, requires = "dump", conflicts_with = "target")]
    pub to_server: bool,
    /// Threads writing file contents (default: one per core).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub workers: usize,
}

/// What a restore into a directory wrote, and where.
#[derive(Debug, Clone)]
pub struct Restored {
    pub outcome: RestoreOutcome,
    pub target: PathBuf,
    /// The dump restored (as `target/<name>`), when it was one.
    pub dump: Option<String>,
}

/// Restores what `req` names into its target (see [`Repository::restore`]).
pub async fn files<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    req: RestoreRequest<'_>,
) -> Result<Restored, CommandError> {
    command::job(cfg, req.job)?;
    let repo = maintain::open(cfg, ports).await?;
    let (job, snapshot, target) = (
        req.job.to_owned(),
        req.snapshot.to_owned(),
        req.target.to_owned(),
    );
    let path = req.path.map(Path::to_owned);
    let (only_file, workers) = (req.only_file, req.workers);
    let outcome = blocking(move || {
        repo.restore(RestoreRequest {
            job: &job,
            snapshot: &snapshot,
            target: &target,
            path: path.as_deref(),
            only_file,
            workers,
        })
    })
    .await??;
    Ok(Restored {
        outcome,
        target: req.target.to_owned(),
        dump: None,
    })
}

/// Restores the dump `name` of a snapshot as `target/<name>`: it is found in the snapshot
/// (`/burrow-dumps/<name>`), so a dump the config no longer names is found too.
pub async fn dump_to_dir<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    (job, snapshot): (&str, &str),
    name: &str,
    target: &Path,
) -> Result<Restored, CommandError> {
    let path = dumps::dump_path(name);
    let req = RestoreRequest {
        path: Some(&path),
        only_file: true,
        ..RestoreRequest::new(job, snapshot, target)
    };
    let restored = files(cfg, ports, req).await?;
    Ok(Restored {
        dump: Some(name.to_owned()),
        ..restored
    })
}

/// A dump fed to its restore command.
#[derive(Debug, Clone)]
pub struct DumpRestored {
    pub name: String,
    pub bytes: u64,
    pub command: String,
    /// Where the command ran: the server's name, or "this machine".
    pub host: String,
}

/// Streams the dump from the repository into its `restore_command` on the job's server (or
/// here, for a local job), without a temporary copy. The command's failure is the error.
pub async fn dump_to_server<D: DiskManager, S: Servers, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    (job, snapshot): (&str, &str),
    name: &str,
) -> Result<DumpRestored, CommandError> {
    let job = command::job(cfg, job)?;
    let dump = command::dump(job, name)?;
    let Some(command) = dump.restore_command.clone() else {
        return Err(CommandError::Usage(format!(
            "dump {name} has no restore_command: add one to jobs.{}.dumps, or use --target DIR",
            job.name
        )));
    };
    let repo = maintain::open(cfg, ports).await?;
    let host = match cfg.server_of(job) {
        None => Host::Local,
        Some(s) => Host::Remote(
            ports
                .servers
                .connect(&s.ssh)
                .await
                .map_err(|e| e.context(format!("cannot connect to server {}", s.ssh.name)))?,
        ),
    };
    let described = host.describe().to_owned();
    tracing::info!("restoring dump {name} into `{command}` on {described}");
    let fed = feed(
        &host,
        &command,
        repo,
        (&job.name, snapshot),
        dumps::dump_path(&dump.name),
    );
    let result = fed.await;
    host.close().await;
    Ok(DumpRestored {
        name: name.to_owned(),
        bytes: result?,
        command,
        host: described,
    })
}

/// Runs `command` on `host` with the file `path` of the snapshot as its standard input.
async fn feed<C: burrow_core::server::Connection, R: Repository>(
    host: &Host<C>,
    command: &str,
    repo: R,
    (job, snapshot): (&str, &str),
    path: PathBuf,
) -> Result<u64, RunError> {
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let (job, snapshot) = (job.to_owned(), snapshot.to_owned());
    let handle = tokio::runtime::Handle::current();
    let feeder = tokio::task::spawn_blocking(move || {
        let mut w = tokio_util::io::SyncIoBridge::new_with_handle(writer, handle);
        repo.dump(&job, &snapshot, &path, &mut w)
    });
    let out = host.exec_with_stdin(command, reader).await;
    let fed = feeder
        .await
        .map_err(|e| RunError::permanent(format!("the dump reader failed: {e}")))?;
    let n = fed.map_err(|e| e.context("reading the dump failed"))?;
    let out = out.map_err(|e| e.context(format!("`{command}` failed")))?;
    if !out.success() {
        return Err(RunError::permanent(format!(
            "`{command}` failed: {} {}",
            out.status_text(),
            out.stderr_text()
        )));
    }
    Ok(n)
}

/// What `burrow restore` did: files or a dump into a directory, or a dump into its
/// restore command.
#[derive(Debug, Clone)]
pub enum RestoreDone {
    Dir(Restored),
    Command(DumpRestored),
}

/// `burrow restore` with `args`: [`dump_to_server`], [`dump_to_dir`] or [`files`].
pub async fn restore<D: DiskManager, S: Servers, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    args: &RestoreArgs,
) -> Result<RestoreDone, CommandError> {
    let at = (args.job.as_str(), args.snapshot.as_str());
    let target = args.target.as_deref().unwrap_or(Path::new(""));
    Ok(match args.dump.as_deref() {
        Some(name) if args.to_server => {
            RestoreDone::Command(dump_to_server(cfg, ports, at, name).await?)
        }
        Some(name) => RestoreDone::Dir(dump_to_dir(cfg, ports, at, name, target).await?),
        None => {
            let req = RestoreRequest {
                path: args.path.as_deref(),
                workers: args.workers,
                ..RestoreRequest::new(at.0, at.1, target)
            };
            RestoreDone::Dir(files(cfg, ports, req).await?)
        }
    })
}
