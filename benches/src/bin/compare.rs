//! Side-by-side comparison of podvault with restic and rustic on seeded datasets.
//!
//! For each dataset and each run, every tool (in an order rotated run by run, so no tool is
//! always first on a cold or warm machine) gets a fresh local-directory repository and does:
//! first backup, no-change backup, backup after rewriting `--change` of the data, full restore.
//! Each step is a child process measured with `wait4` (wall, user+sys CPU, peak RSS) plus the
//! bytes and objects it added to the repository. Medians and podvault/other ratios go to
//! `benches/results/<dataset>.md` (also printed), a bar chart to `<dataset>.png`, and every
//! sample to `<dataset>.json`.
//!
//! ```text
//! cargo run --release -p podvault-benches --bin compare -- --dataset mixed --runs 3
//! ```
//!
//! podvault is built first (`cargo build --release -p podvault`, into `$CARGO_TARGET_DIR` or
//! the workspace's `target/`) unless `--no-build` or `--podvault PATH` is given; restic and
//! rustic are used when found on `PATH`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use podvault_benches::dataset::{Cached, Dataset, Plan};
use podvault_benches::measure::{self, Usage};
use podvault_benches::stats::{Phase, Results, Sample};
use podvault_benches::{chart, rng};

const PASSWORD: &str = "podvault-bench-password";

/// Compare podvault with restic and rustic on generated datasets.
#[derive(Debug, Parser)]
struct Args {
    /// Dataset: mixed, small-files, big-file, or all.
    #[arg(long, default_value = "mixed")]
    dataset: String,
    /// Runs per tool (interleaved); medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Size multiplier for the datasets (1.0 = 1.5 GiB mixed, 100k small files, 2 GiB file).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Fraction of the data rewritten before the third backup.
    #[arg(long, default_value_t = 0.05)]
    change: f64,
    /// Seed of the datasets and of the change.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where generated datasets are cached [default: $HOME/.cache/podvault-bench-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Scratch space for repositories and restores [default: <data-dir>/work].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where the table, chart and raw samples go [default: benches/results].
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Tools to compare (comma-separated) [default: podvault and whichever of restic, rustic
    /// are on PATH].
    #[arg(long, value_delimiter = ',')]
    tools: Vec<String>,
    /// The podvault binary [default: build and use target/release/podvault].
    #[arg(long)]
    podvault: Option<PathBuf>,
    /// Do not run `cargo build --release -p podvault` first.
    #[arg(long)]
    no_build: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Podvault,
    Restic,
    Rustic,
}

#[derive(Debug, Clone)]
struct Tool {
    kind: Kind,
    name: String,
    bin: PathBuf,
    version: String,
}

impl Tool {
    fn command(&self, work: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.stdin(Stdio::null());
        match self.kind {
            Kind::Podvault => {
                c.env("PODVAULT_REPOSITORY", work.join("repo"))
                    .env("PODVAULT_PASSWORD", PASSWORD);
            }
            Kind::Restic => {
                c.env("RESTIC_PASSWORD", PASSWORD)
                    .arg("--repo")
                    .arg(work.join("repo"))
                    .arg("--cache-dir")
                    .arg(work.join("cache"));
            }
            Kind::Rustic => {
                c.env("RUSTIC_PASSWORD", PASSWORD)
                    .arg("--repository")
                    .arg(work.join("repo"))
                    .arg("--cache-dir")
                    .arg(work.join("cache"))
                    .arg("--no-progress");
            }
        }
        c
    }

    fn init(&self, work: &Path) -> Command {
        let mut c = self.command(work);
        c.arg("init");
        c
    }

    /// Backs up the *content* of `src` (run from inside it, so restic/rustic store `.`).
    fn backup(&self, work: &Path, src: &Path) -> Command {
        let mut c = self.command(work);
        match self.kind {
            Kind::Podvault => c.args(["backup", "--json", "-q"]).arg(src),
            Kind::Restic => c.current_dir(src).args(["backup", "--quiet", "."]),
            Kind::Rustic => c.current_dir(src).args(["backup", "."]),
        };
        c
    }

    fn restore(&self, work: &Path, target: &Path) -> Command {
        let mut c = self.command(work);
        match self.kind {
            Kind::Podvault => c.args(["restore", "latest", "-q", "--target"]).arg(target),
            Kind::Restic => c
                .args(["restore", "latest", "--quiet", "--target"])
                .arg(target),
            Kind::Rustic => c.args(["restore", "latest"]).arg(target),
        };
        c
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let datasets: Vec<Dataset> = if args.dataset == "all" {
        Dataset::ALL.to_vec()
    } else {
        vec![Dataset::parse(&args.dataset).with_context(|| {
            format!(
                "unknown dataset {:?} (mixed, small-files, big-file, all)",
                args.dataset
            )
        })?]
    };
    if args.runs == 0
        || args.scale.is_nan()
        || args.scale <= 0.0
        || !(0.0..=1.0).contains(&args.change)
    {
        bail!("--runs must be ≥ 1, --scale > 0 and --change within 0..=1");
    }
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => home()?.join(".cache/podvault-bench-data"),
    };
    let work_root = args
        .work_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("work"));
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    let tools = find_tools(&args)?;
    eprintln!(
        "tools: {}",
        tools
            .iter()
            .map(|t| format!("{} ({})", t.name, t.version))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !tools.iter().any(|t| t.kind != Kind::Podvault) {
        eprintln!("note: neither restic nor rustic is on PATH; only podvault is measured");
    }
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    for dataset in datasets {
        let plan = Plan::new(dataset, args.scale, args.seed);
        let t = Instant::now();
        let (cached, generated) = Cached::ensure(plan, &data_dir, threads).with_context(|| {
            format!("generating dataset {dataset} under {}", data_dir.display())
        })?;
        eprintln!(
            "dataset {dataset}: {} files, {:.1} MiB in {} ({})",
            cached.plan.files.len(),
            cached.plan.total_bytes() as f64 / 1048576.0,
            cached.dir.display(),
            if generated {
                format!("generated in {:.1}s", t.elapsed().as_secs_f64())
            } else {
                "cached".to_string()
            }
        );
        let results = compare(&args, &cached, &tools, &work_root, threads)?;
        let md = results.to_markdown();
        println!("{md}");
        let base = out_dir.join(dataset.name());
        fs::write(base.with_extension("md"), &md)?;
        fs::write(
            base.with_extension("json"),
            serde_json::to_string_pretty(&results.to_json())?,
        )?;
        match chart::draw(&results, &base.with_extension("png")) {
            Ok(()) => eprintln!(
                "wrote {}.{{md,json,png}}{}",
                base.display(),
                if chart::load_font() {
                    ""
                } else {
                    " (no TrueType font found: chart without text; install fonts-dejavu-core or set PODVAULT_BENCH_FONT)"
                }
            ),
            Err(e) => eprintln!("wrote {}.{{md,json}}; chart failed: {e}", base.display()),
        }
    }
    Ok(())
}

fn compare(
    args: &Args,
    cached: &Cached,
    tools: &[Tool],
    work_root: &Path,
    threads: usize,
) -> Result<Results> {
    let plan = &cached.plan;
    let mut results = Results::new(
        plan.dataset.name(),
        tools.iter().map(|t| t.name.clone()).collect(),
    );
    results.source_bytes = plan.total_bytes();
    results.source_files = plan.files.len() as u64;
    results.notes.push(format!(
        "scale {}, seed {}, {} run(s) interleaved, {} CPU(s), {} local-directory repositories; `--change {}` rewrites that fraction of the bytes in place before the third backup",
        args.scale,
        args.seed,
        args.runs,
        threads,
        tools.len(),
        args.change
    ));
    results.notes.push(format!(
        "tools: {}",
        tools
            .iter()
            .map(|t| format!("{} = {}", t.name, t.version))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    results.notes.push(
        "ratios are podvault's median divided by the other tool's: below 1 is better for time, CPU, RSS and size; above 1 is better for MB/s"
            .into(),
    );
    for run in 0..args.runs {
        for k in 0..tools.len() {
            let tool = &tools[(run + k) % tools.len()];
            let work = work_root.join(format!("{}-{}", plan.dataset, tool.name));
            let r = run_once(args, cached, tool, &work, run, &mut results);
            if !args_keep_work() {
                let _ = fs::remove_dir_all(&work);
            }
            r.with_context(|| format!("{} run {} on {}", tool.name, run + 1, plan.dataset))?;
        }
    }
    Ok(results)
}

/// Set `PODVAULT_BENCH_KEEP=1` to keep repositories and restores for inspection.
fn args_keep_work() -> bool {
    std::env::var_os("PODVAULT_BENCH_KEEP").is_some_and(|v| v == "1")
}

fn run_once(
    args: &Args,
    cached: &Cached,
    tool: &Tool,
    work: &Path,
    run: usize,
    results: &mut Results,
) -> Result<()> {
    if work.exists() {
        fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    fs::create_dir_all(work)?;
    let repo = work.join("repo");
    let src = cached.tree();
    let source_bytes = cached.plan.total_bytes();
    step(tool, work, "init", &mut tool.init(work))?;
    let mut before = measure::dir_usage(&repo)?;
    let mut backup = |phase: Phase, results: &mut Results| -> Result<()> {
        let u = step(tool, work, phase.short(), &mut tool.backup(work, &src))?;
        let after = measure::dir_usage(&repo)?;
        results.add(
            &tool.name,
            phase,
            sample(
                u,
                after.0.saturating_sub(before.0),
                after.1.saturating_sub(before.1),
            ),
        );
        report(tool, run, phase, &u, source_bytes);
        before = after;
        Ok(())
    };
    backup(Phase::FirstBackup, results)?;
    backup(Phase::NoChange, results)?;
    let mutation = cached.mutate(args.change, rng::derive(args.seed, 0xc4a9, 0))?;
    results.changed_bytes = mutation.bytes_changed;
    let changed = backup(Phase::Changed, results);
    let target = work.join("restore");
    let restored = changed.and_then(|()| {
        let u = step(tool, work, "restore", &mut tool.restore(work, &target))?;
        results.add(&tool.name, Phase::Restore, sample(u, 0, 0));
        report(tool, run, Phase::Restore, &u, source_bytes);
        Ok(())
    });
    cached
        .revert(mutation)
        .context("undoing the change to the dataset")?;
    restored?;
    let (bytes, files) = measure::dir_usage(&target)?;
    if bytes != source_bytes || files != cached.plan.files.len() as u64 {
        bail!(
            "{} restored {files} files / {bytes} bytes, expected {} / {source_bytes}",
            tool.name,
            cached.plan.files.len()
        );
    }
    Ok(())
}

fn sample(u: Usage, repo_bytes: u64, repo_objects: u64) -> Sample {
    Sample {
        wall_s: u.wall.as_secs_f64(),
        cpu_s: u.cpu.as_secs_f64(),
        max_rss: u.max_rss,
        repo_bytes,
        repo_objects,
    }
}

fn report(tool: &Tool, run: usize, phase: Phase, u: &Usage, source_bytes: u64) {
    eprintln!(
        "  run {} {:<8} {:<20} {:>7.2}s {:>7.1} MB/s  cpu {:>6.2}s  rss {:>6.1} MiB",
        run + 1,
        tool.name,
        phase.label(),
        u.wall.as_secs_f64(),
        source_bytes as f64 / 1e6 / u.wall.as_secs_f64().max(1e-9),
        u.cpu.as_secs_f64(),
        u.max_rss as f64 / 1048576.0
    );
}

/// Runs one measured step with output to `<work>/<name>.log`; fails on a non-zero exit.
/// Dirty pages are flushed afterwards (outside the measurement) so one step's writeback does
/// not land on the next.
fn step(tool: &Tool, work: &Path, name: &str, cmd: &mut Command) -> Result<Usage> {
    let log = work.join(format!("{name}.log"));
    let out = fs::File::create(&log)?;
    cmd.stdout(out.try_clone()?).stderr(out);
    let u = measure::run(cmd).with_context(|| format!("starting {}", tool.bin.display()))?;
    let _ = Command::new("sync").status();
    if u.exit_code != 0 {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        bail!(
            "{} {name} exited with {}; last output:\n{}",
            tool.name,
            u.exit_code,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(u)
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set; pass --data-dir")
}

fn find_tools(args: &Args) -> Result<Vec<Tool>> {
    let wanted = |name: &str| args.tools.is_empty() || args.tools.iter().any(|t| t == name);
    for t in &args.tools {
        if !["podvault", "restic", "rustic"].contains(&t.as_str()) {
            bail!("unknown tool {t:?} (podvault, restic, rustic)");
        }
    }
    let mut tools = Vec::new();
    if wanted("podvault") {
        let bin = match &args.podvault {
            Some(p) => p.clone(),
            None => build_podvault(args.no_build)?,
        };
        tools.push(tool(Kind::Podvault, "podvault", bin, &["--version"])?);
    }
    for (kind, name, version_args) in [
        (Kind::Restic, "restic", &["version"][..]),
        (Kind::Rustic, "rustic", &["--version"][..]),
    ] {
        if !wanted(name) {
            continue;
        }
        match which(name) {
            Some(bin) => tools.push(tool(kind, name, bin, version_args)?),
            None if !args.tools.is_empty() => bail!("{name} is not on PATH"),
            None => {}
        }
    }
    if tools.is_empty() {
        bail!("no tool to measure");
    }
    Ok(tools)
}

fn tool(kind: Kind, name: &str, bin: PathBuf, version_args: &[&str]) -> Result<Tool> {
    let out = Command::new(&bin)
        .args(version_args)
        .output()
        .with_context(|| format!("running {} {}", bin.display(), version_args.join(" ")))?;
    let version = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("unknown version")
        .trim()
        .to_string();
    Ok(Tool {
        kind,
        name: name.to_string(),
        bin,
        version,
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Builds podvault in release mode (unless `no_build`) and returns the binary's path.
fn build_podvault(no_build: bool) -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("benches/ has no parent")?
        .to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => workspace.join(PathBuf::from(t)),
        None => workspace.join("target"),
    };
    if !no_build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        eprintln!("building podvault (cargo build --release -p podvault)…");
        let status = Command::new(cargo)
            .current_dir(&workspace)
            .args(["build", "--release", "-p", "podvault"])
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!("cargo build --release -p podvault failed");
        }
    }
    let bin = target.join("release/podvault");
    if !bin.is_file() {
        bail!(
            "{} not found: run `cargo build --release -p podvault` or pass --podvault",
            bin.display()
        );
    }
    Ok(bin)
}
