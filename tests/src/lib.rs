//! Helpers for podvault's black-box tests: run the real `podvault` binary, generate seeded
//! directory trees, and compare trees byte for byte with their metadata.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::{Rng, RngCore, SeedableRng};

/// Path of the `podvault` binary built by `cargo test --workspace` (next to the test binary),
/// or `$PODVAULT_TEST_BIN` when set (a binary kept apart from a target directory that
/// other checkouts build into).
pub fn podvault_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PODVAULT_TEST_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join("podvault");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p podvault` or `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A repository under test: location, password, and extra environment.
#[derive(Debug, Clone)]
pub struct Repo {
    /// `--repo` value.
    pub location: String,
    /// Password given through PODVAULT_PASSWORD.
    pub password: String,
    /// Extra environment variables (S3 settings).
    pub env: Vec<(String, String)>,
}

impl Repo {
    /// A local-directory repository.
    pub fn fs(dir: &Path) -> Self {
        Repo {
            location: dir.display().to_string(),
            password: "correct horse".into(),
            env: Vec::new(),
        }
    }

    /// An S3 repository on the test server under a fresh prefix, or `None` when no server is
    /// configured (allowed only outside CI).
    pub fn s3(prefix: &str) -> Option<Self> {
        let Ok(endpoint) = std::env::var("PODVAULT_TEST_S3_ENDPOINT") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must provide PODVAULT_TEST_S3_ENDPOINT (see .ci/run)"
            );
            eprintln!(
                "skipping: PODVAULT_TEST_S3_ENDPOINT is not set (tests/run.sh starts a server)"
            );
            return None;
        };
        let bucket =
            std::env::var("PODVAULT_TEST_S3_BUCKET").unwrap_or_else(|_| "podvault-test".into());
        let nonce: u64 = rand::rng().random();
        // Each S3 repository gets its own local cache, so S3 round trips run with the cache
        // as users do (a cold one first, warm after).
        let cache = std::env::temp_dir().join(format!("podvault-test-cache-{nonce:016x}"));
        Some(Repo {
            location: format!("s3://{bucket}/{prefix}-{nonce:016x}"),
            password: "correct horse".into(),
            env: vec![
                ("PODVAULT_CACHE_DIR".into(), cache.display().to_string()),
                ("PODVAULT_S3_ENDPOINT".into(), endpoint),
                ("AWS_REGION".into(), "us-east-1".into()),
                (
                    "AWS_ACCESS_KEY_ID".into(),
                    std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into()),
                ),
                (
                    "AWS_SECRET_ACCESS_KEY".into(),
                    std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".into()),
                ),
            ],
        })
    }

    /// A `podvault` command against this repository.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(podvault_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PODVAULT_REPOSITORY", &self.location)
            .env("PODVAULT_PASSWORD", &self.password)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args);
        c
    }

    /// Runs a command and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run podvault")
    }

    /// Runs a command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podvault {args:?} failed ({:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command with `input` on its standard input (written from another thread, so
    /// a large input cannot deadlock against a full output pipe); returns its output.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run podvault");
        let mut stdin = child.stdin.take().expect("stdin");
        std::thread::scope(|s| {
            s.spawn(move || {
                // A command that refuses its input exits without reading it: not an error here.
                let _ = stdin.write_all(input);
            });
            child.wait_with_output().expect("wait for podvault")
        })
    }

    /// `backup --json --stdin --stdin-filename NAME` of `input` plus `extra`, which must
    /// succeed; returns the parsed output.
    pub fn backup_stdin_json(&self, name: &str, input: &[u8], extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["backup", "--json", "--stdin", "--stdin-filename", name];
        args.extend_from_slice(extra);
        let out = self.run_with_stdin(&args, input);
        assert!(
            out.status.success(),
            "podvault {args:?} failed ({:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("backup JSON")
    }

    /// `dump SNAPSHOT PATH`, which must succeed; returns the bytes written.
    pub fn dump(&self, snapshot: &str, path: &str) -> Vec<u8> {
        let out = self.run(&["dump", snapshot, path]);
        assert!(
            out.status.success(),
            "podvault dump {snapshot} {path} failed ({:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The number of snapshots in the repository.
    pub fn snapshot_count(&self) -> usize {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["snapshots", "--json"])).expect("snapshots JSON");
        v.as_array().expect("array").len()
    }

    /// `init` with a cheap KDF (tests open the repository many times).
    pub fn init(&self) {
        self.init_with(&[]);
    }

    /// `init` with a cheap KDF and further options (e.g. [`SMALL_PACKS`]).
    pub fn init_with(&self, extra: &[&str]) {
        self.ok(&init_args(extra));
    }

    /// `backup --json`; returns the parsed output.
    pub fn backup_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["backup", "--json"];
        a.extend_from_slice(args);
        serde_json::from_str(self.ok(&a).trim()).expect("backup JSON")
    }
}

/// Argon2id options for a cheap key: tests open their repositories many times.
pub const CHEAP_KDF: [&str; 4] = ["--kdf-memory-kib", "1024", "--kdf-iterations", "1"];

/// `init` options for many packs from little data: 1 MiB packs, 64 KiB average chunks.
pub const SMALL_PACKS: [&str; 4] = ["--pack-size-mib", "1", "--chunk-avg-kib", "64"];

/// The arguments of `init` with a cheap KDF followed by `extra`.
pub fn init_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["init"];
    args.extend(CHEAP_KDF);
    args.extend_from_slice(extra);
    args
}

/// Writes seeded pseudo-random bytes; `compressible` makes text-like data.
pub fn fill(rng: &mut impl RngCore, len: usize, compressible: bool) -> Vec<u8> {
    let mut v = vec![0u8; len];
    if compressible {
        const WORDS: [&str; 12] = [
            "pod ",
            "volume ",
            "backup ",
            "chunk ",
            "node\n",
            "agent ",
            "0123 ",
            "restore ",
            "{\"k\": 1}\n",
            "snapshot ",
            "index ",
            "pack ",
        ];
        let mut i = 0;
        while i < len {
            let w = WORDS[(rng.next_u32() as usize) % WORDS.len()].as_bytes();
            let n = w.len().min(len - i);
            v[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
    } else {
        rng.fill_bytes(&mut v);
    }
    v
}

/// Generates a seeded tree: many small files, a few large ones, empty files and dirs,
/// symlinks, hard links and odd names (non-UTF-8, spaces, newlines, leading dashes).
pub fn generate_tree(root: &Path, seed: u64, large_bytes: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    fs::create_dir_all(root).expect("root");
    let dirs = [
        "",
        "a",
        "a/b",
        "a/b/c",
        "empty-dir",
        "docs",
        "bin data",
        "-dash",
    ];
    for d in dirs {
        fs::create_dir_all(root.join(d)).expect("dir");
    }
    for i in 0..300 {
        let d = dirs[rng.random_range(0..dirs.len())];
        if d == "empty-dir" {
            continue;
        }
        let len = rng.random_range(0..20_000);
        let data = fill(&mut rng, len, i % 3 != 0);
        fs::write(root.join(d).join(format!("file-{i:04}.txt")), data).expect("file");
    }
    fs::write(
        root.join("large-text.log"),
        fill(&mut rng, large_bytes, true),
    )
    .expect("large");
    fs::write(
        root.join("a/large-random.bin"),
        fill(&mut rng, large_bytes / 2, false),
    )
    .expect("large");
    fs::write(root.join("empty"), b"").expect("empty");
    fs::write(root.join("docs/zeros.img"), vec![0u8; 3 << 20]).expect("zeros");
    for name in [
        &b"caf\xc3\xa9 \xe2\x98\x83"[..],
        b"latin1-\xe9\xff",
        b"new\nline",
        b"-rf",
        b" spaced  ",
    ] {
        fs::write(root.join("docs").join(OsStr::from_bytes(name)), name).expect("odd name");
    }
    std::os::unix::fs::symlink("../large-text.log", root.join("a/link-to-large")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).expect("symlink");
    fs::hard_link(
        root.join("a/b/c")
            .join("..")
            .join("..")
            .join("..")
            .join("empty"),
        root.join("hardlink-to-empty"),
    )
    .ok();
    fs::write(root.join("a/shared.dat"), fill(&mut rng, 100_000, false)).expect("shared");
    fs::hard_link(root.join("a/shared.dat"), root.join("a/b/shared-link.dat")).expect("hard link");
    fs::set_permissions(root.join("docs/-rf"), fs::Permissions::from_mode(0o640)).expect("chmod");
    fs::set_permissions(root.join("bin data"), fs::Permissions::from_mode(0o750)).expect("chmod");
    // Deterministic, distinct mtimes so metadata restore is checked.
    for (n, e) in walkdir::WalkDir::new(root)
        .contents_first(true)
        .into_iter()
        .enumerate()
    {
        let e = e.expect("walk");
        let t = filetime::FileTime::from_unix_time(
            1_600_000_000 + n as i64 * 97,
            (n as u32 * 7919) % 1_000_000_000,
        );
        filetime::set_symlink_file_times(e.path(), t, t).expect("mtime");
    }
}

/// One entry as compared between trees.
#[derive(PartialEq, Eq)]
pub struct Entry {
    kind: &'static str,
    mode: u32,
    mtime: (i64, i64),
    content: Vec<u8>,
    link_group: Option<usize>,
}

impl Entry {
    /// True for a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == "file"
    }

    /// True when both entries hold the same bytes.
    pub fn same_content(&self, other: &Entry) -> bool {
        self.content == other.content
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Content is summarised: a full dump of a differing file helps nobody.
        let head: Vec<u8> = self.content.iter().take(16).copied().collect();
        f.debug_struct("Entry")
            .field("kind", &self.kind)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("mtime", &self.mtime)
            .field("content_len", &self.content.len())
            .field("content_head", &head)
            .field("link_group", &self.link_group)
            .finish()
    }
}

/// Reads a tree into comparable entries (content for files and symlink targets; hard-link
/// groups by position of the first path sharing an inode).
pub fn read_tree(root: &Path) -> Vec<(Vec<u8>, Entry)> {
    let mut out = Vec::new();
    let mut inodes: HashMap<u64, usize> = HashMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.expect("walk");
        let m = e.metadata().expect("metadata");
        let rel = e
            .path()
            .strip_prefix(root)
            .expect("prefix")
            .as_os_str()
            .as_bytes()
            .to_vec();
        let ft = m.file_type();
        let (kind, content) = if ft.is_symlink() {
            (
                "symlink",
                fs::read_link(e.path())
                    .expect("readlink")
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if ft.is_dir() {
            ("dir", Vec::new())
        } else if ft.is_file() {
            ("file", fs::read(e.path()).expect("read"))
        } else {
            ("special", Vec::new())
        };
        let link_group = (ft.is_file() && m.nlink() > 1).then(|| {
            let n = inodes.len();
            *inodes.entry(m.ino()).or_insert(n)
        });
        out.push((
            rel,
            Entry {
                kind,
                mode: if ft.is_symlink() {
                    0
                } else {
                    m.mode() & 0o7777
                },
                mtime: (m.mtime(), m.mtime_nsec()),
                content,
                link_group,
            },
        ));
    }
    out
}

/// Asserts two trees are identical in names, types, content, modes, mtimes and hard links.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (read_tree(a), read_tree(b));
    let names = |t: &[(Vec<u8>, Entry)]| {
        t.iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&ta), names(&tb), "entry names differ");
    for ((name, ea), (_, eb)) in ta.iter().zip(&tb) {
        assert_eq!(ea, eb, "entry {:?} differs", String::from_utf8_lossy(name));
    }
}

pub mod kube;
pub mod proxy;
pub mod tls;
