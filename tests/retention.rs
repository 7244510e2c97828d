//! `burrow forget` and `burrow prune` as scripts use them.

// A test reads as one scenario from top to bottom: longer than library functions may be.
#![allow(clippy::too_many_lines)]

use crate::util::{burrow, json, text};
use std::fs;
use std::path::{Path, PathBuf};

/// Incompressible bytes (a fixed xorshift sequence), so the repository size shows what prune
/// removed.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A local job `files` over `src`, the repository at `repo`, state and password in `dir`.
fn config(dir: &Path, repo: &Path, src: &Path, job_extra: &str) -> PathBuf {
    let pw = dir.join("pw");
    fs::write(&pw, "pass\n").unwrap();
    let cfg = dir.join("config.yaml");
    fs::write(
        &cfg,
        format!(
            "repository: {{path: {repo}, password_file: {pw}}}\nstate_dir: {state}\njobs:\n  files:\n    paths: [{src}]\n{job_extra}  other:\n    paths: [{src}]\n",
            repo = repo.display(),
            pw = pw.display(),
            state = dir.join("state").display(),
            src = src.display(),
        ),
    )
    .unwrap();
    cfg
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

fn run_ok(cfg: &Path, job: &str) -> serde_json::Value {
    let out = burrow(cfg, &["run", job, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    json(&out)
}

#[test]
fn forget_dry_run_json_then_forget_then_prune() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("stays"), noise(100_000, 1)).unwrap();
    fs::write(src.join("goes"), noise(300_000, 2)).unwrap();
    let repo = tmp.path().join("repo");
    // the case of issue 10: keep_last 2 + keep_daily 7, three snapshots on one day
    let cfg = config(
        tmp.path(),
        &repo,
        &src,
        "    retention: {keep_last: 2, keep_daily: 7}\n",
    );
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    // a job without retention has no plan
    let out = burrow(&cfg, &["forget", "other", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no retention policy") && text(&out).contains("jobs.other"),
        "{}",
        text(&out)
    );
    assert_eq!(
        burrow(&cfg, &["forget", "nope", "--dry-run"]).status.code(),
        Some(2)
    );

    // three snapshots of `files` on one day, made with retention switched off (a run would
    // apply it), then switched on
    let no_ret = config(tmp.path(), &repo, &src, "");
    let first = run_ok(&no_ret, "files");
    fs::remove_file(src.join("goes")).unwrap();
    let second = run_ok(&no_ret, "files");
    fs::write(src.join("new"), "n").unwrap();
    let third = run_ok(&no_ret, "files");
    let other = run_ok(&no_ret, "other");
    let cfg = config(
        tmp.path(),
        &repo,
        &src,
        "    retention: {keep_last: 2, keep_daily: 7}\n",
    );
    let id = |v: &serde_json::Value| v["snapshot_id"].as_str().unwrap().to_owned();

    let out = burrow(&cfg, &["forget", "files", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan = json(&out);
    let times: Vec<String> = plan["keep"]
        .as_array()
        .unwrap()
        .iter()
        .chain(plan["remove"].as_array().unwrap())
        .map(|d| d["time"].as_str().unwrap().to_owned())
        .collect();
    let one_day = times.iter().all(|t| t[..10] == times[0][..10]);
    assert_eq!(ids(&plan["keep"]), [id(&third), id(&second)], "{plan}");
    if one_day {
        assert_eq!(ids(&plan["remove"]), [id(&first)], "{plan}");
    }
    assert_eq!(
        plan["keep"][0]["reasons"],
        serde_json::json!([
            "last snapshot",
            "daily snapshot",
            burrow_core::retention::PROTECTED
        ]),
        "{plan}"
    );
    assert_eq!(
        plan["keep"][1]["reasons"],
        serde_json::json!(["last snapshot"])
    );
    assert!(
        !ids(&plan["keep"]).contains(&id(&other)),
        "another job's snapshot is not in the plan"
    );
    // a dry run changes nothing; the text form says what would go
    let out = burrow(&cfg, &["forget", "files", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("dry run"), "{}", text(&out));
    let snaps = json(&burrow(&cfg, &["snapshots", "files", "--json"]));
    assert_eq!(ids(&snaps).len(), 3);
    if !one_day {
        return; // the runs crossed midnight: nothing is removed, the rest needs a removal
    }

    let before = dir_bytes(&repo.join("data"));
    let out = burrow(&cfg, &["forget", "files", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json(&out), plan, "the plan applied is the one shown");
    let snaps = json(&burrow(&cfg, &["snapshots", "files", "--json"]));
    assert_eq!(ids(&snaps), [id(&second), id(&third)]);
    assert_eq!(
        ids(&json(&burrow(&cfg, &["snapshots", "other", "--json"]))),
        [id(&other)]
    );
    assert_eq!(
        dir_bytes(&repo.join("data")),
        before,
        "forget leaves the data"
    );

    let out = burrow(&cfg, &["prune"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = dir_bytes(&repo.join("data"));
    assert!(after <= before, "prune adds nothing: {before} -> {after}");
    // what is left restores, and stock restic finds the repository sound
    let target = tmp.path().join("r");
    let out = burrow(
        &cfg,
        &[
            "restore",
            "files",
            "latest",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(restored.join("stays")).unwrap(), noise(100_000, 1));
    if let Some(out) = crate::util::restic(&repo, &tmp.path().join("pw"), &["check", "--read-data"])
    {
        assert!(out.status.success(), "restic check: {}", text(&out));
    }
}
