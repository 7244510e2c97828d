//! One run of a job, from the backup volume to the retention policy:
//!
//! ```text
//! lock ─► volume ready? ─┬► repository opened + marker ─┬─► arm dead-man ─► before
//!   │ no: skipped (75)    └► connect, start SFTP ────────┘ fail: failed       │ fail ─┐
//!   │                         wrong disk: skipped (the connection is closed)   ▼       │
//! dumps spooled ─► pull + snapshot ─► after (always, once before started) ─► retention  │
//!                                      ▲─────────────────────────────────────────────────┘
//! ```
//!
//! The repository opens (a key derivation of about half a second) while the server is
//! reached; nothing is run or read on the server before both are done.
//!
//! Every outcome ends in a [`RunSummary`] (status ok / partial / warning / failed / skipped:
//! warning when the snapshot is complete but retention failed) and the
//! log tail for monitoring; nothing here panics on bad input or a vanished server.

pub mod anomaly;
pub mod browse;
pub mod command;
pub mod doctor;
pub mod dumps;
pub mod hooks;
pub mod host;
pub mod log;
pub mod maintain;
pub mod place;
pub mod restore;
pub mod show;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use burrow_config::{Config, Job, Server};
use burrow_core::disk::DiskManager;
use burrow_core::exclude::Excludes;
use burrow_core::exec::Exec;
use burrow_core::local::LocalSource;
use burrow_core::repository::{
    BackupOutcome, BackupRequest, CheckReport, PackRepair, PendingSnapshot, Repositories,
    Repository, TAG_ANOMALY, TAG_PARTIAL,
};
use burrow_core::retention::Policy;
use burrow_core::run::{CHECK_RUN, ErrorItem, RunControl, RunReport, Runner};
use burrow_core::server::{Connection, FilesRequest, Servers};
use burrow_core::source::Source;
use burrow_core::{ErrorClass, Problems, RunError, RunStatus, RunSummary, short_id};
use chrono::Utc;
use tokio::sync::watch;

use crate::host::Host;
use crate::log::RunLog;
use crate::place::RepoLock;

/// The adapters a run talks through: the backup disk (given when the config has `disk`),
/// the servers and the repositories.
pub struct Ports<'a, D, S, R> {
    pub disk: Option<&'a D>,
    pub servers: &'a S,
    pub repos: &'a R,
}

impl<D, S, R> Clone for Ports<'_, D, S, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D, S, R> Copy for Ports<'_, D, S, R> {}

/// burrow-run's runs on the configured disk, servers and repositories: the daemon's real
/// [`Runner`].
pub struct Runs<D, S, R> {
    pub cfg: Arc<Config>,
    pub disk: Option<Arc<D>>,
    pub servers: S,
    pub repos: R,
}

impl<D: DiskManager, S: Servers, R: Repositories> Runner for Runs<D, S, R> {
    async fn run(&self, job: &str, ctl: RunControl) -> RunReport {
        let ports = Ports {
            disk: self.disk.as_deref(),
            servers: &self.servers,
            repos: &self.repos,
        };
        if job == CHECK_RUN {
            run_check(&self.cfg, ports, ctl).await
        } else {
            run_job(&self.cfg, ports, job, ctl).await
        }
    }
}

/// This machine's host name, for the snapshots of local jobs.
pub fn local_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

struct Run<'a> {
    cfg: &'a Config,
    job: &'a Job,
    log: RunLog,
    started: chrono::DateTime<Utc>,
    t0: Instant,
    ctl: RunControl,
}

impl Run<'_> {
    /// The end of a run without a snapshot: skipped or failed, as the error's class says.
    fn end(&self, e: RunError) -> RunReport {
        match e.class {
            ErrorClass::Skip => self.log.warn(format!("run skipped: {e}")),
            _ => self.log.error(format!("run failed: {e}")),
        }
        RunReport {
            summary: RunSummary::without_snapshot(
                &self.job.name,
                &self.ctl.run_id,
                &self.started.to_rfc3339(),
                &e,
                self.t0.elapsed().as_secs_f64(),
            ),
            log: self.log.tail(),
        }
    }
}

/// Runs `job_name` once.
pub async fn run_job<D: DiskManager, S: Servers, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    job_name: &str,
    ctl: RunControl,
) -> RunReport {
    let started = Utc::now();
    let Some(job) = cfg.job(job_name) else {
        let log = RunLog::new(job_name, &ctl.run_id, "");
        log.error(format!(
            "no job named {job_name:?} in {}",
            cfg.file.display()
        ));
        return RunReport {
            summary: RunSummary::without_snapshot(
                job_name,
                &ctl.run_id,
                &started.to_rfc3339(),
                &RunError::permanent(format!("no job named {job_name:?}")),
                0.0,
            ),
            log: log.tail(),
        };
    };
    let server = cfg.server_of(job);
    let log = RunLog::new(
        &job.name,
        &ctl.run_id,
        server.map_or("local", |s| s.ssh.name.as_str()),
    );
    let run = Run {
        cfg,
        job,
        log,
        started,
        t0: Instant::now(),
        ctl,
    };
    run.log.info(format!(
        "run {} of job {} started",
        run.ctl.run_id, job.name
    ));
    burrow_core::mem::reset_peak();
    let mut report = run_inner(&run, server, ports).await;
    report.summary.peak_rss_bytes = burrow_core::mem::peak_rss();
    if let Some(b) = report.summary.peak_rss_bytes {
        tracing::debug!(job = %job.name, "peak memory {}", burrow_core::bytes::human(b));
    }
    report
}

/// The boxes of the picture above, in order: the lock, the volume, the repository and the
/// server at once, then the server's part ([`on_server`]) and what follows a saved snapshot
/// ([`saved`]).
async fn run_inner<D: DiskManager, S: Servers, R: Repositories>(
    run: &Run<'_>,
    server: Option<&Server>,
    ports: Ports<'_, D, S, R>,
) -> RunReport {
    let _lock = match RepoLock::acquire(&run.cfg.state_dir) {
        Ok(l) => l,
        Err(e) => return run.end(e),
    };
    let place = match place::locate(run.cfg, ports.disk).await {
        Ok(p) => p,
        Err(e) => return run.end(e),
    };
    // The server is reached while the repository opens: the key derivation is the longest
    // step of a run that finds nothing new, and neither waits for the other.
    let connecting = server.map(|s| Connecting::start(run, s, ports.servers));
    let (repo, shared) = match open_repository(run, &place, ports.repos).await {
        Ok(opened) => opened,
        Err(e) => {
            if let Some(c) = connecting {
                c.abandon().await;
            }
            return run.end(e);
        }
    };
    let (host, sftp) = match connecting {
        None => (Host::Local, None),
        Some(c) => match c.finish().await {
            Ok(r) => (Host::Remote(r.connection), r.files),
            Err(e) => return run.end(e),
        },
    };
    let problems = Problems::new();
    let (pulled, errors) = on_server(run, &host, sftp, &place, repo, &problems).await;
    match pulled {
        Ok(pulled) => saved(run, pulled, errors, &problems, shared).await,
        Err(e) => {
            let mut report = run.end(e);
            report.summary.errors = errors;
            report
        }
    }
}

/// Everything that happens on the server, ended by closing the session: the dead-man's
/// switch, `before`, dumps and files into a snapshot, and `after` (always, once `before`
/// started). Returns the pull's result and the errors of `after`.
async fn on_server<C: Connection, F: Source, R: Repository>(
    run: &Run<'_>,
    host: &Host<C>,
    sftp: Option<Result<F, RunError>>,
    place: &place::Place,
    repo: R,
    problems: &Problems,
) -> (Result<Pulled<R>, RunError>, Vec<ErrorItem>) {
    let (job, log) = (run.job, &run.log);
    let mut deadman = None;
    if let Some(deadline) = job.after_deadline
        && !job.after.is_empty()
    {
        let armed = hooks::DeadMan::arm(
            host,
            &run.ctl.run_id,
            deadline,
            &job.after,
            job.hook_timeout,
            job.before.is_empty(),
            log,
        )
        .await;
        match armed {
            Ok(d) => deadman = Some(d),
            Err(e) => {
                host.close().await;
                let e = RunError {
                    message: format!("{e}; nothing was stopped"),
                    ..e
                };
                return (Err(e), Vec::new());
            }
        }
    }
    let (before_ok, before_started) =
        hooks::run_before(host, &job.before, job.hook_timeout, deadman.as_ref(), log).await;
    let pulled = if !before_ok {
        Err(RunError::permanent(
            "a before command failed; nothing was pulled",
        ))
    } else if *run.ctl.cancel.borrow() {
        Err(RunError::permanent(
            "burrow is shutting down; nothing was pulled",
        ))
    } else {
        pull(run, host, sftp, place, repo, problems)
            .await
            .map_err(|e| disk_gone(place, e))
    };

    let mut errors = Vec::new();
    // The obligation: once a before command started (or there were none), after runs.
    if before_started || job.before.is_empty() {
        // With the dead-man's switch, the commands run on the server in a process of their
        // own that a dying burrow cannot cut off (hooks.rs).
        let ok = match deadman.take() {
            Some(d) => d.run_after(host, &job.after, job.hook_timeout, log).await,
            None => hooks::run_after(host, &job.after, job.hook_timeout, log).await,
        };
        if !ok {
            errors.push(ErrorItem {
                path: "after".into(),
                message: "an after command failed: check the service on the server".into(),
            });
        }
    }
    host.close().await;
    (pulled, errors)
}

/// A pull that failed because the backup disk went away says so (the disk is absent, not the
/// repository broken); what the repository said next is kept in the debug log.
fn disk_gone(place: &place::Place, e: RunError) -> RunError {
    if place.volume.is_none() || place.repo_path.exists() {
        return e;
    }
    tracing::debug!(error = %e, "the repository failed after the disk went away");
    RunError::permanent(
        "the backup disk went away during the run (nothing was written elsewhere; earlier \
         snapshots are intact)",
    )
}

/// A snapshot is saved: its problems, the anomaly guard, retention, and the summary.
async fn saved<R: Repository>(
    run: &Run<'_>,
    pulled: Pulled<R>,
    mut errors: Vec<ErrorItem>,
    problems: &Problems,
    shared: R::Lock,
) -> RunReport {
    let (job, log) = (run.job, &run.log);
    let Pulled { out, repo, anomaly } = pulled;
    for p in problems.snapshot() {
        log.warn(format!(
            "not backed up: {}: {}",
            p.path.display(),
            p.message
        ));
        errors.insert(0, ErrorItem::from(&p));
    }
    log.info(format!(
        "snapshot {} saved: {} new, {} changed, {} unmodified files; {} bytes read, {} bytes added",
        short_id(&out.snapshot_id),
        out.files_new,
        out.files_changed,
        out.files_unmodified,
        out.bytes_read,
        out.bytes_added
    ));
    let mut status = if out.partial || !errors.is_empty() {
        RunStatus::Partial
    } else {
        RunStatus::Ok
    };
    let pauses = anomaly::PauseFile::new(&run.cfg.state_dir);
    if let Some(reason) = &anomaly {
        status = RunStatus::Anomaly;
        pause_retention(run, &pauses, &out.snapshot_id, reason);
        errors.insert(
            0,
            ErrorItem {
                path: "anomaly".into(),
                message: reason.clone(),
            },
        );
    }
    drop(shared);
    let mut reason = None;
    if let Some(keep) = job.retention
        && let Some(msg) = retention_unless_paused(job, keep, repo, &pauses, &anomaly, log).await
    {
        log.error(&msg);
        if status == RunStatus::Ok {
            status = RunStatus::Warning;
        }
        reason = Some(msg);
    }
    log.info(format!("run finished: {}", status.as_str()));
    RunReport {
        summary: RunSummary {
            job: job.name.clone(),
            run_id: run.ctl.run_id.clone(),
            status,
            started: run.started.to_rfc3339(),
            snapshot_id: Some(out.snapshot_id),
            files_new: out.files_new,
            files_changed: out.files_changed,
            files_unmodified: out.files_unmodified,
            dirs: out.dirs,
            bytes_read: out.bytes_read,
            bytes_added: out.bytes_added,
            duration_s: run.t0.elapsed().as_secs_f64(),
            peak_rss_bytes: None,
            errors,
            reason,
            error_class: None,
        },
        log: log.tail(),
    }
}

/// The anomaly guard fired on `snapshot`: says what to do and pauses the job's retention.
fn pause_retention(run: &Run<'_>, pauses: &anomaly::PauseFile, snapshot: &str, reason: &str) {
    let (job, log) = (run.job, &run.log);
    log.error(format!(
        "anomaly: {reason}; the snapshot {} is saved and tagged `{}`; retention of job {} \
         is paused: if the change is real run `burrow accept {}`, otherwise restore from \
         an earlier snapshot",
        short_id(snapshot),
        TAG_ANOMALY,
        job.name,
        job.name
    ));
    let paused = anomaly::Paused {
        snapshot: snapshot.to_owned(),
        since: Utc::now().to_rfc3339(),
        reason: reason.to_owned(),
    };
    if let Err(e) = pauses.pause(&job.name, paused) {
        log.error(format!("cannot record the retention pause: {e}"));
    }
}

/// Retention, unless an anomaly paused it (now or in an earlier run); a failure is returned
/// as the message for the run's summary.
async fn retention_unless_paused<R: Repository>(
    job: &Job,
    keep: Policy,
    repo: R,
    pauses: &anomaly::PauseFile,
    anomaly: &Option<String>,
    log: &RunLog,
) -> Option<String> {
    match pauses.get(&job.name) {
        Ok(Some(p)) => {
            if anomaly.is_none() {
                log.warn(format!(
                    "retention of job {} is paused since {} (anomaly in snapshot {}: {}): \
                     run `burrow accept {}` or `burrow forget {}`",
                    job.name,
                    p.since,
                    short_id(&p.snapshot),
                    p.reason,
                    job.name,
                    job.name
                ));
            }
            None
        }
        paused => {
            if let Err(e) = &paused {
                log.warn(format!("{e}; retention goes on"));
            }
            retention(job, keep, repo, log).await
        }
    }
}

/// Forget (and prune if something was forgotten). A failure is returned as the message for
/// the run's summary: the new snapshot is already saved.
async fn retention<R: Repository>(
    job: &Job,
    keep: Policy,
    repo: R,
    log: &RunLog,
) -> Option<String> {
    let job_name = job.name.clone();
    let res = blocking(move || -> Result<usize, RunError> {
        // restic's exclusive lock: refused (restic or another burrow at work) = retention fails.
        let _exclusive = repo.lock(true)?;
        let plan = repo.forget(&job_name, &keep)?;
        if !plan.remove.is_empty() {
            repo.prune()?;
        }
        Ok(plan.remove.len())
    })
    .await
    .and_then(|r| r);
    match res {
        Ok(removed) => {
            log.info(format!("retention: {removed} snapshot(s) forgotten"));
            None
        }
        Err(e) => Some(format!("retention failed (the new snapshot is safe): {e}")),
    }
}

/// `f` on a blocking thread; a panic in it is a permanent error of the run.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RunError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RunError::permanent(format!("repository task failed: {e}")))
}

/// Takes restic's lock on the repository (shared or exclusive) on a blocking thread.
async fn lock_repo<R: Repository>(repo: R, exclusive: bool) -> Result<(R, R::Lock), RunError> {
    let (repo, lock) = blocking(move || {
        let lock = repo.lock(exclusive);
        (repo, lock)
    })
    .await?;
    Ok((repo, lock?))
}

/// Opens the repository on the located volume, checks its marker, takes restic's shared
/// lock (held until retention: restic and burrows of other state dirs see the backup and do
/// not prune under it; its settle runs while the backup reads, `Repository::lock_for_backup`) and
/// tidies what interrupted writes left.
async fn open_repository<R: Repositories>(
    run: &Run<'_>,
    place: &place::Place,
    repos: &R,
) -> Result<(R::Repo, <R::Repo as Repository>::Lock), RunError> {
    let repo = place.open(repos).await?;
    let (repo, shared) = blocking(move || {
        let guard = repo.lock_for_backup();
        (repo, guard)
    })
    .await?;
    let shared = shared?;
    run.log
        .info(format!("repository {} ready", place.repo_path.display()));
    let repo = tidy(repo, &run.log, true).await?;
    Ok((repo, shared))
}

/// The server side of a run being set up: the connection and, for a job with paths, its
/// files (opened here, read once the before commands and dumps are done).
struct Connecting<S: Servers>(tokio::task::JoinHandle<Result<Remote<S>, RunError>>);

struct Remote<S: Servers> {
    connection: S::Connection,
    /// `None` for a job of dumps only; files that failed to open fail the pull, after the
    /// before commands, as it always did.
    files: Option<Result<S::Files, RunError>>,
}

impl<S: Servers> Connecting<S> {
    fn start(run: &Run<'_>, server: &Server, servers: &S) -> Connecting<S> {
        run.log.info(format!(
            "connecting to {}@{}:{}",
            server.ssh.user, server.ssh.host, server.ssh.port
        ));
        let target = server.ssh.clone();
        let io_timeout = server.io_timeout;
        let (roots, exclude) = (run.job.paths.clone(), run.job.exclude.clone());
        let cancel = run.ctl.cancel.clone();
        let servers = servers.clone();
        Connecting(tokio::spawn(async move {
            let connection = servers
                .connect(&target)
                .await
                .map_err(|e| e.context(format!("cannot connect to server {}", target.name)))?;
            if roots.is_empty() {
                return Ok(Remote {
                    connection,
                    files: None,
                });
            }
            let files = match Excludes::new(&exclude) {
                Err(e) => Err(RunError::permanent(e.to_string())),
                Ok(excludes) => {
                    let request = FilesRequest {
                        roots,
                        excludes,
                        io_timeout,
                        cancel,
                    };
                    servers
                        .files(&connection, request)
                        .await
                        .map_err(|e| e.context("cannot start SFTP"))
                }
            };
            Ok(Remote {
                connection,
                files: Some(files),
            })
        }))
    }

    async fn finish(self) -> Result<Remote<S>, RunError> {
        self.0
            .await
            .unwrap_or_else(|e| Err(RunError::permanent(format!("connect task failed: {e}"))))
    }

    /// The run ended before it needed the server: stops the attempt and closes what it
    /// had opened.
    async fn abandon(self) {
        self.0.abort();
        if let Ok(Ok(remote)) = self.0.await {
            drop(remote.files);
            remote.connection.close().await;
        }
    }
}

/// Dumps, then files, into one snapshot, saved with its final tags (`partial`, `anomaly`).
async fn pull<C: Connection, F: Source, R: Repository>(
    run: &Run<'_>,
    host: &Host<C>,
    sftp: Option<Result<F, RunError>>,
    place: &place::Place,
    repo: R,
    problems: &Problems,
) -> Result<Pulled<R>, RunError> {
    let (job, log) = (run.job, &run.log);
    let spooled = match job.dumps.is_empty() {
        true => None,
        false => Some(
            dumps::spool(
                host,
                job,
                &place.spool_dir,
                &run.ctl.run_id,
                problems,
                log,
                &run.ctl.cancel,
            )
            .await?,
        ),
    };
    let source = source_of(job, host, sftp)?;
    let extra = spooled
        .as_ref()
        .map(|s| s.entries(&run.ctl.bytes_read))
        .unwrap_or_default();
    let paths = snapshot_paths(job, !extra.is_empty())?;
    let dumps_failed = problems
        .snapshot()
        .iter()
        .any(|p| p.path.starts_with(dumps::DUMPS_ROOT));
    log.info(format!(
        "pulling {} path(s) from {}",
        job.paths.len(),
        host.describe()
    ));
    let request = Archive {
        job: job.name.clone(),
        host: host.name(),
        paths,
        source,
        extra,
        problems: problems.clone(),
        partial: dumps_failed,
        bytes_read: run.ctl.bytes_read.clone(),
    };
    let archived = archive(request, repo, run.ctl.cancel.clone()).await;
    drop(spooled);
    let (pending, repo) = archived?;
    if host.is_closed() {
        // Reads failed because the server went away, not because files were unreadable:
        // this snapshot would miss data it should have, so it is never written.
        return Err(RunError::temporary(format!(
            "the connection to {} was lost during the pull; no snapshot was saved",
            host.name()
        )));
    }
    let anomaly = anomaly::judge(&pending.counts(), &job.anomaly);
    let tags: Vec<&str> = [
        pending.partial().then_some(TAG_PARTIAL),
        anomaly.is_some().then_some(TAG_ANOMALY),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (out, repo) = blocking(move || {
        let out = repo.commit(pending, &tags);
        (out, repo)
    })
    .await?;
    let out = out.map_err(|e| e.context("saving the snapshot failed"))?;
    Ok(Pulled { out, repo, anomaly })
}

/// The paths the snapshot names: the job's, and the dumps' directory when a dump was
/// spooled; none is an error.
fn snapshot_paths(job: &Job, dumps: bool) -> Result<Vec<PathBuf>, RunError> {
    let mut paths = job.paths.clone();
    if dumps {
        paths.push(PathBuf::from(dumps::DUMPS_ROOT));
    }
    if paths.is_empty() {
        return Err(RunError::permanent(
            "every dump failed and the job has no paths: nothing to store",
        ));
    }
    Ok(paths)
}

/// Where a job's files come from: this machine, the server's SFTP (started while the
/// repository opened), or nothing for a job of dumps only.
fn source_of<C: Connection, F: Source>(
    job: &Job,
    host: &Host<C>,
    sftp: Option<Result<F, RunError>>,
) -> Result<Box<dyn Source>, RunError> {
    Ok(match (host, sftp) {
        (Host::Local, _) => Box::new(LocalSource::new(
            &job.paths,
            Excludes::new(&job.exclude).map_err(|e| RunError::permanent(e.to_string()))?,
        )),
        (Host::Remote(_), Some(sftp)) => Box::new(sftp?),
        (Host::Remote(_), None) => Box::new(LocalSource::new(&[], Excludes::none())),
    })
}

/// What [`archive`] stores: [`BackupRequest`] with owned parts, to cross to a blocking thread.
struct Archive {
    job: String,
    host: String,
    paths: Vec<PathBuf>,
    source: Box<dyn Source>,
    extra: Vec<burrow_core::source::Entry>,
    problems: Problems,
    partial: bool,
    bytes_read: Arc<AtomicU64>,
}

/// Reads the source into the repository on a blocking thread; `cancel` (burrow stopping)
/// stops the reading.
async fn archive<R: Repository>(
    a: Archive,
    repo: R,
    mut cancel: watch::Receiver<bool>,
) -> Result<(R::Pending, R), RunError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let watcher = tokio::spawn(async move {
        while cancel.changed().await.is_ok() {
            if *cancel.borrow() {
                flag.store(true, Ordering::Relaxed);
                break;
            }
        }
    });
    let result = blocking(move || {
        let out = repo.archive(BackupRequest {
            job: &a.job,
            host: &a.host,
            paths: a.paths,
            source: a.source.as_ref(),
            extra: a.extra,
            problems: a.problems,
            partial: a.partial,
            bytes_read: a.bytes_read,
            cancel: stop,
        });
        (out, repo)
    })
    .await;
    watcher.abort();
    let (out, repo) = result?;
    Ok((out?, repo))
}

/// A saved snapshot, the repository (for the retention step) and what the anomaly guard saw.
struct Pulled<R> {
    out: BackupOutcome,
    repo: R,
    anomaly: Option<String>,
}

/// With the local lock held, before anything is written: removes the `-tmp-` files of
/// interrupted writes and, with `list`, names the snapshot files that cannot be read (they
/// are skipped; `burrow check` fails on them).
async fn tidy<R: Repository>(repo: R, log: &RunLog, list: bool) -> Result<R, RunError> {
    let (repo, debris, damaged) = blocking(move || {
        let debris = repo.remove_tmp_debris();
        let damaged = list.then(|| repo.snapshot_listing(None).map(|l| l.damaged));
        (repo, debris, damaged)
    })
    .await?;
    match debris {
        Ok(paths) => {
            for p in paths {
                log.info(format!(
                    "removed {} (left by an interrupted write)",
                    p.display()
                ));
            }
        }
        Err(e) => log.warn(format!("cannot remove leftover -tmp- files: {e}")),
    }
    for d in damaged.transpose()?.unwrap_or_default() {
        log.warn(format!(
            "snapshot file {} cannot be read and is skipped: {}; if it stays so, delete it: \
             rm {}",
            d.file, d.error, d.path
        ));
    }
    Ok(repo)
}

/// The repository check (`check:` in the config), reported like a job run named `check`.
pub async fn run_check<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    ctl: RunControl,
) -> RunReport {
    let read_data = cfg.check.as_ref().and_then(|c| c.read_data.clone());
    check_repository(cfg, ports, ctl, read_data.as_deref()).await
}

/// The repository check, scheduled ([`run_check`]) or by hand (`burrow check`): reads back
/// `read_data` of the packs when given (`"5%"`, `"1/7"`, `"all"`). Every problem is an
/// error item of the summary (`pack <id>`, `snapshots/<id>`); the status is `failed` when
/// there is one. Packs it finds damaged are taken out of the index (and their files
/// deleted), so the next run stores their data again instead of reusing it.
pub async fn check_repository<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    ctl: RunControl,
    read_data: Option<&str>,
) -> RunReport {
    let started = Utc::now();
    let t0 = Instant::now();
    let log = RunLog::new("check", &ctl.run_id, "local");
    let mut errors: Vec<ErrorItem> = Vec::new();
    let result = check_inner(cfg, ports, read_data, &log, &mut errors).await;
    let mut summary = match &result {
        Ok(()) => {
            log.info("check: no errors found");
            RunSummary::new(
                "check",
                &ctl.run_id,
                &started.to_rfc3339(),
                RunStatus::Ok,
                t0.elapsed().as_secs_f64(),
            )
        }
        Err(e) => {
            log.error(format!("check: {e}"));
            RunSummary::without_snapshot(
                "check",
                &ctl.run_id,
                &started.to_rfc3339(),
                e,
                t0.elapsed().as_secs_f64(),
            )
        }
    };
    summary.errors = errors;
    RunReport {
        summary,
        log: log.tail(),
    }
}

async fn check_inner<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    read_data: Option<&str>,
    log: &RunLog,
    errors: &mut Vec<ErrorItem>,
) -> Result<(), RunError> {
    let _lock = RepoLock::acquire(&cfg.state_dir)?;
    let place = place::locate(cfg, ports.disk).await?;
    let repo = place.open(ports.repos).await?;
    let repo = tidy(repo, log, false).await?;
    log.info(format!(
        "checking repository {} (read data: {})",
        place.repo_path.display(),
        read_data.unwrap_or("no")
    ));
    let (repo, shared) = lock_repo(repo, false).await?;
    let rd = read_data.map(str::to_owned);
    let (report, repair) = blocking(
        move || -> Result<(CheckReport, Option<Result<PackRepair, RunError>>), RunError> {
            let report = repo.check_report(rd.as_deref())?;
            // The index is rewritten under restic's exclusive lock; the shared one of the
            // check is given up first (an exclusive lock conflicts with it).
            let repair = (!report.damaged_packs.is_empty()).then(|| {
                drop(shared);
                repo.lock(true)
                    .and_then(|_x| repo.drop_damaged_packs(&report.damaged_packs))
            });
            Ok((report, repair))
        },
    )
    .await?
    .map_err(|e| e.context("check could not finish"))?;
    errors.extend(check_items(&report, log));
    if report.is_clean() {
        return Ok(());
    }
    Err(RunError::permanent(format!(
        "check found problems: {} error(s){}",
        report.errors.len() + report.damaged_snapshots.len(),
        check_reason(&report, repair, log)
    )))
}

/// The check's findings as logged lines and error items.
fn check_items(report: &CheckReport, log: &RunLog) -> Vec<ErrorItem> {
    let mut errors = Vec::new();
    for w in &report.warnings {
        log.warn(format!("check: {w}"));
    }
    for d in &report.damaged_snapshots {
        log.error(format!(
            "check: snapshot file {} cannot be read: {}",
            d.file, d.error
        ));
        errors.push(ErrorItem {
            path: d.file.clone(),
            message: format!(
                "cannot be read ({}); delete it: rm {} (stock restic cannot forget a \
                 snapshot it cannot read)",
                d.error, d.path
            ),
        });
    }
    for e in &report.errors {
        log.error(format!("check: {e}"));
        let (path, message) = match e.strip_prefix("pack ").and_then(|r| r.split_once(": ")) {
            Some((id, msg)) => (format!("pack {id}"), msg.to_owned()),
            None => ("repository".to_owned(), e.clone()),
        };
        errors.push(ErrorItem { path, message });
    }
    errors
}

/// The tail of a failed check's reason: damaged packs, what became of them, unreadable
/// snapshot files.
fn check_reason(
    report: &CheckReport,
    repair: Option<Result<PackRepair, RunError>>,
    log: &RunLog,
) -> String {
    let mut reason = String::new();
    if !report.damaged_packs.is_empty() {
        let ids: Vec<&str> = report
            .damaged_packs
            .iter()
            .map(|p| short_id(&p.id))
            .collect();
        reason = format!("; damaged packs: {}", ids.join(", "));
    }
    match repair {
        None => {}
        Some(Ok(r)) => {
            log.warn(format!(
                "check: {} damaged pack(s) taken out of the index ({}), {} file(s) deleted; \
                 the next run stores their data again where the source still has it",
                r.dropped.len(),
                r.dropped.join(", "),
                r.deleted.len()
            ));
            reason.push_str(" (taken out of the index: the next run stores their data again)");
        }
        Some(Err(e)) => {
            log.error(format!(
                "check: taking the damaged packs out of the index failed: {e}"
            ));
            reason.push_str(&format!(
                " (taking them out of the index failed: {e}; `restic repair index` does it)"
            ));
        }
    }
    if !report.damaged_snapshots.is_empty() {
        let files: Vec<&str> = report
            .damaged_snapshots
            .iter()
            .map(|d| d.file.as_str())
            .collect();
        reason.push_str(&format!(
            "; unreadable snapshot files: {}",
            files.join(", ")
        ));
    }
    reason
}
