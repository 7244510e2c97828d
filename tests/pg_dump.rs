//! Database dumps end to end through the `burrow` binary, against a private sshd and a private
//! PostgreSQL cluster: a live database dumped while it is written to restores consistent, and
//! a failing dump next to good ones gives a partial snapshot without it.

// A test reads as one scenario from top to bottom: longer than library functions may be.
#![allow(clippy::too_many_lines)]

use crate::util::{burrow, json, text};
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use burrow_testkit::postgres::Postgres;
use burrow_testkit::sshd::Sshd;

/// A YAML scalar holding `s` exactly (a JSON string is a YAML double-quoted scalar).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

struct Env {
    tmp: tempfile::TempDir,
    cfg: PathBuf,
    repo: PathBuf,
    pw: PathBuf,
}

/// A config with a server `db` (the private sshd, logged into as its user) and the job
/// `job_yaml` (already indented under `jobs:`).
fn env_with(sshd: &Sshd, job_yaml: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pw");
    fs::write(&pw, "pass\n").unwrap();
    let repo = tmp.path().join("repo");
    let cfg = tmp.path().join("config.yaml");
    let env = Env { cfg, repo, pw, tmp };
    env.write_config(sshd, job_yaml);
    env
}

impl Env {
    fn write_config(&self, sshd: &Sshd, job_yaml: &str) {
        fs::write(
            &self.cfg,
            format!(
                "repository: {{path: {repo}, password_file: {pw}}}\n\
                 state_dir: {state}\n\
                 servers:\n  db:\n    host: 127.0.0.1\n    port: {port}\n    user: {user}\n    \
                 identity_file: {key}\n    host_key: {host_key}\n\
                 jobs:\n{job_yaml}",
                repo = self.repo.display(),
                pw = self.pw.display(),
                state = self.tmp.path().join("state").display(),
                port = sshd.port,
                user = q(&sshd.user),
                key = sshd.client_key.display(),
                host_key = q(&sshd.host_key_line),
            ),
        )
        .unwrap();
    }

    /// `restic` on the repository, or `None` (after `missing`) when restic is not installed.
    fn restic(&self, args: &[&str]) -> Option<Output> {
        let out = Command::new("restic")
            .arg("-r")
            .arg(&self.repo)
            .arg("--password-file")
            .arg(&self.pw)
            .args(["--no-cache", "-q"])
            .args(args)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => Some(o),
            Err(e) => {
                burrow_testkit::missing("restic", &format!("apt-get install restic ({e})"));
                None
            }
        }
    }
}

fn count(pg: &Postgres, db: &str, table: &str) -> i64 {
    pg.psql(db, &format!("SELECT count(*) FROM {table}"))
        .parse()
        .unwrap()
}

/// Keeps moving money between accounts until `stop`, each move one transaction that updates
/// both balances and records the transfer. Returns the number of transactions sent.
fn start_writer(pg: &Postgres, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    let mut child = pg
        .client(&pg.bin("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "bank"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start psql");
    let mut stdin = child.stdin.take().unwrap();
    thread::spawn(move || {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let src = next(100) + 1;
            let dst = (src + next(99)) % 100 + 1;
            let amount = next(500) + 1;
            let tx = format!(
                "BEGIN;\n\
                 UPDATE accounts SET balance = balance - {amount} WHERE id = {src};\n\
                 UPDATE accounts SET balance = balance + {amount} WHERE id = {dst};\n\
                 INSERT INTO transfers (src, dst, amount) VALUES ({src}, {dst}, {amount});\n\
                 COMMIT;\n"
            );
            stdin
                .write_all(tx.as_bytes())
                .expect("psql took no more input");
            sent += 1;
        }
        drop(stdin);
        let status = child.wait().unwrap();
        assert!(status.success(), "the writer's psql failed: {status}");
        sent
    })
}

/// Checks the bank's invariants in `db`: the money is all there, and every account's balance
/// is its opening 1000 plus what its recorded transfers moved in and out.
fn assert_consistent(pg: &Postgres, db: &str) {
    assert_eq!(count(pg, db, "accounts"), 100);
    assert_eq!(pg.psql(db, "SELECT sum(balance) FROM accounts"), "100000");
    let wrong = pg.psql(
        db,
        "SELECT count(*) FROM accounts a WHERE a.balance - 1000 <> \
           COALESCE((SELECT sum(amount) FROM transfers WHERE dst = a.id), 0) \
         - COALESCE((SELECT sum(amount) FROM transfers WHERE src = a.id), 0)",
    );
    assert_eq!(
        wrong, "0",
        "accounts whose balance disagrees with the transfers"
    );
}

#[test]
fn postgres_dump_of_a_live_database_restores_consistent() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let Some(pg) = Postgres::start() else {
        return;
    };
    pg.psql("postgres", "CREATE DATABASE bank");
    pg.psql(
        "bank",
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);\n\
         CREATE TABLE transfers (id serial, src int, dst int, amount bigint);\n\
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g;",
    );

    // The `postgres` preset runs `pg_dump -Fc [-U user] DB` and cannot name the socket
    // directory or port of this private cluster, so the commands are spelled out.
    let env_prefix = pg.env_prefix();
    let dump_cmd = format!("{env_prefix} {} -Fc bank", pg.bin("pg_dump").display());
    let restore_cmd = format!(
        "{env_prefix} {} --clean --if-exists --no-owner -d bank_restored",
        pg.bin("pg_restore").display()
    );
    let env = env_with(
        &sshd,
        &format!(
            "  bank:\n    server: db\n    dumps:\n      - name: bank.pgdump\n        \
             command: {}\n        restore_command: {}\n",
            q(&dump_cmd),
            q(&restore_cmd)
        ),
    );
    let out = burrow(&env.cfg, &["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(&pg, stop.clone());
    // The writer is going before the backup starts...
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&pg, "bank", "transfers") < 20 {
        assert!(Instant::now() < deadline, "the writer made no transfers");
        thread::sleep(Duration::from_millis(20));
    }
    let before = count(&pg, "bank", "transfers");
    let out = burrow(&env.cfg, &["run", "bank", "--json"]);
    let after = count(&pg, "bank", "transfers");
    stop.store(true, Ordering::Relaxed);
    let sent = writer.join().expect("the writer panicked");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary = json(&out);
    assert_eq!(summary["status"], "ok", "{summary}");
    assert!(summary["bytes_read"].as_u64().unwrap() > 0, "{summary}");
    // ...and still going when it ends.
    assert!(
        after > before,
        "no transfers during the run ({before} → {after})"
    );
    assert!(sent as i64 >= after);
    // The live database itself never broke the invariant.
    assert_consistent(&pg, "bank");

    pg.psql("postgres", "CREATE DATABASE bank_restored");
    let out = burrow(
        &env.cfg,
        &[
            "restore",
            "bank",
            "latest",
            "--dump",
            "bank.pgdump",
            "--to-server",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        pg.log_text()
    );
    assert_consistent(&pg, "bank_restored");
    let restored = count(&pg, "bank_restored", "transfers");
    eprintln!("transfers: {before} before the run, {restored} in the dump, {after} after it");
    assert!(
        (before..=after).contains(&restored),
        "the dump holds {restored} transfers; {before} were made before the run, {after} after"
    );

    // The same bytes come out of `--target` and stock restic, and pg_restore can read them.
    let target = env.tmp.path().join("restored");
    let out = burrow(
        &env.cfg,
        &[
            "restore",
            "bank",
            "--dump",
            "bank.pgdump",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let file = target.join("bank.pgdump");
    let bytes = fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"PGDMP"), "not a custom-format dump");
    let list = pg
        .client(&pg.bin("pg_restore"))
        .arg("-l")
        .arg(&file)
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", text(&list));
    let toc = String::from_utf8_lossy(&list.stdout);
    for table in ["TABLE public accounts", "TABLE public transfers"] {
        assert!(toc.contains(table), "no {table:?} in:\n{toc}");
    }
    let Some(out) = env.restic(&["dump", "latest", "/burrow-dumps/bank.pgdump"]) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        out.stdout == bytes,
        "restic dump differs from burrow restore"
    );
}

#[test]
fn failed_dump_is_left_out_of_a_partial_snapshot() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let files = tmp.path().join("files");
    fs::create_dir_all(&files).unwrap();
    fs::write(files.join("a"), "hello\n").unwrap();
    let job = |bad: &str| {
        format!(
            "  mixed:\n    server: db\n    paths: [{}]\n    dumps:\n      \
             - {{name: bad, command: {}}}\n      - {{name: good, command: {}}}\n",
            files.display(),
            q(bad),
            q("seq 1 200000")
        )
    };
    let env = env_with(&sshd, &job("sh -c 'seq 1 1000; exit 1'"));
    let out = burrow(&env.cfg, &["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = burrow(&env.cfg, &["run", "mixed", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let s = json(&out);
    assert_eq!(s["status"], "partial", "{s}");
    let errors = s["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["path"] == "/burrow-dumps/bad"),
        "{s}"
    );
    assert!(
        !errors.iter().any(|e| e["path"] == "/burrow-dumps/good"),
        "{s}"
    );

    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    let target = tmp.path().join("via-burrow");
    let out = burrow(
        &env.cfg,
        &[
            "restore",
            "mixed",
            "--dump",
            "good",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(fs::read(target.join("good")).unwrap() == expected.as_bytes());
    let out = burrow(
        &env.cfg,
        &[
            "restore",
            "mixed",
            "--dump",
            "bad",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "the failed dump is not in the snapshot: {}",
        text(&out)
    );
    assert!(!target.join("bad").exists());

    if let Some(out) = env.restic(&["ls", "--json", "latest"]) {
        assert!(out.status.success(), "{}", text(&out));
        let nodes: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let path_of = |n: &serde_json::Value| n["path"].as_str().map(str::to_owned);
        let paths: Vec<String> = nodes.iter().filter_map(path_of).collect();
        assert!(!paths.iter().any(|p| p == "/burrow-dumps/bad"), "{paths:?}");
        let file_a = files.join("a").display().to_string();
        assert!(paths.contains(&file_a), "{paths:?}");
        let good = nodes
            .iter()
            .find(|n| n["path"] == "/burrow-dumps/good")
            .unwrap_or_else(|| panic!("no good dump in {paths:?}"));
        assert_eq!(good["size"], expected.len(), "{good}");

        let rt = tmp.path().join("via-restic");
        let out = env
            .restic(&["restore", "latest", "--target", rt.to_str().unwrap()])
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let got = fs::read(rt.join("burrow-dumps/good")).unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected.as_bytes(), "restic restored other bytes");
        assert!(!rt.join("burrow-dumps/bad").exists());
    }

    env.write_config(&sshd, &job("seq 1 1000"));
    let out = burrow(&env.cfg, &["run", "mixed", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = json(&out);
    assert_eq!(s["status"], "ok", "{s}");
    assert_eq!(s["errors"], serde_json::json!([]), "{s}");
}
