//! Hostile repositories: validly encrypted snapshots whose trees try to make the restorer
//! write outside its target, write through symlinks, loop, crash or allocate without bound.
//!
//! Each test builds its own repository through the engine's library API, so every object
//! opens and verifies (the attacker knows the key, or is a compromised writer), crafts the
//! trees by hand, and restores them with the real `podvault` binary into `<tmp>/target`
//! beside a sentinel `<tmp>/outside`. Every case checks that:
//! - nothing outside the target was created, removed or modified (the whole temp dir but the
//!   target and the repository is compared before and after, link counts included);
//! - the restore exits 1 and stderr names the bad entry (or exits 0 where the snapshot is
//!   odd but legitimate, e.g. a 128 GiB sparse file);
//! - the well-formed siblings (`0-first.txt`, `good-dir/inner.txt`, `zz-last.txt`) are
//!   restored byte for byte, and no other regular file exists in the target unless the case
//!   expects it (no zero-filled leftovers, nothing written through a symlink);
//! - the restore ends on its own (a watchdog kills it after two minutes) and never panics or
//!   aborts (a crash exits by signal or with code 101, never 0 or 1).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use podvault::backend::Location;
use podvault::blob::BlobEncoder;
use podvault::crypto::KdfCost;
use podvault::packer::Packer;
use podvault::progress::Progress;
use podvault::repository::{pack_path, InitOptions, Repository};
use podvault::restorer::{restore, RestoreOptions};
use podvault_proto::index::{IndexEntry, IndexFile};
use podvault_proto::pack::BlobType;
use podvault_proto::snapshot::{Snapshot, Summary};
use podvault_proto::tree::{Node, NodeKind, Tree};
use podvault_proto::{BlobId, ChunkId, Record, SnapshotId, TreeId};
use podvault_tests::Repo;
use tempfile::TempDir;

/// Builds validly encrypted repository objects by hand.
struct Forge {
    repo: Repository,
    encoder: BlobEncoder,
    data: Packer,
    trees: Packer,
    stored: HashSet<BlobId>,
}

impl Forge {
    fn new(dir: &Path) -> Self {
        let cli = Repo::fs(dir);
        let opts = InitOptions {
            kdf: KdfCost {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            ..InitOptions::default()
        };
        let repo = Repository::init(
            &Location::Fs(dir.to_owned()),
            cli.password.as_bytes(),
            &opts,
        )
        .expect("init");
        let encoder = BlobEncoder::new(repo.config().compression_level).expect("zstd");
        let spool = repo.backend().spool_dir().expect("spool directory");
        Forge {
            repo,
            encoder,
            data: Packer::new(BlobType::Data, 1 << 20, &spool),
            trees: Packer::new(BlobType::Tree, 1 << 20, &spool),
            stored: HashSet::new(),
        }
    }

    /// Stores `plaintext` as a blob of type `ty` under `id` (normally its keyed hash; a
    /// different id makes a blob that opens but fails the id check).
    fn blob_as(&mut self, ty: BlobType, id: BlobId, plaintext: &[u8]) {
        if !self.stored.insert(id) {
            return;
        }
        let sealed = self.encoder.seal(self.repo.key(), ty, &id, plaintext);
        let packer = match ty {
            BlobType::Data => &mut self.data,
            BlobType::Tree => &mut self.trees,
        };
        // Packs are closed in `snapshot`, whatever their size.
        packer
            .add(id, &sealed, plaintext.len() as u32)
            .expect("spool pack");
    }

    fn chunk(&mut self, data: &[u8]) -> ChunkId {
        let id = self.repo.key().blob_id(data);
        self.blob_as(BlobType::Data, id, data);
        ChunkId(id.0)
    }

    /// Stores a tree exactly as given: no sorting, no checks.
    fn raw_tree(&mut self, nodes: Vec<Node>) -> TreeId {
        let bytes = Tree { nodes }.encode();
        let id = self.repo.key().blob_id(&bytes);
        self.blob_as(BlobType::Tree, id, &bytes);
        TreeId(id.0)
    }

    /// Stores a tree sorted by name (stable: duplicates keep their order).
    fn tree(&mut self, mut nodes: Vec<Node>) -> TreeId {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.raw_tree(nodes)
    }

    fn file(&mut self, name: &[u8], content: &[u8]) -> Node {
        let mut n = Node::new(name.to_vec(), NodeKind::File);
        n.mode = 0o100644;
        n.mtime_ns = 1_700_000_000_000_000_000;
        n.size = content.len() as u64;
        if !content.is_empty() {
            n.content = vec![self.chunk(content)];
        }
        n
    }

    fn dir(&mut self, name: &[u8], nodes: Vec<Node>) -> Node {
        let mut n = Node::new(name.to_vec(), NodeKind::Dir);
        n.mode = 0o40755;
        n.mtime_ns = 1_700_000_000_000_000_000;
        n.subtree = Some(self.tree(nodes));
        n
    }

    /// Writes the packs, an index (after `tweak`), and a snapshot of `root`.
    fn snapshot_with(&mut self, root: TreeId, tweak: impl FnOnce(&mut IndexFile)) -> SnapshotId {
        let mut index = IndexFile::default();
        for packer in [&mut self.data, &mut self.trees] {
            let Some(pack) = packer.finish(self.repo.key()).expect("spool pack") else {
                continue;
            };
            let n = index.packs.len() as u32;
            index.packs.push(pack.info());
            index
                .entries
                .extend(pack.header.blobs.iter().map(|b| IndexEntry {
                    id: b.id,
                    pack: n,
                    offset: b.offset,
                    length: b.length,
                    raw_length: b.raw_length,
                }));
            self.repo
                .backend()
                .write_file(&pack_path(&pack.id), pack.file)
                .expect("write pack");
        }
        index.sort();
        tweak(&mut index);
        self.repo.save(&index).expect("save index");
        let snapshot = Snapshot {
            time_ns: 1_700_000_000_000_000_000,
            hostname: "hostile".into(),
            paths: vec!["/hostile".into()],
            tags: Vec::new(),
            parent: None,
            tree: root,
            program_version: "hostile".into(),
            summary: Summary::default(),

            identity: None,
        };
        self.repo.save(&snapshot).expect("save snapshot")
    }
}

/// What the restore of a hostile snapshot must do.
enum Expect<'a> {
    /// Exit 1 with every one of these strings on stderr.
    Fail(&'a [&'a str]),
    /// Exit 0: the snapshot is odd but legitimate.
    Ok,
}

/// One hostile restore: a repository, a sentinel `outside` dir and a fresh target.
struct Case {
    tmp: TempDir,
    forge: Forge,
    /// Regular files that must be in the target afterwards, with their bytes.
    expected: BTreeMap<PathBuf, Vec<u8>>,
}

const VICTIM: &[u8] = b"victim: must never change\n";

impl Case {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let forge = Forge::new(&tmp.path().join("repo"));
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("sub")).expect("outside");
        fs::write(outside.join("victim.txt"), VICTIM).expect("victim");
        fs::write(outside.join("sub/inner.txt"), b"inner\n").expect("inner");
        Case {
            tmp,
            forge,
            expected: BTreeMap::new(),
        }
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    fn target(&self) -> PathBuf {
        self.tmp.path().join("target")
    }

    /// Notes a regular file the restore must produce (beyond the standard siblings).
    fn expect_file(&mut self, rel: &str, content: &[u8]) {
        self.expected.insert(PathBuf::from(rel), content.to_vec());
    }

    /// The well-formed siblings every hostile root carries, before and after it by name.
    fn siblings(&mut self) -> Vec<Node> {
        let first = self.forge.file(b"0-first.txt", b"first sibling\n");
        let inner = self.forge.file(b"inner.txt", b"inner sibling\n");
        let dir = self.forge.dir(b"good-dir", vec![inner]);
        let last = self.forge.file(b"zz-last.txt", b"last sibling\n");
        self.expect_file("0-first.txt", b"first sibling\n");
        self.expect_file("good-dir/inner.txt", b"inner sibling\n");
        self.expect_file("zz-last.txt", b"last sibling\n");
        vec![first, dir, last]
    }

    /// Restores a root made of the siblings and `hostile` (sorted stably by name).
    fn run(mut self, hostile: Vec<Node>, expect: Expect) -> Self {
        let mut nodes = self.siblings();
        nodes.extend(hostile);
        let root = self.forge.tree(nodes);
        self.run_root(root, |_| {}, expect)
    }

    /// Restores a snapshot of `root` after tweaking the index; checks the common promises.
    fn run_root(
        mut self,
        root: TreeId,
        tweak: impl FnOnce(&mut IndexFile),
        expect: Expect,
    ) -> Self {
        let id = self.forge.snapshot_with(root, tweak);
        let before = outside_state(self.tmp.path());
        let target = self.target();
        let out = restore_with_watchdog(
            &Repo::fs(&self.tmp.path().join("repo")),
            &id.to_hex(),
            &target,
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("restore stderr:\n{err}");
        let code = out.status.code();
        match expect {
            Expect::Fail(needles) => {
                assert_eq!(code, Some(1), "restore must fail cleanly:\n{err}");
                for n in needles {
                    assert!(err.contains(n), "stderr does not name {n:?}:\n{err}");
                }
            }
            Expect::Ok => assert_eq!(code, Some(0), "restore must succeed:\n{err}"),
        }
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(
            outside_state(self.tmp.path()),
            before,
            "something outside the target changed:\n{err}"
        );
        for (rel, content) in &self.expected {
            let got = fs::read(target.join(rel))
                .unwrap_or_else(|e| panic!("{rel:?} was not restored ({e}):\n{err}"));
            assert!(got == *content, "{rel:?} has wrong bytes");
        }
        for e in walkdir::WalkDir::new(&target).min_depth(1) {
            let e = e.expect("walk target");
            if e.file_type().is_file() {
                let rel = e.path().strip_prefix(&target).expect("prefix");
                assert!(
                    self.expected.contains_key(rel),
                    "unexpected file {rel:?} in the target ({} bytes):\n{err}",
                    e.metadata().map(|m| m.len()).unwrap_or(0)
                );
            }
        }
        self
    }
}

/// Runs `podvault restore`, killing it if it has not ended after two minutes.
fn restore_with_watchdog(repo: &Repo, snapshot: &str, target: &Path) -> Output {
    let mut child = repo
        .cmd(&[
            "restore",
            snapshot,
            "--target",
            target.to_str().expect("utf-8"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn podvault");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "restore did not end within two minutes (loop?):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Everything under `root` except the target and the repository: type, size, mode, link
/// count, mtime, and content or link target.
fn outside_state(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| {
            e.depth() != 1 || !matches!(e.file_name().to_str(), Some("target" | "repo"))
        });
    for e in walk {
        let e = e.expect("walk");
        let m = e.path().symlink_metadata().expect("metadata");
        let ft = m.file_type();
        let body = if ft.is_file() {
            format!("{:?}", fs::read(e.path()).expect("read"))
        } else if ft.is_symlink() {
            format!("-> {:?}", fs::read_link(e.path()).expect("readlink"))
        } else if ft.is_fifo() {
            "fifo".into()
        } else {
            String::new()
        };
        out.insert(
            e.path().strip_prefix(root).expect("prefix").to_owned(),
            format!(
                "{:o} {} {} {}.{} {body}",
                m.mode(),
                m.len(),
                m.nlink(),
                m.mtime(),
                m.mtime_nsec()
            ),
        );
    }
    out
}

fn victim_path(case: &Case) -> Vec<u8> {
    case.outside()
        .join("victim.txt")
        .as_os_str()
        .as_bytes()
        .to_vec()
}

fn symlink(name: &[u8], target: &[u8]) -> Node {
    let mut n = Node::new(name.to_vec(), NodeKind::Symlink);
    n.mode = 0o120777;
    n.size = target.len() as u64;
    n.symlink_target = target.to_vec();
    n
}

fn linked(mut n: Node, device: u64, inode: u64) -> Node {
    n.links = 2;
    n.device = device;
    n.inode = inode;
    n
}

// ---- names that are not one plain path component ----

#[test]
fn dotdot_directory_cannot_climb_out() {
    let mut c = Case::new();
    let pwned = c.forge.file(b"pwned.txt", b"PWNED");
    let out = c.forge.dir(b"outside", vec![pwned]);
    let evil = c.forge.dir(b"..", vec![out]);
    c.run(vec![evil], Expect::Fail(&["unsafe name", "\"..\""]));
}

#[test]
fn dot_directory_is_rejected() {
    let mut c = Case::new();
    let pwned = c.forge.file(b"pwned.txt", b"PWNED");
    let evil = c.forge.dir(b".", vec![pwned]);
    c.run(vec![evil], Expect::Fail(&["unsafe name", "\".\""]));
}

#[test]
fn empty_name_is_rejected() {
    let mut c = Case::new();
    let pwned = c.forge.file(b"pwned.txt", b"PWNED");
    let evil = c.forge.dir(b"", vec![pwned]);
    c.run(vec![evil], Expect::Fail(&["unsafe name", "\"\""]));
}

#[test]
fn absolute_file_name_cannot_replace_the_target_path() {
    let mut c = Case::new();
    let abs = c.outside().join("pwned.txt");
    let evil = c.forge.file(abs.as_os_str().as_bytes(), b"PWNED");
    let shown = format!("{:?}", abs.display().to_string());
    c.run(vec![evil], Expect::Fail(&["unsafe name", &shown]));
}

#[test]
fn absolute_directory_name_cannot_replace_the_target_path() {
    let mut c = Case::new();
    let pwned = c.forge.file(b"pwned.txt", b"PWNED");
    let abs = c.outside();
    let evil = c.forge.dir(abs.as_os_str().as_bytes(), vec![pwned]);
    c.run(vec![evil], Expect::Fail(&["unsafe name"]));
}

#[test]
fn absolute_name_at_the_file_system_root() {
    let name = format!("/podvault-hostile-{}", std::process::id());
    let mut c = Case::new();
    let evil = c.forge.file(name.as_bytes(), b"PWNED");
    let c = c.run(vec![evil], Expect::Fail(&["unsafe name", &name]));
    let escaped = Path::new(&name).exists();
    let _ = fs::remove_file(&name);
    assert!(!escaped, "{name} was created");
    drop(c);
}

#[test]
fn name_with_slashes_cannot_climb_out() {
    let mut c = Case::new();
    let evil = c.forge.file(b"../outside/pwned.txt", b"PWNED");
    c.run(
        vec![evil],
        Expect::Fail(&["unsafe name", "../outside/pwned.txt"]),
    );
}

#[test]
fn nested_name_with_slashes_cannot_climb_out() {
    let mut c = Case::new();
    let evil = c.forge.file(b"sub/../../../outside/victim.txt", b"PWNED");
    let ok = c.forge.file(b"ok.txt", b"nested ok\n");
    let sub = c.forge.dir(b"sub", vec![evil, ok]);
    c.expect_file("sub/ok.txt", b"nested ok\n");
    c.run(
        vec![sub],
        Expect::Fail(&["unsafe name", "outside/victim.txt"]),
    );
}

#[test]
fn name_with_nul_is_rejected() {
    let mut c = Case::new();
    let evil = c.forge.file(b"a\0b", b"PWNED");
    c.run(vec![evil], Expect::Fail(&["unsafe name", "a\\0b"]));
}

#[test]
fn overlong_name_fails_that_file_only() {
    let mut c = Case::new();
    let name = vec![b'x'; 300];
    let evil = c.forge.file(&name, b"long");
    c.run(
        vec![evil],
        Expect::Fail(&["xxxxxxxxxx", "File name too long"]),
    );
}

// ---- duplicates and symlinks that would be written through ----

#[test]
fn duplicate_names_are_all_skipped_and_named() {
    let mut c = Case::new();
    let a = c.forge.file(b"dup", b"first copy");
    let b = c.forge.file(b"dup", b"second copy");
    c.run(vec![a, b], Expect::Fail(&["\"dup\" appears 2 times"]));
}

#[test]
fn symlink_then_directory_of_the_same_name() {
    let mut c = Case::new();
    let outside = c.outside();
    let link = symlink(b"ln", outside.as_os_str().as_bytes());
    let pwned = c.forge.file(b"pwned.txt", b"PWNED");
    let dir = c.forge.dir(b"ln", vec![pwned]);
    c.run(vec![link, dir], Expect::Fail(&["\"ln\" appears 2 times"]));
}

#[test]
fn directory_then_symlink_of_the_same_name() {
    let mut c = Case::new();
    let outside = c.outside();
    let pwned = c.forge.file(b"pwned.txt", b"PWNED");
    let dir = c.forge.dir(b"ln", vec![pwned]);
    let link = symlink(b"ln", outside.as_os_str().as_bytes());
    c.run(vec![dir, link], Expect::Fail(&["\"ln\" appears 2 times"]));
}

#[test]
fn symlink_then_file_of_the_same_name() {
    let mut c = Case::new();
    let victim = victim_path(&c);
    let link = symlink(b"ln", &victim);
    let file = c.forge.file(b"ln", b"PWNED");
    c.run(vec![link, file], Expect::Fail(&["\"ln\" appears 2 times"]));
}

#[test]
fn symlink_to_outside_then_file_under_it() {
    let mut c = Case::new();
    let outside = c.outside();
    let link = symlink(b"ln", outside.as_os_str().as_bytes());
    let under = c.forge.file(b"ln/victim.txt", b"PWNED");
    let c = c.run(
        vec![link, under],
        Expect::Fail(&["unsafe name", "ln/victim.txt"]),
    );
    // The symlink itself is legitimate and restored as a link, never followed.
    assert_eq!(fs::read_link(c.target().join("ln")).unwrap(), c.outside());
}

#[test]
fn symlinks_pointing_outside_are_restored_as_links_only() {
    let mut c = Case::new();
    let victim = victim_path(&c);
    let abs = symlink(b"abs", &victim);
    let rel = symlink(b"rel", b"../outside/victim.txt");
    let up = symlink(b"up", b"../../../../../../../../etc");
    let sub = c.forge.dir(b"sub", vec![symlink(b"back", b"../rel")]);
    let c = c.run(vec![abs, rel, up, sub], Expect::Ok);
    let t = c.target();
    assert_eq!(
        fs::read_link(t.join("abs")).unwrap(),
        c.outside().join("victim.txt")
    );
    assert_eq!(
        fs::read_link(t.join("rel")).unwrap(),
        Path::new("../outside/victim.txt")
    );
    assert_eq!(
        fs::read_link(t.join("sub/back")).unwrap(),
        Path::new("../rel")
    );
}

#[test]
fn symlink_target_with_nul_fails_that_entry_only() {
    let c = Case::new();
    let bad = symlink(b"badlink", b"a\0b");
    c.run(vec![bad], Expect::Fail(&["badlink"]));
}

// ---- hard links (a group is (device, inode); they can only join files of this restore) ----

#[test]
fn hard_link_claiming_an_outside_inode_is_a_plain_file() {
    let mut c = Case::new();
    let m = fs::metadata(c.outside().join("victim.txt")).unwrap();
    let hl = c.forge.file(b"hl", b"own bytes\n");
    let hl = linked(hl, m.dev(), m.ino());
    c.expect_file("hl", b"own bytes\n");
    let c = c.run(vec![hl], Expect::Ok);
    assert_eq!(fs::metadata(c.target().join("hl")).unwrap().nlink(), 1);
}

#[test]
fn hard_link_whose_first_member_has_an_unsafe_name() {
    let mut c = Case::new();
    let first = c.forge.file(b"../outside/victim.txt", b"PWNED");
    let first = linked(first, 1, 77);
    let second = c.forge.file(b"hl", b"PWNED");
    let second = linked(second, 1, 77);
    c.expect_file("hl", b"PWNED");
    c.run(vec![first, second], Expect::Fail(&["unsafe name"]));
}

#[test]
fn hard_link_group_led_by_a_symlink_to_outside() {
    let mut c = Case::new();
    let victim = victim_path(&c);
    let first = linked(symlink(b"a-ln", &victim), 1, 78);
    let second = c.forge.file(b"b-hl", b"own bytes\n");
    let second = linked(second, 1, 78);
    c.expect_file("b-hl", b"own bytes\n");
    let c = c.run(vec![first, second], Expect::Ok);
    assert!(fs::symlink_metadata(c.target().join("a-ln"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn hard_link_to_a_file_that_failed() {
    let c = Case::new();
    let mut first = Node::new(b"a-broken".to_vec(), NodeKind::File);
    first.mode = 0o100644;
    first.size = 5;
    first.content = vec![ChunkId([0xee; 32])];
    let second = Node {
        name: b"b-link".to_vec(),
        ..first.clone()
    };
    c.run(
        vec![linked(first, 1, 79), linked(second, 1, 79)],
        Expect::Fail(&["a-broken", "not in the repository index", "b-link"]),
    );
}

#[test]
fn hard_link_group_with_different_contents_is_not_linked() {
    let mut c = Case::new();
    let a = c.forge.file(b"a", b"content a\n");
    let b = c.forge.file(b"b", b"content b\n");
    let d = c.forge.dir(b"d", vec![linked(b, 1, 80)]);
    c.expect_file("a", b"content a\n");
    c.expect_file("d/b", b"content b\n");
    c.run(vec![linked(a, 1, 80), d], Expect::Ok);
}

// ---- sizes ----

#[test]
fn giant_size_without_content_is_never_created() {
    let c = Case::new();
    let mut huge = Node::new(b"huge".to_vec(), NodeKind::File);
    huge.mode = 0o100644;
    huge.size = 1 << 62;
    c.run(
        vec![huge],
        Expect::Fail(&["huge", "file size is 4611686018427387904"]),
    );
}

#[test]
fn size_disagreeing_with_content_fails_that_file() {
    let mut c = Case::new();
    let mut f = c.forge.file(b"liar", b"ten bytes!");
    f.size = u64::MAX;
    c.run(vec![f], Expect::Fail(&["liar", "chunks hold 10 bytes"]));
}

#[test]
fn sparse_file_claiming_128_gib_of_zero_chunks_stays_sparse() {
    let mut c = Case::new();
    let zero = c.forge.chunk(&vec![0u8; 8 << 20]);
    let mut f = Node::new(b"sparse".to_vec(), NodeKind::File);
    f.mode = 0o100644;
    f.content = vec![zero; 16 << 10];
    f.size = 128 << 30;
    // Legitimate: a sparse file is restored with holes, never written out.
    let c = run_allowing(c, vec![f], &["sparse"], Expect::Ok);
    let m = fs::metadata(c.target().join("sparse")).unwrap();
    assert_eq!(m.len(), 128 << 30);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} blocks allocated",
        m.blocks()
    );
}

/// Like [`Case::run`], with `allowed` files in the target whose bytes are not compared.
fn run_allowing(mut c: Case, hostile: Vec<Node>, allowed: &[&str], expect: Expect) -> Case {
    let mut nodes = c.siblings();
    nodes.extend(hostile);
    let root = c.forge.tree(nodes);
    let id = c.forge.snapshot_with(root, |_| {});
    let before = outside_state(c.tmp.path());
    let out = restore_with_watchdog(
        &Repo::fs(&c.tmp.path().join("repo")),
        &id.to_hex(),
        &c.target(),
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    match expect {
        Expect::Ok => assert_eq!(out.status.code(), Some(0), "{err}"),
        Expect::Fail(needles) => {
            assert_eq!(out.status.code(), Some(1), "{err}");
            for n in needles {
                assert!(err.contains(n), "stderr does not name {n:?}:\n{err}");
            }
        }
    }
    assert_eq!(outside_state(c.tmp.path()), before, "{err}");
    let target = c.target();
    for (rel, content) in &c.expected {
        assert!(fs::read(target.join(rel)).unwrap() == *content, "{rel:?}");
    }
    for e in walkdir::WalkDir::new(&target).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(&target).unwrap();
        if e.file_type().is_file() {
            assert!(
                c.expected.contains_key(rel) || allowed.iter().any(|a| rel == Path::new(a)),
                "unexpected {rel:?}"
            );
        }
    }
    c
}

#[test]
fn index_claiming_a_giant_chunk_length_fails_cleanly() {
    let mut c = Case::new();
    let mut nodes = c.siblings();
    let text = b"compressible ".repeat(100);
    let mut f = c.forge.file(b"claims-4gib", &text);
    let claimed = f.content[0];
    f.size = u32::MAX as u64;
    nodes.push(f);
    let root = c.forge.tree(nodes);
    c.run_root(
        root,
        |index| {
            for e in &mut index.entries {
                if e.id.0 == claimed.0 {
                    e.raw_length = u32::MAX;
                }
            }
        },
        Expect::Fail(&["claims-4gib", "4294967295"]),
    );
}

#[test]
fn missing_content_chunk_fails_that_file_only() {
    let c = Case::new();
    let mut f = Node::new(b"missing".to_vec(), NodeKind::File);
    f.mode = 0o100644;
    f.size = 10;
    f.content = vec![ChunkId([0xab; 32])];
    c.run(
        vec![f],
        Expect::Fail(&[
            "missing",
            &format!("chunk {} is not in the repository index", "ab".repeat(32)),
        ]),
    );
}

// ---- trees ----

#[test]
fn tree_referring_to_itself_is_caught() {
    // A tree cannot contain its own keyed hash, so a cycle needs a blob stored under an id
    // that is not its hash: it decrypts (the attacker has the key) but fails the id check.
    let mut c = Case::new();
    let fake = BlobId([0x5a; 32]);
    let mut nodes = c.siblings();
    let mut looped = Node::new(b"loop".to_vec(), NodeKind::Dir);
    looped.mode = 0o40755;
    looped.subtree = Some(TreeId(fake.0));
    nodes.push(looped);
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let bytes = Tree { nodes }.encode();
    let root = c.forge.raw_tree(Tree::decode(&bytes).unwrap().nodes);
    c.forge.blob_as(BlobType::Tree, fake, &bytes);
    c.run_root(
        root,
        |_| {},
        Expect::Fail(&["loop", &fake.to_hex(), "does not match its id"]),
    );
}

/// A chain of `depth` directories named `d`, with `leaf.txt` at the bottom.
fn chain(forge: &mut Forge, depth: usize) -> Node {
    let mut node = forge.file(b"leaf.txt", b"leaf\n");
    for _ in 0..depth {
        node = forge.dir(b"d", vec![node]);
    }
    node
}

#[test]
fn extremely_deep_tree_fails_at_the_limit_without_crashing() {
    let mut c = Case::new();
    let deep = chain(&mut c.forge, 5000);
    run_allowing(c, vec![deep], &[], Expect::Fail(&["d/d/d/d/d/d/d/d"]));
}

#[test]
fn extremely_deep_tree_on_a_small_stack() {
    // The node agent restores on tokio's blocking threads (2 MiB stacks).
    let mut c = Case::new();
    let mut nodes = c.siblings();
    nodes.push(chain(&mut c.forge, 5000));
    let root = c.forge.tree(nodes);
    let id = c.forge.snapshot_with(root, |_| {});
    let repo = c.forge.repo.clone();
    let target = c.target();
    let result = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let snap = repo.load::<Snapshot>(&id).unwrap();
            let opts = RestoreOptions {
                target,
                threads: 2,
                ..RestoreOptions::default()
            };
            restore(
                &repo,
                &snap,
                &opts,
                &Progress::default(),
                &AtomicBool::new(false),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
        .unwrap()
        .join()
        .expect("restore thread crashed");
    let err = result.expect_err("a 5000-deep tree cannot be restored");
    assert!(err.contains("d/d/d/d"), "{err}");
    assert_eq!(
        fs::read(c.target().join("good-dir/inner.txt")).unwrap(),
        b"inner sibling\n"
    );
}

#[test]
fn directory_without_subtree() {
    let c = Case::new();
    let mut d = Node::new(b"nodir".to_vec(), NodeKind::Dir);
    d.mode = 0o40755;
    c.run(vec![d], Expect::Fail(&["nodir", "no subtree"]));
}

#[test]
fn directory_whose_tree_is_missing() {
    let c = Case::new();
    let mut d = Node::new(b"gone".to_vec(), NodeKind::Dir);
    d.mode = 0o40755;
    d.subtree = Some(TreeId([0xcd; 32]));
    let c = c.run(
        vec![d],
        Expect::Fail(&["gone", &"cd".repeat(32), "not in the repository index"]),
    );
    assert!(
        !c.target().join("gone").exists(),
        "a directory whose tree failed is not created"
    );
}

#[test]
fn directory_whose_tree_is_a_data_blob() {
    let mut c = Case::new();
    let data = c.forge.chunk(b"this is file content, not a tree");
    let mut d = Node::new(b"confused".to_vec(), NodeKind::Dir);
    d.mode = 0o40755;
    d.subtree = Some(TreeId(data.0));
    c.run(vec![d], Expect::Fail(&["confused", "tree"]));
}

#[test]
fn unsorted_tree_still_restores() {
    let mut c = Case::new();
    let mut nodes = c.siblings();
    nodes.sort_by(|a, b| b.name.cmp(&a.name));
    let root = c.forge.raw_tree(nodes);
    c.run_root(root, |_| {}, Expect::Ok);
}

#[test]
fn snapshot_root_that_is_not_a_tree() {
    let mut c = Case::new();
    let data = c.forge.chunk(b"not a tree at all");
    c.expected.clear();
    c.run_root(
        TreeId(data.0),
        |_| {},
        Expect::Fail(&["tree", &data.to_string()]),
    );
}
