//! `burrow ls`, `find`, `diff` and `dump` through the binary, each checked against what stock
//! restic's own `ls`, `find`, `diff` and `dump` say of the same repository.

#![allow(clippy::too_many_lines)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{burrow, json, restic, text};

struct Env {
    _tmp: tempfile::TempDir,
    cfg: PathBuf,
    repo: PathBuf,
    pw: PathBuf,
    src: PathBuf,
}

/// A local job `files` over a tree with nested directories, an empty file and a symlink,
/// and its repository.
fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("www/img")).unwrap();
    fs::create_dir_all(src.join("db")).unwrap();
    fs::write(src.join("www/index.html"), "<h1>hi</h1>\n").unwrap();
    fs::write(src.join("www/img/logo.png"), vec![9u8; 40_000]).unwrap();
    fs::write(src.join("db/app.sql"), "CREATE TABLE t;\n").unwrap();
    fs::write(src.join("db/old.sql"), "DROP TABLE t;\n").unwrap();
    fs::write(src.join("empty"), "").unwrap();
    std::os::unix::fs::symlink("www/index.html", src.join("home")).unwrap();
    let (repo, pw) = (tmp.path().join("repo"), tmp.path().join("pw"));
    fs::write(&pw, "pass\n").unwrap();
    let cfg = tmp.path().join("config.yaml");
    fs::write(
        &cfg,
        format!(
            "repository: {{path: {}, password_file: {}}}\nstate_dir: {}\njobs:\n  files:\n    paths: [{}]\n",
            repo.display(),
            pw.display(),
            tmp.path().join("state").display(),
            src.display(),
        ),
    )
    .unwrap();
    Env {
        _tmp: tmp,
        cfg,
        repo,
        pw,
        src,
    }
}

impl Env {
    fn burrow(&self, args: &[&str]) -> std::process::Output {
        let out = burrow(&self.cfg, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        out
    }

    /// Stock restic's output, or `None` when it is not installed.
    fn restic(&self, args: &[&str]) -> Option<String> {
        let out = restic(&self.repo, &self.pw, args)?;
        assert!(out.status.success(), "restic {args:?}: {}", text(&out));
        Some(String::from_utf8(out.stdout).unwrap())
    }

    fn run(&self) -> String {
        let out = self.burrow(&["run", "files", "--json"]);
        json(&out)["snapshot_id"].as_str().unwrap().to_owned()
    }

    fn path(&self, rel: &str) -> String {
        self.src.join(rel).display().to_string()
    }
}

/// restic's JSON lines of `kind` (`node`, `change`…), parsed.
fn lines_of(out: &str, key: &str, kind: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v[key] == kind)
        .collect()
}

#[test]
fn ls_lists_what_restic_ls_lists() {
    let e = env();
    e.burrow(&["init"]);
    let id = e.run();
    let out = e.burrow(&["ls", "files", &id, "--recursive", "--json"]);
    let ours = json(&out);
    assert_eq!(ours["snapshot"]["id"], id.as_str(), "{ours}");
    let entries = ours["entries"].as_array().unwrap();
    let mine: BTreeSet<(String, String, u64)> = entries
        .iter()
        .map(|n| {
            let size = n["size"].as_u64().unwrap();
            (
                n["path"].as_str().unwrap().to_owned(),
                n["type"].as_str().unwrap().to_owned(),
                size,
            )
        })
        .collect();
    let Some(theirs) = e.restic(&["ls", "--json", &id]) else {
        return;
    };
    let stock: BTreeSet<(String, String, u64)> = lines_of(&theirs, "struct_type", "node")
        .iter()
        .map(|n| {
            let size = n["size"].as_u64().unwrap_or(0);
            (
                n["path"].as_str().unwrap().to_owned(),
                n["type"].as_str().unwrap().to_owned(),
                size,
            )
        })
        .collect();
    assert_eq!(mine, stock);
    assert!(
        mine.contains(&(e.path("home"), "symlink".into(), 0)),
        "{mine:?}"
    );
    let link = entries
        .iter()
        .find(|n| n["path"] == e.path("home").as_str())
        .unwrap();
    assert_eq!(link["link_target"], "www/index.html");

    // One level below a path, and the long form's columns.
    let out = e.burrow(&["ls", "files", "latest", &e.path("www"), "--long"]);
    let t = text(&out);
    let listed: Vec<&str> = t.lines().skip(1).collect();
    assert_eq!(listed.len(), 3, "the directory and its two entries: {t}");
    assert!(listed[0].starts_with("drwx"), "{t}");
    assert!(listed[0].ends_with(&e.path("www")), "{t}");
    assert!(
        listed[2].starts_with("-rw-") && listed[2].contains(" 12 "),
        "{t}"
    );
    assert!(
        listed.iter().all(|l| !l.contains("logo.png")),
        "not recursive: {t}"
    );

    let out = burrow(&e.cfg, &["ls", "files", "latest", "/nowhere"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("/nowhere"), "{}", text(&out));
}

#[test]
fn find_and_diff_say_what_restic_find_and_diff_say() {
    let e = env();
    e.burrow(&["init"]);
    let first = e.run();
    fs::write(e.src.join("db/app.sql"), "CREATE TABLE t (id int);\n").unwrap();
    fs::remove_file(e.src.join("db/old.sql")).unwrap();
    fs::create_dir(e.src.join("db/new")).unwrap();
    fs::write(e.src.join("db/new/users.sql"), "CREATE TABLE u;\n").unwrap();
    let second = e.run();

    // find: the snapshots holding a match, newest first, with the matching paths
    let out = e.burrow(&["find", "files", "*.sql", "--json"]);
    let found = json(&out);
    let by_snapshot: Vec<(String, BTreeSet<String>)> = found["found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let paths = f["matches"].as_array().unwrap().iter();
            let paths = paths
                .map(|m| m["path"].as_str().unwrap().to_owned())
                .collect();
            (f["snapshot"]["id"].as_str().unwrap().to_owned(), paths)
        })
        .collect();
    assert_eq!(by_snapshot.len(), 2, "{found}");
    assert_eq!(by_snapshot[0].0, second, "newest first");
    let out = e.burrow(&["find", "files", "*.sql", "--newest", "1", "--json"]);
    assert_eq!(json(&out)["found"].as_array().unwrap().len(), 1);
    if let Some(theirs) = e.restic(&["find", "--json", "*.sql"]) {
        let stock: serde_json::Value = serde_json::from_str(&theirs).unwrap();
        let mut stock: Vec<(String, BTreeSet<String>)> = stock
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let paths = f["matches"].as_array().unwrap().iter();
                let paths = paths
                    .map(|m| m["path"].as_str().unwrap().to_owned())
                    .collect();
                (f["snapshot"].as_str().unwrap().to_owned(), paths)
            })
            .collect();
        // restic's order of the snapshots is its own: compare them as sets
        stock.sort();
        let mut mine = by_snapshot.clone();
        mine.sort();
        assert_eq!(mine, stock);
    }

    // diff: the same changes, with the same letters
    let out = e.burrow(&["diff", "files", &first, &second, "--json"]);
    let diff = json(&out);
    let mine: Vec<(String, String)> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_owned(),
                c["modifier"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let db = |rel: &str| e.path(&format!("db/{rel}"));
    assert_eq!(
        mine,
        [
            (db("app.sql"), "M".to_owned()),
            (db("new"), "+".to_owned()),
            (db("new/users.sql"), "+".to_owned()),
            (db("old.sql"), "-".to_owned()),
        ]
    );
    assert_eq!(diff["counts"]["files_added"], 1);
    assert_eq!(diff["counts"]["files_removed"], 1);
    assert_eq!(diff["counts"]["files_changed"], 1);
    assert_eq!(diff["counts"]["dirs_added"], 1);
    if let Some(theirs) = e.restic(&["diff", "--json", &first, &second]) {
        let stock: Vec<(String, String)> = lines_of(&theirs, "message_type", "change")
            .iter()
            .map(|c| {
                let path = c["path"].as_str().unwrap().trim_end_matches('/').to_owned();
                (path, c["modifier"].as_str().unwrap().to_owned())
            })
            .collect();
        let mut sorted = stock.clone();
        sorted.sort_by(|a, b| Path::new(&a.0).cmp(Path::new(&b.0)));
        assert_eq!(mine, sorted);
    }
    let t = text(&e.burrow(&["diff", "files", &first, &second]));
    assert!(t.contains(&format!("M    {}", db("app.sql"))), "{t}");
    assert!(t.contains("Files:  1 new, 1 removed, 1 changed"), "{t}");
}

#[test]
fn dump_writes_a_file_of_a_snapshot_as_restic_dump_does() {
    let e = env();
    e.burrow(&["init"]);
    let id = e.run();
    let file = e.path("www/img/logo.png");
    let out = e.burrow(&["dump", "files", "latest", &file]);
    assert_eq!(out.stdout, vec![9u8; 40_000]);
    if let Some(out) = restic(&e.repo, &e.pw, &["dump", &id, &file]) {
        assert_eq!(out.stdout, vec![9u8; 40_000], "{}", text(&out));
    }
    let out = burrow(&e.cfg, &["dump", "files", "latest", &e.path("www")]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a directory is not a file: {}",
        text(&out)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn restore_dry_run_writes_nothing_and_verify_reads_back_what_it_wrote() {
    let e = env();
    e.burrow(&["init"]);
    e.run();
    let target = e.src.with_file_name("restored");
    let t = target.display().to_string();
    let www = e.path("www");
    let out = e.burrow(&[
        "restore",
        "files",
        "--target",
        &t,
        "--path",
        &www,
        "--dry-run",
    ]);
    let said = text(&out);
    assert!(!target.exists(), "a dry run writes nothing");
    assert!(
        said.contains(&format!("would restore {t}/index.html\n")),
        "{said}"
    );
    assert!(
        said.contains(&format!("would restore {t}/img/\n")),
        "{said}"
    );
    assert!(said.contains("would restore 2 file(s), 2 dir(s)"), "{said}");

    let out = e.burrow(&[
        "restore", "files", "--target", &t, "--path", &www, "--verify",
    ]);
    let said = text(&out);
    assert!(said.contains("verified: 2 file(s)"), "{said}");
    assert_eq!(
        fs::read(target.join("img/logo.png")).unwrap(),
        vec![9u8; 40_000]
    );
    let out = burrow(
        &e.cfg,
        &["restore", "files", "--target", &t, "--dry-run", "--verify"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// `burrow stats` counts as restic's `stats` does: the newest snapshot's entries and bytes
/// as `--mode restore-size`, the blobs of all the job's snapshots and their stored size as
/// `--mode raw-data`.
#[test]
fn stats_count_what_restic_stats_counts() {
    let e = env();
    e.burrow(&["init"]);
    let first = e.run();
    fs::write(e.src.join("db/app.sql"), "CREATE TABLE t (id int);\n").unwrap();
    fs::write(e.src.join("www/copy.png"), vec![9u8; 40_000]).unwrap();
    let second = e.run();
    let out = e.burrow(&["stats", "files", "--json"]);
    let stats = &json(&out)["jobs"][0];
    assert_eq!(stats["job"], "files", "{stats}");
    assert_eq!(stats["snapshots"], 2, "{stats}");
    assert_eq!(stats["files"], 6, "{stats}");
    let newest = 12 + 2 * 40_000 + 25 + 14;
    assert_eq!(stats["bytes"], newest, "{stats}");
    assert_eq!(
        stats["all_bytes"],
        newest + 12 + 40_000 + 16 + 14,
        "{stats}"
    );
    let t = text(&e.burrow(&["stats"]));
    assert!(t.lines().nth(1).unwrap().starts_with("files "), "{t}");

    let Some(size) = e.restic(&["stats", "--json", "--mode", "restore-size", &second]) else {
        return;
    };
    let size: serde_json::Value = serde_json::from_str(&size).unwrap();
    assert_eq!(stats["entries"], size["total_file_count"], "{stats} {size}");
    assert_eq!(stats["bytes"], size["total_size"], "{stats} {size}");
    let raw = e
        .restic(&["stats", "--json", "--mode", "raw-data", &first, &second])
        .unwrap();
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(stats["blobs"], raw["total_blob_count"], "{stats} {raw}");
    assert_eq!(stats["stored_bytes"], raw["total_size"], "{stats} {raw}");
}

/// `restore --delete` makes the target match: what the snapshot does not hold goes, inside
/// the target only; a link to a directory elsewhere is removed, never followed.
#[test]
fn restore_delete_removes_what_the_snapshot_does_not_hold_and_nothing_outside() {
    let e = env();
    e.burrow(&["init"]);
    e.run();
    let target = e.src.with_file_name("restored");
    let outside = e.src.with_file_name("outside");
    fs::create_dir_all(target.join("img/extra")).unwrap();
    fs::write(target.join("img/extra/x"), "x").unwrap();
    fs::write(target.join("stray.txt"), "stray").unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("precious"), "keep me").unwrap();
    std::os::unix::fs::symlink(&outside, target.join("link-out")).unwrap();
    let (t, www) = (target.display().to_string(), e.path("www"));
    let out = e.burrow(&[
        "restore", "files", "--target", &t, "--path", &www, "--delete",
    ]);
    let said = text(&out);
    for gone in ["img/extra", "link-out", "stray.txt"] {
        assert!(
            said.contains(&format!("deleted {t}/{gone} ")),
            "{gone}: {said}"
        );
        assert!(fs::symlink_metadata(target.join(gone)).is_err(), "{gone}");
    }
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
    assert_eq!(
        fs::read(target.join("index.html")).unwrap(),
        b"<h1>hi</h1>\n"
    );
    assert!(target.join("img/logo.png").exists());
}
