//! Concurrent writers with prune beside them, on the fs backend and on the real S3 server.
//!
//! Four `podvault backup` processes (different sources sharing much of their data) run
//! rounds of backups into one repository while another thread runs `forget` + `prune` with a
//! short grace period in a loop. A backup may refuse to commit when a prune marked a pack it
//! depends on long enough ago (the protocol in the engine's `prune` module); it must say so,
//! and a retry must succeed. Afterwards `check --read-data` is clean and every snapshot that
//! exists restores byte-identical to the source as it was when that snapshot was taken.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use podvault_tests::{fill, read_tree, Entry, Repo, SMALL_PACKS};
use rand::{Rng, SeedableRng};

const WRITERS: usize = 4;
const ROUNDS: usize = 4;

type Expected = Mutex<BTreeMap<String, Vec<(Vec<u8>, Entry)>>>;

fn write_source(dir: &Path, writer: usize, round: usize) {
    fs::create_dir_all(dir.join("own")).unwrap();
    fs::create_dir_all(dir.join("shared")).unwrap();
    // Shared: identical across writers (same seed), changing per round.
    let mut shared = rand::rngs::StdRng::seed_from_u64(1000 + round as u64);
    for i in 0..6 {
        fs::write(
            dir.join("shared").join(format!("s{i}")),
            fill(&mut shared, 200_000 + i * 50_000, i % 2 == 0),
        )
        .unwrap();
    }
    // Own: a few files rewritten each round.
    let mut own = rand::rngs::StdRng::seed_from_u64((writer * 100 + round) as u64);
    for i in 0..4 {
        let len = own.random_range(50_000..600_000);
        fs::write(
            dir.join("own").join(format!("o{}", (round + i) % 6)),
            fill(&mut own, len, false),
        )
        .unwrap();
    }
}

fn run(repo: &Repo, work: &Path) -> (usize, usize, usize) {
    repo.init_with(&SMALL_PACKS);
    let expected: Expected = Mutex::new(BTreeMap::new());
    let done = AtomicBool::new(false);
    let refused = AtomicUsize::new(0);
    let prunes = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (expected, refused) = (&expected, &refused);
            writers.push(s.spawn(move || {
                let src = work.join(format!("src{w}"));
                for round in 0..ROUNDS {
                    write_source(&src, w, round);
                    let tree = read_tree(&src);
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        let out = repo.run(&["backup", "--json", src.to_str().unwrap()]);
                        if out.status.success() {
                            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                            let id = v["snapshot"].as_str().unwrap().to_owned();
                            expected.lock().unwrap().insert(id, tree);
                            break;
                        }
                        let err = String::from_utf8_lossy(&out.stderr);
                        assert!(
                            err.contains("while the backup ran") && tries < 6,
                            "writer {w} round {round} failed: {err}"
                        );
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let pruner = s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                // Keep two snapshots per writer: the rest becomes garbage for prune.
                repo.ok(&["forget", "--keep-last", "2"]);
                repo.ok(&["prune", "--grace", "2s", "--repack-threshold", "30"]);
                prunes.fetch_add(1, Ordering::Relaxed);
            }
        });
        let results: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
        done.store(true, Ordering::Relaxed);
        pruner.join().unwrap();
        for r in results {
            if let Err(panic) = r {
                std::panic::resume_unwind(panic);
            }
        }
    });

    // Marked packs age past their grace period (rounded up to whole seconds); a final prune
    // deletes what is garbage.
    repo.ok(&["forget", "--keep-last", "2"]);
    repo.ok(&["prune", "--grace", "2s"]);
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let last: serde_json::Value =
        serde_json::from_str(&repo.ok(&["prune", "--grace", "2s", "--json"])).unwrap();
    assert!(
        last["packs_deleted"].as_u64().unwrap() > 0,
        "prune never reclaimed anything: {last}"
    );
    let check = repo.run(&["check", "--read-data"]);
    assert!(
        check.status.success(),
        "check after concurrent writers + prune:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    let expected = expected.into_inner().unwrap();
    let mut restored = 0;
    for s in snaps.as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let out = work.join(format!("restore-{id}"));
        repo.ok(&["restore", id, "--target", out.to_str().unwrap()]);
        assert!(
            read_tree(&out) == expected[id],
            "snapshot {id} does not restore byte-identical"
        );
        fs::remove_dir_all(&out).unwrap();
        restored += 1;
    }
    assert_eq!(restored, WRITERS * 2, "forget --keep-last 2 per writer");
    (
        prunes.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        restored,
    )
}

#[test]
fn fs_four_writers_and_prune_lose_nothing() {
    let work = tempfile::tempdir().unwrap();
    let (prunes, refused, restored) = run(&Repo::fs(&work.path().join("repo")), work.path());
    println!(
        "fs: {WRITERS} writers × {ROUNDS} rounds beside {prunes} prunes; {refused} commit(s) \
         refused and retried; {restored} snapshots restored byte-identical"
    );
    assert!(prunes >= 1);
}

#[test]
fn s3_four_writers_and_prune_lose_nothing() {
    let Some(repo) = Repo::s3("concurrent") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (prunes, refused, restored) = run(&repo, work.path());
    println!(
        "s3: {WRITERS} writers × {ROUNDS} rounds beside {prunes} prunes; {refused} commit(s) \
         refused and retried; {restored} snapshots restored byte-identical"
    );
    assert!(prunes >= 1);
}
