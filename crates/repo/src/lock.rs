//! restic's own lock files, `locks/<id>` in the repository, so burrow and stock restic (or a
//! second burrow with another `state_dir`) see each other.
//!
//! A lock file is an encrypted JSON object (`time`, `exclusive`, `hostname`, `username`,
//! `pid`, `uid`, `gid`) stored like every other unpacked restic file: a random 16-byte nonce,
//! the AES-256-CTR ciphertext and the Poly1305-AES tag, named by the SHA-256 of those bytes.
//! burrow writes the JSON uncompressed (restic reads a plain `{` as uncompressed in every
//! repository version) and reads restic's zstd-compressed ones too. burrow adds a `program`
//! field, which restic ignores, so a message can say whether restic or burrow holds a lock.
//!
//! The rules are restic's:
//! - a lock conflicts with ours if it is exclusive or if we want an exclusive one;
//! - a lock is stale when it is older than 30 minutes, or when it was written on this host by
//!   a process that no longer runs. burrow ignores stale locks (restic refuses them until
//!   `restic unlock`); they are removed only when burrow takes an exclusive lock, exactly the
//!   ones `restic unlock` would remove;
//! - create, wait 200 ms, then look again: if a conflicting lock appeared meanwhile, ours is
//!   removed and the caller is refused (two processes racing both give up, never both win);
//! - a held lock is refreshed every 5 minutes (a new file, then the old one removed) by a
//!   background thread, and removed when the guard is dropped.
//!
//! A lock file that exists but cannot be read (not empty, but not decryptable or not a lock)
//! refuses the lock like restic does: it may be a live lock we cannot judge.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burrow_core::short_id;

use rustic_core::jiff::{SignedDuration, Timestamp, Zoned};
use rustic_core::repofile::MasterKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RepoError;
use crate::crypto::{Sealer, Unreadable, hex};

/// restic's `StaleLockTimeout`: a lock not refreshed for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a held lock is refreshed (restic refreshes every 5 minutes too).
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// restic's `waitBeforeLockCheck`: the pause between creating a lock and looking again.
const SETTLE: Duration = Duration::from_millis(200);
/// How often an unreadable lock file is read again (`SETTLE` apart) before it refuses.
const UNREADABLE_RETRIES: usize = 3;

/// What burrow writes into the `program` field of its lock files.
const PROGRAM: &str = concat!("burrow ", env!("CARGO_PKG_VERSION"));

/// One lock file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    pub time: Timestamp,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: i64,
    pub uid: u32,
    pub gid: u32,
    /// `burrow <version>` in burrow's locks; absent in restic's.
    pub program: Option<String>,
}

impl LockInfo {
    /// A lock for this process, now.
    pub fn this_process(exclusive: bool) -> LockInfo {
        let uid = nix::unistd::getuid();
        LockInfo {
            time: Timestamp::now(),
            exclusive,
            hostname: this_host().unwrap_or_default(),
            username: nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_default(),
            pid: i64::from(std::process::id()),
            uid: uid.as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            program: Some(PROGRAM.to_owned()),
        }
    }

    /// restic's rule: older than 30 minutes, or from a process of this host that is gone.
    pub fn is_stale(&self, now: Timestamp, this_host: Option<&str>) -> bool {
        let age = now.duration_since(self.time);
        if age > SignedDuration::try_from(STALE_AFTER).unwrap_or(SignedDuration::MAX) {
            return true;
        }
        // Without our own host name we cannot tell whether the process runs: not stale.
        match this_host {
            Some(h) if h == self.hostname => !process_runs(self.pid),
            _ => false,
        }
    }

    /// Whether holding this lock forbids taking one of kind `exclusive`.
    pub fn conflicts_with(&self, exclusive: bool) -> bool {
        exclusive || self.exclusive
    }

    /// Who holds it, for messages: "burrow on HOST (pid N, user U) since TIME (exclusive)".
    pub fn describe(&self) -> String {
        let who = match &self.program {
            Some(p) if p.starts_with("burrow") => "burrow",
            Some(p) => p.as_str(),
            None => "restic",
        };
        let user = if self.username.is_empty() {
            format!("uid {}", self.uid)
        } else {
            format!("user {}", self.username)
        };
        format!(
            "{who} on {} (pid {}, {user}) since {} ({})",
            if self.hostname.is_empty() {
                "an unknown host"
            } else {
                &self.hostname
            },
            self.pid,
            self.time.strftime("%Y-%m-%d %H:%M:%S UTC"),
            if self.exclusive {
                "exclusive"
            } else {
                "shared"
            }
        )
    }
}

/// The JSON form, field for field restic's `Lock`.
#[derive(Serialize, Deserialize)]
struct Json {
    time: String,
    exclusive: bool,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    pid: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    uid: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    program: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// This machine's host name as restic compares it (the kernel's node name).
fn this_host() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
}

/// Whether a process with this pid exists here. A process we may not signal exists too.
fn process_runs(pid: i64) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        // Not a pid of one process: cannot tell, so assume it runs.
        return true;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(_) => true,
    }
}

fn device_of(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.dev())
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> RepoError {
    RepoError::Rustic(format!("{what} {}: {e}", path.display()))
}

/// The lock files of one open repository. Cheap to clone; `Send`, so a lock can be taken on a
/// blocking thread while the repository handle is used elsewhere.
#[derive(Clone)]
pub struct Locks {
    root: PathBuf,
    key: Sealer,
    dev: u64,
    refresh_every: Duration,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks").field("root", &self.root).finish()
    }
}

impl Locks {
    /// The lock files of the repository at `root`, sealed with its master key.
    pub(crate) fn new(root: &Path, master: &MasterKey) -> Result<Locks, RepoError> {
        let key = Sealer::new(master)
            .ok_or_else(|| RepoError::Rustic("the repository key has an unknown form".into()))?;
        if !root.join("config").is_file() {
            return Err(RepoError::NotInitialised {
                path: root.to_owned(),
            });
        }
        let dev = device_of(root).ok_or_else(|| io_err("cannot stat", root, "gone"))?;
        Ok(Locks {
            root: root.to_owned(),
            key,
            dev,
            refresh_every: REFRESH_EVERY,
        })
    }

    fn dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// The ids of the lock files now in the repository, with their sizes.
    fn list(&self) -> Result<Vec<(String, u64)>, RepoError> {
        let dir = self.dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot list", &dir, e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| io_err("cannot list", &dir, e))?;
            let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Like restic: names that are not ids (our temporary files) are not locks.
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            match ent.metadata() {
                Ok(m) => out.push((name, m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("cannot stat", &ent.path(), e)),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads one lock file; `Ok(None)` when it is gone (removed since it was listed).
    pub fn read(&self, id: &str) -> Result<Option<LockInfo>, Unreadable> {
        let data = match fs::read(self.dir().join(id)) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Unreadable::Io(e)),
        };
        if hex(&Sha256::digest(&data)) != id.to_ascii_lowercase() {
            return Err(Unreadable::NotItsName);
        }
        if data.len() < 32 {
            return Err(Unreadable::TooShort);
        }
        let json = self.key.open_file(&data)?;
        let j: Json = serde_json::from_slice(&json).map_err(Unreadable::Json)?;
        let time = j
            .time
            .parse::<Timestamp>()
            .map_err(|e| Unreadable::Time(j.time.clone(), e.to_string()))?;
        Ok(Some(LockInfo {
            time,
            exclusive: j.exclusive,
            hostname: j.hostname,
            username: j.username,
            pid: j.pid,
            uid: j.uid,
            gid: j.gid,
            program: j.program,
        }))
    }

    /// Refuses to write once the repository is not where it was (the backup disk went away):
    /// a lock must never create a `locks/` directory on the mount point's filesystem.
    fn check_place(&self) -> Result<(), RepoError> {
        if device_of(&self.root) == Some(self.dev) && self.root.join("config").is_file() {
            return Ok(());
        }
        Err(RepoError::Rustic(format!(
            "the repository at {} is no longer on the filesystem it was opened on (was the \
             backup disk removed?); refusing to write",
            self.root.display()
        )))
    }

    /// Writes a lock file with exactly `info` and returns its id. burrow's own locks come from
    /// [`Locks::shared`] and [`Locks::exclusive`]; this is for tools and tests that need a
    /// lock of another process.
    pub fn write(&self, info: &LockInfo) -> Result<String, RepoError> {
        self.check_place()?;
        let offset = Zoned::now().offset();
        let json = serde_json::to_vec(&Json {
            time: info.time.display_with_offset(offset).to_string(),
            exclusive: info.exclusive,
            hostname: info.hostname.clone(),
            username: info.username.clone(),
            pid: info.pid,
            uid: info.uid,
            gid: info.gid,
            program: info.program.clone(),
        })
        .map_err(|e| RepoError::Rustic(format!("lock: {e}")))?;
        let (data, id) = self.key.seal_file(&json, false);
        let id = id.to_hex().to_string();

        let dir = self.dir();
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("cannot create", &dir, e)),
        }
        // Written under a name that is not an id, then renamed: nobody reads half a lock.
        let tmp = dir.join(format!(".{id}.tmp"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| io_err("cannot create", &tmp, e))?;
        let written = f.write_all(&data).and_then(|()| f.sync_all());
        drop(f);
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, dir.join(&id))) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("cannot write", &tmp, e));
        }
        Ok(id)
    }

    /// Removes lock file `id` (gone already is fine).
    pub fn remove(&self, id: &str) -> Result<(), RepoError> {
        let path = self.dir().join(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot remove", &path, e)),
        }
    }

    /// The first lock (other than `ours`) that forbids a lock of kind `exclusive`. Stale locks
    /// are skipped, and removed when `exclusive` (as `restic unlock` would).
    fn conflict(&self, exclusive: bool, ours: Option<&str>) -> Result<(), RepoError> {
        let host = this_host();
        let now = Timestamp::now();
        for (id, size) in self.list()? {
            if Some(id.as_str()) == ours || size == 0 {
                // Empty files: an interrupted write on some backends; restic skips them too.
                continue;
            }
            // A lock being written or replaced right now may not read yet: look again, as
            // restic does, before calling it unreadable.
            let mut read = self.read(&id);
            for _ in 0..UNREADABLE_RETRIES {
                if read.is_ok() {
                    break;
                }
                std::thread::sleep(SETTLE);
                read = self.read(&id);
            }
            let info = match read {
                Ok(Some(i)) => i,
                Ok(None) => continue,
                Err(e) => {
                    return Err(RepoError::Locked(format!(
                        "the repository {} holds a lock file that cannot be read (locks/{id}: \
                         {e}): if no restic or burrow process uses the repository, remove it \
                         with `restic -r {} unlock --remove-all`",
                        self.root.display(),
                        self.root.display()
                    )));
                }
            };
            if info.is_stale(now, host.as_deref()) {
                if exclusive {
                    tracing::info!(
                        "removing the stale lock locks/{} of {}",
                        short_id(&id),
                        info.describe()
                    );
                    self.remove(&id)?;
                }
                continue;
            }
            if info.conflicts_with(exclusive) {
                return Err(RepoError::Locked(format!(
                    "the repository {} is locked by {}: wait for it or, if that process is \
                     gone, run `restic -r {} unlock`",
                    self.root.display(),
                    info.describe(),
                    self.root.display()
                )));
            }
        }
        Ok(())
    }

    fn acquire(&self, exclusive: bool) -> Result<RepoLockGuard, RepoError> {
        let (guard, look) = self.acquire_settling(exclusive)?;
        // On a conflict, `guard` is dropped here: our lock file is removed.
        look.take()?;
        Ok(guard)
    }

    /// The lock written and held, with its second look still to take.
    fn acquire_settling(&self, exclusive: bool) -> Result<(RepoLockGuard, SecondLook), RepoError> {
        self.conflict(exclusive, None)?;
        let info = LockInfo::this_process(exclusive);
        let id = self.write(&info)?;
        let written = Instant::now();
        let guard = RepoLockGuard::start(self.clone(), info, id);
        let look = SecondLook {
            locks: self.clone(),
            exclusive,
            held: guard.held.clone(),
            written,
        };
        Ok((guard, look))
    }

    /// A shared lock whose second look is left to the caller, who may read meanwhile but must
    /// not write before [`SecondLook::take`] succeeded (the backup: `Repo::lock_for_backup`).
    pub fn shared_settling(&self) -> Result<(RepoLockGuard, SecondLook), RepoError> {
        self.acquire_settling(false)
    }

    /// A shared (non-exclusive) lock: for backup and check. Refused while an exclusive lock
    /// that is not stale exists.
    pub fn shared(&self) -> Result<RepoLockGuard, RepoError> {
        self.acquire(false)
    }

    /// An exclusive lock: for forget, prune and repairs. Refused while any lock that is not
    /// stale exists; stale ones are removed.
    pub fn exclusive(&self) -> Result<RepoLockGuard, RepoError> {
        self.acquire(true)
    }
}

/// The second half of taking a lock: [`SETTLE`] after ours was written, look again for a
/// conflicting lock that a racing process wrote meanwhile.
#[must_use = "a lock is taken only once its second look found no conflict"]
#[derive(Clone)]
pub struct SecondLook {
    locks: Locks,
    exclusive: bool,
    /// Our lock as the guard holds it: a refresh may have replaced the file meanwhile.
    held: Arc<Mutex<Held>>,
    written: Instant,
}

impl SecondLook {
    /// Waits out the rest of the settle and looks. On a conflict the error says who holds
    /// the repository; our lock file goes when its guard is dropped, as the racing process
    /// expects (both give up, neither wins).
    pub fn take(self) -> Result<(), RepoError> {
        std::thread::sleep(SETTLE.saturating_sub(self.written.elapsed()));
        // Held while looking, so a refresh cannot swap the file between the id and the list.
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        self.locks.conflict(self.exclusive, Some(&held.id))
    }
}

struct Held {
    info: LockInfo,
    id: String,
}

/// A lock held in the repository: refreshed every 5 minutes, removed when dropped.
pub struct RepoLockGuard {
    locks: Locks,
    held: Arc<Mutex<Held>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RepoLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoLockGuard")
            .field("id", &self.id())
            .finish()
    }
}

impl RepoLockGuard {
    fn start(locks: Locks, info: LockInfo, id: String) -> RepoLockGuard {
        let held = Arc::new(Mutex::new(Held { info, id }));
        let (stop, rx) = mpsc::channel::<()>();
        let (l, h) = (locks.clone(), held.clone());
        let every = locks.refresh_every;
        let thread = std::thread::Builder::new()
            .name("repo-lock".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    if let Err(e) = refresh(&l, &h) {
                        tracing::warn!("cannot refresh the repository lock: {e}");
                    }
                }
            })
            .ok();
        RepoLockGuard {
            locks,
            held,
            stop: Some(stop),
            thread,
        }
    }

    /// The id of the lock file now in the repository (it changes with every refresh).
    pub fn id(&self) -> String {
        self.held.lock().map(|h| h.id.clone()).unwrap_or_default()
    }

    pub fn is_exclusive(&self) -> bool {
        self.held.lock().map(|h| h.info.exclusive).unwrap_or(false)
    }
}

/// A new lock file with the current time, then the old one removed (restic's `Refresh`).
fn refresh(locks: &Locks, held: &Mutex<Held>) -> Result<(), RepoError> {
    let mut h = held
        .lock()
        .map_err(|_| RepoError::Rustic("lock state poisoned".into()))?;
    if !locks.dir().join(&h.id).exists() {
        tracing::error!(
            "the repository lock locks/{} was removed by another process (`restic unlock`?); \
             writing it again",
            short_id(&h.id)
        );
    }
    let mut info = h.info.clone();
    info.time = Timestamp::now();
    let id = locks.write(&info)?;
    let old = std::mem::replace(&mut h.id, id);
    h.info = info;
    locks.remove(&old)
}

impl Drop for RepoLockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let id = self.id();
        if let Err(e) = self.locks.remove(&id) {
            tracing::warn!("cannot remove the repository lock: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Password, init};

    fn repo() -> (tempfile::TempDir, Locks) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("repo");
        let r = init(&path, &Password::new("pw")).unwrap();
        let locks = r.locks().unwrap();
        (tmp, locks)
    }

    fn foreign(exclusive: bool, host: &str, age: Duration, pid: i64) -> LockInfo {
        LockInfo {
            time: Timestamp::now() - SignedDuration::try_from(age).unwrap(),
            exclusive,
            hostname: host.into(),
            username: "someone".into(),
            pid,
            uid: 1000,
            gid: 1000,
            program: None,
        }
    }

    fn ids(l: &Locks) -> Vec<String> {
        l.list().unwrap().into_iter().map(|(id, _)| id).collect()
    }

    /// A pid that ran on this host and is gone now.
    fn dead_pid() -> i64 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        i64::from(pid)
    }

    #[test]
    fn written_locks_read_back_and_are_named_by_their_hash() {
        let (_t, l) = repo();
        let info = foreign(true, "otherhost", Duration::ZERO, 4242);
        let id = l.write(&info).unwrap();
        let data = fs::read(l.dir().join(&id)).unwrap();
        assert_eq!(hex(&Sha256::digest(&data)), id);
        let back = l.read(&id).unwrap().unwrap();
        assert_eq!(back.hostname, "otherhost");
        assert_eq!(back.pid, 4242);
        assert!(back.exclusive);
        assert_eq!(back.time.as_second(), info.time.as_second());
        // no temporary file is left next to it
        assert_eq!(fs::read_dir(l.dir()).unwrap().count(), 1);
    }

    #[test]
    fn shared_locks_coexist_and_exclusive_conflicts_with_both() {
        let (_t, l) = repo();
        let a = l.shared().unwrap();
        let b = l.shared().unwrap();
        assert_eq!(ids(&l).len(), 2);
        let e = l.exclusive().unwrap_err().to_string();
        assert!(e.contains("is locked by burrow on"), "{e}");
        assert!(e.contains("(shared)") && e.contains("restic -r"), "{e}");
        assert_eq!(ids(&l).len(), 2, "the refused lock was removed again");
        drop(a);
        drop(b);
        assert!(ids(&l).is_empty(), "dropped locks are removed");
        let x = l.exclusive().unwrap();
        assert!(x.is_exclusive());
        let e = l.shared().unwrap_err().to_string();
        assert!(e.contains("(exclusive)"), "{e}");
        drop(x);
        assert!(ids(&l).is_empty());
    }

    #[test]
    fn the_second_look_sees_an_exclusive_lock_written_after_ours() {
        let (_t, mut l) = repo();
        // A refresh during the settle replaces our file: the look still knows it as ours.
        l.refresh_every = Duration::from_millis(20);
        let (guard, look) = l.shared_settling().unwrap();
        let theirs = l
            .write(&foreign(true, "otherhost", Duration::ZERO, 77))
            .unwrap();
        let e = look.take().unwrap_err().to_string();
        assert!(e.contains("locked by") && e.contains("otherhost"), "{e}");
        drop(guard);
        assert_eq!(
            ids(&l),
            vec![theirs.clone()],
            "ours is removed with its guard"
        );
        l.remove(&theirs).unwrap();

        let (guard, look) = l.shared_settling().unwrap();
        let other = l.shared().unwrap();
        look.take()
            .expect("a shared lock does not conflict with ours");
        drop((guard, other));
        assert!(ids(&l).is_empty());
    }

    #[test]
    fn a_foreign_exclusive_lock_refuses_a_shared_one_and_names_its_holder() {
        let (_t, l) = repo();
        let id = l
            .write(&foreign(true, "otherhost", Duration::from_secs(60), 77))
            .unwrap();
        let e = l.shared().unwrap_err().to_string();
        assert!(
            e.contains("locked by restic on otherhost (pid 77, user someone)"),
            "{e}"
        );
        assert_eq!(ids(&l), vec![id], "only the foreign lock is left");
    }

    #[test]
    fn a_foreign_shared_lock_allows_shared_and_refuses_exclusive() {
        let (_t, l) = repo();
        let id = l
            .write(&foreign(false, "otherhost", Duration::from_secs(60), 77))
            .unwrap();
        let g = l.shared().unwrap();
        drop(g);
        assert!(l.exclusive().is_err());
        assert_eq!(ids(&l), vec![id]);
    }

    #[test]
    fn stale_by_time_is_ignored_and_removed_only_by_an_exclusive_lock() {
        let (_t, l) = repo();
        let old = foreign(true, "otherhost", Duration::from_secs(31 * 60), 77);
        assert!(old.is_stale(Timestamp::now(), Some("thishost")));
        let fresh = foreign(true, "otherhost", Duration::from_secs(29 * 60), 77);
        assert!(!fresh.is_stale(Timestamp::now(), Some("thishost")));
        let id = l.write(&old).unwrap();
        drop(l.shared().unwrap());
        assert_eq!(ids(&l), vec![id.clone()], "a shared lock leaves it alone");
        drop(l.exclusive().unwrap());
        assert!(
            ids(&l).is_empty(),
            "the exclusive lock removed the stale one"
        );
    }

    #[test]
    fn stale_by_dead_pid_on_this_host_only() {
        let (_t, l) = repo();
        let host = this_host().unwrap();
        let dead = dead_pid();
        let gone = foreign(true, &host, Duration::from_secs(60), dead);
        assert!(gone.is_stale(Timestamp::now(), Some(&host)));
        // the same pid on another host: that process may well run
        let elsewhere = foreign(true, "otherhost", Duration::from_secs(60), dead);
        assert!(!elsewhere.is_stale(Timestamp::now(), Some(&host)));
        // a running process of this host
        let alive = foreign(
            true,
            &host,
            Duration::from_secs(60),
            i64::from(std::process::id()),
        );
        assert!(!alive.is_stale(Timestamp::now(), Some(&host)));

        l.write(&gone).unwrap();
        drop(l.shared().unwrap());
        let id = l.write(&alive).unwrap();
        assert!(l.shared().is_err(), "a live exclusive lock refuses");
        l.remove(&id).unwrap();
        drop(l.exclusive().unwrap());
        assert!(ids(&l).is_empty());
    }

    #[test]
    fn an_unreadable_lock_file_refuses_and_an_empty_one_is_skipped() {
        let (_t, l) = repo();
        fs::create_dir_all(l.dir()).unwrap();
        fs::write(l.dir().join("0".repeat(64)), b"").unwrap();
        drop(l.exclusive().unwrap());
        fs::write(
            l.dir().join("1".repeat(64)),
            b"garbage that is no lock at all",
        )
        .unwrap();
        let e = l.shared().unwrap_err().to_string();
        assert!(e.contains("cannot be read") && e.contains("unlock"), "{e}");
    }

    #[test]
    fn refresh_replaces_the_file_with_a_newer_one() {
        let (_t, mut l) = repo();
        l.refresh_every = Duration::from_millis(50);
        let g = l.shared().unwrap();
        let first = g.id();
        let t0 = l.read(&first).unwrap().unwrap().time;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while g.id() == first {
            assert!(std::time::Instant::now() < deadline, "never refreshed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let now = ids(&l);
        assert_eq!(now.len(), 1, "the old file is removed: {now:?}");
        assert!(!now.contains(&first));
        assert!(l.read(&now[0]).unwrap().unwrap().time >= t0);
        drop(g);
        assert!(ids(&l).is_empty());
    }

    #[test]
    fn a_lock_is_not_written_once_the_repository_is_gone() {
        let (t, l) = repo();
        fs::remove_dir_all(t.path().join("repo")).unwrap();
        fs::create_dir(t.path().join("repo")).unwrap();
        assert!(l.shared().is_err());
        assert!(!t.path().join("repo/locks").exists());
    }
}
