//! Peak memory of a backup into a repository whose index is huge.
//!
//! Builds a repository whose index lists `--entries` blobs (default 10 million) spread over
//! index objects of at most `--per-index` entries (default 100 000, like a long-lived
//! repository's), in packs of 8–64 data blobs (3 % of entries are tree blobs, in packs of
//! 256), with seeded random ids. The packs themselves are not written: a backup reads only the index (every
//! lookup of the new data misses, the worst case for the lookup structure). Then a real
//! `podvault backup` of a generated dataset runs against it, and once against an empty
//! repository for reference; each is a child process measured with `wait4` (wall, CPU, peak
//! RSS). Results go to `benches/results/synthetic-index.{md,json}`.
//!
//! ```text
//! cargo run --release -p podvault-benches --bin synthetic-index -- \
//!     --podvault target/release/podvault --entries 10000000
//! ```
//!
//! `--baseline PATH` measures a second podvault binary the same way (e.g. an older build).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use podvault::backend::Location;
use podvault::repository::{InitOptions, Repository};
use podvault_benches::dataset::{Cached, Dataset, Plan};
use podvault_benches::measure::{self, Usage};
use podvault_benches::rng::FastRng;
use podvault_proto::index::{IndexEntry, IndexFile, PackInfo};
use podvault_proto::pack::BlobType;
use podvault_proto::{BlobId, PackId};

const PASSWORD: &str = "podvault-bench-password";
const MIB: f64 = 1048576.0;

/// Peak RSS of a backup against a repository with a huge synthetic index.
#[derive(Debug, Parser)]
struct Args {
    /// Index entries to create.
    #[arg(long, default_value_t = 10_000_000)]
    entries: u64,
    /// Entries per index object at most.
    #[arg(long, default_value_t = 100_000)]
    per_index: u64,
    /// Dataset to back up (mixed, small-files, big-file).
    #[arg(long, default_value = "mixed")]
    dataset: String,
    /// Scale of that dataset.
    #[arg(long, default_value_t = 0.1)]
    scale: f64,
    /// Seed of the dataset and of the synthetic ids.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The podvault binary to measure.
    #[arg(long)]
    podvault: PathBuf,
    /// Another podvault binary to measure the same way (e.g. an older build).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Where generated datasets are cached [default: $HOME/.cache/podvault-bench-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Scratch space for the repositories [default: <data-dir>/work].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where the table and samples go [default: benches/results].
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

/// One measured backup.
#[derive(Debug, Clone)]
struct Row {
    binary: String,
    repository: &'static str,
    phase: &'static str,
    usage: Usage,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dataset = Dataset::parse(&args.dataset)
        .with_context(|| format!("unknown dataset {:?}", args.dataset))?;
    if args.per_index == 0 || args.scale.is_nan() || args.scale <= 0.0 {
        bail!("--per-index must be ≥ 1 and --scale > 0");
    }
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/podvault-bench-data"),
    };
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("work"))
        .join("synthetic-index");
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (cached, _) = Cached::ensure(
        Plan::new(dataset, args.scale, args.seed),
        &data_dir,
        threads,
    )
    .context("generating the dataset")?;
    eprintln!(
        "dataset {dataset} x{}: {} files, {:.1} MiB",
        args.scale,
        cached.plan.files.len(),
        cached.plan.total_bytes() as f64 / MIB
    );

    let mut binaries = vec![("podvault".to_string(), args.podvault.clone())];
    if let Some(b) = &args.baseline {
        binaries.push(("baseline".to_string(), b.clone()));
    }
    let mut rows = Vec::new();
    let mut index_bytes = 0;
    let mut index_objects = 0;
    for (name, bin) in &binaries {
        for synthetic in [false, true] {
            let repo_dir = work.join("repo");
            if repo_dir.exists() {
                fs::remove_dir_all(&repo_dir)?;
            }
            fs::create_dir_all(&work)?;
            let repo = Repository::init(
                &Location::Fs(repo_dir.clone()),
                PASSWORD.as_bytes(),
                &InitOptions::default(),
            )
            .context("creating the repository")?;
            let label = if synthetic {
                let t = Instant::now();
                index_objects = write_index(&repo, args.entries, args.per_index, args.seed)?;
                index_bytes = measure::dir_usage(&repo_dir.join("index"))?.0;
                eprintln!(
                    "wrote {} entries in {index_objects} index objects ({:.0} MiB) in {:.1}s",
                    args.entries,
                    index_bytes as f64 / MIB,
                    t.elapsed().as_secs_f64()
                );
                "synthetic index"
            } else {
                "empty"
            };
            for phase in ["first backup", "no-change backup"] {
                let usage = backup(bin, &repo_dir, &cached.tree(), &work)?;
                eprintln!(
                    "  {name:<9} {label:<16} {phase:<17} {:>6.2}s  cpu {:>6.2}s  rss {:>6.1} MiB",
                    usage.wall.as_secs_f64(),
                    usage.cpu.as_secs_f64(),
                    usage.max_rss as f64 / MIB
                );
                rows.push(Row {
                    binary: name.clone(),
                    repository: label,
                    phase,
                    usage,
                });
            }
            fs::remove_dir_all(&repo_dir)?;
        }
    }

    let md = markdown(&args, &cached, &rows, index_objects, index_bytes);
    println!("{md}");
    fs::create_dir_all(&out_dir)?;
    fs::write(out_dir.join("synthetic-index.md"), &md)?;
    let json = serde_json::json!({
        "entries": args.entries,
        "per_index": args.per_index,
        "index_objects": index_objects,
        "index_bytes": index_bytes,
        "dataset": dataset.name(),
        "scale": args.scale,
        "source_bytes": cached.plan.total_bytes(),
        "source_files": cached.plan.files.len(),
        "rows": rows.iter().map(|r| serde_json::json!({
            "binary": r.binary,
            "repository": r.repository,
            "phase": r.phase,
            "wall_s": r.usage.wall.as_secs_f64(),
            "cpu_s": r.usage.cpu.as_secs_f64(),
            "max_rss": r.usage.max_rss,
        })).collect::<Vec<_>>(),
    });
    fs::write(
        out_dir.join("synthetic-index.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!("wrote {}/synthetic-index.{{md,json}}", out_dir.display());
    Ok(())
}

/// Writes `entries` synthetic blobs into index objects of at most `per_index` entries;
/// returns the number of objects.
fn write_index(repo: &Repository, entries: u64, per_index: u64, seed: u64) -> Result<u64> {
    let mut rng = FastRng::derived(seed, 0x1de8, 0);
    let mut id = || {
        let mut b = [0u8; 32];
        rng.fill(&mut b);
        b
    };
    let mut left = entries;
    let mut objects = 0;
    let mut sizes = FastRng::derived(seed, 0x1de8, 1);
    while left > 0 {
        let mut file = IndexFile::default();
        let target = left.min(per_index);
        while (file.entries.len() as u64) < target {
            // About 3 % of all entries are tree blobs (one per directory; a directory
            // holds a few dozen files): 0.43 % of packs, each holding 256 trees.
            let tree = sizes.below(10_000) < 43;
            let (blob_type, blobs) = if tree {
                (BlobType::Tree, 256)
            } else {
                (BlobType::Data, sizes.range(8, 65))
            };
            let blobs = blobs.min(target - file.entries.len() as u64) as u32;
            // Sealed blobs of a 16 MiB pack, back to back.
            let length = (16u32 << 20) / blobs;
            let pack = file.packs.len() as u32;
            file.packs.push(PackInfo {
                id: PackId(id()),
                size: 16 << 20,
                blob_type,
            });
            for k in 0..blobs {
                file.entries.push(IndexEntry {
                    id: BlobId(id()),
                    pack,
                    offset: k * length,
                    length,
                    raw_length: length * 2,
                });
            }
        }
        left -= file.entries.len() as u64;
        file.sort();
        repo.save(&file).context("writing an index object")?;
        objects += 1;
    }
    Ok(objects)
}

/// Runs `podvault backup` of `src` into `repo` and measures it.
fn backup(bin: &Path, repo: &Path, src: &Path, work: &Path) -> Result<Usage> {
    let log = work.join("backup.log");
    let out = fs::File::create(&log)?;
    let mut cmd = Command::new(bin);
    cmd.env("PODVAULT_REPOSITORY", repo)
        .env("PODVAULT_PASSWORD", PASSWORD)
        .args(["backup", "--json", "-q"])
        .arg(src)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let u = measure::run(&mut cmd).with_context(|| format!("starting {}", bin.display()))?;
    let _ = Command::new("sync").status();
    if u.exit_code != 0 {
        let text = fs::read_to_string(&log).unwrap_or_default();
        bail!("backup exited with {}:\n{text}", u.exit_code);
    }
    Ok(u)
}

fn markdown(
    args: &Args,
    cached: &Cached,
    rows: &[Row],
    index_objects: u64,
    index_bytes: u64,
) -> String {
    let mut md = format!(
        "## Backup against a repository with {} index entries\n\n\
         - {} index objects of ≤ {} entries ({:.0} MiB on disk); data packs of 8–64 blobs, \
         3 % of entries tree blobs; packs not written (a backup reads only the index)\n\
         - backed up: {} at scale {} ({} files, {:.1} MiB), seed {}; one run each\n\
         - peak RSS by `wait4`; the same backup into an empty repository for reference\n\n\
         | binary | repository | phase | wall s | CPU s | peak RSS MiB |\n\
         |---|---|---|---:|---:|---:|\n",
        args.entries,
        index_objects,
        args.per_index,
        index_bytes as f64 / MIB,
        cached.plan.dataset,
        args.scale,
        cached.plan.files.len(),
        cached.plan.total_bytes() as f64 / MIB,
        args.seed,
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.1} |\n",
            r.binary,
            r.repository,
            r.phase,
            r.usage.wall.as_secs_f64(),
            r.usage.cpu.as_secs_f64(),
            r.usage.max_rss as f64 / MIB
        ));
    }
    md
}
