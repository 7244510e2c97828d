//! `burrow setup key-stick`: a random LUKS key file (and a repository password) written onto
//! a mounted USB stick, never over a file there and never into a plain directory, and the
//! steps that follow: the key into the backup disk's LUKS header, the config lines.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use burrow_core::fsutil::{create_password, create_random};

/// The key file's name on the stick (`disk.key.key_file`).
pub const KEY_FILE: &str = "file";
/// The repository password's name on the stick (`repository.password_file`).
pub const PASSWORD_FILE: &str = "burrow-password";

#[derive(Debug, thiserror::Error)]
pub enum StickError {
    #[error("{}: {source}", path.display())]
    Resolve { path: PathBuf, source: io::Error },
    #[error(
        "{} is not a mount point: mount the key stick first (e.g. `udisksctl mount -b /dev/sdb1`)",
        .0.display()
    )]
    NotMounted(PathBuf),
    #[error("/ is the system disk, not a key stick")]
    SystemDisk,
    #[error(
        "{} exists; not overwriting it (it may be the only key to your backup disk)",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// A mounted filesystem to write the secrets on.
#[derive(Debug, Clone)]
pub struct KeyStick {
    mount_point: PathBuf,
    /// Its device, as the mount table names it.
    source: String,
}

/// What [`KeyStick::write_secrets`] wrote.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub key_file: PathBuf,
    pub bytes: usize,
    pub password_file: Option<PathBuf>,
}

impl KeyStick {
    /// The stick mounted at `mountpoint`. A plain directory is refused: a key written to the
    /// SD card because the stick was not mounted would unlock the disk for whoever takes the
    /// Pi. So is the root filesystem.
    pub fn at(mountpoint: &Path) -> Result<KeyStick, StickError> {
        let mp = fs::canonicalize(mountpoint).map_err(|source| StickError::Resolve {
            path: mountpoint.to_owned(),
            source,
        })?;
        let Some(source) = findmnt(&mp, "SOURCE").filter(|s| !s.is_empty()) else {
            return Err(StickError::NotMounted(mp));
        };
        if mp == Path::new("/") {
            return Err(StickError::SystemDisk);
        }
        Ok(KeyStick {
            mount_point: mp,
            source,
        })
    }

    /// Writes a key file of `bytes` random bytes and, with `password`, a random repository
    /// password, both mode 0400; refuses before writing anything when either file exists.
    pub fn write_secrets(&self, bytes: usize, password: bool) -> Result<Secrets, StickError> {
        let key_file = self.mount_point.join(KEY_FILE);
        let password_file = password.then(|| self.mount_point.join(PASSWORD_FILE));
        for p in std::iter::once(&key_file).chain(&password_file) {
            if p.exists() || p.is_symlink() {
                return Err(StickError::Exists(p.clone()));
            }
        }
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| StickError::Write { path, source }
        };
        create_random(&key_file, 0o400, bytes).map_err(failed(&key_file))?;
        if let Some(p) = &password_file {
            create_password(p, 0o400, 48).map_err(failed(p))?;
        }
        if let Ok(d) = fs::File::open(&self.mount_point) {
            let _ = d.sync_all();
        }
        Ok(Secrets {
            key_file,
            bytes,
            password_file,
        })
    }

    /// What was written, then the steps that follow: the key into the LUKS header of the
    /// backup disk (found among this machine's LUKS containers when there is one), the
    /// config lines, a copy kept safe, the stick unmounted.
    pub fn report(&self, s: &Secrets) -> String {
        let key = s.key_file.display();
        let mut out = format!("wrote {key} ({} random bytes, mode 0400)\n", s.bytes);
        if let Some(p) = &s.password_file {
            out.push_str(&format!(
                "wrote {} (repository password, mode 0400)\n",
                p.display()
            ));
        }
        let luks = luks_uuids();
        let disk = match luks.as_slice() {
            [one] => format!("/dev/disk/by-uuid/{one}"),
            _ => "/dev/disk/by-uuid/<LUKS UUID of the backup disk>".to_owned(),
        };
        out.push_str(
            "\nAdd the key file to the backup disk's LUKS header (asks for an existing passphrase):\n",
        );
        if luks.len() > 1 {
            out.push_str(&format!(
                "  # several LUKS containers: {} — pick the backup disk's\n",
                luks.join(", ")
            ));
        } else if luks.is_empty() {
            out.push_str("  # find the UUID with `lsblk -f` (FSTYPE crypto_LUKS)\n");
        }
        out.push_str(&format!(
            "  cryptsetup luksAddKey {disk} {key}\nTest it:\n  cryptsetup open --test-passphrase --key-file {key} {disk} && echo ok\n"
        ));
        let fs_uuid = findmnt(&self.mount_point, "UUID").filter(|u| !u.is_empty());
        out.push_str(&self.config_lines(fs_uuid.as_deref(), s));
        out
    }

    fn config_lines(&self, fs_uuid: Option<&str>, s: &Secrets) -> String {
        let source = &self.source;
        let uuid = fs_uuid.map_or_else(
            || format!("<filesystem UUID of the stick: lsblk -f {source}>"),
            str::to_owned,
        );
        let mut out = format!(
            "\nIn the config ({source}):\ndisk:\n  key:\n    fs_uuid: \"{uuid}\"\n    key_file: {KEY_FILE}\n"
        );
        if s.password_file.is_some() {
            out.push_str(&format!("repository:\n  password_file: {PASSWORD_FILE}\n"));
        }
        out.push_str(&format!(
            "\nKeep a copy of {} somewhere safe (not next to the disk): without it and without a\n\
             passphrase in the LUKS header, the backups cannot be opened.{}\n\
             Then unmount the stick: umount {}\n",
            s.key_file.display(),
            if s.password_file.is_some() {
                " The same holds for burrow-password."
            } else {
                ""
            },
            self.mount_point.display()
        ));
        out
    }
}

/// A field of the mount at `mountpoint`, as `findmnt` reports it; `None` when nothing is
/// mounted there.
fn findmnt(mountpoint: &Path, field: &str) -> Option<String> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", field, "--mountpoint"])
        .arg(mountpoint)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// UUIDs of the LUKS containers this machine can see.
fn luks_uuids() -> Vec<String> {
    Command::new("lsblk")
        .args(["-n", "-r", "-o", "UUID,FSTYPE"])
        .output()
        .map(|out| parse_luks(&String::from_utf8_lossy(&out.stdout)))
        .unwrap_or_default()
}

/// The UUIDs of the `crypto_LUKS` lines of `lsblk -n -r -o UUID,FSTYPE`.
fn parse_luks(lsblk: &str) -> Vec<String> {
    lsblk
        .lines()
        .filter_map(|l| {
            let (u, t) = l.split_once(' ')?;
            (t.trim() == "crypto_LUKS" && !u.is_empty()).then(|| u.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn stick(dir: &Path) -> KeyStick {
        KeyStick {
            mount_point: dir.to_owned(),
            source: "/dev/sdb1".into(),
        }
    }

    #[test]
    fn a_plain_directory_is_no_key_stick() {
        let tmp = tempfile::tempdir().unwrap();
        let e = KeyStick::at(tmp.path()).unwrap_err();
        assert!(matches!(e, StickError::NotMounted(_)), "{e}");
        assert!(e.to_string().contains("not a mount point"), "{e}");
        let e = KeyStick::at(&tmp.path().join("missing")).unwrap_err();
        assert!(matches!(e, StickError::Resolve { .. }), "{e}");
        assert!(tmp.path().read_dir().unwrap().next().is_none());
    }

    #[test]
    fn secrets_are_written_once_and_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let s = stick(tmp.path());
        let w = s.write_secrets(512, true).unwrap();
        let key = fs::read(&w.key_file).unwrap();
        assert_eq!(key.len(), 512);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&w.key_file), 0o400);
        let pw = w.password_file.clone().unwrap();
        assert_eq!(mode(&pw), 0o400);
        assert_eq!(fs::read_to_string(&pw).unwrap().trim().len(), 48);
        let e = s.write_secrets(64, false).unwrap_err();
        assert!(e.to_string().contains("not overwriting"), "{e}");
        assert_eq!(fs::read(&w.key_file).unwrap(), key);
        // The password file alone being there also stops the key from being written.
        fs::remove_file(&w.key_file).unwrap();
        assert!(matches!(s.write_secrets(64, true), Err(StickError::Exists(p)) if p == pw));
        assert!(!w.key_file.exists());
    }

    #[test]
    fn the_steps_name_the_files_and_the_config_lines() {
        let s = stick(Path::new("/media/stick"));
        let w = Secrets {
            key_file: PathBuf::from("/media/stick/file"),
            bytes: 4096,
            password_file: None,
        };
        let t = s.report(&w);
        assert!(
            t.starts_with("wrote /media/stick/file (4096 random bytes, mode 0400)\n"),
            "{t}"
        );
        assert!(
            t.contains("cryptsetup luksAddKey /dev/disk/by-uuid/"),
            "{t}"
        );
        assert!(!t.contains("password_file"), "{t}");
        assert!(
            t.ends_with("Then unmount the stick: umount /media/stick\n"),
            "{t}"
        );
        let w = Secrets {
            password_file: Some(PathBuf::from("/media/stick/burrow-password")),
            ..w
        };
        let t = s.config_lines(Some("3f1c"), &w);
        assert!(t.contains("In the config (/dev/sdb1):\ndisk:\n  key:\n    fs_uuid: \"3f1c\"\n    key_file: file\nrepository:\n  password_file: burrow-password\n"), "{t}");
        assert!(t.contains("The same holds for burrow-password."), "{t}");
        let t = s.config_lines(None, &w);
        assert!(t.contains("fs_uuid: \"<filesystem UUID of the stick: lsblk -f /dev/sdb1>\""));
    }

    #[test]
    fn luks_containers_from_lsblk() {
        let out = "3f1c-1 ext4\n9c2d crypto_LUKS\n vfat\n crypto_LUKS\nab12 crypto_LUKS\n";
        assert_eq!(parse_luks(out), ["9c2d", "ab12"]);
    }
}
