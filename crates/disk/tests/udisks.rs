//! Integration tests against the real udisksd and udevd, with ext4 (and LUKS) image files
//! attached as loop devices through UDisks2's `Manager.LoopSetup`.
//!
//! The services are started by `.ci/disk-services.sh`. Without them every test reports itself
//! as skipped through `burrow_testkit::missing` (a failure under `CI=true`). The tests share
//! fixed UUIDs and loop devices, so they run one at a time behind `SERIAL`.

// A test reads as one scenario from top to bottom: longer than library functions may be.
#![allow(clippy::too_many_lines)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use burrow_core::disk::{DiskError, DiskEvent, DiskManager, MountCheck, Release, Volume};
use burrow_core::guard;
use burrow_disk::{DiskSettings, UDisks2Manager};
use zbus::zvariant::{Fd, OwnedObjectPath, Value};

const KEY_UUID: &str = "3f9b1c52-7d0e-4a8b-9c61-2e5f0a7d4b13";
const DISK_UUID: &str = "a81e6d07-52c4-4f3a-b9e2-6c0d18f7a925";
const LUKS_UUID: &str = "d2c7f4a9-0b6e-4e15-8a3d-97c5b1e0f468";
const ALL_UUIDS: [&str; 3] = [KEY_UUID, DISK_UUID, LUKS_UUID];
const KEY_FILE: &str = "keys/backup.key";

// An async mutex: the guard is held across awaits, and each test has its own runtime.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[zbus::proxy(
    interface = "org.freedesktop.UDisks2.Manager",
    default_service = "org.freedesktop.UDisks2",
    default_path = "/org/freedesktop/UDisks2/Manager"
)]
trait TestManager {
    fn loop_setup(
        &self,
        fd: Fd<'_>,
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    fn resolve_device(
        &self,
        devspec: HashMap<&str, Value<'_>>,
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<Vec<OwnedObjectPath>>;
}

#[zbus::proxy(
    interface = "org.freedesktop.UDisks2.Loop",
    default_service = "org.freedesktop.UDisks2"
)]
trait TestLoop {
    fn delete(&self, options: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.UDisks2.Block",
    default_service = "org.freedesktop.UDisks2"
)]
trait TestBlock {
    #[zbus(property)]
    fn device(&self) -> zbus::Result<Vec<u8>>;
    #[zbus(property, name = "IdUUID")]
    fn id_uuid(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.UDisks2.Filesystem",
    default_service = "org.freedesktop.UDisks2"
)]
trait TestFilesystem {
    fn unmount(&self, options: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    #[zbus(property)]
    fn mount_points(&self) -> zbus::Result<Vec<Vec<u8>>>;
}

/// Locks the tests against each other and checks the services; `None` means "skip".
async fn setup() -> Option<tokio::sync::MutexGuard<'static, ()>> {
    let serial = SERIAL.lock().await;
    init_log_capture();
    for tool in ["mkfs.ext4"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            burrow_testkit::missing(tool, "install e2fsprogs");
            return None;
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        burrow_testkit::missing("loop devices", "/dev/loop-control does not exist");
        return None;
    }
    let conn = match zbus::Connection::system().await {
        Ok(c) => c,
        Err(e) => {
            burrow_testkit::missing("system D-Bus", &format!("{e}; run .ci/disk-services.sh"));
            return None;
        }
    };
    let owned = async {
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let name = zbus::names::BusName::try_from("org.freedesktop.UDisks2")?;
        dbus.name_has_owner(name).await.map_err(zbus::Error::from)
    }
    .await;
    if !matches!(owned, Ok(true)) {
        burrow_testkit::missing(
            "udisksd",
            "org.freedesktop.UDisks2 is not on the system bus; run .ci/disk-services.sh",
        );
        return None;
    }
    sweep_stale_loops(&conn).await;
    Some(serial)
}

/// A loop device attached through UDisks2. Dropping it unmounts and detaches it, also when the
/// test panicked; if D-Bus cleanup fails it falls back to umount/losetup.
struct LoopImage {
    object: String,
    device: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopImage {
    /// Attaches `image` (inside `dir`, which the guard keeps alive) and waits until UDisks2 has
    /// probed it and shows `uuid`.
    async fn attach(dir: tempfile::TempDir, image: &Path, uuid: &str) -> LoopImage {
        let conn = zbus::Connection::system().await.unwrap();
        let mgr = TestManagerProxy::new(&conn).await.unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .unwrap();
        let mut opts = HashMap::new();
        opts.insert("auth.no_user_interaction", Value::from(true));
        let object = mgr
            .loop_setup(Fd::from(&file), opts)
            .await
            .unwrap()
            .as_str()
            .to_owned();
        let block = TestBlockProxy::builder(&conn)
            .path(object.clone())
            .unwrap()
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
        let mut dev = block.device().await.unwrap();
        while dev.last() == Some(&0) {
            dev.pop();
        }
        let me = LoopImage {
            object,
            device: PathBuf::from(String::from_utf8(dev).unwrap()),
            _dir: dir,
        };
        for _ in 0..100 {
            if block.id_uuid().await.unwrap_or_default() == uuid {
                return me;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "UDisks2 did not report UUID {uuid} on {} within 10 s",
            me.device.display()
        );
    }
}

impl Drop for LoopImage {
    fn drop(&mut self) {
        let object = self.object.clone();
        let device = self.device.clone();
        // Drop cannot await, and may run inside the test's runtime: clean up on a fresh thread
        // with its own runtime.
        let ok = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(detach(&object)).ok()
        })
        .join()
        .ok()
        .flatten()
        .is_some();
        if !ok {
            eprintln!(
                "D-Bus cleanup of {} failed; falling back to umount + losetup -d",
                device.display()
            );
            for mp in mount_points_of(&device) {
                let _ = Command::new("umount").arg("-l").arg(&mp).status();
            }
            let _ = Command::new("losetup").arg("-d").arg(&device).status();
        }
    }
}

/// Unmounts (if mounted) and deletes the loop object.
async fn detach(object: &str) -> zbus::Result<()> {
    let conn = zbus::Connection::system().await?;
    let fs = TestFilesystemProxy::builder(&conn)
        .path(object)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    if fs.mount_points().await.is_ok_and(|m| !m.is_empty()) {
        let mut o = HashMap::new();
        o.insert("force", Value::from(true));
        fs.unmount(o).await?;
    }
    let lo = TestLoopProxy::builder(&conn).path(object)?.build().await?;
    lo.delete(HashMap::new()).await
}

/// Detaches loop devices left behind with the tests' UUIDs by an earlier, killed run.
async fn sweep_stale_loops(conn: &zbus::Connection) {
    let Ok(mgr) = TestManagerProxy::new(conn).await else {
        return;
    };
    for uuid in ALL_UUIDS {
        let mut spec = HashMap::new();
        spec.insert("uuid", Value::from(uuid));
        let Ok(objects) = mgr.resolve_device(spec, HashMap::new()).await else {
            continue;
        };
        for o in objects {
            if o.as_str().contains("/block_devices/loop") {
                eprintln!("detaching stale test loop device {}", o.as_str());
                let _ = detach(o.as_str()).await;
            }
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 16 MiB ext4 image with `uuid`, populated from `files` (path, contents, mode).
fn ext4_image(uuid: &str, files: &[(&str, &[u8], u32)]) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    for (p, data, mode) in files {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, data).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let img = dir.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", uuid, "-d"])
        .arg(&root)
        .arg(&img));
    (dir, img)
}

/// A LUKS2 container (header only; no dm-crypt needed to create it) opened by `key`.
fn luks_image(uuid: &str, key: &[u8]) -> Option<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("luks.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let keyf = dir.path().join("k");
    std::fs::File::create(&keyf)
        .unwrap()
        .write_all(key)
        .unwrap();
    // Cheap key derivation: the test is about plumbing, not brute-force resistance.
    let out = Command::new("cryptsetup")
        .args([
            "luksFormat",
            "-q",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--uuid",
            uuid,
        ])
        .arg(&img)
        .arg(&keyf)
        .output();
    std::fs::remove_file(&keyf).unwrap();
    match out {
        Ok(o) if o.status.success() => Some((dir, img)),
        Ok(o) => panic!(
            "cryptsetup luksFormat failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            burrow_testkit::missing(
                "cryptsetup",
                &format!("{e}; apt-get install cryptsetup-bin"),
            );
            None
        }
    }
}

/// Whether the kernel's device-mapper answers. The node /dev/mapper/control can exist (udev
/// creates it from the static node list) while the driver is missing, so open it.
fn device_mapper() -> Result<(), String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "no usable device-mapper (opening /dev/mapper/control: {e}), so dm-crypt cannot \
             run here"
        )),
    }
}

fn settings() -> DiskSettings {
    let mut s = DiskSettings::new(KEY_UUID, KEY_FILE, DISK_UUID);
    s.spinup_timeout = Duration::from_secs(10);
    s
}

/// Mount options of the topmost mount at `mp`, from /proc/self/mountinfo.
fn mount_options(mp: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .rev()
        .find(|l| l.split(' ').nth(4).map(Path::new) == Some(mp))
        .and_then(|l| l.split(' ').nth(5).map(str::to_owned))
}

fn mount_points_of(device: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mp = left.split(' ').nth(4)?;
            (right.split(' ').nth(1).map(Path::new) == Some(device)).then(|| PathBuf::from(mp))
        })
        .collect()
}

/// Captured log output of all tests (tracing's global subscriber), to check warnings.
fn init_log_capture() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(|| LogSink)
            .try_init();
    });
}

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogSink;

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn take_log() -> String {
    let mut l = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let s = String::from_utf8_lossy(&l).into_owned();
    l.clear();
    s
}

#[tokio::test]
async fn plain_disk_is_mounted_reused_guarded_and_released() {
    let Some(_serial) = setup().await else { return };
    let (dir, img) = ext4_image(DISK_UUID, &[]);
    let disk = LoopImage::attach(dir, &img, DISK_UUID).await;

    // The key stick is absent: an unencrypted disk does not need it.
    let mgr = UDisks2Manager::connect(settings()).await.unwrap();
    let v = mgr.ensure_ready().await.unwrap();
    assert_eq!(v.device, disk.device);
    assert_eq!(v.fs_uuid, DISK_UUID);
    assert!(!v.encrypted);
    let opts = mount_options(&v.mount_point).expect("mounted");
    for o in ["nosuid", "nodev", "noexec", "rw"] {
        assert!(opts.split(',').any(|x| x == o), "{o} missing in {opts}");
    }

    // Idempotent, also from a second manager started later (start-up reconciliation).
    assert_eq!(mgr.ensure_ready().await.unwrap(), v);
    let mgr2 = UDisks2Manager::connect(settings()).await.unwrap();
    assert_eq!(mgr2.ensure_ready().await.unwrap(), v);
    assert_eq!(mount_points_of(&disk.device), vec![v.mount_point.clone()]);

    let st = mgr.state().await;
    assert!(st.disk_present && st.unlocked && !st.key_present);
    assert_eq!(st.mount_point.as_ref(), Some(&v.mount_point));
    assert!(st.free_bytes.unwrap() > 1 << 20);

    // The guard accepts paths on the volume and creates nothing.
    let repo = guard::resolve_repo_path(&v, Path::new("burrow/repo"), MountCheck::Kernel).unwrap();
    assert_eq!(repo, v.mount_point.join("burrow/repo"));
    assert!(!v.mount_point.join("burrow").exists());
    assert_eq!(
        guard::resolve_repo_path(&v, &v.mount_point.join("r"), MountCheck::Kernel).unwrap(),
        v.mount_point.join("r")
    );
    assert!(matches!(
        guard::resolve_repo_path(&v, Path::new("/srv/repo"), MountCheck::Kernel),
        Err(DiskError::WrongDisk(_))
    ));
    assert!(matches!(
        guard::resolve_repo_path(&v, Path::new("../x"), MountCheck::Kernel),
        Err(DiskError::WrongDisk(_))
    ));
    let wrong_dev = Volume {
        device: PathBuf::from("/dev/loop-control-not-a-block-device"),
        ..v.clone()
    };
    assert!(guard::resolve_repo_path(&wrong_dev, Path::new("r"), MountCheck::Kernel).is_err());
    assert!(guard::same_filesystem(&v.mount_point, &v.mount_point));
    assert!(!guard::same_filesystem(Path::new("/"), &v.mount_point));

    // Marker.
    assert!(matches!(
        guard::check_marker(&v, "repo-1", MountCheck::Kernel),
        Err(DiskError::WrongDisk(m)) if m.contains("burrow init")
    ));
    guard::write_marker(&v, "repo-1", MountCheck::Kernel).unwrap();
    guard::check_marker(&v, "repo-1", MountCheck::Kernel).unwrap();
    assert!(matches!(
        guard::check_marker(&v, "repo-2", MountCheck::Kernel),
        Err(DiskError::WrongDisk(m)) if m.contains("repo-1") && m.contains("repo-2")
    ));

    // Release: unmount, then again (idempotent); lock/power-off of a plain loop disk is a no-op
    // beyond unmounting.
    let unmount = Release {
        unmount: true,
        ..Default::default()
    };
    mgr.release(unmount).await.unwrap();
    assert!(mount_points_of(&disk.device).is_empty());
    assert_eq!(mgr.state().await.mount_point, None);
    mgr.release(unmount).await.unwrap();
    // The old volume is no longer verified: nothing may be written to the empty directory.
    assert!(guard::resolve_repo_path(&v, Path::new("repo"), MountCheck::Kernel).is_err());
    assert!(guard::write_marker(&v, "repo-1", MountCheck::Kernel).is_err());

    let v2 = mgr.ensure_ready().await.unwrap();
    guard::check_marker(&v2, "repo-1", MountCheck::Kernel).unwrap();
    mgr.release(Release {
        unmount: true,
        lock: true,
        power_off: true,
    })
    .await
    .unwrap();
    assert!(mount_points_of(&disk.device).is_empty());
    drop(disk);
}

#[tokio::test]
async fn absent_disk_is_disk_absent() {
    let Some(_serial) = setup().await else { return };
    let mgr = UDisks2Manager::connect(settings()).await.unwrap();
    assert_eq!(
        mgr.ensure_ready().await,
        Err(DiskError::DiskAbsent(DISK_UUID.into()))
    );
    let st = mgr.state().await;
    assert!(!st.disk_present && !st.key_present && st.mount_point.is_none());
    assert_eq!(
        mgr.key_mount().await,
        Err(DiskError::KeyAbsent(KEY_UUID.into()))
    );
    // Nothing to release is fine.
    mgr.release(Release {
        unmount: true,
        lock: true,
        power_off: true,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn luks_disk_needs_the_key_stick_and_reads_the_key() {
    let Some(_serial) = setup().await else { return };
    let key: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    let Some((dir, img)) = luks_image(LUKS_UUID, &key) else {
        return;
    };
    let luks = LoopImage::attach(dir, &img, LUKS_UUID).await;
    let mut s = settings();
    s.backup_uuid = LUKS_UUID.into();
    let mgr = UDisks2Manager::connect(s.clone()).await.unwrap();

    // Locked container, no key stick.
    assert_eq!(
        mgr.ensure_ready().await,
        Err(DiskError::KeyAbsent(KEY_UUID.into()))
    );
    let st = mgr.state().await;
    assert!(st.disk_present && !st.unlocked && !st.key_present);

    // A key stick without the key file.
    let (dir, kimg) = ext4_image(KEY_UUID, &[("other", b"x", 0o400)]);
    let stick = LoopImage::attach(dir, &kimg, KEY_UUID).await;
    let e = mgr.ensure_ready().await.unwrap_err();
    assert!(
        matches!(&e, DiskError::Failed(m) if m.contains("keys/backup.key") && m.contains("not found")),
        "{e:?}"
    );
    let st = mgr.state().await;
    let key_mp = st.key_mount.clone().expect("key stick mounted");
    assert_eq!(mgr.key_mount().await.unwrap(), key_mp);
    let opts = mount_options(&key_mp).unwrap();
    assert!(
        opts.split(',').next() == Some("ro") && opts.contains("noexec"),
        "{opts}"
    );
    drop(stick);

    // The right key, but readable by everyone: warned about, never logged.
    take_log();
    let (dir, kimg) = ext4_image(KEY_UUID, &[(KEY_FILE, &key, 0o644)]);
    let stick = LoopImage::attach(dir, &kimg, KEY_UUID).await;
    let result = mgr.ensure_ready().await;
    let log = take_log();
    assert!(
        log.contains("key file is readable by group or others"),
        "{log}"
    );
    assert!(mgr.state().await.key_present);
    match device_mapper() {
        Ok(()) => {
            let v = result.expect("unlock with the right key");
            assert!(v.encrypted);
            assert_eq!(mgr.ensure_ready().await.unwrap(), v);
            mgr.release(Release {
                lock: true,
                ..Default::default()
            })
            .await
            .unwrap();
            assert!(!mgr.state().await.unlocked);
        }
        Err(why) => {
            // The request reached UDisks2 with the key; only the kernel part cannot run here.
            let e = result.unwrap_err();
            assert!(
                matches!(&e, DiskError::Failed(m) if m.starts_with("unlocking LUKS container")),
                "{e:?}"
            );
            eprintln!("\n*** SKIPPED (partly): real LUKS unlock: {why}; UDisks2 answered: {e}\n");
        }
    }
    drop(stick);

    // A wrong key is named as such (needs device-mapper to be tried at all).
    if let Err(why) = device_mapper() {
        eprintln!("*** SKIPPED: wrong-key unlock: {why}");
    } else {
        mgr.release(Release {
            lock: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let (dir, kimg) = ext4_image(KEY_UUID, &[(KEY_FILE, b"wrong key", 0o400)]);
        let _stick = LoopImage::attach(dir, &kimg, KEY_UUID).await;
        let e = mgr.ensure_ready().await.unwrap_err();
        assert!(
            matches!(&e, DiskError::Failed(m) if m.contains("does not open LUKS container")),
            "{e:?}"
        );
    }
    drop(luks);
}

#[tokio::test]
async fn hot_plug_events_are_reported() {
    let Some(_serial) = setup().await else { return };
    let mgr = UDisks2Manager::connect(settings()).await.unwrap();
    let next = || async {
        tokio::time::timeout(Duration::from_secs(10), mgr.next_event())
            .await
            .expect("no disk event within 10 s")
    };

    let (dir, kimg) = ext4_image(KEY_UUID, &[(KEY_FILE, b"k", 0o400)]);
    let stick = LoopImage::attach(dir, &kimg, KEY_UUID).await;
    assert_eq!(next().await, Some(DiskEvent::KeyAdded));

    let (dir, dimg) = ext4_image(DISK_UUID, &[]);
    let disk = LoopImage::attach(dir, &dimg, DISK_UUID).await;
    assert_eq!(next().await, Some(DiskEvent::DiskAdded));

    drop(stick);
    assert_eq!(next().await, Some(DiskEvent::KeyRemoved));

    // A mounted disk that goes away is reported too.
    let v = mgr.ensure_ready().await.unwrap();
    assert_eq!(v.fs_uuid, DISK_UUID);
    drop(disk);
    assert_eq!(next().await, Some(DiskEvent::DiskRemoved));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), mgr.next_event())
            .await
            .is_err(),
        "no further events expected"
    );
}
