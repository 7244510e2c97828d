//! `burrow daemon` as systemd runs it: notify socket, watchdog, control socket, healthchecks
//! pings with run ids and the log tail, status, and a clean stop on SIGTERM.

// A test reads as one scenario from top to bottom: longer than library functions may be.
#![allow(clippy::too_many_lines)]

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_testkit::http::PingServer;
use burrow_testkit::sshd::Sshd;

struct Daemon {
    child: Child,
    /// Every notification received so far; a thread drains the socket the way systemd does
    /// (an unread datagram socket fills up after a few messages and blocks the sender).
    seen: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(cfg: &Path, sock: &Path, notify_path: &Path) -> Daemon {
        Daemon::start_with(cfg, sock, notify_path, &[])
    }

    fn start_with(cfg: &Path, sock: &Path, notify_path: &Path, extra: &[&str]) -> Daemon {
        let notify = UnixDatagram::bind(notify_path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = notify.recv(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        let child = Command::new(env!("CARGO_BIN_EXE_burrow"))
            .arg("--config")
            .arg(cfg)
            .arg("daemon")
            .args(extra)
            .env("BURROW_SOCKET", sock)
            .env("NOTIFY_SOCKET", notify_path)
            .env("WATCHDOG_USEC", "1000000")
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Daemon { child, seen }
    }

    /// Waits until a notification starting with `prefix` arrives; returns it.
    fn expect(&mut self, prefix: &str, within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let seen = self.seen.lock().unwrap().clone();
            if let Some(m) = seen
                .iter()
                .find(|m| m.lines().any(|l| l.starts_with(prefix)))
            {
                return m.clone();
            }
            assert!(
                t0.elapsed() < within,
                "no {prefix:?} from the daemon; got {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sigterm(&mut self) -> i32 {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "daemon did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(cfg: &Path, sock: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("BURROW_SOCKET", sock)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn wait_for_socket(sock: &Path) {
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "control socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn daemon_runs_jobs_pings_and_stops_cleanly() {
    let Some(sshd) = Sshd::start() else { return };
    let pings = PingServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("hello"), "world").unwrap();
    fs::write(tmp.path().join("pw"), "pw\n").unwrap();
    let uuid = "5d7c1f3a-0000-4000-8000-123456789abc";
    let cfg = tmp.path().join("config.yaml");
    fs::write(
        &cfg,
        format!(
            "repository: {{path: {repo}, password_file: {pw}}}
state_dir: {state}
servers:
  vps: {{host: 127.0.0.1, port: {port}, user: {user}, identity_file: {key}, host_key: \"{hk}\"}}
  gone: {{host: 127.0.0.1, port: 1, user: x, identity_file: {key}, host_key: \"{hk}\", connect_timeout: 3s}}
jobs:
  web:
    server: vps
    schedule: \"0 3 * * *\"
    paths: [{src}]
    healthcheck: {base}/ping/{uuid}
  unreachable:
    server: gone
    paths: [/srv]
    healthcheck: {base}/ping/{uuid}-x
",
            repo = tmp.path().join("repo").display(),
            pw = tmp.path().join("pw").display(),
            state = tmp.path().join("state").display(),
            port = sshd.port,
            user = sshd.user,
            key = sshd.client_key.display(),
            hk = sshd.host_key_line,
            src = src.display(),
            base = pings.url(),
        ),
    )
    .unwrap();
    let sock = tmp.path().join("control.sock");
    assert_eq!(cli(&cfg, &sock, &["init"]).status.code(), Some(0));

    let mut d = Daemon::start(&cfg, &sock, &tmp.path().join("notify.sock"));
    d.expect("READY=1", Duration::from_secs(20));
    d.expect("WATCHDOG=1", Duration::from_secs(10));
    let status = d.expect("STATUS=idle", Duration::from_secs(10));
    assert!(status.contains("next: web at"), "{status}");
    wait_for_socket(&sock);

    // `burrow run` hands the job to the daemon and prints the daemon's summary
    let out = cli(&cfg, &sock, &["run", "web", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "ok");
    let rid = summary["run_id"].as_str().unwrap().to_owned();

    let reqs = pings.wait_for(2, Duration::from_secs(20));
    let web: Vec<_> = reqs.iter().filter(|r| r.path.contains(uuid)).collect();
    assert_eq!(web[0].path, format!("/ping/{uuid}/start"), "{reqs:?}");
    assert_eq!(web[0].query_param("rid"), Some(rid.as_str()));
    assert_eq!(
        web[1].path,
        format!("/ping/{uuid}"),
        "success is the plain URL"
    );
    assert_eq!(web[1].query_param("rid"), Some(rid.as_str()));
    let body = web[1].body_str();
    assert!(
        body.contains("snapshot") && body.contains(&rid),
        "log tail expected as body: {body}"
    );

    let out = cli(&cfg, &sock, &["snapshots", "web", "--json"]);
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{}", text(&out));

    // a job whose server cannot be reached: a failure ping with the reason
    let out = cli(&cfg, &sock, &["run", "unreachable", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reqs = pings.wait_for(4, Duration::from_secs(30));
    let fail = reqs
        .iter()
        .find(|r| r.path.ends_with(&format!("{uuid}-x/1")))
        .unwrap_or_else(|| panic!("{reqs:?}"));
    assert!(
        fail.body_str().contains("cannot connect"),
        "{}",
        fail.body_str()
    );

    let out = cli(&cfg, &sock, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = st["jobs"].as_array().unwrap();
    let web = jobs.iter().find(|j| j["name"] == "web").unwrap();
    assert_eq!(web["last"]["status"], "ok", "{st}");
    assert_eq!(web["last"]["run_id"], rid.as_str());
    assert!(
        web["next_run"].as_str().unwrap().contains("03:00:00") || web["next_run"].is_string(),
        "{st}"
    );
    let un = jobs.iter().find(|j| j["name"] == "unreachable").unwrap();
    assert_eq!(un["last"]["status"], "failed");
    assert!(un["next_run"].is_null(), "no schedule, no next run: {st}");
    assert!(st["repository"]["size_bytes"].as_u64().unwrap() > 0);

    // history survives in state_dir
    let hist = fs::read_to_string(tmp.path().join("state/history.json")).unwrap();
    assert!(hist.contains(&rid));

    assert_eq!(d.sigterm(), 0);
    d.expect("STOPPING=1", Duration::from_secs(5));
    assert!(!sock.exists(), "the control socket is removed on exit");
    // Without the daemon, status reads the same view from state_dir and says so.
    let out = cli(&cfg, &sock, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("burrow daemon is not running"), "{t}");
    assert!(t.contains("job web: last ok at"), "{t}");
    let out = cli(&cfg, &sock, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["daemon"]["running"], false, "{st}");
    let web = (st["jobs"].as_array().unwrap().iter())
        .find(|j| j["name"] == "web")
        .unwrap();
    assert_eq!(web["last"]["run_id"], rid.as_str(), "{st}");
    assert_eq!(web["running"], false, "{st}");
}

#[test]
fn second_daemon_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("pw"), "pw\n").unwrap();
    let cfg = tmp.path().join("c.yaml");
    fs::write(
        &cfg,
        format!(
            "repository: {{path: {}, password_file: {}}}\nstate_dir: {}\njobs:\n  a: {{paths: [/etc/hostname]}}\n",
            tmp.path().join("repo").display(),
            tmp.path().join("pw").display(),
            tmp.path().join("state").display()
        ),
    )
    .unwrap();
    let sock = tmp.path().join("s.sock");
    let mut d = Daemon::start(&cfg, &sock, &tmp.path().join("n.sock"));
    d.expect("READY=1", Duration::from_secs(20));
    let out = cli(&cfg, &sock, &["daemon"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("already running"), "{}", text(&out));
    assert_eq!(d.sigterm(), 0);
}

#[test]
fn second_daemon_on_the_same_state_dir_is_refused_even_with_another_socket() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("pw"), "pw\n").unwrap();
    let cfg = tmp.path().join("c.yaml");
    fs::write(
        &cfg,
        format!(
            "repository: {{path: {}, password_file: {}}}\nstate_dir: {}\njobs:\n  a: {{paths: [/etc/hostname]}}\n",
            tmp.path().join("repo").display(),
            tmp.path().join("pw").display(),
            tmp.path().join("state").display()
        ),
    )
    .unwrap();
    let mut d = Daemon::start(
        &cfg,
        &tmp.path().join("one.sock"),
        &tmp.path().join("n.sock"),
    );
    d.expect("READY=1", Duration::from_secs(20));
    let other = tmp.path().join("two.sock");
    let out = cli(&cfg, &other, &["daemon"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "another burrow daemon (pid {}) is already running with state_dir",
            d.child.id()
        )),
        "{t}"
    );
    assert!(!other.exists(), "the second daemon bound no socket");
    assert_eq!(d.sigterm(), 0);
    // once the first has stopped, a daemon starts again on that state_dir
    let mut again = Daemon::start(&cfg, &other, &tmp.path().join("n2.sock"));
    again.expect("READY=1", Duration::from_secs(20));
    assert_eq!(again.sigterm(), 0);
}

/// `burrow daemon --sim`: a config with `disk`, no hardware. The simulated volume is
/// `state_dir/sim/volume`; a run there goes through the same place checks (the volume's
/// marker names the repository) and stores a snapshot that stock restic could read.
#[test]
fn daemon_sim_runs_a_job_on_the_simulated_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let (pw, state) = (tmp.path().join("pw"), tmp.path().join("state"));
    fs::write(&pw, "pw\n").unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "content\n").unwrap();
    let volume = state.join("sim/volume");
    fs::create_dir_all(&volume).unwrap();

    // The repository and the volume's marker, as `burrow init` leaves them on a real disk.
    let plain = tmp.path().join("plain.yaml");
    fs::write(
        &plain,
        format!(
            "repository: {{path: {}, password_file: {}}}\nstate_dir: {}\njobs:\n  files: {{paths: [{}]}}\n",
            volume.join("burrow").display(),
            pw.display(),
            tmp.path().join("state-init").display(),
            src.display()
        ),
    )
    .unwrap();
    let sock = tmp.path().join("s.sock");
    let out = cli(&plain, &sock, &["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let id = text(&out)
        .split_whitespace()
        .nth(2)
        .expect("created repository <id> at ...")
        .to_owned();
    fs::write(
        volume.join(".burrow-volume"),
        format!("{{\"repository_id\":\"{id}\"}}\n"),
    )
    .unwrap();

    let cfg = tmp.path().join("c.yaml");
    fs::write(
        &cfg,
        format!(
            "repository: {{path: burrow, password_file: {}}}\nstate_dir: {}\ndisk:\n  backup: {{uuid: 0b5e1f3c-sim}}\njobs:\n  files: {{paths: [{}]}}\n",
            pw.display(),
            state.display(),
            src.display()
        ),
    )
    .unwrap();
    let mut d = Daemon::start_with(&cfg, &sock, &tmp.path().join("n.sock"), &["--sim"]);
    d.expect("READY=1", Duration::from_secs(20));
    wait_for_socket(&sock);
    let out = cli(&cfg, &sock, &["run", "files", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "ok", "{summary}");
    assert_eq!(summary["files_new"], 1, "{summary}");
    let status: serde_json::Value =
        serde_json::from_slice(&cli(&cfg, &sock, &["status", "--json"]).stdout).unwrap();
    assert_eq!(status["daemon"]["sim"], true, "{status}");
    assert_eq!(
        status["disk"]["mount_point"],
        volume.display().to_string(),
        "{status}"
    );
    let snaps = fs::read_dir(volume.join("burrow/snapshots"))
        .unwrap()
        .count();
    assert_eq!(snaps, 1, "the snapshot is on the simulated volume");
    assert_eq!(d.sigterm(), 0);
}

/// Forwards every connection to `127.0.0.1:port` to `to`, from now on.
fn forward(listener: std::net::TcpListener, to: u16) {
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c, mut s) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// The runs of `job` in the daemon's history, oldest first: (status, error class).
fn history_of(state: &Path, job: &str) -> Vec<(String, Option<String>)> {
    let Ok(text) = fs::read_to_string(state.join("history.json")) else {
        return Vec::new();
    };
    let h: serde_json::Value = serde_json::from_str(&text).unwrap();
    h["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["job"] == job)
        .map(|r| {
            (
                r["status"].as_str().unwrap().to_owned(),
                r["error_class"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// A run that fails for a cause that may pass (nothing answers on the server's port) is tried
/// again after `retry_wait`, and the try succeeds once the server answers; a refused host key
/// is never tried again.
#[test]
fn a_temporary_failure_is_tried_again_and_a_permanent_one_is_not() {
    let Some(sshd) = Sshd::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("hello"), "world").unwrap();
    fs::write(tmp.path().join("pw"), "pw\n").unwrap();
    // a port nothing listens on until the test forwards it to sshd
    let later = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let later_port = later.local_addr().unwrap().port();
    drop(later);
    let state = tmp.path().join("state");
    let cfg = tmp.path().join("config.yaml");
    let wrong = format!("SHA256:{}", "A".repeat(43));
    fs::write(
        &cfg,
        format!(
            "repository: {{path: {repo}, password_file: {pw}}}
state_dir: {state}
servers:
  later: {{host: 127.0.0.1, port: {later_port}, user: {user}, identity_file: {key}, host_key: \"{hk}\", connect_timeout: 3s}}
  stranger: {{host: 127.0.0.1, port: {port}, user: {user}, identity_file: {key}, host_key: \"{wrong}\"}}
jobs:
  flaky: {{server: later, paths: [{src}], retries: 2, retry_wait: 2s}}
  refused: {{server: stranger, paths: [{src}], retries: 2, retry_wait: 1s}}
",
            repo = tmp.path().join("repo").display(),
            pw = tmp.path().join("pw").display(),
            state = state.display(),
            port = sshd.port,
            user = sshd.user,
            key = sshd.client_key.display(),
            hk = sshd.host_key_line,
            src = src.display(),
        ),
    )
    .unwrap();
    let sock = tmp.path().join("control.sock");
    assert_eq!(cli(&cfg, &sock, &["init"]).status.code(), Some(0));
    let mut d = Daemon::start(&cfg, &sock, &tmp.path().join("notify.sock"));
    d.expect("READY=1", Duration::from_secs(20));
    wait_for_socket(&sock);

    let out = cli(&cfg, &sock, &["run", "flaky", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["error_class"], "temporary", "{summary}");
    let st: serde_json::Value =
        serde_json::from_slice(&cli(&cfg, &sock, &["status", "--json"]).stdout).unwrap();
    let flaky = st["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "flaky")
        .unwrap();
    assert!(flaky["retry_at"].is_string(), "{st}");
    // the server comes back before the try
    forward(
        std::net::TcpListener::bind(("127.0.0.1", later_port)).unwrap(),
        sshd.port,
    );

    let out = cli(&cfg, &sock, &["run", "refused", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["error_class"], "permanent", "{summary}");

    let t0 = Instant::now();
    while history_of(&state, "flaky").len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no try again: {:?}",
            history_of(&state, "flaky")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // time for tries that must not come: the refused job's (1 s) and a third of flaky's
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        history_of(&state, "flaky"),
        [
            ("failed".to_owned(), Some("temporary".to_owned())),
            ("ok".to_owned(), None)
        ]
    );
    assert_eq!(
        history_of(&state, "refused"),
        [("failed".to_owned(), Some("permanent".to_owned()))]
    );
    let out = cli(&cfg, &sock, &["snapshots", "flaky", "--json"]);
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{}", text(&out));
    assert_eq!(d.sigterm(), 0);
}
