//! One run of a job, from the backup volume to the retention policy:
//!
//! ```text
//! lock ─► volume ready? ─► repository opened + marker ─► connect ─► arm dead-man ─► before
//!   │ no: skipped (75)         │ wrong disk: skipped         │ fail: failed      │ fail ─┐
//!   ▼                          ▼                             ▼                   ▼       │
//! dumps spooled ─► pull + snapshot ─► after (always, once before started) ─► retention  │
//!                                      ▲─────────────────────────────────────────────────┘
//! ```
//!
//! Every outcome ends in a [`RunSummary`] (status ok / partial / failed / skipped) and the
//! log tail for monitoring; nothing here panics on bad input or a vanished server.

pub mod dumps;
pub mod hooks;
pub mod host;
pub mod log;
pub mod place;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use burrow_config::{Config, HostKey, Job, Server};
use burrow_core::disk::DiskManager;
use burrow_core::exclude::Excludes;
use burrow_core::local::LocalSource;
use burrow_core::run::ErrorItem;
use burrow_core::source::Source;
use burrow_core::{Problems, RunStatus, RunSummary};
use burrow_repo::{BackupRequest, Keep, Repo, RepoError};
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

fn keep_of(job: &Job) -> Option<Keep> {
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
    run_inner(&run, server, disk).await
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
        Err(PlaceError::Skip(r)) => return run.end(RunStatus::Skipped, r),
        Err(PlaceError::Fail(r)) => return run.end(RunStatus::Failed, r),
    };
    let password = match place.password() {
        Ok(p) => p,
        Err(e) => return run.end(RunStatus::Failed, e.to_string()),
    };
    let repo_path = place.repo_path.clone();
    let repo = match tokio::task::spawn_blocking(move || Repo::open(&repo_path, &password)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return run.end(RunStatus::Failed, e.to_string()),
        Err(e) => return run.end(RunStatus::Failed, format!("repository task failed: {e}")),
    };
    if let Err(e) = place::check_marker(&place, &repo.id()) {
        return run.end(RunStatus::Skipped, e.to_string());
    }
    log.info(format!("repository {} ready", place.repo_path.display()));

    let host = match server {
        None => Host::Local,
        Some(s) => {
            log.info(format!("connecting to {}@{}:{}", s.user, s.host, s.port));
            match Session::connect(&ssh_target(s)).await {
                Ok(sess) => Host::Remote(sess),
                Err(e) => {
                    return run.end(
                        RunStatus::Failed,
                        format!("cannot connect to server {}: {e}", s.name),
                    );
                }
            }
        }
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
        match pull(run, &host, &place, repo, &problems).await {
            Ok((o, r)) => outcome = Some((o, r)),
            Err(e) if place.volume.is_some() && !place.repo_path.exists() => {
                failure = Some(format!(
                    "the backup disk went away during the run (nothing was written elsewhere; \
                     earlier snapshots are intact): {e}"
                ))
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

    let Some((out, repo)) = outcome else {
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
    let status = if out.partial || !errors.is_empty() {
        RunStatus::Partial
    } else {
        RunStatus::Ok
    };
    log.info(format!(
        "snapshot {} saved: {} new, {} changed, {} unmodified files; {} bytes read, {} bytes added",
        &out.snapshot_id[..8],
        out.files_new,
        out.files_changed,
        out.files_unmodified,
        out.bytes_read,
        out.bytes_added
    ));

    if let Some(keep) = keep_of(job) {
        let job_name = job.name.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<Vec<String>, RepoError> {
            let now = burrow_repo::Zoned::now();
            let removed = repo.forget(&job_name, &keep, &now)?;
            if !removed.is_empty() {
                repo.prune()?;
            }
            Ok(removed)
        })
        .await;
        match res {
            Ok(Ok(removed)) => log.info(format!(
                "retention: {} snapshot(s) forgotten",
                removed.len()
            )),
            Ok(Err(e)) => log.error(format!("retention failed (the new snapshot is safe): {e}")),
            Err(e) => log.error(format!("retention task failed: {e}")),
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
            errors,
            reason: None,
        },
        log: log.tail(),
    }
}

async fn close(host: &Host) {
    if let Host::Remote(s) = host {
        s.close().await;
    }
}

/// Dumps, then files, into one snapshot. Returns the repository for the retention step.
async fn pull(
    run: &Run<'_>,
    host: &Host,
    place: &place::Place,
    repo: Repo,
    problems: &Problems,
) -> Result<(burrow_repo::BackupOutcome, Repo), String> {
    let (job, log) = (run.job, &run.log);
    let spooled = if job.dumps.is_empty() {
        None
    } else {
        Some(
            dumps::spool(
                host,
                &job.dumps,
                job.dump_timeout,
                &place.spool_dir,
                &run.ctl.run_id,
                problems,
                log,
                &run.ctl.cancel,
            )
            .await?,
        )
    };
    let excludes = Excludes::new(&job.exclude).map_err(|e| e.to_string())?;
    let source: Box<dyn Source> = match host {
        Host::Local => Box::new(LocalSource::new(&job.paths, excludes)),
        Host::Remote(s) if !job.paths.is_empty() => {
            let sftp = s
                .sftp()
                .await
                .map_err(|e| format!("cannot start SFTP: {e}"))?;
            Box::new(SftpSource::new(
                sftp,
                tokio::runtime::Handle::current(),
                &job.paths,
                excludes,
            ))
        }
        Host::Remote(_) => Box::new(LocalSource::new(&[], Excludes::none())),
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
        let out = repo.backup(BackupRequest {
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
    match result {
        Ok((Ok(out), repo)) => {
            if let Host::Remote(s) = host
                && s.is_closed()
            {
                // Reads failed because the server went away, not because files were
                // unreadable: this snapshot is missing data it should have, so it goes.
                let id = out.snapshot_id.clone();
                let job_name = job.name.clone();
                let short = id[..8].to_owned();
                let removed =
                    tokio::task::spawn_blocking(move || repo.delete_snapshot(&job_name, &id))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                return Err(match removed {
                    Ok(()) => format!(
                        "the connection to {} was lost during the pull; the incomplete snapshot was removed",
                        s.name()
                    ),
                    Err(e) => format!(
                        "the connection to {} was lost during the pull, and removing the incomplete \
                         snapshot {short} failed: {e}; remove it with `restic forget {short}`",
                        s.name()
                    ),
                });
            }
            Ok((out, repo))
        }
        Ok((Err(e), _)) => Err(e.to_string()),
        Err(e) => Err(format!("backup task failed: {e}")),
    }
}

/// The repository check (`check:` in the config), reported like a job run named `check`.
pub async fn run_check<D: DiskManager>(
    cfg: &Config,
    disk: Option<&D>,
    ctl: RunControl,
) -> RunReport {
    let started = Utc::now();
    let t0 = Instant::now();
    let log = RunLog::new("check", &ctl.run_id, "local");
    let read_data = cfg.check.as_ref().and_then(|c| c.read_data.clone());
    let result: Result<(), (RunStatus, String)> = async {
        let _lock =
            RepoLock::acquire(&cfg.state_dir).map_err(|e| (RunStatus::Failed, e.to_string()))?;
        let place = place::locate(cfg, disk).await.map_err(|e| match e {
            PlaceError::Skip(r) => (RunStatus::Skipped, r),
            PlaceError::Fail(r) => (RunStatus::Failed, r),
        })?;
        let password = place
            .password()
            .map_err(|e| (RunStatus::Failed, e.to_string()))?;
        log.info(format!(
            "checking repository {} (read data: {})",
            place.repo_path.display(),
            read_data.as_deref().unwrap_or("no")
        ));
        let path = place.repo_path.clone();
        let rd = read_data.clone();
        tokio::task::spawn_blocking(move || -> Result<String, RepoError> {
            let repo = Repo::open(&path, &password)?;
            repo.check(rd.as_deref())?;
            Ok(repo.id())
        })
        .await
        .map_err(|e| (RunStatus::Failed, e.to_string()))?
        .map_err(|e| (RunStatus::Failed, format!("check found problems: {e}")))
        .and_then(|id| {
            place::check_marker(&place, &id).map_err(|e| (RunStatus::Skipped, e.to_string()))
        })
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
    if status == RunStatus::Ok {
        summary.reason = None;
    }
    RunReport {
        summary,
        log: log.tail(),
    }
}
