//! Image files attached as loop devices through UDisks2 (`udisksctl`), so udisksd and udevd
//! see them the way they see a USB disk being plugged in and pulled out.
//!
//! Needs root, `/dev/loop-control`, the system D-Bus with udisksd on it (`.ci/disk-services.sh`
//! starts both), `udisksctl` (udisks2), `dbus-send` (dbus) and `mkfs.ext4` (e2fsprogs).
//! [`available`] checks all of that and reports what is missing through [`crate::missing`].
//!
//! Every [`LoopDev`] unmounts and detaches itself when dropped, also when the test panicked,
//! falling back to `umount -l` / `losetup -d` if UDisks2 refuses. Tests that attach images must
//! hold [`serial`] for their whole run: the fixed filesystem UUIDs are shared state.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long UDisks2 may take to show (or stop showing) a filesystem after a loop change.
const PROBE_WAIT: Duration = Duration::from_secs(15);

/// Backing files of test images have this in their name, so that [`sweep`] finds loop devices
/// left behind by a killed test run and detaches nothing else.
const IMAGE_TAG: &str = ".burrow-test.img";

/// Held for the whole of a test that attaches images: one test at a time in this process (a
/// mutex) and across processes (a lock file), since two `cargo test` runs would fight over the
/// same UUIDs.
pub struct Serial {
    _file: Option<File>,
    _guard: MutexGuard<'static, ()>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

/// Takes the loop-device lock (see [`Serial`]); a test that panicked while holding it does not
/// poison it for the next.
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::env::temp_dir().join("burrow-loopdev-tests.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ok()
        .filter(|f| f.lock().is_ok());
    Serial {
        _file: file,
        _guard: guard,
    }
}

/// Whether loop devices can be attached through UDisks2 here. If not, reports it through
/// [`crate::missing`] (a panic under `CI=true`) and returns `false`.
pub fn available() -> bool {
    let tools = [
        ("mkfs.ext4", "-V", "e2fsprogs"),
        ("udisksctl", "help", "udisks2"),
        ("dbus-send", "--help", "dbus"),
    ];
    for (tool, arg, package) in tools {
        if Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            crate::missing(tool, &format!("not found; install {package}"));
            return false;
        }
    }
    if !is_root() {
        crate::missing(
            "root",
            "attaching and mounting loop devices through UDisks2 needs root",
        );
        return false;
    }
    if !Path::new("/dev/loop-control").exists() {
        crate::missing("loop devices", "/dev/loop-control does not exist");
        return false;
    }
    let out = Command::new("dbus-send")
        .args([
            "--system",
            "--print-reply",
            "--reply-timeout=5000",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            "string:org.freedesktop.UDisks2",
        ])
        .output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("boolean true") => true,
        Ok(o) if o.status.success() => {
            crate::missing(
                "udisksd",
                "org.freedesktop.UDisks2 is not on the system bus; run .ci/disk-services.sh",
            );
            false
        }
        Ok(o) => {
            crate::missing(
                "system D-Bus",
                &format!(
                    "{}; run .ci/disk-services.sh",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            );
            false
        }
        Err(e) => {
            crate::missing("system D-Bus", &format!("dbus-send: {e}"));
            false
        }
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Creates a 16 MiB ext4 image `dir/NAME.burrow-test.img` with filesystem `uuid`, holding
/// `files` (path below the root, contents, mode).
pub fn ext4_image(dir: &Path, name: &str, uuid: &str, files: &[(&str, &[u8], u32)]) -> PathBuf {
    ext4_image_sized(dir, name, uuid, files, 16 << 20)
}

/// As [`ext4_image`], `size` bytes large (a sparse file: it only costs what is written).
pub fn ext4_image_sized(
    dir: &Path,
    name: &str,
    uuid: &str,
    files: &[(&str, &[u8], u32)],
    size: u64,
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join(format!("{name}.root"));
    fs::create_dir_all(&root).unwrap();
    for (p, data, mode) in files {
        let f = root.join(p);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, data).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(*mode)).unwrap();
    }
    let img = dir.join(format!("{name}{IMAGE_TAG}"));
    File::create(&img).unwrap().set_len(size).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", uuid, "-d"])
        .arg(&root)
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.ext4 failed: {}", text(&out));
    img
}

/// A loop device attached through UDisks2; unmounted and detached when dropped.
#[derive(Debug)]
pub struct LoopDev {
    device: PathBuf,
    uuid: String,
    attached: bool,
}

impl LoopDev {
    /// Attaches `image` and waits until UDisks2 has probed it and shows filesystem `uuid`.
    /// Panics if that fails: the caller has checked [`available`].
    pub fn attach(image: &Path, uuid: &str) -> LoopDev {
        let out = udisksctl(&["loop-setup", "-f", &image.to_string_lossy()]);
        assert!(
            out.status.success(),
            "udisksctl loop-setup -f {} failed: {}",
            image.display(),
            text(&out)
        );
        // "Mapped file IMAGE as /dev/loopN."
        let stdout = String::from_utf8_lossy(&out.stdout);
        let device = stdout
            .trim()
            .rsplit(' ')
            .next()
            .map(|d| d.trim_end_matches('.'))
            .filter(|d| d.starts_with("/dev/"))
            .unwrap_or_else(|| panic!("unexpected udisksctl loop-setup output: {stdout}"));
        let dev = LoopDev {
            device: PathBuf::from(device),
            uuid: uuid.to_owned(),
            attached: true,
        };
        let deadline = Instant::now() + PROBE_WAIT;
        while id_uuid(&dev.device).as_deref() != Some(uuid) {
            assert!(
                Instant::now() < deadline,
                "UDisks2 did not report UUID {uuid} on {} within {}s",
                dev.device.display(),
                PROBE_WAIT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        dev
    }

    pub fn device(&self) -> &Path {
        &self.device
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Where the kernel has this device mounted now.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        mount_points_of(&self.device)
    }

    /// Mounts the filesystem through UDisks2, as a desktop would, and returns where.
    pub fn mount(&self) -> PathBuf {
        let out = udisksctl(&["mount", "-b", &self.device.to_string_lossy()]);
        assert!(out.status.success(), "udisksctl mount: {}", text(&out));
        self.mount_points()
            .pop()
            .expect("mounted, but not in /proc/self/mountinfo")
    }

    /// Unmounts the filesystem through UDisks2 (a no-op if it is not mounted).
    pub fn unmount(&self) {
        if self.mount_points().is_empty() {
            return;
        }
        let out = udisksctl(&["unmount", "-b", &self.device.to_string_lossy()]);
        assert!(
            out.status.success() || self.mount_points().is_empty(),
            "udisksctl unmount -b {} failed: {}",
            self.device.display(),
            text(&out)
        );
    }

    /// Pulls the device out while it may be in use: forced (or lazy) unmount, then detach;
    /// waits until UDisks2 no longer shows the filesystem.
    pub fn yank(mut self) {
        cleanup(&self.device);
        self.attached = false;
        wait_gone(&self.device, &self.uuid);
    }

    /// Unmounts and detaches the device (the image "is unplugged"), and waits until UDisks2
    /// no longer shows the filesystem.
    pub fn detach(mut self) {
        self.unmount();
        let out = udisksctl(&["loop-delete", "-b", &self.device.to_string_lossy()]);
        assert!(
            out.status.success(),
            "udisksctl loop-delete -b {} failed: {}",
            self.device.display(),
            text(&out)
        );
        self.attached = false;
        wait_gone(&self.device, &self.uuid);
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if self.attached {
            cleanup(&self.device);
            self.attached = false;
        }
    }
}

/// Unmounts and detaches `device`, whatever state it is in; never panics.
fn cleanup(device: &Path) {
    let dev = device.to_string_lossy();
    for mp in mount_points_of(device) {
        let out = udisksctl(&["unmount", "-b", &dev, "--force"]);
        if !out.status.success() {
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
    }
    let out = udisksctl(&["loop-delete", "-b", &dev]);
    if !out.status.success() {
        eprintln!(
            "udisksctl loop-delete -b {dev} failed ({}); falling back to losetup -d",
            text(&out)
        );
        let _ = Command::new("losetup").arg("-d").arg(device).status();
    }
}

/// Detaches loop devices whose backing file is a test image (see [`ext4_image`]): leftovers of
/// a test run that was killed before its guards could clean up.
pub fn sweep() {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if backing.contains(IMAGE_TAG) {
            eprintln!(
                "detaching stale test loop device /dev/{name} ({})",
                backing.trim()
            );
            cleanup(&Path::new("/dev").join(&name));
        }
    }
}

fn wait_gone(device: &Path, uuid: &str) {
    let deadline = Instant::now() + PROBE_WAIT;
    while id_uuid(device).as_deref() == Some(uuid)
        || Path::new("/dev/disk/by-uuid").join(uuid).exists()
    {
        if Instant::now() >= deadline {
            eprintln!(
                "warning: UDisks2 still shows UUID {uuid} after detaching {}",
                device.display()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The filesystem UUID UDisks2 reports for `device` (`IdUUID`), if any.
fn id_uuid(device: &Path) -> Option<String> {
    let out = Command::new("udisksctl")
        .args(["info", "-b"])
        .arg(device)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("IdUUID:")
                .map(|v| v.trim().to_owned())
        })
        .filter(|v| !v.is_empty())
}

fn udisksctl(args: &[&str]) -> Output {
    Command::new("udisksctl")
        .args(args)
        .arg("--no-user-interaction")
        .stdin(Stdio::null())
        .output()
        .expect("udisksctl could not be started")
}

fn text(o: &Output) -> String {
    format!(
        "{} {}",
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

/// One line of `/proc/self/mountinfo` (core's parser, the one the mount guard uses).
pub use burrow_core::guard::MountEntry as Mount;

/// Every mount of this process's mount namespace, in mount order.
pub fn mounts() -> Vec<Mount> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    burrow_core::guard::parse_mountinfo(&info)
}

/// The mount points of `device`, from `/proc/self/mountinfo`.
pub fn mount_points_of(device: &Path) -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|m| Path::new(&m.source) == device)
        .map(|m| m.mount_point)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_mounted() {
        assert!(mounts().iter().any(|m| m.mount_point == Path::new("/")));
    }
}
