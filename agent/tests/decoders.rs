//! Property tests for the engine's decoders of repository data, through the public API:
//! sealed-object opening ([`MasterKey::open`]), blob opening ([`open_blob`]), master-key
//! unwrapping, pack trailer and header reading ([`Repository::read_pack_header`]), whole
//! records loaded from the store ([`Repository::load`]) and key files met by
//! [`Repository::open`].
//!
//! Arbitrary bytes and mutated valid encodings (bit flips, truncation, extension, planted
//! lengths) must give an error or a value, never a panic, and never an allocation far beyond
//! what the input justifies. Sealed data is authenticated, so any change to a valid seal
//! must be an error. The allocation probe wraps the system allocator and records the largest
//! single request made on the calling thread (the backend's I/O threads are not watched).
//!
//! Case counts are small so the suite runs in seconds.

use std::path::Path;

use podvault::backend::Location;
use podvault::blob::{open_blob, BlobEncoder};
use podvault::crypto::{unwrap_master_key, wrap_master_key, KdfCost, MasterKey, SEAL_OVERHEAD};
use podvault::repository::{object_path, pack_path, InitOptions, Repository};
use podvault_proto::index::IndexFile;
use podvault_proto::key::{KdfParams, KeyFile};
use podvault_proto::pack::{trailer, BlobType, PackHeader, PackedBlob};
use podvault_proto::snapshot::Snapshot;
use podvault_proto::{BlobId, ObjectKind, PackId, Record, SnapshotId};
use proptest::prelude::*;

#[path = "../../tests/shared/alloc_probe.rs"]
mod alloc_probe;
use alloc_probe::probed;

/// Allocation allowed for decoding `input` bytes whose plaintext may be `claimed` bytes.
fn allowance(input: usize, claimed: usize) -> usize {
    (2 << 20) + 16 * input + claimed
}

// ---- mutations ----

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Truncate { to: usize },
    Extend { bytes: Vec<u8> },
    Plant { at: usize, bytes: Vec<u8> },
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => any::<usize>().prop_map(|to| Mutation::Truncate { to }),
        1 => proptest::collection::vec(any::<u8>(), 1..16).prop_map(|bytes| Mutation::Extend { bytes }),
        2 => (any::<usize>(), prop_oneof![
            Just(u32::MAX.to_le_bytes().to_vec()),
            Just(vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
            any::<u32>().prop_map(|n| n.to_le_bytes().to_vec()),
        ]).prop_map(|(at, bytes)| Mutation::Plant { at, bytes }),
    ];
    proptest::collection::vec(one, 1..4)
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
            _ => {}
        }
    }
    bytes
}

// ---- fixtures ----

const CHEAP: KdfCost = KdfCost {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

fn key() -> MasterKey {
    MasterKey::from_secret([7; 32])
}

fn repository(dir: &Path) -> Repository {
    Repository::init(
        &Location::Fs(dir.to_owned()),
        b"pw",
        &InitOptions {
            kdf: CHEAP,
            ..InitOptions::default()
        },
    )
    .expect("init")
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (any::<u8>(), 0usize..4096).prop_map(|(b, n)| vec![b; n]),
    ]
}

// ---- sealed objects and blobs ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sealed_objects_open_only_unchanged(plain in payload(), muts in mutations(), junk in payload()) {
        let k = key();
        let sealed = k.seal(ObjectKind::Snapshot.aad(), &plain);
        prop_assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        prop_assert_eq!(&k.open(ObjectKind::Snapshot.aad(), &sealed).unwrap(), &plain);
        prop_assert!(k.open(ObjectKind::Index.aad(), &sealed).is_err(), "kind is bound");
        let bad = mutate(sealed.clone(), &muts);
        let (r, largest) = probed("open", || k.open(ObjectKind::Snapshot.aad(), &bad))?;
        prop_assert!(bad == sealed || r.is_err(), "a changed seal opened");
        prop_assert!(largest <= allowance(bad.len(), 0));
        let (r, _) = probed("open", || k.open(ObjectKind::Snapshot.aad(), &junk))?;
        prop_assert!(r.is_err());
    }

    #[test]
    fn blobs_open_only_unchanged_and_as_claimed(
        data in payload(),
        muts in mutations(),
        claimed in 0u32..(16 << 20),
        compress in any::<bool>(),
    ) {
        let k = key();
        let mut enc = BlobEncoder::new(if compress { 3 } else { 0 }).unwrap();
        let id = k.blob_id(&data);
        let sealed = enc.seal(&k, BlobType::Data, &id, &data);
        let len = data.len() as u32;
        prop_assert_eq!(&open_blob(&k, BlobType::Data, &id, len, &sealed).unwrap(), &data);
        prop_assert!(open_blob(&k, BlobType::Tree, &id, len, &sealed).is_err());
        // A wrong plaintext length (as a damaged index would claim) is an error.
        let (r, largest) = probed("open_blob", || open_blob(&k, BlobType::Data, &id, claimed, &sealed))?;
        prop_assert!(claimed == len || r.is_err());
        prop_assert!(largest <= allowance(sealed.len(), claimed as usize));
        let bad = mutate(sealed.clone(), &muts);
        let (r, largest) = probed("open_blob", || open_blob(&k, BlobType::Data, &id, len, &bad))?;
        prop_assert!(bad == sealed || r.is_err(), "a changed blob opened");
        prop_assert!(largest <= allowance(bad.len(), len as usize));
    }

    /// Someone with the key can seal anything: codec byte and payload are then arbitrary.
    #[test]
    fn blobs_with_forged_plaintext_fail_the_id_check(
        plain in payload(),
        codec in 0u8..4,
        claimed in 0u32..(16 << 20),
    ) {
        let k = key();
        let id = BlobId([3; 32]);
        let mut forged = vec![codec];
        forged.extend_from_slice(&plain);
        let mut aad = vec![BlobType::Data.as_u8()];
        aad.extend_from_slice(&id.0);
        let sealed = k.seal(&aad, &forged);
        let (r, largest) = probed("open_blob", || open_blob(&k, BlobType::Data, &id, claimed, &sealed))?;
        prop_assert!(r.is_err());
        prop_assert!(largest <= allowance(sealed.len(), claimed as usize));
    }

    #[test]
    fn wrapped_master_keys(muts in mutations(), junk in payload()) {
        let k = key();
        let (kdf, sealed) = wrap_master_key(&k, b"pw", CHEAP).unwrap();
        prop_assert!(unwrap_master_key(b"pw", &kdf, &sealed).unwrap().is_some());
        let bad = mutate(sealed.clone(), &muts);
        let (r, _) = probed("unwrap", || unwrap_master_key(b"pw", &kdf, &bad))?;
        prop_assert!(bad == sealed || !matches!(r, Ok(Some(_))));
        let (r, _) = probed("unwrap", || unwrap_master_key(b"pw", &kdf, &junk))?;
        prop_assert!(!matches!(r, Ok(Some(_))));
    }
}

// ---- objects in a real (file-system) repository ----

fn pack_bytes(k: &MasterKey, header: &PackHeader, body: usize) -> Vec<u8> {
    let mut data = vec![0x5a; body];
    let sealed = k.seal(ObjectKind::Pack.aad(), &header.encode());
    data.extend_from_slice(&sealed);
    data.extend_from_slice(&trailer(sealed.len() as u32));
    data
}

/// What reading a pack header gave: its size and header, or the error message.
type HeaderRead = Result<(u64, PackHeader), String>;

/// Stores `bytes` as a pack named by their hash and reads its header back.
fn read_header(repo: &Repository, bytes: Vec<u8>) -> Result<(HeaderRead, usize), TestCaseError> {
    let id = PackId(*blake3::hash(&bytes).as_bytes());
    repo.backend().write(&pack_path(&id), bytes).unwrap();
    let r = probed("read_pack_header", || {
        repo.read_pack_header(&id).map_err(|e| e.to_string())
    });
    repo.backend().delete(&pack_path(&id)).unwrap();
    r
}

/// Stores `plain` sealed as an object of `R`'s kind, named by its hash, and loads it.
fn load_forged<R: podvault_proto::ObjectRecord>(
    repo: &Repository,
    plain: &[u8],
) -> Result<(Result<R, String>, usize), TestCaseError>
where
    R::Id: podvault_proto::ObjectId,
{
    let sealed = repo.key().seal(R::KIND.aad(), plain);
    let hash = *blake3::hash(&sealed).as_bytes();
    let id = <R::Id as podvault_proto::ObjectId>::from_bytes(hash);
    let path = object_path::<R>(&id);
    repo.backend().write(&path, sealed).unwrap();
    let r = probed("load", || repo.load::<R>(&id).map_err(|e| e.to_string()));
    repo.backend().delete(&path).unwrap();
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pack_headers_from_arbitrary_and_mutated_packs(
        blobs in proptest::collection::vec((any::<[u8; 32]>(), any::<[u32; 3]>()), 0..6),
        body in 0usize..300,
        muts in mutations(),
        junk in payload(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let header = PackHeader {
            blob_type: BlobType::Data,
            blobs: blobs.iter().map(|(id, n)| PackedBlob {
                id: BlobId(*id), offset: n[0], length: n[1], raw_length: n[2],
            }).collect(),
        };
        let good = pack_bytes(repo.key(), &header, body);
        let (r, _) = read_header(&repo, good.clone())?;
        let (size, back) = r.map_err(TestCaseError::fail)?;
        prop_assert_eq!(size, good.len() as u64);
        prop_assert_eq!(back, header);
        let bad = mutate(good.clone(), &muts);
        let tail = good.len() - body;
        let changed_tail = bad.len() < tail || bad[bad.len() - tail..] != good[body..];
        let (r, largest) = read_header(&repo, bad.clone())?;
        prop_assert!(!changed_tail || r.is_err(), "a changed header opened");
        prop_assert!(largest <= allowance(bad.len(), 0));
        let (_, largest) = read_header(&repo, junk.clone())?;
        prop_assert!(largest <= allowance(junk.len(), 0));
    }

    #[test]
    fn records_loaded_from_forged_objects(plain in payload(), muts in mutations()) {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        // Arbitrary plaintext under a valid seal (an attacker with the key).
        let (r, largest) = load_forged::<Snapshot>(&repo, &plain)?;
        prop_assert!(largest <= allowance(plain.len(), 0));
        let _ = r;
        let (_, largest) = load_forged::<IndexFile>(&repo, &plain)?;
        prop_assert!(largest <= allowance(plain.len(), 0));
        // A mutated valid snapshot plaintext.
        let snap = Snapshot {
            time_ns: 1,
            hostname: "h".into(),
            paths: vec!["/p".into()],
            tags: vec!["t".into()],
            parent: Some(SnapshotId([1; 32])),
            tree: podvault_proto::TreeId([2; 32]),
            program_version: "v".into(),
            summary: Default::default(),

            identity: None,
        };
        let bytes = mutate(snap.encode(), &muts);
        let (_, largest) = load_forged::<Snapshot>(&repo, &bytes)?;
        prop_assert!(largest <= allowance(bytes.len(), 0));
        // The config lives at a fixed name and is read by `open`.
        let cfg = mutate(repo.config().encode(), &muts);
        let sealed = repo.key().seal(ObjectKind::Config.aad(), &cfg);
        std::fs::write(dir.path().join("config"), sealed).unwrap();
        let loc = Location::Fs(dir.path().to_owned());
        let (r, largest) = probed("open", || Repository::open(&loc, b"pw").map(|_| ()))?;
        prop_assert!(largest <= allowance(cfg.len(), 0) + (1 << 20), "{largest}");
        if let Err(e) = r {
            prop_assert!(e.to_string().contains("config"), "{}", e);
        }
    }
}

// ---- key files anybody can plant ----

/// Plants a key file with an absurd KDF cost, named by its hash so it looks genuine (key
/// files are plaintext: writing one needs no key, only write access to the store).
fn plant_key(repo_dir: &Path, memory_kib: u32, iterations: u32) -> String {
    let kf = KeyFile {
        version: KeyFile::VERSION,
        created: "2026-01-01T00:00:00Z".into(),
        hostname: format!("planted-{memory_kib}-{iterations}"),
        kdf: KdfParams {
            algorithm: "argon2id".into(),
            memory_kib,
            iterations,
            parallelism: 1,
            salt: "00".repeat(16),
        },
        master_key: "00".repeat(61),
    };
    // `encode` does not validate; the bytes are what an attacker would write.
    let bytes = kf.encode();
    let name = blake3::hash(&bytes).to_hex().to_string();
    std::fs::write(repo_dir.join("keys").join(&name), bytes).unwrap();
    name
}

#[test]
fn planted_key_files_with_absurd_kdf_costs_are_skipped_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let real = repo.key_id().unwrap().to_hex();
    let loc = Location::Fs(dir.path().to_owned());
    for (m, t) in [(u32::MAX, 1), (1 << 20, u32::MAX)] {
        // Whichever order `open` meets the keys in, it opens with the real one.
        let planted = plant_key(dir.path(), m, t);
        let (r, largest) = probed("open", || Repository::open(&loc, b"pw")).unwrap();
        assert!(r.is_ok(), "{:?}", r.err());
        assert!(largest < 64 << 20, "open allocated {largest} bytes at once");
        std::fs::remove_file(dir.path().join("keys").join(planted)).unwrap();
    }
    // With only a planted key left, opening fails (instead of running a 4 TiB KDF) and
    // names the key.
    let planted = plant_key(dir.path(), u32::MAX, 1);
    std::fs::remove_file(dir.path().join("keys").join(&real)).unwrap();
    let err = Repository::open(&loc, b"pw").unwrap_err().to_string();
    assert!(err.contains("keys/") && err.contains(&planted), "{err}");
}

#[test]
fn zstd_blobs_do_not_preallocate_the_claimed_length() {
    let k = key();
    let data = b"compressible ".repeat(100);
    let id = k.blob_id(&data);
    let sealed = BlobEncoder::new(3)
        .unwrap()
        .seal(&k, BlobType::Data, &id, &data);
    let (r, largest) = probed("open_blob", || {
        open_blob(&k, BlobType::Data, &id, u32::MAX, &sealed)
    })
    .unwrap();
    assert!(r.is_err());
    assert!(
        largest < 64 << 20,
        "open_blob allocated {largest} bytes at once"
    );
}

#[test]
fn the_allocation_probe_works() {
    let (_, largest) = probed("probe", || {
        drop(std::hint::black_box(Vec::<u8>::with_capacity(8 << 20)))
    })
    .unwrap();
    assert!(largest >= 8 << 20);
}
