//! Retention equals stock restic 0.14's: `Repo::forget_plan` against
//! `restic forget --dry-run --json` on the same repository, for seeded random snapshot times
//! over two years (several a day, month and year boundaries, both DST changes of
//! Europe/Berlin, other UTC offsets, times written by `restic backup --time` too).

// A test reads as one scenario from top to bottom: longer than library functions may be.
#![allow(clippy::too_many_lines)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use burrow_core::exclude::Excludes;
use burrow_core::local::LocalSource;
use burrow_core::repository::BackupRequest;
use burrow_core::retention::PROTECTED;
use burrow_core::retention::Policy;
use burrow_core::{Problems, retention};
use burrow_repo::{Password, Repo, init};
use chrono::{DateTime, Duration, FixedOffset, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Europe::Berlin;
use rustic_backend::LocalBackend;
use rustic_core::jiff;
use rustic_core::{Credentials, Repository, RepositoryBackends, RepositoryOptions};

/// The zone restic reads `--time` in, and in which most snapshot times are generated.
const TZ: &str = "Europe/Berlin";

/// splitmix64: a fixed sequence from a seed, so a failure can be reproduced.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn naive(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
}

fn fixed(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

/// Berlin wall-clock times, with both offsets of the repeated hour at the autumn change.
fn berlin(t: NaiveDateTime) -> Vec<DateTime<FixedOffset>> {
    match Berlin.from_local_datetime(&t) {
        chrono::LocalResult::Single(x) => vec![x.fixed_offset()],
        chrono::LocalResult::Ambiguous(a, b) => vec![a.fixed_offset(), b.fixed_offset()],
        chrono::LocalResult::None => vec![],
    }
}

/// The snapshot times: at least 50, unique instants, two years.
fn times(seed: u64) -> Vec<DateTime<FixedOffset>> {
    let mut rng = Rng(seed);
    let mut out: Vec<DateTime<FixedOffset>> = Vec::new();
    let start = NaiveDate::from_ymd_opt(2023, 1, 1).unwrap();
    // random days, several snapshots on some of them
    for _ in 0..45 {
        let day = start + Duration::days(rng.below(730) as i64);
        let per_day = 1 + rng.below(3);
        for _ in 0..per_day {
            let t = day
                .and_hms_opt(
                    rng.below(24) as u32,
                    rng.below(60) as u32,
                    rng.below(60) as u32,
                )
                .unwrap();
            out.extend(berlin(t));
        }
    }
    // month and year boundaries, the DST changes (2023-03-26, 2023-10-29, 2024-03-31,
    // 2024-10-27: 02:30 does not exist in spring and exists twice in autumn)
    for s in [
        "2023-01-31 23:59:00",
        "2023-02-01 00:01:00",
        "2023-03-26 01:30:00",
        "2023-03-26 03:30:00",
        "2023-10-29 02:30:00",
        "2023-10-29 03:10:00",
        "2023-12-31 23:30:00",
        "2024-01-01 00:30:00",
        "2024-02-29 12:00:00",
        "2024-03-31 01:59:00",
        "2024-03-31 03:01:00",
        "2024-10-27 02:15:00",
        "2024-12-30 08:00:00",
        "2024-12-31 23:59:59",
    ] {
        out.extend(berlin(naive(s)));
    }
    // other offsets, near midnight and the new year: the buckets are the stored local time
    for s in [
        "2023-06-30T23:30:00+05:30",
        "2023-07-01T00:10:00-08:00",
        "2023-11-15T23:50:00Z",
        "2024-01-01T01:00:00+14:00",
        "2024-06-02T00:20:00-03:00",
    ] {
        out.push(fixed(s));
    }
    out.sort();
    out.dedup_by(|a, b| a.timestamp() == b.timestamp());
    out
}

fn jiff_time(t: &DateTime<FixedOffset>) -> jiff::Zoned {
    let ts = jiff::Timestamp::from_second(t.timestamp()).unwrap();
    let off = jiff::tz::Offset::from_seconds(t.offset().local_minus_utc()).unwrap();
    ts.to_zoned(jiff::tz::TimeZone::fixed(off))
}

fn restic(repo: &Path, pwfile: &Path, args: &[&str]) -> Option<std::process::Output> {
    if Command::new("restic").arg("version").output().is_err() {
        burrow_testkit::missing("restic", "apt-get install restic");
        return None;
    }
    Some(
        Command::new("restic")
            .arg("-r")
            .arg(repo)
            .arg("--password-file")
            .arg(pwfile)
            .arg("--no-cache")
            .args(args)
            .env("TZ", TZ)
            .output()
            .unwrap(),
    )
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// restic's plan for the one group: id → reasons (kept), ids removed.
fn restic_plan(
    repo: &Path,
    pwfile: &Path,
    flags: &[String],
) -> (BTreeMap<String, Vec<String>>, BTreeSet<String>) {
    let mut args = vec![
        "forget",
        "--dry-run",
        "--json",
        "--tag",
        "job=j",
        "--group-by=",
    ];
    args.extend(flags.iter().map(String::as_str));
    let out = restic(repo, pwfile, &args).unwrap();
    ok(&out, "restic forget");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "restic forget --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let groups = v.as_array().unwrap();
    assert_eq!(groups.len(), 1, "one group for one job: {v}");
    let g = &groups[0];
    let empty = Vec::new();
    let list = |k: &str| g[k].as_array().unwrap_or(&empty).clone();
    let (keep, reasons) = (list("keep"), list("reasons"));
    assert_eq!(keep.len(), reasons.len());
    let keep = keep
        .iter()
        .zip(&reasons)
        .map(|(s, r)| {
            let m = r["matches"].as_array().unwrap();
            (
                s["id"].as_str().unwrap().to_owned(),
                m.iter().map(|x| x.as_str().unwrap().to_owned()).collect(),
            )
        })
        .collect();
    let remove = list("remove")
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    (keep, remove)
}

fn flags(k: &Policy) -> Vec<String> {
    let mut f = Vec::new();
    for (name, v) in [
        ("last", k.last),
        ("hourly", k.hourly),
        ("daily", k.daily),
        ("weekly", k.weekly),
        ("monthly", k.monthly),
        ("yearly", k.yearly),
    ] {
        if let Some(n) = v {
            f.push(format!("--keep-{name}={n}"));
        }
    }
    f
}

#[test]
fn forget_plan_equals_restic_forget_dry_run() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_path = tmp.path().join("repo");
    let pwfile = tmp.path().join("pw");
    fs::write(&pwfile, "pw\n").unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "tiny\n").unwrap();

    // one real snapshot, then copies of it at the generated times (restic-format snapshot
    // files, written through rustic_core), then a few by stock restic with --time
    let repo = init(&repo_path, &Password::new("pw")).unwrap();
    let source = LocalSource::new(std::slice::from_ref(&src), Excludes::none());
    let base_id = repo
        .backup(BackupRequest {
            job: "j",
            host: "h",
            paths: vec![src.clone()],
            source: &source,
            extra: Vec::new(),
            problems: Problems::new(),
            partial: false,
            bytes_read: Default::default(),
            cancel: Default::default(),
        })
        .unwrap()
        .snapshot_id;
    drop(repo);
    let times = times(0x5eed_2024);
    assert!(times.len() >= 50, "{}", times.len());
    let newest = *times.last().unwrap();
    {
        let be = LocalBackend::new(repo_path.to_string_lossy(), []).unwrap();
        let r = Repository::new(
            &RepositoryOptions::default().no_cache(true),
            &RepositoryBackends::new(Arc::new(be), None),
        )
        .unwrap()
        .open(&Credentials::password("pw"))
        .unwrap();
        let base = r.get_all_snapshots().unwrap().pop().unwrap();
        assert_eq!(base.id.to_hex().to_string(), base_id);
        let copies = times
            .iter()
            .map(|t| {
                let mut s = base.clone();
                s.time = jiff_time(t);
                // the newest is partial: burrow then protects the newest complete one
                if *t == newest {
                    s.tags.add("partial".to_owned());
                }
                s
            })
            .collect();
        r.save_snapshots(copies).unwrap();
        r.delete_snapshots(&[base.id]).unwrap();
    }
    // restic reads --time in local time (TZ): two at DST changes, two ordinary
    for t in [
        "2023-03-26 03:05:00",
        "2023-10-29 01:45:00",
        "2024-07-14 12:00:00",
        "2024-11-30 22:00:00",
    ] {
        let Some(out) = restic(
            &repo_path,
            &pwfile,
            &[
                "backup",
                "--time",
                t,
                "--tag",
                "burrow,job=j",
                "--host",
                "h",
                src.to_str().unwrap(),
            ],
        ) else {
            return;
        };
        ok(&out, "restic backup");
    }
    let repo = Repo::open(&repo_path, &Password::new("pw")).unwrap();
    let snaps = repo.snapshots(Some("j")).unwrap();
    assert!(snaps.len() >= 54, "{}", snaps.len());
    // the restic-written ones carry Berlin's offset of that moment, read back as stored
    let all = repo
        .forget_plan(
            "j",
            &Policy {
                yearly: Some(100),
                ..Policy::default()
            },
        )
        .unwrap();
    let stored: BTreeSet<String> = all
        .keep
        .iter()
        .chain(&all.remove)
        .map(|d| d.time.clone())
        .collect();
    for t in [
        "2023-03-26T03:05:00+02:00",
        "2023-10-29T01:45:00+02:00",
        "2024-07-14T12:00:00+02:00",
        "2024-11-30T22:00:00+01:00",
        "2023-06-30T23:30:00+05:30",
    ] {
        assert!(stored.contains(t), "{t} not in {stored:?}");
    }

    let o = Some;
    let policies = [
        Policy {
            last: o(2),
            daily: o(7),
            ..Policy::default()
        },
        Policy {
            daily: o(10),
            weekly: o(6),
            monthly: o(8),
            ..Policy::default()
        },
        Policy {
            hourly: o(30),
            yearly: o(3),
            ..Policy::default()
        },
        Policy {
            last: o(3),
            weekly: o(20),
            monthly: o(12),
            yearly: o(5),
            ..Policy::default()
        },
        Policy {
            last: o(1),
            ..Policy::default()
        },
        Policy {
            daily: o(400),
            ..Policy::default()
        },
    ];
    let mut deviation_seen = false;
    for k in &policies {
        let (r_keep, r_remove) = restic_plan(&repo_path, &pwfile, &flags(k));
        let plan = repo.forget_plan("j", k).unwrap();
        assert_eq!(
            plan.keep.len() + plan.remove.len(),
            snaps.len(),
            "{k:?}: every snapshot in the plan"
        );
        // burrow's only deviation: the newest complete snapshot stays
        let protected: BTreeSet<String> = plan
            .keep
            .iter()
            .filter(|d| d.reasons.iter().any(|r| r == PROTECTED))
            .map(|d| d.id.clone())
            .collect();
        assert_eq!(protected.len(), 1, "{k:?}");
        deviation_seen |= r_remove.iter().any(|id| protected.contains(id));

        let b_keep: BTreeMap<String, Vec<String>> = plan
            .keep
            .iter()
            .map(|d| {
                let r: Vec<String> = d
                    .reasons
                    .iter()
                    .filter(|r| *r != PROTECTED)
                    .cloned()
                    .collect();
                (d.id.clone(), r)
            })
            .filter(|(_, r)| !r.is_empty())
            .collect();
        let b_remove: BTreeSet<String> = plan.remove.iter().map(|d| d.id.clone()).collect();
        let r_remove_unprotected: BTreeSet<String> =
            r_remove.difference(&protected).cloned().collect();
        assert_eq!(
            b_keep, r_keep,
            "{k:?}: kept (with reasons) differs from restic"
        );
        assert_eq!(
            b_remove, r_remove_unprotected,
            "{k:?}: removed differs from restic"
        );
        assert!(!b_remove.is_empty() || k.daily == Some(400), "{k:?}");
    }
    assert!(
        deviation_seen,
        "no policy would have removed the newest complete snapshot"
    );

    // the pure function over the same list gives the same plan as the repository's
    let tags: BTreeMap<&str, &Vec<String>> =
        snaps.iter().map(|s| (s.id.as_str(), &s.tags)).collect();
    let pure: Vec<retention::Snap> = all
        .keep
        .iter()
        .chain(&all.remove)
        .map(|d| retention::Snap {
            id: d.id.clone(),
            time: fixed(&d.time),
            tags: tags[d.id.as_str()].clone(),
        })
        .collect();
    for k in &policies {
        let p = retention::protect(
            retention::apply_policy(&pure, k).unwrap(),
            &burrow_core::retention::protected(&pure),
        );
        assert_eq!(p, repo.forget_plan("j", k).unwrap());
    }
}
