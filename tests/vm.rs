//! The VM tier: the Debian package installed on a real Debian 12 with systemd as PID 1, booted
//! under QEMU, with the backup disk and the key stick as USB sticks that the test plugs and
//! pulls through QMP. What the other tiers cannot show runs here: a real LUKS unlock through
//! UDisks2, udev hot-plug events, the systemd unit with its sandbox, READY/STATUS/watchdog,
//! catch-up after the machine was off, a large restore in 1 GiB of memory, and purging the
//! package.
//!
//! Inside the guest, the server burrow pulls from is the guest's own sshd on 127.0.0.1 (host
//! key pinned in the config). The test reaches the guest through the host's `ssh` client over
//! QEMU's port forward on 127.0.0.1, and reads the guest's serial console from a file that is
//! printed when a scenario fails.
//!
//! Run by `.ci/run`:
//!
//! ```sh
//! BURROW_DEB=$(bash packaging/build-deb.sh | tail -n 1) \
//!     cargo test --workspace --locked --test integration vm:: -- --ignored --nocapture
//! ```
//!
//! Needs root, `qemu-system-x86_64`, `debootstrap`, `mkfs.ext4` and `ssh`/`ssh-keygen`, and the
//! Debian mirror the first time (the guest's base system is cached under the target dir by
//! `tests/vm/rootfs.sh`). Without them the test reports itself skipped through
//! `burrow_testkit::missing` (a failure under `CI=true`).

// A test reads as one scenario from top to bottom: longer than library functions may be.
#![allow(clippy::too_many_lines)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Guest memory: a Raspberry Pi 3 or a small Pi 4.
const GUEST_MEMORY_MB: u32 = 1024;
/// The guest clock of the first boot, and of the second: the job `docs` runs daily at 03:00,
/// so its slot passes while the guest is off and is caught up after the second boot.
const FIRST_BOOT_CLOCK: &str = "2027-01-10T02:00:00";
const SECOND_BOOT_CLOCK: &str = "2027-01-10T03:30:00";
/// USB serial numbers of the two sticks; the guest finds them as /dev/disk/by-id/usb-*SERIAL*.
const DISK_SERIAL: &str = "BURROWDISK";
const KEY_SERIAL: &str = "BURROWKEY";
/// The disk's LUKS passphrase (step 2 of docs/install.md), kept in the guest as /root/passphrase.
const PASSPHRASE: &str = "a long passphrase for the disk of the VM test";
/// Files in /srv/many (made by tests/vm/rootfs.sh).
const MANY_FILES: usize = 100_000;

/// Shell functions every guest script starts with.
const PRELUDE: &str = r#"set -euo pipefail
# dev SERIAL: the whole-disk device of the USB stick with that serial, or nothing.
dev() {
    local l
    l=$(ls /dev/disk/by-id/usb-*"$1"* 2>/dev/null | grep -v -- '-part' | head -n 1) || true
    if [ -n "$l" ]; then readlink -f "$l"; fi
}
# mountpoint_of SERIAL: where the volume inside the stick (LUKS or not) is mounted, or nothing.
mountpoint_of() {
    local d
    d=$(dev "$1")
    if [ -n "$d" ]; then lsblk -rno MOUNTPOINT "$d" | grep . | head -n 1 || true; fi
}
# unlocked SERIAL: the stick's LUKS container is open.
unlocked() {
    local d
    d=$(dev "$1")
    [ -n "$d" ] && lsblk -rno TYPE "$d" | grep -qx crypt
}
# Any device-mapper mapping at all (a removed disk must not leave one behind).
any_mapping() { ls /dev/mapper | grep -qvx control; }
"#;

// ---- QMP ----------------------------------------------------------------------------------

/// A QMP connection: one command at a time, events in between are skipped.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path, qemu: &mut Child) -> Qmp {
        let stream = wait_for(&format!("QMP socket {}", path.display()), 30, || {
            if let Ok(Some(status)) = qemu.try_wait() {
                panic!("qemu exited at start ({status}); see its stderr above");
            }
            UnixStream::connect(path).ok()
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = qmp.read();
        assert!(
            greeting.get("QMP").is_some(),
            "not a QMP greeting: {greeting}"
        );
        qmp.execute("qmp_capabilities", json!({}))
            .expect("qmp_capabilities");
        qmp
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("reading QMP");
        assert!(n > 0, "QMP connection closed by qemu");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Runs one command; `Err` carries QMP's error description.
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let msg = json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{msg}").expect("writing QMP");
        loop {
            let reply = self.read();
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(format!("{command}: {e}"));
            }
        }
    }
}

// ---- the VM -------------------------------------------------------------------------------

/// Files the VMs of one test run share: root filesystem, kernel, the two USB images, the SSH
/// key the test logs in with.
struct Images {
    dir: PathBuf,
    root: PathBuf,
    ssh_key: PathBuf,
    disk: PathBuf,
    key: PathBuf,
    /// ext4 image with a repository holding one snapshot of [`MANY_FILES`] files, made on the
    /// host (the guest's emulated CPU would take most of the tier's time to back them up).
    many: PathBuf,
}

impl Images {
    fn build(deb: &Path) -> Images {
        let vm_dir = target_dir().join("vm");
        let dir = vm_dir.join("run");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let ssh_key = dir.join("id_ed25519");
        let out = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "burrow-vm-test",
                "-f",
            ])
            .arg(&ssh_key)
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success(), "ssh-keygen: {out:?}");

        let start = Instant::now();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/rootfs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&vm_dir)
            .arg(deb)
            .arg(ssh_key.with_extension("pub"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running tests/vm/rootfs.sh");
        assert!(
            out.status.success(),
            "tests/vm/rootfs.sh failed ({}); its output is above",
            out.status
        );
        log(&format!(
            "root filesystem ready in {:.0} s",
            start.elapsed().as_secs_f64()
        ));

        let disk = dir.join("disk.img");
        let key = dir.join("key.img");
        for (img, size) in [(&disk, 512u64 << 20), (&key, 16 << 20)] {
            fs::File::create(img).unwrap().set_len(size).unwrap();
        }
        let many = many_files_repository(&dir);
        Images {
            root: vm_dir.join("root.img"),
            dir,
            ssh_key,
            disk,
            key,
            many,
        }
    }
}

/// [`MANY_FILES`] tiny files in 100 directories, backed up on the host by this build's burrow
/// (a local job) into `dir/many/repo`, then put into an ext4 image for the guest to restore
/// from. The config the guest uses is in the image too (`/mnt/many/config.yaml`).
fn many_files_repository(dir: &Path) -> PathBuf {
    let start = Instant::now();
    let src = dir.join("many-src/srv/many");
    for d in 0..100 {
        let sub = src.join(format!("{d:02}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..MANY_FILES / 100 {
            fs::write(sub.join(format!("{f:04}")), format!("{d:02}/{f:04}\n")).unwrap();
        }
    }
    let top = dir.join("many");
    fs::create_dir_all(&top).unwrap();
    fs::write(top.join("password"), "the many-files repository\n").unwrap();
    let host_cfg = dir.join("many-host.yaml");
    let cfg = |root: &Path, paths: &Path| {
        format!(
            "repository: {{path: {root}/repo, password_file: {root}/password}}\n\
             state_dir: {root}/state\njobs:\n  many: {{paths: [{}]}}\n",
            paths.display(),
            root = root.display()
        )
    };
    fs::write(&host_cfg, cfg(&top, &src)).unwrap();
    fs::write(
        top.join("config.yaml"),
        cfg(Path::new("/mnt/many"), Path::new("/srv/many")).replace(
            "state_dir: /mnt/many/state",
            "state_dir: /var/tmp/many-state",
        ),
    )
    .unwrap();
    for args in [&["init"][..], &["run", "many"]] {
        let out = crate::util::burrow(&host_cfg, args);
        assert!(
            out.status.success(),
            "burrow {args:?} of the many-files job: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::remove_dir_all(top.join("state")).unwrap();
    // The snapshot names /srv/many/…: the guest restores it under its own target.
    let img = dir.join("many.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "burrow-many", "-d"])
        .arg(&top)
        .arg(&img)
        .arg("256M")
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.ext4 -d many: {out:?}");
    fs::remove_dir_all(dir.join("many-src")).unwrap();
    log(&format!(
        "{MANY_FILES}-file snapshot made on the host in {:.0} s",
        start.elapsed().as_secs_f64()
    ));
    img
}

/// A running guest. Dropping it kills qemu (and, in a failing test, prints the end of the
/// serial console and of the guest's journal first).
struct Vm {
    qemu: Child,
    qmp: Qmp,
    ssh_port: u16,
    ssh_key: PathBuf,
    console: PathBuf,
    /// Per USB stick, the QMP id it is plugged in under, or `None` while pulled out.
    plugged: [(&'static str, Option<String>); 2],
    plugs: u32,
    booted: Instant,
}

impl Vm {
    fn boot(images: &Images, name: &str, clock: &str) -> Vm {
        let start = Instant::now();
        let vm_dir = target_dir().join("vm");
        let ssh_port = free_port();
        let qmp_sock = images.dir.join(format!("{name}.qmp"));
        let console = images.dir.join(format!("{name}.console.log"));
        let _ = fs::remove_file(&qmp_sock);
        let blockdev = |file: &Path, node: &str| {
            [
                "-blockdev".to_owned(),
                format!("driver=file,filename={},node-name={node}f", file.display()),
                "-blockdev".to_owned(),
                format!("driver=raw,file={node}f,node-name={node}"),
            ]
        };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-smp",
            "2",
            "-nodefaults",
            "-no-reboot",
            "-S",
        ])
        .args(["-m", &GUEST_MEMORY_MB.to_string()])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()))
        .arg("-rtc")
        .arg(format!("base={clock},clock=host"))
        .arg("-kernel")
        .arg(vm_dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(vm_dir.join("initrd.img"))
        .args([
            "-append",
            "console=ttyS0 root=/dev/vda rw panic=-1 edd=off quiet systemd.show_status=1",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            images.root.display()
        ))
        .args(["-netdev"])
        .arg(format!("user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"))
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            images.many.display()
        ))
        .args(["-device", "qemu-xhci,id=xhci"])
        .args(blockdev(&images.disk, "disk"))
        .args(blockdev(&images.key, "key"))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
        let mut qemu = cmd.spawn().expect("starting qemu-system-x86_64");
        let qmp = Qmp::connect(&qmp_sock, &mut qemu);
        let mut vm = Vm {
            qemu,
            qmp,
            ssh_port,
            ssh_key: images.ssh_key.clone(),
            console,
            plugged: [("disk", None), ("key", None)],
            plugs: 0,
            booted: start,
        };
        // Started paused (-S): both sticks are in when the guest starts.
        vm.plug("disk");
        vm.plug("key");
        vm.qmp
            .execute("cont", json!({}))
            .expect("starting the guest");
        vm.wait(
            "the guest to boot and answer over SSH",
            180,
            "systemctl is-system-running --wait >/dev/null || true; true",
        );
        log(&format!(
            "{name}: guest up in {:.0} s (clock {clock})",
            start.elapsed().as_secs_f64()
        ));
        vm
    }

    /// Plugs the USB stick `drive` ("disk" or "key") into the guest's xHCI controller.
    fn plug(&mut self, drive: &'static str) {
        self.plugs += 1;
        let id = format!("{drive}dev{}", self.plugs);
        let serial = if drive == "disk" {
            DISK_SERIAL
        } else {
            KEY_SERIAL
        };
        self.qmp
            .execute(
                "device_add",
                json!({"driver": "usb-storage", "bus": "xhci.0", "drive": drive, "id": id,
                       "serial": serial, "removable": true}),
            )
            .unwrap_or_else(|e| panic!("plugging in the {drive} stick: {e}"));
        let slot = self.plugged.iter_mut().find(|(d, _)| *d == drive).unwrap();
        slot.1 = Some(id);
    }

    /// Pulls the USB stick `drive` out and waits until the guest has seen it go.
    fn unplug(&mut self, drive: &'static str) {
        let slot = self.plugged.iter_mut().find(|(d, _)| *d == drive).unwrap();
        let id = slot.1.take().expect("that stick is not plugged in");
        self.qmp
            .execute("device_del", json!({"id": id}))
            .unwrap_or_else(|e| panic!("pulling out the {drive} stick: {e}"));
        let serial = if drive == "disk" {
            DISK_SERIAL
        } else {
            KEY_SERIAL
        };
        self.wait(
            &format!("the guest to see the {drive} stick removed"),
            60,
            &format!("[ -z \"$(dev {serial})\" ]"),
        );
    }

    fn ssh_command(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"])
        // An emulated guest on a busy host can stall for a minute (kernel soft lockups while
        // 100,000 files are restored): keep the session for 5 minutes of silence.
        .args([
            "-o",
            "ServerAliveInterval=10",
            "-o",
            "ServerAliveCountMax=30",
        ])
        .arg("-i")
        .arg(&self.ssh_key)
        .args(["-p", &self.ssh_port.to_string(), "root@127.0.0.1"])
        .args(["bash", "-s"]);
        c
    }

    /// Runs a bash script in the guest (after [`PRELUDE`]).
    fn run(&self, script: &str) -> Output {
        self.spawn(script).wait_with_output().unwrap()
    }

    /// Runs a script that must succeed; returns its stdout.
    fn sh(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "guest script failed ({}):\n{script}\n--- stdout\n{}--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a script in the guest without waiting for it (its stdin, the script, is closed).
    fn spawn(&self, script: &str) -> Child {
        let mut child = self
            .ssh_command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running ssh");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(PRELUDE.as_bytes()).unwrap();
        stdin.write_all(script.as_bytes()).unwrap();
        child
    }

    /// Polls `script` in the guest until it succeeds, for at most `secs`.
    fn wait(&self, what: &str, secs: u64, script: &str) -> String {
        let mut last = None;
        let found = poll(secs, || {
            let out = self.run(script);
            if out.status.success() {
                return Some(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            last = Some(out);
            None
        });
        found.unwrap_or_else(|| {
            let detail = last.map_or(String::new(), |o| {
                format!(
                    "\n--- last stdout\n{}--- last stderr\n{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            });
            panic!("timed out after {secs} s waiting for {what}:\n{script}{detail}")
        })
    }

    /// The job's entry of the daemon's `burrow status --json`.
    fn job(&self, job: &str) -> Value {
        let out = self.sh("burrow status --json");
        let status: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("`burrow status --json`: {e}: {out}"));
        let jobs = status["jobs"].as_array().expect("jobs in the status");
        jobs.iter()
            .find(|j| j["name"] == job)
            .unwrap_or_else(|| panic!("no job {job} in the status: {status}"))
            .clone()
    }

    /// Polls the job's status entry until `ok` holds, for at most `secs`.
    fn wait_job(&self, what: &str, secs: u64, job: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        poll(secs, || {
            let out = self.run("burrow status --json");
            let entry = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|s| {
                    s["jobs"]
                        .as_array()
                        .and_then(|jobs| jobs.iter().find(|j| j["name"] == job).cloned())
                })?;
            last = entry.clone();
            ok(&entry).then_some(entry)
        })
        .unwrap_or_else(|| {
            panic!("timed out after {secs} s waiting for {what}; last status of {job}: {last}")
        })
    }

    /// Shuts the guest down and waits for qemu to exit.
    fn poweroff(mut self) {
        let _ = self.run("systemctl poweroff");
        let start = Instant::now();
        let exited = poll(120, || self.qemu.try_wait().ok().flatten());
        let status = exited.expect("qemu did not exit within 120 s of `systemctl poweroff`");
        log(&format!(
            "guest powered off in {:.0} s ({status}); it ran {:.0} s",
            start.elapsed().as_secs_f64(),
            self.booted.elapsed().as_secs_f64()
        ));
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() && self.qemu.try_wait().ok().flatten().is_none() {
            let out = self.run(
                "journalctl -b --no-pager -o short-monotonic | tail -n 150; \
                 systemctl --no-pager status burrow || true",
            );
            eprintln!(
                "\n==== guest journal (end)\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if std::thread::panicking() {
            let console = fs::read_to_string(&self.console).unwrap_or_default();
            let lines: Vec<&str> = console.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!(
                "\n==== serial console (end of {})\n{}",
                self.console.display(),
                tail.replace('\r', "")
            );
        }
    }
}

// ---- helpers ------------------------------------------------------------------------------

fn log(msg: &str) {
    eprintln!("vm: {msg}");
}

/// Calls `f` every half second until it returns `Some`, for at most `secs`.
fn poll<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_for<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    poll(secs, f).unwrap_or_else(|| panic!("timed out after {secs} s waiting for {what}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Runs one named scenario, timing it; a failure names it.
fn scenario(name: &str, f: impl FnOnce()) {
    struct Named<'a>(&'a str);
    impl Drop for Named<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("vm: scenario {}: FAILED", self.0);
            }
        }
    }
    let _named = Named(name);
    log(&format!("scenario {name}: start"));
    let start = Instant::now();
    f();
    log(&format!(
        "scenario {name}: ok ({:.0} s)",
        start.elapsed().as_secs_f64()
    ));
}

/// The tools this tier needs on the host; `false` (after `missing`) when one is absent.
fn host_ready() -> bool {
    for (tool, arg) in [
        ("qemu-system-x86_64", "--version"),
        ("debootstrap", "--version"),
        ("mkfs.ext4", "-V"),
        ("ssh", "-V"),
        ("ssh-keygen", "--help"),
    ] {
        let found = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            burrow_testkit::missing(tool, "the VM tier boots a Debian guest with it");
            return false;
        }
    }
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        burrow_testkit::missing("root", "debootstrap, chroot and mkfs need root");
        return false;
    }
    true
}

// ---- the scenarios ------------------------------------------------------------------------

/// The config of the guest, with the UUIDs of its disk and stick and the pinned host key.
fn config(luks_uuid: &str, key_uuid: &str, host_key: &str) -> String {
    format!(
        r#"repository:
  path: burrow
  password_file: burrow-password
state_dir: /var/lib/burrow
disk:
  key: {{fs_uuid: "{key_uuid}", key_file: file}}
  backup: {{uuid: "{luks_uuid}"}}
  lock_when_key_removed: true
  spinup_timeout: 30s
servers:
  self:
    host: 127.0.0.1
    user: backup_agent
    identity_file: /etc/burrow/id_ed25519
    host_key: "{host_key}"
jobs:
  # Daily at 03:00: caught up after the second boot.
  docs:
    server: self
    schedule: "0 3 * * *"
    paths: [/srv/docs]
  # Its before hook gives the tests a run that lasts: they pull sticks or stop the daemon
  # while it sleeps.
  slow:
    server: self
    schedule: "0 12 1 1 *"
    paths: [/srv/docs]
    before: ["touch /home/backup_agent/slow-started", "sleep 20"]
    after: ["touch /home/backup_agent/slow-after"]
    hook_timeout: 2m
"#
    )
}

/// Steps 2-7 of docs/install.md in the guest: LUKS disk, key stick, server account, config,
/// `burrow init`, a first run, and stock restic reading every byte back.
fn luks_init_and_first_run(vm: &Vm) {
    let uuids = vm.sh(&format!(
        r#"
disk=$(dev {DISK_SERIAL}); key=$(dev {KEY_SERIAL})
[ -n "$disk" ] && [ -n "$key" ] || {{ lsblk; echo "USB sticks not found" >&2; exit 1; }}
printf '%s' '{PASSPHRASE}' >/root/passphrase
# As docs/install.md, with a fast KDF: the guest's emulated CPU takes minutes for the default.
fast="--pbkdf pbkdf2 --pbkdf-force-iterations 1000"
cryptsetup luksFormat -q --type luks2 --cipher xchacha20,aes-adiantum-plain64 --key-size 256 \
    $fast --key-file /root/passphrase "$disk"
cryptsetup open --key-file /root/passphrase "$disk" burrow-new
mkfs.ext4 -q -m 1 -L burrow /dev/mapper/burrow-new
cryptsetup close burrow-new
mkfs.ext4 -q -L burrow-key "$key"
mount "$key" /mnt
burrow setup key-stick /mnt --password >&2
cryptsetup luksAddKey $fast --key-file /root/passphrase "$disk" /mnt/file
cryptsetup open --test-passphrase --key-file /mnt/file "$disk"
umount /mnt
echo "$(cryptsetup luksUUID "$disk") $(blkid -s UUID -o value "$key")"
"#
    ));
    let (luks_uuid, key_uuid) = uuids.trim().split_once(' ').expect("two UUIDs");
    let host_key = vm.sh("cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub");
    let cfg = config(luks_uuid, key_uuid, host_key.trim());
    vm.sh(&format!(
        r#"
cat >/etc/burrow/config.yaml <<'CONFIG'
{cfg}CONFIG
burrow setup key >&2
useradd -m -s /bin/bash backup_agent
install -d -m 700 -o backup_agent -g backup_agent /home/backup_agent/.ssh
echo "restrict $(cat /etc/burrow/id_ed25519.pub)" >/home/backup_agent/.ssh/authorized_keys
chown backup_agent: /home/backup_agent/.ssh/authorized_keys
mkdir -p /srv/docs/sub
echo "first file" >/srv/docs/a.txt
head -c 300000 /dev/urandom >/srv/docs/sub/b.bin
burrow check-config >&2
burrow init >&2
burrow run docs >&2
mp=$(mountpoint_of {DISK_SERIAL})
[ -n "$mp" ] || {{ echo "backup volume not mounted after the run" >&2; exit 1; }}
mount -o ro "$(dev {KEY_SERIAL})" /mnt
restic -r "$mp/burrow" --password-file /mnt/burrow-password --no-cache check --read-data >&2
restic -r "$mp/burrow" --password-file /mnt/burrow-password --no-cache ls latest | grep -qx /srv/docs/sub/b.bin
umount /mnt
# The machine as burrow doctor sees it: nothing fails (the package brought what it needs).
burrow doctor >&2
"#
    ));
}

/// A snapshot of 100,000 tiny files (made on the host, on the second virtio disk) restored
/// inside 1 GiB of memory, with no OOM kill.
fn restore_many(vm: &Vm) {
    let start = Instant::now();
    let out = vm.sh(r#"
mkdir -p /mnt/many
mountpoint -q /mnt/many || mount /dev/vdb /mnt/many
rm -rf /var/tmp/restore
burrow --config /mnt/many/config.yaml restore many latest --target /var/tmp/restore \
    >/var/tmp/restore.log 2>&1 &
pid=$!
hwm=0
while kill -0 "$pid" 2>/dev/null; do
    h=$(awk '/^VmHWM/ {print $2}' /proc/$pid/status 2>/dev/null || true)
    if [ -n "$h" ]; then hwm=$h; fi
    sleep 0.5
done
wait "$pid" || { cat /var/tmp/restore.log >&2; exit 1; }
n=$(find /var/tmp/restore -type f | wc -l)
echo "$n $hwm"
if journalctl -k -b --no-pager | grep -i -e 'out of memory' -e 'oom-kill'; then
    echo "OOM killer in the kernel log" >&2; exit 1
fi
rm -rf /var/tmp/restore
umount /mnt/many
"#);
    let (n, hwm) = out.trim().split_once(' ').expect("count and VmHWM");
    assert_eq!(n.parse::<usize>().unwrap(), MANY_FILES, "restored files");
    log(&format!(
        "restore of {MANY_FILES} files: {:.0} s, peak RSS (VmHWM) {} MiB",
        start.elapsed().as_secs_f64(),
        hwm.parse::<u64>().unwrap_or(0) / 1024
    ));
}

/// The daemon under systemd: READY, STATUS, a run handed over through the control socket, and
/// the run's lines in the journal under its JOB= and RUN_ID= fields.
fn daemon_under_systemd(vm: &Vm) {
    vm.sh("systemctl enable --now burrow >&2");
    let status = vm.wait(
        "burrow.service active with a STATUS= text",
        60,
        r#"[ "$(systemctl is-active burrow)" = active ]
s=$(systemctl show -p StatusText --value burrow); [ -n "$s" ]; echo "$s""#,
    );
    log(&format!("StatusText: {}", status.trim()));
    let summary = vm.sh("burrow run docs --json");
    let summary: Value = serde_json::from_str(summary.trim())
        .unwrap_or_else(|e| panic!("`burrow run docs --json`: {e}: {summary}"));
    assert_eq!(summary["status"], "ok", "{summary}");
    let run_id = summary["run_id"].as_str().expect("run_id").to_owned();
    // The run was the daemon's, not the command's own.
    let daemon_pid = vm.sh("systemctl show -p MainPID --value burrow");
    let lines = vm.wait(
        "the run's lines in the journal under JOB=docs RUN_ID=…",
        30,
        &format!("journalctl -u burrow JOB=docs RUN_ID={run_id} --no-pager -o json | grep ."),
    );
    for line in lines.lines() {
        let entry: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            entry["_PID"].as_str(),
            Some(daemon_pid.trim()),
            "a line of run {run_id} not from the daemon: {entry}"
        );
    }
    log(&format!(
        "journal: {} lines with JOB=docs RUN_ID={run_id}",
        lines.lines().count()
    ));
}

/// Pulling the key stick while the daemon is idle unmounts and locks the disk; a run asked for
/// meanwhile is skipped, and runs once the stick is back.
fn key_stick_idle_and_back(vm: &mut Vm) {
    vm.wait(
        "the backup volume mounted (idle daemon)",
        30,
        &format!("[ -n \"$(mountpoint_of {DISK_SERIAL})\" ] && unlocked {DISK_SERIAL}"),
    );
    vm.unplug("key");
    vm.wait(
        "the disk unmounted and locked after the key stick was pulled",
        60,
        &format!("[ -z \"$(mountpoint_of {DISK_SERIAL})\" ] && ! unlocked {DISK_SERIAL}"),
    );
    let out = vm.run("burrow run docs");
    assert_eq!(
        out.status.code(),
        Some(75),
        "a run without the key stick is skipped (75): {out:?}"
    );
    assert_eq!(vm.job("docs")["waiting_for_disk"], true);
    let before = vm.job("docs")["last"]["run_id"].clone();
    vm.plug("key");
    vm.wait(
        "the disk unlocked and mounted again after the key stick came back",
        90,
        &format!("[ -n \"$(mountpoint_of {DISK_SERIAL})\" ] && unlocked {DISK_SERIAL}"),
    );
    vm.wait_job(
        "the skipped job to run once the disk is back",
        120,
        "docs",
        |j| {
            j["last"]["status"] == "ok"
                && j["last"]["run_id"] != before
                && j["waiting_for_disk"] == false
        },
    );
}

/// Starts `burrow run slow` in the guest and waits until its before hook sleeps.
fn start_slow_run(vm: &Vm) -> Child {
    vm.sh("rm -f /home/backup_agent/slow-started /home/backup_agent/slow-after");
    let child = vm.spawn("burrow run slow --json");
    vm.wait(
        "the slow job's before hook to start",
        60,
        "[ -e /home/backup_agent/slow-started ]",
    );
    child
}

/// The key stick pulled during a run: the run finishes, then the disk is locked. Plugged back,
/// the disk comes back.
fn key_stick_during_run(vm: &mut Vm) {
    let run = start_slow_run(vm);
    vm.unplug("key");
    let out = run.wait_with_output().unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("`burrow run slow --json`: {e}: {out:?}"));
    assert_eq!(
        summary["status"], "ok",
        "the run goes on without the key stick: {summary}"
    );
    vm.wait(
        "the disk locked once the run ended",
        60,
        &format!("[ -z \"$(mountpoint_of {DISK_SERIAL})\" ] && ! unlocked {DISK_SERIAL}"),
    );
    vm.plug("key");
    vm.wait(
        "the disk mounted again after the key stick came back",
        90,
        &format!("[ -n \"$(mountpoint_of {DISK_SERIAL})\" ]"),
    );
}

/// The backup disk pulled during a run: the run fails, nothing lands on the root filesystem,
/// and after replugging the next run works.
fn disk_pulled_during_run(vm: &mut Vm) {
    let run = start_slow_run(vm);
    vm.unplug("disk");
    let out = run.wait_with_output().unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("`burrow run slow --json`: {e}: {out:?}"));
    assert_eq!(summary["status"], "failed", "{summary}");
    log(&format!("run without its disk: {}", summary["reason"]));
    vm.sh(
        r#"
[ -e /home/backup_agent/slow-after ] || { echo "after hook did not run" >&2; exit 1; }
[ "$(systemctl is-active burrow)" = active ]
# No repository (config, keys/, snapshots/) anywhere on the root filesystem.
found=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o \
    \( -type d -name snapshots -o -type d -name keys \) -print 2>/dev/null | grep -v -e '^/usr/' -e '^/etc/' || true)
[ -z "$found" ] || { echo "repository files outside the volume: $found" >&2; exit 1; }
files=$(find /media /run/media -xdev -type f 2>/dev/null || true)
[ -z "$files" ] || { echo "files under /media on the root filesystem: $files" >&2; exit 1; }
"#,
    );
    vm.wait(
        "no dm-crypt mapping left of the pulled disk",
        60,
        "! any_mapping",
    );
    vm.plug("disk");
    vm.wait(
        "the disk unlocked and mounted after it was plugged back",
        90,
        &format!("[ -n \"$(mountpoint_of {DISK_SERIAL})\" ]"),
    );
    let out = vm.sh("burrow run docs --json");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["status"], "ok", "{summary}");
}

/// `systemctl stop burrow` during a run: the after hook runs and the unit stops cleanly.
fn stop_during_run(vm: &Vm) {
    let run = start_slow_run(vm);
    vm.sh("systemctl stop burrow");
    let _ = run.wait_with_output();
    vm.sh(r#"
[ -e /home/backup_agent/slow-after ] || { echo "after hook did not run on stop" >&2; exit 1; }
a=$(systemctl show -p ActiveState --value burrow); r=$(systemctl show -p Result --value burrow)
[ "$a $r" = "inactive success" ] || { echo "unit after stop: $a, result $r" >&2; exit 1; }
"#);
    vm.sh("systemctl start burrow");
}

/// A daemon that stops answering is killed by systemd's watchdog and restarted.
fn watchdog(vm: &Vm) {
    let before = vm.sh(
        r#"
mkdir -p /etc/systemd/system/burrow.service.d
printf '[Service]\nWatchdogSec=10s\nRestartSec=1s\nTimeoutAbortSec=30s\n' >/etc/systemd/system/burrow.service.d/watchdog.conf
systemctl daemon-reload
systemctl restart burrow
pid=$(systemctl show -p MainPID --value burrow)
n=$(systemctl show -p NRestarts --value burrow)
kill -STOP "$pid"
echo "$pid $n"
"#,
    );
    let (pid, n) = before.trim().split_once(' ').unwrap();
    vm.wait(
        "systemd's watchdog to kill the stopped daemon and restart it",
        90,
        &format!(
            r#"[ "$(systemctl is-active burrow)" = active ]
p=$(systemctl show -p MainPID --value burrow); [ "$p" != 0 ] && [ "$p" != {pid} ]
[ "$(systemctl show -p NRestarts --value burrow)" -gt {n} ]"#
        ),
    );
    vm.sh(
        "journalctl -u burrow -b --no-pager | grep -q 'Watchdog timeout'
rm /etc/systemd/system/burrow.service.d/watchdog.conf
systemctl daemon-reload",
    );
}

/// After a boot past 03:00 (the guest was off at the slot), the daemon catches the run up.
fn catch_up(vm: &Vm) {
    // The guest's clock at boot, as RFC 3339 in UTC like the state's times.
    let boot = vm.sh(r#"date -u -d "@$(( $(date +%s) - $(cut -d. -f1 /proc/uptime) ))" +%FT%T"#);
    let boot = boot.trim().to_owned();
    let j = vm.wait_job(
        "the catch-up run of docs after the boot",
        180,
        "docs",
        |j| {
            j["last"]["status"] == "ok"
                && j["last"]["started"]
                    .as_str()
                    .is_some_and(|s| s[..19] > *boot)
        },
    );
    log(&format!("catch-up run: {}", j["last"]));
    vm.sh("journalctl -u burrow -b --no-pager | grep -i 'docs' >&2");
}

/// `apt-get purge burrow` leaves no unit, no config and no state.
fn purge(vm: &Vm) {
    vm.sh(
        r#"
apt-get purge -y -qq burrow >&2
left=""
for p in /usr/bin/burrow /lib/systemd/system/burrow.service /etc/systemd/system/multi-user.target.wants/burrow.service \
    /etc/systemd/system/burrow.service.d /etc/burrow /var/lib/burrow /run/burrow; do
    if [ -e "$p" ]; then left="$left $p"; fi
done
[ -z "$left" ] || { echo "left after purge:$left"; ls -la $left >&2; exit 1; }
! systemctl cat burrow >/dev/null 2>&1
"#,
    );
}

#[test]
#[ignore = "VM tier: needs the .deb; run by .ci/run"]
fn vm_tier() {
    let Some(deb) = std::env::var_os("BURROW_DEB").map(PathBuf::from) else {
        panic!(
            "BURROW_DEB is not set: build the package with `bash packaging/build-deb.sh` and \
             set BURROW_DEB to the .deb it prints on its last line"
        );
    };
    assert!(deb.is_file(), "BURROW_DEB={} is not a file", deb.display());
    if !host_ready() {
        return;
    }
    let total = Instant::now();
    let images = Images::build(&deb);

    let mut vm = Vm::boot(&images, "boot1", FIRST_BOOT_CLOCK);
    scenario("package-install", || {
        vm.sh(r#"
for p in udisks2 dbus libblockdev-crypto2 ca-certificates; do
    dpkg-query -W -f='${Status}\n' "$p" | grep -qx 'install ok installed'
done
if systemctl is-enabled burrow >/dev/null 2>&1; then echo "enabled by the package" >&2; exit 1; fi
systemctl is-active udisks2 >/dev/null || systemctl start udisks2
"#);
    });
    scenario("luks-init-first-run", || luks_init_and_first_run(&vm));
    scenario("restore-100k-files", || restore_many(&vm));
    scenario("daemon-under-systemd", || daemon_under_systemd(&vm));
    scenario("key-stick-idle-and-back", || {
        key_stick_idle_and_back(&mut vm)
    });
    scenario("key-stick-during-run", || key_stick_during_run(&mut vm));
    scenario("disk-pulled-during-run", || disk_pulled_during_run(&mut vm));
    scenario("stop-during-run", || stop_during_run(&vm));
    scenario("watchdog", || watchdog(&vm));
    vm.poweroff();

    let vm = Vm::boot(&images, "boot2", SECOND_BOOT_CLOCK);
    scenario("catch-up-after-boot", || catch_up(&vm));
    scenario("purge", || purge(&vm));
    vm.poweroff();
    log(&format!(
        "VM tier done in {:.0} s",
        total.elapsed().as_secs_f64()
    ));
}
