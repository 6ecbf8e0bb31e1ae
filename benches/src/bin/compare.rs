//! Side-by-side comparison of podvault with restic and rustic on seeded datasets.
//!
//! For each dataset and each run, every tool (in an order rotated run by run, so no tool is
//! always first on a cold or warm machine) gets a fresh repository and does: first backup,
//! no-change backup, backup after rewriting `--change` of the data, full restore. Each step is
//! a child process measured with `wait4` (wall, user+sys CPU, peak RSS) plus the bytes and
//! objects it added to the repository. Medians and podvault/other ratios go to
//! `benches/results/<dataset>.md` (also printed), a bar chart to `<dataset>.png`, and every
//! sample to `<dataset>.json`.
//!
//! ```text
//! cargo run --release -p podvault-benches --bin compare -- --dataset mixed --runs 3
//! cargo run --release -p podvault-benches --bin compare -- --dataset mixed --runs 3 --backend s3
//! cargo run --release -p podvault-benches --bin compare -- --dataset mixed --runs 3 --backend s3 --latency-ms 20
//! ```
//!
//! `--backend local` (the default) puts each repository in a directory. `--backend s3` starts
//! an S3 server on 127.0.0.1 (`--s3-server s3s-fs`, the default, or `moto`; see
//! [`podvault_benches::s3`]) with one bucket, and gives each tool and run its own prefix in
//! it. The tools always reach the server through the proxy of `podvault_tests::proxy`,
//! which counts requests by kind (GET, LIST, HEAD, PUT, POST, DELETE) and body bytes in each
//! direction, so every phase reports what it asked of object storage; `--latency-ms N` makes
//! the proxy hold every request N ms before forwarding it (a round trip to a remote store).
//! Repository size is measured on the server's side (s3s-fs's files; a LIST for moto). S3
//! results go to `<dataset>-s3[-moto][-<N>ms].{md,json,png}`. rustic is left out in S3 mode
//! (its S3 support goes through OpenDAL options we do not wire up here); the S3 mode compares
//! podvault with restic.
//!
//! Both tools keep a local cache in `<work>/cache`, empty at the start of each run and warm
//! across its phases: restic through `--cache-dir`, podvault through `PODVAULT_CACHE_DIR`.
//!
//! podvault is built first (`cargo build --release -p podvault`, into `$CARGO_TARGET_DIR` or
//! the workspace's `target/`) unless `--no-build` or `--podvault PATH` is given; restic and
//! rustic are used when found on `PATH`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use podvault_benches::dataset::{Cached, Dataset, Plan};
use podvault_benches::measure::{self, Usage};
use podvault_benches::s3::{self, S3Server, ServerKind};
use podvault_benches::stats::{Phase, Results, Sample, Traffic};
use podvault_benches::{chart, rng};
use podvault_tests::proxy::{FaultConfig, FaultProxy};

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
    /// Where repositories live: `local` (directories) or `s3` (a local S3 server behind a
    /// counting proxy).
    #[arg(long, default_value = "local", value_parser = ["local", "s3"])]
    backend: String,
    /// The S3 server for `--backend s3`: s3s-fs or moto.
    #[arg(long, default_value = "s3s-fs", value_parser = ["s3s-fs", "moto"])]
    s3_server: String,
    /// With `--backend s3`: milliseconds the proxy holds every request before forwarding it.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

/// The S3 side of `--backend s3`: the server and the counting (and delaying) proxy in front
/// of it, shared by every tool and run (each under its own prefix).
struct S3Setup {
    server: S3Server,
    proxy: FaultProxy,
    latency_ms: u64,
}

impl S3Setup {
    fn start(args: &Args, scratch: &Path) -> Result<S3Setup> {
        let kind = ServerKind::parse(&args.s3_server).context("unknown --s3-server")?;
        let server = S3Server::start(kind, scratch)
            .with_context(|| format!("starting {} under {}", kind.name(), scratch.display()))?;
        let proxy = FaultProxy::start(
            server.endpoint(),
            FaultConfig::clean(Duration::from_millis(args.latency_ms)),
        )
        .context("starting the S3 proxy")?;
        eprintln!(
            "S3: {} at {}, through the proxy at {} ({} ms per request)",
            server.version(),
            server.endpoint(),
            proxy.url(),
            args.latency_ms
        );
        Ok(S3Setup {
            server,
            proxy,
            latency_ms: args.latency_ms,
        })
    }

    /// Suffix of the result files: `-s3`, `-s3-moto`, then `-<N>ms` with latency.
    fn suffix(&self) -> String {
        let mut s = "-s3".to_string();
        if self.server.kind() == ServerKind::Moto {
            s.push_str("-moto");
        }
        if self.latency_ms > 0 {
            s.push_str(&format!("-{}ms", self.latency_ms));
        }
        s
    }

    /// The backend in the report's heading.
    fn describe(&self) -> String {
        if self.latency_ms > 0 {
            format!(
                "S3 ({}, +{} ms per request)",
                self.server.kind().name(),
                self.latency_ms
            )
        } else {
            format!("S3 ({})", self.server.kind().name())
        }
    }
}

/// Where one run's repository lives.
#[derive(Debug, Clone)]
enum RepoAt {
    /// A local directory.
    Dir(PathBuf),
    /// A prefix in the bucket, reached through `endpoint` (the proxy).
    S3 { endpoint: String, prefix: String },
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
    /// The tool with its repository, password and cache (`<work>/cache`) set.
    fn command(&self, work: &Path, repo: &RepoAt) -> Command {
        let mut c = Command::new(&self.bin);
        c.stdin(Stdio::null());
        if let RepoAt::S3 { .. } = repo {
            c.env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
                .env("AWS_REGION", s3::REGION);
        }
        match self.kind {
            Kind::Podvault => {
                c.env("PODVAULT_PASSWORD", PASSWORD)
                    .env("PODVAULT_CACHE_DIR", work.join("cache"));
                match repo {
                    RepoAt::Dir(dir) => c.env("PODVAULT_REPOSITORY", dir),
                    RepoAt::S3 { endpoint, prefix } => c
                        .env(
                            "PODVAULT_REPOSITORY",
                            format!("s3://{}/{prefix}", s3::BUCKET),
                        )
                        .env("PODVAULT_S3_ENDPOINT", endpoint),
                };
            }
            Kind::Restic => {
                c.env("RESTIC_PASSWORD", PASSWORD).arg("--repo");
                match repo {
                    RepoAt::Dir(dir) => c.arg(dir),
                    RepoAt::S3 { endpoint, prefix } => c
                        .arg(format!("s3:{endpoint}/{}/{prefix}", s3::BUCKET))
                        .args(["-o", "s3.bucket-lookup=path", "-o"])
                        .arg(format!("s3.region={}", s3::REGION)),
                };
                c.arg("--cache-dir").arg(work.join("cache"));
            }
            Kind::Rustic => {
                // S3 mode leaves rustic out (see find_tools).
                let RepoAt::Dir(dir) = repo else {
                    unreachable!("rustic runs only on local repositories")
                };
                c.env("RUSTIC_PASSWORD", PASSWORD)
                    .arg("--repository")
                    .arg(dir)
                    .arg("--cache-dir")
                    .arg(work.join("cache"))
                    .arg("--no-progress");
            }
        }
        c
    }

    fn init(&self, work: &Path, repo: &RepoAt) -> Command {
        let mut c = self.command(work, repo);
        c.arg("init");
        c
    }

    /// Backs up the *content* of `src` (run from inside it, so restic/rustic store `.`).
    fn backup(&self, work: &Path, repo: &RepoAt, src: &Path) -> Command {
        let mut c = self.command(work, repo);
        match self.kind {
            Kind::Podvault => c.args(["backup", "--json", "-q"]).arg(src),
            Kind::Restic => c.current_dir(src).args(["backup", "--quiet", "."]),
            Kind::Rustic => c.current_dir(src).args(["backup", "."]),
        };
        c
    }

    fn restore(&self, work: &Path, repo: &RepoAt, target: &Path) -> Command {
        let mut c = self.command(work, repo);
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
    if let Some(code) = measure::child_main() {
        std::process::exit(code);
    }
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
    if args.backend != "s3" && args.latency_ms > 0 {
        bail!("--latency-ms needs --backend s3");
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
    let s3 = match args.backend.as_str() {
        "s3" => Some(S3Setup::start(&args, &work_root.join("s3-server"))?),
        _ => None,
    };
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
        let results = compare(&args, &cached, &tools, &work_root, s3.as_ref(), threads)?;
        let md = results.to_markdown();
        println!("{md}");
        let suffix = s3.as_ref().map(S3Setup::suffix).unwrap_or_default();
        let base = out_dir.join(format!("{}{suffix}", dataset.name()));
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
    s3: Option<&S3Setup>,
    threads: usize,
) -> Result<Results> {
    let plan = &cached.plan;
    let mut results = Results::new(
        plan.dataset.name(),
        tools.iter().map(|t| t.name.clone()).collect(),
    );
    results.source_bytes = plan.total_bytes();
    results.source_files = plan.files.len() as u64;
    results.backend = s3.map_or("local directories".into(), S3Setup::describe);
    results.notes.push(format!(
        "scale {}, seed {}, {} run(s) interleaved, {} CPU(s), a fresh {} repository per tool and run; `--change {}` rewrites that fraction of the bytes in place before the third backup",
        args.scale,
        args.seed,
        args.runs,
        threads,
        if s3.is_some() { "S3" } else { "local-directory" },
        args.change
    ));
    if let Some(s3) = s3 {
        results.notes.push(format!(
            "S3: {} on 127.0.0.1, bucket `{}`, one prefix per tool and run, path-style addressing, region {}; every request goes through a store-and-forward proxy in the harness{}. Server and proxy CPU and memory are not counted against the tools",
            s3.server.version(),
            s3::BUCKET,
            s3::REGION,
            if s3.latency_ms > 0 {
                format!(" that holds it {} ms before forwarding (concurrent requests wait concurrently)", s3.latency_ms)
            } else {
                " (no added delay)".to_string()
            }
        ));
        results.notes.push(format!(
            "S3 rows are counted by the proxy: LIST is a GET with a listing query (`list-type`, `prefix`, …), GET every other GET (whole objects, ranges, `?location`); MiB up/down are HTTP body bytes (object data, listings, chunk framing and signatures included, headers not). Repository size is measured {}",
            match s3.server.kind() {
                ServerKind::S3sFs => "on the server's side: s3s-fs stores each object as one file of its size, summed under the prefix's directory",
                ServerKind::Moto => "with a LIST of the prefix sent to moto directly (not through the proxy, not counted)",
            }
        ));
    }
    results.notes.push(
        "each tool's local cache starts empty each run and stays warm across its phases: restic `--cache-dir <work>/cache`, podvault `PODVAULT_CACHE_DIR=<work>/cache`"
            .into(),
    );
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
            let repo = match s3 {
                Some(s3) => RepoAt::S3 {
                    endpoint: s3.proxy.url(),
                    prefix: format!("{}-{}-run{}", plan.dataset, tool.name, run + 1),
                },
                None => RepoAt::Dir(work.join("repo")),
            };
            let r = run_once(args, cached, tool, &work, &repo, s3, run, &mut results);
            if !args_keep_work() {
                let _ = fs::remove_dir_all(&work);
                if let (Some(s3), RepoAt::S3 { prefix, .. }) = (s3, &repo) {
                    let _ = s3.server.remove(prefix);
                }
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

#[allow(clippy::too_many_arguments)]
fn run_once(
    args: &Args,
    cached: &Cached,
    tool: &Tool,
    work: &Path,
    repo: &RepoAt,
    s3: Option<&S3Setup>,
    run: usize,
    results: &mut Results,
) -> Result<()> {
    if work.exists() {
        fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    fs::create_dir_all(work)?;
    let src = cached.tree();
    let source_bytes = cached.plan.total_bytes();
    let usage = || -> Result<(u64, u64)> {
        Ok(match (repo, s3) {
            (RepoAt::S3 { prefix, .. }, Some(s3)) => s3
                .server
                .usage(prefix)
                .with_context(|| format!("measuring {prefix}/ on the S3 server"))?,
            (RepoAt::Dir(dir), _) => measure::dir_usage(dir)?,
            (RepoAt::S3 { .. }, None) => unreachable!("an S3 repository without a server"),
        })
    };
    let traffic = || s3.map(|s3| s3.proxy.traffic());
    if let (Some(s3), RepoAt::S3 { prefix, .. }) = (s3, repo) {
        s3.server.remove(prefix)?;
    }
    step(tool, work, "init", &mut tool.init(work, repo))?;
    let mut before = usage()?;
    let mut backup = |phase: Phase, results: &mut Results| -> Result<()> {
        let t0 = traffic();
        let u = step(
            tool,
            work,
            phase.short(),
            &mut tool.backup(work, repo, &src),
        )?;
        let moved = since(traffic(), t0);
        let after = usage()?;
        results.add(
            &tool.name,
            phase,
            sample(
                u,
                after.0.saturating_sub(before.0),
                after.1.saturating_sub(before.1),
                moved,
            ),
        );
        report(tool, run, phase, &u, source_bytes, moved);
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
        let t0 = traffic();
        let u = step(
            tool,
            work,
            "restore",
            &mut tool.restore(work, repo, &target),
        )?;
        let moved = since(traffic(), t0);
        results.add(&tool.name, Phase::Restore, sample(u, 0, 0, moved));
        report(tool, run, Phase::Restore, &u, source_bytes, moved);
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

fn sample(u: Usage, repo_bytes: u64, repo_objects: u64, traffic: Option<Traffic>) -> Sample {
    Sample {
        wall_s: u.wall.as_secs_f64(),
        cpu_s: u.cpu.as_secs_f64(),
        max_rss: u.max_rss,
        repo_bytes,
        repo_objects,
        traffic,
    }
}

/// The proxy's traffic between two readings.
fn since(now: Option<Traffic>, before: Option<Traffic>) -> Option<Traffic> {
    Some(now?.since(&before?))
}

fn report(
    tool: &Tool,
    run: usize,
    phase: Phase,
    u: &Usage,
    source_bytes: u64,
    traffic: Option<Traffic>,
) {
    eprintln!(
        "  run {} {:<8} {:<20} {:>7.2}s {:>7.1} MB/s  cpu {:>6.2}s  rss {:>6.1} MiB{}",
        run + 1,
        tool.name,
        phase.label(),
        u.wall.as_secs_f64(),
        source_bytes as f64 / 1e6 / u.wall.as_secs_f64().max(1e-9),
        u.cpu.as_secs_f64(),
        u.max_rss as f64 / 1048576.0,
        traffic.map_or(String::new(), |t| format!("  {t}"))
    );
}

/// Runs one measured step with output to `<work>/<name>.log`; fails on a non-zero exit.
/// Dirty pages are flushed afterwards (outside the measurement) so one step's writeback does
/// not land on the next.
fn step(tool: &Tool, work: &Path, name: &str, cmd: &mut Command) -> Result<Usage> {
    let log = work.join(format!("{name}.log"));
    let out = fs::File::create(&log)?;
    let u = measure::run_isolated(cmd, out.try_clone()?, out)
        .with_context(|| format!("starting {}", tool.bin.display()))?;
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
        if kind == Kind::Rustic && args.backend == "s3" {
            if !args.tools.is_empty() {
                bail!("rustic is not wired up for --backend s3 (podvault and restic are)");
            }
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
