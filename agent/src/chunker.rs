//! Content-defined chunking of a byte stream with FastCDC (2020).
//!
//! Files are read in large blocks; chunks are cut with `fastcdc::v2020::cut` directly on the
//! block and handed out as [`Bytes`] views of it, so chunk data is never copied — only a
//! block's unfinished tail (< max chunk size) moves to the next block. Memory per stream is
//! one block (`2 × max_size`) plus whatever chunks the consumer still holds.

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};
use fastcdc::v2020::{self, Normalization};
use podvault_proto::config::ChunkerParams;

/// A configured chunker.
#[derive(Debug, Clone, Copy)]
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// A chunker for the repository's parameters.
    pub fn new(params: ChunkerParams) -> Self {
        let (mask_s, mask_l) = v2020::select_masks(params.avg_size as usize, Normalization::Level1);
        Chunker {
            params,
            mask_s,
            mask_l,
        }
    }

    /// The parameters.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the first chunk of `data` (all of it when it is shorter than the minimum).
    pub fn cut(&self, data: &[u8]) -> usize {
        let p = self.params;
        let (_, n) = v2020::cut(
            data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        n
    }

    /// Splits everything `reader` yields into chunks, calling `emit` for each in order.
    /// Returns the number of bytes read.
    pub fn chunk_stream<R: Read, E: From<io::Error>>(
        &self,
        mut reader: R,
        mut emit: impl FnMut(Bytes) -> Result<(), E>,
    ) -> Result<u64, E> {
        let max = self.params.max_size as usize;
        let block = 2 * max;
        let mut buf = BytesMut::with_capacity(block);
        let mut total = 0u64;
        let mut eof = false;
        loop {
            while !eof && buf.len() < max {
                let start = buf.len();
                buf.resize(block.max(start + max), 0);
                match reader.read(&mut buf[start..]) {
                    Ok(0) => {
                        buf.truncate(start);
                        eof = true;
                    }
                    Ok(n) => {
                        buf.truncate(start + n);
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(start),
                    Err(e) => return Err(e.into()),
                }
            }
            if buf.is_empty() {
                return Ok(total);
            }
            // Cut as many chunks as the block holds while a full max-size window remains
            // (or everything, at end of stream).
            while !buf.is_empty() && (eof || buf.len() >= max) {
                let n = self.cut(&buf);
                emit(buf.split_to(n).freeze())?;
            }
            if !eof {
                // Move the tail into a fresh block so emitted chunks keep the old one alive.
                let mut next = BytesMut::with_capacity(block);
                next.extend_from_slice(&buf);
                buf = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn small() -> Chunker {
        Chunker::new(ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
        })
    }

    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn chunks(c: &Chunker, d: &[u8], read_size: usize) -> Vec<Bytes> {
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(out.len()).min(self.1);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut v = Vec::new();
        c.chunk_stream::<_, io::Error>(Dribble(d, read_size), |b| {
            v.push(b);
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn chunks_cover_input_within_bounds_regardless_of_read_sizes() {
        let c = small();
        let d = data(1, 1_000_000);
        let reference = chunks(&c, &d, usize::MAX);
        assert_eq!(reference.concat(), d);
        for (i, ch) in reference.iter().enumerate() {
            assert!(ch.len() <= 65536);
            if i + 1 < reference.len() {
                assert!(ch.len() >= 4096);
            }
        }
        for read_size in [1000, 4096, 70001] {
            assert_eq!(
                chunks(&c, &d, read_size),
                reference,
                "read size {read_size}"
            );
        }
        assert!(chunks(&c, &[], 10).is_empty());
        assert_eq!(chunks(&c, &d[..100], 10).len(), 1);
    }

    #[test]
    fn an_insertion_only_changes_nearby_chunks() {
        let c = small();
        let d = data(2, 2_000_000);
        let mut e = d.clone();
        e.splice(1_000_000..1_000_000, [1u8, 2, 3]);
        let a = chunks(&c, &d, usize::MAX);
        let b = chunks(&c, &e, usize::MAX);
        let common = a.iter().filter(|x| b.contains(x)).count();
        assert!(common + 3 >= a.len(), "{common} of {} shared", a.len());
    }
}
