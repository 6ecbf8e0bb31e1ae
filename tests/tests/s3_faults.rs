//! S3 faults: the real `podvault` binary against a real S3 server (moto, started by
//! `tests/run.sh`) with a fault-injecting proxy (`podvault_tests::proxy`) in between.
//!
//! What is proved:
//! - under a 15 % fault rate every operation either succeeds (and restores byte-identical)
//!   or fails with a clear error — exit 1, no panic, the message names the endpoint — never a
//!   "success" with wrong data;
//! - in an upload storm with one retry, failed backups leave nothing behind that a snapshot
//!   refers to: partial uploads (the truncated-request fault) never become referenced, and
//!   afterwards `check --read-data` is clean and every snapshot restores byte-identical;
//! - a restore that fails part-way (pack-read storm) says so and never reports success;
//! - a closed port and a black-hole endpoint fail in bounded time, naming the endpoint.
//!
//! Every child process runs under a hang-kill ([`HANG_KILL`]); no test asserts wall-clock
//! time. Randomness is seeded (data trees and the proxy's choices).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use podvault_tests::proxy::{FaultConfig, FaultKind, FaultProxy};
use podvault_tests::{assert_same_tree, fill, generate_tree, init_args, Repo};
use rand::SeedableRng;

/// A child still running after this is killed and the test fails: it hung.
const HANG_KILL: Duration = Duration::from_secs(120);

/// Backend options while faults are injected: short deadlines so stalls cost little, and
/// enough retries that a 15 % fault rate almost never exhausts them.
const PATIENT: &str = "timeout=2s&retries=6";
/// Backend options in the fault storm: operations are expected to fail, quickly.
const IMPATIENT: &str = "timeout=2s&retries=1";

/// The S3 endpoint of a test repository (`Repo::s3` sets it).
fn endpoint_of(repo: &Repo) -> String {
    repo.env
        .iter()
        .find(|(k, _)| k == "PODVAULT_S3_ENDPOINT")
        .map(|(_, v)| v.clone())
        .expect("S3 repositories carry PODVAULT_S3_ENDPOINT")
}

/// The same repository reached through `endpoint`, with backend `options` on the URL.
fn via(repo: &Repo, endpoint: &str, options: &str) -> Repo {
    let mut r = repo.clone();
    for (k, v) in &mut r.env {
        if k == "PODVAULT_S3_ENDPOINT" {
            *v = endpoint.to_owned();
        }
    }
    if !options.is_empty() {
        r.location = format!("{}?{options}", repo.location);
    }
    r
}

/// Runs podvault with a hang-kill; returns its output.
fn run_bounded(repo: &Repo, args: &[&str]) -> Output {
    let mut child = repo
        .cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn podvault");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + HANG_KILL;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for podvault") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = stderr.join().unwrap_or_default();
            panic!(
                "podvault {args:?} hung: killed after {HANG_KILL:?}\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Asserts `out` is a clean failure of `what`: exit code 1, no panic, and a final
/// `error:` line naming the endpoint (`names` are the acceptable spellings). Returns that
/// line.
fn assert_clear_failure(what: &str, out: &Output, names: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit code 1\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
    let line = stderr
        .lines()
        .rfind(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{what}: no error line on stderr:\n{stderr}"))
        .to_owned();
    assert!(
        names.iter().any(|n| line.contains(n)),
        "{what}: the error does not name the endpoint ({names:?}):\n{line}"
    );
    line
}

/// `check --read-data` reports the repository clean (exit 0). If the CLI has no `check`
/// command, this says so and returns false; the byte-identical restores that follow every
/// call are then the only proof.
fn check_clean(repo: &Repo) -> bool {
    let out = run_bounded(repo, &["check", "--read-data"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) && stderr.contains("unrecognized subcommand") {
        eprintln!("NOTE: `podvault check` is not in the CLI yet; relying on restores");
        return false;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check --read-data found damage ({:?}):\n{stdout}\n{stderr}",
        out.status.code(),
    );
    eprint!("check --read-data: {stderr}{stdout}");
    true
}

/// Snapshot ids and their first path, from `snapshots --json`.
fn snapshots(repo: &Repo) -> Vec<(String, String)> {
    let out = run_bounded(repo, &["snapshots", "--json"]);
    assert!(
        out.status.success(),
        "snapshots: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("snapshots JSON");
    v.as_array()
        .expect("snapshot list")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_owned(),
                s["paths"][0].as_str().expect("path").to_owned(),
            )
        })
        .collect()
}

/// Outcomes of the operations run under faults, for the report.
#[derive(Default)]
struct Tally {
    ok: BTreeMap<&'static str, u32>,
    failed: BTreeMap<&'static str, u32>,
    errors: Vec<String>,
}

impl Tally {
    fn note(&mut self, op: &'static str, out: &Output, endpoint: &str) -> bool {
        if out.status.success() {
            *self.ok.entry(op).or_default() += 1;
            return true;
        }
        let line = assert_clear_failure(op, out, &[endpoint]);
        *self.failed.entry(op).or_default() += 1;
        self.errors.push(line);
        false
    }

    fn succeeded(&self) -> u32 {
        self.ok.values().sum()
    }
}

/// A backup through `repo`; on success returns the snapshot id.
fn backup(repo: &Repo, src: &Path, tally: &mut Tally, endpoint: &str) -> Option<String> {
    let out = run_bounded(
        repo,
        &["backup", "--json", src.to_str().expect("utf-8 path")],
    );
    if !tally.note("backup", &out, endpoint) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
    Some(v["snapshot"].as_str().expect("snapshot id").to_owned())
}

/// A restore of `snapshot` through `repo` into a fresh directory under `work`; when it
/// succeeds the result must be identical to `src`.
fn restore(
    repo: &Repo,
    snapshot: &str,
    src: &Path,
    work: &Path,
    tally: &mut Tally,
    endpoint: &str,
) {
    let target = fresh_dir(work, "restore");
    let out = run_bounded(
        repo,
        &[
            "restore",
            snapshot,
            "--target",
            target.to_str().expect("utf-8 path"),
        ],
    );
    if tally.note("restore", &out, endpoint) {
        assert_same_tree(src, &target);
    }
}

fn fresh_dir(work: &Path, stem: &str) -> PathBuf {
    (0..)
        .map(|n| work.join(format!("{stem}-{n}")))
        .find(|p| !p.exists())
        .expect("a free name")
}

/// A seeded tree of a few MiB: the shared generator plus, optionally, a file of its own.
fn tree(root: &Path, seed: u64, extra: Option<u64>) {
    generate_tree(root, seed, 1 << 20);
    if let Some(extra_seed) = extra {
        let mut rng = rand::rngs::StdRng::seed_from_u64(extra_seed);
        std::fs::write(root.join("extra.bin"), fill(&mut rng, 700 << 10, false)).expect("extra");
    }
}

#[test]
fn operations_under_s3_faults_succeed_intact_or_fail_clearly() {
    let Some(direct) = Repo::s3("faults") else {
        return;
    };
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let (src_a, src_b) = (work.path().join("src-a"), work.path().join("src-b"));
    tree(&src_a, 41, None);
    tree(&src_b, 41, Some(42));
    // New data for each backup in the upload storm, so each has packs to upload.
    let storm_srcs: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = work.path().join(format!("src-storm-{i}"));
            tree(&p, 43 + i, None);
            p
        })
        .collect();

    let proxy = FaultProxy::start(
        &endpoint_of(&direct),
        FaultConfig::all(0.15, Duration::from_secs(3), 0x5eed_fa17),
    )
    .expect("start proxy");
    let endpoint = proxy.addr().to_string();
    let faulty = via(&direct, &proxy.url(), PATIENT);
    let mut tally = Tally::default();

    // Small packs and chunks: several packs per backup, so several uploads to break.
    let mut initialised = false;
    for _ in 0..3 {
        let out = run_bounded(
            &faulty,
            &init_args(&["--pack-size-mib", "1", "--chunk-avg-kib", "256"]),
        );
        // A lost response can hide an init that did complete; the retry then finds it.
        if tally.note("init", &out, &endpoint)
            || String::from_utf8_lossy(&out.stderr).contains("already exists")
        {
            initialised = true;
            break;
        }
    }
    assert!(initialised, "init never succeeded: {:?}", tally.errors);

    // Phase 1: a 15 % fault rate with patient retries.
    let mut made: Vec<(String, PathBuf)> = Vec::new();
    for src in [&src_a, &src_a, &src_b] {
        if let Some(id) = backup(&faulty, src, &mut tally, &endpoint) {
            made.push((id, src.clone()));
        }
    }
    for (id, src) in made.clone() {
        restore(&faulty, &id, &src, work.path(), &mut tally, &endpoint);
    }
    let phase1 = proxy.counts();

    // Phase 2: an upload storm — 60 % of PUTs fail, one retry: most backups fail after
    // some of their packs are written, some of them partially (truncated requests). None of
    // that may become referenced.
    proxy.set_only(Some("PUT "));
    proxy.set_rate(0.6);
    let storm = via(&direct, &proxy.url(), IMPATIENT);
    for src in &storm_srcs {
        if let Some(id) = backup(&storm, src, &mut tally, &endpoint) {
            made.push((id, src.clone()));
        }
    }
    let phase2 = proxy.counts();

    // Phase 3: a pack-read storm: a restore fails part-way and must say so.
    proxy.set_only(Some("/data/"));
    proxy.set_rate(0.6);
    if let Some((id, src)) = made.first() {
        restore(&storm, id, src, work.path(), &mut tally, &endpoint);
    }
    let counts = proxy.counts();
    drop(proxy);

    // Phase 4: no faults. The repository is sound and every snapshot — including any a
    // "failed" backup managed to save — restores byte-identical to its source.
    let checked = check_clean(&direct);
    let all = snapshots(&direct);
    for (id, _) in &made {
        assert!(
            all.iter().any(|(s, _)| s == id),
            "snapshot {id} was reported saved but is not listed"
        );
    }
    for (id, path) in &all {
        let target = fresh_dir(work.path(), "final");
        let out = run_bounded(
            &direct,
            &["restore", id, "--target", target.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "restore {id} without faults: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_tree(Path::new(path), &target);
    }

    eprintln!("faults, phase 1 (15 % of all requests): {phase1}");
    eprintln!("faults, after phase 2 (60 % of PUTs): {phase2}");
    eprintln!("faults, after phase 3 (60 % of pack requests): {counts}");
    eprintln!(
        "operations ok: {:?}; failed cleanly: {:?}; snapshots: {}; check --read-data: {}; {:.1?}",
        tally.ok,
        tally.failed,
        all.len(),
        if checked { "clean" } else { "not available" },
        started.elapsed()
    );
    for e in tally.errors.iter().take(5) {
        eprintln!("  example failure: {e}");
    }
    for kind in FaultKind::ALL {
        assert!(
            counts.injected[&kind] > 0,
            "no {kind} fault was injected, the test proves nothing about it: {counts}"
        );
    }
    assert!(
        phase2.injected[&FaultKind::TruncatedRequest]
            > phase1.injected[&FaultKind::TruncatedRequest],
        "the upload storm cut no upload short: {phase1} / {phase2}"
    );
    // Not vacuous: at 15 % with six retries the operations succeed.
    assert!(
        made.len() >= 2 && tally.ok.get("restore").copied().unwrap_or(0) >= 2,
        "too few operations succeeded under faults: ok {:?}, failed {:?}: {:?}",
        tally.ok,
        tally.failed,
        tally.errors
    );
    assert!(tally.succeeded() > 0);
}

#[test]
fn dead_endpoints_fail_in_bounded_time_naming_the_endpoint() {
    let Some(direct) = Repo::s3("dead") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("file"), b"data").unwrap();
    let src = src.to_str().unwrap();

    // A closed port, with the default retry and timeout settings.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = format!("127.0.0.1:{port}");
    let repo = via(&direct, &format!("http://{closed}"), "");
    let t = Instant::now();
    let out = run_bounded(&repo, &["backup", src]);
    let line = assert_clear_failure("backup to a closed port", &out, &[&closed]);
    eprintln!("closed port failed after {:.1?}: {line}", t.elapsed());

    // A black hole: connections are accepted, responses never come.
    let hole = FaultProxy::start(&endpoint_of(&direct), FaultConfig::stall_forever())
        .expect("start proxy");
    let addr = hole.addr().to_string();
    let repo = via(&direct, &hole.url(), "timeout=2s&retries=2");
    let t = Instant::now();
    let out = run_bounded(&repo, &["backup", src]);
    let line = assert_clear_failure("backup to a black hole", &out, &[&addr]);
    assert!(line.contains("timeout"), "{line}");
    assert!(line.contains("attempts: 3"), "{line}");
    eprintln!("black hole failed after {:.1?}: {line}", t.elapsed());
    assert!(hole.counts().injected[&FaultKind::Stall] >= 3);
}
