//! `burrow restore`: a snapshot, a path of it or a dump into a local directory, or a dump
//! through its restore command on the job's server. Nothing is locked and nothing is written
//! to the repository (restic's restore takes no lock either); the repository is found as a
//! run finds it, on the verified volume with its marker checked.

use std::path::{Path, PathBuf};

use burrow_config::Config;
use burrow_core::RunError;
use burrow_core::disk::DiskManager;
use burrow_core::exec::Exec;
use burrow_core::repository::{
    NodeKind, NotRestored, Repositories, Repository, RestoreOutcome, RestoreRequest, SnapshotEntry,
    Verified,
};
use burrow_core::server::Servers;
use serde::Serialize;

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
    /// Only list what would be written, and where; write nothing.
    #[arg(long, short = 'n', conflicts_with_all = ["to_server", "verify"])]
    pub dry_run: bool,
    /// Afterwards read back every restored file and compare it with the snapshot (its size
    /// and each chunk's hash against the stored blob's id).
    #[arg(long, conflicts_with = "to_server")]
    pub verify: bool,
    /// Make the target match the snapshot: afterwards remove what the target holds and the
    /// restored part of the snapshot does not (only inside the target; links are removed,
    /// never followed).
    #[arg(long, conflicts_with_all = ["to_server", "dry_run", "dump"])]
    pub delete: bool,
}

/// What a restore into a directory wrote, and where.
#[derive(Debug, Clone)]
pub struct Restored {
    pub outcome: RestoreOutcome,
    pub target: PathBuf,
    /// The dump restored (as `target/<name>`), when it was one.
    pub dump: Option<String>,
    /// What reading it back found (`--verify`).
    pub verified: Option<Verified>,
    /// What `--delete` removed from the target, and what it could not remove.
    pub deleted: Vec<PathBuf>,
    pub not_deleted: Vec<NotRestored>,
}

/// A [`RestoreRequest`] that owns its parts, to hand to a blocking thread.
struct Owned {
    job: String,
    snapshot: String,
    target: PathBuf,
    path: Option<PathBuf>,
    only_file: bool,
    workers: usize,
}

impl Owned {
    fn of(req: &RestoreRequest<'_>) -> Owned {
        Owned {
            job: req.job.to_owned(),
            snapshot: req.snapshot.to_owned(),
            target: req.target.to_owned(),
            path: req.path.map(Path::to_owned),
            only_file: req.only_file,
            workers: req.workers,
        }
    }

    fn request(&self) -> RestoreRequest<'_> {
        RestoreRequest {
            job: &self.job,
            snapshot: &self.snapshot,
            target: &self.target,
            path: self.path.as_deref(),
            only_file: self.only_file,
            workers: self.workers,
        }
    }
}

/// What to do after a restore: read it back (`--verify`), remove what the snapshot does not
/// hold (`--delete`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Afterwards {
    pub verify: bool,
    pub delete: bool,
}

/// Restores what `req` names into its target (see [`Repository::restore`]), then removes
/// what the snapshot does not hold ([`delete_extra`]) and reads it back
/// ([`Repository::verify`]), as `then` asks.
pub async fn files<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    req: RestoreRequest<'_>,
    then: Afterwards,
) -> Result<Restored, CommandError> {
    let repo = maintain::open_for_job(cfg, ports, req.job).await?;
    let owned = Owned::of(&req);
    let done = blocking(move || -> Result<_, RunError> {
        let req = owned.request();
        let outcome = repo.restore(req)?;
        let (deleted, not_deleted) = match then.delete {
            true => delete_extra(
                &req,
                &repo.entries(req.job, req.snapshot, req.path, true)?.entries,
            ),
            false => (Vec::new(), Vec::new()),
        };
        let verified = then.verify.then(|| repo.verify(req)).transpose()?;
        Ok((outcome, verified, deleted, not_deleted))
    });
    let (outcome, verified, deleted, not_deleted) = done.await??;
    Ok(Restored {
        outcome,
        target: req.target.to_owned(),
        dump: None,
        verified,
        deleted,
        not_deleted,
    })
}

/// Removes from the target of `req` every entry that a restore of `entries` (the restored
/// part of the snapshot) does not put there. The walk starts at the target and never
/// follows a link (a link, like any other entry, is removed or kept, not entered), so
/// nothing outside the target is touched. Returns what was removed and what could not be.
pub fn delete_extra(
    req: &RestoreRequest<'_>,
    entries: &[SnapshotEntry],
) -> (Vec<PathBuf>, Vec<NotRestored>) {
    let keep: std::collections::HashSet<PathBuf> = req.placed(entries).map(|(_, at)| at).collect();
    let (mut removed, mut failed) = (Vec::new(), Vec::new());
    let mut fail = |p: &Path, e: std::io::Error| {
        failed.push(NotRestored {
            path: p.display().to_string(),
            reason: format!("cannot remove it: {e}"),
        });
    };
    let mut dirs = vec![req.target.to_owned()];
    while let Some(dir) = dirs.pop() {
        let listing = match std::fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) => {
                fail(&dir, e);
                continue;
            }
        };
        for entry in listing.flatten() {
            let p = entry.path();
            // The entry's own type: a link to a directory is a link.
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if keep.contains(&p) {
                if is_dir {
                    dirs.push(p);
                }
                continue;
            }
            let gone = if is_dir {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match gone {
                Ok(()) => removed.push(p),
                Err(e) => fail(&p, e),
            }
        }
    }
    removed.sort();
    (removed, failed)
}

/// What a restore would write (`--dry-run`): each entry and where it would go.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub snapshot: String,
    pub entries: Vec<(SnapshotEntry, PathBuf)>,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

/// What [`files`] with `req` would write, and where; nothing is written.
pub async fn plan<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    req: RestoreRequest<'_>,
) -> Result<Planned, CommandError> {
    let repo = maintain::open_for_job(cfg, ports, req.job).await?;
    let owned = Owned::of(&req);
    let found =
        blocking(move || repo.entries(&owned.job, &owned.snapshot, owned.path.as_deref(), true));
    let found = found.await??;
    let mut planned = Planned {
        snapshot: found.snapshot.id,
        entries: Vec::new(),
        files: 0,
        dirs: 0,
        bytes: 0,
    };
    for (e, at) in req.placed(&found.entries) {
        match e.kind {
            NodeKind::Dir => planned.dirs += 1,
            _ => planned.files += 1,
        }
        planned.bytes += e.size;
        planned.entries.push((e.clone(), at));
    }
    Ok(planned)
}

/// Restores the dump `name` of a snapshot as `target/<name>`: it is found in the snapshot
/// (`/burrow-dumps/<name>`), so a dump the config no longer names is found too.
pub async fn dump_to_dir<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    (job, snapshot): (&str, &str),
    name: &str,
    (target, verify): (&Path, bool),
) -> Result<Restored, CommandError> {
    let path = dumps::dump_path(name);
    let req = RestoreRequest {
        path: Some(&path),
        only_file: true,
        ..RestoreRequest::new(job, snapshot, target)
    };
    let then = Afterwards {
        verify,
        delete: false,
    };
    let restored = files(cfg, ports, req, then).await?;
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
    Planned(Planned),
}

/// `burrow restore` with `args`: [`dump_to_server`], [`dump_to_dir`] or [`files`].
pub async fn restore<D: DiskManager, S: Servers, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    args: &RestoreArgs,
) -> Result<RestoreDone, CommandError> {
    let at = (args.job.as_str(), args.snapshot.as_str());
    let target = args.target.as_deref().unwrap_or(Path::new(""));
    let dump = args.dump.as_deref().map(dumps::dump_path);
    let req = RestoreRequest {
        path: dump.as_deref().or(args.path.as_deref()),
        only_file: dump.is_some(),
        workers: args.workers,
        ..RestoreRequest::new(at.0, at.1, target)
    };
    Ok(match args.dump.as_deref() {
        Some(name) if args.to_server => {
            RestoreDone::Command(dump_to_server(cfg, ports, at, name).await?)
        }
        _ if args.dry_run => RestoreDone::Planned(plan(cfg, ports, req).await?),
        Some(name) => {
            let restored = dump_to_dir(cfg, ports, at, name, (target, args.verify));
            RestoreDone::Dir(restored.await?)
        }
        None => {
            let then = Afterwards {
                verify: args.verify,
                delete: args.delete,
            };
            RestoreDone::Dir(files(cfg, ports, req, then).await?)
        }
    })
}
