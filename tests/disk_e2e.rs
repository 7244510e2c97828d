//! End-to-end tests of the backup-disk lifecycle through the real `burrow` binary: ext4 images
//! attached as loop devices through UDisks2 stand in for the backup disk and the key stick, and
//! every step is a `burrow` command (or the daemon) talking to the real udisksd and udevd.
//!
//! The backup disk here is a plain ext4 filesystem: this kernel has no device-mapper, so a real
//! LUKS unlock cannot run. The unlock path (key read from the stick, UDisks2 `Encrypted.Unlock`)
//! is tested in `crates/disk/tests/udisks.rs`, fully wherever `/dev/mapper/control` works.
//!
//! Needs root and the services `.ci/disk-services.sh` starts (system D-Bus, udevd, udisksd);
//! without them every test reports itself skipped through `burrow_testkit::missing` (a failure
//! under `CI=true`). The tests share fixed UUIDs, so they hold `loopdev::serial()`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use burrow_testkit::loopdev::{self, LoopDev, Serial};
use serde_json::Value;

/// Filesystem UUID of the backup disk (plain ext4, so also the configured `backup.uuid`).
const DISK_UUID: &str = "55b55e6d-db84-4236-8eea-5a22b6f41718";
/// Filesystem UUID of the key stick.
const KEY_UUID: &str = "7925cb60-f308-4d9d-ae09-a660ea4c1def";
const JOB: &str = "docs";
const EXIT_SKIPPED: i32 = 75;

const BURROW: &str = env!("CARGO_BIN_EXE_burrow");

/// Takes the loop-device lock and checks the services; `None` means "skip".
fn setup() -> Option<Serial> {
    let serial = loopdev::serial();
    if !loopdev::available() {
        return None;
    }
    loopdev::sweep();
    eprintln!(
        "note: the backup disk is plain ext4; a real LUKS unlock is not exercised here (no \
         device-mapper in this kernel). It is tested in crates/disk/tests/udisks.rs when \
         /dev/mapper/control works."
    );
    Some(serial)
}

/// A config, a small tree to back up, and the images of the backup disk and the key stick.
struct Fixture {
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    state_dir: PathBuf,
    disk_img: PathBuf,
    key_img: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.txt"), "first file\n").unwrap();
        std::fs::write(src.join("sub/b.bin"), vec![7u8; 40_000]).unwrap();
        let state_dir = dir.path().join("state");
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "repository:\n  path: burrow\n  password_file: burrow-password\n\
                 state_dir: {state}\n\
                 disk:\n  key: {{fs_uuid: \"{KEY_UUID}\", key_file: file}}\n  \
                 backup: {{uuid: \"{DISK_UUID}\"}}\n  spinup_timeout: 10s\n\
                 jobs:\n  {JOB}:\n    paths: [{src}]\n",
                state = state_dir.display(),
                src = src.display()
            ),
        )
        .unwrap();
        let disk_img = loopdev::ext4_image(dir.path(), "disk", DISK_UUID, &[]);
        let key_img = loopdev::ext4_image(
            dir.path(),
            "key",
            KEY_UUID,
            &[
                (
                    "burrow-password",
                    b"correct horse battery staple 0123456789",
                    0o600,
                ),
                (
                    "file",
                    b"luks key file contents (unused: the disk is plain)",
                    0o400,
                ),
            ],
        );
        Fixture {
            socket: dir.path().join("control.sock"),
            dir,
            config,
            state_dir,
            disk_img,
            key_img,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BURROW);
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("BURROW_SOCKET", &self.socket)
            .env_remove("BURROW_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUNTIME_DIRECTORY")
            .stdin(Stdio::null());
        c
    }

    /// Runs `burrow ARGS` to completion.
    fn burrow(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().unwrap();
        let run = Run {
            args: args.join(" "),
            out,
        };
        eprintln!("$ burrow {} -> {:?}\n{}", run.args, run.code(), run.text());
        run
    }

    fn attach_disk(&self) -> LoopDev {
        LoopDev::attach(&self.disk_img, DISK_UUID)
    }

    fn attach_key(&self) -> LoopDev {
        LoopDev::attach(&self.key_img, KEY_UUID)
    }

    /// `burrow init` with both images attached; returns the disk's mount point.
    fn init(&self, disk: &LoopDev) -> PathBuf {
        let r = self.burrow(&["init"]);
        r.expect(0);
        let mp = only_mount(disk);
        assert!(
            r.stdout()
                .contains(&mp.join("burrow").display().to_string()),
            "init did not report the repository on the volume {}: {}",
            mp.display(),
            r.text()
        );
        mp
    }

    fn snapshots(&self) -> Vec<Value> {
        let r = self.burrow(&["snapshots", JOB, "--json"]);
        r.expect(0);
        let v: Value = serde_json::from_str(&r.stdout()).unwrap();
        v.as_array().unwrap().clone()
    }

    fn state_entries(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack = vec![self.state_dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                out.insert(
                    p.strip_prefix(&self.state_dir)
                        .unwrap()
                        .display()
                        .to_string(),
                );
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }
}

struct Run {
    args: String,
    out: Output,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn text(&self) -> String {
        format!(
            "--- stdout\n{}--- stderr\n{}",
            self.stdout(),
            String::from_utf8_lossy(&self.out.stderr)
        )
    }
    fn expect(&self, code: i32) {
        assert_eq!(
            self.code(),
            Some(code),
            "burrow {} exited with {:?}, expected {code}\n{}",
            self.args,
            self.code(),
            self.text()
        );
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout())
            .unwrap_or_else(|e| panic!("burrow {}: not JSON ({e}):\n{}", self.args, self.text()))
    }
}

/// The one place the kernel has `dev` mounted.
fn only_mount(dev: &LoopDev) -> PathBuf {
    let mps = dev.mount_points();
    assert_eq!(
        mps.len(),
        1,
        "{} should be mounted exactly once: {mps:?}",
        dev.device().display()
    );
    mps[0].clone()
}

/// `path` is on the filesystem mounted at `mp` from `dev` (kernel's view: mountinfo + st_dev).
fn assert_on_volume(path: &Path, mp: &Path, dev: &LoopDev) {
    use std::os::unix::fs::MetadataExt;
    let top = loopdev::mounts()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mp)
        .unwrap_or_else(|| panic!("{} is not a mount point", mp.display()));
    assert_eq!(Path::new(&top.source), dev.device(), "{top:?}");
    assert!(
        path.starts_with(mp),
        "{} is not below {}",
        path.display(),
        mp.display()
    );
    let on = std::fs::metadata(path).unwrap().dev();
    assert_eq!(on, std::fs::metadata(mp).unwrap().dev());
    assert_ne!(on, std::fs::metadata("/").unwrap().dev());
}

fn files_below(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Scenarios 1-3: init and run with both images attached; the disk unplugged skips the run
/// without writing anywhere; plugged in again, the next run adds a snapshot.
#[test]
fn init_run_unplug_and_replug_through_the_binary() {
    let Some(_serial) = setup() else { return };
    let fx = Fixture::new();
    let disk = fx.attach_disk();
    let key = fx.attach_key();

    // 1. init puts the repository and the marker on the disk UDisks2 mounted.
    let mp = fx.init(&disk);
    assert_on_volume(&mp.join("burrow"), &mp, &disk);
    assert_on_volume(&mp.join("burrow/config"), &mp, &disk);
    assert_on_volume(&mp.join(".burrow-volume"), &mp, &disk);
    let key_mp = only_mount(&key);
    let opts = loopdev::mounts()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == key_mp)
        .unwrap()
        .options;
    assert!(
        opts.split(',').any(|o| o == "ro"),
        "key stick mounted {opts}"
    );

    let r = fx.burrow(&["run", JOB, "--json"]);
    r.expect(0);
    let s = r.json();
    assert_eq!(s["status"], "ok", "{s}");
    assert!(s["files_new"].as_u64().unwrap() >= 2, "{s}");
    let snaps = fx.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["id"], s["snapshot_id"]);
    assert_eq!(snaps[0]["job"], JOB);

    // 2. The disk is unplugged: skipped, and nothing written in its place.
    disk.detach();
    let before = fx.state_entries();
    let r = fx.burrow(&["run", JOB]);
    r.expect(EXIT_SKIPPED);
    let out = r.text();
    assert!(
        out.contains("backup disk absent") && out.contains(DISK_UUID),
        "the output should say the disk is absent:\n{out}"
    );
    assert!(!mp.join("burrow").exists(), "{} was created", mp.display());
    assert!(!mp.join(".burrow-spool").exists());
    assert!(!mp.exists() || files_below(&mp).is_empty());
    let after = fx.state_entries();
    let new: Vec<_> = after.difference(&before).collect();
    assert!(
        new.iter().all(|e| *e == "repository.lock"),
        "unexpected files in state_dir: {new:?}"
    );
    let r = fx.burrow(&["run", JOB, "--json"]);
    r.expect(EXIT_SKIPPED);
    assert_eq!(r.json()["status"], "skipped");
    fx.burrow(&["snapshots", JOB]).expect(EXIT_SKIPPED);
    assert!(!mp.join("burrow").exists());

    // 3. Plugged in again (possibly as another loop device): the run goes on the disk.
    let disk = fx.attach_disk();
    let r = fx.burrow(&["run", JOB, "--json"]);
    r.expect(0);
    assert_eq!(r.json()["status"], "ok");
    let mp2 = only_mount(&disk);
    assert_on_volume(&mp2.join("burrow"), &mp2, &disk);
    assert_eq!(fx.snapshots().len(), 2);
    drop(key);
    drop(disk);
}

/// Scenario 4: a disk with the configured UUID that is not this repository's disk is refused
/// (skipped, exit 75) and nothing is written to it.
#[test]
fn impostor_disk_with_the_configured_uuid_is_refused() {
    let Some(_serial) = setup() else { return };
    let fx = Fixture::new();
    let key = fx.attach_key();
    let disk = fx.attach_disk();
    fx.init(&disk);
    disk.detach();

    // No marker at all: a fresh disk that happens to carry the UUID.
    let blank = loopdev::ext4_image(fx.dir.path(), "blank", DISK_UUID, &[]);
    let other = LoopDev::attach(&blank, DISK_UUID);
    let r = fx.burrow(&["run", JOB]);
    r.expect(EXIT_SKIPPED);
    let out = r.text();
    assert!(
        out.contains("wrong disk") && out.contains("marker"),
        "should name the wrong disk and the marker:\n{out}"
    );
    let mp = only_mount(&other);
    assert_eq!(files_below(&mp), BTreeSet::from(["lost+found".to_owned()]));
    fx.burrow(&["snapshots", JOB]).expect(EXIT_SKIPPED);
    assert_eq!(files_below(&mp), BTreeSet::from(["lost+found".to_owned()]));
    other.detach();

    // The marker of another repository (and that repository's directory).
    let marker =
        br#"{"repository_id":"00000000000000000000000000000000000000000000000000000000deadbeef"}"#;
    let foreign = loopdev::ext4_image(
        fx.dir.path(),
        "foreign",
        DISK_UUID,
        &[(".burrow-volume", marker, 0o644)],
    );
    let other = LoopDev::attach(&foreign, DISK_UUID);
    let r = fx.burrow(&["run", JOB]);
    r.expect(EXIT_SKIPPED);
    let out = r.text();
    assert!(
        out.contains("wrong disk") && out.contains("deadbeef"),
        "should name the wrong disk and the repository it belongs to:\n{out}"
    );
    let mp = only_mount(&other);
    assert_eq!(
        files_below(&mp),
        BTreeSet::from(["lost+found".to_owned(), ".burrow-volume".to_owned()])
    );
    assert_eq!(std::fs::read(mp.join(".burrow-volume")).unwrap(), marker);
    drop(other);
    drop(key);
}

/// The daemon, killed on drop if the test did not stop it.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(fx: &Fixture) -> Daemon {
        let log = fx.dir.path().join("daemon.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = fx
            .command(&["daemon"])
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let d = Daemon { child, log };
        d.wait_log("burrow daemon started", Duration::from_secs(20));
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(what) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not log {what:?} within {}s:\n{}",
                timeout.as_secs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM by PID; returns the exit code.
    fn stop(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop within 30 s of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Scenario 5: with the daemon running, plugging in the key stick mounts the backup disk by
/// itself, and the run that was skipped for the missing stick runs then.
#[test]
fn daemon_mounts_the_disk_when_the_key_stick_is_plugged_in() {
    let Some(_serial) = setup() else { return };
    let fx = Fixture::new();
    let disk = fx.attach_disk();
    let key = fx.attach_key();
    fx.init(&disk);
    key.detach();
    disk.unmount();
    assert!(disk.mount_points().is_empty());

    let daemon = Daemon::start(&fx);
    // Asked while the key stick (holding the repository password) is out: skipped.
    let r = fx.burrow(&["run", JOB, "--json"]);
    r.expect(EXIT_SKIPPED);
    let s = r.json();
    assert_eq!(s["status"], "skipped", "{s}");
    assert!(
        s["reason"].as_str().unwrap().contains("key stick absent"),
        "{s}"
    );
    let r = fx.burrow(&["status", "--json"]);
    r.expect(0);
    let st = r.json();
    assert_eq!(st["jobs"][0]["name"], JOB, "{st}");
    assert_eq!(st["jobs"][0]["waiting_for_disk"], true, "{st}");
    assert_eq!(st["disk"]["key_present"], false, "{st}");
    // Looking for the stick mounted the (plain) disk; take it away again.
    disk.unmount();
    assert!(disk.mount_points().is_empty());

    // Plug the key stick in: no command, the daemon mounts the disk and runs the job.
    let key = fx.attach_key();
    daemon.wait_log("backup volume ready at", Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    while disk.mount_points().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the disk was not mounted:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mp = only_mount(&disk);
    assert!(
        daemon
            .log()
            .contains(&format!("backup volume ready at {}", mp.display()))
    );
    daemon.wait_log(
        &format!("{JOB} was skipped for the disk; running it now"),
        Duration::from_secs(5),
    );
    daemon.wait_log("run finished: ok", Duration::from_secs(60));

    let r = fx.burrow(&["status", "--json"]);
    r.expect(0);
    let st = r.json();
    let d = &st["disk"];
    assert_eq!(d["disk_present"], true, "{st}");
    assert_eq!(d["key_present"], true, "{st}");
    assert_eq!(d["unlocked"], true, "{st}");
    assert_eq!(d["mount_point"], mp.display().to_string(), "{st}");
    assert!(d["free_bytes"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(
        st["repository"]["path"],
        mp.join("burrow").display().to_string(),
        "{st}"
    );
    assert_eq!(st["jobs"][0]["waiting_for_disk"], false, "{st}");
    assert_eq!(st["jobs"][0]["last"]["status"], "ok", "{st}");

    let log = daemon.log.clone();
    let code = daemon.stop();
    eprintln!(
        "--- daemon log\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(code, Some(0), "the daemon did not exit cleanly");
    assert!(!fx.socket.exists(), "the control socket was left behind");
    assert_eq!(fx.snapshots().len(), 1);
    drop(key);
    drop(disk);
}

/// Kills the child when dropped, so a failed assertion leaves no burrow process behind.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn disk_removed_mid_run_fails_cleanly_and_the_next_run_works() {
    let Some(_serial) = setup() else { return };
    let fx = Fixture::new();
    // A disk large enough for the data, so only its removal can stop the run.
    let big_img = loopdev::ext4_image_sized(fx.dir.path(), "bigdisk", DISK_UUID, &[], 2 << 30);
    let disk = LoopDev::attach(&big_img, DISK_UUID);
    let _key = fx.attach_key();
    let mp = fx.init(&disk);
    fx.burrow(&["run", JOB, "--json"]).expect(0);

    // Enough incompressible data that the pull is still writing packs when the disk goes.
    let big = fx.dir.path().join("src/big.bin");
    let st = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=400", "status=none"])
        .arg(format!("of={}", big.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = KillOnDrop(Some(
        fx.command(&["run", JOB, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // Pull it out once the run has written its first packs.
    let data = mp.join("burrow/data");
    let packs = || {
        std::fs::read_dir(&data)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|d| std::fs::read_dir(d.path()).ok())
            .map(|r| r.count())
            .sum::<usize>()
    };
    let before = packs();
    let t0 = Instant::now();
    while packs() < before + 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run never wrote"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    disk.yank();
    let out = child.0.take().unwrap().wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "$ burrow run {JOB} (disk removed mid-run) -> {:?}\n{text}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(1), "the run must fail:\n{text}");
    assert!(
        text.contains("went away"),
        "the reason must name the disk:\n{text}"
    );
    // Nothing may have been written where the volume used to be.
    assert!(
        !mp.exists() || files_below(&mp).is_empty(),
        "written to the root filesystem after the disk left: {:?}",
        files_below(&mp)
    );

    // Plugged in again: the repository is intact and the next run works.
    std::fs::remove_file(&big).unwrap();
    let _disk = LoopDev::attach(&big_img, DISK_UUID);
    fx.burrow(&["run", JOB, "--json"]).expect(0);
    assert_eq!(
        fx.snapshots().len(),
        2,
        "the interrupted run left no snapshot"
    );
    fx.burrow(&["check-config"]).expect(0);
}
