//! `burrow status`: every job's last run, next run and place in the loop, the backup disk and
//! the repository. A running daemon answers it over its control socket; without one, the
//! same view is read from `state_dir` (the schedule state and the last runs the daemon
//! saved), and it says that no daemon runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use burrow_config::Config;
use burrow_core::disk::DiskManager;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::plan::{self, JobPlan};
use crate::serve::CHECK;
use crate::state::{State, Store};

/// The schedules the loop keeps: every enabled job that has one, and the check's.
pub fn plans(cfg: &Config) -> Vec<JobPlan> {
    let mut plans: Vec<JobPlan> = (cfg.jobs.values())
        .filter(|j| j.enabled)
        .filter_map(|j| {
            (j.schedule.clone()).map(|s| JobPlan::new(j.name.clone(), s, j.random_delay))
        })
        .collect();
    if let Some(c) = &cfg.check {
        plans.push(JobPlan::new(CHECK, c.schedule.clone(), Duration::ZERO));
    }
    plans
}

/// What only a running loop knows of a job.
#[derive(Debug, Clone, Default)]
pub struct InLoop {
    pub queued: bool,
    pub running: bool,
    pub waiting_for_disk: bool,
    pub retry_at: Option<DateTime<Utc>>,
}

/// The `jobs` of the status: each job of the config (and the check), with its schedule, its
/// next run after `now`, its last run from `state`, and `in_loop` (all false without a
/// daemon).
pub fn jobs(
    cfg: &Config,
    state: &State,
    plans: &[JobPlan],
    now: DateTime<Utc>,
    in_loop: impl Fn(&str) -> InLoop,
) -> Vec<Value> {
    let check = (cfg.check.as_ref()).map(|c| (CHECK.to_owned(), true, Some(c.schedule.expr())));
    let jobs = (cfg.jobs.values()).map(|j| {
        let schedule = j.schedule.as_ref().map(|s| s.expr());
        (j.name.clone(), j.enabled, schedule)
    });
    jobs.chain(check)
        .map(|(name, enabled, schedule)| {
            let st = state.job(&name);
            let next =
                (plans.iter().find(|p| p.name == name)).and_then(|p| plan::next_fire(p, &st, now));
            let l = in_loop(&name);
            json!({
                "name": name,
                "enabled": enabled,
                "schedule": schedule,
                "next_run": next.map(|t| t.to_rfc3339()),
                "queued": l.queued,
                "running": l.running,
                "waiting_for_disk": l.waiting_for_disk,
                "retry_at": l.retry_at.map(|t| t.to_rfc3339()),
                "last": st.last_run,
            })
        })
        .collect()
}

/// Adds the backup disk's state (when the config has one) and the repository's path and
/// size to `status`. Nothing is unlocked or mounted for it.
pub async fn add_disk_and_repository<D: DiskManager>(
    status: &mut Value,
    repo: PathBuf,
    disk: Option<&D>,
) {
    let disk_state = match disk {
        Some(d) => Some(d.state().await),
        None => None,
    };
    let repo_path = match (&disk_state, repo.is_relative()) {
        (Some(ds), true) => ds.mount_point.as_ref().map(|m| m.join(&repo)),
        _ => Some(repo),
    };
    let size = match repo_path.clone() {
        Some(p) => (tokio::task::spawn_blocking(move || dir_size(&p)).await)
            .ok()
            .flatten(),
        None => None,
    };
    status["disk"] = serde_json::to_value(&disk_state).unwrap_or_default();
    status["repository"] = json!({
        "path": repo_path.map(|p| p.display().to_string()),
        "size_bytes": size,
    });
}

/// The status without a daemon: read from `state_dir`, `"daemon": {"running": false}`.
/// A state file that cannot be read is said in `"problems"`, and the view is built without
/// it.
pub async fn without_daemon<D: DiskManager>(
    cfg: &Config,
    disk: Option<&D>,
    now: DateTime<Utc>,
) -> Value {
    // Read only: a damaged state file is said, not moved aside (the daemon does that).
    let (state, problems) = match Store::new(cfg.state_dir.clone()).load_state() {
        Ok(state) => (state, Vec::new()),
        Err(e) => (State::default(), vec![e.to_string()]),
    };
    let jobs = jobs(cfg, &state, &plans(cfg), now, |_| InLoop::default());
    let mut status = json!({
        "daemon": {
            "running": false,
            "config": cfg.file.display().to_string(),
            "state_dir": cfg.state_dir.display().to_string(),
        },
        "current": null,
        "jobs": jobs,
        "problems": problems,
    });
    add_disk_and_repository(&mut status, cfg.repository.path.clone(), disk).await;
    status
}

/// The daemon's view when one answers on its control socket, or else `offline()` (the view
/// from `state_dir`, [`without_daemon`]).
pub async fn current(
    offline: impl AsyncFnOnce() -> Value,
) -> Result<Value, crate::control::ControlError> {
    match crate::control::Client::connect().await {
        Ok(Some(client)) => client.status().await,
        Ok(None) => Ok(offline().await),
        Err(e) => {
            tracing::warn!("{e}; showing what state_dir holds");
            Ok(offline().await)
        }
    }
}

fn dir_size(p: &Path) -> Option<u64> {
    let mut total = 0u64;
    let mut stack = vec![p.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    Some(total)
}
