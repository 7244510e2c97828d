//! Retention: which snapshots of one job a policy keeps, exactly as restic 0.14's
//! `restic forget --keep-*` decides (`ApplyPolicy` in restic's
//! `internal/restic/snapshot_policy.go`).
//!
//! The rule: the snapshots are walked newest first. Each `keep_*` rule has a count and
//! remembers the bucket value of the last snapshot it kept. A snapshot is kept when at least
//! one rule with count left sees a bucket value different from its last one; every such rule
//! then takes that value and counts one down. The buckets are read from the snapshot's own
//! wall-clock time in the UTC offset it was stored with (not this machine's zone):
//!
//! | rule    | bucket |
//! |---------|--------|
//! | last    | the snapshot's position (every snapshot is its own bucket) |
//! | hourly  | year, month, day, hour |
//! | daily   | year, month, day |
//! | weekly  | ISO 8601 week-numbering year and week |
//! | monthly | year, month |
//! | yearly  | year |
//!
//! No rule needs the current time. A count of 0 (or an absent rule) switches the rule off;
//! restic 0.14 has no "unlimited" count and no `--keep-within*` here (burrow's config offers
//! neither). A policy with every rule off is refused: restic would keep everything, and a
//! `retention` that keeps everything is written by leaving `retention` out.
//!
//! burrow's one deviation from restic is kept apart, in [`protect`]: snapshots the caller names
//! (the newest complete one of the job) are moved from `remove` to `keep`.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, FixedOffset, Timelike};
use serde::Serialize;

/// A retention policy: restic's `--keep-last`, `--keep-hourly`, ... `--keep-yearly`.
/// `None` and `Some(0)` both switch a rule off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
}

impl Policy {
    /// Every rule is off: restic would keep everything, burrow refuses such a policy.
    pub fn keeps_nothing(&self) -> bool {
        [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ]
        .iter()
        .all(|n| n.unwrap_or(0) == 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "the retention policy keeps nothing by rule: set at least one keep_* above 0, or remove `retention` to keep every snapshot"
    )]
    Empty,
}

/// One snapshot of the job, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub id: String,
    /// The snapshot time with the UTC offset it was stored with.
    pub time: DateTime<FixedOffset>,
    pub tags: Vec<String>,
}

/// One line of a plan: a snapshot and why it is kept (empty for removed ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    /// RFC 3339 with the stored offset.
    pub time: String,
    /// restic's words: "last snapshot", "hourly snapshot", "daily snapshot", "weekly snapshot",
    /// "monthly snapshot", "yearly snapshot"; plus [`PROTECTED`] for burrow's deviation.
    pub reasons: Vec<String>,
}

/// What a policy keeps and removes, each newest first. Serialised as
/// `{"keep": [...], "remove": [...]}` (the `burrow forget --json` contract).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub keep: Vec<Decision>,
    pub remove: Vec<Decision>,
}

/// The reason [`protect`] gives a snapshot it keeps against the policy.
pub const PROTECTED: &str = "protected: newest complete snapshot of the job";

type Bucket = fn(&DateTime<FixedOffset>, usize) -> i64;

fn always(_: &DateTime<FixedOffset>, nr: usize) -> i64 {
    nr as i64
}
fn hour(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    i64::from(t.year()) * 1_000_000
        + i64::from(t.month()) * 10_000
        + i64::from(t.day()) * 100
        + i64::from(t.hour())
}
fn day(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    i64::from(t.year()) * 10_000 + i64::from(t.month()) * 100 + i64::from(t.day())
}
fn week(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    let w = t.iso_week();
    i64::from(w.year()) * 100 + i64::from(w.week())
}
fn month(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    i64::from(t.year()) * 100 + i64::from(t.month())
}
fn year(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    i64::from(t.year())
}

/// restic 0.14's `ApplyPolicy` for one group (one job's snapshots).
///
/// Snapshots are ordered newest first by instant; snapshots with the same instant (restic
/// keeps them in the order it listed them) are ordered by id here.
pub fn apply_policy(snaps: &[Snap], policy: &Policy) -> Result<Plan, PolicyError> {
    let rules: [(u32, Bucket, &str); 6] = [
        (policy.last.unwrap_or(0), always, "last snapshot"),
        (policy.hourly.unwrap_or(0), hour, "hourly snapshot"),
        (policy.daily.unwrap_or(0), day, "daily snapshot"),
        (policy.weekly.unwrap_or(0), week, "weekly snapshot"),
        (policy.monthly.unwrap_or(0), month, "monthly snapshot"),
        (policy.yearly.unwrap_or(0), year, "yearly snapshot"),
    ];
    if policy.keeps_nothing() {
        return Err(PolicyError::Empty);
    }
    let mut counts: Vec<u32> = rules.iter().map(|r| r.0).collect();
    let mut last: Vec<Option<i64>> = vec![None; rules.len()];

    let mut list: Vec<&Snap> = snaps.iter().collect();
    list.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.id.cmp(&b.id)));

    let mut plan = Plan::default();
    for (nr, s) in list.into_iter().enumerate() {
        let mut reasons = Vec::new();
        for (i, (_, bucket, reason)) in rules.iter().enumerate() {
            if counts[i] == 0 {
                continue;
            }
            let v = bucket(&s.time, nr);
            if last[i] != Some(v) {
                last[i] = Some(v);
                counts[i] -= 1;
                reasons.push((*reason).to_owned());
            }
        }
        let d = Decision {
            id: s.id.clone(),
            time: s.time.to_rfc3339(),
            reasons,
        };
        if d.reasons.is_empty() {
            plan.remove.push(d);
        } else {
            plan.keep.push(d);
        }
    }
    Ok(plan)
}

/// burrow's deviation from restic: every snapshot in `protected` that the policy would remove
/// is kept instead, with the reason [`PROTECTED`] (added to its reasons when the policy keeps
/// it anyway). `keep` stays newest first.
pub fn protect(mut plan: Plan, protected: &BTreeSet<String>) -> Plan {
    for d in &mut plan.keep {
        if protected.contains(&d.id) {
            d.reasons.push(PROTECTED.to_owned());
        }
    }
    let (saved, remove): (Vec<Decision>, Vec<Decision>) = plan
        .remove
        .into_iter()
        .partition(|d| protected.contains(&d.id));
    plan.remove = remove;
    for mut d in saved {
        d.reasons.push(PROTECTED.to_owned());
        plan.keep.push(d);
    }
    plan.keep
        .sort_by(|a, b| by_time_desc(&a.time, &b.time).then_with(|| a.id.cmp(&b.id)));
    plan
}

/// The snapshots of a job that retention never removes, whatever the policy: burrow's one
/// deviation from restic's `forget`. Today the newest complete (not `partial`) snapshot.
pub fn protected(snaps: &[Snap]) -> BTreeSet<String> {
    snaps
        .iter()
        .filter(|s| {
            !s.tags
                .iter()
                .any(|t| t == crate::repository::TAG_PARTIAL || t == crate::repository::TAG_ANOMALY)
        })
        .max_by(|a, b| a.time.cmp(&b.time).then_with(|| b.id.cmp(&a.id)))
        .map(|s| BTreeSet::from([s.id.clone()]))
        .unwrap_or_default()
}

/// What forget does to a job's snapshots: `policy` as `restic forget --keep-*` applies it,
/// then [`protect`]ed: the newest complete snapshot is never removed.
pub fn forget_plan(snaps: &[Snap], policy: &Policy) -> Result<Plan, PolicyError> {
    Ok(protect(apply_policy(snaps, policy)?, &protected(snaps)))
}

fn by_time_desc(a: &str, b: &str) -> std::cmp::Ordering {
    match (
        DateTime::parse_from_rfc3339(a),
        DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(a), Ok(b)) => b.cmp(&a),
        _ => b.cmp(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, time: &str) -> Snap {
        Snap {
            id: id.to_owned(),
            time: DateTime::parse_from_rfc3339(time).unwrap(),
            tags: vec![],
        }
    }

    fn ids(v: &[Decision]) -> Vec<&str> {
        v.iter().map(|d| d.id.as_str()).collect()
    }

    fn policy(
        last: u32,
        hourly: u32,
        daily: u32,
        weekly: u32,
        monthly: u32,
        yearly: u32,
    ) -> Policy {
        let o = |n: u32| (n > 0).then_some(n);
        Policy {
            last: o(last),
            hourly: o(hourly),
            daily: o(daily),
            weekly: o(weekly),
            monthly: o(monthly),
            yearly: o(yearly),
        }
    }

    #[test]
    fn three_on_one_day_with_last_2_daily_7_removes_the_oldest() {
        let s = [
            snap("a", "2024-05-01T08:00:00+02:00"),
            snap("b", "2024-05-01T12:00:00+02:00"),
            snap("c", "2024-05-01T18:00:00+02:00"),
        ];
        let plan = apply_policy(&s, &policy(2, 0, 7, 0, 0, 0)).unwrap();
        assert_eq!(ids(&plan.keep), ["c", "b"]);
        assert_eq!(ids(&plan.remove), ["a"]);
        assert_eq!(plan.keep[0].reasons, ["last snapshot", "daily snapshot"]);
        assert_eq!(plan.keep[1].reasons, ["last snapshot"]);
        assert!(plan.remove[0].reasons.is_empty());
        assert_eq!(plan.keep[0].time, "2024-05-01T18:00:00+02:00");
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_and_counts_days_with_snapshots() {
        // days 1, 1, 2, 4, 5, 5 (day 3 has none): daily 3 keeps 5 (newest), 4, 2
        let s = [
            snap("d1a", "2024-01-01T01:00:00Z"),
            snap("d1b", "2024-01-01T23:00:00Z"),
            snap("d2", "2024-01-02T10:00:00Z"),
            snap("d4", "2024-01-04T10:00:00Z"),
            snap("d5a", "2024-01-05T09:00:00Z"),
            snap("d5b", "2024-01-05T10:00:00Z"),
        ];
        let plan = apply_policy(&s, &policy(0, 0, 3, 0, 0, 0)).unwrap();
        assert_eq!(ids(&plan.keep), ["d5b", "d4", "d2"]);
        assert_eq!(ids(&plan.remove), ["d5a", "d1b", "d1a"]);
    }

    #[test]
    fn buckets_use_the_stored_offset_not_utc() {
        // the same UTC day (2024-03-11), but different local days in their stored offsets
        let s = [
            snap("a", "2024-03-10T23:30:00-01:00"), // 2024-03-11T00:30Z
            snap("b", "2024-03-11T05:00:00+02:00"), // 2024-03-11T03:00Z
        ];
        let plan = apply_policy(&s, &policy(0, 0, 2, 0, 0, 0)).unwrap();
        assert_eq!(ids(&plan.keep), ["b", "a"]);
        // same local day, different UTC days: only the newer is kept
        let s = [
            snap("x", "2024-03-10T00:30:00+05:00"), // 2024-03-09T19:30Z
            snap("y", "2024-03-10T23:30:00-05:00"), // 2024-03-11T04:30Z
        ];
        let plan = apply_policy(&s, &policy(0, 0, 5, 0, 0, 0)).unwrap();
        assert_eq!(ids(&plan.keep), ["y"]);
        assert_eq!(ids(&plan.remove), ["x"]);
    }

    #[test]
    fn weekly_uses_iso_weeks_across_the_new_year() {
        // 2020-12-31 (Thu) and 2021-01-03 (Sun) are both in ISO week 2020-53;
        // 2021-01-04 (Mon) is 2021-01; 2019-12-30 (Mon) is ISO 2020-01.
        let s = [
            snap("w2001", "2019-12-30T12:00:00Z"),
            snap("w2052", "2020-12-24T12:00:00Z"),
            snap("w2053a", "2020-12-31T12:00:00Z"),
            snap("w2053b", "2021-01-03T12:00:00Z"),
            snap("w2101", "2021-01-04T12:00:00Z"),
        ];
        let plan = apply_policy(&s, &policy(0, 0, 0, 10, 0, 0)).unwrap();
        assert_eq!(ids(&plan.keep), ["w2101", "w2053b", "w2052", "w2001"]);
        assert_eq!(ids(&plan.remove), ["w2053a"]);
        // yearly goes by calendar year: 2021, 2020 (newest 2020-12-31), 2019
        let plan = apply_policy(&s, &policy(0, 0, 0, 0, 0, 10)).unwrap();
        assert_eq!(ids(&plan.keep), ["w2101", "w2053a", "w2001"]);
    }

    #[test]
    fn each_rule_counts_on_its_own_and_reasons_name_every_rule() {
        let s = [
            snap("jan", "2024-01-15T10:00:00Z"),
            snap("feb1", "2024-02-01T10:00:00Z"),
            snap("feb2", "2024-02-20T10:00:00Z"),
            snap("mar1", "2024-03-01T10:00:00Z"),
            snap("mar2", "2024-03-01T11:00:00Z"),
        ];
        let plan = apply_policy(&s, &policy(1, 2, 0, 0, 2, 1)).unwrap();
        // last 1: mar2; hourly 2: mar2, mar1; monthly 2: mar2 (march), feb2 (february);
        // yearly 1: mar2
        assert_eq!(ids(&plan.keep), ["mar2", "mar1", "feb2"]);
        assert_eq!(
            plan.keep[0].reasons,
            [
                "last snapshot",
                "hourly snapshot",
                "monthly snapshot",
                "yearly snapshot"
            ]
        );
        assert_eq!(plan.keep[1].reasons, ["hourly snapshot"]);
        assert_eq!(plan.keep[2].reasons, ["monthly snapshot"]);
        assert_eq!(ids(&plan.remove), ["feb1", "jan"]);
    }

    #[test]
    fn hourly_buckets_by_the_local_hour() {
        let s = [
            snap("a", "2024-06-01T10:05:00+02:00"),
            snap("b", "2024-06-01T10:55:00+02:00"),
            snap("c", "2024-06-01T11:00:00+02:00"),
        ];
        let plan = apply_policy(&s, &policy(0, 5, 0, 0, 0, 0)).unwrap();
        assert_eq!(ids(&plan.keep), ["c", "b"]);
        assert_eq!(ids(&plan.remove), ["a"]);
    }

    #[test]
    fn a_policy_without_a_rule_is_refused_and_empty_input_is_an_empty_plan() {
        let s = [snap("a", "2024-06-01T10:05:00Z")];
        assert_eq!(
            apply_policy(&s, &Policy::default()),
            Err(PolicyError::Empty)
        );
        assert_eq!(
            apply_policy(&s, &policy(0, 0, 0, 0, 0, 0)),
            Err(PolicyError::Empty)
        );
        assert_eq!(
            apply_policy(&[], &policy(1, 0, 0, 0, 0, 0)),
            Ok(Plan::default())
        );
    }

    #[test]
    fn order_is_by_instant_not_by_wall_clock() {
        // "b" reads earlier on the wall but is the newer instant
        let s = [
            snap("a", "2024-06-01T12:00:00+00:00"),
            snap("b", "2024-06-01T09:00:00-05:00"), // 14:00Z
        ];
        let plan = apply_policy(&s, &policy(1, 0, 0, 0, 0, 0)).unwrap();
        assert_eq!(ids(&plan.keep), ["b"]);
    }

    #[test]
    fn protect_moves_named_snapshots_to_keep_in_order() {
        let s = [
            snap("a", "2024-05-01T08:00:00+02:00"),
            snap("b", "2024-05-01T12:00:00+02:00"),
            snap("c", "2024-05-01T18:00:00+02:00"),
        ];
        let plan = apply_policy(&s, &policy(1, 0, 0, 0, 0, 0)).unwrap();
        assert_eq!(ids(&plan.remove), ["b", "a"]);
        let plan = protect(plan, &BTreeSet::from(["b".to_owned(), "c".to_owned()]));
        assert_eq!(ids(&plan.keep), ["c", "b"]);
        assert_eq!(plan.keep[0].reasons, ["last snapshot", PROTECTED]);
        assert_eq!(plan.keep[1].reasons, [PROTECTED]);
        assert_eq!(ids(&plan.remove), ["a"]);
        // an empty set changes nothing
        let plain = apply_policy(&s, &policy(1, 0, 0, 0, 0, 0)).unwrap();
        assert_eq!(protect(plain.clone(), &BTreeSet::new()), plain);
    }
}
