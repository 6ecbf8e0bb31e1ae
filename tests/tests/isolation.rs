//! Tenant isolation: a pod that owns a volume races the root agent by swapping a directory
//! of its volume with a symlink to somewhere else (`renameat2(RENAME_EXCHANGE)`, atomic)
//! while the agent backs the volume up, restores into it in place, or writes its restore
//! marker. Hundreds of attempts each, against a swapper thread spinning as fast as it can:
//! - no snapshot holds a byte (or a name) from outside the volume;
//! - nothing outside the restore target is created, removed or modified (the outside tree
//!   is compared by listing, inode, link count, size, mtime and content after every attempt);
//! - every operation completes, or fails naming the entry it refused.
//!
//! Seeded data; the engine's library API (the CLI adds nothing here and would dominate the
//! time). Each test takes a few seconds.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use podvault::archiver::{backup, BackupOptions};
use podvault::backend::Location;
use podvault::crypto::KdfCost;
use podvault::index::MasterIndex;
use podvault::progress::Progress;
use podvault::repository::{InitOptions, Repository};
use podvault::restorer::{restore, RestoreOptions};
use podvault_proto::config::ChunkerParams;
use podvault_proto::tree::NodeKind;
use podvault_proto::{ChunkId, TreeId};
use rand::{Rng, RngCore, SeedableRng};
use rustix::fs::{renameat_with, RenameFlags, CWD};
use tempfile::TempDir;

const SEED: u64 = 0x1507_a7e5;
/// Backups raced per test.
const BACKUP_ATTEMPTS: usize = 200;
/// Restores raced per test.
const RESTORE_ATTEMPTS: usize = 150;
/// Markers raced per test.
const MARKER_ATTEMPTS: usize = 400;

/// A scratch directory: in memory where there is `/dev/shm` (hundreds of backups each
/// fsync their packs, index and snapshot; the races do not depend on the file system).
fn scratch() -> TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => TempDir::new_in("/dev/shm").unwrap_or_else(|_| TempDir::new().unwrap()),
        false => TempDir::new().unwrap(),
    }
}

/// A repository with small chunks (so a few hundred KiB make a multi-chunk file) and a
/// cheap key.
fn repository(dir: &Path) -> Repository {
    let opts = InitOptions {
        chunker: ChunkerParams {
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
        },
        kdf: KdfCost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        ..InitOptions::default()
    };
    Repository::init(&Location::Fs(dir.to_owned()), b"correct horse", &opts).expect("init")
}

/// Swaps `<dir>/<a>` and `<dir>/<b>` (a directory and a symlink to `outside`) until stopped;
/// when the victim has removed the symlink, plants a new one.
struct Swapper {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Swapper {
    fn start(dir: &Path, a: &str, b: &str, outside: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let (pa, pb, outside) = (dir.join(a), dir.join(b), outside.to_owned());
        let junk = dir.to_owned();
        let handle = {
            let stop = stop.clone();
            let swaps = swaps.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(SEED ^ 0x5a5a);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match renameat_with(CWD, &pa, CWD, &pb, RenameFlags::EXCHANGE) {
                        Ok(()) => {
                            swaps.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => replant(&pa, &pb, &outside, &junk, n),
                    }
                    if n % 64 == 0 {
                        replant(&pa, &pb, &outside, &junk, n);
                    }
                    // Vary the rhythm a little so the swaps land at every step of the victim.
                    for _ in 0..rng.random_range(0..64u32) {
                        std::hint::spin_loop();
                    }
                    // Leave the victim its share of a busy machine.
                    if n % 8 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        };
        Swapper {
            stop,
            swaps,
            handle: Some(handle),
        }
    }

    /// Waits (up to a second) until the swapper has swapped again since `seen`; returns the
    /// count. Keeps fast victims (a marker write takes microseconds on tmpfs) from finishing
    /// before the swapper gets a core.
    fn advanced(&self, seen: u64) -> u64 {
        let start = std::time::Instant::now();
        loop {
            let n = self.swaps.load(Ordering::Relaxed);
            if n > seen || start.elapsed() > std::time::Duration::from_secs(1) {
                return n;
            }
            std::thread::yield_now();
        }
    }

    /// Stops the swapper; returns how many swaps it made.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("swapper");
        }
        self.swaps.load(Ordering::Relaxed)
    }
}

/// Makes sure one of `a`, `b` is a symlink to `outside` again (the victim may have replaced
/// it with a directory of its own).
fn replant(a: &Path, b: &Path, outside: &Path, junk: &Path, n: u64) {
    let is_link = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    if is_link(a) || is_link(b) {
        return;
    }
    if fs::symlink_metadata(b).is_ok() {
        let _ = fs::rename(b, junk.join(format!("junk-{n}")));
    }
    let _ = std::os::unix::fs::symlink(outside, b);
}

/// What a write would change about one entry: mode (with type), inode, link count, size,
/// mtime and (for files) content.
type EntryState = (u32, u64, u64, u64, i64, Vec<u8>);

/// Everything about a tree that a write would change, per path.
fn state(root: &Path) -> BTreeMap<PathBuf, EntryState> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.expect("walk outside tree");
        let m = e.metadata().expect("metadata");
        let content = if m.is_file() {
            fs::read(e.path()).expect("read")
        } else {
            Vec::new()
        };
        out.insert(
            e.path().to_owned(),
            (m.mode(), m.ino(), m.nlink(), m.size(), m.mtime(), content),
        );
    }
    out
}

/// Seeded bytes no file inside any volume has.
fn secret(rng: &mut impl RngCore, len: usize) -> Vec<u8> {
    let mut v = b"OUTSIDE-THE-VOLUME:".to_vec();
    let mut tail = vec![0u8; len];
    rng.fill_bytes(&mut tail);
    v.extend_from_slice(&tail);
    v
}

/// Every node name and chunk id of every snapshot in `repo`.
fn snapshot_contents(repo: &Repository) -> (Vec<Vec<u8>>, Vec<ChunkId>, usize) {
    let index: MasterIndex = repo.load_index().expect("index");
    let mut names = Vec::new();
    let mut chunks = Vec::new();
    let snapshots = repo.snapshots().expect("snapshots");
    let mut todo: Vec<TreeId> = snapshots.iter().map(|(_, s)| s.tree).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for n in repo.load_tree(&index, &id).expect("tree").nodes {
            if n.kind == NodeKind::Dir {
                todo.extend(n.subtree);
            }
            chunks.extend(n.content.iter().copied());
            names.push(n.name);
        }
    }
    (names, chunks, snapshots.len())
}

#[test]
fn racing_swap_never_gets_outside_bytes_into_a_snapshot() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let tmp = scratch();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(outside.join("deeper")).unwrap();
    let secrets = [secret(&mut rng, 3000), secret(&mut rng, 200_000)];
    fs::write(outside.join("secret-token"), &secrets[0]).unwrap();
    fs::write(outside.join("deeper/secret-db"), &secrets[1]).unwrap();
    let vol = tmp.path().join("vol");
    fs::create_dir_all(vol.join("d/deeper")).unwrap();
    for i in 0..8 {
        let mut data = vec![0u8; rng.random_range(100..5000)];
        rng.fill_bytes(&mut data);
        fs::write(vol.join(format!("d/file-{i}")), &data).unwrap();
    }
    fs::write(vol.join("d/deeper/inner"), b"inside").unwrap();
    std::os::unix::fs::symlink(&outside, vol.join("link")).unwrap();
    let repo = repository(&tmp.path().join("repo"));
    // What the walker would store for the secrets (files below the minimum chunk size are
    // one chunk; the large one is checked through every chunk id of its own backup below).
    let key = repo.key();
    let secret_small = ChunkId(key.blob_id(&secrets[0]).0);

    let swapper = Swapper::start(&vol, "d", "link", &outside);
    let mut refused = 0usize;
    let mut parent: Option<String> = None;
    for attempt in 0..BACKUP_ATTEMPTS {
        let opts = BackupOptions {
            paths: vec![vol.clone()],
            force: true,
            // Named, so the backup does not read every earlier snapshot to find it.
            parent: parent.clone(),
            host: Some("racer".into()),
            threads: Some(1),
            ..BackupOptions::default()
        };
        let out = backup(&repo, &opts, &Progress::default(), &AtomicBool::new(false))
            .unwrap_or_else(|e| panic!("backup attempt {attempt} failed: {e}"));
        parent.get_or_insert_with(|| out.id.to_hex());
        for e in &out.snapshot.summary.errors {
            // A refusal names the entry under the volume.
            assert!(
                e.path.starts_with(vol.to_str().unwrap()),
                "attempt {attempt}: error names {:?}: {}",
                e.path,
                e.message
            );
            refused += 1;
        }
    }
    let swaps = swapper.stop();
    let (names, chunks, snapshots) = snapshot_contents(&repo);
    assert_eq!(snapshots, BACKUP_ATTEMPTS);

    // The chunk ids the secrets get in this repository.
    let chunker = podvault::chunker::Chunker::new(repo.config().chunker);
    let mut secret_chunks = vec![secret_small];
    chunker
        .chunk_stream(&secrets[1][..], |c| {
            secret_chunks.push(ChunkId(key.blob_id(&c).0));
            Ok::<(), std::io::Error>(())
        })
        .unwrap();
    let leaked_chunks = chunks.iter().filter(|c| secret_chunks.contains(c)).count();
    let leaked_names = names
        .iter()
        .filter(|n| n.as_slice() == b"secret-token" || n.as_slice() == b"secret-db")
        .count();
    eprintln!(
        "backup race: {BACKUP_ATTEMPTS} backups, {swaps} swaps, {refused} entries refused, \
         {leaked_chunks} outside chunks and {leaked_names} outside names in snapshots"
    );
    assert!(
        swaps > BACKUP_ATTEMPTS as u64,
        "the swapper barely ran ({swaps} swaps)"
    );
    assert_eq!(
        leaked_chunks, 0,
        "a snapshot holds bytes from outside the volume"
    );
    assert_eq!(
        leaked_names, 0,
        "a snapshot lists a directory outside the volume"
    );
}

#[test]
fn racing_swap_never_makes_an_in_place_restore_write_outside() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED + 1);
    let tmp = scratch();
    // The snapshot: files in `d/` (small ones and a multi-chunk one), a subdirectory, a
    // symlink and a hard link pair.
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d/sub")).unwrap();
    for i in 0..24 {
        let mut data = vec![0u8; rng.random_range(0..3000)];
        rng.fill_bytes(&mut data);
        fs::write(src.join(format!("d/f{i:02}")), &data).unwrap();
    }
    let mut big = vec![0u8; 300_000];
    rng.fill_bytes(&mut big);
    fs::write(src.join("d/big"), &big).unwrap();
    fs::write(src.join("d/sub/inner"), b"inner").unwrap();
    fs::hard_link(src.join("d/f00"), src.join("d/sub/f00-link")).unwrap();
    std::os::unix::fs::symlink("f01", src.join("d/sym")).unwrap();
    let repo = repository(&tmp.path().join("repo"));
    let snap = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..BackupOptions::default()
        },
        &Progress::default(),
        &AtomicBool::new(false),
    )
    .unwrap()
    .snapshot;

    // The live volume: `d` exists, and the pod swaps it with a symlink to outside.
    let outside = tmp.path().join("outside");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(
        outside.join("f00"),
        b"victim file, same name as one restored",
    )
    .unwrap();
    fs::write(outside.join("sub/inner"), b"victim inner").unwrap();
    let target = tmp.path().join("target");
    fs::create_dir_all(target.join("d")).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("link")).unwrap();
    let before = state(&outside);

    let swapper = Swapper::start(&target, "d", "link", &outside);
    let (mut completed, mut refused) = (0usize, 0usize);
    let mut seen = 0;
    for attempt in 0..RESTORE_ATTEMPTS {
        seen = swapper.advanced(seen);
        let opts = RestoreOptions {
            target: target.clone(),
            threads: 2,
            ..RestoreOptions::default()
        };
        match restore(
            &repo,
            &snap,
            &opts,
            &Progress::default(),
            &AtomicBool::new(false),
        ) {
            Ok(_) => completed += 1,
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(target.to_str().unwrap()),
                    "attempt {attempt}: the error does not name the refused entry: {msg}"
                );
                refused += 1;
            }
        }
        assert_eq!(
            state(&outside),
            before,
            "attempt {attempt}: the restore changed something outside its target"
        );
    }
    let swaps = swapper.stop();
    eprintln!(
        "restore race: {RESTORE_ATTEMPTS} restores ({completed} complete, {refused} refused \
         an entry), {swaps} swaps, 0 changes outside the target"
    );
    assert!(
        swaps > RESTORE_ATTEMPTS as u64,
        "the swapper barely ran ({swaps} swaps)"
    );
    // Without the swapper the same restore completes and is byte-identical.
    let calm = tmp.path().join("calm");
    restore(
        &repo,
        &snap,
        &RestoreOptions {
            target: calm.clone(),
            threads: 2,
            ..RestoreOptions::default()
        },
        &Progress::default(),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(fs::read(calm.join("d/big")).unwrap(), big);
    assert_eq!(
        fs::metadata(calm.join("d/f00")).unwrap().ino(),
        fs::metadata(calm.join("d/sub/f00-link")).unwrap().ino()
    );
    assert_eq!(fs::read_link(calm.join("d/sym")).unwrap(), Path::new("f01"));
}

#[test]
fn racing_swap_never_makes_the_marker_land_outside() {
    let tmp = scratch();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("keep"), b"keep").unwrap();
    let vol = tmp.path().join("vol");
    fs::create_dir_all(vol.join(".podvault")).unwrap();
    std::os::unix::fs::symlink(&outside, vol.join("link")).unwrap();
    let before = state(&outside);
    let swapper = Swapper::start(&vol, ".podvault", "link", &outside);
    let (mut written, mut refused) = (0usize, 0usize);
    let mut seen = 0;
    for attempt in 0..MARKER_ATTEMPTS {
        seen = swapper.advanced(seen);
        let uid = format!("uid-{attempt}");
        match podvault::worker::restore_wait::put_marker(&vol, None, &uid, "0123abcd") {
            Ok(p) => {
                assert_eq!(p, vol.join(".podvault").join(&uid));
                written += 1;
            }
            Err(e) => {
                assert!(
                    e.to_string().contains(vol.to_str().unwrap()),
                    "attempt {attempt}: {e}"
                );
                refused += 1;
            }
        }
        assert_eq!(state(&outside), before, "attempt {attempt}");
    }
    let swaps = swapper.stop();
    eprintln!(
        "marker race: {MARKER_ATTEMPTS} markers ({written} written, {refused} refused), \
         {swaps} swaps, 0 changes outside the volume"
    );
    assert!(
        swaps >= MARKER_ATTEMPTS as u64,
        "the swapper barely ran ({swaps} swaps)"
    );
}

#[test]
fn restricted_policy_plants_no_device_setuid_or_root_owner() {
    let tmp = scratch();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("plain"), b"plain").unwrap();
    fs::write(src.join("suid-root"), b"#!/bin/sh\nid\n").unwrap();
    // Owner first: chown clears setuid/setgid bits.
    std::os::unix::fs::chown(src.join("suid-root"), Some(0), Some(0)).unwrap();
    fs::set_permissions(src.join("suid-root"), fs::Permissions::from_mode(0o6755)).unwrap();
    fs::write(src.join("user-owned"), b"user").unwrap();
    std::os::unix::fs::chown(src.join("user-owned"), Some(1234), Some(1234)).unwrap();
    // What a pod running as uid 1234 can make itself: setuid/setgid on its own file.
    fs::write(src.join("suid-user"), b"user").unwrap();
    std::os::unix::fs::chown(src.join("suid-user"), Some(1234), Some(1234)).unwrap();
    fs::set_permissions(src.join("suid-user"), fs::Permissions::from_mode(0o6750)).unwrap();
    // What the kubelet or a root init container makes: root-owned files and a setgid
    // directory of group 0.
    fs::write(src.join("root-config"), b"cfg").unwrap();
    std::os::unix::fs::chown(src.join("root-config"), Some(0), Some(0)).unwrap();
    fs::set_permissions(src.join("root-config"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir(src.join("shared")).unwrap();
    std::os::unix::fs::chown(src.join("shared"), Some(0), Some(0)).unwrap();
    fs::set_permissions(src.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    // setgid for group 0 on a file owned by someone else.
    fs::write(src.join("sgid-root-group"), b"g").unwrap();
    std::os::unix::fs::chown(src.join("sgid-root-group"), Some(1234), Some(0)).unwrap();
    fs::set_permissions(
        src.join("sgid-root-group"),
        fs::Permissions::from_mode(0o2755),
    )
    .unwrap();
    let device = rustix::fs::mknodat(
        CWD,
        src.join("null-dev"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    );
    let has_device = match device {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipping the device-node part: mknod is not permitted here ({e})");
            false
        }
    };
    let repo = repository(&tmp.path().join("repo"));
    let snap = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..BackupOptions::default()
        },
        &Progress::default(),
        &AtomicBool::new(false),
    )
    .unwrap()
    .snapshot;
    assert!(snap.summary.errors.is_empty(), "{:?}", snap.summary.errors);
    let root = rustix::process::geteuid().is_root();

    let restricted = tmp.path().join("restricted");
    let out = restore(
        &repo,
        &snap,
        &RestoreOptions {
            target: restricted.clone(),
            restricted: true,
            ..RestoreOptions::default()
        },
        &Progress::default(),
        &AtomicBool::new(false),
    )
    .unwrap();
    let mode = |name: &str| fs::metadata(restricted.join(name)).unwrap().mode() & 0o7777;
    let owner = |name: &str| {
        let m = fs::metadata(restricted.join(name)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(
        mode("suid-root"),
        0o755,
        "setuid-root and setgid-root dropped"
    );
    assert_eq!(
        fs::read(restricted.join("suid-root")).unwrap(),
        b"#!/bin/sh\nid\n"
    );
    assert_eq!(mode("root-config"), 0o640);
    assert_eq!(mode("shared"), 0o2775, "a directory keeps setgid");
    if root {
        assert_eq!(
            mode("suid-user"),
            0o6750,
            "setuid/setgid of a non-root owner kept"
        );
        assert_eq!(mode("sgid-root-group"), 0o755, "setgid of group 0 dropped");
        assert_eq!(
            owner("suid-root"),
            (0, 0),
            "root owners restored as recorded"
        );
        assert_eq!(owner("root-config"), (0, 0));
        assert_eq!(owner("shared"), (0, 0));
        assert_eq!(owner("user-owned"), (1234, 1234));
        assert_eq!(owner("suid-user"), (1234, 1234));
    } else {
        eprintln!("not root: owners are not restored, only the mode bits are checked");
    }
    if has_device {
        assert!(fs::symlink_metadata(restricted.join("null-dev")).is_err());
        assert!(
            out.skipped.iter().any(|s| s.ends_with("null-dev")),
            "{:?}",
            out.skipped
        );
    }

    // The CLI default (unrestricted) restores them as they were.
    let open = tmp.path().join("unrestricted");
    restore(
        &repo,
        &snap,
        &RestoreOptions {
            target: open.clone(),
            ..RestoreOptions::default()
        },
        &Progress::default(),
        &AtomicBool::new(false),
    )
    .unwrap();
    if root {
        let suid = fs::metadata(open.join("suid-root")).unwrap();
        assert_eq!(suid.mode() & 0o7777, 0o6755);
        assert_eq!(suid.uid(), 0);
        if has_device {
            let m = fs::symlink_metadata(open.join("null-dev")).unwrap();
            assert!(std::os::unix::fs::FileTypeExt::is_char_device(
                &m.file_type()
            ));
            assert_eq!(m.rdev(), rustix::fs::makedev(1, 3));
        }
    }
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn one_file_system_does_not_enter_a_mount_inside_the_volume() {
    let tmp = scratch();
    let vol = tmp.path().join("vol");
    fs::create_dir_all(vol.join("mnt")).unwrap();
    fs::write(vol.join("own"), b"own data").unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "podvault-test",
            vol.join("mnt").to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipping: mounting a tmpfs is not permitted here");
        return;
    }
    let _guard = Mounted(vol.join("mnt"));
    fs::write(vol.join("mnt/foreign"), b"another file system").unwrap();
    let repo = repository(&tmp.path().join("repo"));
    let run = |one_file_system: bool| {
        let out = backup(
            &repo,
            &BackupOptions {
                paths: vec![vol.clone()],
                one_file_system,
                ..BackupOptions::default()
            },
            &Progress::default(),
            &AtomicBool::new(false),
        )
        .unwrap();
        let target = tmp.path().join(format!("restored-{one_file_system}"));
        restore(
            &repo,
            &out.snapshot,
            &RestoreOptions {
                target: target.clone(),
                ..RestoreOptions::default()
            },
            &Progress::default(),
            &AtomicBool::new(false),
        )
        .unwrap();
        target
    };
    let kept = run(true);
    assert_eq!(fs::read(kept.join("own")).unwrap(), b"own data");
    assert!(kept.join("mnt").is_dir(), "the mount point is kept, empty");
    assert_eq!(fs::read_dir(kept.join("mnt")).unwrap().count(), 0);
    let crossed = run(false);
    assert_eq!(
        fs::read(crossed.join("mnt/foreign")).unwrap(),
        b"another file system"
    );
}
