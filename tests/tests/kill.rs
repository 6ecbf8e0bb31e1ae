//! Crash safety: backups killed with SIGKILL at many points of their run.
//!
//! After every kill: `check --read-data` is clean, no partial snapshot is visible, every
//! earlier snapshot still restores byte-identical, and the next backup completes while
//! uploading less than a full backup whenever the killed one left packs behind (they are
//! adopted, not uploaded again). Kill points: a quarter are spread over the start-up phase
//! by time (before any pack exists); the rest fire as soon as the k-th new pack appears in
//! the repository, k = 1…, so kills land before, between and after pack uploads, during
//! index writing and just before the snapshot.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use podvault_tests::{fill, read_tree, Entry, Repo, SMALL_PACKS};
use rand::{RngCore, SeedableRng};

/// Files in the source, and how many change per round (1 MiB each, incompressible).
const FILES: usize = 24;
const CHANGED: usize = 12;
const ATTEMPTS: usize = 36;

fn rewrite(src: &Path, rng: &mut impl RngCore, round: usize) {
    for i in 0..CHANGED {
        let n = (round * CHANGED + i) % FILES;
        fs::write(src.join(format!("f{n:02}")), fill(rng, 1 << 20, false)).unwrap();
    }
    // Small files too, so trees change and many blobs are involved.
    fs::write(
        src.join("small").join(format!("s{round}")),
        fill(rng, 3000, true),
    )
    .unwrap();
}

fn count_packs(repo: &Path) -> usize {
    walkdir::WalkDir::new(repo.join("data"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .count()
}

fn snapshot_ids(repo: &Repo) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

fn restore_matches(repo: &Repo, id: &str, expected: &[(Vec<u8>, Entry)], work: &Path) {
    let out = work.join(format!("restore-{id}"));
    repo.ok(&["restore", id, "--target", out.to_str().unwrap()]);
    let got = read_tree(&out);
    assert!(
        got == expected,
        "snapshot {id} does not restore byte-identical"
    );
    fs::remove_dir_all(&out).unwrap();
}

#[test]
fn backups_killed_at_many_points_leave_a_sound_repository_and_resume() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    let repo = Repo::fs(&dir);
    repo.init_with(&SMALL_PACKS);
    let src = work.path().join("src");
    fs::create_dir_all(src.join("small")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b11);
    for n in 0..FILES {
        fs::write(src.join(format!("f{n:02}")), fill(&mut rng, 1 << 20, false)).unwrap();
    }
    let mut expected: BTreeMap<String, Vec<(Vec<u8>, Entry)>> = BTreeMap::new();
    let first = repo.backup_json(&[src.to_str().unwrap()]);
    expected.insert(first["snapshot"].as_str().unwrap().into(), read_tree(&src));

    // Calibrate: an uninterrupted backup of one round of change.
    rewrite(&src, &mut rng, 0);
    let t = Instant::now();
    let full = repo.backup_json(&[src.to_str().unwrap()]);
    let full_time = t.elapsed();
    let full_stored = full["summary"]["bytes_stored"].as_u64().unwrap();
    expected.insert(full["snapshot"].as_str().unwrap().into(), read_tree(&src));
    assert!(full_stored > (CHANGED as u64) << 20);

    let (mut killed, mut with_packs, mut finished_first) = (0, 0, 0);
    for attempt in 0..ATTEMPTS {
        rewrite(&src, &mut rng, attempt + 1);
        let before = snapshot_ids(&repo);
        let packs_before = count_packs(&dir);
        let mut child = repo
            .cmd(&["backup", "--quiet", src.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = if attempt % 4 == 0 {
            // Start-up: opening the repository, loading the index, adopting packs.
            let d = full_time.mul_f64((attempt / 4) as f64 / (ATTEMPTS / 4) as f64 * 0.3);
            std::thread::sleep(d);
            format!("{d:?}")
        } else {
            let k = 1 + (attempt - attempt / 4 - 1) % (CHANGED + 2);
            while count_packs(&dir) < packs_before + k && child.try_wait().unwrap().is_none() {
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            format!("pack {k}")
        };
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let after_kill = snapshot_ids(&repo);
        let new: Vec<&String> = after_kill
            .iter()
            .filter(|id| !before.contains(id))
            .collect();
        // A kill that lands after the snapshot was written (the process was exiting) finds
        // a committed backup: its one new snapshot must be complete and is checked below and
        // at the end like any other. Otherwise a killed backup leaves no snapshot at all.
        let interrupted = status.signal() == Some(9) && new.is_empty();
        if interrupted {
            killed += 1;
        } else {
            assert!(
                status.success() || status.signal() == Some(9),
                "backup failed on its own: {status:?}"
            );
            assert_eq!(new.len(), 1, "one backup left {} snapshots", new.len());
            expected.insert(new[0].clone(), read_tree(&src));
            finished_first += 1;
        }
        let left = count_packs(&dir) - packs_before;

        // The repository is sound, whatever the moment of the kill.
        let check = repo.run(&["check", "--read-data"]);
        assert!(
            check.status.success(),
            "check after kill #{attempt} ({delay:?}):\n{}\n{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        // Earlier snapshots restore: the oldest and the newest every time, all at the end.
        let oldest = expected.keys().next().unwrap().clone();
        restore_matches(&repo, &oldest, &expected[&oldest], work.path());

        // The next backup completes and reuses what the killed one uploaded.
        let resumed = repo.backup_json(&[src.to_str().unwrap()]);
        let stored = resumed["summary"]["bytes_stored"].as_u64().unwrap();
        expected.insert(
            resumed["snapshot"].as_str().unwrap().into(),
            read_tree(&src),
        );
        if interrupted {
            if left > 0 {
                with_packs += 1;
                assert!(
                    stored < full_stored,
                    "kill #{attempt} left {left} pack(s), yet the next backup stored {stored} of \
                     {full_stored} bytes"
                );
            } else {
                assert!(
                    stored <= full_stored + (64 << 10),
                    "{stored} > {full_stored}"
                );
            }
        }
        if attempt % 9 == 8 {
            // Prune beside the kills too: orphan packs are reclaimed, nothing else is lost.
            repo.ok(&["prune", "--grace", "0s"]);
        }
    }
    println!(
        "kill points: {ATTEMPTS} attempts, {killed} killed ({with_packs} after uploading packs), \
         {finished_first} finished before the kill; full backup {full_time:?}"
    );
    assert!(killed >= 30, "only {killed} backups were actually killed");
    assert!(
        with_packs >= 10,
        "only {with_packs} kills happened after packs were written"
    );

    repo.ok(&["check", "--read-data"]);
    for (id, tree) in &expected {
        restore_matches(&repo, id, tree, work.path());
    }
}
