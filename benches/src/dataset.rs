//! Seeded benchmark datasets.
//!
//! A [`Plan`] is a pure function of (dataset, scale, seed): the list of files with their sizes,
//! content kinds and seeds. File content is generated in 1 MiB blocks, each block seeded by
//! (file seed, block number), so generation is deterministic whatever the thread count and
//! large files can be written by several threads at once. Text-like content comes from a word
//! table, binary content from a structured record generator, incompressible content straight
//! from the RNG; everything is written at several hundred MB/s per core.
//!
//! [`Plan::mutate`] changes a given fraction of the bytes in place (sizes unchanged, contents
//! of the same kind) and returns a [`Mutation`] that puts the original bytes back, so every
//! tool sees exactly the same "changed" tree and the cached dataset stays valid.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::rng::FastRng;

/// Bytes per generation block (the unit of seeding and of parallel work within a file).
pub const BLOCK: u64 = 1 << 20;
/// Files larger than this are generated as several work items.
const SEGMENT: u64 = 64 * BLOCK;
const GIB: f64 = (1u64 << 30) as f64;

/// The datasets of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    /// ~1.5 GiB: many small source-like files, medium binaries, a few large compressible logs,
    /// ~15 % incompressible media.
    Mixed,
    /// 100k files of 0–16 KiB.
    SmallFiles,
    /// One 2 GiB file.
    BigFile,
}

impl Dataset {
    /// Every dataset.
    pub const ALL: [Dataset; 3] = [Dataset::Mixed, Dataset::SmallFiles, Dataset::BigFile];

    /// The name used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Mixed => "mixed",
            Dataset::SmallFiles => "small-files",
            Dataset::BigFile => "big-file",
        }
    }

    /// Parses a name given by [`Dataset::name`].
    pub fn parse(s: &str) -> Option<Dataset> {
        Dataset::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a file's bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Source-code-like text: indented lines of identifiers and punctuation.
    Source,
    /// Log-like text: timestamped lines with key=value fields (compresses well).
    Log,
    /// Executable-like binary: structured records, zero runs and random runs.
    Binary,
    /// Random bytes (already compressed media).
    Random,
    /// Blocks of every other kind in turn (disk-image-like).
    Image,
}

/// One file of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Path relative to the dataset root.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Content kind.
    pub content: Content,
    /// Content seed.
    pub seed: u64,
}

/// The files of a dataset at a scale and seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Which dataset.
    pub dataset: Dataset,
    /// Size multiplier (1.0 = the full dataset).
    pub scale: f64,
    /// Seed.
    pub seed: u64,
    /// Files, in generation order.
    pub files: Vec<FileSpec>,
}

impl Plan {
    /// The plan of `dataset` at `scale` (bytes and file counts are multiplied by it).
    pub fn new(dataset: Dataset, scale: f64, seed: u64) -> Plan {
        let mut rng = FastRng::derived(seed, 0x706c_616e, dataset as u64);
        let mut files = Vec::new();
        let mut push = |path: String, size: u64, content: Content, rng: &mut FastRng| {
            files.push(FileSpec {
                path: PathBuf::from(path),
                size,
                content,
                seed: rng.next_u64(),
            })
        };
        match dataset {
            Dataset::Mixed => {
                let budget = (1.5 * GIB * scale) as u64;
                // 20 % small source files (log-uniform 64 B–48 KiB, mean ~7 KiB).
                let mut left = budget / 5;
                let mut i = 0u64;
                while left > 0 {
                    let size = rng.log_uniform(64, 48 << 10).min(left);
                    let ext =
                        ["rs", "go", "py", "c", "md", "json", "yaml", "txt"][(i % 8) as usize];
                    let dir = i / 40;
                    push(
                        format!("src/m{:03}/p{:02}/f{i}.{ext}", dir / 32, dir % 32),
                        size,
                        Content::Source,
                        &mut rng,
                    );
                    left -= size;
                    i += 1;
                }
                // 30 % medium binaries (log-uniform 64 KiB–4 MiB).
                let mut left = budget * 3 / 10;
                let mut i = 0u64;
                while left > 0 {
                    let size = rng.log_uniform(64 << 10, 4 << 20).min(left);
                    push(
                        format!("bin/b{:02}/lib{i}.so", i / 50),
                        size,
                        Content::Binary,
                        &mut rng,
                    );
                    left -= size;
                    i += 1;
                }
                // 35 % in four large logs.
                for i in 0..4 {
                    push(
                        format!("logs/app{i}.log"),
                        budget * 35 / 400,
                        Content::Log,
                        &mut rng,
                    );
                }
                // 15 % incompressible media (log-uniform 256 KiB–32 MiB).
                let mut left = budget * 15 / 100;
                let mut i = 0u64;
                while left > 0 {
                    let size = rng.log_uniform(256 << 10, 32 << 20).min(left);
                    push(format!("media/v{i}.mp4"), size, Content::Random, &mut rng);
                    left -= size;
                    i += 1;
                }
            }
            Dataset::SmallFiles => {
                let n = ((100_000.0 * scale).round() as u64).max(1);
                for i in 0..n {
                    let size = rng.below(16 * 1024 + 1);
                    let content = if rng.below(4) == 0 {
                        Content::Random
                    } else {
                        Content::Source
                    };
                    push(
                        format!("d{:03}/e{}/f{i}.dat", i / 1000, (i / 100) % 10),
                        size,
                        content,
                        &mut rng,
                    );
                }
            }
            Dataset::BigFile => {
                let size = ((2.0 * GIB * scale) as u64).max(BLOCK);
                push("big.img".into(), size, Content::Image, &mut rng);
            }
        }
        Plan {
            dataset,
            scale,
            seed,
            files,
        }
    }

    /// Total bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// A one-line description, also used to validate a cached copy.
    pub fn fingerprint(&self) -> String {
        format!(
            "podvault-bench dataset={} scale={} seed={} files={} bytes={}",
            self.dataset,
            self.scale,
            self.seed,
            self.files.len(),
            self.total_bytes()
        )
    }

    /// Writes every file under `root` (which must be empty or absent) with `threads` threads.
    pub fn generate(&self, root: &Path, threads: usize) -> io::Result<()> {
        let dirs: BTreeSet<&Path> = self.files.iter().filter_map(|f| f.path.parent()).collect();
        fs::create_dir_all(root)?;
        for d in dirs {
            fs::create_dir_all(root.join(d))?;
        }
        // Work items: (file, first block, end block).
        let mut items = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            if f.size > SEGMENT {
                File::create(root.join(&f.path))?.set_len(f.size)?;
                let mut off = 0;
                while off < f.size {
                    items.push((i, off, (off + SEGMENT).min(f.size)));
                    off += SEGMENT;
                }
            } else {
                items.push((i, 0, f.size));
            }
        }
        let next = AtomicUsize::new(0);
        let error = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| {
                    let mut buf = Vec::with_capacity(BLOCK as usize + 64);
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(i, start, end)) = items.get(k) else {
                            return;
                        };
                        let f = &self.files[i];
                        if let Err(e) = write_range(root, f, start, end, &mut buf) {
                            let mut slot = error.lock().unwrap_or_else(|p| p.into_inner());
                            slot.get_or_insert(io::Error::new(
                                e.kind(),
                                format!("{}: {e}", root.join(&f.path).display()),
                            ));
                            next.store(items.len(), Ordering::Relaxed);
                            return;
                        }
                    }
                });
            }
        });
        match error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Rewrites about `fraction` of all bytes in place (deterministically from `seed`) and
    /// returns what it takes to undo it. Small files are rewritten whole; larger ones get one
    /// rewritten region each (up to 4 MiB; 1 MiB regions spread over a single big file).
    pub fn mutate(&self, root: &Path, fraction: f64, seed: u64) -> io::Result<Mutation> {
        let mut rng = FastRng::derived(seed, 0x6d75_7461, 0);
        let budget = (self.total_bytes() as f64 * fraction) as u64;
        let candidates: Vec<&FileSpec> = self.files.iter().filter(|f| f.size > 0).collect();
        let mut m = Mutation {
            saved: Vec::new(),
            bytes_changed: 0,
        };
        let mut buf = Vec::new();
        let mut attempts = 0u64;
        while m.bytes_changed < budget && !candidates.is_empty() && attempts < 10_000_000 {
            attempts += 1;
            let f = candidates[rng.below(candidates.len() as u64) as usize];
            let (offset, len) = if candidates.len() == 1 {
                let len = BLOCK.min(f.size / 64).max(1).min(budget - m.bytes_changed);
                (rng.below(f.size - len + 1), len)
            } else if f.size <= 256 << 10 {
                (0, f.size)
            } else {
                let len = (4 << 20)
                    .min(f.size / 4)
                    .min(budget - m.bytes_changed)
                    .max(1);
                (rng.below(f.size - len + 1), len)
            };
            let path = root.join(&f.path);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut old = vec![0u8; len as usize];
            file.read_exact_at(&mut old, offset)?;
            buf.clear();
            let mut block_rng = FastRng::derived(seed, f.seed, attempts);
            fill(f.content, &mut block_rng, len as usize, &mut buf);
            file.write_all_at(&buf, offset)?;
            m.saved.push((path, offset, old));
            m.bytes_changed += len;
        }
        Ok(m)
    }
}

/// An in-place change made by [`Plan::mutate`], kept so it can be undone.
#[derive(Debug)]
pub struct Mutation {
    saved: Vec<(PathBuf, u64, Vec<u8>)>,
    /// Bytes rewritten.
    pub bytes_changed: u64,
}

impl Mutation {
    /// Number of rewritten regions.
    pub fn regions(&self) -> usize {
        self.saved.len()
    }

    /// Puts the original bytes back (in reverse order, so overlapping regions undo cleanly).
    pub fn revert(self) -> io::Result<()> {
        for (path, offset, old) in self.saved.into_iter().rev() {
            OpenOptions::new()
                .write(true)
                .open(&path)?
                .write_all_at(&old, offset)?;
        }
        Ok(())
    }
}

fn write_range(
    root: &Path,
    f: &FileSpec,
    start: u64,
    end: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let path = root.join(&f.path);
    let file = if f.size > SEGMENT {
        // Created (and sized) before the work started; several threads fill it.
        OpenOptions::new().write(true).open(&path)?
    } else {
        File::create(&path)?
    };
    let mut off = start;
    while off < end {
        let len = BLOCK.min(end - off);
        buf.clear();
        let mut rng = FastRng::derived(f.seed, off / BLOCK, 0);
        fill(f.content, &mut rng, len as usize, buf);
        file.write_all_at(buf, off)?;
        off += len;
    }
    Ok(())
}

/// Appends exactly `len` bytes of `content` to `out`.
pub fn fill(content: Content, rng: &mut FastRng, len: usize, out: &mut Vec<u8>) {
    let target = out.len() + len;
    match content {
        Content::Source => source(rng, out, target),
        Content::Log => log(rng, out, target),
        Content::Binary => binary(rng, out, target),
        Content::Random => {
            out.resize(target, 0);
            let start = target - len;
            rng.fill(&mut out[start..]);
        }
        Content::Image => {
            // 64 KiB runs of the other kinds (40 % log, 30 % binary, 15 % source, 15 % random).
            while out.len() < target {
                let run = (64 << 10).min(target - out.len());
                let kind = match rng.below(20) {
                    0..=7 => Content::Log,
                    8..=13 => Content::Binary,
                    14..=16 => Content::Source,
                    _ => Content::Random,
                };
                fill(kind, rng, run, out);
            }
        }
    }
    out.truncate(target);
}

const WORD_TEXT: &str = "the of and to in is for on that with as it be by this are from at \
    or an not data value self let mut fn pub struct impl use return if else match some none \
    ok err result option string vec map key len size index buffer error config file path \
    read write open close new from_str into iter next push pop insert remove get set clone \
    default debug test assert true false while loop break continue const static type trait \
    where async await spawn thread lock mutex channel send recv request response client \
    server handler route status code header body json yaml parse format print log info warn \
    node pod volume backup restore snapshot chunk pack blob tree hash crypt seal open offset \
    length count total start end time duration retry timeout cache store load save update \
    delete list watch event metric label name namespace user group mode owner entry record";

fn words() -> &'static [&'static str] {
    static WORDS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    WORDS.get_or_init(|| WORD_TEXT.split_whitespace().collect())
}

const SPACES: &[u8; 16] = b"                ";
const SEPARATORS: [&[u8]; 8] = [b" ", b" ", b" ", b"_", b", ", b"(", b"); ", b" = "];

fn source(rng: &mut FastRng, out: &mut Vec<u8>, target: usize) {
    let w = words();
    while out.len() < target {
        let r = rng.next_u64();
        out.extend_from_slice(&SPACES[..(r & 3) as usize * 4]);
        let n = 2 + ((r >> 2) & 7);
        let mut bits = r >> 5;
        for i in 0..n {
            if i > 0 {
                out.extend_from_slice(SEPARATORS[(bits & 7) as usize]);
                bits >>= 3;
            }
            out.extend_from_slice(w[(bits % w.len() as u64) as usize].as_bytes());
            bits >>= 8;
            if bits < 1 << 12 {
                bits = rng.next_u64();
            }
        }
        if r >> 60 == 0 {
            push_num(out, rng.below(100_000));
        }
        out.push(if r >> 58 & 3 == 0 { b'{' } else { b';' });
        out.push(b'\n');
    }
}

fn log(rng: &mut FastRng, out: &mut Vec<u8>, target: usize) {
    const LEVELS: [&[u8]; 4] = [b" INFO ", b" INFO ", b" DEBUG ", b" WARN "];
    let w = words();
    let mut t = rng.below(86_400_000);
    while out.len() < target {
        let r = rng.next_u64();
        t += r & 0xff;
        out.extend_from_slice(b"2026-11-21T");
        push_fixed(out, t / 3_600_000 % 24, 2);
        out.push(b':');
        push_fixed(out, t / 60_000 % 60, 2);
        out.push(b':');
        push_fixed(out, t / 1000 % 60, 2);
        out.push(b'.');
        push_fixed(out, t % 1000, 3);
        out.extend_from_slice(LEVELS[(r >> 8 & 3) as usize]);
        out.extend_from_slice(w[((r >> 10) % w.len() as u64) as usize].as_bytes());
        out.push(b'[');
        push_num(out, 1000 + (r >> 20 & 63));
        out.extend_from_slice(b"]:");
        for k in 0..3 + (r >> 26 & 3) {
            out.push(b' ');
            out.extend_from_slice(w[((r >> (30 + 5 * k)) % w.len() as u64) as usize].as_bytes());
        }
        out.extend_from_slice(b" id=");
        push_num(out, rng.below(1 << 20));
        out.extend_from_slice(b" took_ms=");
        push_num(out, r >> 58);
        out.push(b'\n');
    }
}

fn binary(rng: &mut FastRng, out: &mut Vec<u8>, target: usize) {
    const PATTERN: &[u8; 10] = b"\x48\x89\xe5\x41\x57\x41\x56\x53\x50\xe8";
    let mut counter = rng.next_u64() as u32;
    while out.len() < target {
        let r = rng.next_u64();
        let len = 16 + (r >> 8 & 2047) as usize;
        match r & 7 {
            0 | 1 => {
                let start = out.len();
                out.resize(start + len, 0);
                rng.fill(&mut out[start..]);
            }
            2 => out.resize(out.len() + len, 0),
            _ => {
                for _ in 0..len / 16 {
                    counter = counter.wrapping_add(1 + (r >> 40 & 15) as u32);
                    out.extend_from_slice(&counter.to_le_bytes());
                    out.extend_from_slice(&((rng.next_u64() & 0x0fff) as u16).to_le_bytes());
                    out.extend_from_slice(PATTERN);
                }
            }
        }
    }
}

fn push_num(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

fn push_fixed(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for i in (0..width).rev() {
        out[start + i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// A cached, generated dataset on disk.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The plan it was generated from.
    pub plan: Plan,
    /// Directory holding the tree and its markers.
    pub dir: PathBuf,
}

impl Cached {
    /// The tree to back up.
    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }

    fn complete_marker(&self) -> PathBuf {
        self.dir.join("COMPLETE")
    }

    fn mutated_marker(&self) -> PathBuf {
        self.dir.join("MUTATED")
    }

    /// Reuses the cached copy under `data_dir` when it is complete and was not left mutated by
    /// an interrupted run; generates it otherwise. Returns whether it was generated.
    pub fn ensure(plan: Plan, data_dir: &Path, threads: usize) -> io::Result<(Cached, bool)> {
        let dir = data_dir.join(format!("{}-x{}-s{}", plan.dataset, plan.scale, plan.seed));
        let c = Cached { plan, dir };
        let fingerprint = c.plan.fingerprint();
        let valid = fs::read_to_string(c.complete_marker()).is_ok_and(|s| s.trim() == fingerprint)
            && !c.mutated_marker().exists();
        if valid {
            return Ok((c, false));
        }
        if c.dir.exists() {
            fs::remove_dir_all(&c.dir)?;
        }
        c.plan.generate(&c.tree(), threads)?;
        fs::write(c.complete_marker(), format!("{fingerprint}\n"))?;
        Ok((c, true))
    }

    /// Applies [`Plan::mutate`], leaving a marker until [`Cached::revert`] so an interrupted
    /// run regenerates the dataset instead of reusing changed data.
    pub fn mutate(&self, fraction: f64, seed: u64) -> io::Result<Mutation> {
        fs::write(self.mutated_marker(), b"")?;
        self.plan.mutate(&self.tree(), fraction, seed)
    }

    /// Undoes a mutation and removes the marker.
    pub fn revert(&self, m: Mutation) -> io::Result<()> {
        m.revert()?;
        fs::remove_file(self.mutated_marker())
    }
}
