//! The `burrow` binary as scripts and people use it: exit codes, located config errors, a
//! local job end to end, JSON summaries, restore.

// A test reads as one scenario from top to bottom: longer than library functions may be.
#![allow(clippy::too_many_lines)]

use crate::util::{burrow, burrow_command, json, text};
use burrow_testkit::noise;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// `burrow … | head -1`: the reader goes away before burrow writes. No panic on the broken
/// pipe: the command ends with its own exit code, 0 for `check-config` of a clean config and
/// 1 for a `check` that finds no repository (its report goes to the closed stdout).
#[test]
fn output_into_a_closed_pipe_keeps_the_commands_exit_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let no_repo = tmp.path().join("no-repo.yaml");
    fs::write(tmp.path().join("pw"), "pw\n").unwrap();
    fs::write(
        &no_repo,
        format!(
            "repository: {{path: {}, password_file: {}}}\nstate_dir: {}\n",
            tmp.path().join("repo").display(),
            tmp.path().join("pw").display(),
            tmp.path().join("state").display()
        ),
    )
    .unwrap();
    for (cfg, args, code) in [
        (root.join("config.example.yaml"), &["check-config"][..], 0),
        (no_repo, &["check"][..], 1),
    ] {
        let mut child = burrow_command(&cfg, args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    }
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
    // No daemon runs: status reads state_dir, where the runs by hand were kept too.
    let out = burrow(&e.cfg, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let st = json(&out);
    assert_eq!(st["daemon"]["running"], false, "{st}");
    assert_eq!(st["jobs"][0]["name"], "files", "{st}");
    assert_eq!(
        st["jobs"][0]["last"]["snapshot_id"], third["snapshot_id"],
        "{st}"
    );
    let out = burrow(&e.cfg, &["status"]);
    assert!(
        text(&out).contains("burrow daemon is not running"),
        "{}",
        text(&out)
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

#[test]
fn emptied_source_is_an_anomaly_and_keeps_the_good_snapshot() {
    let e = env_with("    retention: {keep_last: 1}\n");
    burrow(&e.cfg, &["init"]);
    for i in 0..30 {
        fs::write(e.src.join(format!("f{i:02}")), format!("file {i}\n")).unwrap();
    }
    let good = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(good.status.code(), Some(0), "{}", text(&good));
    let good_id = json(&good)["snapshot_id"].as_str().unwrap().to_owned();

    // The server was wiped: the directory is still there, every file is gone.
    fs::remove_dir_all(&e.src).unwrap();
    fs::create_dir_all(&e.src).unwrap();
    let out = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let s = json(&out);
    assert_eq!(s["status"], "anomaly");
    assert_eq!(s["errors"][0]["path"], "anomaly", "{s}");
    let snaps = json(&burrow(&e.cfg, &["snapshots", "files", "--json"]));
    let snaps = snaps.as_array().unwrap();
    // keep_last: 1 would have forgotten the good snapshot; retention is paused instead
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert_eq!(snaps[0]["id"], good_id.as_str());
    let tags = snaps[1]["tags"].as_array().unwrap();
    assert!(tags.iter().any(|t| t == "anomaly"), "{tags:?}");

    // Still empty the next night: still an anomaly, still nothing forgotten.
    let out = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let snaps = json(&burrow(&e.cfg, &["snapshots", "files", "--json"]));
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == good_id.as_str()),
        "the newest good snapshot is kept: {snaps}"
    );

    // The user looks, decides the change is real, and accepts it: retention resumes, but
    // the newest snapshot without `anomaly` is still protected.
    let out = burrow(&e.cfg, &["accept", "files"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("accepted"), "{}", text(&out));
    fs::write(e.src.join("new"), "back\n").unwrap();
    let out = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let newest = json(&out)["snapshot_id"].as_str().unwrap().to_owned();
    let snaps = json(&burrow(&e.cfg, &["snapshots", "files", "--json"]));
    let ids: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [newest.as_str()], "keep_last: 1 applies again");
    let out = burrow(&e.cfg, &["accept", "files"]);
    assert!(text(&out).contains("not paused"), "{}", text(&out));
}

#[test]
fn most_files_changed_is_an_anomaly() {
    let e = env_with("");
    burrow(&e.cfg, &["init"]);
    for i in 0..20 {
        fs::write(e.src.join(format!("f{i:02}")), format!("file {i}\n")).unwrap();
    }
    assert_eq!(burrow(&e.cfg, &["run", "files"]).status.code(), Some(0));
    // ransomware: every file rewritten, at another size so the change is seen
    for i in 0..20 {
        fs::write(e.src.join(format!("f{i:02}")), format!("encrypted!! {i}\n")).unwrap();
    }
    let out = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        json(&out)["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("changed"),
        "{}",
        text(&out)
    );
}

// ---- restore is confined to its target (docs/design.md invariant 15)

fn restore_to(e: &Env, extra: &[&str], target: &Path) -> std::process::Output {
    let mut args = vec!["restore", "files"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--target", target.to_str().unwrap()]);
    burrow(&e.cfg, &args)
}

/// Every entry of `dir` (recursively), relative, sorted: what a restore may have put there.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            v.push(p.strip_prefix(dir).unwrap().to_owned());
        }
    }
    v.sort();
    v
}

#[test]
fn restore_replaces_planted_symlinks_instead_of_following_them() {
    let e = env_with("");
    burrow(&e.cfg, &["init"]);
    let out = burrow(&e.cfg, &["run", "files"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let outside = e.tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    fs::write(&victim, "precious").unwrap();
    let rel = e.src.strip_prefix("/").unwrap();
    // The job's paths are below /tmp: a link named tmp in the target is the first component.
    let first = rel.components().next().unwrap().as_os_str().to_owned();
    let target = e.tmp.path().join("t1");
    fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join(&first)).unwrap();
    let out = restore_to(&e, &["latest"], &target);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        listing(&outside),
        [PathBuf::from("victim")],
        "written outside"
    );
    assert!(fs::symlink_metadata(target.join(&first)).unwrap().is_dir());
    assert_eq!(fs::read(target.join(rel).join("a")).unwrap(), b"hello\n");

    // a link where a file goes, and one where a directory goes, deeper down
    let target = e.tmp.path().join("t2");
    fs::create_dir_all(target.join(rel)).unwrap();
    std::os::unix::fs::symlink(&victim, target.join(rel).join("a")).unwrap();
    std::os::unix::fs::symlink(&outside, target.join(rel).join("d")).unwrap();
    let out = restore_to(&e, &["latest"], &target);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(
        listing(&outside),
        [PathBuf::from("victim")],
        "written outside"
    );
    assert!(
        fs::symlink_metadata(target.join(rel).join("a"))
            .unwrap()
            .is_file()
    );
    assert_eq!(fs::read(target.join(rel).join("a")).unwrap(), b"hello\n");
    assert_eq!(
        fs::read(target.join(rel).join("d/e/c")).unwrap(),
        vec![1u8; 50_000]
    );
}

#[test]
fn a_symlink_then_a_file_in_the_next_snapshot_stays_in_the_target() {
    let e = env_with("");
    burrow(&e.cfg, &["init"]);
    let outside = e.tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    fs::write(&victim, "precious").unwrap();
    // The server says p is a link to the victim and q a link to a directory outside...
    std::os::unix::fs::symlink(&victim, e.src.join("p")).unwrap();
    std::os::unix::fs::symlink(&outside, e.src.join("q")).unwrap();
    let first = json(&burrow(&e.cfg, &["run", "files", "--json"]));
    assert_eq!(first["status"], "ok", "{first}");
    // ...and in the next run p is a file and q a directory holding a file named victim.
    fs::remove_file(e.src.join("p")).unwrap();
    fs::remove_file(e.src.join("q")).unwrap();
    fs::write(e.src.join("p"), "overwritten").unwrap();
    fs::create_dir(e.src.join("q")).unwrap();
    fs::write(e.src.join("q/victim"), "overwritten").unwrap();
    let second = json(&burrow(&e.cfg, &["run", "files", "--json"]));
    assert_eq!(second["status"], "ok", "{second}");

    let target = e.tmp.path().join("t");
    let rel = e
        .tmp
        .path()
        .join("t")
        .join(e.src.strip_prefix("/").unwrap());
    let out = restore_to(&e, &[first["snapshot_id"].as_str().unwrap()], &target);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fs::read_link(rel.join("p")).unwrap(), victim);
    assert_eq!(fs::read_link(rel.join("q")).unwrap(), outside);
    let out = restore_to(&e, &["latest"], &target);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(listing(&outside), [PathBuf::from("victim")]);
    assert!(fs::symlink_metadata(rel.join("p")).unwrap().is_file());
    assert_eq!(fs::read(rel.join("p")).unwrap(), b"overwritten");
    assert_eq!(fs::read(rel.join("q/victim")).unwrap(), b"overwritten");
}

#[test]
fn a_restored_dump_keeps_its_mode_and_replaces_a_planted_link() {
    use std::os::unix::fs::PermissionsExt;
    let e = env_with("    dumps:\n      - {name: db.dump, command: \"printf secret-dump\"}\n");
    burrow(&e.cfg, &["init"]);
    let out = burrow(&e.cfg, &["run", "files"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let victim = e.tmp.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    let target = e.tmp.path().join("t");
    fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&victim, target.join("db.dump")).unwrap();
    let out = restore_to(&e, &["--dump", "db.dump"], &target);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(
        fs::metadata(&victim).unwrap().permissions().mode() & 0o7777,
        0o644
    );
    let m = fs::symlink_metadata(target.join("db.dump")).unwrap();
    assert!(m.is_file());
    assert_eq!(m.permissions().mode() & 0o7777, 0o600, "the stored mode");
    assert_eq!(fs::read(target.join("db.dump")).unwrap(), b"secret-dump");
}

#[test]
fn a_single_file_restore_logs_no_error() {
    let e = env_with("");
    burrow(&e.cfg, &["init"]);
    burrow(&e.cfg, &["run", "files"]);
    let target = e.tmp.path().join("t");
    let path = e.src.join("a");
    let out = restore_to(&e, &["latest", "--path", path.to_str().unwrap()], &target);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fs::read(target.join("a")).unwrap(), b"hello\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in fs::read_dir(repo.join("data")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            v.push(f.unwrap().path());
        }
    }
    v
}

#[test]
fn a_truncated_pack_fails_only_its_files() {
    let e = env_with("");
    burrow(&e.cfg, &["init"]);
    let kept = noise(1_500_000, 1);
    fs::write(e.src.join("kept"), &kept).unwrap();
    let out = burrow(&e.cfg, &["run", "files"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let repo = e.tmp.path().join("repo");
    let before = pack_files(&repo);
    fs::write(e.src.join("lost"), noise(1_500_000, 2)).unwrap();
    let out = burrow(&e.cfg, &["run", "files"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // the new data pack holds the new file only (tree packs are small)
    let pack = pack_files(&repo)
        .into_iter()
        .filter(|p| !before.contains(p))
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let len = fs::metadata(&pack).unwrap().len();
    assert!(len > 1_000_000, "{} is {len} bytes", pack.display());
    let f = fs::OpenOptions::new().write(true).open(&pack).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);

    let target = e.tmp.path().join("t");
    let out = restore_to(&e, &["latest"], &target);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    let lost = e.src.join("lost");
    assert!(
        t.contains(&format!("failed: {}: ", lost.display())),
        "the damaged file must be named: {t}"
    );
    assert!(t.contains("1 entry not restored"), "{t}");
    let rel = target.join(e.src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(rel.join("kept")).unwrap(), kept);
    assert_eq!(fs::read(rel.join("a")).unwrap(), b"hello\n");
    assert_eq!(fs::read(rel.join("d/e/c")).unwrap(), vec![1u8; 50_000]);
    assert_eq!(
        listing(&rel),
        ["a", "d", "d/e", "d/e/c", "kept"].map(PathBuf::from),
        "no partial or temporary file"
    );
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

    let Some(out) = crate::util::restic(&repo, &e.tmp.path().join("pw"), &["check", "--read-data"])
    else {
        return;
    };
    assert!(out.status.success(), "restic check: {}", text(&out));
}

#[test]
fn password_file_reads_as_stock_restic_reads_it() {
    let e = env_with("");
    let pw = e.tmp.path().join("pw");
    let repo = e.tmp.path().join("repo");
    // A trailing space on the first line and a second line: restic takes the whole file,
    // trimmed at both ends, so both lines and the inner space are the password.
    fs::write(&pw, "pass word \nsecond line\n").unwrap();
    let out = burrow(&e.cfg, &["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = burrow(&e.cfg, &["run", "files"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let Some(out) = crate::util::restic(&repo, &pw, &["snapshots"]) else {
        return;
    };
    assert!(out.status.success(), "restic refused: {}", text(&out));

    // Surrounding white space (and a UTF-8 byte order mark) does not matter to either.
    fs::write(&pw, "\u{feff}  pass word \nsecond line \r\n\n").unwrap();
    assert_eq!(burrow(&e.cfg, &["snapshots"]).status.code(), Some(0));
    let out = crate::util::restic(&repo, &pw, &["snapshots"]).unwrap();
    assert!(out.status.success(), "restic refused: {}", text(&out));

    // The first line alone is another password: both refuse it.
    fs::write(&pw, "pass word \n").unwrap();
    let out = burrow(&e.cfg, &["snapshots"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("wrong password"), "{}", text(&out));
    let out = crate::util::restic(&repo, &pw, &["snapshots"]).unwrap();
    assert!(!out.status.success(), "restic opened it: {}", text(&out));

    // Nothing but white space is no password.
    fs::write(&pw, " \n\t\n").unwrap();
    let out = burrow(&e.cfg, &["snapshots"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("white space only"), "{}", text(&out));
}

#[test]
fn log_lines_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let e = env_with("");
    assert_eq!(burrow(&e.cfg, &["init"]).status.code(), Some(0));
    let out = burrow_command(&e.cfg, &["run", "files"])
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INFO"), "expected log lines on stderr: {err}");
    assert!(
        !err.contains("\x1b["),
        "colour codes in piped stderr: {err:?}"
    );
}

/// A machine without CA certificates, as rustls sees it: no bundle at either place it looks.
fn without_ca_certificates(mut c: Command) -> Output {
    c.env("SSL_CERT_FILE", "/nonexistent/ca.pem")
        .env("SSL_CERT_DIR", "/nonexistent")
        .output()
        .unwrap()
}

#[test]
fn a_ping_that_cannot_be_sent_never_stops_the_backup() {
    // Port 9 (discard) on loopback: nothing is ever sent there, the client cannot be built.
    let e = env_with("    healthcheck: http://127.0.0.1:9/ping/abc\n");
    assert_eq!(burrow(&e.cfg, &["init"]).status.code(), Some(0));
    let out = without_ca_certificates(burrow_command(&e.cfg, &["run", "files", "--json"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json(&out)["status"], "ok", "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("install ca-certificates"), "{err}");
    assert_eq!(
        err.matches("install ca-certificates").count(),
        1,
        "one error, not one per ping: {err}"
    );
    let out = burrow(&e.cfg, &["snapshots", "files", "--json"]);
    assert_eq!(
        json(&out).as_array().map(Vec::len),
        Some(1),
        "{}",
        text(&out)
    );
}

#[test]
fn doctor_names_each_problem_with_its_fix_and_changes_nothing() {
    let e = env_with("    schedule: \"0 3 * * *\"\n    healthcheck: http://127.0.0.1:9/ping/abc\n");
    let out = without_ca_certificates(burrow_command(&e.cfg, &["doctor"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("FAIL  ca-certificates"), "{t}");
    assert!(t.contains("fix: apt-get install ca-certificates"), "{t}");
    assert!(t.contains("ok    udisks2          not needed"), "{t}");
    // it looked, and created nothing: no repository, no state directory
    assert!(!e.tmp.path().join("repo").exists());
    assert!(!e.tmp.path().join("state").exists());

    // With CA certificates (CI installs them) and a zone, every check passes; --json lists them.
    let out = burrow_command(&e.cfg, &["doctor", "--json"])
        .env("TZ", "Europe/Paris")
        .output()
        .unwrap();
    let v = json(&out);
    let checks: Vec<(&str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["check"].as_str().unwrap(), f["verdict"].as_str().unwrap()))
        .collect();
    assert!(checks.contains(&("ca-certificates", "ok")), "{checks:?}");
    assert!(checks.contains(&("time-zone", "ok")), "{checks:?}");
    assert!(checks.contains(&("state-dir", "ok")), "{checks:?}");
    assert!(checks.contains(&("free-space", "ok")), "{checks:?}");
    // restic is optional: a warning at most, never a failure
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// The repository of a run killed (SIGKILL) at some moment: stock restic must find it clean,
/// and the next run must complete.
#[test]
fn a_run_killed_at_any_moment_leaves_a_clean_repository_and_the_next_run_completes() {
    let e = env_with("");
    fs::create_dir_all(e.src.join("big")).unwrap();
    let write_big = |round: u64| {
        for i in 0..8u64 {
            let len = (1 + (i % 3) as usize) << 20;
            fs::write(e.src.join(format!("big/{i}")), noise(len, round * 100 + i)).unwrap();
        }
    };
    write_big(0);
    for i in 0..300 {
        fs::write(
            e.src.join(format!("d/s{i:03}")),
            noise(100 + i as usize * 7, i),
        )
        .unwrap();
    }
    let out = burrow(&e.cfg, &["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let repo = e.tmp.path().join("repo");
    let pw = e.tmp.path().join("pw");
    if crate::util::restic(&repo, &pw, &["version"]).is_none() {
        return;
    }
    // Spread over the run: at its start, while packs are written, near its end.
    for (round, ms) in [40u64, 250, 600, 1100, 1800, 2600].into_iter().enumerate() {
        write_big(round as u64 + 1);
        let mut child = burrow_command(&e.cfg, &["run", "files"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let _ = child.kill();
        child.wait().unwrap();
        // restic 0.14 takes no lock over another one, stale or not; `unlock` (without
        // `--remove-all`) removes only locks of processes that are gone.
        let out = crate::util::restic(&repo, &pw, &["unlock"]).unwrap();
        assert!(out.status.success(), "restic unlock: {}", text(&out));
        let out = crate::util::restic(&repo, &pw, &["check"]).unwrap();
        assert!(
            out.status.success(),
            "restic check after a kill at {ms} ms: {}",
            text(&out)
        );
    }
    let out = burrow(&e.cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json(&out)["status"], "ok");
    let out = crate::util::restic(&repo, &pw, &["check", "--read-data"]).unwrap();
    assert!(
        out.status.success(),
        "restic check --read-data: {}",
        text(&out)
    );
    let target = e.tmp.path().join("restored");
    let out = crate::util::restic(
        &repo,
        &pw,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let back = target.join(e.src.strip_prefix("/").unwrap());
    for i in 0..8 {
        let name = format!("big/{i}");
        assert!(
            fs::read(back.join(&name)).unwrap() == fs::read(e.src.join(&name)).unwrap(),
            "{name} restored as it is now"
        );
    }
}
