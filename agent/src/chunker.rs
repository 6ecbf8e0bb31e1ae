//! Content-defined chunking of a byte stream with FastCDC (2020).
//!
//! Each chunk is read into a buffer of its own, which is then handed out as [`Bytes`] without
//! copying. Reading starts with `min + avg` bytes and, only when that holds no cut point, goes on
//! to four times the average and then to the maximum chunk size, so a typical 1 MiB chunk costs
//! one read and one scan and a maximum-size one at most 1.7 scans; the bytes read past the cut
//! move to the next chunk's buffer (one `memcpy`, far cheaper than the hashing). Memory per stream
//! is therefore one chunk being read plus the chunks the consumer still holds — each exactly its
//! own size — never a large shared read block kept alive by a small chunk still in a queue. Cut
//! points depend only on the data (a cut found before the end of the buffer is final; otherwise
//! more is read), so they do not change with read sizes.

use std::io::{self, Read};

use bytes::Bytes;
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
        let first = (self.params.min_size as usize + self.params.avg_size as usize).min(max);
        let long = (4 * self.params.avg_size as usize).clamp(first, max);
        let mut buf: Vec<u8> = Vec::new();
        let mut total = 0u64;
        let mut eof = false;
        loop {
            // Read until the buffer holds a whole chunk: a cut before its end, `max` bytes,
            // or the end of the stream.
            let mut want = first.max(buf.len());
            let n = loop {
                if !eof && buf.len() < want {
                    let (read, at_end) = fill(&mut reader, &mut buf, want)?;
                    total += read as u64;
                    eof = at_end;
                }
                if buf.is_empty() {
                    return Ok(total);
                }
                let n = self.cut(&buf);
                if n < buf.len() || buf.len() >= max || eof {
                    break n;
                }
                // No cut in the first `min + avg` bytes: the chunk is long. Nearly every such
                // chunk ends before four times the average; only low-entropy data (zero runs)
                // goes on to the maximum. Two steps keep both the rescanning (at most 1.7
                // scans of a maximum-size chunk) and the bytes read past a cut small.
                want = if buf.len() < long { long } else { max };
            };
            let mut next = Vec::new();
            if n < buf.len() {
                next.reserve(first.max(buf.len() - n));
                next.extend_from_slice(&buf[n..]);
                buf.truncate(n);
            }
            buf.shrink_to_fit();
            emit(Bytes::from(std::mem::replace(&mut buf, next)))?;
        }
    }
}

/// Reads into `buf` until it holds `want` bytes or the stream ends; returns the bytes read
/// and whether the stream ended.
fn fill<R: Read>(reader: &mut R, buf: &mut Vec<u8>, want: usize) -> io::Result<(usize, bool)> {
    let start = buf.len();
    buf.resize(want, 0);
    let mut len = start;
    let mut eof = false;
    while len < want {
        match reader.read(&mut buf[len..]) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(len);
                return Err(e);
            }
        }
    }
    buf.truncate(len);
    Ok((len - start, eof))
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
        // The same cuts as cutting the whole input in memory.
        let mut in_memory = Vec::new();
        let mut rest = &d[..];
        while !rest.is_empty() {
            let n = c.cut(rest);
            in_memory.push(Bytes::copy_from_slice(&rest[..n]));
            rest = &rest[n..];
        }
        assert_eq!(reference, in_memory);
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
