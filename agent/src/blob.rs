//! Blob encoding: compress (when it pays), then seal with the blob's type and id bound in.
//!
//! Plaintext layout inside the seal: `codec: u8 | payload` where codec 0 is raw and 1 is zstd.
//! Opening checks the seal, decompresses, and recomputes the keyed id, so a blob that opens
//! is exactly the content its id names.

use std::io::Read;

use podvault_proto::pack::BlobType;
use podvault_proto::BlobId;

use crate::crypto::MasterKey;

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// Associated data binding a sealed blob to its type and id.
fn aad(ty: BlobType, id: &BlobId) -> [u8; 33] {
    let mut a = [0u8; 33];
    a[0] = ty.as_u8();
    a[1..].copy_from_slice(&id.0);
    a
}

/// Per-thread compression state (reused across blobs to avoid reallocating contexts).
pub struct BlobEncoder {
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl BlobEncoder {
    /// An encoder at the given zstd level; level 0 disables compression.
    pub fn new(level: i32) -> std::io::Result<Self> {
        let compressor = if level == 0 {
            None
        } else {
            Some(zstd::bulk::Compressor::new(level)?)
        };
        Ok(BlobEncoder { compressor })
    }

    /// Compresses (if that saves at least 1/32 of the size) and seals `data`.
    ///
    /// Compression writes straight into the sealed message's buffer, which is then
    /// encrypted in place: one buffer per blob, no scratch kept between blobs.
    pub fn seal(&mut self, key: &MasterKey, ty: BlobType, id: &BlobId, data: &[u8]) -> Vec<u8> {
        let bound = match self.compressor {
            Some(_) => zstd::zstd_safe::compress_bound(data.len()),
            None => data.len(),
        };
        key.seal_with(&aad(ty, id), 1 + bound, |out| {
            let start = out.len();
            if let Some(c) = &mut self.compressor {
                out.resize(start + 1 + bound, 0);
                out[start] = CODEC_ZSTD;
                match c.compress_to_buffer(data, &mut out[start + 1..]) {
                    Ok(n) if n < data.len() - data.len() / 32 => {
                        out.truncate(start + 1 + n);
                        return;
                    }
                    _ => out.truncate(start),
                }
            }
            out.push(CODEC_RAW);
            out.extend_from_slice(data);
        })
    }
}

/// Largest buffer reserved before decompressing (larger blobs grow as they decode).
const MAX_PREALLOC: usize = 16 << 20;

/// Opens a sealed blob and verifies that its content hashes to `id`.
pub fn open_blob(
    key: &MasterKey,
    ty: BlobType,
    id: &BlobId,
    raw_length: u32,
    sealed: &[u8],
) -> Result<Vec<u8>, String> {
    let plain = key
        .open(&aad(ty, id), sealed)
        .map_err(|e| format!("blob {id}: {e}"))?;
    let (&codec, payload) = plain
        .split_first()
        .ok_or_else(|| format!("blob {id}: empty plaintext"))?;
    let data = match codec {
        CODEC_RAW => payload.to_vec(),
        CODEC_ZSTD => {
            // Streamed, and never more than the index promises (+1 to notice excess): a
            // forged raw length must not make us reserve gigabytes up front.
            let mut out = Vec::with_capacity((raw_length as usize).min(MAX_PREALLOC));
            zstd::stream::read::Decoder::with_buffer(payload)
                .and_then(|d| d.take(raw_length as u64 + 1).read_to_end(&mut out))
                .map_err(|e| format!("blob {id}: decompression failed: {e}"))?;
            out
        }
        other => return Err(format!("blob {id}: unknown codec {other}")),
    };
    if data.len() != raw_length as usize {
        return Err(format!(
            "blob {id}: {} bytes where the index says {raw_length}",
            data.len()
        ));
    }
    if key.blob_id(&data) != *id {
        return Err(format!("blob {id}: content does not match its id"));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressible_and_not() {
        let key = MasterKey::generate();
        let mut enc = BlobEncoder::new(3).unwrap();
        let text = b"abcabcabc".repeat(1000);
        let noise: Vec<u8> = (0..9000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for data in [&text[..], &noise[..], &[][..]] {
            let id = key.blob_id(data);
            let sealed = enc.seal(&key, BlobType::Data, &id, data);
            let back = open_blob(&key, BlobType::Data, &id, data.len() as u32, &sealed).unwrap();
            assert_eq!(back, data);
            assert!(open_blob(&key, BlobType::Tree, &id, data.len() as u32, &sealed).is_err());
            let other = key.blob_id(b"other");
            assert!(open_blob(&key, BlobType::Data, &other, data.len() as u32, &sealed).is_err());
        }
        let id = key.blob_id(&text);
        assert!(enc.seal(&key, BlobType::Data, &id, &text).len() < text.len() / 4);
    }
}
