//! Property tests for every decoder of repository data: config, key, snapshot, tree, index,
//! pack header and pack trailer.
//!
//! For arbitrary bytes and for valid encodings mutated by bit flips, truncation, extension
//! and planted length fields (e.g. a count of 2^32 with nothing behind it), decoding must
//! return an error or a value, never panic, and never allocate far more than its input
//! could justify. Valid encodings must round-trip, and every strict prefix of one must be
//! rejected. The allocation check wraps the system allocator and records, per thread, the
//! largest single request made while a decoder runs.
//!
//! Case counts are kept small so the suite runs in seconds (CI runs it on every change).

use podvault_proto::config::{ChunkerParams, Config};
use podvault_proto::index::{IndexEntry, IndexFile, PackInfo, PendingPack};
use podvault_proto::key::{KdfParams, KeyFile};
use podvault_proto::pack::{parse_trailer, trailer, BlobType, PackHeader, PackedBlob, TRAILER_LEN};
use podvault_proto::record::check_version;
use podvault_proto::snapshot::{Identity, IdentityKind, PathError, Snapshot, Summary};
use podvault_proto::tree::{Node, NodeKind, Tree};
use podvault_proto::{BlobId, ChunkId, DecodeError, IndexId, PackId, Record, SnapshotId, TreeId};
use proptest::prelude::*;

#[path = "../../tests/shared/alloc_probe.rs"]
mod alloc_probe;
use alloc_probe::probed;

/// Largest single allocation a decoder may make for `input` bytes: serde preallocates at
/// most 1 MiB per sequence whatever the length prefix says; beyond that, memory must follow
/// the input.
fn allowance(input: usize) -> usize {
    (2 << 20) + 16 * input
}

/// Decodes `bytes` as `R`, failing the property on a panic or an absurd allocation.
fn decode_checked<R: Record>(bytes: &[u8]) -> Result<Result<R, DecodeError>, TestCaseError> {
    let what = format!("{} decoder on {} bytes", R::NAME, bytes.len());
    let (result, largest) = probed(&what, || R::decode(bytes))?;
    prop_assert!(
        largest <= allowance(bytes.len()),
        "{} decoder allocated {largest} bytes at once for {} input bytes",
        R::NAME,
        bytes.len()
    );
    Ok(result)
}

// ---- mutations ----

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Truncate {
        to: usize,
    },
    Extend {
        bytes: Vec<u8>,
    },
    /// A planted length: a postcard varint or a fixed `u32`/`u64` of a large value.
    Plant {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
}

fn big_length() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // postcard varints for 2^32 - 1, 2^32, 2^63 and u64::MAX
        Just(vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
        Just(vec![0x80, 0x80, 0x80, 0x80, 0x10]),
        Just(vec![
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01
        ]),
        Just(vec![0xff; 9].into_iter().chain([0x01]).collect()),
        // overlong varint (more than 10 bytes)
        Just(vec![0xff; 12]),
        // fixed-width counts
        Just(u32::MAX.to_le_bytes().to_vec()),
        Just(0x8000_0000u32.to_le_bytes().to_vec()),
        Just(u64::MAX.to_le_bytes().to_vec()),
        any::<u32>().prop_map(|n| n.to_le_bytes().to_vec()),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => any::<usize>().prop_map(|to| Mutation::Truncate { to }),
        1 => proptest::collection::vec(any::<u8>(), 1..16).prop_map(|bytes| Mutation::Extend { bytes }),
        2 => (any::<usize>(), big_length()).prop_map(|(at, bytes)| Mutation::Plant { at, bytes }),
        1 => (any::<usize>(), 1usize..8).prop_map(|(at, len)| Mutation::Remove { at, len }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len();
        match m {
            Mutation::Flip { at, bit } if n > 0 => bytes[at % n] ^= 1 << bit,
            Mutation::Truncate { to } => bytes.truncate(to % (n + 1)),
            Mutation::Extend { bytes: more } => bytes.extend_from_slice(more),
            Mutation::Plant { at, bytes: planted } => {
                let at = at % (n + 1);
                let end = (at + planted.len()).min(n);
                bytes.splice(at..end, planted.iter().copied());
            }
            Mutation::Remove { at, len } if n > 0 => {
                let at = at % n;
                bytes.drain(at..(at + len).min(n));
            }
            _ => {}
        }
    }
    bytes
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..4)
}

// ---- valid records ----

fn id32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9=/ é☃-]{0,12}").expect("regex")
}

fn config() -> impl Strategy<Value = Config> {
    (id32(), any::<[u32; 3]>(), any::<i32>(), any::<u32>()).prop_map(|(id, c, level, pack)| {
        Config {
            repository_id: id,
            chunker: ChunkerParams {
                min_size: c[0],
                avg_size: c[1],
                max_size: c[2],
            },
            compression_level: level,
            pack_target_size: pack,
        }
    })
}

fn key_file() -> impl Strategy<Value = KeyFile> {
    (
        text(),
        text(),
        1u32..=(1 << 20),
        1u32..=64,
        1u32..=KdfParams::MAX_PARALLELISM,
        proptest::collection::vec(any::<u8>(), 0..32),
        proptest::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(
            |(created, hostname, memory_kib, iterations, parallelism, salt, key)| KeyFile {
                version: KeyFile::VERSION,
                created,
                hostname,
                kdf: KdfParams {
                    algorithm: "argon2id".into(),
                    memory_kib,
                    iterations,
                    parallelism,
                    salt: hex_string(&salt),
                },
                master_key: hex_string(&key),
            },
        )
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        any::<i64>(),
        text(),
        proptest::collection::vec(text(), 0..4),
        proptest::collection::vec(text(), 0..4),
        proptest::option::of(id32()),
        id32(),
        any::<[u64; 6]>(),
        proptest::collection::vec((text(), text()), 0..3),
        proptest::collection::vec(text(), 0..3),
        any::<(i64, i64)>(),
    )
        .prop_map(
            |(time_ns, hostname, paths, tags, parent, tree, n, errors, changed, (s, f))| Snapshot {
                time_ns,
                hostname,
                paths,
                tags,
                parent: parent.map(SnapshotId),
                tree: TreeId(tree),
                program_version: "0.1.0".into(),
                summary: Summary {
                    files_new: n[0],
                    files_changed: n[1],
                    files_unchanged: n[2],
                    dirs_new: n[3],
                    total_bytes: n[4],
                    bytes_added: n[5],
                    errors: errors
                        .into_iter()
                        .map(|(path, message)| PathError { path, message })
                        .collect(),
                    changed_during_read: changed,
                    started_ns: s,
                    finished_ns: f,
                    ..Summary::default()
                },
                identity: (n[0] % 2 == 0).then(|| Identity {
                    kind: IdentityKind::Dump,
                    namespace: "ns".into(),
                    series: "ns/pod/p/db.sql".into(),
                    pod: "p".into(),
                    pod_uid: format!("{}", n[1]),
                    pvc: None,
                    volume: None,
                    dump: Some("db.sql".into()),
                    node: "n".into(),
                    operation_uid: Some(format!("{}", n[2])),
                    legacy: false,
                }),
            },
        )
}

fn node_kind() -> impl Strategy<Value = NodeKind> {
    prop_oneof![
        Just(NodeKind::File),
        Just(NodeKind::Dir),
        Just(NodeKind::Symlink),
        Just(NodeKind::Fifo),
        Just(NodeKind::Socket),
        Just(NodeKind::CharDevice),
        Just(NodeKind::BlockDevice),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    (
        proptest::collection::vec(any::<u8>(), 0..12),
        node_kind(),
        any::<[u32; 3]>(),
        any::<[u64; 5]>(),
        any::<(i64, i64)>(),
        proptest::collection::vec(any::<u8>(), 0..12),
        proptest::collection::vec(id32(), 0..4),
        proptest::option::of(id32()),
    )
        .prop_map(
            |(name, kind, m, n, (mtime_ns, ctime_ns), symlink_target, content, subtree)| Node {
                name,
                kind,
                mode: m[0],
                uid: m[1],
                gid: m[2],
                size: n[0],
                mtime_ns,
                ctime_ns,
                inode: n[1],
                device: n[2],
                links: n[3],
                rdev: n[4],
                symlink_target,
                content: content.into_iter().map(ChunkId).collect(),
                subtree: subtree.map(TreeId),
            },
        )
}

fn tree() -> impl Strategy<Value = Tree> {
    proptest::collection::vec(node(), 0..5).prop_map(|nodes| Tree { nodes })
}

fn blob_type() -> impl Strategy<Value = BlobType> {
    prop_oneof![Just(BlobType::Data), Just(BlobType::Tree)]
}

fn pack_header() -> impl Strategy<Value = PackHeader> {
    (
        blob_type(),
        proptest::collection::vec((id32(), any::<[u32; 3]>()), 0..6),
    )
        .prop_map(|(blob_type, blobs)| PackHeader {
            blob_type,
            blobs: blobs
                .into_iter()
                .map(|(id, n)| PackedBlob {
                    id: BlobId(id),
                    offset: n[0],
                    length: n[1],
                    raw_length: n[2],
                })
                .collect(),
        })
}

/// A consistent index: entries sorted and unique, each inside its pack.
fn index_file() -> impl Strategy<Value = IndexFile> {
    (
        proptest::collection::vec(id32(), 0..3),
        proptest::collection::vec((id32(), blob_type()), 1..4),
        proptest::collection::vec((id32(), any::<(i64, i64)>()), 0..3),
        proptest::collection::vec(
            (id32(), any::<u8>(), 0u32..1000, 0u32..1000, any::<u32>()),
            0..8,
        ),
    )
        .prop_map(|(supersedes, packs, pending, entries)| {
            let packs: Vec<PackInfo> = packs
                .into_iter()
                .map(|(id, blob_type)| PackInfo {
                    id: PackId(id),
                    size: 2000,
                    blob_type,
                })
                .collect();
            let mut index = IndexFile {
                supersedes: supersedes.into_iter().map(IndexId).collect(),
                pending: pending
                    .into_iter()
                    .map(|(id, (marked_at, delete_after))| PendingPack {
                        id: PackId(id),
                        marked_at,
                        delete_after,
                    })
                    .collect(),
                entries: entries
                    .into_iter()
                    .map(|(id, pack, offset, length, raw_length)| IndexEntry {
                        id: BlobId(id),
                        pack: pack as u32 % packs.len() as u32,
                        offset,
                        length,
                        raw_length,
                    })
                    .collect(),
                packs,
                sessions: Vec::new(),
            };
            index.sort();
            index.entries.dedup_by_key(|e| e.id);
            index
        })
}

// ---- properties ----

/// Round trip, every strict prefix rejected, and mutations decoded safely.
fn check_record<R: Record + PartialEq + std::fmt::Debug>(
    value: &R,
    muts: &[Mutation],
) -> Result<(), TestCaseError> {
    let bytes = value.encode();
    prop_assert_eq!(
        &decode_checked::<R>(&bytes)?.expect("valid encoding"),
        value
    );
    for cut in 0..bytes.len() {
        prop_assert!(
            decode_checked::<R>(&bytes[..cut])?.is_err(),
            "{} prefix of {cut}/{} bytes decoded",
            R::NAME,
            bytes.len()
        );
    }
    let _ = decode_checked::<R>(&mutate(bytes, muts))?;
    Ok(())
}

fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        // Start with each known version so decoding goes past the version check.
        (0u16..4, proptest::collection::vec(any::<u8>(), 0..256)).prop_map(|(v, rest)| {
            let mut b = v.to_le_bytes().to_vec();
            b.extend(rest);
            b
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_decoder(value in config(), muts in mutations(), junk in arbitrary_bytes()) {
        check_record(&value, &muts)?;
        let _ = decode_checked::<Config>(&junk)?;
    }

    #[test]
    fn key_file_decoder(value in key_file(), muts in mutations(), junk in arbitrary_bytes()) {
        check_record(&value, &muts)?;
        let _ = decode_checked::<KeyFile>(&junk)?;
    }

    #[test]
    fn snapshot_decoder(value in snapshot(), muts in mutations(), junk in arbitrary_bytes()) {
        check_record(&value, &muts)?;
        let _ = decode_checked::<Snapshot>(&junk)?;
    }

    #[test]
    fn tree_decoder(value in tree(), muts in mutations(), junk in arbitrary_bytes()) {
        check_record(&value, &muts)?;
        let _ = decode_checked::<Tree>(&junk)?;
    }

    #[test]
    fn index_decoder(value in index_file(), muts in mutations(), junk in arbitrary_bytes()) {
        check_record(&value, &muts)?;
        let _ = decode_checked::<IndexFile>(&junk)?;
    }

    #[test]
    fn pack_header_decoder(value in pack_header(), muts in mutations(), junk in arbitrary_bytes()) {
        check_record(&value, &muts)?;
        let _ = decode_checked::<PackHeader>(&junk)?;
    }

    #[test]
    fn pack_trailer_parser(len in any::<u32>(), junk in proptest::collection::vec(any::<u8>(), 0..16)) {
        prop_assert_eq!(parse_trailer(&trailer(len)), Some(len));
        let parsed = parse_trailer(&junk);
        prop_assert_eq!(parsed.is_some(), junk.len() == TRAILER_LEN && junk[4..] == *b"PVPK");
    }

    #[test]
    fn version_prefix(bytes in proptest::collection::vec(any::<u8>(), 0..4)) {
        let r = check_version::<Tree>(&bytes);
        prop_assert_eq!(r.is_ok(), bytes.len() >= 2 && bytes[..2] == Tree::VERSION.to_le_bytes());
    }
}

/// A length prefix far beyond the input, right after the version, for each postcard record.
#[test]
fn planted_lengths_after_the_version_are_rejected_without_allocating() {
    let versions: [(&str, u16); 4] = [
        ("tree", Tree::VERSION),
        ("snapshot", Snapshot::VERSION),
        ("pack header", PackHeader::VERSION),
        ("config", Config::VERSION),
    ];
    for (name, version) in versions {
        for len in [
            &[0xff, 0xff, 0xff, 0xff, 0x0f][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ] {
            let mut bytes = version.to_le_bytes().to_vec();
            // Pack headers start with the blob type; the count follows it.
            if name == "pack header" {
                bytes.push(0);
            }
            bytes.extend_from_slice(len);
            bytes.extend_from_slice(&[0x41; 40]);
            let check =
                |r: Result<bool, TestCaseError>| r.unwrap_or_else(|e| panic!("{name}: {e}"));
            check(decode_checked::<Tree>(&bytes).map(|r| r.is_err()));
            check(decode_checked::<Snapshot>(&bytes).map(|r| r.is_err()));
            check(decode_checked::<PackHeader>(&bytes).map(|r| r.is_err()));
            check(decode_checked::<Config>(&bytes).map(|r| r.is_err()));
        }
    }
    // Index counts of 2^32 - 1 with no entries behind them.
    let mut index = IndexFile::VERSION.to_le_bytes().to_vec();
    index.extend_from_slice(&[0, 0]);
    for _ in 0..4 {
        index.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    assert!(matches!(
        decode_checked::<IndexFile>(&index).unwrap(),
        Err(DecodeError::Truncated { .. })
    ));
}

/// Key files name their KDF cost in plaintext; absurd costs are refused before any KDF runs.
#[test]
fn key_files_with_absurd_kdf_costs_are_refused() {
    let json = |m: u64, t: u64, p: u64| {
        format!(
            r#"{{"version":1,"created":"","hostname":"","kdf":{{"algorithm":"argon2id","memory_kib":{m},"iterations":{t},"parallelism":{p},"salt":"00"}},"master_key":"00"}}"#
        )
    };
    for (m, t, p) in [
        (4_294_967_295, 1, 1),
        (1 << 22, 1 << 10, 1),
        (64, u32::MAX as u64, 1),
        (64, 1, 0),
        (64, 1, 1 << 24),
        (1 << 40, 1, 1),
    ] {
        let r = decode_checked::<KeyFile>(json(m, t, p).as_bytes()).unwrap();
        assert!(r.is_err(), "{m} {t} {p} accepted");
    }
    assert!(decode_checked::<KeyFile>(json(65536, 3, 1).as_bytes())
        .unwrap()
        .is_ok());
    // Deep nesting is refused by serde_json's recursion limit, not the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(decode_checked::<KeyFile>(deep.as_bytes()).unwrap().is_err());
}

/// The probe sees allocations made inside a decode call (else the checks above prove nothing).
#[test]
fn the_allocation_probe_works() {
    let ((), largest) = probed("allocating", || {
        drop(std::hint::black_box(Vec::<u8>::with_capacity(8 << 20)))
    })
    .unwrap();
    assert!(largest >= 8 << 20);
    assert!(allowance(0) < 8 << 20);
}
