//! The daemon's loop in-process, on fakes of every port: scripted runs, a recording monitor,
//! the simulated disk, a clock that runs with tokio's paused time. Days of schedule pass in
//! milliseconds; what the loop decides is checked run by run (catch-up, the queue, a disk
//! plugged in for a skipped job, a try again, a stop during a run).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_config::Config;
use burrow_core::clock::Clock;
use burrow_core::run::{RunControl, RunReport, Runner};
use burrow_core::{Exit, RunError, RunStatus, RunSummary};
use burrow_daemon::serve::{Adapters, run_daemon};
use burrow_daemon::state::{State, Store};
use burrow_disk::SimDisk;
use burrow_notify::systemd::Systemd;
use burrow_testkit::fakes::{Ping, RecordingMonitor, TestClock};
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// How a scripted run ends.
#[derive(Debug, Clone, Copy)]
enum End {
    Ok,
    /// The disk is absent (skipped, 75).
    Skip,
    /// The server did not answer.
    Temporary,
}

/// One run as the runner saw it.
#[derive(Debug, Clone)]
struct Seen {
    job: String,
    started: DateTime<Utc>,
    ended: DateTime<Utc>,
    /// The daemon asked it to stop.
    cancelled: bool,
}

/// Runs that take `took` (or end early when cancelled) and end as scripted per job (then
/// `Ok` once the script is used up).
struct ScriptedRuns {
    clock: Arc<TestClock>,
    took: Duration,
    script: Mutex<BTreeMap<String, VecDeque<End>>>,
    seen: Mutex<Vec<Seen>>,
}

impl ScriptedRuns {
    fn new(clock: Arc<TestClock>, took: Duration, script: &[(&str, &[End])]) -> Arc<Self> {
        Arc::new(ScriptedRuns {
            clock,
            took,
            script: Mutex::new(
                script
                    .iter()
                    .map(|(j, e)| ((*j).to_owned(), e.iter().copied().collect()))
                    .collect(),
            ),
            seen: Mutex::default(),
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Runner for ScriptedRuns {
    async fn run(&self, job: &str, ctl: RunControl) -> RunReport {
        let started = self.clock.now();
        let mut cancel = ctl.cancel.clone();
        let cancelled = tokio::select! {
            _ = tokio::time::sleep(self.took) => false,
            _ = cancel.wait_for(|c| *c) => true,
        };
        let end = self
            .script
            .lock()
            .unwrap()
            .get_mut(job)
            .and_then(VecDeque::pop_front)
            .unwrap_or(End::Ok);
        let ended = self.clock.now();
        self.seen.lock().unwrap().push(Seen {
            job: job.to_owned(),
            started,
            ended,
            cancelled,
        });
        let secs = (ended - started).as_seconds_f64();
        let at = started.to_rfc3339();
        let summary = match end {
            End::Ok => RunSummary::new(job, &ctl.run_id, &at, RunStatus::Ok, secs),
            End::Skip => RunSummary::without_snapshot(
                job,
                &ctl.run_id,
                &at,
                &RunError::skip("the backup disk is absent"),
                secs,
            ),
            End::Temporary => RunSummary::without_snapshot(
                job,
                &ctl.run_id,
                &at,
                &RunError::temporary("cannot connect to server vps: connection refused"),
                secs,
            ),
        };
        RunReport {
            summary,
            log: String::new(),
        }
    }
}

struct World {
    _tmp: tempfile::TempDir,
    state_dir: std::path::PathBuf,
    clock: Arc<TestClock>,
    runs: Arc<ScriptedRuns>,
    monitor: Arc<RecordingMonitor>,
    disk: Arc<SimDisk>,
    stop: Option<oneshot::Sender<()>>,
    daemon: tokio::task::JoinHandle<Exit>,
}

impl World {
    /// The loop on `jobs` (YAML under `jobs:`), starting at `now`; `state` is written first.
    fn start(
        jobs: &str,
        now: &str,
        took: Duration,
        script: &[(&str, &[End])],
        state: impl FnOnce(&mut State),
    ) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let state_dir = tmp.path().join("state");
        let text = format!(
            "repository: {{path: burrow, password_file: /dev/null}}\nstate_dir: {}\ndisk:\n  backup: {{uuid: 0b5e1f3c-sim}}\njobs:\n{jobs}",
            state_dir.display()
        );
        let cfg: Config = burrow_config::parse_with(&text, Path::new("c.yaml"), false).unwrap();
        let mut st = State::default();
        state(&mut st);
        std::fs::create_dir_all(&state_dir).unwrap();
        Store::new(&state_dir).save_state(&st).unwrap();
        let volume = tmp.path().join("volume");
        std::fs::create_dir_all(&volume).unwrap();
        let clock = Arc::new(TestClock::starting_at(utc(now)));
        let runs = ScriptedRuns::new(clock.clone(), took, script);
        let monitor = Arc::new(RecordingMonitor::default());
        let disk = Arc::new(SimDisk::new(volume, false));
        let (tx, rx) = oneshot::channel::<()>();
        let adapters = {
            let (disk, monitor, runner) = (disk.clone(), monitor.clone(), runs.clone());
            let clock: Arc<dyn Clock> = clock.clone();
            move |_: &Arc<Config>| Adapters {
                disk: Some(disk),
                monitor,
                runner,
                clock,
                sd: Arc::new(Systemd::disabled()),
                sim: true,
            }
        };
        let sock = tmp.path().join("control.sock");
        let daemon = tokio::spawn(run_daemon(cfg, adapters, sock, async move {
            let _ = rx.await;
        }));
        World {
            _tmp: tmp,
            state_dir,
            clock,
            runs,
            monitor,
            disk,
            stop: Some(tx),
            daemon,
        }
    }

    /// Lets the daemon's time pass until `until` (by the test clock).
    async fn until(&self, until: &str) {
        let until = utc(until);
        while self.clock.now() < until {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits (on the test clock) until `n` runs ended; panics after `limit` of its time.
    async fn runs_ended(&self, n: usize, limit: Duration) -> Vec<Seen> {
        let t0 = self.clock.now();
        loop {
            let seen = self.runs.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                self.clock.now() - t0 < chrono::TimeDelta::from_std(limit).unwrap(),
                "{} of {n} runs after {limit:?}: {seen:?}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn stop(mut self) -> (Exit, World) {
        let _ = self.stop.take().unwrap().send(());
        let exit = (&mut self.daemon).await.unwrap();
        (exit, self)
    }
}

fn at(seen: &Seen) -> String {
    seen.started.format("%Y-%m-%d %H:%M").to_string()
}

/// A Pi that was off for three nights runs the daily job once when it comes back, then at
/// the next 03:00; monitoring hears a start and a finish with the same run id for each.
#[tokio::test(start_paused = true)]
async fn missed_nights_are_caught_up_once_then_the_schedule_goes_on() {
    let w = World::start(
        "  web: {paths: [/srv], schedule: \"0 3 * * *\", timezone: UTC}\n",
        "2026-11-30T12:00:00Z",
        Duration::from_secs(600),
        &[],
        |st| {
            st.observe("web", utc("2026-11-20T00:00:00Z"));
            st.mark_slot("web", utc("2026-11-27T03:00:00Z"));
        },
    );
    let first = w.runs_ended(1, Duration::from_secs(3600)).await;
    assert_eq!(at(&first[0]), "2026-11-30 12:00", "{first:?}");
    w.until("2026-12-01T02:59:00Z").await;
    assert_eq!(w.runs.seen().len(), 1, "caught up once, not three times");
    let both = w.runs_ended(2, Duration::from_secs(3600)).await;
    assert_eq!(at(&both[1]), "2026-12-01 03:00", "{both:?}");
    let (exit, w) = w.stop().await;
    assert_eq!(exit, Exit::Ok);
    let pings = w.monitor.pings();
    assert_eq!(pings.len(), 4, "{pings:?}");
    for pair in pings.chunks(2) {
        match pair {
            [
                Ping::Start { job, run_id },
                Ping::Finish {
                    job: j2,
                    run_id: r2,
                    status: RunStatus::Ok,
                },
            ] => assert_eq!((job, run_id), (j2, r2)),
            other => panic!("{other:?}"),
        }
    }
    let slot = Store::new(&w.state_dir)
        .load_state()
        .unwrap()
        .job("web")
        .last_slot;
    assert_eq!(slot, Some(utc("2026-12-01T03:00:00Z")));
}

/// Two jobs due at the same minute run one after the other, in the config's order, never
/// at once.
#[tokio::test(start_paused = true)]
async fn jobs_due_together_run_one_at_a_time() {
    let w = World::start(
        "  alpha: {paths: [/a], schedule: \"0 3 * * *\", timezone: UTC}\n  beta: {paths: [/b], schedule: \"0 3 * * *\", timezone: UTC}\n",
        "2026-12-01T02:59:00Z",
        Duration::from_secs(1200),
        &[],
        |_| {},
    );
    let seen = w.runs_ended(2, Duration::from_secs(7200)).await;
    assert_eq!(seen[0].job, "alpha");
    assert_eq!(seen[1].job, "beta");
    assert_eq!(at(&seen[0]), "2026-12-01 03:00");
    assert!(seen[1].started >= seen[0].ended, "{seen:?}");
    let (exit, _) = w.stop().await;
    assert_eq!(exit, Exit::Ok);
}

/// A job skipped for an absent disk runs as soon as the disk is plugged in, not at its next
/// slot.
#[tokio::test(start_paused = true)]
async fn a_job_skipped_for_the_disk_runs_when_the_disk_arrives() {
    let w = World::start(
        "  web: {paths: [/srv], schedule: \"0 3 * * *\", timezone: UTC}\n",
        "2026-12-01T02:59:00Z",
        Duration::from_secs(60),
        &[("web", &[End::Skip])],
        |_| {},
    );
    w.disk.unplug_disk();
    let first = w.runs_ended(1, Duration::from_secs(3600)).await;
    assert_eq!(at(&first[0]), "2026-12-01 03:00");
    w.until("2026-12-01T09:00:00Z").await;
    assert_eq!(
        w.runs.seen().len(),
        1,
        "nothing runs while the disk is away"
    );
    w.disk.plug_disk();
    let both = w.runs_ended(2, Duration::from_secs(600)).await;
    assert_eq!(at(&both[1]), "2026-12-01 09:00", "{both:?}");
    let (_, w) = w.stop().await;
    let statuses: Vec<RunStatus> = w
        .monitor
        .pings()
        .into_iter()
        .filter_map(|p| match p {
            Ping::Finish { status, .. } => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [RunStatus::Skipped, RunStatus::Ok]);
}

/// A run that failed for a temporary cause is tried again after `retry_wait`, then after
/// twice that; a success ends the tries.
#[tokio::test(start_paused = true)]
async fn a_temporary_failure_is_tried_again_with_growing_waits() {
    let w = World::start(
        "  web: {paths: [/srv], schedule: \"0 3 * * *\", timezone: UTC, retries: 3, retry_wait: 10m}\n",
        "2026-12-01T02:59:00Z",
        Duration::from_secs(60),
        &[("web", &[End::Temporary, End::Temporary])],
        |_| {},
    );
    let seen = w.runs_ended(3, Duration::from_secs(7200)).await;
    let starts: Vec<String> = seen.iter().map(at).collect();
    // 03:00 fails at 03:01; +10 min; fails at 03:12; +20 min
    assert_eq!(
        starts,
        ["2026-12-01 03:00", "2026-12-01 03:11", "2026-12-01 03:32"]
    );
    w.until("2026-12-01T12:00:00Z").await;
    assert_eq!(w.runs.seen().len(), 3, "the success ended the tries");
    let (exit, _) = w.stop().await;
    assert_eq!(exit, Exit::Ok);
}

/// A stop during a run asks the run to stop, waits for it and records it before the daemon
/// exits.
#[tokio::test(start_paused = true)]
async fn a_stop_during_a_run_waits_for_the_run_and_records_it() {
    let w = World::start(
        "  web: {paths: [/srv], schedule: \"0 3 * * *\", timezone: UTC}\n",
        "2026-12-01T02:59:00Z",
        Duration::from_secs(4 * 3600),
        &[],
        |_| {},
    );
    w.until("2026-12-01T03:30:00Z").await;
    assert!(w.runs.seen().is_empty(), "the run is still going");
    let (exit, w) = w.stop().await;
    assert_eq!(exit, Exit::Ok);
    let seen = w.runs.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].cancelled, "{seen:?}");
    let history = Store::new(&w.state_dir).load_history().unwrap();
    assert_eq!(history.runs.len(), 1, "{history:?}");
    assert!(matches!(
        w.monitor.pings().last(),
        Some(Ping::Finish { job, .. }) if job == "web"
    ));
}
