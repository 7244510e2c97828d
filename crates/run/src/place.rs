//! Where the repository is, and the right to write it.
//!
//! With `disk` configured, the repository only ever lives on the verified backup volume:
//! the disk manager unlocks and mounts it, the guard checks that the path is on that mount,
//! and the marker written at `init` must name this repository. Nothing is created before
//! those checks pass, so an absent disk can never fill the SD card.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use burrow_config::Config;
use burrow_core::RunError;
use burrow_core::disk::{DiskError, DiskManager, MountCheck, Volume};
use burrow_core::guard;
use burrow_core::repository::{Repositories, Repository};
use nix::fcntl::{Flock, FlockArg};

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
    /// Opens the located repository with its password (on a blocking thread: the key
    /// derivation) and checks that the volume's marker names it. Every command reaches an
    /// existing repository this way, after [`locate`].
    pub async fn open<R: Repositories>(&self, repos: &R) -> Result<R::Repo, RunError> {
        let (path, password_file) = (self.repo_path.clone(), self.password_file.clone());
        let repos = repos.clone();
        let repo = crate::blocking(move || repos.open(&path, &password_file)).await??;
        check_marker(self, &repo.id())?;
        Ok(repo)
    }
}

/// Makes the repository's volume available and finds the repository on it.
///
/// A volume without a marker, or whose marker names a repository that is not at
/// `repository.path`, is the wrong disk (a skip), found before anything is opened or written.
/// The full check of the marker against the repository id follows in [`check_marker`].
pub async fn locate<D: DiskManager>(cfg: &Config, disk: Option<&D>) -> Result<Place, RunError> {
    let place = locate_for_init(cfg, disk).await?;
    if let Some(v) = &place.volume {
        let marked = guard::read_marker(v, place.mount_check)?;
        if !place.repo_path.join("config").is_file() {
            return Err(RunError::skip(
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
) -> Result<Place, RunError> {
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
        RunError::permanent("the config has `disk` but no disk manager is running")
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
            .map_err(|_| RunError::skip(DiskError::KeyAbsent(key).to_string()))?;
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
pub fn check_marker(place: &Place, repo_id: &str) -> Result<(), RunError> {
    match &place.volume {
        Some(v) => guard::check_marker(v, repo_id, place.mount_check).map_err(RunError::from),
        None => Ok(()),
    }
}

/// An exclusive lock on writing the repository, held by one burrow process of this
/// `state_dir` at a time. Released when dropped, or when the process dies. Between processes
/// with other state dirs, and with stock restic, the restic lock files in the repository
/// ([`Repository::lock`]) decide.
pub struct RepoLock {
    _lock: Flock<File>,
}

impl RepoLock {
    pub fn acquire(state_dir: &Path) -> Result<RepoLock, RunError> {
        let lock = take_flock(state_dir, "repository.lock", repo_busy)?;
        Ok(RepoLock { _lock: lock })
    }
}

fn repo_busy(pid: Option<u32>) -> String {
    format!(
        "another burrow process{} is writing the repository; try again when it is done",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )
}

/// One `burrow daemon` per `state_dir`: an exclusive flock on `state_dir/daemon.lock` for
/// the daemon's lifetime (two daemons would run the same schedule and share one state file).
pub struct DaemonLock {
    _lock: Flock<File>,
}

impl DaemonLock {
    pub fn acquire(state_dir: &Path) -> Result<DaemonLock, RunError> {
        let lock = take_flock(state_dir, "daemon.lock", |pid| {
            format!(
                "another burrow daemon{} is already running with state_dir {}: stop it first \
                 (systemctl stop burrow), or give this daemon its own state_dir",
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                state_dir.display()
            )
        })?;
        Ok(DaemonLock { _lock: lock })
    }
}

/// Takes an exclusive, non-blocking flock on `state_dir/name`, then writes our pid into it.
///
/// The file is opened with `O_NOFOLLOW` and must be a regular file of ours with one link: a
/// symlink or hard link planted there is refused, never written through. `busy` makes the
/// message when another process holds the lock, from its pid when it can be found.
fn take_flock(
    state_dir: &Path,
    name: &str,
    busy: impl FnOnce(Option<u32>) -> String,
) -> Result<Flock<File>, RunError> {
    std::fs::create_dir_all(state_dir).map_err(|e| {
        RunError::permanent(format!(
            "cannot create state_dir {}: {e} (run as root or set state_dir)",
            state_dir.display()
        ))
    })?;
    let path = state_dir.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                RunError::permanent(format!(
                    "{} is a symbolic link; burrow does not write through it: remove it (burrow \
                     creates its lock file itself)",
                    path.display()
                ))
            } else {
                RunError::permanent(format!("cannot open {}: {e}", path.display()))
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| RunError::permanent(format!("cannot stat {}: {e}", path.display())))?;
    let refuse = |why: String| {
        RunError::permanent(format!(
            "{} {why}; burrow does not write to it: remove it (burrow creates its lock file \
             itself)",
            path.display()
        ))
    };
    if !meta.file_type().is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    if meta.nlink() != 1 {
        return Err(refuse(format!("has {} hard links", meta.nlink())));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(refuse(format!(
            "belongs to uid {}, not to this process (uid {euid})",
            meta.uid()
        )));
    }
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((file, _)) => return Err(RunError::temporary(busy(holder_pid(&file, &meta)))),
    };
    // Only now, holding the lock, is the pid written: written first, then the rest cut off,
    // so the file never reads empty while it is held.
    let pid = format!("{}\n", std::process::id());
    let _ = lock.write_all_at(pid.as_bytes(), 0);
    let _ = lock.set_len(pid.len() as u64);
    Ok(lock)
}

/// The pid of the process holding the flock on `file`: from `/proc/locks` (the kernel's own
/// record), else from what the holder wrote into the file.
fn holder_pid(file: &File, meta: &std::fs::Metadata) -> Option<u32> {
    let (dev, ino) = (meta.dev(), meta.ino());
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let from_proc = std::fs::read_to_string("/proc/locks").ok().and_then(|t| {
        t.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().filter(|w| *w != "->").collect();
            // "1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"
            (f.len() >= 6 && f[1] == "FLOCK" && f[5] == want)
                .then(|| f[4].parse::<u32>().ok())
                .flatten()
                .filter(|p| *p > 0)
        })
    });
    from_proc.or_else(|| {
        let mut buf = [0u8; 32];
        let n = file.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n])
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|p| *p > 0)
    })
}

/// Writes the volume marker for a new repository (no-op without `disk`).
pub fn write_marker(place: &Place, repo_id: &str) -> std::io::Result<()> {
    match &place.volume {
        Some(v) => guard::write_marker(v, repo_id, place.mount_check),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: RunError) -> String {
        e.message
    }

    #[test]
    fn the_pid_is_written_once_the_lock_is_held_and_named_to_the_next_one() {
        let tmp = tempfile::tempdir().unwrap();
        let held = RepoLock::acquire(tmp.path()).unwrap();
        let pid = std::process::id();
        let text = std::fs::read_to_string(tmp.path().join("repository.lock")).unwrap();
        assert_eq!(text.trim(), pid.to_string());
        // a second open file description conflicts even within one process
        let e = reason(RepoLock::acquire(tmp.path()).err().unwrap());
        assert!(
            e.contains(&format!("another burrow process (pid {pid}) is writing")),
            "{e}"
        );
        drop(held);
        drop(RepoLock::acquire(tmp.path()).unwrap());
    }

    #[test]
    fn without_a_known_pid_the_message_names_none() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("repository.lock");
        // a holder that wrote nothing, with /proc/locks not naming it: only the file is asked
        let f = std::fs::File::create(&path).unwrap();
        let meta = f.metadata().unwrap();
        let _held = Flock::lock(f, FlockArg::LockExclusiveNonblock).unwrap();
        let other = std::fs::File::open(&path).unwrap();
        let bogus = std::fs::File::open(tmp.path()).unwrap().metadata().unwrap();
        assert_eq!(holder_pid(&other, &bogus), None);
        assert_eq!(holder_pid(&other, &meta), Some(std::process::id()));
        assert_eq!(
            repo_busy(None),
            "another burrow process is writing the repository; try again when it is done"
        );
    }

    #[test]
    fn a_symlink_is_refused_and_its_target_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&victim, state.join("daemon.lock")).unwrap();
        let e = reason(DaemonLock::acquire(&state).err().unwrap());
        assert!(e.contains("is a symbolic link"), "{e}");
        // a dangling link is not created through either
        std::os::unix::fs::symlink(tmp.path().join("new"), state.join("repository.lock")).unwrap();
        assert!(RepoLock::acquire(&state).is_err());
        assert!(!tmp.path().join("new").exists());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(
            &tmp.path().join("repository.lock"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let e = reason(RepoLock::acquire(tmp.path()).err().unwrap());
        assert!(e.contains("not a regular file"), "{e}");
    }
}
