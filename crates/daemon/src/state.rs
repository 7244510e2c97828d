//! What the daemon remembers across restarts: per job, when it first saw the job, which
//! schedule slot it last handled and how the last run went (`state.json`), plus a bounded
//! history of recent runs for `burrow status` (`history.json`).
//!
//! Both files are replaced atomically (temp file in the same directory, fsync, rename, fsync of
//! the directory), so a power cut on the Pi leaves either the old or the new file, never a torn
//! one. A file that is corrupt anyway is moved aside as `<name>.corrupt` and the daemon starts
//! fresh: losing the catch-up memory costs at most one missed run, refusing to start costs all.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use burrow_core::run::{CHECK_RUN, ErrorClass, RunStatus, RunSummary};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";
pub const HISTORY_FILE: &str = "history.json";
/// Runs kept in `history.json`, over all jobs; the oldest are dropped first.
pub const HISTORY_LIMIT: usize = 200;

/// What the daemon knows about one job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// When the daemon first saw this job in its config. A job that never ran waits for its
    /// first slot after this (like a systemd `Persistent=` timer) instead of running at once.
    #[serde(default)]
    pub first_seen: Option<DateTime<Utc>>,
    /// The schedule slot last handled, whether the run succeeded or not. Slots up to here are
    /// never run again; a later slot that passed while the daemon was down is caught up.
    #[serde(default)]
    pub last_slot: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_run: Option<RunRecord>,
}

/// One finished run, as kept in the state and the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub job: String,
    pub run_id: String,
    pub status: RunStatus,
    pub started: DateTime<Utc>,
    pub duration_s: f64,
    pub bytes_added: u64,
    /// The run's peak resident memory, in bytes.
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    pub snapshot_id: Option<String>,
    /// Why the run failed or was skipped.
    pub reason: Option<String>,
    /// Whether that cause may pass by itself (`temporary`: the daemon tries again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
}

impl RunRecord {
    /// `started` is the daemon's own clock reading when it began the run (the summary carries
    /// only a display string).
    pub fn from_summary(summary: &RunSummary, started: DateTime<Utc>) -> Self {
        RunRecord {
            job: summary.job.clone(),
            run_id: summary.run_id.clone(),
            status: summary.status,
            started,
            duration_s: summary.duration_s,
            bytes_added: summary.bytes_added,
            peak_rss_bytes: summary.peak_rss_bytes,
            snapshot_id: summary.snapshot_id.clone(),
            reason: summary.reason.clone(),
            error_class: summary.error_class,
        }
    }
}

/// The contents of `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default, deserialize_with = "jobs_one_check")]
    pub jobs: BTreeMap<String, JobState>,
}

/// Where earlier versions kept the repository check's slots; its last run was under
/// [`CHECK_RUN`] already. A file written by them is read with both merged under [`CHECK_RUN`].
const OLD_CHECK: &str = "@check";

fn jobs_one_check<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, JobState>, D::Error> {
    let mut jobs = BTreeMap::<String, JobState>::deserialize(d)?;
    if let Some(old) = jobs.remove(OLD_CHECK) {
        let check = jobs.entry(CHECK_RUN.to_owned()).or_default();
        check.first_seen = match (check.first_seen, old.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        check.last_slot = check.last_slot.max(old.last_slot);
        if let Some(run) = old.last_run
            && check
                .last_run
                .as_ref()
                .is_none_or(|r| r.started < run.started)
        {
            check.last_run = Some(run);
        }
    }
    Ok(jobs)
}

impl State {
    /// The state of a job; a job not seen before has the default (empty) state.
    pub fn job(&self, name: &str) -> JobState {
        self.jobs.get(name).cloned().unwrap_or_default()
    }

    /// Notes that the daemon sees `name` at `now`; returns true when this is the first time
    /// (the caller should then save).
    pub fn observe(&mut self, name: &str, now: DateTime<Utc>) -> bool {
        let job = self.jobs.entry(name.to_owned()).or_default();
        if job.first_seen.is_none() {
            job.first_seen = Some(now);
            true
        } else {
            false
        }
    }

    /// Marks `slot` handled for `name`. Called when the run for it starts, so a crash during
    /// the run does not make the daemon repeat it in a loop.
    pub fn mark_slot(&mut self, name: &str, slot: DateTime<Utc>) {
        let job = self.jobs.entry(name.to_owned()).or_default();
        if job.last_slot.is_none_or(|s| s < slot) {
            job.last_slot = Some(slot);
        }
    }

    pub fn record_run(&mut self, record: RunRecord) {
        let job = self.jobs.entry(record.job.clone()).or_default();
        job.last_run = Some(record);
    }
}

/// The contents of `history.json`: the most recent runs, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default)]
    pub runs: VecDeque<RunRecord>,
}

impl History {
    pub fn push(&mut self, record: RunRecord) {
        self.runs.push_back(record);
        while self.runs.len() > HISTORY_LIMIT {
            self.runs.pop_front();
        }
    }

    /// The runs of one job, newest first.
    pub fn for_job<'a>(&'a self, job: &'a str) -> impl Iterator<Item = &'a RunRecord> + 'a {
        self.runs.iter().rev().filter(move |r| r.job == job)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "cannot write {path}: {source} (check that the state directory exists and is writable)"
    )]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The state directory (e.g. `/var/lib/burrow`).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// The result of a tolerant load: the data to use, and the problem that was worked around
/// (a corrupt file that was moved aside, or one that could not be read), for the log.
#[derive(Debug)]
pub struct Loaded<T> {
    pub value: T,
    pub problem: Option<StateError>,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn history_path(&self) -> PathBuf {
        self.dir.join(HISTORY_FILE)
    }

    /// Strict load: a missing file is a fresh state, a corrupt one an error naming the file.
    pub fn load_state(&self) -> Result<State, StateError> {
        load_json(&self.state_path())
    }

    /// Load for the daemon's start: never fails. A corrupt file is kept as
    /// `state.json.corrupt` for inspection and the daemon starts fresh.
    pub fn load_state_or_fresh(&self) -> Loaded<State> {
        load_or_fresh(&self.state_path())
    }

    pub fn save_state(&self, state: &State) -> Result<(), StateError> {
        save_json(&self.state_path(), state)
    }

    pub fn load_history(&self) -> Result<History, StateError> {
        load_json(&self.history_path())
    }

    pub fn load_history_or_fresh(&self) -> Loaded<History> {
        load_or_fresh(&self.history_path())
    }

    pub fn save_history(&self, history: &History) -> Result<(), StateError> {
        save_json(&self.history_path(), history)
    }

    /// Keeps a run made without the daemon (`burrow run` with none answering) as the job's
    /// last run and in the history, so `burrow status` and a daemon started later know it.
    /// A state file that cannot be read is left as it is, for the daemon to set aside.
    pub fn record_by_hand(&self, summary: &RunSummary) -> Result<(), StateError> {
        let started = DateTime::parse_from_rfc3339(&summary.started)
            .map_or_else(|_| Utc::now(), |t| t.with_timezone(&Utc));
        let record = RunRecord::from_summary(summary, started);
        std::fs::create_dir_all(self.dir()).map_err(|source| StateError::Write {
            path: self.dir().to_owned(),
            source,
        })?;
        let mut state = self.load_state()?;
        state.record_run(record.clone());
        self.save_state(&state)?;
        let mut history = self.load_history()?;
        history.push(record);
        self.save_history(&history)
    }
}

fn load_json<T: Default + for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(T::default()),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn load_or_fresh<T: Default + for<'de> Deserialize<'de>>(path: &Path) -> Loaded<T> {
    match load_json(path) {
        Ok(value) => Loaded {
            value,
            problem: None,
        },
        Err(problem) => {
            if matches!(problem, StateError::Corrupt { .. }) {
                // Keep the evidence, and get the bad file out of the way so the next save
                // does not look like it overwrote something worth keeping.
                let aside = corrupt_path(path);
                if let Err(e) = fs::rename(path, &aside) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot move corrupt state file aside");
                }
            }
            Loaded {
                value: T::default(),
                problem: Some(problem),
            }
        }
    }
}

/// `state.json` → `state.json.corrupt`.
pub fn corrupt_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".corrupt");
    path.with_file_name(name)
}

fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Write {
        path: path.to_owned(),
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|source| StateError::Write {
        path: path.to_owned(),
        source,
    })
}

pub use burrow_core::fsutil::write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn record(job: &str, n: usize) -> RunRecord {
        RunRecord {
            job: job.to_owned(),
            run_id: format!("run-{n}"),
            status: RunStatus::Ok,
            started: utc("2026-11-20T03:00:00Z"),
            duration_s: 12.5,
            bytes_added: n as u64,
            peak_rss_bytes: Some(50 << 20),
            snapshot_id: Some(format!("snap{n}")),
            reason: None,
            error_class: None,
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn missing_files_are_fresh_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert_eq!(store.load_state().unwrap(), State::default());
        assert_eq!(store.load_history().unwrap(), History::default());
        let loaded = store.load_state_or_fresh();
        assert!(loaded.problem.is_none());
    }

    #[test]
    fn state_round_trip_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut state = State::default();
        assert!(state.observe("web", utc("2026-11-01T10:00:00Z")));
        assert!(!state.observe("web", utc("2026-11-02T10:00:00Z")));
        state.mark_slot("web", utc("2026-11-20T03:00:00Z"));
        // An older slot never moves the mark back.
        state.mark_slot("web", utc("2026-11-19T03:00:00Z"));
        state.record_run(record("web", 1));
        store.save_state(&state).unwrap();
        store.save_state(&state).unwrap();

        let back = store.load_state().unwrap();
        assert_eq!(back, state);
        let web = back.job("web");
        assert_eq!(web.first_seen, Some(utc("2026-11-01T10:00:00Z")));
        assert_eq!(web.last_slot, Some(utc("2026-11-20T03:00:00Z")));
        assert_eq!(web.last_run.unwrap().snapshot_id.as_deref(), Some("snap1"));
        assert_eq!(back.job("other"), JobState::default());
        assert_eq!(files(dir.path()), ["state.json"]);

        let text = fs::read_to_string(store.state_path()).unwrap();
        assert!(text.contains("\"status\": \"ok\""), "{text}");
    }

    #[test]
    fn the_check_has_one_name_and_old_state_files_still_read() {
        // As earlier versions wrote it after a check had run: the slot under "@check", the
        // run under "check" (the name in the run's summary), so `status` said "never ran".
        let old = r#"{"jobs": {
            "@check": {"first_seen": "2026-11-01T10:00:00Z", "last_slot": "2026-11-22T04:00:00Z"},
            "check": {"last_run": {"job": "check", "run_id": "r1", "status": "ok",
                "started": "2026-11-22T04:00:01Z", "duration_s": 3.0, "bytes_added": 0,
                "snapshot_id": null, "reason": null}},
            "web": {"first_seen": "2026-11-01T10:00:00Z"}
        }}"#;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        fs::write(store.state_path(), old).unwrap();
        let state = store.load_state().unwrap();
        assert_eq!(
            state.jobs.keys().map(String::as_str).collect::<Vec<_>>(),
            [CHECK_RUN, "web"]
        );
        let check = state.job(CHECK_RUN);
        assert_eq!(check.first_seen, Some(utc("2026-11-01T10:00:00Z")));
        assert_eq!(check.last_slot, Some(utc("2026-11-22T04:00:00Z")));
        assert_eq!(check.last_run.unwrap().run_id, "r1");

        // The daemon's queue name, the run summary's job name and the state key are one.
        assert_eq!(crate::serve::CHECK, CHECK_RUN);
        let mut state = State::default();
        state.mark_slot(crate::serve::CHECK, utc("2026-11-23T04:00:00Z"));
        let mut run = record(CHECK_RUN, 2);
        run.started = utc("2026-11-23T04:00:01Z");
        state.record_run(run);
        store.save_state(&state).unwrap();
        let back = store.load_state().unwrap().job(crate::serve::CHECK);
        assert_eq!(back.last_slot, Some(utc("2026-11-23T04:00:00Z")));
        assert_eq!(back.last_run.unwrap().run_id, "run-2");
    }

    #[test]
    fn corrupt_state_is_reported_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        fs::write(store.state_path(), b"{\"jobs\": {\"web\": ").unwrap();

        let e = store.load_state().unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }));
        assert!(e.to_string().contains("state.json"), "{e}");

        let loaded = store.load_state_or_fresh();
        assert_eq!(loaded.value, State::default());
        assert!(matches!(loaded.problem, Some(StateError::Corrupt { .. })));
        assert_eq!(files(dir.path()), ["state.json.corrupt"]);

        store.save_state(&loaded.value).unwrap();
        assert_eq!(files(dir.path()), ["state.json", "state.json.corrupt"]);
    }

    #[test]
    fn failed_write_reports_the_path_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("missing-dir"));
        let e = store.save_state(&State::default()).unwrap_err();
        assert!(e.to_string().contains("missing-dir/state.json"), "{e}");
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn history_is_bounded_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut history = History::default();
        for n in 0..HISTORY_LIMIT + 25 {
            history.push(record(if n % 2 == 0 { "web" } else { "db" }, n));
        }
        assert_eq!(history.runs.len(), HISTORY_LIMIT);
        assert_eq!(history.runs.front().unwrap().run_id, "run-25");
        assert_eq!(
            history.runs.back().unwrap().run_id,
            format!("run-{}", HISTORY_LIMIT + 24)
        );
        let web: Vec<_> = history.for_job("web").take(2).map(|r| &r.run_id).collect();
        assert_eq!(web, ["run-224", "run-222"]);

        store.save_history(&history).unwrap();
        assert_eq!(store.load_history().unwrap(), history);
        assert_eq!(files(dir.path()), ["history.json"]);
    }

    #[test]
    fn record_from_summary() {
        let s = RunSummary::without_snapshot(
            "db",
            "r1",
            "2026-11-20T03:00:00+01:00",
            &burrow_core::RunError::skip("backup disk absent"),
            0.5,
        );
        let r = RunRecord::from_summary(&s, utc("2026-11-20T02:00:00Z"));
        assert_eq!(r.job, "db");
        assert_eq!(r.status, RunStatus::Skipped);
        assert_eq!(r.reason.as_deref(), Some("backup disk absent"));
        assert_eq!(r.snapshot_id, None);
    }
}
