//! One lock, shared with restic: burrow's runs take restic's lock files in the repository, so
//! stock restic and a second burrow (another `state_dir`, same repository) see them and are
//! seen; and the local flock in `state_dir` is never written through a planted link.

use crate::util::{burrow, json, restic, text};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burrow_repo::{LockInfo, Password, Repo};

/// A temp dir with a source tree, a password file and one repository.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            let src = tmp.path().join(format!("src-{name}"));
            fs::create_dir_all(src.join("d")).unwrap();
            fs::write(src.join("f"), format!("file of {name}\n")).unwrap();
            fs::write(src.join("d/big"), vec![name.as_bytes()[0]; 300_000]).unwrap();
        }
        fs::write(tmp.path().join("pw"), "pass\n").unwrap();
        Env { tmp }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn repo(&self) -> PathBuf {
        self.p("repo")
    }

    fn pw(&self) -> PathBuf {
        self.p("pw")
    }

    /// A config `name.yaml` with state dir `state-NAME` and one job `name` over `src-NAME`;
    /// `job_extra` is appended to the job (YAML at job indentation).
    fn config(&self, name: &str, job_extra: &str) -> PathBuf {
        let cfg = self.p(&format!("{name}.yaml"));
        fs::write(
            &cfg,
            format!(
                "repository: {{path: {repo}, password_file: {pw}}}\nstate_dir: {state}\njobs:\n  {name}:\n    paths: [{src}]\n{job_extra}",
                repo = self.repo().display(),
                pw = self.pw().display(),
                state = self.p(&format!("state-{name}")).display(),
                src = self.p(&format!("src-{name}")).display(),
            ),
        )
        .unwrap();
        cfg
    }

    /// Job YAML for a `before` command that holds the run (with its repository lock) until
    /// the test creates `go`; it creates `started` once it runs.
    fn barrier(&self, tag: &str) -> (String, PathBuf, PathBuf) {
        let started = self.p(&format!("{tag}.started"));
        let go = self.p(&format!("{tag}.go"));
        let yaml = format!(
            "    hook_timeout: 2m\n    before: [\"touch {s}; while [ ! -e {g} ]; do sleep 0.1; done\"]\n",
            s = started.display(),
            g = go.display()
        );
        (yaml, started, go)
    }

    fn open(&self) -> Repo {
        Repo::open(&self.repo(), &Password::new("pass")).unwrap()
    }

    fn lock_ids(&self) -> Vec<String> {
        match fs::read_dir(self.repo().join("locks")) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 64)
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn spawn_run(cfg: &Path, job: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("--config")
        .arg(cfg)
        .args(["run", job, "--json"])
        .env("BURROW_SOCKET", cfg.with_extension("sock"))
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lets a held run go on and returns its output.
fn release(child: Child, go: &Path) -> std::process::Output {
    fs::write(go, "").unwrap();
    child.wait_with_output().unwrap()
}

/// This machine's host name as restic and burrow write it into a lock.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

fn username() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn restic_lists_and_decodes_the_lock_of_a_running_backup_and_its_prune_refuses() {
    let e = Env::new();
    if restic(&e.repo(), &e.pw(), &["version"]).is_none() {
        return;
    }
    let (hold, started, go) = e.barrier("a");
    let cfg = e.config("a", &hold);
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));

    let child = spawn_run(&cfg, "a");
    wait_for("the run's before command", || started.exists());

    let out = restic(&e.repo(), &e.pw(), &["--no-lock", "list", "locks"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        listed.len(),
        1,
        "one lock while the run holds it: {listed:?}"
    );
    assert_eq!(listed, e.lock_ids());

    let out = restic(
        &e.repo(),
        &e.pw(),
        &["--no-lock", "cat", "lock", &listed[0]],
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let lock: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|err| panic!("{err}: {}", text(&out)));
    assert_eq!(lock["exclusive"], false, "{lock}");
    assert_eq!(lock["hostname"], hostname().as_str(), "{lock}");
    assert_eq!(lock["pid"], child.id(), "{lock}");
    assert!(lock["time"].is_string(), "{lock}");
    assert_eq!(lock["username"], username().as_str(), "{lock}");

    // stock restic's prune refuses beside the running backup
    let out = restic(&e.repo(), &e.pw(), &["prune"]).unwrap();
    assert!(
        !out.status.success(),
        "prune ran beside a backup: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{}",
        text(&out)
    );

    let out = release(child, &go);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json(&out)["status"], "ok");
    assert!(e.lock_ids().is_empty(), "the lock goes with the run");
    let out = restic(&e.repo(), &e.pw(), &["check", "--read-data"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no errors were found"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_foreign_exclusive_lock_refuses_the_backup_and_names_its_holder() {
    let e = Env::new();
    let cfg = e.config("a", "");
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let held = e
        .open()
        .locks()
        .unwrap()
        .write(&LockInfo {
            hostname: "otherhost".into(),
            username: "alice".into(),
            pid: 4242,
            uid: 1000,
            gid: 1000,
            program: None,
            ..LockInfo::this_process(true)
        })
        .unwrap();

    let out = burrow(&cfg, &["run", "a", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("locked by restic on otherhost (pid 4242, user alice)")
            && t.contains("(exclusive)")
            && t.contains("unlock"),
        "{t}"
    );
    assert_eq!(json(&out)["status"], "failed");
    assert_eq!(e.lock_ids(), vec![held], "burrow left no lock of its own");
    let out = burrow(&cfg, &["snapshots", "a", "--json"]);
    assert_eq!(
        json(&out).as_array().unwrap().len(),
        0,
        "nothing was stored"
    );

    // gone, the backup runs
    e.open().locks().unwrap().remove(&e.lock_ids()[0]).unwrap();
    let out = burrow(&cfg, &["run", "a", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn two_configs_on_one_repository_prune_never_runs_beside_a_backup() {
    let e = Env::new();
    let (hold, started, go) = e.barrier("a");
    let a = e.config("a", &hold);
    let b = e.config("b", "    retention: {keep_last: 1}\n");
    assert_eq!(burrow(&a, &["init"]).status.code(), Some(0));
    let out = burrow(&b, &["run", "b", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A's run holds its shared lock (in its before command); B's run stores its snapshot but
    // its retention (forget + prune) needs the exclusive lock and is refused.
    let child = spawn_run(&a, "a");
    wait_for("A's before command", || started.exists());
    fs::write(e.p("src-b/new"), "changed").unwrap();
    let out = burrow(&b, &["run", "b", "--json"]);
    let t = text(&out);
    let summary = json(&out);
    assert!(summary["snapshot_id"].is_string(), "{t}");
    assert_ne!(summary["status"], "failed", "{t}");
    assert!(t.contains("retention"), "{t}");
    assert!(
        t.contains(&format!(
            "locked by burrow on {} (pid {}",
            hostname(),
            child.id()
        )),
        "{t}"
    );
    let snaps = json(&burrow(&b, &["snapshots", "b", "--json"]));
    assert_eq!(
        snaps.as_array().unwrap().len(),
        2,
        "nothing forgotten: {snaps}"
    );

    let out = release(child, &go);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(e.lock_ids().is_empty());

    // with A done, B's retention runs again
    let out = burrow(&b, &["run", "b", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let snaps = json(&burrow(&b, &["snapshots", "b", "--json"]));
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    assert_eq!(
        json(&burrow(&a, &["snapshots", "a", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    if let Some(out) = restic(&e.repo(), &e.pw(), &["check", "--read-data"]) {
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("no errors were found"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn burrow_honours_the_lock_of_a_running_restic_backup() {
    let e = Env::new();
    if restic(&e.repo(), &e.pw(), &["version"]).is_none() {
        return;
    }
    let cfg = e.config("a", "");
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    // `restic backup --stdin` holds its (shared, zstd-compressed) lock while stdin is open
    let mut restic_run = Command::new("restic")
        .arg("-r")
        .arg(e.repo())
        .arg("--password-file")
        .arg(e.pw())
        .args(["--no-cache", "backup", "--stdin", "--stdin-filename", "x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("restic's lock", || {
        let locks = e.open().locks().unwrap();
        e.lock_ids()
            .iter()
            .any(|id| matches!(locks.read(id), Ok(Some(_))))
    });

    let err = e.open().lock_exclusive().unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "locked by restic on {} (pid {}",
            hostname(),
            restic_run.id()
        )) && err.contains("(shared)"),
        "{err}"
    );
    // a shared lock (a backup) goes along with it
    drop(e.open().lock_shared().unwrap());

    drop(restic_run.stdin.take());
    let _ = restic_run.wait_with_output().unwrap();
}

#[test]
fn a_symlink_or_hard_link_at_the_lock_file_is_refused_and_its_target_untouched() {
    let e = Env::new();
    let cfg = e.config("a", "");
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let victim = e.p("victim");
    fs::write(&victim, "precious\n").unwrap();
    let lock = e.p("state-a/repository.lock");
    let _ = fs::remove_file(&lock);
    std::os::unix::fs::symlink(&victim, &lock).unwrap();

    let out = burrow(&cfg, &["run", "a", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is a symbolic link"), "{}", text(&out));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");

    fs::remove_file(&lock).unwrap();
    fs::hard_link(&victim, &lock).unwrap();
    let out = burrow(&cfg, &["run", "a", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("hard links"), "{}", text(&out));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");

    fs::remove_file(&lock).unwrap();
    let out = burrow(&cfg, &["run", "a", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pid = fs::read_to_string(&lock).unwrap();
    assert!(pid.trim().parse::<u32>().is_ok(), "{pid:?}");
}

#[test]
fn a_busy_state_dir_names_the_pid_of_the_other_burrow() {
    let e = Env::new();
    let (hold, started, go) = e.barrier("a");
    let cfg = e.config("a", &hold);
    assert_eq!(burrow(&cfg, &["init"]).status.code(), Some(0));
    let child = spawn_run(&cfg, "a");
    wait_for("the run's before command", || started.exists());
    let out = burrow(&cfg, &["run", "a", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "another burrow process (pid {}) is writing",
            child.id()
        )),
        "{}",
        text(&out)
    );
    let out = release(child, &go);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
