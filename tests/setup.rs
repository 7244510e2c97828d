//! `burrow setup`: the key it makes logs in under `restrict` and burrow can back up with it;
//! `trust` reports exactly the server's fingerprint and pins it without touching the rest of
//! the file; `key-stick` writes only onto a mounted filesystem and never overwrites a key.

use crate::util::{burrow, text};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use burrow_testkit::loopdev;
use burrow_testkit::sshd::Sshd;

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn config(tmp: &Path, sshd: &Sshd, identity: &Path, host_key: Option<&str>) -> PathBuf {
    let src = tmp.join("server-data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "a\n").unwrap();
    fs::write(tmp.join("pw"), "pw\n").unwrap();
    let host_key = host_key
        .map(|k| format!("    host_key: \"{k}\"\n"))
        .unwrap_or_default();
    let cfg = tmp.join("config.yaml");
    fs::write(
        &cfg,
        format!(
            "# test config\nrepository: {{path: {repo}, password_file: {pw}}}\nstate_dir: {state}\n\
             servers:\n  vps:\n    host: 127.0.0.1  # loopback\n    port: {port}\n    user: {user}\n    identity_file: {id}\n{host_key}\
             jobs:\n  files:\n    server: vps\n    paths: [{src}]\n    before: [\"sudo -n docker stop app\", \"true\"]\n    after: [\"sudo docker start app\"]\n\
             \x20 later:\n    enabled: false\n    server: vps\n    paths: [{src}]\n    before: [\"sudo -n /usr/sbin/service app stop\"]\n",
            repo = tmp.join("repo").display(),
            pw = tmp.join("pw").display(),
            state = tmp.join("state").display(),
            port = sshd.port,
            user = sshd.user,
            id = identity.display(),
            src = src.display(),
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn setup_key_makes_a_key_that_logs_in_under_restrict() {
    let Some(sshd) = Sshd::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("etc/id_ed25519");
    // The job's commands use sudo, which the test server does not have: run the key check
    // with a config whose hooks are plain, and the sudoers check with the sudo config.
    let cfg = config(tmp.path(), &sshd, &key, Some(&sshd.host_key_line));
    let out = burrow(&cfg, &["setup", "key", "--file", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert_eq!(mode(&key), 0o600);
    let public = fs::read_to_string(tmp.path().join("etc/id_ed25519.pub")).unwrap();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    // OpenSSH reads the private key and derives the same public key.
    let derived = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&key)
        .output()
        .unwrap();
    assert!(derived.status.success(), "{}", text(&derived));
    let derived = String::from_utf8_lossy(&derived.stdout);
    let b64 = |s: &str| s.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(b64(&derived), b64(&public));

    let restrict_line = t
        .lines()
        .find(|l| l.starts_with("restrict ssh-ed25519 "))
        .unwrap_or_else(|| panic!("no authorized_keys line:\n{t}"))
        .to_owned();
    assert_eq!(
        b64(restrict_line.trim_start_matches("restrict ")),
        b64(&public)
    );
    assert!(
        t.contains(&format!(
            "{} ALL=(root) NOPASSWD: /usr/bin/docker stop app, \\\n    /usr/bin/docker start app\n",
            sshd.user
        )),
        "{t}"
    );
    assert!(
        t.contains("# /usr/sbin/service app stop"),
        "disabled job listed apart: {t}"
    );
    assert!(!t.contains("NOPASSWD: /usr/bin/true"), "{t}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sudoers = &stdout[stdout.find("# ---- sudoers").unwrap()..];
    visudo_accepts(tmp.path(), sudoers);

    // Never overwrites; --existing prints the same lines for the key that is there.
    let again = burrow(&cfg, &["setup", "key", "--file", key.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("not overwriting"));
    let existing = burrow(
        &cfg,
        &[
            "setup",
            "key",
            "--existing",
            "--file",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(existing.status.code(), Some(0), "{}", text(&existing));
    assert!(text(&existing).contains(&restrict_line));

    // The server accepts the key with `restrict`, and burrow backs up through it (SFTP and a
    // hook command on an exec channel).
    fs::write(
        sshd.dir.path().join("authorized_keys"),
        format!("{restrict_line}\n"),
    )
    .unwrap();
    let plain = fs::read_to_string(&cfg)
        .unwrap()
        .replace("sudo -n docker stop app", "echo before")
        .replace("sudo docker start app", "echo after");
    fs::write(&cfg, plain).unwrap();
    let out = burrow(&cfg, &["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = burrow(&cfg, &["run", "files", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        sshd.log_text()
    );
}

/// The printed sudoers section, pasted as a file, passes `visudo -c`.
fn visudo_accepts(dir: &Path, printed: &str) {
    let rule = dir.join("sudoers-burrow");
    fs::write(&rule, printed).unwrap();
    let out = match Command::new("visudo").arg("-cf").arg(&rule).output() {
        Ok(o) => o,
        Err(e) => {
            burrow_testkit::missing("visudo", &format!("{e} (install sudo)"));
            return;
        }
    };
    assert!(
        out.status.success(),
        "visudo rejects:\n{printed}\n{}",
        text(&out)
    );
}

#[test]
fn setup_trust_prints_the_servers_fingerprint_and_pins_it() {
    let Some(sshd) = Sshd::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &sshd, &sshd.client_key, None);
    // Without a host key the config is not valid yet; trust still works on it.
    assert_eq!(burrow(&cfg, &["check-config"]).status.code(), Some(2));
    let out = burrow(&cfg, &["setup", "trust", "vps"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    let fp_line = t
        .lines()
        .find(|l| l.trim_start().starts_with("fingerprint: "))
        .unwrap_or_else(|| panic!("{t}"));
    assert_eq!(
        fp_line.trim_start().trim_start_matches("fingerprint: "),
        sshd.host_key_fingerprint
    );
    let key_b64 = sshd.host_key_line.split_whitespace().nth(1).unwrap();
    assert!(t.contains(key_b64), "{t}");
    assert!(
        t.contains("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"),
        "{t}"
    );
    assert!(t.contains("NOT trusted"), "{t}");
    // Nothing written without --write; the key exchange stopped before authentication.
    assert!(!fs::read_to_string(&cfg).unwrap().contains("host_key"));

    let before = fs::read_to_string(&cfg).unwrap();
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o640)).unwrap();
    let out = burrow(&cfg, &["setup", "trust", "vps", "--write"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(mode(&cfg), 0o640, "the config keeps its permissions");
    let after = fs::read_to_string(&cfg).unwrap();
    assert_eq!(after.lines().count(), before.lines().count() + 1);
    assert!(after.contains("# test config") && after.contains("# loopback"));
    let out = burrow(&cfg, &["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{after}", text(&out));
    let out = burrow(&cfg, &["setup", "trust", "vps"]);
    assert!(
        text(&out).contains("already pins this key"),
        "{}",
        text(&out)
    );

    // A different pinned key is called out.
    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";
    fs::write(&cfg, after.replace(key_b64, other.split_at(12).1)).unwrap();
    let out = burrow(&cfg, &["setup", "trust", "vps"]);
    assert!(text(&out).contains("WARNING"), "{}", text(&out));
    // --write never replaces a different pinned key: that is what an attack looks like.
    let pinned = fs::read_to_string(&cfg).unwrap();
    let out = burrow(&cfg, &["setup", "trust", "vps", "--write"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(fs::read_to_string(&cfg).unwrap(), pinned);

    assert_eq!(
        burrow(&cfg, &["setup", "trust", "nope"]).status.code(),
        Some(2)
    );
}

#[test]
fn setup_trust_fails_cleanly_when_nothing_listens() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.yaml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fs::write(
        &cfg,
        format!("repository: {{path: /r, password_file: /p}}\nservers:\n  s: {{host: 127.0.0.1, port: {port}, user: u, identity_file: /k, connect_timeout: 5s}}\n"),
    )
    .unwrap();
    let out = burrow(&cfg, &["setup", "trust", "s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cannot fetch the host key"),
        "{}",
        text(&out)
    );
}

/// An ext4 image with a known UUID, loop-mounted; unmounted on drop.
struct Stick {
    _tmp: tempfile::TempDir,
    mnt: PathBuf,
    /// Held while the loop device exists (dropped last): the disk tests in this binary attach
    /// loop devices through UDisks2 and watch udev's block events, and must not see this one
    /// appear or race it for a free loop device.
    _serial: loopdev::Serial,
}

const STICK_UUID: &str = "3f1c0b9e-1111-4222-8333-444455556666";

impl Stick {
    fn mount() -> Option<Stick> {
        let serial = loopdev::serial();
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("stick.img");
        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-U", STICK_UUID])
            .arg(&img)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt)
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            burrow_testkit::missing(
                "loop mount",
                "cannot mkfs.ext4 and mount -o loop an image (needs root and e2fsprogs)",
            );
            return None;
        }
        Some(Stick {
            _tmp: tmp,
            mnt,
            _serial: serial,
        })
    }
}

impl Drop for Stick {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

#[test]
fn setup_key_stick_writes_on_a_mounted_stick_only() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("unused.yaml");
    // A plain directory is refused: the key would land on the SD card.
    let out = burrow(&cfg, &["setup", "key-stick", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not a mount point"), "{}", text(&out));
    assert!(!tmp.path().join("file").exists());

    let Some(stick) = Stick::mount() else { return };
    let m = stick.mnt.to_str().unwrap();
    let out = burrow(
        &cfg,
        &["setup", "key-stick", m, "--bytes", "512", "--password"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    let key = stick.mnt.join("file");
    let pw = stick.mnt.join("burrow-password");
    assert_eq!(fs::metadata(&key).unwrap().len(), 512);
    assert_eq!(mode(&key), 0o400);
    assert_eq!(mode(&pw), 0o400);
    let secret = fs::read_to_string(&pw).unwrap();
    assert_eq!(secret.lines().count(), 1);
    assert!(secret.trim().len() >= 32);
    assert!(t.contains(&format!("fs_uuid: \"{STICK_UUID}\"")), "{t}");
    assert!(t.contains("key_file: file") && t.contains("password_file: burrow-password"));
    assert!(
        t.contains("cryptsetup luksAddKey /dev/disk/by-uuid/")
            && t.contains(&key.display().to_string()),
        "{t}"
    );
    // Never overwrites a key file.
    let before = fs::read(&key).unwrap();
    let out = burrow(&cfg, &["setup", "key-stick", m]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not overwriting"));
    assert_eq!(fs::read(&key).unwrap(), before);
}
