//! Pack files streamed to disk as they fill.
//!
//! restic's pack layout: the sealed blobs one after the other, then the sealed header (per
//! blob: a type byte, the stored length, for a compressed blob the plain length, the blob id),
//! then the header's stored length as 4 bytes little-endian. A pack is named by the SHA-256 of
//! all its bytes, which is computed while they are written.
//!
//! A pack is written under a temporary `<random>-tmp-pack` name in `data/<xx>/`, so a kill leaves
//! debris that [`crate::Repo::remove_tmp_debris`] removes, never a file under a pack's name
//! with other bytes. Once complete it is synced, renamed to `data/<xx>/<id>` (on the
//! filesystem the repository was opened on, see `pinned`) and its directory synced; only then
//! does its index entry exist ([`PackDone`]), so an index never names a pack that a power cut
//! could lose.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustic_core::repofile::BlobType;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crypto::{Sealer, hex};

/// restic's default pack size (`--pack-size`, 16 MiB): a pack is closed once it holds this
/// much.
pub const PACK_SIZE: u64 = 16 << 20;

/// One blob as an index file lists it (restic's JSON).
#[derive(Debug, Clone, Serialize)]
pub struct IndexedBlob {
    #[serde(serialize_with = "ser_id")]
    pub id: [u8; 32],
    #[serde(rename = "type")]
    pub tpe: BlobType,
    pub offset: u32,
    pub length: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

/// A complete pack as an index file lists it.
#[derive(Debug, Clone, Serialize)]
pub struct PackDone {
    #[serde(serialize_with = "ser_id")]
    pub id: [u8; 32],
    pub blobs: Vec<IndexedBlob>,
}

fn ser_id<S: serde::Serializer>(id: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(id))
}

pub struct PackWriter {
    file: BufWriter<File>,
    tmp: PathBuf,
    hash: Sha256,
    blobs: Vec<IndexedBlob>,
    size: u64,
}

impl PackWriter {
    /// A new empty pack in `data` (the repository's `data/` directory).
    pub fn create(data: &Path) -> io::Result<PackWriter> {
        let mut name = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut name[..]);
        let name = hex(&name);
        // In a `data/<xx>/` directory like every pack (listings of `data/` expect nothing
        // else there), under a name no pack can have.
        let tmp = data.join(&name[..2]).join(format!("{name}-tmp-pack"));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        Ok(PackWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            tmp,
            hash: Sha256::new(),
            blobs: Vec::new(),
            size: 0,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.hash.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Appends a sealed blob; `plain_len` when it was compressed.
    pub fn add(
        &mut self,
        id: [u8; 32],
        tpe: BlobType,
        sealed: &[u8],
        plain_len: Option<u32>,
    ) -> io::Result<()> {
        let offset = u32::try_from(self.size).map_err(|_| io::Error::other("pack too large"))?;
        self.put(sealed)?;
        self.blobs.push(IndexedBlob {
            id,
            tpe,
            offset,
            length: sealed.len() as u32,
            uncompressed_length: plain_len,
        });
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Writes the header, syncs, and gives the pack its name. `place` is asked first whether
    /// the repository is still where it was opened; on any error the temporary file is
    /// removed.
    pub fn finish(
        mut self,
        sealer: &Sealer,
        place: &dyn Fn() -> io::Result<()>,
    ) -> io::Result<PackDone> {
        let done = self.write_out(sealer, place);
        if done.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        done
    }

    fn write_out(
        &mut self,
        sealer: &Sealer,
        place: &dyn Fn() -> io::Result<()>,
    ) -> io::Result<PackDone> {
        let mut header = Vec::with_capacity(self.blobs.len() * 41);
        for b in &self.blobs {
            let compressed = b.uncompressed_length.is_some();
            header.push(match (b.tpe, compressed) {
                (BlobType::Data, false) => 0,
                (BlobType::Tree, false) => 1,
                (BlobType::Data, true) => 2,
                (BlobType::Tree, true) => 3,
            });
            header.extend_from_slice(&b.length.to_le_bytes());
            if let Some(n) = b.uncompressed_length {
                header.extend_from_slice(&n.to_le_bytes());
            }
            header.extend_from_slice(&b.id);
        }
        let sealed = sealer.seal(&header);
        self.put(&sealed)?;
        self.put(&(sealed.len() as u32).to_le_bytes())?;
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        let id: [u8; 32] = std::mem::take(&mut self.hash).finalize().into();
        let hex_id = hex(&id);
        let data = self
            .tmp
            .parent()
            .and_then(Path::parent)
            .expect("a pack is in data/<xx>/");
        let dir = data.join(&hex_id[..2]);
        place()?;
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        fs::rename(&self.tmp, dir.join(&hex_id))?;
        File::open(&dir)?.sync_all()?;
        Ok(PackDone {
            id,
            blobs: std::mem::take(&mut self.blobs),
        })
    }
}
