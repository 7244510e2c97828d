//! restic's encryption of everything but key files: AES-256-CTR with a random 16-byte nonce,
//! authenticated by Poly1305-AES, laid out as `nonce ‖ ciphertext ‖ tag`, with the
//! repository's master key. Unpacked files (index, snapshot, lock) are JSON; in repository
//! version 2 the JSON is stored as a version byte `2` followed by a zstd frame, and a file is
//! named by the SHA-256 of its stored bytes.

use aes256ctr_poly1305aes::aead::AeadInPlace;
use aes256ctr_poly1305aes::{Aes256CtrPoly1305Aes, Key, Nonce};
use rustic_core::Id;
use rustic_core::repofile::MasterKey;
use sha2::{Digest, Sha256};

/// Bytes a sealed blob or file has on top of its plaintext.
pub const OVERHEAD: usize = 32;

/// Seals and opens with one master key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256CtrPoly1305Aes,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(***)")
    }
}

impl Sealer {
    /// `None` when the key does not have restic's form (32 + 16 + 16 bytes).
    pub fn new(master: &MasterKey) -> Option<Sealer> {
        let (enc, k, r) = (&master.encrypt, &master.mac.k, &master.mac.r);
        if enc.len() != 32 || k.len() != 16 || r.len() != 16 {
            return None;
        }
        let mut key = Key::default();
        key[..32].copy_from_slice(enc);
        key[32..48].copy_from_slice(k);
        key[48..].copy_from_slice(r);
        Some(Sealer {
            cipher: Aes256CtrPoly1305Aes::new(&key),
        })
    }

    /// A key made of 64 raw bytes (a key file's scrypt output).
    pub fn from_raw(raw: &[u8; 64]) -> Sealer {
        Sealer {
            cipher: Aes256CtrPoly1305Aes::new(Key::from_slice(raw)),
        }
    }

    /// `plain` sealed into `out` (cleared first): one allocation at most, none when `out`
    /// has the room.
    pub fn seal_into(&self, plain: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(plain.len() + OVERHEAD);
        let mut nonce = Nonce::default();
        rand::Rng::fill(&mut rand::rng(), nonce.as_mut_slice());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce, b"", &mut out[16..])
            .expect("AES-CTR encrypts any length a Vec holds");
        out.extend_from_slice(&tag);
    }

    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(plain, &mut out);
        out
    }

    /// The plaintext of `data`, or `None` when it is too short or does not authenticate.
    pub fn open(&self, data: &[u8]) -> Option<Vec<u8>> {
        if data.len() < OVERHEAD {
            return None;
        }
        let (nonce, rest) = data.split_at(16);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        let mut plain = ct.to_vec();
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), b"", &mut plain, tag.into())
            .ok()?;
        Some(plain)
    }

    /// An unpacked file's stored bytes for `json` and their id; compressed when `compress`
    /// (repository version 2).
    pub fn seal_file(&self, json: &[u8], compress: bool) -> (Vec<u8>, Id) {
        let data = if compress {
            let mut plain = vec![2u8];
            plain.extend(
                zstd::bulk::compress(json, zstd::DEFAULT_COMPRESSION_LEVEL)
                    .expect("zstd compresses any input"),
            );
            self.seal(&plain)
        } else {
            self.seal(json)
        };
        let id = Id::new(Sha256::digest(&data).into());
        (data, id)
    }

    /// The JSON in an unpacked file's stored bytes (either encoding).
    pub fn open_file(&self, data: &[u8]) -> Result<Vec<u8>, Unreadable> {
        let plain = self.open(data).ok_or(Unreadable::Key)?;
        match plain.first() {
            Some(b'{') | Some(b'[') => Ok(plain),
            Some(2) => zstd::decode_all(&plain[1..]).map_err(Unreadable::Zstd),
            _ => Err(Unreadable::Encoding),
        }
    }
}

/// Why a stored file (a lock, a key's data) cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("it does not decrypt with this repository's key")]
    Key,
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
    #[error("unknown encoding")]
    Encoding,
    #[error("cannot read it: {0}")]
    Io(std::io::Error),
    #[error("its content does not match its name")]
    NotItsName,
    #[error("too short")]
    TooShort,
    #[error("not the JSON expected: {0}")]
    Json(serde_json::Error),
    #[error("time {0:?}: {1}")]
    Time(String, String),
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_and_tampering_is_refused() {
        let s = Sealer::new(&MasterKey::new()).unwrap();
        let sealed = s.seal(b"hello");
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(s.open(&sealed).unwrap(), b"hello");
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(s.open(&bad).is_none());
        let other = Sealer::new(&MasterKey::new()).unwrap();
        assert!(other.open(&sealed).is_none());
        for compress in [false, true] {
            let (data, id) = s.seal_file(br#"{"a":1}"#, compress);
            assert_eq!(id, Id::new(Sha256::digest(&data).into()));
            assert_eq!(s.open_file(&data).unwrap(), br#"{"a":1}"#);
        }
    }
}
