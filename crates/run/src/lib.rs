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
pub mod doctor;
pub mod dumps;
pub mod hooks;
pub mod host;
pub mod log;
pub mod place;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use burrow_config::{Config, HostKey, Job, Server};
use burrow_core::disk::{DiskManager, Release};
use burrow_core::exclude::Excludes;
use burrow_core::local::LocalSource;
use burrow_core::monitor::{Monitor, Outcome};
use burrow_core::run::ErrorItem;
use burrow_core::source::Source;
use burrow_core::{Problems, RunStatus, RunSummary, short_id};
use burrow_repo::{BackupRequest, CheckReport, Keep, PackRepair, Repo, RepoError};
use burrow_ssh::{HostKeyPolicy, Session, SftpSource, SshTarget};
use chrono::Utc;
use tokio::sync::watch;

use crate::host::Host;
use crate::log::RunLog;
use crate::place::{PlaceError, RepoLock};

/// What the caller can watch and stop.
#[derive(Clone)]
pub struct RunControl {
    pub run_id: String,
    /// Becomes `true` when burrow is shutting down: the pull stops, `after` still runs.
    pub cancel: watch::Receiver<bool>,
    /// Content bytes read so far (for progress displays and `STATUS=`).
    pub bytes_read: Arc<AtomicU64>,
}

impl RunControl {
    pub fn new(cancel: watch::Receiver<bool>) -> Self {
        RunControl {
            run_id: uuid::Uuid::new_v4().to_string(),
            cancel,
            bytes_read: Arc::default(),
        }
    }
}

/// The result of a run: the summary and the log tail for monitoring.
pub struct RunReport {
    pub summary: RunSummary,
    pub log: String,
}

impl RunReport {
    /// What monitoring is told of this run.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            status: self.summary.status,
            exit_code: self.summary.status.exit().code(),
            log: self.log.clone(),
        }
    }
}

/// Runs `run` (a job's run or the check) between the monitor's start and finish pings: the
/// one wrapper of `burrow run` and the daemon's runs.
pub async fn monitored<M: Monitor>(
    monitor: &M,
    job: &str,
    run_id: &str,
    run: impl Future<Output = RunReport>,
) -> RunReport {
    monitor.start(job, run_id).await;
    let report = run.await;
    monitor.finish(job, run_id, &report.outcome()).await;
    report
}

/// What the config has done with the backup disk once runs are over (`unmount_after_run`,
/// `power_off_after_run`); `None`: it stays mounted.
pub fn release_after_run(cfg: &Config) -> Option<Release> {
    let d = cfg.disk.as_ref()?;
    (d.unmount_after_run || d.power_off_after_run).then_some(Release {
        unmount: true,
        lock: true,
        power_off: d.power_off_after_run,
    })
}

/// Releases the backup disk as `what` says; a failure is logged, never the run's.
pub async fn release_disk<D: DiskManager>(disk: &D, what: Release) {
    if let Err(e) = disk.release(what).await {
        tracing::warn!("releasing the backup disk failed: {e}");
    }
}

/// The summary of a run that could not even start (no disk manager, daemon refused).
pub fn summary_without_run(job: &str, status: RunStatus, reason: String) -> RunSummary {
    RunSummary::without_snapshot(
        job,
        &uuid::Uuid::new_v4().to_string(),
        &Utc::now().to_rfc3339(),
        status,
        reason,
        0.0,
    )
}

/// The disk adapter's settings from the config, when it has `disk`.
pub fn disk_settings(cfg: &Config) -> Option<burrow_disk::DiskSettings> {
    cfg.disk.as_ref().map(|d| {
        let (uuid, file) = d
            .key
            .as_ref()
            .map(|k| (k.fs_uuid.clone(), k.key_file.clone()))
            .unwrap_or_default();
        let mut s = burrow_disk::DiskSettings::new(uuid, file, d.backup_uuid.clone());
        s.lock_when_key_removed = d.lock_when_key_removed;
        s.spinup_timeout = d.spinup_timeout;
        s
    })
}

pub fn ssh_target(server: &Server) -> SshTarget {
    SshTarget {
        name: server.name.clone(),
        host: server.host.clone(),
        port: server.port,
        user: server.user.clone(),
        identity_file: server.identity_file.clone(),
        identity_passphrase_file: server.identity_passphrase_file.clone(),
        host_key: match &server.host_key {
            HostKey::Pinned(k) => HostKeyPolicy::Pinned(k.clone()),
            HostKey::KnownHosts(p) => HostKeyPolicy::KnownHosts(p.clone()),
        },
        sftp_command: server.sftp_command.clone(),
        connect_timeout: server.connect_timeout,
    }
}

/// This machine's host name, for the snapshots of local jobs.
pub fn local_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The job's `retention` as a policy; `None` when the job keeps every snapshot.
pub fn keep_of(job: &Job) -> Option<Keep> {
    job.retention.map(|r| Keep {
        last: r.keep_last,
        hourly: r.keep_hourly,
        daily: r.keep_daily,
        weekly: r.keep_weekly,
        monthly: r.keep_monthly,
        yearly: r.keep_yearly,
    })
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
    fn end(&self, status: RunStatus, reason: String) -> RunReport {
        match status {
            RunStatus::Skipped => self.log.warn(format!("run skipped: {reason}")),
            _ => self.log.error(format!("run failed: {reason}")),
        }
        RunReport {
            summary: RunSummary::without_snapshot(
                &self.job.name,
                &self.ctl.run_id,
                &self.started.to_rfc3339(),
                status,
                reason,
                self.t0.elapsed().as_secs_f64(),
            ),
            log: self.log.tail(),
        }
    }
}

/// The end of a run that could not use the repository: skipped or failed, as `e` says.
fn place_end(run: &Run<'_>, e: PlaceError) -> RunReport {
    run.end(e.status(), e.to_string())
}

/// Runs `job_name` once. `disk` must be given when the config has `disk`.
pub async fn run_job<D: DiskManager>(
    cfg: &Config,
    disk: Option<&D>,
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
                RunStatus::Failed,
                format!("no job named {job_name:?}"),
                0.0,
            ),
            log: log.tail(),
        };
    };
    let server = cfg.server_of(job);
    let log = RunLog::new(
        &job.name,
        &ctl.run_id,
        server.map_or("local", |s| s.name.as_str()),
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
    let mut report = run_inner(&run, server, disk).await;
    report.summary.peak_rss_bytes = burrow_core::mem::peak_rss();
    if let Some(b) = report.summary.peak_rss_bytes {
        tracing::debug!(job = %job.name, "peak memory {}", burrow_core::bytes::human(b));
    }
    report
}

async fn run_inner<D: DiskManager>(
    run: &Run<'_>,
    server: Option<&Server>,
    disk: Option<&D>,
) -> RunReport {
    let (cfg, job, log) = (run.cfg, run.job, &run.log);
    let _lock = match RepoLock::acquire(&cfg.state_dir) {
        Ok(l) => l,
        Err(e) => return run.end(RunStatus::Failed, e.to_string()),
    };
    let place = match place::locate(cfg, disk).await {
        Ok(p) => p,
        Err(e) => return place_end(run, e),
    };
    // The server is reached while the repository opens: the key derivation is the longest
    // step of a run that finds nothing new, and neither waits for the other.
    let connecting = server.map(|s| Connecting::start(run, s));
    let (repo, shared) = match open_repository(run, &place).await {
        Ok(opened) => opened,
        Err(report) => {
            if let Some(c) = connecting {
                c.abandon().await;
            }
            return report;
        }
    };
    let (host, sftp) = match connecting {
        None => (Host::Local, None),
        Some(c) => match c.finish().await {
            Ok(r) => (Host::Remote(r.session), r.sftp),
            Err(e) => return run.end(RunStatus::Failed, e),
        },
    };

    let mut deadman = None;
    if let Some(deadline) = job.after_deadline
        && !job.after.is_empty()
    {
        match hooks::DeadMan::arm(
            &host,
            &run.ctl.run_id,
            deadline,
            &job.after,
            job.hook_timeout,
            job.before.is_empty(),
            log,
        )
        .await
        {
            Ok(d) => deadman = Some(d),
            Err(e) => {
                close(&host).await;
                return run.end(RunStatus::Failed, format!("{e}; nothing was stopped"));
            }
        }
    }
    let (before_ok, before_started) =
        hooks::run_before(&host, &job.before, job.hook_timeout, deadman.as_ref(), log).await;

    let problems = Problems::new();
    let mut errors: Vec<ErrorItem> = Vec::new();
    let mut failure: Option<String> = None;
    let mut outcome = None;
    let cancelled = || *run.ctl.cancel.borrow();
    if !before_ok {
        failure = Some("a before command failed; nothing was pulled".into());
    } else if cancelled() {
        failure = Some("burrow is shutting down; nothing was pulled".into());
    } else {
        match pull(run, &host, sftp, &place, repo, &problems).await {
            Ok(p) => outcome = Some(p),
            Err(e) if place.volume.is_some() && !place.repo_path.exists() => {
                // What the repository said next ("no repository config file found") is only
                // the consequence: kept in the debug log, not in the reason.
                tracing::debug!(error = %e, "the repository failed after the disk went away");
                failure = Some(
                    "the backup disk went away during the run (nothing was written elsewhere; \
                     earlier snapshots are intact)"
                        .into(),
                )
            }
            Err(e) => failure = Some(e),
        }
    }

    // The obligation: once a before command started (or there were none), after runs.
    if before_started || job.before.is_empty() {
        // With the dead-man's switch, the commands run on the server in a process of their
        // own that a dying burrow cannot cut off (hooks.rs).
        let ok = match deadman.take() {
            Some(d) => d.run_after(&host, &job.after, job.hook_timeout, log).await,
            None => hooks::run_after(&host, &job.after, job.hook_timeout, log).await,
        };
        if !ok {
            errors.push(ErrorItem {
                path: "after".into(),
                message: "an after command failed: check the service on the server".into(),
            });
        }
    }
    close(&host).await;

    let Some(Pulled { out, repo, anomaly }) = outcome else {
        let mut report = run.end(RunStatus::Failed, failure.unwrap_or_default());
        report.summary.errors = errors;
        return report;
    };

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
    let pauses = anomaly::PauseFile::new(&cfg.state_dir);
    if let Some(reason) = &anomaly {
        status = RunStatus::Anomaly;
        log.error(format!(
            "anomaly: {reason}; the snapshot {} is saved and tagged `{}`; retention of job {} \
             is paused: if the change is real run `burrow accept {}`, otherwise restore from \
             an earlier snapshot",
            short_id(&out.snapshot_id),
            burrow_repo::TAG_ANOMALY,
            job.name,
            job.name
        ));
        errors.insert(
            0,
            ErrorItem {
                path: "anomaly".into(),
                message: reason.clone(),
            },
        );
        let paused = anomaly::Paused {
            snapshot: out.snapshot_id.clone(),
            since: Utc::now().to_rfc3339(),
            reason: reason.clone(),
        };
        if let Err(e) = pauses.pause(&job.name, paused) {
            log.error(format!("cannot record the retention pause: {e}"));
        }
    }

    drop(shared);
    let mut reason = None;
    if let Some(keep) = keep_of(job) {
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
            }
            paused => {
                if let Err(e) = &paused {
                    log.warn(format!("{e}; retention goes on"));
                }
                if let Some(msg) = retention(job, keep, repo, log).await {
                    log.error(&msg);
                    if status == RunStatus::Ok {
                        status = RunStatus::Warning;
                    }
                    reason = Some(msg);
                }
            }
        }
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
        },
        log: log.tail(),
    }
}

/// Forget (and prune if something was forgotten). A failure is returned as the message for
/// the run's summary: the new snapshot is already saved.
async fn retention(job: &Job, keep: Keep, repo: Repo, log: &RunLog) -> Option<String> {
    let job_name = job.name.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<usize, RepoError> {
        // restic's exclusive lock: refused (restic or another burrow at work) = retention fails.
        let _exclusive = repo.lock_exclusive()?;
        let plan = repo.forget(&job_name, &keep)?;
        if !plan.remove.is_empty() {
            repo.prune()?;
        }
        Ok(plan.remove.len())
    })
    .await;
    match res {
        Ok(Ok(removed)) => {
            log.info(format!("retention: {removed} snapshot(s) forgotten"));
            None
        }
        Ok(Err(e)) => Some(format!("retention failed (the new snapshot is safe): {e}")),
        Err(e) => Some(format!(
            "retention task failed (the new snapshot is safe): {e}"
        )),
    }
}

/// Takes restic's lock on the repository (shared or exclusive) on a blocking thread.
async fn lock_repo(repo: &Repo, exclusive: bool) -> Result<burrow_repo::RepoLockGuard, String> {
    let locks = repo.locks().map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        if exclusive {
            locks.exclusive()
        } else {
            locks.shared()
        }
    })
    .await
    .map_err(|e| format!("repository task failed: {e}"))?
    .map_err(|e| e.to_string())
}

/// Opens the repository on the located volume, checks its marker, takes restic's shared
/// lock (held until retention: restic and burrows of other state dirs see the backup and do
/// not prune under it; its settle runs while the backup reads, `Repo::lock_for_backup`) and
/// tidies what interrupted writes left.
async fn open_repository(
    run: &Run<'_>,
    place: &place::Place,
) -> Result<(Repo, burrow_repo::RepoLockGuard), RunReport> {
    let repo = place.open().await.map_err(|e| place_end(run, e))?;
    let (repo, shared) = match tokio::task::spawn_blocking(move || {
        let guard = repo.lock_for_backup();
        (repo, guard)
    })
    .await
    {
        Ok((repo, Ok(guard))) => (repo, guard),
        Ok((_, Err(e))) => return Err(run.end(RunStatus::Failed, e.to_string())),
        Err(e) => {
            return Err(run.end(RunStatus::Failed, format!("repository task failed: {e}")));
        }
    };
    run.log
        .info(format!("repository {} ready", place.repo_path.display()));
    let repo = tidy(repo, &run.log, true)
        .await
        .map_err(|e| run.end(RunStatus::Failed, e))?;
    Ok((repo, shared))
}

/// The server side of a run being set up: the SSH session and, for a job with paths, its
/// SFTP source (started here, used once the before commands and dumps are done).
struct Connecting(tokio::task::JoinHandle<Result<Remote, String>>);

struct Remote {
    session: Session,
    /// `None` for a job of dumps only; an SFTP start that failed fails the pull, after the
    /// before commands, as it always did.
    sftp: Option<Result<SftpSource, String>>,
}

impl Connecting {
    fn start(run: &Run<'_>, server: &Server) -> Connecting {
        run.log.info(format!(
            "connecting to {}@{}:{}",
            server.user, server.host, server.port
        ));
        let target = ssh_target(server);
        let name = server.name.clone();
        let io_timeout = server.io_timeout;
        let (paths, exclude) = (run.job.paths.clone(), run.job.exclude.clone());
        let cancel = run.ctl.cancel.clone();
        Connecting(tokio::spawn(async move {
            let session = Session::connect(&target)
                .await
                .map_err(|e| format!("cannot connect to server {name}: {e}"))?;
            if paths.is_empty() {
                return Ok(Remote {
                    session,
                    sftp: None,
                });
            }
            let sftp = match Excludes::new(&exclude) {
                Err(e) => Err(e.to_string()),
                Ok(excludes) => SftpSource::start(
                    &session,
                    io_timeout,
                    cancel,
                    tokio::runtime::Handle::current(),
                    &paths,
                    excludes,
                )
                .await
                .map_err(|e| format!("cannot start SFTP: {e}")),
            };
            Ok(Remote {
                session,
                sftp: Some(sftp),
            })
        }))
    }

    async fn finish(self) -> Result<Remote, String> {
        self.0
            .await
            .unwrap_or_else(|e| Err(format!("connect task failed: {e}")))
    }

    /// The run ended before it needed the server: stops the attempt and closes what it
    /// had opened.
    async fn abandon(self) {
        self.0.abort();
        if let Ok(Ok(remote)) = self.0.await {
            drop(remote.sftp);
            remote.session.close().await;
        }
    }
}

async fn close(host: &Host) {
    if let Host::Remote(s) = host {
        s.close().await;
    }
}

/// Dumps, then files, into one snapshot, saved with its final tags (`partial`, `anomaly`).
async fn pull(
    run: &Run<'_>,
    host: &Host,
    sftp: Option<Result<SftpSource, String>>,
    place: &place::Place,
    repo: Repo,
    problems: &Problems,
) -> Result<Pulled, String> {
    let (job, log) = (run.job, &run.log);
    let spooled = if job.dumps.is_empty() {
        None
    } else {
        Some(
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
        )
    };
    let source: Box<dyn Source> = match (host, sftp) {
        (Host::Local, _) => Box::new(LocalSource::new(
            &job.paths,
            Excludes::new(&job.exclude).map_err(|e| e.to_string())?,
        )),
        (Host::Remote(_), Some(sftp)) => Box::new(sftp?),
        (Host::Remote(_), None) => Box::new(LocalSource::new(&[], Excludes::none())),
    };
    let mut paths: Vec<PathBuf> = job.paths.clone();
    let extra = spooled
        .as_ref()
        .map(|s| s.entries(&run.ctl.bytes_read))
        .unwrap_or_default();
    let dumps_failed = problems
        .snapshot()
        .iter()
        .any(|p| p.path.starts_with(dumps::DUMPS_ROOT));
    if !extra.is_empty() {
        paths.push(PathBuf::from(dumps::DUMPS_ROOT));
    }
    if paths.is_empty() {
        return Err("every dump failed and the job has no paths: nothing to store".into());
    }
    log.info(format!(
        "pulling {} path(s) from {}",
        job.paths.len(),
        host.describe()
    ));

    let cancel = Arc::new(AtomicBool::new(false));
    let mut watch = run.ctl.cancel.clone();
    let flag = cancel.clone();
    let watcher = tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            if *watch.borrow() {
                flag.store(true, Ordering::Relaxed);
                break;
            }
        }
    });
    let host_name = match host {
        Host::Local => local_hostname(),
        Host::Remote(s) => s.name().to_owned(),
    };
    let job_name = job.name.clone();
    let problems2 = problems.clone();
    let bytes_read = run.ctl.bytes_read.clone();
    let result = tokio::task::spawn_blocking(move || {
        let out = repo.archive(BackupRequest {
            job: &job_name,
            host: &host_name,
            paths,
            source: source.as_ref(),
            extra,
            problems: problems2,
            partial: dumps_failed,
            bytes_read,
            cancel,
        });
        (out, repo)
    })
    .await;
    watcher.abort();
    drop(spooled);
    let (pending, repo) = match result {
        Ok((Ok(p), repo)) => (p, repo),
        Ok((Err(e), _)) => return Err(e.to_string()),
        Err(e) => return Err(format!("backup task failed: {e}")),
    };
    if let Host::Remote(s) = host
        && s.is_closed()
    {
        // Reads failed because the server went away, not because files were unreadable:
        // this snapshot would miss data it should have, so it is never written.
        return Err(format!(
            "the connection to {} was lost during the pull; no snapshot was saved",
            s.name()
        ));
    }
    let anomaly = anomaly::judge(&pending.counts(), &job.anomaly);
    let mut tags = Vec::new();
    if pending.partial() {
        tags.push(burrow_repo::TAG_PARTIAL);
    }
    if anomaly.is_some() {
        tags.push(burrow_repo::TAG_ANOMALY);
    }
    let committed = tokio::task::spawn_blocking(move || {
        let out = pending.commit(&repo, &tags);
        (out, repo)
    })
    .await;
    match committed {
        Ok((Ok(out), repo)) => Ok(Pulled { out, repo, anomaly }),
        Ok((Err(e), _)) => Err(format!("saving the snapshot failed: {e}")),
        Err(e) => Err(format!("backup task failed: {e}")),
    }
}

/// A saved snapshot, the repository (for the retention step) and what the anomaly guard saw.
struct Pulled {
    out: burrow_repo::BackupOutcome,
    repo: Repo,
    anomaly: Option<String>,
}

/// With the local lock held, before anything is written: removes the `-tmp-` files of
/// interrupted writes and, with `list`, names the snapshot files that cannot be read (they
/// are skipped; `burrow check` fails on them).
async fn tidy(repo: Repo, log: &RunLog, list: bool) -> Result<Repo, String> {
    let (repo, debris, damaged) = tokio::task::spawn_blocking(move || {
        let debris = repo.remove_tmp_debris();
        let damaged = list.then(|| repo.snapshot_listing(None).map(|l| l.damaged));
        (repo, debris, damaged)
    })
    .await
    .map_err(|e| format!("repository task failed: {e}"))?;
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
    match damaged {
        Some(Ok(damaged)) => {
            for d in damaged {
                log.warn(format!(
                    "snapshot file {} cannot be read and is skipped: {}; if it stays so, \
                     delete it: rm {}",
                    d.file, d.error, d.path
                ));
            }
        }
        Some(Err(e)) => return Err(e.to_string()),
        None => {}
    }
    Ok(repo)
}

/// The repository check (`check:` in the config), reported like a job run named `check`.
pub async fn run_check<D: DiskManager>(
    cfg: &Config,
    disk: Option<&D>,
    ctl: RunControl,
) -> RunReport {
    let read_data = cfg.check.as_ref().and_then(|c| c.read_data.clone());
    check_repository(cfg, disk, ctl, read_data.as_deref()).await
}

/// The repository check, scheduled ([`run_check`]) or by hand (`burrow check`): reads back
/// `read_data` of the packs when given (`"5%"`, `"1/7"`, `"all"`). Every problem is an
/// error item of the summary (`pack <id>`, `snapshots/<id>`); the status is `failed` when
/// there is one. Packs it finds damaged are taken out of the index (and their files
/// deleted), so the next run stores their data again instead of reusing it.
pub async fn check_repository<D: DiskManager>(
    cfg: &Config,
    disk: Option<&D>,
    ctl: RunControl,
    read_data: Option<&str>,
) -> RunReport {
    let started = Utc::now();
    let t0 = Instant::now();
    let log = RunLog::new("check", &ctl.run_id, "local");
    let mut errors: Vec<ErrorItem> = Vec::new();
    let result: Result<(), (RunStatus, String)> = async {
        let _lock =
            RepoLock::acquire(&cfg.state_dir).map_err(|e| (RunStatus::Failed, e.to_string()))?;
        let classed = |e: PlaceError| (e.status(), e.to_string());
        let place = place::locate(cfg, disk).await.map_err(classed)?;
        let repo = place.open().await.map_err(classed)?;
        let repo = tidy(repo, &log, false)
            .await
            .map_err(|e| (RunStatus::Failed, e))?;
        log.info(format!(
            "checking repository {} (read data: {})",
            place.repo_path.display(),
            read_data.unwrap_or("no")
        ));
        let shared = lock_repo(&repo, false)
            .await
            .map_err(|e| (RunStatus::Failed, e))?;
        let rd = read_data.map(str::to_owned);
        let (report, repair) = tokio::task::spawn_blocking(
            move || -> Result<(CheckReport, Option<Result<PackRepair, RepoError>>), RepoError> {
                let report = repo.check_report(rd.as_deref())?;
                // The index is rewritten under restic's exclusive lock; the shared one of the
                // check is given up first (an exclusive lock conflicts with it).
                let repair = (!report.damaged_packs.is_empty()).then(|| {
                    drop(shared);
                    repo.lock_exclusive()
                        .and_then(|_x| repo.drop_damaged_packs(&report.damaged_packs))
                });
                Ok((report, repair))
            },
        )
        .await
        .map_err(|e| (RunStatus::Failed, e.to_string()))?
        .map_err(|e| (RunStatus::Failed, format!("check could not finish: {e}")))?;

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
        if report.is_clean() {
            Ok(())
        } else {
            Err((
                RunStatus::Failed,
                format!(
                    "check found problems: {} error(s){reason}",
                    report.errors.len() + report.damaged_snapshots.len()
                ),
            ))
        }
    }
    .await;
    let (status, reason) = match result {
        Ok(()) => {
            log.info("check: no errors found");
            (RunStatus::Ok, None)
        }
        Err((s, r)) => {
            log.error(format!("check: {r}"));
            (s, Some(r))
        }
    };
    let mut summary = RunSummary::without_snapshot(
        "check",
        &ctl.run_id,
        &started.to_rfc3339(),
        status,
        reason.unwrap_or_default(),
        t0.elapsed().as_secs_f64(),
    );
    summary.errors = errors;
    if status == RunStatus::Ok {
        summary.reason = None;
    }
    RunReport {
        summary,
        log: log.tail(),
    }
}
