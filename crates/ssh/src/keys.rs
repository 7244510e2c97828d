//! burrow's own SSH key (`burrow setup key`): a new ed25519 key pair written next to nothing
//! it could replace, or the public half of an existing one.

use std::fs;
use std::path::{Path, PathBuf};

use burrow_core::fsutil::create_new;
use rand::RngCore;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{LineEnding, PrivateKey, PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{} exists; not overwriting it (use --existing to print the lines for that key, or choose another --file)",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not an OpenSSH {what} key: {reason}", path.display())]
    Format {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("cannot encode the key: {0}")]
    Encode(String),
}

/// Where the public half of the key at `key` lives: `key.pub`.
pub fn public_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// `key` as an OpenSSH public key line, `ssh-ed25519 AAAA... comment` (`authorized_keys`).
pub fn openssh_line(key: &PublicKey) -> Result<String, KeyError> {
    key.to_openssh()
        .map_err(|e| KeyError::Encode(e.to_string()))
}

/// The public key of the pair at `file`: from `file.pub`, else from the private key.
pub fn read_public(file: &Path) -> Result<PublicKey, KeyError> {
    let p = public_path(file);
    if let Ok(text) = fs::read_to_string(&p) {
        return PublicKey::from_openssh(text.trim()).map_err(|e| KeyError::Format {
            path: p,
            what: "public",
            reason: e.to_string(),
        });
    }
    let text = fs::read_to_string(file).map_err(|source| KeyError::Read {
        path: file.to_owned(),
        source,
    })?;
    PrivateKey::from_openssh(&text)
        .map(|k| k.public_key().clone())
        .map_err(|e| KeyError::Format {
            path: file.to_owned(),
            what: "private",
            reason: e.to_string(),
        })
}

/// A new ed25519 key pair: `file` (0600) and `file.pub`, commented `burrow@<host name>`;
/// neither may exist.
pub fn create(file: &Path) -> Result<PublicKey, KeyError> {
    let pubfile = public_path(file);
    for p in [file, pubfile.as_path()] {
        if p.exists() || p.is_symlink() {
            return Err(KeyError::Exists(p.to_owned()));
        }
    }
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| KeyError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let pair = Ed25519Keypair::from_seed(&seed);
    seed.fill(0);
    let comment = format!("burrow@{}", host_name());
    let key = PrivateKey::new(KeypairData::Ed25519(pair), comment)
        .map_err(|e| KeyError::Encode(e.to_string()))?;
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))?;
    let public = key.public_key().clone();
    let public_line = openssh_line(&public)?;
    let write = |path: &Path, mode: u32, data: &[u8]| {
        create_new(path, mode, data).map_err(|source| KeyError::Write {
            path: path.to_owned(),
            source,
        })
    };
    write(file, 0o600, private.as_bytes())?;
    write(&pubfile, 0o644, format!("{public_line}\n").as_bytes())?;
    Ok(public)
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
