//! Content-defined chunking exactly as restic (and rustic_core) cut files, so that a file
//! backed up by burrow, restic or rustic yields the same blobs.
//!
//! The rule: a chunk is at least `min` bytes (512 KiB) and at most `max` (8 MiB). After the
//! first `min` bytes the Rabin fingerprint of a 64-byte window is computed, starting from an
//! empty hash over bytes `min − 64 .. min − 1` of the chunk; before each further byte is
//! taken, a zero fingerprint under the split mask (`avg − 1`, 1 MiB) cuts. A file of at
//! most `min` bytes is one chunk, and needs no fingerprint at all (the callers do not make
//! one for it).
//!
//! The fingerprint tables depend only on the repository's polynomial; they are built once
//! ([`Chunking::new`]) and cloned per file (a clone is a copy of 4 KiB, a build ~90 µs).

use std::io::{self, Read};

use rustic_cdc::{Rabin64, RollingHash64};

const WINDOW: usize = 64;
/// Bytes asked of the reader at a time.
const READ_SIZE: usize = 256 * 1024;

/// The chunker parameters of one repository.
#[derive(Clone)]
pub struct Chunking {
    rabin: Rabin64,
    pub min: usize,
    pub max: usize,
    mask: u64,
}

impl Chunking {
    /// restic's chunker for polynomial `poly` and its sizes.
    pub fn new(poly: u64, avg: usize, min: usize, max: usize) -> Chunking {
        assert!(avg.is_power_of_two() && min >= WINDOW && min <= max);
        Chunking {
            rabin: Rabin64::new_with_polynom(6, &poly),
            min,
            max,
            mask: avg as u64 - 1,
        }
    }

    /// The chunks of `reader`, in order, each handed to `emit` as it is cut. `first` holds
    /// bytes already read from the front of the file. Returns the file's length.
    pub fn chunk(
        &self,
        first: Vec<u8>,
        reader: &mut dyn Read,
        emit: &mut dyn FnMut(Vec<u8>) -> io::Result<()>,
    ) -> io::Result<u64> {
        let mut rabin = self.rabin.clone();
        let mut buf = vec![0u8; READ_SIZE];
        // Bytes of `buf` not yet part of a chunk: buf[pos..end].
        let (mut pos, mut end) = (0, 0);
        let mut total = 0u64;
        let mut carry = first;
        loop {
            let mut chunk = std::mem::take(&mut carry);
            chunk.reserve(self.min.saturating_sub(chunk.len()));
            if chunk.len() > self.min {
                // More than `min` bytes came in `first`: cut what lies beyond `min` again.
                buf_prepend(&mut buf, &mut pos, &mut end, chunk.split_off(self.min));
            }
            // The first `min` bytes always belong to the chunk.
            while chunk.len() < self.min {
                if pos == end {
                    (pos, end) = (0, read_some(reader, &mut buf)?);
                    if end == 0 {
                        break;
                    }
                }
                let take = (self.min - chunk.len()).min(end - pos);
                chunk.extend_from_slice(&buf[pos..pos + take]);
                pos += take;
            }
            if chunk.len() < self.min {
                total += chunk.len() as u64;
                if !chunk.is_empty() {
                    emit(chunk)?;
                }
                return Ok(total);
            }
            let mut prefill = chunk[self.min - WINDOW..].iter().copied();
            rabin.reset_and_prefill_window(&mut prefill);
            let mut eof = false;
            'cut: loop {
                if pos == end {
                    (pos, end) = (0, read_some(reader, &mut buf)?);
                    if end == 0 {
                        eof = true;
                        break;
                    }
                }
                let start = pos;
                while pos < end {
                    if chunk.len() + (pos - start) >= self.max || rabin.hash & self.mask == 0 {
                        chunk.extend_from_slice(&buf[start..pos]);
                        break 'cut;
                    }
                    rabin.slide(buf[pos]);
                    pos += 1;
                }
                chunk.extend_from_slice(&buf[start..pos]);
            }
            total += chunk.len() as u64;
            emit(chunk)?;
            if eof {
                return Ok(total);
            }
        }
    }
}

/// Puts `front` before the unread bytes of `buf`.
fn buf_prepend(buf: &mut Vec<u8>, pos: &mut usize, end: &mut usize, mut front: Vec<u8>) {
    front.extend_from_slice(&buf[*pos..*end]);
    let n = front.len();
    if buf.len() < n {
        buf.resize(n, 0);
    }
    buf[..n].copy_from_slice(&front);
    (*pos, *end) = (0, n);
}

/// One read into `buf`, retried on EINTR; 0 at the end of the file.
fn read_some(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLY: u64 = 0x3DA3358B4DC173;

    /// The rule of the module docs, a byte at a time.
    fn reference(c: &Chunking, data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < data.len() {
            let rest = &data[start..];
            if rest.len() <= c.min {
                out.push(rest.len());
                break;
            }
            let mut r = c.rabin.clone();
            r.reset_and_prefill_window(&mut rest[c.min - WINDOW..c.min].iter().copied());
            let mut n = c.min;
            while n < rest.len() && n < c.max && r.hash & c.mask != 0 {
                r.slide(rest[n]);
                n += 1;
            }
            out.push(n);
            start += n;
        }
        out
    }

    /// A reader handing out odd-sized pieces.
    struct Jagged<'a>(&'a [u8], usize);
    impl Read for Jagged<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = (self.1 * 7 + 3) % 100_000 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn sizes(c: &Chunking, data: &[u8], first: usize) -> Vec<usize> {
        let mut got = Vec::new();
        let mut joined = Vec::new();
        let n = c
            .chunk(
                data[..first].to_vec(),
                &mut Jagged(&data[first..], 1),
                &mut |ch| {
                    got.push(ch.len());
                    joined.extend_from_slice(&ch);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(n as usize, data.len());
        assert_eq!(joined, data);
        got
    }

    #[test]
    fn cuts_where_the_rule_says_whatever_the_reads() {
        // Small sizes so that a few MiB give many chunks.
        let c = Chunking::new(POLY, 1 << 13, 1 << 12, 1 << 14);
        let data = burrow_testkit::noise(2 << 20, 7);
        let want = reference(&c, &data);
        assert!(want.len() > 50, "{}", want.len());
        assert!(want.contains(&(1 << 14)), "some chunk hits max");
        assert!(
            want.iter().any(|&n| n > 1 << 12 && n < 1 << 14),
            "some are cut early"
        );
        for first in [0, 100, 1 << 12, (1 << 12) + 5, 70_000] {
            assert_eq!(sizes(&c, &data, first), want, "first {first}");
        }
    }

    #[test]
    fn restic_sizes_on_a_large_file() {
        let c = Chunking::new(POLY, 1 << 20, 512 << 10, 8 << 20);
        let data = burrow_testkit::noise(12 << 20, 99);
        let want = reference(&c, &data);
        assert!(want.len() >= 3, "{want:?}");
        assert_eq!(sizes(&c, &data, 0), want);
        assert!(want[..want.len() - 1].iter().all(|&n| n >= 512 << 10));
    }

    #[test]
    fn short_files_are_one_chunk_and_empty_ones_none() {
        let c = Chunking::new(POLY, 1 << 13, 1 << 12, 1 << 16);
        assert_eq!(sizes(&c, &[], 0), Vec::<usize>::new());
        let d = burrow_testkit::noise(1 << 12, 3);
        assert_eq!(sizes(&c, &d, 0), vec![1 << 12]);
        assert_eq!(sizes(&c, &d[..10], 10), vec![10]);
    }
}
