//! burrow against a private sshd on 127.0.0.1: pull over SFTP, stock restic reads the result,
//! host keys are enforced, hooks and dumps behave, a vanished server fails the run cleanly.

use crate::util::{burrow, json, restic, text};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burrow_testkit::proxy::{Proxy, ProxyOptions};
use burrow_testkit::sshd::{Sshd, group_members};

/// ~1,000 files in nested directories, a few larger ones, odd names, a symlink out.
fn make_tree(root: &Path) {
    for d in 0..20 {
        let dir = root.join(format!("dir{d:02}")).join("sub");
        fs::create_dir_all(&dir).unwrap();
        for f in 0..48 {
            let body = format!("file {d}/{f}\n").repeat(1 + (f * d) % 40);
            fs::write(dir.join(format!("f{f:03}.txt")), body).unwrap();
        }
    }
    fs::create_dir_all(root.join("empty")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(root.join("big.bin"), &big).unwrap();
    fs::write(root.join("with\nnewline"), "n").unwrap();
    fs::write(root.join("..dots"), "d").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"latin1-\xe9")), "not UTF-8").unwrap();
    fs::write(root.join("secret"), "s").unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("link-out")).unwrap();
}

struct Setup {
    tmp: tempfile::TempDir,
    sshd: Sshd,
    src: PathBuf,
}

fn setup() -> Option<Setup> {
    let sshd = Sshd::start()?;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("server-data");
    fs::create_dir_all(&src).unwrap();
    fs::write(tmp.path().join("pw"), "pw\n").unwrap();
    Some(Setup { tmp, sshd, src })
}

impl Setup {
    /// Writes a config with server `vps` (sshd, or `port` when given) and the job text.
    fn config(
        &self,
        name: &str,
        port: Option<u16>,
        host_key: &str,
        server_extra: &str,
        jobs: &str,
    ) -> PathBuf {
        let cfg = self.tmp.path().join(format!("{name}.yaml"));
        let text = format!(
            "repository: {{path: {repo}, password_file: {pw}}}
state_dir: {state}
servers:
  vps:
    host: 127.0.0.1
    port: {port}
    user: {user}
    identity_file: {key}
    host_key: \"{host_key}\"
    connect_timeout: 10s
{server_extra}jobs:
{jobs}",
            repo = self.tmp.path().join("repo").display(),
            pw = self.tmp.path().join("pw").display(),
            state = self.tmp.path().join("state").display(),
            port = port.unwrap_or(self.sshd.port),
            user = self.sshd.user,
            key = self.sshd.client_key.display(),
        );
        fs::write(&cfg, text).unwrap();
        cfg
    }

    fn files_job(&self) -> String {
        format!(
            "  files:\n    server: vps\n    paths: [{}]\n",
            self.src.display()
        )
    }
}

fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(out.status.success(), "trees differ:\n{}", text(&out));
    // modes and mtimes of regular files
    for entry in walk(a) {
        let rel = entry.strip_prefix(a).unwrap();
        let (ma, mb) = (
            fs::symlink_metadata(&entry).unwrap(),
            fs::symlink_metadata(b.join(rel)).unwrap(),
        );
        assert_eq!(ma.mode(), mb.mode(), "mode of {rel:?}");
        if ma.is_file() {
            assert_eq!(ma.mtime(), mb.mtime(), "mtime of {rel:?}");
        }
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn pull_over_sftp_and_stock_restic_reads_it() {
    let Some(s) = setup() else { return };
    make_tree(&s.src);
    let server2 = format!(
        "  vps-exec:\n    host: 127.0.0.1\n    port: {}\n    user: {}\n    identity_file: {}\n    host_key: \"{}\"\n    sftp_command: /usr/lib/openssh/sftp-server -R\n",
        s.sshd.port,
        s.sshd.user,
        s.sshd.client_key.display(),
        s.sshd.host_key_line
    );
    let jobs = format!(
        "{}  exec:\n    server: vps-exec\n    paths: [{}]\n",
        s.files_job(),
        s.src.display()
    );
    let cfg = s.config("c", None, &s.sshd.host_key_line, &server2, &jobs);
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));

    let out = burrow(&cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let first = json(&out);
    assert_eq!(first["files_new"], 20 * 48 + 6, "{first}");
    assert!(first["bytes_read"].as_u64().unwrap() > 3_000_000);

    let second = json(&burrow(&cfg, &["run", "files", "--json"]));
    assert_eq!(second["status"], "ok");
    assert_eq!(
        second["bytes_read"], 0,
        "nothing changed, nothing read: {second}"
    );
    assert_eq!(second["files_unmodified"], first["files_new"]);
    assert_eq!(
        second["bytes_added"], 0,
        "nothing changed, nothing added: {second}"
    );

    // the same tree through an sftp-server started on an exec channel
    let out = burrow(&cfg, &["run", "exec", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json(&out)["files_new"], first["files_new"]);

    let repo = s.tmp.path().join("repo");
    let pw = s.tmp.path().join("pw");
    let Some(out) = restic(&repo, &pw, &["check", "--read-data"]) else {
        return;
    };
    assert!(out.status.success(), "restic check: {}", text(&out));

    let by_restic = s.tmp.path().join("by-restic");
    let out = restic(
        &repo,
        &pw,
        &[
            "restore",
            "latest",
            "--tag",
            "job=files",
            "--target",
            by_restic.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(out.status.success(), "restic restore: {}", text(&out));
    assert_same_tree(&s.src, &by_restic.join(s.src.strip_prefix("/").unwrap()));

    let by_burrow = s.tmp.path().join("by-burrow");
    let out = burrow(
        &cfg,
        &[
            "restore",
            "files",
            "latest",
            "--target",
            by_burrow.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_same_tree(&s.src, &by_burrow.join(s.src.strip_prefix("/").unwrap()));
}

/// Names and symlink targets are bytes over SFTP and in the snapshot: a directory and a file
/// whose names are not UTF-8, and a link to a target that is not, come back from `burrow
/// restore` byte for byte, and stock restic restores the names too. (restic 0.14 restores
/// such a link target from the text field, with U+FFFD; the exact bytes are in the node's
/// `linktarget_raw`, which burrow and newer restic read.)
#[test]
fn names_and_link_targets_that_are_not_utf8_come_back_byte_for_byte() {
    let Some(s) = setup() else { return };
    let dir = s.src.join(OsStr::from_bytes(b"dir-\xff"));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(OsStr::from_bytes(b"\xfe\xfd")), "odd").unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"to-\xfc"), s.src.join("link")).unwrap();
    let cfg = s.config("c", None, &s.sshd.host_key_line, "", &s.files_job());
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let out = burrow(&cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json(&out)["files_new"], 2, "{}", text(&out));

    let rel = s.src.strip_prefix("/").unwrap();
    let by_burrow = s.tmp.path().join("by-burrow");
    let args = ["restore", "files", "latest", "--target"];
    let out = burrow(&cfg, &[&args[..], &[by_burrow.to_str().unwrap()]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_same_tree(&s.src, &by_burrow.join(rel));
    assert_eq!(
        fs::read_link(by_burrow.join(rel).join("link")).unwrap(),
        Path::new(OsStr::from_bytes(b"to-\xfc"))
    );

    let (repo, pw) = (s.tmp.path().join("repo"), s.tmp.path().join("pw"));
    let by_restic = s.tmp.path().join("by-restic");
    let target = by_restic.to_str().unwrap();
    let Some(out) = restic(&repo, &pw, &["restore", "latest", "--target", target]) else {
        return;
    };
    assert!(out.status.success(), "restic restore: {}", text(&out));
    let odd = by_restic
        .join(rel)
        .join(OsStr::from_bytes(b"dir-\xff"))
        .join(OsStr::from_bytes(b"\xfe\xfd"));
    assert_eq!(fs::read(&odd).unwrap(), b"odd", "{odd:?}");
    let out = restic(&repo, &pw, &["check", "--read-data"]).unwrap();
    assert!(out.status.success(), "restic check: {}", text(&out));
}

#[test]
fn wrong_host_key_is_refused_with_both_fingerprints() {
    let Some(s) = setup() else { return };
    fs::write(s.src.join("f"), "x").unwrap();
    let other = s.sshd.unauthorized_client_key("other");
    let other_pub = fs::read_to_string(other.with_extension("pub"))
        .unwrap_or_else(|_| fs::read_to_string(format!("{}.pub", other.display())).unwrap());
    let cfg = s.config("bad", None, other_pub.trim(), "", &s.files_job());
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let out = burrow(&cfg, &["run", "files"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&s.sshd.host_key_fingerprint),
        "seen fingerprint missing: {t}"
    );
    assert!(
        t.matches("SHA256:").count() >= 2,
        "expected fingerprint missing: {t}"
    );
    let snaps = json(&burrow(&cfg, &["snapshots", "--json"]));
    assert_eq!(snaps.as_array().unwrap().len(), 0, "nothing may be written");
}

#[test]
fn hooks_run_in_order_and_dumps_are_stored_with_their_size() {
    let Some(s) = setup() else { return };
    fs::write(s.src.join("f"), "x").unwrap();
    let a = s.tmp.path().join("A");
    let b = s.tmp.path().join("B");
    let job = format!(
        "  j:\n    server: vps\n    paths: [{src}]\n    before: [\"touch {a}\"]\n    after: [\"test -e {a} && touch {b}\"]\n    dumps:\n      - {{name: numbers.txt, command: \"seq 1 200000\"}}\n",
        src = s.src.display(),
        a = a.display(),
        b = b.display()
    );
    let cfg = s.config("h", None, &s.sshd.host_key_line, "", &job);
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let out = burrow(&cfg, &["run", "j", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        a.exists() && b.exists(),
        "before and after must both have run"
    );
    let seq = Command::new("seq")
        .args(["1", "200000"])
        .output()
        .unwrap()
        .stdout;

    let repo = s.tmp.path().join("repo");
    let pw = s.tmp.path().join("pw");
    let target = s.tmp.path().join("r");
    let Some(out) = restic(
        &repo,
        &pw,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    ) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fs::read(target.join("burrow-dumps/numbers.txt")).unwrap(),
        seq,
        "dump must come back intact"
    );
    let ls = restic(&repo, &pw, &["ls", "-l", "latest", "/burrow-dumps"]).unwrap();
    assert!(
        text(&ls).contains(&seq.len().to_string()),
        "dump node must carry its real size: {}",
        text(&ls)
    );

    // a failing before: nothing pulled, after still runs
    fs::remove_file(&b).unwrap();
    let cfg2 = s.config(
        "h2",
        None,
        &s.sshd.host_key_line,
        "",
        &job.replace(&format!("touch {}", a.display()), "exit 7"),
    );
    let out = burrow(&cfg2, &["run", "j", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        json(&out)["reason"].as_str().unwrap().contains("before"),
        "{}",
        text(&out)
    );
    assert!(b.exists(), "after must run once a before command started");

    // a failing dump: snapshot kept, partial, exit 3
    let cfg3 = s.config(
        "h3",
        None,
        &s.sshd.host_key_line,
        "",
        &job.replace("seq 1 200000", "seq 1 10; exit 1"),
    );
    let out = burrow(&cfg3, &["run", "j", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let sum = json(&out);
    assert_eq!(
        sum["errors"][0]["path"], "/burrow-dumps/numbers.txt",
        "{sum}"
    );
}

#[test]
fn dead_mans_switch_runs_after_when_burrow_is_killed() {
    let Some(s) = setup() else { return };
    fs::write(s.src.join("f"), "x").unwrap();
    let started = s.tmp.path().join("started");
    let b = s.tmp.path().join("B");
    let job = format!(
        "  j:\n    server: vps\n    paths: [{src}]\n    before: [\"touch {started}; sleep 60\"]\n    after: [\"touch {b}\"]\n    after_deadline: 3s\n",
        src = s.src.display(),
        started = started.display(),
        b = b.display()
    );
    let cfg = s.config("d", None, &s.sshd.host_key_line, "", &job);
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let mut child = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("--config")
        .arg(&cfg)
        .args(["run", "j"])
        .env("BURROW_SOCKET", cfg.with_extension("sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !started.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "before hook never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: burrow gets no chance to run `after`
    child.wait().unwrap();
    assert!(!b.exists(), "after must not have run yet");
    let t1 = Instant::now();
    while !b.exists() {
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "the server never ran the after commands"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn server_vanishing_mid_run_fails_cleanly_and_the_next_run_works() {
    let Some(s) = setup() else { return };
    let big: Vec<u8> = (0..40_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    fs::write(s.src.join("a-small"), "first").unwrap();
    let cfg = s.config("v", None, &s.sshd.host_key_line, "", &s.files_job());
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let first = json(&burrow(&cfg, &["run", "files", "--json"]));
    assert_eq!(first["status"], "ok");

    fs::write(s.src.join("big.bin"), &big).unwrap();
    let target: std::net::SocketAddr = format!("127.0.0.1:{}", s.sshd.port).parse().unwrap();
    let proxy = Proxy::start(
        target,
        ProxyOptions {
            delay: Duration::ZERO,
            cut_after: Some(8_000_000),
        },
    );
    let cut_cfg = s.config(
        "v-cut",
        Some(proxy.port),
        &s.sshd.host_key_line,
        "",
        &s.files_job(),
    );
    let out = burrow(&cut_cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let snaps = json(&burrow(&cfg, &["snapshots", "files", "--json"]));
    let ids: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [first["snapshot_id"].as_str().unwrap()],
        "only the earlier snapshot may exist"
    );

    let out = burrow(&cfg, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let repo = s.tmp.path().join("repo");
    let pw = s.tmp.path().join("pw");
    if let Some(out) = restic(&repo, &pw, &["check", "--read-data"]) {
        assert!(out.status.success(), "restic check: {}", text(&out));
    }
}

/// Starts `burrow run JOB` in the background, as systemd or a user's shell would.
fn spawn_run(cfg: &Path, job: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("--config")
        .arg(cfg)
        .args(["run", job, "--json"])
        .env("BURROW_SOCKET", cfg.with_extension("sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for_file(p: &Path, what: &str) {
    let t0 = Instant::now();
    while !p.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what} never happened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_mid_pull_stops_safely_and_after_still_runs() {
    let Some(s) = setup() else { return };
    fs::write(s.src.join("a"), "small").unwrap();
    // A sparse file far larger than what can be pulled before the signal arrives.
    let huge = fs::File::create(s.src.join("huge.img")).unwrap();
    huge.set_len(50 << 30).unwrap();
    let (a, b) = (s.tmp.path().join("A"), s.tmp.path().join("B"));
    let job = format!(
        "  j:\n    server: vps\n    paths: [{src}]\n    before: [\"touch {a}\"]\n    after: [\"touch {b}\"]\n",
        src = s.src.display(),
        a = a.display(),
        b = b.display()
    );
    let cfg = s.config("t", None, &s.sshd.host_key_line, "", &job);
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let child = spawn_run(&cfg, "j");
    wait_for_file(&a, "the before command");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!b.exists(), "the pull must still be running");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let sum = json(&out);
    assert!(
        sum["reason"].as_str().unwrap().contains("interrupted"),
        "{sum}"
    );
    assert!(b.exists(), "after must run after SIGTERM");
    let snaps = json(&burrow(&cfg, &["snapshots", "--json"]));
    assert_eq!(
        snaps.as_array().unwrap().len(),
        0,
        "an interrupted snapshot must not be kept"
    );
    let repo = s.tmp.path().join("repo");
    if let Some(out) = restic(&repo, &s.tmp.path().join("pw"), &["check"]) {
        assert!(out.status.success(), "restic check: {}", text(&out));
    }
}

#[test]
fn after_runs_when_the_pull_fails() {
    let Some(s) = setup() else { return };
    fs::write(s.src.join("f"), "x").unwrap();
    let (a, b) = (s.tmp.path().join("A"), s.tmp.path().join("B"));
    let job = format!(
        "  j:\n    server: vps\n    paths: [{src}]\n    before: [\"touch {a}\"]\n    after: [\"touch {b}\"]\n",
        src = s.src.display(),
        a = a.display(),
        b = b.display()
    );
    // The SFTP server refuses to start (as `sudo -n` without a sudoers rule does): the pull
    // fails while the SSH connection is fine.
    let refuse = "    sftp_command: \"sh -c 'echo sudo: a password is required >&2; exit 1'\"\n";
    let cfg = s.config("p", None, &s.sshd.host_key_line, refuse, &job);
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let out = burrow(&cfg, &["run", "j", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = json(&out)["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("a password is required"),
        "the server's stderr must be shown: {reason}"
    );
    assert!(
        a.exists() && b.exists(),
        "after must run when the pull failed"
    );
}

/// The repository opens while the server is reached. A repository that cannot be opened
/// ends the run with its own reason, nothing runs on the server and the connection (with its
/// SFTP session) is closed; an unreachable server does not hide the repository's reason.
#[test]
fn a_repository_that_does_not_open_runs_nothing_on_the_server() {
    let Some(s) = setup() else { return };
    fs::write(s.src.join("f"), "x").unwrap();
    let before = s.tmp.path().join("before-ran");
    let job = format!(
        "  j:\n    server: vps\n    paths: [{src}]\n    before: [\"touch {b}\"]\n",
        src = s.src.display(),
        b = before.display()
    );
    let cfg = s.config("o", None, &s.sshd.host_key_line, "", &job);
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    fs::write(s.tmp.path().join("pw"), "not the password\n").unwrap();
    let out = burrow(&cfg, &["run", "j", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = json(&out)["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("wrong password"), "{reason}");
    assert!(
        !before.exists(),
        "a before command ran for a run that had failed"
    );
    assert_nothing_left_on_the_server(&s.sshd, Duration::from_secs(10));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = s.config("o2", Some(port), &s.sshd.host_key_line, "", &job);
    let out = burrow(&cfg, &["run", "j", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = json(&out)["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("wrong password"), "{reason}");

    fs::write(s.tmp.path().join("pw"), "pw\n").unwrap();
    let out = burrow(&cfg, &["run", "j", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = json(&out)["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("cannot connect"), "{reason}");
}

/// The sftp-server processes of the test's own sshd, and what each has read so far.
fn sftp_servers(sshd: &Sshd) -> Vec<(u32, u64)> {
    sshd.processes_named("sftp-server")
        .into_iter()
        .map(|pid| {
            let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
            let rchar = io
                .lines()
                .find_map(|l| l.strip_prefix("rchar: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            (pid, rchar)
        })
        .collect()
}

/// True when a sftp-server of `sshd` has a file below `dir` open.
fn server_has_open_below(sshd: &Sshd, dir: &Path) -> bool {
    sshd.processes_named("sftp-server").into_iter().any(|pid| {
        fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|rd| {
            rd.flatten()
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(dir)))
        })
    })
}

fn wait_until_no_sftp_server(sshd: &Sshd) {
    let t0 = Instant::now();
    while !sshd.processes_named("sftp-server").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "an sftp-server stayed behind on the server: {:?}",
            sshd.processes_named("sftp-server")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A file truncated on the server while burrow reads it: the run is partial and names it,
/// and the snapshot holds no node whose size differs from its content (the file is left
/// out; stock restic restores every other file byte for byte).
#[test]
fn a_file_truncated_while_pulled_is_left_out_and_named() {
    let Some(s) = setup() else { return };
    fs::write(s.src.join("a-small"), "small").unwrap();
    let big = s.src.join("big.img");
    fs::File::create(&big).unwrap().set_len(300 << 20).unwrap();
    let cfg = s.config("tr", None, &s.sshd.host_key_line, "", &s.files_job());
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));

    let child = spawn_run(&cfg, "files");
    let t0 = Instant::now();
    loop {
        if sftp_servers(&s.sshd)
            .iter()
            .any(|&(_, read)| read > 20 << 20)
        {
            fs::OpenOptions::new()
                .write(true)
                .open(&big)
                .unwrap()
                .set_len(13_578_240)
                .unwrap();
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the pull never got going"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let sum = json(&out);
    assert_eq!(sum["status"], "partial", "{sum}");
    let errors = sum["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| {
            e["path"].as_str() == Some(big.to_str().unwrap())
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("changed while read: listed 314572800 bytes, read")
        }),
        "{sum}"
    );

    let repo = s.tmp.path().join("repo");
    let pw = s.tmp.path().join("pw");
    let restored = s.tmp.path().join("restic-restore");
    let Some(out) = restic(
        &repo,
        &pw,
        &["restore", "latest", "--target", restored.to_str().unwrap()],
    ) else {
        return;
    };
    assert!(out.status.success(), "restic restore: {}", text(&out));
    let inside = restored.join(s.src.strip_prefix("/").unwrap());
    assert!(
        !inside.join("big.img").exists(),
        "a file that changed while read must not be stored with its listed size"
    );
    assert_eq!(fs::read(inside.join("a-small")).unwrap(), b"small");
    let out = restic(&repo, &pw, &["check", "--read-data"]).unwrap();
    assert!(out.status.success(), "restic check: {}", text(&out));
}

/// Many small files, and after them a file that is swapped for a FIFO once the listing is
/// done: the sftp-server blocks in open(); after io_timeout the file is named, the pull goes
/// on over a fresh channel, every other file is stored, and no sftp-server stays behind.
fn fifo_swap_setup(s: &Setup, io_timeout: &str, jobs: &str) -> (PathBuf, PathBuf) {
    let many = s.src.join("a");
    fs::create_dir_all(&many).unwrap();
    for i in 0..4000 {
        fs::write(many.join(format!("f{i:05}")), format!("file {i}")).unwrap();
    }
    let victim = s.src.join("z-victim");
    fs::write(&victim, "a regular file when listed").unwrap();
    let cfg = s.config(
        "fifo",
        None,
        &s.sshd.host_key_line,
        &format!("    io_timeout: {io_timeout}\n"),
        jobs,
    );
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    (cfg, victim)
}

/// Waits until the pull reads files of `a/` (so the root was listed), then swaps the victim.
fn swap_for_fifo_mid_pull(s: &Setup, victim: &Path) {
    let t0 = Instant::now();
    while !server_has_open_below(&s.sshd, &s.src.join("a")) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the pull never got going"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    fs::remove_file(victim).unwrap();
    let st = Command::new("mkfifo").arg(victim).status().unwrap();
    assert!(st.success());
}

#[test]
fn a_fifo_swapped_in_mid_pull_is_named_and_the_run_goes_on() {
    let Some(s) = setup() else { return };
    let (cfg, victim) = fifo_swap_setup(&s, "2s", &s.files_job());
    let child = spawn_run(&cfg, "files");
    swap_for_fifo_mid_pull(&s, &victim);
    let swapped = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = swapped.elapsed();
    // Before, the run never ended: every later request timed out behind the blocked server.
    // The bound is generous for a loaded machine; the pull of the other 4000 files is in it.
    assert!(took < Duration::from_secs(3 * 2 + 150), "{took:?}");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let sum = json(&out);
    let errors = sum["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{sum}");
    assert_eq!(errors[0]["path"].as_str(), victim.to_str(), "{sum}");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{sum}"
    );
    wait_until_no_sftp_server(&s.sshd);

    let repo = s.tmp.path().join("repo");
    let pw = s.tmp.path().join("pw");
    if let Some(out) = restic(&repo, &pw, &["ls", "latest"]) {
        assert!(out.status.success(), "restic ls: {}", text(&out));
        let listed = String::from_utf8_lossy(&out.stdout);
        let files = listed.lines().filter(|l| l.contains("/a/f")).count();
        assert_eq!(files, 4000, "every other file is stored");
    }
}

#[test]
fn sigterm_during_a_stall_ends_the_run_promptly() {
    let Some(s) = setup() else { return };
    let (a, b) = (s.tmp.path().join("A"), s.tmp.path().join("B"));
    let job = format!(
        "  files:\n    server: vps\n    paths: [{src}]\n    before: [\"touch {a}\"]\n    after: [\"touch {b}\"]\n",
        src = s.src.display(),
        a = a.display(),
        b = b.display()
    );
    let (cfg, victim) = fifo_swap_setup(&s, "10m", &job);
    let child = spawn_run(&cfg, "files");
    swap_for_fifo_mid_pull(&s, &victim);
    // Wait until the sftp-server is blocked opening the FIFO.
    let t0 = Instant::now();
    while !s
        .sshd
        .processes_named("sftp-server")
        .into_iter()
        .any(|pid| {
            fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("partner"))
        })
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the pull never reached the FIFO"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!b.exists(), "the pull must still be running");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(b.exists(), "after must run after SIGTERM");
    wait_until_no_sftp_server(&s.sshd);
}

/// Waits until nothing that a session of the test's server started is left (the wrapper
/// shells of a run may take a moment to notice a closed channel), or fails naming what stays.
fn assert_nothing_left_on_the_server(sshd: &Sshd, bound: Duration) {
    let t0 = Instant::now();
    loop {
        let left = sshd.session_processes();
        if left.is_empty() {
            return;
        }
        assert!(t0.elapsed() < bound, "left running on the server: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_pid(p: &Path) -> u32 {
    fs::read_to_string(p).unwrap().trim().parse().unwrap()
}

#[test]
fn a_timed_out_before_command_is_killed_on_the_server_with_its_group() {
    let Some(s) = setup() else { return };
    fs::write(s.src.join("f"), "x").unwrap();
    let pidfile = s.tmp.path().join("before.pid");
    let after = s.tmp.path().join("after-ran");
    let job = format!(
        "  j:\n    server: vps\n    paths: [{src}]\n    before: [\"echo $$ > {pid}; sleep 300; : marker\"]\n    after: [\"touch {after}\"]\n    hook_timeout: 1s\n",
        src = s.src.display(),
        pid = pidfile.display(),
        after = after.display(),
    );
    let cfg = s.config("bt", None, &s.sshd.host_key_line, "", &job);
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let t0 = Instant::now();
    let out = burrow(&cfg, &["run", "j", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(t0.elapsed() < Duration::from_secs(60), "{}", text(&out));
    assert!(
        json(&out)["reason"].as_str().unwrap().contains("before"),
        "{}",
        text(&out)
    );
    assert!(
        after.exists(),
        "after must run once a before command started"
    );
    let pgid = read_pid(&pidfile);
    assert_eq!(
        group_members(pgid),
        Vec::<u32>::new(),
        "the before command's group (sh and its sleep 300) must be gone when burrow returns"
    );
    assert_nothing_left_on_the_server(&s.sshd, Duration::from_secs(10));
}

#[test]
fn a_normal_run_with_after_deadline_leaves_no_timer_on_the_server() {
    let Some(s) = setup() else { return };
    fs::write(s.src.join("f"), "x").unwrap();
    let (a, b) = (s.tmp.path().join("A"), s.tmp.path().join("B"));
    let job = format!(
        "  j:\n    server: vps\n    paths: [{src}]\n    before: [\"touch {a}\"]\n    after: [\"echo x >> {b}\"]\n    after_deadline: 1h\n",
        src = s.src.display(),
        a = a.display(),
        b = b.display()
    );
    let cfg = s.config("nt", None, &s.sshd.host_key_line, "", &job);
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    for _ in 0..2 {
        let out = burrow(&cfg, &["run", "j", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let t = text(&out);
        assert!(t.contains("dead-man's switch armed"), "{t}");
        assert!(t.contains("dead-man's switch disarmed"), "{t}");
        let run_id = json(&out)["run_id"].as_str().unwrap().to_owned();
        assert!(
            !Path::new(&format!("/tmp/burrow-deadman.{run_id}")).exists(),
            "the switch's directory must be removed"
        );
        // the timer (`sleep 3600` in its own session) must be gone right away
        assert_nothing_left_on_the_server(&s.sshd, Duration::from_secs(5));
    }
    assert_eq!(
        fs::read_to_string(&b).unwrap(),
        "x\nx\n",
        "after ran once per run"
    );
}

#[test]
fn a_dump_that_never_ends_is_killed_and_the_run_is_partial() {
    let Some(s) = setup() else { return };
    fs::write(s.src.join("f"), "kept").unwrap();
    let pidfile = s.tmp.path().join("dump.pid");
    let job = format!(
        "  j:\n    server: vps\n    paths: [{src}]\n    dump_timeout: 2s\n    dumps:\n      - {{name: hang.txt, command: \"echo $$ > {pid}; echo some; sleep 300\"}}\n      - {{name: ok.txt, command: \"echo fine\"}}\n",
        src = s.src.display(),
        pid = pidfile.display(),
    );
    let cfg = s.config("dt", None, &s.sshd.host_key_line, "", &job);
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let out = burrow(&cfg, &["run", "j", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let sum = json(&out);
    assert_eq!(sum["status"], "partial", "{sum}");
    assert_eq!(sum["errors"][0]["path"], "/burrow-dumps/hang.txt", "{sum}");
    assert!(
        sum["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("did not finish within 2s"),
        "{sum}"
    );
    let pgid = read_pid(&pidfile);
    assert_eq!(
        group_members(pgid),
        Vec::<u32>::new(),
        "the dump's group must be gone"
    );
    assert_nothing_left_on_the_server(&s.sshd, Duration::from_secs(10));

    let target = s.tmp.path().join("r");
    let out = burrow(
        &cfg,
        &[
            "restore",
            "j",
            "latest",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let src = target.join(s.src.strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(src.join("f")).unwrap(), "kept");
    assert_eq!(
        fs::read_to_string(target.join("burrow-dumps/ok.txt")).unwrap(),
        "fine\n"
    );
    assert!(!target.join("burrow-dumps/hang.txt").exists());
}

/// A small pseudo-random sequence (xorshift64*), seeded from the clock; the seed is in every
/// assertion message so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn count_lines(p: &Path) -> usize {
    fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

#[test]
fn kill_9_at_random_moments_runs_after_exactly_once_when_a_before_started() {
    let Some(s) = setup() else { return };
    for d in 0..10 {
        let dir = s.src.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..30 {
            fs::write(dir.join(format!("f{f}")), format!("{d}/{f}\n").repeat(50)).unwrap();
        }
    }
    let counts = s.tmp.path().join("counts");
    fs::create_dir_all(&counts).unwrap();
    let config = |name: &str| {
        let job = format!(
            "  j:\n    server: vps\n    paths: [{src}]\n    before: [\"echo x >> {c}/before.{name}; sleep 0.4\"]\n    after: [\"sleep 0.2; echo x >> {c}/after.{name}\"]\n    after_deadline: 4s\n    hook_timeout: 20s\n",
            src = s.src.display(),
            c = counts.display(),
        );
        s.config(&format!("k-{name}"), None, &s.sshd.host_key_line, "", &job)
    };
    let cfg = config("measure");
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let t0 = Instant::now();
    let out = burrow(&cfg, &["run", "j", "--json"]);
    let normal = t0.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(count_lines(&counts.join("after.measure")), 1);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let mut delays = Vec::new();
    for k in 0..20 {
        let name = k.to_string();
        let cfg = config(&name);
        let delay = Duration::from_millis(rng.below(normal.as_millis() as u64 + 1));
        delays.push(delay);
        let mut child = Command::new(env!("CARGO_BIN_EXE_burrow"))
            .arg("--config")
            .arg(&cfg)
            .args(["run", "j"])
            .env("BURROW_SOCKET", cfg.with_extension("sock"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // Past every deadline: the switches fire, the runners finish, nothing stays.
    assert_nothing_left_on_the_server(&s.sshd, Duration::from_secs(60));
    let mut started = 0;
    for (k, delay) in delays.iter().enumerate() {
        let before = count_lines(&counts.join(format!("before.{k}")));
        let after = count_lines(&counts.join(format!("after.{k}")));
        assert!(
            before <= 1,
            "attempt {k}: before ran {before} times (seed {seed})"
        );
        assert_eq!(
            after, before,
            "attempt {k} (killed after {delay:?} of a {normal:?} run, seed {seed}): \
             before ran {before} time(s), after {after} time(s)"
        );
        started += before;
    }
    eprintln!(
        "{started} of 20 killed runs had started a before command (normal run {normal:?}, seed {seed})"
    );
}
