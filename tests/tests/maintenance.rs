//! Backups of any length beside any number of prunes (rule 5 of the engine's `prune`
//! module), on the fs backend and on the real S3 server.
//!
//! A backup that runs across many prunes with a one-second grace period must complete, lose
//! nothing and check clean with `--read-data`; at least one of those prunes must have seen
//! it running and left its uploads alone (without rule 5 the prunes mark its packs as
//! orphans and delete them a second later, and the backup fails at its commit). A backup
//! killed half-way leaves index objects naming its packs; they stay while its session is
//! alive and are reclaimed once it has timed out and the grace has passed.
//!
//! The backups read a seeded file through a slow pipe (`--stdin-from-command`), so they
//! last several seconds whatever the machine; no assertion depends on timing.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use podvault_tests::{fill, Repo, SMALL_PACKS};
use rand::SeedableRng;

/// Seeded, incompressible source of `mib` MiB.
fn source(dir: &Path, mib: usize) -> std::path::PathBuf {
    let path = dir.join("source.bin");
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let mut f = fs::File::create(&path).unwrap();
    for _ in 0..mib {
        f.write_all(&fill(&mut rng, 1 << 20, false)).unwrap();
    }
    path
}

/// `podvault backup --stdin-from-command` of `file`, 1 MiB every `pause_ms`, heartbeat 1 s.
fn slow_backup(repo: &Repo, file: &Path, mib: usize, pause_ms: u64) -> Command {
    let script = format!(
        "i=0; while [ $i -lt {mib} ]; do dd if='{}' bs=1M skip=$i count=1 2>/dev/null; \
         sleep {}; i=$((i+1)); done",
        file.display(),
        pause_ms as f64 / 1000.0
    );
    let mut c = repo.cmd(&[
        "backup",
        "--json",
        "--stdin-filename",
        "source.bin",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    c.env("PODVAULT_BACKUP_HEARTBEAT_SECS", "1");
    c
}

fn prune_json(repo: &Repo, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["prune", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&repo.ok(&all)).unwrap()
}

fn long_backup_across_prunes(repo: &Repo, work: &Path) {
    repo.init_with(&SMALL_PACKS);
    const MIB: usize = 24;
    let file = source(work, MIB);
    let done = AtomicBool::new(false);
    let prunes = AtomicUsize::new(0);
    let protected = AtomicUsize::new(0);
    let seen_alive = AtomicUsize::new(0);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let r = prune_json(repo, &["--grace", "1s"]);
                prunes.fetch_add(1, Ordering::Relaxed);
                protected.fetch_add(
                    r["packs_protected"].as_u64().unwrap() as usize,
                    Ordering::Relaxed,
                );
                if r["sessions_alive"].as_u64() > Some(0) {
                    seen_alive.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let out = slow_backup(repo, &file, MIB, 250).output().unwrap();
        done.store(true, Ordering::Relaxed);
        out
    });
    assert!(
        out.status.success(),
        "the backup beside {} prunes failed:\n{}",
        prunes.load(Ordering::Relaxed),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["snapshot"].as_str().unwrap().to_owned();
    let (prunes, protected, alive) = (
        prunes.into_inner(),
        protected.into_inner(),
        seen_alive.into_inner(),
    );
    println!(
        "{}: a {MIB} MiB backup ran beside {prunes} prunes (--grace 1s); {alive} saw it \
         running, {protected} pack decisions deferred",
        repo.location
    );
    assert!(
        alive >= 2 && protected >= 1,
        "the prunes must have seen the backup running and left its packs alone: \
         {alive} saw it, {protected} protected"
    );
    // Whatever they marked meanwhile has passed its grace: a last prune deletes garbage only.
    std::thread::sleep(Duration::from_millis(1100));
    prune_json(repo, &["--grace", "1s"]);
    let check = repo.run(&["check", "--read-data"]);
    assert!(
        check.status.success(),
        "check --read-data:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(repo.dump(&id, "source.bin") == fs::read(&file).unwrap());
}

#[test]
fn fs_backup_across_prunes_completes() {
    let work = tempfile::tempdir().unwrap();
    long_backup_across_prunes(&Repo::fs(&work.path().join("repo")), work.path());
}

#[test]
fn s3_backup_across_prunes_completes() {
    let Some(repo) = Repo::s3("maintenance") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    long_backup_across_prunes(&repo, work.path());
}

fn count(dir: &Path) -> usize {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count()
}

fn index_objects(repo: &Path) -> usize {
    fs::read_dir(repo.join("index")).map_or(0, |d| d.count())
}

/// Starts `backup` and kills it as soon as `ready` holds (failing if it ends first or two
/// minutes pass).
fn kill_when(mut backup: Command, ready: impl Fn() -> bool) {
    let mut child = backup
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it was killed"
        );
        assert!(
            Instant::now() < deadline,
            "not ready to kill after two minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn killed_backup_is_reclaimed_after_its_session_times_out() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    let repo = Repo::fs(&dir);
    repo.init_with(&SMALL_PACKS);
    let file = source(work.path(), 40);
    // Killed once it has indexed some packs as it went (an announcement, then heartbeats).
    kill_when(slow_backup(&repo, &file, 40, 200), || {
        index_objects(&dir) >= 3 && count(&dir.join("data")) >= 4
    });
    let packs = count(&dir.join("data"));
    assert!(
        packs >= 4,
        "packs uploaded when it was killed stay: {packs}"
    );

    // Its session is alive for the default hour: nothing of it is marked.
    let r = prune_json(&repo, &["--grace", "1s"]);
    assert_eq!(r["sessions_alive"], 1, "{r}");
    assert_eq!(r["packs_marked"], 0, "{r}");
    assert_eq!(r["packs_protected"].as_u64(), Some(packs as u64), "{r}");

    // Timed out: orphans like any other, marked, then deleted after the grace.
    std::thread::sleep(Duration::from_millis(2100));
    let r = prune_json(&repo, &["--grace", "1s", "--session-timeout", "2s"]);
    assert_eq!(r["sessions_alive"], 0, "{r}");
    assert_eq!(r["packs_marked"].as_u64(), Some(packs as u64), "{r}");
    std::thread::sleep(Duration::from_millis(2100));
    let r = prune_json(&repo, &["--grace", "1s", "--session-timeout", "2s"]);
    assert_eq!(r["packs_deleted"].as_u64(), Some(packs as u64), "{r}");
    assert_eq!(count(&dir.join("data")), 0);
    println!("killed backup: {packs} packs, protected while alive, reclaimed after its session timed out");
    repo.ok(&["check"]);
}

#[test]
fn interrupted_backup_is_reused_by_the_next() {
    // The index objects a killed backup wrote as it went let the next backup skip what it
    // uploaded.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    let repo = Repo::fs(&dir);
    repo.init_with(&SMALL_PACKS);
    let file = source(work.path(), 16);
    kill_when(slow_backup(&repo, &file, 16, 200), || {
        index_objects(&dir) >= 4
    });
    let v = repo.backup_json(&[
        "--stdin-filename",
        "source.bin",
        "--stdin-from-command",
        "--",
        "cat",
        file.to_str().unwrap(),
    ]);
    let added = v["summary"]["bytes_added"].as_u64().unwrap();
    println!(
        "after the killed backup, the next added {added} of {} bytes",
        16 << 20
    );
    assert!(added < (15 << 20), "nothing was reused: {v}");
}
