//! Small file-system helpers shared by the crates that keep state on the Pi.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, RngCore};

/// Creates `path`, which must not exist (a symlink there is not followed), with `mode` and
/// `data`, flushed to the device; a file left half-written is removed. For secrets (keys,
/// passwords) that must never replace what is there.
pub fn create_new(path: &Path, mode: u32, data: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(path)?;
    let res = f.write_all(data).and_then(|()| f.sync_all());
    if res.is_err() {
        let _ = fs::remove_file(path);
    }
    res
}

/// [`create_new`] with `len` random bytes: a key file.
pub fn create_random(path: &Path, mode: u32, len: usize) -> io::Result<()> {
    let mut key = vec![0u8; len];
    rand::rng().fill_bytes(&mut key);
    let res = create_new(path, mode, &key);
    key.fill(0);
    res
}

/// [`create_new`] with a random password of `len` ASCII letters and digits and a newline.
pub fn create_password(path: &Path, mode: u32, len: usize) -> io::Result<()> {
    let mut secret: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    secret.push('\n');
    create_new(path, mode, secret.as_bytes())
}

/// Replaces `path` with `bytes` so that a reader (or a reboot) sees the old or the new content,
/// never a mix: the temp file lives in the same directory because rename is only atomic within
/// one file system, and the directory fsync makes the rename itself durable. A file that
/// existed keeps its permissions, and its new content is readable by the owner alone until
/// it has them (the config, which holds ping URLs, is replaced this way).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let keep = fs::metadata(path).ok().map(|m| m.permissions());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    // pid + counter: two saves racing in one process, or a second process (`burrow status`
    // repairing state), never share a temp file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    tmp_name.push(format!(".tmp.{}.{seq}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = match &keep {
            Some(_) => fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?,
            None => File::create(&tmp)?,
        };
        f.write_all(bytes)?;
        if let Some(p) = keep {
            f.set_permissions(p)?;
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("config.yaml");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(mode(&p), 0o640);
        let fresh = tmp.path().join("state.json");
        write_atomic(&fresh, b"{}").unwrap();
        assert_eq!(fs::read_to_string(&fresh).unwrap(), "{}");
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn secrets_are_new_files_with_their_mode_and_never_replace_one() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("file");
        create_random(&key, 0o400, 512).unwrap();
        assert_eq!(fs::read(&key).unwrap().len(), 512);
        assert_eq!(mode(&key), 0o400);
        let pw = tmp.path().join("password");
        create_password(&pw, 0o600, 40).unwrap();
        let text = fs::read_to_string(&pw).unwrap();
        assert_eq!(mode(&pw), 0o600);
        assert_eq!(text.len(), 41);
        assert!(text.ends_with('\n'));
        assert!(
            text.trim_end().bytes().all(|b| b.is_ascii_alphanumeric()),
            "{text}"
        );
        assert_ne!(text, {
            let other = tmp.path().join("other");
            create_password(&other, 0o600, 40).unwrap();
            fs::read_to_string(&other).unwrap()
        });
        let e = create_password(&pw, 0o600, 40).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&pw).unwrap(), text);
        assert!(create_random(&key, 0o400, 8).is_err());
    }
}
