//! [`UDisks2Manager`]: the real [`DiskManager`], driving UDisks2 over the system bus and
//! listening to udev.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use burrow_core::disk::{DiskError, DiskEvent, DiskManager, DiskState, Release, Volume};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use zbus::proxy::CacheProperties;
use zbus::zvariant::Value;

use crate::settings::DiskSettings;
use crate::udisks::{
    self, BlockInfo, DriveProxy, EncryptedProxy, FilesystemProxy, Options, Snapshot, dbus_error,
    error_name, error_text,
};

const KEY_MOUNT_OPTIONS: &str = "ro,nosuid,nodev,noexec";
const DISK_MOUNT_OPTIONS: &str = "nosuid,nodev,noexec";
/// LUKS refuses key files above 8 MiB by default; anything bigger is not a key file.
const MAX_KEY_BYTES: u64 = 8 << 20;
/// How long UDisks2 may take to publish the filesystem of a freshly unlocked container.
const CLEARTEXT_WAIT: Duration = Duration::from_secs(10);
const ERR_ALREADY_MOUNTED: &str = "org.freedesktop.UDisks2.Error.AlreadyMounted";
const ERR_NOT_MOUNTED: &str = "org.freedesktop.UDisks2.Error.NotMounted";
const ERR_BUSY: &str = "org.freedesktop.UDisks2.Error.DeviceBusy";

/// The backup disk and key stick, managed through UDisks2 (unlock, mount, unmount, lock,
/// power off) with hot-plug events from udev.
///
/// Every step first looks at what is already there and reuses it, so start-up after a crash, a
/// disk unlocked by hand or a second `ensure_ready` redo nothing.
pub struct UDisks2Manager {
    conn: zbus::Connection,
    settings: DiskSettings,
    /// Serialises the steps that change disk state, so two callers never race UDisks2.
    ops: Mutex<()>,
    events: Mutex<mpsc::Receiver<DiskEvent>>,
    monitor: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for UDisks2Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UDisks2Manager")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Drop for UDisks2Manager {
    fn drop(&mut self) {
        if let Some(m) = &self.monitor {
            m.abort();
        }
    }
}

/// Key file contents, wiped when dropped so they do not linger in freed memory.
struct KeyBytes(Vec<u8>);

impl Drop for KeyBytes {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&self.0);
    }
}

impl UDisks2Manager {
    /// Connects to the system bus, checks that UDisks2 answers, starts the udev monitor and logs
    /// what is already present, unlocked and mounted (which later steps reuse).
    ///
    /// Must be called inside a tokio runtime. If udev cannot be monitored the manager still
    /// works, but [`DiskManager::next_event`] returns `None`.
    pub async fn connect(settings: DiskSettings) -> Result<Self, DiskError> {
        // Mounting a disk that has to spin up first can block UDisks2 for a while.
        let timeout = settings.spinup_timeout + Duration::from_secs(120);
        let conn = zbus::connection::Builder::system()
            .map_err(|e| bus_unreachable(&e))?
            .method_timeout(timeout)
            .build()
            .await
            .map_err(|e| bus_unreachable(&e))?;
        udisks::snapshot(&conn).await?;

        let (tx, rx) = mpsc::channel(64);
        let monitor = match crate::monitor::spawn(&settings, tx) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(
                    "cannot monitor udev for hot-plug events: {e}; plug events are not reported"
                );
                None
            }
        };
        let me = Self {
            conn,
            settings,
            ops: Mutex::new(()),
            events: Mutex::new(rx),
            monitor,
        };
        let s = me.state().await;
        tracing::info!(
            key_present = s.key_present,
            key_mount = ?s.key_mount,
            disk_present = s.disk_present,
            unlocked = s.unlocked,
            mount_point = ?s.mount_point,
            "disk state at start-up"
        );
        Ok(me)
    }

    /// The settings this manager was created with.
    pub fn settings(&self) -> &DiskSettings {
        &self.settings
    }

    async fn snapshot(&self) -> Result<Snapshot, DiskError> {
        udisks::snapshot(&self.conn).await
    }

    async fn ready(&self) -> Result<Volume, DiskError> {
        let _serial = self.ops.lock().await;
        let uuid = &self.settings.backup_uuid;
        let snap = self.snapshot().await?;
        let Some(disk) = snap.by_uuid(uuid).cloned() else {
            return Err(DiskError::DiskAbsent(uuid.clone()));
        };
        let (fs_block, encrypted) = if disk.is_luks() {
            match snap.cleartext_of(&disk) {
                Some(clear) => {
                    tracing::debug!(device = %clear.device.display(), "backup disk already unlocked");
                    (clear.clone(), true)
                }
                None => {
                    let key = self.read_key(&snap).await?;
                    (self.unlock(&disk, &key).await?, true)
                }
            }
        } else {
            (disk, false)
        };
        if fs_block.mount_points.is_none() {
            return Err(DiskError::Failed(format!(
                "{} (UUID {uuid}) holds no filesystem UDisks2 can mount (type {:?}); format it \
                 or check backup_uuid",
                fs_block.device.display(),
                fs_block.id_type
            )));
        }
        let mount_point = match fs_block.first_mount() {
            Some(mp) => {
                tracing::debug!(mount_point = %mp.display(), "backup disk already mounted");
                mp
            }
            None => self.mount(&fs_block, DISK_MOUNT_OPTIONS).await?,
        };
        let volume = Volume {
            mount_point,
            device: fs_block.device.clone(),
            fs_uuid: fs_block.id_uuid.clone(),
            encrypted,
        };
        wake(&volume.mount_point, self.settings.spinup_timeout).await?;
        Ok(volume)
    }

    /// Finds the key stick and mounts it read-only, or reuses its existing mount.
    async fn mount_key(&self, snap: &Snapshot) -> Result<PathBuf, DiskError> {
        let uuid = &self.settings.key_fs_uuid;
        let Some(stick) = snap.by_uuid(uuid) else {
            return Err(DiskError::KeyAbsent(uuid.clone()));
        };
        if stick.mount_points.is_none() {
            return Err(DiskError::Failed(format!(
                "key stick {} (UUID {uuid}) holds no mountable filesystem (type {:?}); check \
                 key_fs_uuid",
                stick.device.display(),
                stick.id_type
            )));
        }
        match stick.first_mount() {
            Some(mp) => Ok(mp),
            None => self.mount(stick, KEY_MOUNT_OPTIONS).await,
        }
    }

    /// Mounts the key stick (see `mount_key`), then reads the key file.
    async fn read_key(&self, snap: &Snapshot) -> Result<KeyBytes, DiskError> {
        let mp = self.mount_key(snap).await?;
        let path = key_path(&mp, &self.settings.key_file)?;
        let uuid = self.settings.key_fs_uuid.clone();
        tokio::task::spawn_blocking(move || read_key_file(&path, &uuid))
            .await
            .map_err(|e| DiskError::Failed(format!("reading the key file failed: {e}")))?
    }

    async fn unlock(&self, luks: &BlockInfo, key: &KeyBytes) -> Result<BlockInfo, DiskError> {
        let proxy = self
            .proxy::<EncryptedProxy>(luks.path.as_str(), "addressing the LUKS container")
            .await?;
        let mut opts = no_interaction();
        opts.insert("keyfile_contents", Value::from(key.0.clone()));
        tracing::info!(device = %luks.device.display(), "unlocking the backup disk");
        let clear_path = match proxy.unlock("", opts).await {
            Ok(p) => p.as_str().to_owned(),
            Err(e) => {
                // Someone else may have unlocked it in the meantime: that is success.
                if let Ok(snap) = self.snapshot().await
                    && let Some(l) = snap.by_path(&luks.path)
                    && let Some(c) = snap.cleartext_of(l)
                {
                    return Ok(c.clone());
                }
                return Err(unlock_error(luks, &self.settings, &e));
            }
        };
        // UDisks2 returns once the cleartext block exists; its Filesystem interface follows
        // after udev has probed it.
        let deadline = Instant::now() + CLEARTEXT_WAIT;
        loop {
            let snap = self.snapshot().await?;
            if let Some(c) = snap.by_path(&clear_path)
                && (c.mount_points.is_some() || Instant::now() >= deadline)
            {
                return Ok(c.clone());
            }
            if Instant::now() >= deadline {
                return Err(DiskError::Failed(format!(
                    "unlocked {} but its cleartext device {clear_path} did not appear within {}s",
                    luks.device.display(),
                    CLEARTEXT_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn mount(&self, block: &BlockInfo, options: &str) -> Result<PathBuf, DiskError> {
        let doing = format!("mounting {}", block.device.display());
        let proxy = self
            .proxy::<FilesystemProxy>(block.path.as_str(), &doing)
            .await?;
        let mut opts = no_interaction();
        opts.insert("options", Value::from(options));
        match proxy.mount(opts).await {
            Ok(mp) => {
                tracing::info!(device = %block.device.display(), mount_point = %mp, options, "mounted");
                Ok(PathBuf::from(mp))
            }
            Err(e) if error_name(&e) == Some(ERR_ALREADY_MOUNTED) => {
                let snap = self.snapshot().await?;
                snap.by_path(&block.path)
                    .and_then(BlockInfo::first_mount)
                    .ok_or_else(|| dbus_error(&doing, e))
            }
            Err(e) => Err(dbus_error(&doing, e)),
        }
    }

    /// A proxy for the UDisks2 object at `path`, without a property cache (the state is read
    /// fresh every time). `doing` names the step in the error.
    async fn proxy<'a, P>(&'a self, path: &'a str, doing: &str) -> Result<P, DiskError>
    where
        P: From<zbus::Proxy<'a>> + zbus::proxy::Defaults,
    {
        zbus::proxy::Builder::<P>::new(&self.conn)
            .path(path)
            .map_err(|e| dbus_error(doing, e))?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| dbus_error(doing, e))
    }

    async fn unmount(&self, block: &BlockInfo) -> Result<(), DiskError> {
        let doing = format!("unmounting {}", block.device.display());
        let proxy = self
            .proxy::<FilesystemProxy>(block.path.as_str(), &doing)
            .await?;
        match proxy.unmount(no_interaction()).await {
            Ok(()) => {
                tracing::info!(device = %block.device.display(), "unmounted");
                Ok(())
            }
            Err(e) if error_name(&e) == Some(ERR_NOT_MOUNTED) => Ok(()),
            Err(e) if error_name(&e) == Some(ERR_BUSY) => Err(DiskError::Failed(format!(
                "cannot unmount {}: it is busy ({}); stop the processes using {} and retry",
                block.device.display(),
                error_text(&e),
                block.first_mount().unwrap_or_default().display()
            ))),
            Err(e) => Err(dbus_error(&doing, e)),
        }
    }

    async fn lock(&self, luks: &BlockInfo) -> Result<(), DiskError> {
        let doing = format!("locking {}", luks.device.display());
        let proxy = self
            .proxy::<EncryptedProxy>(luks.path.as_str(), &doing)
            .await?;
        match proxy.lock(no_interaction()).await {
            Ok(()) => {
                tracing::info!(device = %luks.device.display(), "locked");
                Ok(())
            }
            Err(e) => {
                // Locked by someone else meanwhile counts as done.
                let snap = self.snapshot().await?;
                match snap.by_path(&luks.path) {
                    Some(l) if snap.cleartext_of(l).is_some() => Err(dbus_error(&doing, e)),
                    _ => Ok(()),
                }
            }
        }
    }

    async fn power_off(&self, disk: &BlockInfo, snap: &Snapshot) -> Result<(), DiskError> {
        let Some(drive) = &disk.drive else {
            tracing::debug!(device = %disk.device.display(), "no drive behind this device; nothing to power off");
            return Ok(());
        };
        if !snap.drives.get(drive).is_some_and(|d| d.can_power_off) {
            tracing::warn!(device = %disk.device.display(), "the drive cannot be powered off; leaving it on");
            return Ok(());
        }
        let doing = format!("powering off the drive of {}", disk.device.display());
        let proxy = self.proxy::<DriveProxy>(drive.as_str(), &doing).await?;
        proxy
            .power_off(no_interaction())
            .await
            .map_err(|e| dbus_error(&doing, e))?;
        tracing::info!(device = %disk.device.display(), "powered off");
        Ok(())
    }

    async fn do_release(&self, what: Release) -> Result<(), DiskError> {
        let _serial = self.ops.lock().await;
        let snap = self.snapshot().await?;
        let Some(disk) = snap.by_uuid(&self.settings.backup_uuid) else {
            return Ok(());
        };
        // A container cannot be locked while mounted, and a drive must not lose power with a
        // filesystem or container open on it.
        let lock = what.lock || what.power_off;
        let unmount = what.unmount || lock;
        let luks = disk.is_luks();
        let fs_block = if luks {
            snap.cleartext_of(disk)
        } else {
            Some(disk)
        };
        if unmount
            && let Some(fs) = fs_block
            && fs.first_mount().is_some()
        {
            self.unmount(fs).await?;
        }
        if lock && luks && fs_block.is_some() {
            self.lock(disk).await?;
        }
        if what.power_off {
            let snap = self.snapshot().await?;
            if let Some(disk) = snap.by_uuid(&self.settings.backup_uuid) {
                self.power_off(disk, &snap).await?;
            }
        }
        Ok(())
    }

    async fn current_state(&self) -> DiskState {
        let snap = match self.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot read disk state: {e}");
                return DiskState::default();
            }
        };
        let mut st = DiskState::default();
        if let Some(key) = snap.by_uuid(&self.settings.key_fs_uuid) {
            st.key_present = true;
            st.key_mount = key.first_mount();
        }
        if let Some(disk) = snap.by_uuid(&self.settings.backup_uuid) {
            st.disk_present = true;
            st.encrypted = disk.is_luks();
            let fs = if disk.is_luks() {
                snap.cleartext_of(disk)
            } else {
                Some(disk)
            };
            // A plain filesystem has nothing to unlock, so it counts as unlocked.
            st.unlocked = fs.is_some();
            st.mount_point = fs.and_then(BlockInfo::first_mount);
        }
        if let Some(mp) = st.mount_point.clone() {
            st.free_bytes = free_bytes(mp).await;
        }
        st
    }
}

impl DiskManager for UDisks2Manager {
    async fn ensure_ready(&self) -> Result<Volume, DiskError> {
        self.ready().await
    }

    async fn key_mount(&self) -> Result<PathBuf, DiskError> {
        let _serial = self.ops.lock().await;
        let snap = self.snapshot().await?;
        self.mount_key(&snap).await
    }

    async fn state(&self) -> DiskState {
        self.current_state().await
    }

    async fn release(&self, what: Release) -> Result<(), DiskError> {
        self.do_release(what).await
    }

    async fn next_event(&self) -> Option<DiskEvent> {
        self.events.lock().await.recv().await
    }
}

fn no_interaction() -> Options<'static> {
    let mut o = Options::new();
    o.insert("auth.no_user_interaction", Value::from(true));
    o
}

fn bus_unreachable(e: &zbus::Error) -> DiskError {
    DiskError::Failed(format!(
        "cannot connect to the system D-Bus: {e}; start dbus (and udisks2), or run the daemon \
         with --sim"
    ))
}

fn unlock_error(luks: &BlockInfo, settings: &DiskSettings, e: &zbus::Error) -> DiskError {
    let text = error_text(e);
    let lower = text.to_ascii_lowercase();
    // libblockdev/cryptsetup report a wrong key as a bad passphrase or "no key available".
    if lower.contains("passphrase")
        || lower.contains("no key available")
        || lower.contains("no usable keyslot")
    {
        DiskError::Failed(format!(
            "the key file {} on key stick {} does not open LUKS container {} ({}): {text}; add \
             it with `cryptsetup luksAddKey` or fix key_file",
            settings.key_file.display(),
            settings.key_fs_uuid,
            settings.backup_uuid,
            luks.device.display()
        ))
    } else if lower.contains("not implemented") {
        // libblockdev without its crypto plugin: "The function 'bd_crypto_luks_open_blob'
        // called, but not implemented!". UDisks2 only recommends the plugin package.
        DiskError::Failed(format!(
            "UDisks2 cannot unlock LUKS container {} ({}): its LUKS plugin is not installed \
             ({text}); install libblockdev-crypto2 (Debian 12) or libblockdev-crypto3 \
             (Debian 13), then `systemctl restart udisks2`",
            settings.backup_uuid,
            luks.device.display()
        ))
    } else {
        DiskError::Failed(format!(
            "unlocking LUKS container {} ({}) failed: {text}",
            settings.backup_uuid,
            luks.device.display()
        ))
    }
}

/// The key file below the stick's mount point; `..` is refused so the key cannot come from
/// anywhere but the stick.
fn key_path(mount_point: &Path, key_file: &Path) -> Result<PathBuf, DiskError> {
    let mut out = mount_point.to_path_buf();
    for c in key_file.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(DiskError::Failed(format!(
                    "key_file {} must be a path on the key stick without `..`",
                    key_file.display()
                )));
            }
        }
    }
    if out == mount_point {
        return Err(DiskError::Failed(
            "key_file is empty; set it to the key file's path on the key stick".into(),
        ));
    }
    Ok(out)
}

fn read_key_file(path: &Path, stick_uuid: &str) -> Result<KeyBytes, DiskError> {
    use std::os::unix::fs::PermissionsExt;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DiskError::Failed(format!(
                "key file {} not found on key stick {stick_uuid}; copy the LUKS key file there \
                 or fix key_file",
                path.display()
            )));
        }
        Err(e) => {
            return Err(DiskError::Failed(format!(
                "cannot open key file {}: {e}",
                path.display()
            )));
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| DiskError::Failed(format!("cannot stat key file {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(DiskError::Failed(format!(
            "key file {} is not a regular file; point key_file at the key file",
            path.display()
        )));
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", mode & 0o7777),
            "key file is readable by group or others; `chmod 400` it"
        );
    }
    let mut buf = KeyBytes(Vec::with_capacity(meta.len().min(MAX_KEY_BYTES) as usize));
    file.take(MAX_KEY_BYTES + 1)
        .read_to_end(&mut buf.0)
        .map_err(|e| DiskError::Failed(format!("cannot read key file {}: {e}", path.display())))?;
    if buf.0.is_empty() || buf.0.len() as u64 > MAX_KEY_BYTES {
        return Err(DiskError::Failed(format!(
            "key file {} is {}; a LUKS key file holds 1 byte to 8 MiB",
            path.display(),
            if buf.0.is_empty() {
                "empty"
            } else {
                "larger than 8 MiB"
            }
        )));
    }
    Ok(buf)
}

/// Makes sure a (possibly sleeping) disk answers: statvfs and a directory read, retried until
/// `timeout`. A probe stuck in the kernel cannot be cancelled; its thread is left behind and
/// the caller gets an error instead of hanging.
async fn wake(mount_point: &Path, timeout: Duration) -> Result<(), DiskError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mp = mount_point.to_path_buf();
        let probe = tokio::task::spawn_blocking(move || -> io::Result<()> {
            nix::sys::statvfs::statvfs(&mp).map_err(io::Error::from)?;
            std::fs::read_dir(&mp)?.next().transpose()?;
            Ok(())
        });
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match tokio::time::timeout(left, probe).await {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        if Instant::now() + Duration::from_secs(1) >= deadline {
            return Err(DiskError::Failed(format!(
                "the backup disk at {} did not answer within {}s ({err}); it may be failing or \
                 need more time to spin up (raise spinup_timeout)",
                mount_point.display(),
                timeout.as_secs()
            )));
        }
        tracing::debug!(mount_point = %mount_point.display(), "disk not answering yet: {err}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn free_bytes(mp: PathBuf) -> Option<u64> {
    let probe = tokio::task::spawn_blocking(move || free_space(&mp));
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(Ok(n))) => Some(n),
        _ => None,
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    nix::sys::statvfs::statvfs(path)
        .map(|s| available_bytes(&s))
        .map_err(io::Error::from)
}

/// Where libblockdev's crypto plugin is installed, if it is: without it UDisks2 cannot unlock
/// LUKS ("bd_crypto_luks_open_blob called, but not implemented"). Debian ships it as
/// libblockdev-crypto2 (`libbd_crypto.so.2`, Debian 12) or libblockdev-crypto3 (`.so.3`).
pub fn luks_plugin() -> Option<PathBuf> {
    luks_plugin_in(&[Path::new("/usr/lib"), Path::new("/lib")])
}

fn luks_plugin_in(roots: &[&Path]) -> Option<PathBuf> {
    let is_plugin = |name: &std::ffi::OsStr| {
        name.to_str()
            .is_some_and(|n| n.starts_with("libbd_crypto.so.") && n.len() > 16)
    };
    for root in roots {
        // The library directory itself and its multiarch subdirectories (x86_64-linux-gnu, …).
        let mut dirs = vec![root.to_path_buf()];
        if let Ok(rd) = std::fs::read_dir(root) {
            dirs.extend(
                rd.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|n| n.contains("-linux-"))
                    })
                    .map(|e| e.path()),
            );
        }
        for dir in dirs {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            if let Some(e) = rd.flatten().find(|e| is_plugin(&e.file_name())) {
                return Some(e.path());
            }
        }
    }
    None
}

/// Bytes available to unprivileged writers.
// The casts are no-ops on 64-bit targets but widen on 32-bit Raspberry Pi OS, where the
// statvfs fields are 32 bits wide.
#[allow(clippy::unnecessary_cast)]
fn available_bytes(s: &nix::sys::statvfs::Statvfs) -> u64 {
    (s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_stays_on_stick() {
        let mp = Path::new("/media/root/key");
        assert_eq!(
            key_path(mp, Path::new("file")).unwrap(),
            PathBuf::from("/media/root/key/file")
        );
        assert_eq!(
            key_path(mp, Path::new("/keys/./luks.key")).unwrap(),
            PathBuf::from("/media/root/key/keys/luks.key")
        );
        assert!(key_path(mp, Path::new("../etc/shadow")).is_err());
        assert!(key_path(mp, Path::new("")).is_err());
    }

    #[test]
    fn key_file_reading() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let e = read_key_file(&p, "u").err().unwrap();
        assert!(matches!(e, DiskError::Failed(m) if m.contains("not found on key stick u")));
        std::fs::write(&p, b"").unwrap();
        assert!(read_key_file(&p, "u").is_err());
        std::fs::write(&p, b"secret").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_key_file(&p, "u").ok().unwrap().0, b"secret");
        assert!(read_key_file(d.path(), "u").is_err());
    }

    #[tokio::test]
    async fn wake_answers_for_a_normal_dir_and_fails_for_a_missing_one() {
        let d = tempfile::tempdir().unwrap();
        wake(d.path(), Duration::from_secs(2)).await.unwrap();
        let e = wake(&d.path().join("gone"), Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(e, DiskError::Failed(m) if m.contains("did not answer within")));
    }

    #[test]
    fn the_luks_plugin_is_found_in_a_multiarch_directory() {
        let d = tempfile::tempdir().unwrap();
        let lib = d.path().join("usr/lib");
        std::fs::create_dir_all(lib.join("aarch64-linux-gnu")).unwrap();
        std::fs::write(lib.join("aarch64-linux-gnu/libbd_crypto.so"), b"").unwrap();
        // the unversioned .so is the -dev package's link, not the plugin UDisks2 loads
        assert_eq!(luks_plugin_in(&[&lib]), None);
        std::fs::write(lib.join("aarch64-linux-gnu/libbd_crypto.so.3"), b"").unwrap();
        assert_eq!(
            luks_plugin_in(&[&lib]),
            Some(lib.join("aarch64-linux-gnu/libbd_crypto.so.3"))
        );
    }

    #[test]
    fn unlock_errors_name_the_key_file() {
        let s = DiskSettings::new("k-uuid", "keyfile", "luks-uuid");
        let luks = BlockInfo {
            device: "/dev/sda1".into(),
            ..Default::default()
        };
        let e = zbus::Error::Failure("Failed to activate device: Incorrect passphrase.".into());
        let DiskError::Failed(m) = unlock_error(&luks, &s, &e) else {
            panic!()
        };
        assert!(m.contains("does not open LUKS container luks-uuid"), "{m}");
        let e = zbus::Error::Failure(
            "Error unlocking /dev/sdb: The function 'bd_crypto_luks_open_blob' called, but not \
             implemented!"
                .into(),
        );
        let DiskError::Failed(m) = unlock_error(&luks, &s, &e) else {
            panic!()
        };
        assert!(m.contains("install libblockdev-crypto2"), "{m}");
        let e = zbus::Error::Failure("Operation not permitted".into());
        let DiskError::Failed(m) = unlock_error(&luks, &s, &e) else {
            panic!()
        };
        assert!(m.starts_with("unlocking LUKS container luks-uuid"), "{m}");
    }
}
