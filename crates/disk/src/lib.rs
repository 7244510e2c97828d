//! Backup disk lifecycle: udev hot-plug, UDisks2 unlock and mount, key stick, mount guard.
//!
//! [`UDisks2Manager`] implements [`burrow_core::disk::DiskManager`] for real hardware: it finds
//! the key stick by filesystem UUID and mounts it read-only, reads the key file, unlocks the
//! LUKS container of the backup disk through UDisks2, mounts the cleartext filesystem, wakes a
//! sleeping disk, and reports hot-plug events from udev. [`sim::SimDisk`] is the same port
//! backed by a directory, for `burrow daemon --sim` and tests. [`burrow_core::guard`] proves that a path is
//! on the mounted backup volume before anything is written there. [`stick`] writes a new key
//! stick's secrets (`burrow setup key-stick`).
//!
//! Invariants:
//! - **Never write outside the verified mount.** This crate writes only the marker file, and
//!   only after [`burrow_core::guard::verify_mount`] has checked the kernel's mount table; it never creates
//!   directories. Callers resolve the repository path with [`burrow_core::guard::resolve_repo_path`]. The
//!   one exception, [`stick`], writes new files only, and only at the root of a mount point.
//! - **Idempotent steps.** Every step looks at the current state first and reuses it: an
//!   unlocked container, a mounted filesystem or key stick, a locked or absent disk on release.
//!   Start-up after a crash therefore redoes nothing.
//! - **Foreign types stop at the boundary.** No zbus or udev type appears in the public API;
//!   errors are [`burrow_core::disk::DiskError`] with messages that name the device or path and
//!   say what to do.
//! - **The key never leaves memory it was read into.** Its contents are not logged and are
//!   wiped when dropped; a key file readable by group or others is warned about.
//! - **The adapter reports, the daemon decides.** Removing the key stick only produces
//!   [`burrow_core::disk::DiskEvent::KeyRemoved`]; locking on that is the daemon's call, made
//!   when no run is active.

mod manager;
mod monitor;
mod settings;
pub mod sim;
pub mod stick;
mod udisks;

pub use manager::{UDisks2Manager, free_space, luks_plugin};
pub use settings::DiskSettings;
pub use sim::SimDisk;
