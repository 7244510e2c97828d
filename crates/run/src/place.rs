//! Where the repository is, and the right to write it.
//!
//! With `disk` configured, the repository only ever lives on the verified backup volume:
//! the disk manager unlocks and mounts it, the guard checks that the path is on that mount,
//! and the marker written at `init` must name this repository. Nothing is created before
//! those checks pass, so an absent disk can never fill the SD card.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use burrow_config::Config;
use burrow_core::disk::{DiskError, DiskManager, MountCheck, Volume};
use burrow_disk::guard;
use burrow_repo::Password;
use nix::fcntl::{Flock, FlockArg};

/// Why the repository cannot be used now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlaceError {
    /// Disk or key absent, or the wrong disk: the run is skipped (exit 75).
    #[error("{0}")]
    Skip(String),
    #[error("{0}")]
    Fail(String),
}

impl From<DiskError> for PlaceError {
    fn from(e: DiskError) -> Self {
        if e.is_skip() {
            PlaceError::Skip(e.to_string())
        } else {
            PlaceError::Fail(e.to_string())
        }
    }
}

#[derive(Debug, Clone)]
pub struct Place {
    pub repo_path: PathBuf,
    pub password_file: PathBuf,
    pub volume: Option<Volume>,
    /// Where dumps are spooled before they enter a snapshot: on the same volume.
    pub spool_dir: PathBuf,
    /// How the guard checks `volume` (the simulator has no mounts).
    pub mount_check: MountCheck,
}

impl Place {
    pub fn password(&self) -> Result<Password, PlaceError> {
        Password::from_file(&self.password_file).map_err(|e| PlaceError::Fail(e.to_string()))
    }
}

/// Makes the repository's volume available and finds the repository on it.
///
/// A volume without a marker, or whose marker names a repository that is not at
/// `repository.path`, is the wrong disk (a skip), found before anything is opened or written.
/// The full check of the marker against the repository id follows in [`check_marker`].
pub async fn locate<D: DiskManager>(cfg: &Config, disk: Option<&D>) -> Result<Place, PlaceError> {
    let place = locate_for_init(cfg, disk).await?;
    if let Some(v) = &place.volume {
        let marked = guard::read_marker(v, place.mount_check)?;
        if !place.repo_path.join("config").is_file() {
            return Err(PlaceError::Skip(
                DiskError::WrongDisk(format!(
                    "the disk at {} (filesystem {}) is marked for repository {marked}, but there \
                     is no repository at {}; plug in the right disk or fix repository.path",
                    v.mount_point.display(),
                    v.fs_uuid,
                    place.repo_path.display()
                ))
                .to_string(),
            ));
        }
    }
    Ok(place)
}

/// [`locate`] without looking for the marker, for `burrow init`, which writes it.
pub async fn locate_for_init<D: DiskManager>(
    cfg: &Config,
    disk: Option<&D>,
) -> Result<Place, PlaceError> {
    let Some(dcfg) = &cfg.disk else {
        let repo_path = cfg.repository.path.clone();
        let spool_dir = repo_path
            .parent()
            .unwrap_or(Path::new("/"))
            .join(".burrow-spool");
        return Ok(Place {
            repo_path,
            password_file: cfg.repository.password_file.clone(),
            volume: None,
            spool_dir,
            mount_check: MountCheck::Kernel,
        });
    };
    let disk = disk.ok_or_else(|| {
        PlaceError::Fail("the config has `disk` but no disk manager is running".into())
    })?;
    let volume = disk.ensure_ready().await?;
    let repo_path = guard::resolve_repo_path(&volume, &cfg.repository.path, disk.mount_check())?;
    let password_file = if cfg.repository.password_file.is_relative() {
        let key = dcfg
            .key
            .as_ref()
            .map(|k| k.fs_uuid.clone())
            .unwrap_or_default();
        let mount = disk
            .key_mount()
            .await
            .map_err(|_| PlaceError::Skip(DiskError::KeyAbsent(key).to_string()))?;
        mount.join(&cfg.repository.password_file)
    } else {
        cfg.repository.password_file.clone()
    };
    Ok(Place {
        repo_path,
        password_file,
        spool_dir: volume.mount_point.join(".burrow-spool"),
        volume: Some(volume),
        mount_check: disk.mount_check(),
    })
}

/// Checks that the repository found on the volume is the one `burrow init` put there.
pub fn check_marker(place: &Place, repo_id: &str) -> Result<(), PlaceError> {
    match &place.volume {
        Some(v) => guard::check_marker(v, repo_id, place.mount_check).map_err(PlaceError::from),
        None => Ok(()),
    }
}

/// An exclusive lock on writing the repository, held by one burrow process at a time
/// (rustic_core itself takes no locks). Released when dropped, or when the process dies.
pub struct RepoLock {
    _lock: Flock<File>,
}

impl RepoLock {
    pub fn acquire(state_dir: &Path) -> Result<RepoLock, PlaceError> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            PlaceError::Fail(format!(
                "cannot create state_dir {}: {e} (run as root or set state_dir)",
                state_dir.display()
            ))
        })?;
        let path = state_dir.join("repository.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| PlaceError::Fail(format!("cannot open {}: {e}", path.display())))?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, _)| {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            PlaceError::Fail(format!(
                "another burrow process (pid {}) is writing the repository; try again when it is done",
                holder.trim()
            ))
        })?;
        let _ = lock.set_len(0);
        let _ = write!(&mut *lock, "{}", std::process::id());
        Ok(RepoLock { _lock: lock })
    }
}

/// Writes the volume marker for a new repository (no-op without `disk`).
pub fn write_marker(place: &Place, repo_id: &str) -> std::io::Result<()> {
    match &place.volume {
        Some(v) => guard::write_marker(v, repo_id, place.mount_check),
        None => Ok(()),
    }
}
