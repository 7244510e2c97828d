//! Scheduling decisions as pure functions of `now`: which slot of a job is due, when the
//! daemon should wake up next, and the queue that serialises runs.
//!
//! A *slot* is a fire time of the job's cron schedule. A job is due for the latest slot after
//! the one it last handled (or after it was first seen), so a daemon that was down for three
//! days runs a daily job once, not three times. A per-job random delay spreads jobs that share
//! a schedule; it is derived from (job, slot) so that it is the same after a restart and in
//! tests, and a slot only becomes due once its delay has passed.
//!
//! Nothing here reads a clock: the daemon passes `now`, tests pass whatever they like.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use burrow_core::schedule::Schedule;
use chrono::{DateTime, TimeDelta, Utc};

use crate::state::{JobState, State};

/// Upper bound on slots walked in one decision, so that a pathological schedule (every minute,
/// a random delay of weeks) costs bounded time instead of hanging the scheduler.
const MAX_STEPS: usize = 100_000;

/// What the scheduler needs to know about a job.
#[derive(Debug, Clone)]
pub struct JobPlan {
    pub name: String,
    pub schedule: Schedule,
    /// Each slot fires at a fixed pseudo-random offset in `[0, random_delay)` after it.
    pub random_delay: Duration,
}

impl JobPlan {
    pub fn new(name: impl Into<String>, schedule: Schedule, random_delay: Duration) -> Self {
        JobPlan {
            name: name.into(),
            schedule,
            random_delay,
        }
    }

    /// When the run for `slot` should start: the slot plus its delay.
    pub fn fire_time(&self, slot: DateTime<Utc>) -> DateTime<Utc> {
        let delay = delay_for(&self.name, slot, self.random_delay);
        slot + TimeDelta::from_std(delay).unwrap_or(TimeDelta::zero())
    }
}

/// The delay of one slot: a stable hash of (job, slot) mapped into `[0, max)` at millisecond
/// resolution. FNV-1a rather than std's hasher, whose output may change between Rust releases
/// and would then move every job's start time after an upgrade.
pub fn delay_for(job: &str, slot: DateTime<Utc>, max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if max_ms == 0 {
        return Duration::ZERO;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = job
        .as_bytes()
        .iter()
        .copied()
        .chain([0xff])
        .chain(slot.timestamp().to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Duration::from_millis(h % max_ms)
}

/// The point after which slots count for this job: the last handled slot or the time the job
/// was first seen, whichever is later. `None` for a job the daemon has not observed yet.
fn since(state: &JobState) -> Option<DateTime<Utc>> {
    match (state.last_slot, state.first_seen) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// A job state with times after `now` (the clock was wrong when they were written, or the
/// state comes from another machine), made usable: a handled slot in the future counts as not
/// handled, a `first_seen` in the future becomes `now`. `None` when nothing is in the future.
/// Left as it is, such a state would keep the job from ever being due until that time.
pub fn without_future(state: &JobState, now: DateTime<Utc>) -> Option<JobState> {
    let slot_ahead = state.last_slot.is_some_and(|s| s > now);
    let seen_ahead = state.first_seen.is_some_and(|s| s > now);
    if !slot_ahead && !seen_ahead {
        return None;
    }
    Some(JobState {
        first_seen: if seen_ahead {
            Some(now)
        } else {
            state.first_seen
        },
        last_slot: state.last_slot.filter(|_| !slot_ahead),
        last_run: state.last_run.clone(),
    })
}

fn std_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// The slot to run now, if any: the latest slot in `(since, now]` whose fire time has come.
/// Several missed slots collapse into this one run. A job never observed is not due (the
/// daemon records `first_seen` first, so it waits for its first slot).
pub fn due(job: &JobPlan, state: &JobState, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let since = since(state)?;
    if since >= now {
        return None;
    }
    // Slots at or before `now - random_delay` have fired for sure (their delay is smaller),
    // so only the ones after that need their fire time checked.
    let lo = now
        .checked_sub_signed(std_delta(job.random_delay))
        .unwrap_or(since)
        .max(since);
    let mut best = None;
    let mut t = lo;
    for _ in 0..MAX_STEPS {
        match job.schedule.next_after(t) {
            Some(slot) if slot <= now => {
                if job.fire_time(slot) <= now {
                    best = Some(slot);
                }
                t = slot;
            }
            _ => break,
        }
    }
    if best.is_some() {
        return best;
    }
    if lo > since {
        job.schedule.missed_between(since, lo)
    } else {
        None
    }
}

/// When this job next needs attention: `now` if it is due, otherwise the earliest fire time of
/// a slot it has not handled yet.
pub fn next_fire(job: &JobPlan, state: &JobState, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if due(job, state, now).is_some() {
        return Some(now);
    }
    // An unobserved job behaves as if first seen now.
    let since = since(state).unwrap_or(now);
    let lo = now
        .checked_sub_signed(std_delta(job.random_delay))
        .unwrap_or(since)
        .max(since);
    let mut best: Option<DateTime<Utc>> = None;
    let mut t = lo;
    for _ in 0..MAX_STEPS {
        let Some(slot) = job.schedule.next_after(t) else {
            break;
        };
        // Fire times are never before their slot, so no later slot can beat `best`.
        if best.is_some_and(|b| slot >= b) {
            break;
        }
        let fire = job.fire_time(slot);
        if fire > now && best.is_none_or(|b| fire < b) {
            best = Some(fire);
        }
        t = slot;
    }
    best
}

/// The job to wake up for next and when (`now` when one is due already). Ties go to the job
/// listed first. Jobs `busy` names (queued or running) are left out: a due slot of theirs
/// asks for nothing until their run ends, which wakes the loop anyway; counted, it would
/// make the loop spin for as long as the run takes.
pub fn next_wake<'a>(
    jobs: &'a [JobPlan],
    states: &State,
    now: DateTime<Utc>,
    busy: impl Fn(&str) -> bool,
) -> Option<(&'a str, DateTime<Utc>)> {
    let fresh = JobState::default();
    let mut best: Option<(&'a str, DateTime<Utc>)> = None;
    for job in jobs.iter().filter(|j| !busy(&j.name)) {
        let state = states.jobs.get(&job.name).unwrap_or(&fresh);
        if let Some(at) = next_fire(job, state, now)
            && best.is_none_or(|(_, b)| at < b)
        {
            best = Some((job.name.as_str(), at));
        }
    }
    best
}

/// One queued run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub job: String,
    /// The schedule slot this run stands for; `None` for a run asked for by hand.
    pub slot: Option<DateTime<Utc>>,
}

/// Runs waiting for their turn, first in first out. The daemon takes one at a time, so runs
/// never overlap; a job is never queued twice, because a second run right after the first
/// would back up the same data again.
#[derive(Debug, Clone, Default)]
pub struct RunQueue {
    queue: VecDeque<Queued>,
}

impl RunQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a run asked for by hand. False if the job is queued already.
    pub fn push(&mut self, job: &str) -> bool {
        self.push_slot(job, None)
    }

    /// Queues the run for a due slot. If the job is queued already it keeps its place and
    /// takes the later slot (so that slot gets marked as handled), and this returns false.
    pub fn push_slot(&mut self, job: &str, slot: Option<DateTime<Utc>>) -> bool {
        if let Some(q) = self.queue.iter_mut().find(|q| q.job == job) {
            if slot > q.slot {
                q.slot = slot;
            }
            return false;
        }
        self.queue.push_back(Queued {
            job: job.to_owned(),
            slot,
        });
        true
    }

    pub fn pop(&mut self) -> Option<Queued> {
        self.queue.pop_front()
    }

    pub fn contains(&self, job: &str) -> bool {
        self.queue.iter().any(|q| q.job == job)
    }

    /// Drops a queued run (e.g. the job was removed from the config). False if not queued.
    pub fn remove(&mut self, job: &str) -> bool {
        let before = self.queue.len();
        self.queue.retain(|q| q.job != job);
        self.queue.len() != before
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.queue.iter()
    }
}

/// What [`Retries::record`] decided about a run that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Nothing to try again: the run did not fail for a temporary cause, or retries are off.
    No,
    /// Try `attempt` (1-based) of `of` at `at`.
    At {
        attempt: u32,
        of: u32,
        at: DateTime<Utc>,
    },
    /// The job's next scheduled run comes first and is the next try.
    NextSlot { at: DateTime<Utc> },
    /// `of` retries failed for a temporary cause too; the next try is the schedule's.
    GaveUp { of: u32 },
}

/// Runs that failed for a temporary cause (a server rebooting, the network), tried again
/// after `retry_wait × attempt` (borgmatic's `retries` and `retry_wait`), at most `retries`
/// times in a row, and never past the job's next scheduled run. Kept in memory only: a
/// restarted daemon starts from the schedule (and its catch-up) again.
#[derive(Debug, Clone, Default)]
pub struct Retries {
    /// Temporary failures in a row, per job.
    failed: BTreeMap<String, u32>,
    /// When each job's next try is due.
    due: BTreeMap<String, DateTime<Utc>>,
}

impl Retries {
    /// Records how a run of `job` ended (`temporary`: it failed for a temporary cause) and
    /// schedules its next try. `next_fire`: the job's next scheduled run, if it has one.
    pub fn record(
        &mut self,
        job: &str,
        temporary: bool,
        (retries, wait): (u32, Duration),
        next_fire: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Retry {
        self.due.remove(job);
        if !temporary || retries == 0 {
            self.failed.remove(job);
            return Retry::No;
        }
        let attempt = self.failed.get(job).map_or(1, |n| n + 1);
        if attempt > retries {
            self.failed.remove(job);
            return Retry::GaveUp { of: retries };
        }
        let at = now + std_delta(wait.saturating_mul(attempt));
        if let Some(next) = next_fire
            && next <= at
        {
            self.failed.remove(job);
            return Retry::NextSlot { at: next };
        }
        self.failed.insert(job.to_owned(), attempt);
        self.due.insert(job.to_owned(), at);
        Retry::At {
            attempt,
            of: retries,
            at,
        }
    }

    /// The jobs whose try is due at `now`, taken off the list.
    pub fn take_due(&mut self, now: DateTime<Utc>) -> Vec<String> {
        let due: Vec<String> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(job, _)| job.clone())
            .collect();
        for job in &due {
            self.due.remove(job);
        }
        due
    }

    /// A run of `job` starts for another reason (by hand, its schedule): its pending try is
    /// that run.
    pub fn started(&mut self, job: &str) {
        self.due.remove(job);
    }

    /// When `job` is tried again, if it is.
    pub fn at(&self, job: &str) -> Option<DateTime<Utc>> {
        self.due.get(job).copied()
    }

    /// The earliest pending try.
    pub fn next(&self) -> Option<DateTime<Utc>> {
        self.due.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn job(name: &str, expr: &str, tz: &str) -> JobPlan {
        JobPlan::new(
            name,
            Schedule::parse(expr, Some(tz)).unwrap(),
            Duration::ZERO,
        )
    }

    fn seen(at: &str) -> JobState {
        JobState {
            first_seen: Some(utc(at)),
            ..JobState::default()
        }
    }

    /// The fire times of a job that runs every slot, starting from `from`.
    fn fires(job: &JobPlan, from: &str, n: usize) -> Vec<DateTime<Utc>> {
        let mut state = seen(from);
        let mut now = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            now = next_fire(job, &state, now).unwrap();
            let slot = due(job, &state, now).expect("due at its fire time");
            state.last_slot = Some(slot);
            out.push(now);
        }
        out
    }

    #[test]
    fn three_am_paris_across_spring_forward() {
        let j = job("web", "0 3 * * *", "Europe/Paris");
        assert_eq!(
            fires(&j, "2026-03-27T12:00:00Z", 4),
            [
                utc("2026-03-28T02:00:00Z"), // 03:00 CET
                utc("2026-03-29T01:00:00Z"), // 03:00 CEST, the day of the change
                utc("2026-03-30T01:00:00Z"),
                utc("2026-03-31T01:00:00Z"),
            ]
        );
    }

    #[test]
    fn three_am_paris_across_fall_back() {
        let j = job("web", "0 3 * * *", "Europe/Paris");
        assert_eq!(
            fires(&j, "2026-10-23T12:00:00Z", 4),
            [
                utc("2026-10-24T01:00:00Z"), // 03:00 CEST
                utc("2026-10-25T02:00:00Z"), // 03:00 CET, the day of the change
                utc("2026-10-26T02:00:00Z"),
                utc("2026-10-27T02:00:00Z"),
            ]
        );
    }

    #[test]
    fn half_past_two_paris_across_spring_forward() {
        // 02:30 does not exist on 2026-03-29: the run must still happen once on that day
        // (right after the gap, as cron does), and the days around it are unaffected.
        let j = job("web", "30 2 * * *", "Europe/Paris");
        let f = fires(&j, "2026-03-27T12:00:00Z", 3);
        assert_eq!(f[0], utc("2026-03-28T01:30:00Z")); // 02:30 CET
        assert_eq!(f[1], utc("2026-03-29T01:00:00Z"), "{f:?}"); // 03:00 CEST, end of the gap
        assert_eq!(f[2], utc("2026-03-30T00:30:00Z")); // 02:30 CEST
    }

    #[test]
    fn half_past_two_paris_across_fall_back() {
        // 02:30 happens twice on 2026-10-25 (CEST, then CET): one run only.
        let j = job("web", "30 2 * * *", "Europe/Paris");
        let f = fires(&j, "2026-10-23T12:00:00Z", 3);
        assert_eq!(f[0], utc("2026-10-24T00:30:00Z")); // 02:30 CEST
        assert_eq!(f[1], utc("2026-10-25T00:30:00Z"), "{f:?}"); // the first 02:30 (CEST)
        assert_eq!(f[2], utc("2026-10-26T01:30:00Z")); // 02:30 CET
    }

    #[test]
    fn catch_up_after_three_days_is_one_run_for_the_latest_slot() {
        let j = job("web", "0 3 * * *", "UTC");
        let state = JobState {
            first_seen: Some(utc("2026-11-01T00:00:00Z")),
            last_slot: Some(utc("2026-11-20T03:00:00Z")),
            last_run: None,
        };
        let now = utc("2026-11-23T10:00:00Z");
        assert_eq!(due(&j, &state, now), Some(utc("2026-11-23T03:00:00Z")));
        let after = JobState {
            last_slot: Some(utc("2026-11-23T03:00:00Z")),
            ..state
        };
        assert_eq!(due(&j, &after, now), None);
        assert_eq!(
            next_fire(&j, &after, now),
            Some(utc("2026-11-24T03:00:00Z"))
        );
    }

    #[test]
    fn never_run_job_waits_for_its_first_slot() {
        let j = job("web", "0 3 * * *", "UTC");
        let now = utc("2026-11-23T10:00:00Z");
        // Not observed yet: not due, and its first slot is the next one.
        assert_eq!(due(&j, &JobState::default(), now), None);
        assert_eq!(
            next_fire(&j, &JobState::default(), now),
            Some(utc("2026-11-24T03:00:00Z"))
        );
        let state = seen("2026-11-23T10:00:00Z");
        assert_eq!(due(&j, &state, now), None);
        assert_eq!(due(&j, &state, utc("2026-11-24T02:59:59Z")), None);
        assert_eq!(
            due(&j, &state, utc("2026-11-24T03:00:00Z")),
            Some(utc("2026-11-24T03:00:00Z"))
        );
        // Seen, then the daemon was down over the first slot: that slot is caught up.
        assert_eq!(
            due(&j, &state, utc("2026-11-25T01:00:00Z")),
            Some(utc("2026-11-24T03:00:00Z"))
        );
    }

    #[test]
    fn a_slot_in_the_future_counts_as_not_handled() {
        let j = job("web", "0 3 * * *", "UTC");
        let now = utc("2026-11-23T10:00:00Z");
        // Written by a machine whose clock was a year ahead.
        let state = JobState {
            first_seen: Some(utc("2026-11-01T00:00:00Z")),
            last_slot: Some(utc("2027-11-20T03:00:00Z")),
            last_run: None,
        };
        assert_eq!(due(&j, &state, now), None, "silenced as it stands");
        let fixed = without_future(&state, now).unwrap();
        assert_eq!(fixed.last_slot, None);
        assert_eq!(fixed.first_seen, state.first_seen);
        assert_eq!(due(&j, &fixed, now), Some(utc("2026-11-23T03:00:00Z")));
        assert_eq!(without_future(&fixed, now), None);

        // Also first seen in the future: seen now, so the job waits for its next slot.
        let ahead = JobState {
            first_seen: Some(utc("2027-01-01T00:00:00Z")),
            ..state
        };
        let fixed = without_future(&ahead, now).unwrap();
        assert_eq!((fixed.first_seen, fixed.last_slot), (Some(now), None));
        assert_eq!(
            next_fire(&j, &fixed, now),
            Some(utc("2026-11-24T03:00:00Z"))
        );
        // A state that is in the past is left alone.
        assert_eq!(without_future(&seen("2026-11-23T10:00:00Z"), now), None);
    }

    #[test]
    fn not_due_again_until_the_next_slot() {
        let j = job("web", "0 */6 * * *", "UTC");
        let mut state = seen("2026-11-23T00:30:00Z");
        let now = utc("2026-11-23T06:00:00Z");
        let slot = due(&j, &state, now).unwrap();
        state.last_slot = Some(slot);
        for now in [
            "2026-11-23T06:00:00Z",
            "2026-11-23T09:00:00Z",
            "2026-11-23T11:59:59Z",
        ] {
            assert_eq!(due(&j, &state, utc(now)), None, "{now}");
        }
        assert_eq!(
            due(&j, &state, utc("2026-11-23T12:00:00Z")),
            Some(utc("2026-11-23T12:00:00Z"))
        );
    }

    #[test]
    fn random_delay_is_stable_and_bounded() {
        let slot = utc("2026-11-23T03:00:00Z");
        let max = Duration::from_secs(3600);
        let d = delay_for("web", slot, max);
        assert_eq!(d, delay_for("web", slot, max));
        assert!(d < max);
        assert_eq!(delay_for("web", slot, Duration::ZERO), Duration::ZERO);
        // Different jobs or slots spread out (not all equal).
        let many: std::collections::BTreeSet<_> = (0..20)
            .map(|i| delay_for(&format!("job{i}"), slot, max))
            .collect();
        assert!(many.len() > 15);

        let mut j = job("web", "0 3 * * *", "UTC");
        j.random_delay = max;
        let state = seen("2026-11-22T12:00:00Z");
        let fire = j.fire_time(slot);
        assert_eq!(fire, slot + TimeDelta::from_std(d).unwrap());
        assert_eq!(
            next_fire(&j, &state, utc("2026-11-23T02:00:00Z")),
            Some(fire)
        );
        if d > Duration::ZERO {
            assert_eq!(due(&j, &state, fire - TimeDelta::milliseconds(1)), None);
        }
        assert_eq!(due(&j, &state, fire), Some(slot));
    }

    #[test]
    fn random_delay_longer_than_the_interval_still_runs() {
        // Hourly with up to 3 h delay: the newest slot is usually still waiting, but an older
        // one whose delay has passed is due, so the job never starves.
        let mut j = job("web", "0 * * * *", "UTC");
        j.random_delay = Duration::from_secs(3 * 3600);
        let mut state = seen("2026-11-23T00:00:00Z");
        let mut now = utc("2026-11-23T00:00:00Z");
        let mut runs = 0;
        while now < utc("2026-11-24T00:00:00Z") {
            now = next_fire(&j, &state, now).unwrap();
            let slot = due(&j, &state, now).unwrap();
            assert!(state.last_slot.is_none_or(|l| slot > l));
            state.last_slot = Some(slot);
            runs += 1;
        }
        assert!(runs >= 10, "{runs}");
    }

    #[test]
    fn next_wake_picks_the_earliest_job() {
        let jobs = [
            job("web", "0 3 * * *", "UTC"),
            job("db", "30 1 * * *", "UTC"),
            job("mail", "0 3 * * *", "UTC"),
        ];
        let now = utc("2026-11-23T10:00:00Z");
        let mut state = State::default();
        for j in &jobs {
            state.observe(&j.name, now);
        }
        assert_eq!(
            next_wake(&jobs, &state, now, |_| false),
            Some(("db", utc("2026-11-24T01:30:00Z")))
        );
        state.mark_slot("db", utc("2026-11-24T01:30:00Z"));
        // Tie between web and mail: the one listed first.
        assert_eq!(
            next_wake(&jobs, &state, utc("2026-11-24T02:00:00Z"), |_| false),
            Some(("web", utc("2026-11-24T03:00:00Z")))
        );
        // A due job wakes the daemon at once.
        assert_eq!(
            next_wake(&jobs, &state, utc("2026-11-24T04:00:00Z"), |_| false),
            Some(("web", utc("2026-11-24T04:00:00Z")))
        );
        // ... unless its run is queued or running: then the next one's time counts
        assert_eq!(
            next_wake(&jobs, &state, utc("2026-11-24T04:00:00Z"), |j| j != "db"),
            Some(("db", utc("2026-11-25T01:30:00Z")))
        );
        assert_eq!(next_wake(&[], &state, now, |_| false), None);
    }

    #[test]
    fn queue_is_fifo_without_duplicates() {
        let mut q = RunQueue::new();
        assert!(q.is_empty());
        assert!(q.push("web"));
        assert!(q.push_slot("db", Some(utc("2026-11-23T03:00:00Z"))));
        assert!(!q.push("web"));
        assert!(!q.push_slot("db", Some(utc("2026-11-24T03:00:00Z"))));
        assert!(!q.push_slot("db", Some(utc("2026-11-22T03:00:00Z"))));
        assert!(q.push("mail"));
        assert_eq!(q.len(), 3);
        assert!(q.contains("db") && !q.contains("nope"));
        assert!(q.remove("mail"));
        assert!(!q.remove("mail"));
        assert_eq!(q.pop().unwrap().job, "web");
        assert_eq!(
            q.pop(),
            Some(Queued {
                job: "db".into(),
                slot: Some(utc("2026-11-24T03:00:00Z")),
            })
        );
        assert_eq!(q.pop(), None);
        // Once taken off the queue a job may be queued again (the next run).
        assert!(q.push("web"));
    }
    #[test]
    fn a_temporary_failure_is_tried_again_later_each_time_until_the_retries_are_spent() {
        let mut r = Retries::default();
        let t0 = utc("2026-12-01T03:00:00Z");
        let policy = (2, Duration::from_secs(300));
        assert_eq!(
            r.record("web", true, policy, None, t0),
            Retry::At {
                attempt: 1,
                of: 2,
                at: utc("2026-12-01T03:05:00Z")
            }
        );
        assert!(r.take_due(utc("2026-12-01T03:04:59Z")).is_empty());
        assert_eq!(r.next(), Some(utc("2026-12-01T03:05:00Z")));
        assert_eq!(r.take_due(utc("2026-12-01T03:05:00Z")), ["web"]);
        assert_eq!(r.next(), None, "taken once");
        let t1 = utc("2026-12-01T03:06:00Z");
        assert_eq!(
            r.record("web", true, policy, None, t1),
            Retry::At {
                attempt: 2,
                of: 2,
                at: utc("2026-12-01T03:16:00Z")
            },
            "the wait grows with each attempt"
        );
        assert_eq!(r.take_due(utc("2026-12-01T03:16:00Z")), ["web"]);
        assert_eq!(
            r.record("web", true, policy, None, utc("2026-12-01T03:17:00Z")),
            Retry::GaveUp { of: 2 }
        );
        assert_eq!(r.at("web"), None);
        // the next failure starts a new streak
        assert!(matches!(
            r.record("web", true, policy, None, utc("2026-12-02T03:00:00Z")),
            Retry::At { attempt: 1, .. }
        ));
    }

    #[test]
    fn a_permanent_failure_or_a_success_ends_the_streak_and_the_next_slot_comes_first() {
        let mut r = Retries::default();
        let t0 = utc("2026-12-01T03:00:00Z");
        let policy = (3, Duration::from_secs(600));
        assert!(matches!(
            r.record("web", true, policy, None, t0),
            Retry::At { attempt: 1, .. }
        ));
        assert_eq!(r.record("web", false, policy, None, t0), Retry::No);
        assert_eq!(r.at("web"), None);
        assert!(matches!(
            r.record("web", true, policy, None, t0),
            Retry::At { attempt: 1, .. }
        ));
        r.started("web");
        assert_eq!(r.at("web"), None, "a run by hand is the try");
        assert_eq!(
            r.record("web", true, (0, Duration::ZERO), None, t0),
            Retry::No
        );
        let soon = utc("2026-12-01T03:05:00Z");
        assert_eq!(
            r.record("web", true, policy, Some(soon), t0),
            Retry::NextSlot { at: soon }
        );
        assert_eq!(r.next(), None);
    }
}
