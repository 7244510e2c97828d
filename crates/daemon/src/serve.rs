//! `burrow daemon`: one task per event source (schedule, control socket, hot-plug, signals,
//! the running job) joined in one `select!` loop that owns all state. Runs never overlap: the
//! queue hands out one job at a time, and a job is never queued twice.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use burrow_config::Config;
use burrow_core::clock::Clock;
use burrow_core::disk::{DiskEvent, DiskManager, Release};
use burrow_core::monitor::Monitor;
use burrow_core::service::ServiceManager;
use burrow_core::{Exit, RunError, RunStatus};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::control::{Reply, Request};
use crate::plan::{self, JobPlan, Retries, Retry, RunQueue};
use crate::state::{History, RunRecord, State, Store};
use crate::status;
use burrow_core::run::{RunControl, RunReport, Runner};

/// The repository check's name in the queue, the state files, the status and monitoring: the
/// name its run summary carries too, and one the config refuses for a job.
pub const CHECK: &str = burrow_core::run::CHECK_RUN;

/// Longest sleep between looks at the clock: wall-clock jumps (NTP on a Pi without RTC) and
/// suspend are noticed within this.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How often the daemon's own heartbeat check is pinged (`healthchecks.heartbeat`), so a dead
/// Pi alerts too; set the check's period to a few times this.
const HEARTBEAT: Duration = Duration::from_secs(300);

/// What the loop works through: the disk, monitoring, the runs, the clock and the service
/// manager. `burrow daemon` wires the real adapters (src/daemon.rs); the loop's tests give it
/// fakes.
pub struct Adapters<D, M, R> {
    pub disk: Option<Arc<D>>,
    pub monitor: Arc<M>,
    pub runner: Arc<R>,
    pub clock: Arc<dyn Clock>,
    pub sd: Arc<dyn ServiceManager>,
    /// `burrow daemon --sim` (said in `status`).
    pub sim: bool,
}

type Waiter = oneshot::Sender<Reply>;

/// What the loop waits on, besides the running job.
struct Sources {
    requests: mpsc::Receiver<(Request, Waiter)>,
    disk_events: mpsc::Receiver<DiskEvent>,
    ready: mpsc::Receiver<Result<PathBuf, burrow_core::disk::DiskError>>,
    watchdog: tokio::time::Interval,
    /// The acceptor, the disk event pump and the heartbeat: aborted at the stop.
    tasks: Vec<JoinHandle<()>>,
}

struct Current {
    job: String,
    run_id: String,
    bytes_read: Arc<std::sync::atomic::AtomicU64>,
    started: DateTime<Utc>,
    handle: JoinHandle<RunReport>,
}

struct Daemon<D: DiskManager, M: Monitor, R: Runner> {
    cfg: Arc<Config>,
    disk: Option<Arc<D>>,
    sd: Arc<dyn ServiceManager>,
    monitor: Arc<M>,
    runner: Arc<R>,
    clock: Arc<dyn Clock>,
    store: Store,
    state: State,
    history: History,
    plans: Vec<JobPlan>,
    queue: RunQueue,
    waiters: BTreeMap<String, Vec<Waiter>>,
    current: Option<Current>,
    /// Jobs skipped for an absent disk or key: run again when a disk event arrives.
    awaiting_disk: BTreeSet<String>,
    /// Jobs that failed for a temporary cause: tried again after a wait.
    retries: Retries,
    pending_lock: bool,
    cancel: watch::Sender<bool>,
    started: DateTime<Utc>,
    sim: bool,
    /// The last `STATUS=` sent, so an unchanged status is not sent again.
    last_status: String,
    /// Results of volume preparation started by hot-plug events.
    ready_tx: mpsc::Sender<Result<PathBuf, burrow_core::disk::DiskError>>,
    ready_rx: Option<mpsc::Receiver<Result<PathBuf, burrow_core::disk::DiskError>>>,
}

/// The daemon's loop with `adapters` (made from the config) until `stop` resolves: loads
/// the state, listens on `sock`, schedules, queues and runs, and stops safely.
pub async fn run_daemon<D: DiskManager, M: Monitor, R: Runner>(
    cfg: Config,
    adapters: impl FnOnce(&Arc<Config>) -> Adapters<D, M, R>,
    sock: PathBuf,
    stop: impl Future<Output = ()> + Send,
) -> Exit {
    let cfg = Arc::new(cfg);
    let a = adapters(&cfg);
    let Some(mut daemon) = Daemon::load(cfg, a) else {
        return Exit::Failed;
    };
    daemon.run(&sock, stop).await
}

impl<D: DiskManager, M: Monitor, R: Runner> Daemon<D, M, R> {
    /// The daemon with its state loaded; `None` (said on stderr) when `state_dir` cannot
    /// be made.
    fn load(cfg: Arc<Config>, a: Adapters<D, M, R>) -> Option<Self> {
        let store = Store::new(cfg.state_dir.clone());
        if let Err(e) = std::fs::create_dir_all(store.dir()) {
            eprintln!(
                "burrow: cannot create state_dir {}: {e}",
                store.dir().display()
            );
            return None;
        }
        let loaded = store.load_state_or_fresh();
        if let Some(p) = &loaded.problem {
            tracing::error!("{p}; starting with fresh state");
        }
        let history = store.load_history_or_fresh();
        if let Some(p) = &history.problem {
            tracing::error!("{p}; starting with an empty run history");
        }
        let now = a.clock.now();
        let mut state = loaded.value;
        let plans = status::plans(&cfg);
        for p in &plans {
            state.observe(&p.name, now);
        }
        if let Err(e) = store.save_state(&state) {
            tracing::error!("{e}");
        }
        // A job whose last run was skipped for the disk is still owed a run, also after a
        // restart of the daemon.
        let awaiting_disk: BTreeSet<String> = state
            .jobs
            .iter()
            .filter(|(_, j)| {
                j.last_run
                    .as_ref()
                    .is_some_and(|r| r.status == RunStatus::Skipped)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let (cancel, _) = watch::channel(false);
        let (ready_tx, ready_rx) = mpsc::channel(4);
        Some(Daemon {
            cfg,
            disk: a.disk,
            sd: a.sd,
            monitor: a.monitor,
            runner: a.runner,
            clock: a.clock,
            store,
            state,
            history: history.value,
            plans,
            queue: RunQueue::new(),
            waiters: BTreeMap::new(),
            current: None,
            awaiting_disk,
            retries: Retries::default(),
            pending_lock: false,
            cancel,
            started: now,
            sim: a.sim,
            last_status: String::new(),
            ready_tx,
            ready_rx: Some(ready_rx),
        })
    }

    async fn run(&mut self, sock: &Path, stop: impl Future<Output = ()> + Send) -> Exit {
        let mut io = match self.listen(sock) {
            Ok(io) => io,
            Err(e) => {
                eprintln!("burrow: {e}");
                return Exit::Failed;
            }
        };
        tracing::info!(
            "burrow daemon started: {} scheduled job(s), control socket {}",
            self.plans.len(),
            sock.display()
        );
        self.sd.ready();
        if !self.awaiting_disk.is_empty() {
            self.prepare_volume();
        }
        tokio::pin!(stop);
        loop {
            let sleep_for = self.step();
            let running = self.current.is_some();
            tokio::select! {
                _ = tokio::time::sleep(sleep_for) => {}
                _ = io.watchdog.tick() => self.sd.watchdog(),
                Some((req, tx)) = io.requests.recv() => self.request(req, tx),
                Some(ev) = io.disk_events.recv() => self.disk_event(ev).await,
                Some(res) = io.ready.recv() => self.disk_ready(res),
                report = async { (&mut self.current.as_mut().unwrap().handle).await }, if running => {
                    self.finish(report).await;
                }
                _ = &mut stop => break,
            }
        }
        self.stop(io, sock).await
    }

    /// One turn of the loop before it waits: queues what is due, starts a run when idle,
    /// updates `STATUS=`; returns how long to sleep at most.
    fn step(&mut self) -> Duration {
        let now = self.clock.now();
        self.queue_retries(now);
        self.queue_due(now);
        if self.current.is_none()
            && let Some(q) = self.queue.pop()
        {
            self.start_run(q.job, q.slot);
        }
        let busy = |job: &str| {
            self.queue.contains(job) || self.current.as_ref().is_some_and(|c| c.job == job)
        };
        let next = plan::next_wake(&self.plans, &self.state, now, busy);
        let line = self.status_line(next);
        if line != self.last_status {
            self.sd.status(&line);
            self.last_status = line;
        }
        let wake = next
            .map(|(_, at)| at)
            .into_iter()
            .chain(self.retries.next())
            .min();
        wake.and_then(|at| (at - now).to_std().ok())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP)
    }

    /// The loop's event sources: the control socket, signals, disk events, the heartbeat
    /// and the watchdog.
    fn listen(&mut self, sock: &Path) -> Result<Sources, SocketError> {
        let listener = bind(sock)?;
        let (ctl_tx, requests) = mpsc::channel::<(Request, Waiter)>(16);
        let acceptor = tokio::spawn(accept(listener, ctl_tx));
        // Disk events come through a task so the loop never holds the manager's lock.
        let (ev_tx, disk_events) = mpsc::channel::<DiskEvent>(16);
        let events = self.disk.clone().map(|d| {
            tokio::spawn(async move {
                while let Some(ev) = d.next_event().await {
                    if ev_tx.send(ev).await.is_err() {
                        break;
                    }
                }
            })
        });
        let heartbeat = self.cfg.healthchecks.heartbeat.clone().map(|url| {
            let monitor = self.monitor.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(HEARTBEAT);
                loop {
                    every.tick().await;
                    monitor.heartbeat(&url).await;
                }
            })
        });
        let mut watchdog = tokio::time::interval(
            self.sd
                .watchdog_interval()
                .unwrap_or(Duration::from_secs(3600)),
        );
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Sources {
            requests,
            disk_events,
            ready: self.ready_rx.take().expect("run() is called once"),
            watchdog,
            tasks: [Some(acceptor), events, heartbeat]
                .into_iter()
                .flatten()
                .collect(),
        })
    }

    /// Shutdown: stops the pull safely (the run still runs its after commands), answers who
    /// still waits, removes the socket.
    async fn stop(&mut self, io: Sources, sock: &Path) -> Exit {
        tracing::info!("stopping");
        self.sd.stopping();
        let _ = self.cancel.send(true);
        if let Some(cur) = self.current.as_mut() {
            tracing::info!(
                "waiting for {} to stop safely (after commands still run)",
                cur.job
            );
            let report = (&mut cur.handle).await;
            self.finish(report).await;
        }
        for (_, ws) in std::mem::take(&mut self.waiters) {
            for w in ws {
                let _ = w.send(Reply::Error {
                    message: "burrow is shutting down; the run was not started".into(),
                });
            }
        }
        for t in io.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(sock);
        tracing::info!("stopped");
        Exit::Ok
    }

    fn queue_due(&mut self, now: DateTime<Utc>) {
        for p in &self.plans {
            let running = self.current.as_ref().is_some_and(|c| c.job == p.name);
            if running || self.queue.contains(&p.name) {
                continue;
            }
            let st = self.state.job(&p.name);
            if let Some(fixed) = plan::without_future(&st, now) {
                tracing::warn!(
                    job = %p.name,
                    "{}: {} holds times after now ({now}): last handled slot {}, first seen {}; the clock was wrong when it was written, or it comes from another machine; treating the slot as not handled",
                    p.name,
                    self.store.state_path().display(),
                    st.last_slot.map_or("none".into(), |t| t.to_rfc3339()),
                    st.first_seen.map_or("none".into(), |t| t.to_rfc3339()),
                );
                self.state.jobs.insert(p.name.clone(), fixed);
                if let Err(e) = self.store.save_state(&self.state) {
                    tracing::error!("{e}");
                }
            }
            if let Some(slot) = plan::due(p, &self.state.job(&p.name), now) {
                tracing::info!("{} is due (slot {slot})", p.name);
                self.queue.push_slot(&p.name, Some(slot));
            }
        }
    }

    /// Queues the tries again that are due (a job already queued or running is left alone:
    /// that run is the try).
    fn queue_retries(&mut self, now: DateTime<Utc>) {
        for job in self.retries.take_due(now) {
            let running = self.current.as_ref().is_some_and(|c| c.job == job);
            if !running && self.queue.push(&job) {
                tracing::info!(job = %job, "trying {job} again");
            }
        }
    }

    /// After a run of `job` ended: schedules its try again if it failed for a temporary
    /// cause, and says so.
    fn plan_retry(&mut self, summary: &burrow_core::RunSummary) {
        let job = summary.job.as_str();
        let Some(j) = self.cfg.job(job) else {
            return;
        };
        let now = self.clock.now();
        let next = self
            .plans
            .iter()
            .find(|p| p.name == job)
            .and_then(|p| plan::next_fire(p, &self.state.job(job), now));
        let temporary = summary.error_class == Some(burrow_core::ErrorClass::Temporary);
        match self
            .retries
            .record(job, temporary, (j.retries, j.retry_wait), next, now)
        {
            Retry::No => {}
            Retry::At { attempt, of, at } => tracing::warn!(
                job = %job,
                "{job} failed for a cause that may pass; trying again at {} (retry {attempt} of {of})",
                at.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S")
            ),
            Retry::NextSlot { at } => tracing::warn!(
                job = %job,
                "{job} failed for a cause that may pass; its next scheduled run at {} tries again",
                at.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S")
            ),
            Retry::GaveUp { of } => tracing::error!(
                job = %job,
                "{job} failed again after {of} retries; the next try is its next scheduled run"
            ),
        }
    }

    fn status_line(&self, next: Option<(&str, DateTime<Utc>)>) -> String {
        if let Some(c) = &self.current {
            return format!(
                "{}: pulling, {} read",
                c.job,
                burrow_core::bytes::human(c.bytes_read.load(Ordering::Relaxed))
            );
        }
        match next {
            Some((job, at)) => format!(
                "idle; next: {} at {}",
                job,
                at.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M")
            ),
            None => "idle; nothing scheduled".into(),
        }
    }

    fn start_run(&mut self, job: String, slot: Option<DateTime<Utc>>) {
        if let Some(slot) = slot {
            self.state.mark_slot(&job, slot);
            if let Err(e) = self.store.save_state(&self.state) {
                tracing::error!("{e}");
            }
        }
        self.retries.started(&job);
        let ctl = RunControl::new(self.cancel.subscribe());
        let (runner, monitor) = (self.runner.clone(), self.monitor.clone());
        let (job2, ctl2) = (job.clone(), ctl.clone());
        let handle = tokio::spawn(async move {
            let run_id = ctl2.run_id.clone();
            burrow_core::monitor::monitored(
                monitor.as_ref(),
                &job2,
                &run_id,
                runner.run(&job2, ctl2),
            )
            .await
        });
        self.current = Some(Current {
            job,
            run_id: ctl.run_id,
            bytes_read: ctl.bytes_read,
            started: self.clock.now(),
            handle,
        });
    }

    async fn finish(&mut self, report: Result<RunReport, tokio::task::JoinError>) {
        let Some(cur) = self.current.take() else {
            return;
        };
        let summary = match report {
            Ok(r) => r.summary,
            Err(e) => {
                tracing::error!("the run of {} crashed: {e}", cur.job);
                burrow_core::RunSummary::without_run(
                    &cur.job,
                    &RunError::permanent(format!("crashed: {e}")),
                )
            }
        };
        tracing::info!(
            job = %cur.job,
            run_id = %cur.run_id,
            "run finished: {}",
            summary.status.as_str()
        );
        let record = RunRecord::from_summary(&summary, cur.started);
        self.state.record_run(record.clone());
        self.history.push(record);
        if let Err(e) = self.store.save_state(&self.state) {
            tracing::error!("{e}");
        }
        if let Err(e) = self.store.save_history(&self.history) {
            tracing::error!("{e}");
        }
        if summary.status == RunStatus::Skipped {
            self.awaiting_disk.insert(cur.job.clone());
        } else {
            self.awaiting_disk.remove(&cur.job);
        }
        if !*self.cancel.borrow() {
            self.plan_retry(&summary);
        }
        for w in self.waiters.remove(&cur.job).unwrap_or_default() {
            let _ = w.send(Reply::Finished {
                summary: Box::new(summary.clone()),
            });
        }
        if let Some(disk) = &self.disk
            && self.queue.is_empty()
        {
            // A key stick pulled during the run asked for the lock; the config may ask more.
            let asked = self.pending_lock.then_some(Release {
                unmount: true,
                lock: true,
                power_off: false,
            });
            if let Some(what) = self.cfg.release_after_run().or(asked) {
                let disk = disk.clone();
                tokio::spawn(
                    async move { burrow_core::disk::release_disk(disk.as_ref(), what).await },
                );
                self.pending_lock = false;
            }
        }
    }

    fn request(&mut self, req: Request, tx: Waiter) {
        match req {
            Request::Run { job } => {
                if self.cfg.job(&job).is_none() {
                    let _ = tx.send(Reply::Error {
                        message: format!("no job named {job:?} in {}", self.cfg.file.display()),
                    });
                    return;
                }
                let running = self.current.as_ref().is_some_and(|c| c.job == job);
                if !running {
                    self.queue.push(&job);
                }
                tracing::info!("run of {job} requested over the control socket");
                self.waiters.entry(job).or_default().push(tx);
            }
            Request::Status => {
                let mut view = self.status_json();
                let repo = self.cfg.repository.path.clone();
                let disk = self.disk.clone();
                tokio::spawn(async move {
                    status::add_disk_and_repository(&mut view, repo, disk.as_deref()).await;
                    let _ = tx.send(Reply::Status { status: view });
                });
            }
        }
    }

    fn status_json(&self) -> serde_json::Value {
        let in_loop = |name: &str| status::InLoop {
            queued: self.queue.contains(name),
            running: self.current.as_ref().is_some_and(|c| c.job == name),
            waiting_for_disk: self.awaiting_disk.contains(name),
            retry_at: self.retries.at(name),
        };
        let jobs = status::jobs(
            &self.cfg,
            &self.state,
            &self.plans,
            self.clock.now(),
            in_loop,
        );
        json!({
            "daemon": {
                "running": true,
                "pid": std::process::id(),
                "started": self.started.to_rfc3339(),
                "sim": self.sim,
                "config": self.cfg.file.display().to_string(),
            },
            "current": self.current.as_ref().map(|c| json!({
                "job": c.job,
                "run_id": c.run_id,
                "bytes_read": c.bytes_read.load(Ordering::Relaxed),
                "started": c.started.to_rfc3339(),
            })),
            "jobs": jobs,
        })
    }

    /// Unlocks and mounts the backup volume in a task (it can take minutes while a disk spins
    /// up), so the loop keeps answering and feeding the watchdog; the result arrives as
    /// [`Daemon::disk_ready`]. UDisks2 may publish a device a moment after udev announced it,
    /// hence a few tries.
    fn prepare_volume(&self) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        let tx = self.ready_tx.clone();
        tokio::spawn(async move {
            let mut result = disk.ensure_ready().await;
            for _ in 0..4 {
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                result = disk.ensure_ready().await;
            }
            let _ = tx.send(result.map(|v| v.mount_point)).await;
        });
    }

    /// The backup volume came up (or did not) after a hot-plug event.
    fn disk_ready(&mut self, result: Result<PathBuf, burrow_core::disk::DiskError>) {
        match result {
            Ok(mount_point) => {
                tracing::info!("backup volume ready at {}", mount_point.display());
                for job in std::mem::take(&mut self.awaiting_disk) {
                    tracing::info!("{} was skipped for the disk; running it now", job);
                    self.queue.push(&job);
                }
            }
            Err(e) => tracing::info!("backup volume not ready: {e}"),
        }
    }

    async fn disk_event(&mut self, ev: DiskEvent) {
        tracing::info!("disk event: {ev:?}");
        let Some(disk) = self.disk.clone() else {
            return;
        };
        match ev {
            DiskEvent::KeyAdded | DiskEvent::DiskAdded => self.prepare_volume(),
            DiskEvent::KeyRemoved => {
                if self
                    .cfg
                    .disk
                    .as_ref()
                    .is_some_and(|d| d.lock_when_key_removed)
                {
                    if self.current.is_some() {
                        tracing::info!(
                            "key stick removed: the disk is locked when the running job ends"
                        );
                        self.pending_lock = true;
                    } else {
                        let what = Release {
                            unmount: true,
                            lock: true,
                            power_off: false,
                        };
                        tokio::spawn(async move {
                            match disk.release(what).await {
                                Ok(()) => tracing::info!(
                                    "key stick removed: backup disk unmounted and locked"
                                ),
                                Err(e) => tracing::warn!("locking the backup disk failed: {e}"),
                            }
                        });
                    }
                }
            }
            DiskEvent::DiskRemoved => {
                if let Some(c) = &self.current {
                    tracing::warn!(
                        "backup disk removed while {} runs: that run will fail",
                        c.job
                    );
                }
            }
        }
    }
}

/// Binds the control socket: owner-only, replacing a stale socket but never a live daemon's.
fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |what: &'static str, at: &Path| {
        let at = at.to_owned();
        move |source| SocketError::Io { what, at, source }
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(failed("create", dir))?;
        // Whoever can reach the socket can start runs: owner only.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(failed("restrict", dir))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::Taken(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(failed("listen on", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(failed("restrict", path))?;
    Ok(l)
}

/// Why the control socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another burrow daemon is already running (its socket {} answers)", .0.display())]
    Taken(PathBuf),
    #[error("cannot {what} {}: {source}", at.display())]
    Io {
        what: &'static str,
        at: PathBuf,
        source: std::io::Error,
    },
}

async fn accept(listener: UnixListener, tx: mpsc::Sender<(Request, Waiter)>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    let (otx, orx) = oneshot::channel();
                    if tx.send((req, otx)).await.is_err() {
                        return;
                    }
                    orx.await.unwrap_or(Reply::Error {
                        message: "the daemon dropped the request".into(),
                    })
                }
                Err(e) => Reply::Error {
                    message: format!("bad request: {e}"),
                },
            };
            if let Ok(mut s) = serde_json::to_string(&reply) {
                s.push('\n');
                let _ = w.write_all(s.as_bytes()).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon queues the check, keeps its slots and looks up its last run under one name;
    /// the run's summary must carry that name, or `status` says it never ran.
    #[tokio::test]
    async fn the_check_reports_under_the_name_the_daemon_keeps_it_by() {
        let tmp = tempfile::tempdir().unwrap();
        let pw = tmp.path().join("pw");
        std::fs::write(&pw, "pw\n").unwrap();
        let text = format!(
            "repository: {{path: {}, password_file: {}}}\nstate_dir: {}\ncheck: {{schedule: \"0 4 * * *\"}}\n",
            tmp.path().join("no-repo").display(),
            pw.display(),
            tmp.path().join("state").display(),
        );
        let cfg = burrow_config::parse(&text, Path::new("c.yaml")).unwrap();
        std::fs::create_dir_all(&cfg.state_dir).unwrap();
        let (_cancel, rx) = watch::channel(false);
        let ports = burrow_run::Ports {
            disk: None::<&burrow_disk::SimDisk>,
            servers: &burrow_ssh::SshServers,
            repos: &burrow_repo::LocalRepositories,
        };
        let report = burrow_run::run_check(&cfg, ports, RunControl::new(rx)).await;
        assert_eq!(report.summary.job, CHECK);
        let mut state = State::default();
        state.mark_slot(CHECK, Utc::now());
        state.record_run(RunRecord::from_summary(&report.summary, Utc::now()));
        let st = state.job(CHECK);
        assert!(st.last_slot.is_some() && st.last_run.is_some(), "{state:?}");
        assert_eq!(state.jobs.len(), 1, "{state:?}");
    }
}
