//! Key files at restic's memory cost.
//!
//! rustic_core makes a new key with scrypt's "recommended" parameters (N = 2^17, r = 8: a
//! 128 MiB buffer at every open), which on a 1 GB Raspberry Pi is a large share of what a run
//! may use. restic calibrates instead: N = 2^15 (32 MiB) and the parallelism p raised until a
//! derivation takes about half a second. burrow writes its keys the same way; a key file
//! stores N, r and p, so keys made by restic, rustic or an older burrow open as before.
//! Opening derives the key once per process handle; further handles reuse the master key.
//!
//! scrypt's p lanes are independent, so a derivation runs them on [`KDF_THREADS`] threads at
//! once ([`bounded`]): the same key and the same cost to someone guessing passwords, but
//! half the wall time on two cores, for one more 32 MiB buffer while it runs.

use std::time::{Duration, Instant};

use rustic_core::Id;
use rustic_core::repofile::{KeyFile, MasterKey};
use sha2::{Digest, Sha256};

use crate::RepoError;
use crate::crypto::Sealer;

/// restic's memory level: 128 · r · N bytes = 32 MiB.
pub const LOG_N: u8 = 15;
pub const R: u32 = 8;
/// The time a derivation should take on this machine, as restic aims for.
const TARGET: Duration = Duration::from_millis(500);
const MAX_P: u32 = 64;
/// Lanes derived at once: each holds its own 128 · r · N buffer, so this is also the
/// derivation's memory (2 × 32 MiB), whatever the core count.
pub const KDF_THREADS: usize = 2;

/// Runs `f` (a repository open or a key derivation) with scrypt's lanes on at most
/// [`KDF_THREADS`] threads, the memory bound above.
pub fn bounded<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new()
        .num_threads(KDF_THREADS)
        .thread_name(|i| format!("kdf-{i}"))
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(e) => {
            // rayon's global pool then, which is as large as the machine.
            tracing::warn!(error = %e, "cannot start the key derivation's threads");
            f()
        }
    }
}

fn derive(password: &[u8], salt: &[u8], p: u32) -> Result<[u8; 64], RepoError> {
    let scrypt = |e: &dyn std::fmt::Display| RepoError::Rustic(format!("scrypt: {e}"));
    let params = scrypt::Params::new(LOG_N, R, p).map_err(|e| scrypt(&e))?;
    let mut out = [0u8; 64];
    scrypt::scrypt(password, salt, &params, &mut out).map_err(|e| scrypt(&e))?;
    Ok(out)
}

/// The p that makes a derivation take about [`TARGET`] here (one timed derivation at p = 1).
pub fn calibrate() -> u32 {
    let start = Instant::now();
    let _ = derive(b"calibration", &[0u8; 64], 1);
    let once = start.elapsed().max(Duration::from_millis(1));
    ((TARGET.as_secs_f64() / once.as_secs_f64()).round() as u32).clamp(1, MAX_P)
}

/// A key file for `master` under `password`, with parallelism `p`; its JSON and id.
pub fn key_file(master: &MasterKey, password: &str, p: u32) -> Result<(Vec<u8>, Id), RepoError> {
    let mut salt = vec![0u8; 64];
    rand::Rng::fill(&mut rand::rng(), &mut salt[..]);
    let derived = bounded(|| derive(password.as_bytes(), &salt, p))?;
    let json = serde_json::to_vec(master).map_err(|e| RepoError::Rustic(e.to_string()))?;
    let file = KeyFile {
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok()),
        username: std::env::var("USER").ok(),
        created: Some(rustic_core::jiff::Zoned::now()),
        kdf: "scrypt".into(),
        n: 1 << LOG_N,
        r: R,
        p,
        data: Sealer::from_raw(&derived).seal(&json),
        salt,
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| RepoError::Rustic(e.to_string()))?;
    let id = Id::new(Sha256::digest(&bytes).into());
    Ok((bytes, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_opens_with_its_password_only() {
        let master = MasterKey::new();
        let (bytes, _) = key_file(&master, "secret", 1).unwrap();
        let file: KeyFile = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((file.n, file.r, file.p), (1 << 15, 8, 1));
        assert!(file.key_from_password(&"secret").is_ok());
        assert!(file.key_from_password(&"wrong").is_err());
        // The derived key unseals the master key that was put in.
        let derived = derive(b"secret", &file.salt, 1).unwrap();
        let plain = Sealer::from_raw(&derived).open(&file.data).unwrap();
        let m: MasterKey = serde_json::from_slice(&plain).unwrap();
        assert_eq!(m.encrypt, master.encrypt);
        assert!((1..=MAX_P).contains(&calibrate()));
    }
}
