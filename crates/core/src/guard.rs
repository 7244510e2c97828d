//! The mount guard: proves that a path really lies on the mounted backup volume before anything
//! is written there.
//!
//! The failure this prevents is the classic one of the shell script this replaces: the disk is
//! not mounted, the mount point is an empty directory on the SD card, and the backup happily
//! fills the root filesystem. So every check here is done against the kernel's view
//! (`stat(2)` device numbers and `/proc/self/mountinfo`), never against what a configuration says.
//!
//! Invariants:
//! - nothing here creates a directory; a missing path is reported, not made;
//! - a path is accepted only if it lies below the mount point, without `..`, and every part of
//!   it that exists is on the same filesystem as the mount point (so a symlink leading off the
//!   volume is refused);
//! - the mount point must be the topmost mount of exactly the volume's block device.
//!
//! Pure std; no D-Bus, so a run, a command and the disk adapter use the same checks, tested anywhere.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::disk::{DiskError, MountCheck, Volume};
use serde::{Deserialize, Serialize};

/// Name of the marker file at the root of the backup volume.
pub const MARKER_FILE: &str = ".burrow-volume";

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Resolves the repository path against the verified mount of `volume`.
///
/// A relative `repo_path` is taken relative to the mount point; an absolute one must lie inside
/// it. Fails with [`DiskError::DiskAbsent`] when the mount point or device is gone and with
/// [`DiskError::WrongDisk`] when the mount point is not (or no longer) the mount of that device
/// or the path leaves the volume.
pub fn resolve_repo_path(
    volume: &Volume,
    repo_path: &Path,
    check: MountCheck,
) -> Result<PathBuf, DiskError> {
    verify(volume, check)?;
    let mp = &volume.mount_point;
    let rel = if repo_path.is_absolute() {
        repo_path.strip_prefix(mp).map_err(|_| {
            DiskError::WrongDisk(format!(
                "repository path {} is not inside the backup volume mounted at {}; use a path \
                 relative to the volume or one below {}",
                repo_path.display(),
                mp.display(),
                mp.display()
            ))
        })?
    } else {
        repo_path
    };
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(DiskError::WrongDisk(format!(
                    "repository path {} must not contain `..` or a root; give a plain path below \
                     the volume {}",
                    repo_path.display(),
                    mp.display()
                )));
            }
        }
    }
    let full = mp.join(rel);
    check_stays_on_volume(volume, &full)?;
    Ok(full)
}

/// [`verify_mount`] for real volumes; nothing for simulated ones.
fn verify(volume: &Volume, check: MountCheck) -> Result<(), DiskError> {
    match check {
        MountCheck::Kernel => verify_mount(volume),
        MountCheck::Simulated => Ok(()),
    }
}

/// Checks that `mount_point` of `volume` is the topmost mount of `volume.device`.
pub fn verify_mount(volume: &Volume) -> Result<(), DiskError> {
    let mp = &volume.mount_point;
    if !mp.is_absolute() {
        return Err(DiskError::WrongDisk(format!(
            "mount point {} is not an absolute path",
            mp.display()
        )));
    }
    let mp_meta = match fs::metadata(mp) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DiskError::DiskAbsent(volume.fs_uuid.clone()));
        }
        Err(e) => {
            return Err(DiskError::Failed(format!(
                "cannot stat mount point {}: {e}; check that the backup disk is healthy",
                mp.display()
            )));
        }
    };
    let dev_meta = match fs::metadata(&volume.device) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DiskError::DiskAbsent(volume.fs_uuid.clone()));
        }
        Err(e) => {
            return Err(DiskError::Failed(format!(
                "cannot stat device {}: {e}",
                volume.device.display()
            )));
        }
    };
    if !dev_meta.file_type().is_block_device() {
        return Err(DiskError::WrongDisk(format!(
            "{} is not a block device, so {} cannot be verified as its mount",
            volume.device.display(),
            mp.display()
        )));
    }
    let rdev = dev_meta.rdev();
    let mountinfo = fs::read_to_string(MOUNTINFO).map_err(|e| {
        DiskError::Failed(format!(
            "cannot read {MOUNTINFO}: {e}; /proc must be mounted to verify the backup disk"
        ))
    })?;
    // The last entry for a path is the one on top (later mounts hide earlier ones).
    let top = parse_mountinfo(&mountinfo)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == *mp);
    let Some(top) = top else {
        return Err(DiskError::WrongDisk(format!(
            "{} is not a mount point: the backup disk {} is not mounted there, refusing to \
             write to the directory underneath",
            mp.display(),
            volume.fs_uuid
        )));
    };
    let by_number = top.dev == (major(rdev), minor(rdev));
    let by_source = Path::new(&top.source) == volume.device;
    if !(by_number || by_source) || mp_meta.dev() != rdev {
        return Err(DiskError::WrongDisk(format!(
            "{} is mounted from {} ({}:{}), not from the backup disk {} ({}:{}, UUID {})",
            mp.display(),
            top.source,
            top.dev.0,
            top.dev.1,
            volume.device.display(),
            major(rdev),
            minor(rdev),
            volume.fs_uuid
        )));
    }
    Ok(())
}

/// True if `path` and `mount_point` are on the same filesystem (same `st_dev`). False if either
/// cannot be stat'ed.
pub fn same_filesystem(path: &Path, mount_point: &Path) -> bool {
    match (fs::metadata(path), fs::metadata(mount_point)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// Follows `full` (below the verified mount point) as far as it exists and refuses it if any
/// existing part resolves off the volume, e.g. through a symlink.
fn check_stays_on_volume(volume: &Volume, full: &Path) -> Result<(), DiskError> {
    let mp = &volume.mount_point;
    let mut existing = full;
    loop {
        match fs::symlink_metadata(existing) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match existing.parent() {
                Some(p) => existing = p,
                None => break,
            },
            Err(e) => {
                return Err(DiskError::Failed(format!(
                    "cannot inspect {}: {e}",
                    existing.display()
                )));
            }
        }
    }
    let canon = fs::canonicalize(existing)
        .map_err(|e| DiskError::Failed(format!("cannot resolve {}: {e}", existing.display())))?;
    let canon_mp = fs::canonicalize(mp)
        .map_err(|e| DiskError::Failed(format!("cannot resolve {}: {e}", mp.display())))?;
    if !canon.starts_with(&canon_mp) || !same_filesystem(&canon, mp) {
        return Err(DiskError::WrongDisk(format!(
            "{} leads to {}, which is not on the backup volume at {}; remove the symlink or \
             choose another repository path",
            full.display(),
            canon.display(),
            mp.display()
        )));
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Marker {
    repository_id: String,
}

/// Writes the marker file naming `repo_id` at the root of the verified volume, atomically.
pub fn write_marker(volume: &Volume, repo_id: &str, check: MountCheck) -> io::Result<()> {
    verify(volume, check).map_err(|e| io::Error::other(e.to_string()))?;
    write_marker_at(&volume.mount_point, repo_id)
}

/// Written atomically (`write_atomic`: temp file, fsync, rename, directory fsync), so a power
/// cut leaves either the old or the new marker, never a torn one.
fn write_marker_at(dir: &Path, repo_id: &str) -> io::Result<()> {
    let mut body = serde_json::to_vec(&Marker {
        repository_id: repo_id.to_owned(),
    })
    .map_err(io::Error::other)?;
    body.push(b'\n');
    crate::fsutil::write_atomic(&dir.join(MARKER_FILE), &body)
}

/// Checks that the verified volume carries the marker of repository `repo_id`.
pub fn check_marker(volume: &Volume, repo_id: &str, check: MountCheck) -> Result<(), DiskError> {
    verify(volume, check)?;
    check_marker_at(&volume.mount_point, &volume.fs_uuid, repo_id)
}

/// The repository id named by the marker of the verified volume; [`DiskError::WrongDisk`] if
/// there is no (valid) marker, so the volume is not a burrow disk (or not initialised yet).
pub fn read_marker(volume: &Volume, check: MountCheck) -> Result<String, DiskError> {
    verify(volume, check)?;
    read_marker_at(&volume.mount_point, &volume.fs_uuid)
}

fn read_marker_at(dir: &Path, fs_uuid: &str) -> Result<String, DiskError> {
    let path = dir.join(MARKER_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DiskError::WrongDisk(format!(
                "no burrow marker on {} (filesystem {fs_uuid}): plug in the right disk, or run \
                 `burrow init` if this is a new backup disk",
                dir.display()
            )));
        }
        Err(e) => {
            return Err(DiskError::Failed(format!(
                "cannot read {}: {e}; check the backup disk",
                path.display()
            )));
        }
    };
    let marker: Marker = serde_json::from_slice(&text).map_err(|e| {
        DiskError::WrongDisk(format!(
            "marker {} is not valid ({e}); remove it and run `burrow init` if this is the \
             backup disk",
            path.display()
        ))
    })?;
    Ok(marker.repository_id)
}

fn check_marker_at(dir: &Path, fs_uuid: &str, repo_id: &str) -> Result<(), DiskError> {
    let marked = read_marker_at(dir, fs_uuid)?;
    if marked != repo_id {
        return Err(DiskError::WrongDisk(format!(
            "the disk at {} (filesystem {fs_uuid}) belongs to repository {marked}, but \
             repository {repo_id} is configured; plug in the right disk or fix the configuration",
            dir.display(),
        )));
    }
    Ok(())
}

/// One line of `/proc/self/mountinfo`, as far as burrow reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mounted device's major and minor number.
    pub dev: (u64, u64),
    pub mount_point: PathBuf,
    pub source: String,
    /// The per-mount options (`rw,nosuid,…`).
    pub options: String,
}

/// Parses `/proc/self/mountinfo` (see proc(5)), in mount order; malformed lines are
/// skipped. The guard's view of the mounts, and the tests'.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let _id = l.next()?;
            let _parent = l.next()?;
            let (maj, min) = l.next()?.split_once(':')?;
            let _root = l.next()?;
            let mount_point = unescape(l.next()?);
            let options = l.next()?.to_owned();
            let mut r = right.split(' ');
            let _fstype = r.next()?;
            let source = unescape(r.next()?);
            Some(MountEntry {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                mount_point: PathBuf::from(mount_point),
                source,
                options,
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space etc.) in mountinfo fields.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// glibc's encoding of dev_t (gnu_dev_major/minor), which the kernel's mountinfo numbers match.
fn major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)
}

fn minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/media/a\040b"), "/media/a b");
        assert_eq!(unescape(r"/x\"), r"/x\");
        assert_eq!(unescape("/plain"), "/plain");
    }

    fn volume_at(dir: &Path) -> Volume {
        Volume {
            mount_point: dir.to_path_buf(),
            device: PathBuf::from("/dev/loop7"),
            fs_uuid: "0000-test".into(),
            encrypted: false,
        }
    }

    #[test]
    fn tempdir_is_not_a_mount_point() {
        let d = tempfile::tempdir().unwrap();
        // Any existing block device will do; the point is the missing mount.
        let mut v = volume_at(d.path());
        if let Some(dev) = first_block_device() {
            v.device = dev;
            let e = resolve_repo_path(&v, Path::new("repo"), MountCheck::Kernel).unwrap_err();
            assert!(
                matches!(&e, DiskError::WrongDisk(m) if m.contains("is not a mount point")),
                "{e:?}"
            );
        }
        assert!(
            !d.path().join("repo").exists(),
            "the guard must not create anything"
        );
    }

    #[test]
    fn missing_mount_point_is_disk_absent() {
        let d = tempfile::tempdir().unwrap();
        let v = volume_at(&d.path().join("media/backup"));
        let e = resolve_repo_path(&v, Path::new("repo"), MountCheck::Kernel).unwrap_err();
        assert_eq!(e, DiskError::DiskAbsent("0000-test".into()));
        assert!(!d.path().join("media").exists());
    }

    #[test]
    fn device_that_is_not_a_block_device_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut v = volume_at(d.path());
        v.device = d.path().to_path_buf();
        let e = resolve_repo_path(&v, Path::new("repo"), MountCheck::Kernel).unwrap_err();
        assert!(matches!(e, DiskError::WrongDisk(m) if m.contains("not a block device")));
    }

    #[test]
    fn root_mount_of_another_device_is_wrong_disk() {
        // "/" is a mount point, but of some other device than the one we name.
        let Some(dev) = first_block_device() else {
            return;
        };
        let v = Volume {
            mount_point: PathBuf::from("/"),
            device: dev,
            fs_uuid: "x".into(),
            encrypted: false,
        };
        if let Err(e) = verify_mount(&v) {
            assert!(matches!(e, DiskError::WrongDisk(_)), "{e:?}");
        }
    }

    #[test]
    fn relative_path_checks_are_lexical_and_strict() {
        let d = tempfile::tempdir().unwrap();
        let v = volume_at(d.path());
        // check_stays_on_volume is the part that does not need a real mount.
        fs::create_dir(d.path().join("repo")).unwrap();
        check_stays_on_volume(&v, &d.path().join("repo")).unwrap();
        check_stays_on_volume(&v, &d.path().join("repo/not/yet")).unwrap();
        assert!(!d.path().join("repo/not").exists());
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        let e = check_stays_on_volume(&v, &d.path().join("link/repo")).unwrap_err();
        assert!(matches!(e, DiskError::WrongDisk(m) if m.contains("not on the backup volume")));
    }

    #[test]
    fn marker_round_trip_and_mismatch() {
        let d = tempfile::tempdir().unwrap();
        let e = check_marker_at(d.path(), "u1", "repo-a").unwrap_err();
        assert!(matches!(&e, DiskError::WrongDisk(m) if m.contains("run `burrow init`")));
        write_marker_at(d.path(), "repo-a").unwrap();
        assert_eq!(read_marker_at(d.path(), "u1").unwrap(), "repo-a");
        check_marker_at(d.path(), "u1", "repo-a").unwrap();
        let e = check_marker_at(d.path(), "u1", "repo-b").unwrap_err();
        assert!(
            matches!(&e, DiskError::WrongDisk(m) if m.contains("repo-a") && m.contains("repo-b"))
        );
        // Rewriting replaces the marker and leaves no temp file behind.
        write_marker_at(d.path(), "repo-b").unwrap();
        check_marker_at(d.path(), "u1", "repo-b").unwrap();
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(MARKER_FILE)]);
        let text = fs::read_to_string(d.path().join(MARKER_FILE)).unwrap();
        assert_eq!(text.trim(), r#"{"repository_id":"repo-b"}"#);
        fs::write(d.path().join(MARKER_FILE), b"garbage").unwrap();
        assert!(matches!(
            check_marker_at(d.path(), "u1", "repo-b"),
            Err(DiskError::WrongDisk(m)) if m.contains("not valid")
        ));
    }

    #[test]
    fn write_marker_refuses_unverified_directory() {
        let d = tempfile::tempdir().unwrap();
        let v = volume_at(d.path());
        assert!(write_marker(&v, "r", MountCheck::Kernel).is_err());
        assert!(!d.path().join(MARKER_FILE).exists());
    }

    #[test]
    fn mountinfo_parsing() {
        let text = "\
22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
42 27 7:0 / /media/root/my\\040disk ro,nosuid - ext4 /dev/loop0 ro,errors=remount-ro
43 27 253:0 / /media/x rw master:3 shared:7 - ext4 /dev/mapper/luks-1 rw
bad line
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, PathBuf::from("/media/root/my disk"));
        assert_eq!(m[1].dev, (7, 0));
        assert_eq!(m[1].source, "/dev/loop0");
        assert_eq!(m[2].dev, (253, 0));
        assert_eq!(m[2].source, "/dev/mapper/luks-1");
    }

    #[test]
    fn dev_numbers() {
        assert_eq!((major(1792), minor(1792)), (7, 0));
        assert_eq!((major(0xfd01), minor(0xfd01)), (253, 1));
        // Large minor numbers (e.g. loop devices above 255) use the extended encoding.
        let dev = (259u64 << 8) | ((300u64 & !0xff) << 12) | (300 & 0xff);
        assert_eq!((major(dev), minor(dev)), (259, 300));
    }

    #[test]
    fn same_filesystem_helper() {
        let d = tempfile::tempdir().unwrap();
        assert!(same_filesystem(d.path(), d.path()));
        assert!(!same_filesystem(&d.path().join("nope"), d.path()));
    }

    fn first_block_device() -> Option<PathBuf> {
        fs::read_dir("/dev")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                fs::metadata(p)
                    .map(|m| m.file_type().is_block_device())
                    .unwrap_or(false)
            })
    }
}
