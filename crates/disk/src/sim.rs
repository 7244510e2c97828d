//! [`SimDisk`]: an in-memory [`DiskManager`] for `burrow daemon --sim` and tests.
//!
//! A plain directory plays the mounted volume; `plug_*`/`unplug_*` play the user and produce
//! the same events the udev monitor would. It never touches a real device. Its volume is not a
//! mount point, so callers in simulation mode must not run it through [`burrow_core::guard`].

use std::path::{Path, PathBuf};
use std::sync::Mutex as StdMutex;

use burrow_core::disk::{
    DiskError, DiskEvent, DiskManager, DiskState, MountCheck, Release, Volume,
};
use tokio::sync::{Mutex, mpsc};

/// Filesystem UUID the simulated key stick reports.
pub const SIM_KEY_UUID: &str = "5eed0000-0000-4000-8000-00000000000a";
/// UUID the simulated backup disk reports.
pub const SIM_DISK_UUID: &str = "5eed0000-0000-4000-8000-00000000000b";

#[derive(Debug, Clone, Copy)]
struct SimState {
    key: bool,
    disk: bool,
    unlocked: bool,
    mounted: bool,
}

/// A simulated key stick and backup disk backed by a directory.
#[derive(Debug)]
pub struct SimDisk {
    volume_dir: PathBuf,
    key_dir: Option<PathBuf>,
    encrypted: bool,
    state: StdMutex<SimState>,
    tx: mpsc::UnboundedSender<DiskEvent>,
    rx: Mutex<mpsc::UnboundedReceiver<DiskEvent>>,
}

impl SimDisk {
    /// A simulated disk whose volume is `volume_dir` (which must exist when `ensure_ready`
    /// runs), with key stick and disk plugged in. An `encrypted` disk needs the key to unlock;
    /// an unencrypted one does not.
    pub fn new(volume_dir: impl Into<PathBuf>, encrypted: bool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            volume_dir: volume_dir.into(),
            key_dir: None,
            encrypted,
            state: StdMutex::new(SimState {
                key: true,
                disk: true,
                unlocked: false,
                mounted: false,
            }),
            tx,
            rx: Mutex::new(rx),
        }
    }

    /// Lets `key_dir` play the mounted key stick (for files kept on it, such as the repository
    /// password). Without it the simulated stick has no files and `key_mount` fails.
    /// `burrow daemon --sim`'s disks under `state_dir/sim`: the volume is `volume/`, the key
    /// stick `key/` (created if missing: a directory that cannot be made fails the first
    /// `ensure_ready`); `encrypted` as [`SimDisk::new`].
    pub fn under(state_dir: &Path, encrypted: bool) -> Self {
        let base = state_dir.join("sim");
        let (volume, key) = (base.join("volume"), base.join("key"));
        for dir in [&volume, &key] {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::error!("cannot create {}: {e}", dir.display());
            }
        }
        tracing::warn!(
            "simulated disks: the backup volume is {} and the key stick {}",
            volume.display(),
            key.display()
        );
        SimDisk::new(volume, encrypted).with_key_dir(key)
    }

    pub fn with_key_dir(mut self, key_dir: impl Into<PathBuf>) -> Self {
        self.key_dir = Some(key_dir.into());
        self
    }

    /// The directory that plays the mounted volume.
    pub fn volume_dir(&self) -> &Path {
        &self.volume_dir
    }

    pub fn plug_key(&self) {
        self.change(|s| s.key = true, |s| s.key, DiskEvent::KeyAdded);
    }

    pub fn unplug_key(&self) {
        self.change(|s| s.key = false, |s| !s.key, DiskEvent::KeyRemoved);
    }

    pub fn plug_disk(&self) {
        self.change(|s| s.disk = true, |s| s.disk, DiskEvent::DiskAdded);
    }

    /// Pulling the disk also drops its unlocked and mounted state, as the kernel would.
    pub fn unplug_disk(&self) {
        self.change(
            |s| {
                s.disk = false;
                s.unlocked = false;
                s.mounted = false;
            },
            |s| !s.disk,
            DiskEvent::DiskRemoved,
        );
    }

    /// Applies `f` and emits `event` only if the state actually changed into `now`, so
    /// plugging twice is one event, like real hardware.
    fn change(&self, f: impl FnOnce(&mut SimState), now: fn(&SimState) -> bool, event: DiskEvent) {
        let mut s = self.state.lock().unwrap();
        let before = now(&s);
        f(&mut s);
        if !before && now(&s) {
            let _ = self.tx.send(event);
        }
    }

    fn volume(&self) -> Volume {
        Volume {
            mount_point: self.volume_dir.clone(),
            device: PathBuf::from("/dev/sim0"),
            fs_uuid: if self.encrypted {
                "5eed0000-0000-4000-8000-00000000000c".into()
            } else {
                SIM_DISK_UUID.into()
            },
            encrypted: self.encrypted,
        }
    }
}

impl DiskManager for SimDisk {
    fn mount_check(&self) -> MountCheck {
        MountCheck::Simulated
    }

    async fn ensure_ready(&self) -> Result<Volume, DiskError> {
        {
            let mut s = self.state.lock().unwrap();
            if !s.disk {
                return Err(DiskError::DiskAbsent(SIM_DISK_UUID.into()));
            }
            if self.encrypted && !s.unlocked && !s.key {
                return Err(DiskError::KeyAbsent(SIM_KEY_UUID.into()));
            }
            if !self.volume_dir.is_dir() {
                return Err(DiskError::Failed(format!(
                    "simulated volume {} does not exist; create the directory",
                    self.volume_dir.display()
                )));
            }
            s.unlocked = true;
            s.mounted = true;
        }
        Ok(self.volume())
    }

    async fn key_mount(&self) -> Result<PathBuf, DiskError> {
        let key = self.state.lock().unwrap().key;
        match &self.key_dir {
            Some(dir) if key => Ok(dir.clone()),
            Some(_) => Err(DiskError::KeyAbsent(SIM_KEY_UUID.into())),
            None => Err(DiskError::Failed(
                "the simulated key stick has no directory; use SimDisk::with_key_dir".into(),
            )),
        }
    }

    async fn state(&self) -> DiskState {
        let s = *self.state.lock().unwrap();
        let mount_point = s.mounted.then(|| self.volume_dir.clone());
        let free_bytes = mount_point
            .as_deref()
            .and_then(|mp| crate::free_space(mp).ok());
        DiskState {
            key_present: s.key,
            key_mount: self.key_dir.clone().filter(|_| s.key),
            disk_present: s.disk,
            encrypted: s.disk && self.encrypted,
            unlocked: s.disk && (s.unlocked || !self.encrypted),
            mount_point,
            free_bytes,
        }
    }

    async fn release(&self, what: Release) -> Result<(), DiskError> {
        let mut s = self.state.lock().unwrap();
        let lock = what.lock || what.power_off;
        if what.unmount || lock {
            s.mounted = false;
        }
        if lock && self.encrypted {
            s.unlocked = false;
        }
        Ok(())
    }

    async fn next_event(&self) -> Option<DiskEvent> {
        self.rx.lock().await.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn encrypted_sim_needs_key_until_unlocked() {
        let d = tempfile::tempdir().unwrap();
        let sim = SimDisk::new(d.path(), true);
        sim.unplug_key();
        assert_eq!(sim.next_event().await, Some(DiskEvent::KeyRemoved));
        assert_eq!(
            sim.ensure_ready().await,
            Err(DiskError::KeyAbsent(SIM_KEY_UUID.into()))
        );
        sim.plug_key();
        sim.plug_key();
        assert_eq!(sim.next_event().await, Some(DiskEvent::KeyAdded));
        let v = sim.ensure_ready().await.unwrap();
        assert_eq!(v.mount_point, d.path());
        assert!(v.encrypted);
        // Unlocked: the key may go away, the volume stays usable.
        sim.unplug_key();
        assert_eq!(sim.ensure_ready().await.unwrap(), v);
        let st = sim.state().await;
        assert!(st.unlocked && !st.key_present && st.free_bytes.is_some());
        sim.release(Release {
            lock: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let st = sim.state().await;
        assert!(!st.unlocked && st.mount_point.is_none());
        assert!(matches!(
            sim.ensure_ready().await,
            Err(DiskError::KeyAbsent(_))
        ));
    }

    #[tokio::test]
    async fn plain_sim_and_disk_absence() {
        let d = tempfile::tempdir().unwrap();
        let sim = SimDisk::new(d.path(), false);
        sim.unplug_key();
        sim.ensure_ready().await.unwrap();
        sim.unplug_disk();
        assert_eq!(sim.next_event().await, Some(DiskEvent::KeyRemoved));
        assert_eq!(sim.next_event().await, Some(DiskEvent::DiskRemoved));
        assert_eq!(
            sim.ensure_ready().await,
            Err(DiskError::DiskAbsent(SIM_DISK_UUID.into()))
        );
        let st = sim.state().await;
        assert!(!st.disk_present && !st.unlocked && st.mount_point.is_none());
        sim.plug_disk();
        assert_eq!(sim.next_event().await, Some(DiskEvent::DiskAdded));
        sim.ensure_ready().await.unwrap();
        sim.release(Release::default()).await.unwrap();
        assert!(sim.state().await.mount_point.is_some());
    }

    #[tokio::test]
    async fn key_dir_plays_the_key_stick() {
        let d = tempfile::tempdir().unwrap();
        let sim = SimDisk::new(d.path(), true);
        assert!(matches!(sim.key_mount().await, Err(DiskError::Failed(_))));
        let sim = sim.with_key_dir(d.path().join("key"));
        assert_eq!(sim.key_mount().await.unwrap(), d.path().join("key"));
        assert_eq!(sim.state().await.key_mount, Some(d.path().join("key")));
        sim.unplug_key();
        assert_eq!(
            sim.key_mount().await,
            Err(DiskError::KeyAbsent(SIM_KEY_UUID.into()))
        );
        assert_eq!(sim.state().await.key_mount, None);
    }

    #[tokio::test]
    async fn missing_volume_dir_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let sim = SimDisk::new(d.path().join("nope"), false);
        assert!(
            matches!(sim.ensure_ready().await, Err(DiskError::Failed(m)) if m.contains("create the directory"))
        );
    }
}
