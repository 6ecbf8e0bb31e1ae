//! Criterion micro-benchmarks of each backup pipeline stage, so a regression shows per stage:
//! chunking, keyed hashing, compression + sealing (zstd levels 1 and 3 on compressible and
//! random data), sealing alone (AES-256-GCM), opening, packing, and building and querying the
//! index (exact view, and the backup's compact deduplication view).
//!
//! `cargo bench -p podvault-benches --bench stages` (a few minutes on 2 cores; pass a filter
//! such as `-- seal` to run a subset). Inputs are seeded; sample counts are small and
//! measurement windows short so the suite stays quick on a shared machine.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use podvault::blob::{open_blob, BlobEncoder};
use podvault::chunker::Chunker;
use podvault::crypto::MasterKey;
use podvault::index::{MasterIndex, Precision};
use podvault::packer::Packer;
use podvault_benches::dataset::{fill, Content};
use podvault_benches::rng::FastRng;
use podvault_proto::config::ChunkerParams;
use podvault_proto::index::{IndexEntry, IndexFile, PackInfo};
use podvault_proto::pack::BlobType;
use podvault_proto::{BlobId, IndexId, PackId};

const MIB: usize = 1 << 20;

fn data(content: Content, len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    fill(content, &mut FastRng::new(seed), len, &mut v);
    v
}

fn key() -> MasterKey {
    MasterKey::from_secret([7; 32])
}

fn chunking(c: &mut Criterion) {
    let input = data(Content::Image, 64 * MIB, 1);
    let chunker = Chunker::new(ChunkerParams::default());
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("fastcdc_1MiB_avg_64MiB_stream", |b| {
        b.iter(|| {
            let mut n = 0usize;
            chunker
                .chunk_stream::<_, std::io::Error>(&input[..], |chunk| {
                    n += chunk.len();
                    Ok(())
                })
                .unwrap_or_default();
            black_box(n)
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let key = key();
    let input = data(Content::Random, MIB, 2);
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("keyed_blake3_1MiB", |b| {
        b.iter(|| key.blob_id(black_box(&input)))
    });
    g.finish();
}

fn sealing(c: &mut Criterion) {
    let key = key();
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Bytes(MIB as u64));
    for (name, content) in [("text", Content::Source), ("random", Content::Random)] {
        let input = data(content, MIB, 3);
        let id = key.blob_id(&input);
        for level in [1, 3] {
            let mut enc = BlobEncoder::new(level).expect("zstd level");
            g.bench_function(format!("zstd{level}_aes_gcm_{name}_1MiB"), |b| {
                b.iter(|| enc.seal(&key, BlobType::Data, &id, black_box(&input)))
            });
        }
        g.bench_function(format!("aes_gcm_only_{name}_1MiB"), |b| {
            b.iter(|| key.seal(&id.0, black_box(&input)))
        });
    }
    g.finish();
}

fn opening(c: &mut Criterion) {
    let key = key();
    let mut g = c.benchmark_group("open");
    g.throughput(Throughput::Bytes(MIB as u64));
    for (name, content) in [("text", Content::Source), ("random", Content::Random)] {
        let input = data(content, MIB, 4);
        let id = key.blob_id(&input);
        let sealed =
            BlobEncoder::new(3)
                .expect("zstd level")
                .seal(&key, BlobType::Data, &id, &input);
        g.bench_function(format!("open_verify_{name}_1MiB"), |b| {
            b.iter(|| open_blob(&key, BlobType::Data, &id, MIB as u32, black_box(&sealed)))
        });
    }
    g.finish();
}

fn packing(c: &mut Criterion) {
    let key = key();
    let blobs: Vec<(BlobId, Vec<u8>)> = (0..16)
        .map(|i| {
            let d = data(Content::Random, MIB, 100 + i);
            (key.blob_id(&d), key.seal(b"blob", &d))
        })
        .collect();
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes((16 * MIB) as u64));
    // Packs are spooled to a file; the file is dropped (and removed) after each pack.
    let spool = tempfile::tempdir().expect("spool directory");
    g.bench_function("pack_16x1MiB_blobs_to_spool_file", |b| {
        b.iter(|| {
            let mut p = Packer::new(BlobType::Data, 16 * MIB, spool.path());
            for (id, sealed) in &blobs {
                p.add(*id, sealed, MIB as u32).expect("spool write");
            }
            p.finish(&key).expect("spool write")
        })
    });
    g.finish();
}

/// One synthetic index object with `n` entries spread over packs of 16 blobs.
fn synthetic_index(n: usize, seed: u64) -> (IndexFile, Vec<BlobId>) {
    let mut rng = FastRng::new(seed);
    let mut id = || {
        let mut b = [0u8; 32];
        rng.fill(&mut b);
        b
    };
    let packs: Vec<PackInfo> = (0..n.div_ceil(16))
        .map(|_| PackInfo {
            id: PackId(id()),
            size: 16 << 20,
            blob_type: BlobType::Data,
        })
        .collect();
    let entries: Vec<IndexEntry> = (0..n)
        .map(|i| IndexEntry {
            id: BlobId(id()),
            pack: (i / 16) as u32,
            offset: (i % 16) as u32 * MIB as u32,
            length: MIB as u32,
            raw_length: MIB as u32,
        })
        .collect();
    let ids = entries.iter().step_by(97).map(|e| e.id).collect();
    let file = IndexFile {
        supersedes: vec![],
        packs,
        pending: vec![],
        sessions: vec![],
        entries,
    };
    (file, ids)
}

fn index(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let (file, present) = synthetic_index(N, 5);
    let absent: Vec<BlobId> = {
        let mut rng = FastRng::new(6);
        (0..4096)
            .map(|_| {
                let mut b = [0u8; 32];
                rng.fill(&mut b);
                BlobId(b)
            })
            .collect()
    };
    let mut g = c.benchmark_group("index");
    g.bench_function("from_files_1M_entries", |b| {
        b.iter_batched(
            || vec![(IndexId([1; 32]), file.clone())],
            MasterIndex::from_files,
            BatchSize::LargeInput,
        )
    });
    g.bench_function("dedup_view_1M_entries", |b| {
        b.iter_batched(
            || file.clone(),
            |f| {
                let mut builder = MasterIndex::builder(Precision::Dedup);
                builder.add(IndexId([1; 32]), f);
                builder.finish()
            },
            BatchSize::LargeInput,
        )
    });
    let mut builder = MasterIndex::builder(Precision::Dedup);
    builder.add(IndexId([1; 32]), file.clone());
    let dedup = builder.finish();
    let master = MasterIndex::from_files(vec![(IndexId([1; 32]), file)]);
    assert_eq!(master.len(), N);
    assert_eq!(dedup.len(), N);
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("lookup_hit_1M_entries", |b| {
        b.iter(|| {
            i = (i + 1) % present.len();
            master.lookup(black_box(&present[i]))
        })
    });
    let mut j = 0usize;
    g.bench_function("lookup_miss_1M_entries", |b| {
        b.iter(|| {
            j = (j + 1) % absent.len();
            master.lookup(black_box(&absent[j]))
        })
    });
    let mut k = 0usize;
    g.bench_function("dedup_live_pack_hit_1M_entries", |b| {
        b.iter(|| {
            k = (k + 1) % present.len();
            dedup.live_pack(black_box(&present[k]))
        })
    });
    let mut l = 0usize;
    g.bench_function("dedup_live_pack_miss_1M_entries", |b| {
        b.iter(|| {
            l = (l + 1) % absent.len();
            dedup.live_pack(black_box(&absent[l]))
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = stages;
    config = config();
    targets = chunking, hashing, sealing, opening, packing, index
}
criterion_main!(stages);
