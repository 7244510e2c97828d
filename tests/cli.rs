//! The `burrow` binary as scripts and people use it: exit codes, located config errors, a
//! local job end to end, JSON summaries, restore.

mod common;

use common::{burrow, json, text};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Env {
    tmp: tempfile::TempDir,
    cfg: PathBuf,
    src: PathBuf,
}

/// A local job over a small tree, a repository and a state dir, all in a temp dir.
fn env_with(extra_job_yaml: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d/e")).unwrap();
    fs::write(src.join("a"), "hello\n").unwrap();
    fs::write(src.join("d/b.tmp"), "skip me").unwrap();
    fs::write(src.join("d/e/c"), vec![1u8; 50_000]).unwrap();
    let pw = tmp.path().join("pw");
    fs::write(&pw, "pass\n").unwrap();
    let cfg = tmp.path().join("config.yaml");
    fs::write(
        &cfg,
        format!(
            "repository: {{path: {repo}, password_file: {pw}}}\nstate_dir: {state}\njobs:\n  files:\n    paths: [{src}]\n    exclude: [\"*.tmp\"]\n{extra_job_yaml}",
            repo = tmp.path().join("repo").display(),
            pw = pw.display(),
            state = tmp.path().join("state").display(),
            src = src.display(),
        ),
    )
    .unwrap();
    Env { tmp, cfg, src }
}

#[test]
fn example_config_checks_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = burrow(&root.join("config.example.yaml"), &["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn misspelled_key_exits_2_with_file_line_col() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.yaml");
    fs::write(&cfg, "repository:\n  path: /r\n  pasword_file: /x\n").unwrap();
    let out = burrow(&cfg, &["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(t.contains(&format!("{}:3:3:", cfg.display())), "{t}");
    assert!(t.contains("pasword_file"), "{t}");
}

#[test]
fn all_semantic_errors_in_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.yaml");
    fs::write(
        &cfg,
        "repository: {path: /r, password_file: /dev/null}\njobs:\n  j:\n    server: nowhere\n    schedule: \"0 3 * *\"\n    paths: [relative/path]\n",
    )
    .unwrap();
    let out = burrow(&cfg, &["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    for want in [
        "jobs.j.server",
        "jobs.j.schedule",
        "jobs.j.paths[0]",
        "3 error(s)",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    // a config error stops every command, not only check-config
    assert_eq!(burrow(&cfg, &["run", "j"]).status.code(), Some(2));
    assert_eq!(burrow(&cfg, &["daemon"]).status.code(), Some(2));
}

#[test]
fn missing_config_and_bad_usage_exit_2() {
    let out = burrow(Path::new("/nonexistent/burrow.yaml"), &["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("BURROW_CONFIG"), "{}", text(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).contains("75  skipped"), "{}", text(&out));
}

#[test]
fn local_job_end_to_end() {
    let e = env_with("    retention: {keep_last: 2}\n");
    let out = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "run before init must fail: {}",
        text(&out)
    );
    assert!(text(&out).contains("burrow init"), "{}", text(&out));

    let out = burrow(&e.cfg, &["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        burrow(&e.cfg, &["init"]).status.code(),
        Some(1),
        "second init must refuse"
    );

    let out = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let first = json(&out);
    for field in [
        "status",
        "snapshot_id",
        "files_new",
        "files_changed",
        "files_unmodified",
        "bytes_read",
        "bytes_added",
        "duration_s",
        "errors",
    ] {
        assert!(first.get(field).is_some(), "no {field} in {first}");
    }
    assert_eq!(first["status"], "ok");
    assert_eq!(first["files_new"], 2, "the *.tmp file is excluded: {first}");
    assert_eq!(first["bytes_read"], 6 + 50_000);

    let second = json(&burrow(&e.cfg, &["run", "files", "--json"]));
    assert_eq!(second["bytes_read"], 0, "{second}");
    assert_eq!(
        second["bytes_added"], 0,
        "nothing changed, nothing added: {second}"
    );
    assert_eq!(second["files_unmodified"], 2);

    fs::write(e.src.join("a"), "changed\n").unwrap();
    let third = json(&burrow(&e.cfg, &["run", "files", "--json"]));
    assert_eq!(third["files_changed"], 1);

    // keep_last: 2 has forgotten the first snapshot
    let out = burrow(&e.cfg, &["snapshots", "files", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let snaps = json(&out);
    let ids: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            second["snapshot_id"].as_str().unwrap(),
            third["snapshot_id"].as_str().unwrap()
        ]
    );

    let target = e.tmp.path().join("restore");
    let out = burrow(
        &e.cfg,
        &[
            "restore",
            "files",
            "latest",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let restored = target.join(e.src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(restored.join("a")).unwrap(), b"changed\n");
    assert_eq!(fs::read(restored.join("d/e/c")).unwrap(), vec![1u8; 50_000]);
    assert!(!restored.join("d/b.tmp").exists());

    assert_eq!(burrow(&e.cfg, &["run", "nope"]).status.code(), Some(2));
    assert_eq!(
        burrow(&e.cfg, &["status"]).status.code(),
        Some(1),
        "no daemon is running"
    );
}

#[test]
fn unreadable_file_gives_partial_exit_3() {
    let e = env_with("");
    burrow(&e.cfg, &["init"]);
    // A FIFO is recorded in the snapshot, never opened (reading it would block forever).
    nix_mkfifo(&e.src.join("pipe"));
    let out = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a FIFO is recorded, never read: {}",
        text(&out)
    );

    // a job whose path does not exist: the snapshot is made, the path is reported
    let cfg_text = fs::read_to_string(&e.cfg).unwrap().replace(
        &format!("paths: [{}]", e.src.display()),
        &format!("paths: [{}, /nonexistent/burrow-test]", e.src.display()),
    );
    fs::write(&e.cfg, cfg_text).unwrap();
    let out = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let s = json(&out);
    assert_eq!(s["status"], "partial");
    assert!(
        s["errors"][0]["path"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/burrow-test"),
        "{s}"
    );
    let snaps = json(&burrow(&e.cfg, &["snapshots", "files", "--json"]));
    assert_eq!(snaps.as_array().unwrap().last().unwrap()["partial"], true);
}

fn nix_mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success());
}

#[test]
fn wrong_password_fails_cleanly() {
    let e = env_with("");
    burrow(&e.cfg, &["init"]);
    fs::write(e.tmp.path().join("pw"), "not the password\n").unwrap();
    let out = burrow(&e.cfg, &["run", "files"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("wrong password"), "{}", text(&out));
}

#[test]
fn quickstart_runs_and_lists_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("x"), "x").unwrap();
    let dir = tmp.path().join("qs");
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["quickstart", "--dir"])
        .arg(&dir)
        .arg("--path")
        .arg(&src)
        .env("BURROW_SOCKET", tmp.path().join("sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("quickstart: ok"), "{}", text(&out));
    let snaps = burrow(&dir.join("config.yaml"), &["snapshots"]);
    assert!(text(&snaps).contains("1 snapshot(s)"), "{}", text(&snaps));
}

fn largest_pack(repo: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    for sub in fs::read_dir(repo.join("data")).unwrap() {
        for e in fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = e.unwrap().path();
            let len = fs::metadata(&p).unwrap().len();
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, p));
            }
        }
    }
    best.unwrap().1
}

#[test]
fn a_garbage_snapshot_file_is_named_and_the_rest_goes_on() {
    let e = env_with("");
    let repo = e.tmp.path().join("repo");
    assert_eq!(burrow(&e.cfg, &["init"]).status.code(), Some(0));
    let first = json(&burrow(&e.cfg, &["run", "files", "--json"]));
    assert_eq!(first["status"], "ok", "{first}");

    // random bytes under a valid-looking name, and the debris of an interrupted write
    let bad = "e".repeat(64);
    let garbage: Vec<u8> = (0..500u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(repo.join("snapshots").join(&bad), garbage).unwrap();
    let debris = repo.join(format!("index/{}-tmp-", "a".repeat(64)));
    fs::write(&debris, "half a file").unwrap();
    fs::File::options()
        .write(true)
        .open(&debris)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();

    let out = burrow(&e.cfg, &["snapshots", "files", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let list = json(&out);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["id"], first["snapshot_id"]);
    assert_eq!(list[1]["id"], bad.as_str());
    assert_eq!(list[1]["damaged"], true);
    let out = burrow(&e.cfg, &["snapshots"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).contains("1 snapshot(s)"), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("snapshots/{bad}")),
        "{}",
        text(&out)
    );

    // the run picks the readable parent and removes the debris
    let out = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let second = json(&out);
    assert_eq!(second["files_unmodified"], 2, "{second}");
    assert_eq!(second["bytes_read"], 0, "{second}");
    assert!(!debris.exists(), "the -tmp- file is removed by the run");

    let target = e.tmp.path().join("restore");
    let out = burrow(
        &e.cfg,
        &[
            "restore",
            "files",
            "latest",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let restored = target.join(e.src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(restored.join("d/e/c")).unwrap(), vec![1u8; 50_000]);

    let out = burrow(&e.cfg, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("snapshots/{bad}")),
        "{}",
        text(&out)
    );

    fs::remove_file(repo.join("snapshots").join(&bad)).unwrap();
    let out = burrow(&e.cfg, &["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(burrow(&e.cfg, &["snapshots"]).status.code(), Some(0));
    assert_eq!(
        burrow(&e.cfg, &["check", "--read-data=fast"]).status.code(),
        Some(2)
    );
}

#[test]
fn a_truncated_pack_is_named_by_check_and_stored_again_by_the_next_run() {
    let e = env_with("");
    let repo = e.tmp.path().join("repo");
    // data that does not compress, so it fills a pack of its own
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(e.src.join("big"), &big).unwrap();
    assert_eq!(burrow(&e.cfg, &["init"]).status.code(), Some(0));
    let first = json(&burrow(&e.cfg, &["run", "files", "--json"]));
    assert_eq!(first["status"], "ok", "{first}");

    let pack = largest_pack(&repo);
    let id = pack.file_name().unwrap().to_str().unwrap().to_owned();
    let len = fs::metadata(&pack).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let out = burrow(&e.cfg, &["check", "--read-data", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["status"], "failed");
    assert!(
        report["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == format!("pack {id}").as_str()),
        "the damaged pack is named: {report}"
    );
    assert!(
        !pack.exists(),
        "the damaged pack is gone once no index lists it"
    );

    let out = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let again = json(&out);
    assert!(
        again["bytes_added"].as_u64().unwrap() > 1_000_000,
        "the lost data is stored again: {again}"
    );
    let out = burrow(&e.cfg, &["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // the first snapshot is whole again
    let target = e.tmp.path().join("restore");
    let first_id = first["snapshot_id"].as_str().unwrap();
    let out = burrow(
        &e.cfg,
        &[
            "restore",
            "files",
            &first_id[..8],
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let restored = target.join(e.src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(restored.join("big")).unwrap(), big);

    let Some(out) = common::restic(&repo, &e.tmp.path().join("pw"), &["check", "--read-data"])
    else {
        return;
    };
    assert!(out.status.success(), "restic check: {}", text(&out));
}
