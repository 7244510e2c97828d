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
    let Some(out) = common::restic(&repo, &pw, &["snapshots"]) else {
        return;
    };
    assert!(out.status.success(), "restic refused: {}", text(&out));

    // Surrounding white space (and a UTF-8 byte order mark) does not matter to either.
    fs::write(&pw, "\u{feff}  pass word \nsecond line \r\n\n").unwrap();
    assert_eq!(burrow(&e.cfg, &["snapshots"]).status.code(), Some(0));
    let out = common::restic(&repo, &pw, &["snapshots"]).unwrap();
    assert!(out.status.success(), "restic refused: {}", text(&out));

    // The first line alone is another password: both refuse it.
    fs::write(&pw, "pass word \n").unwrap();
    let out = burrow(&e.cfg, &["snapshots"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("wrong password"), "{}", text(&out));
    let out = common::restic(&repo, &pw, &["snapshots"]).unwrap();
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
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("--config")
        .arg(&e.cfg)
        .args(["run", "files"])
        .env("BURROW_SOCKET", e.cfg.with_extension("sock"))
        .env_remove("RUST_LOG")
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
