//! The disk port: the encrypted, hot-plugged backup disk and the key stick that unlocks it.
//!
//! The real adapter drives UDisks2 over D-Bus and listens to udev; a simulated one serves
//! `burrow daemon --sim` and tests. Every operation is idempotent: "already unlocked" and
//! "already mounted" are successes.

use std::future::Future;
use std::path::PathBuf;

use serde::Serialize;

/// The backup volume, mounted and verified to be the configured one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// Where the (cleartext) filesystem is mounted.
    pub mount_point: PathBuf,
    /// The block device holding the mounted filesystem (e.g. `/dev/dm-0`, `/dev/loop3`).
    pub device: PathBuf,
    /// Filesystem UUID of the mounted filesystem.
    pub fs_uuid: String,
    /// Whether it sits inside a LUKS container.
    pub encrypted: bool,
}

/// What `burrow status` shows about the disks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiskState {
    pub key_present: bool,
    pub key_mount: Option<PathBuf>,
    pub disk_present: bool,
    /// The backup disk is a LUKS container (known only while it is present).
    pub encrypted: bool,
    pub unlocked: bool,
    pub mount_point: Option<PathBuf>,
    pub free_bytes: Option<u64>,
}

/// A hot-plug event, already translated from udev/UDisks2 into domain terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DiskEvent {
    KeyAdded,
    KeyRemoved,
    DiskAdded,
    DiskRemoved,
}

/// Why the backup volume is not available. The first three are "skip" conditions (exit 75):
/// nothing is written and the run is retried when the disk or key comes back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    #[error("key stick absent: plug in the USB stick with filesystem UUID {0}")]
    KeyAbsent(String),
    #[error("backup disk absent: plug in the disk with UUID {0}")]
    DiskAbsent(String),
    #[error("wrong disk: {0}")]
    WrongDisk(String),
    #[error("{0}")]
    Failed(String),
}

impl DiskError {
    /// True for the conditions that skip a run (exit 75) rather than fail it.
    pub fn is_skip(&self) -> bool {
        !matches!(self, DiskError::Failed(_))
    }
}

/// What to do with the disk after a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Release {
    pub unmount: bool,
    pub lock: bool,
    pub power_off: bool,
}

/// How the guard proves that a volume is the mounted backup disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountCheck {
    /// Against the kernel's mount table (every real disk manager).
    Kernel,
    /// Not at all: the simulated manager's volume is a plain directory.
    Simulated,
}

pub trait DiskManager: Send + Sync + 'static {
    /// How the guard must check this manager's volumes. Only the simulator may say otherwise.
    fn mount_check(&self) -> MountCheck {
        MountCheck::Kernel
    }

    /// Makes the backup volume available: finds the key stick, reads the key file, unlocks and
    /// mounts the disk (reusing what is already unlocked or mounted), wakes a sleeping disk.
    fn ensure_ready(&self) -> impl Future<Output = Result<Volume, DiskError>> + Send;

    /// Mounts the key stick read-only (or reuses its mount) and returns where it is, for
    /// files kept on it (the repository password). The default reads [`DiskState::key_mount`].
    fn key_mount(&self) -> impl Future<Output = Result<PathBuf, DiskError>> + Send {
        async {
            self.state()
                .await
                .key_mount
                .ok_or_else(|| DiskError::KeyAbsent("the configured key stick".into()))
        }
    }

    /// The current state, for `status`. Never changes anything.
    fn state(&self) -> impl Future<Output = DiskState> + Send;

    /// Unmounts, locks and/or powers off the backup disk, as asked. Idempotent.
    fn release(&self, what: Release) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// Waits for the next hot-plug event. Returns `None` when the source of events has ended.
    fn next_event(&self) -> impl Future<Output = Option<DiskEvent>> + Send;
}

/// Releases the backup disk as `what` says; a failure is logged, never the run's.
pub async fn release_disk<D: DiskManager>(disk: &D, what: Release) {
    if let Err(e) = disk.release(what).await {
        tracing::warn!("releasing the backup disk failed: {e}");
    }
}
