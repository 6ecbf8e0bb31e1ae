//! Bit rot: seeded flips and truncations in packs, index objects, snapshots and key files.
//!
//! For every case `check --read-data` exits non-zero and names the damaged object; a
//! restore of the affected snapshot exits non-zero, and every file it does write is
//! byte-identical to the source (never wrong bytes), while unaffected files are restored.

use std::fs;
use std::path::{Path, PathBuf};

use podvault_tests::{generate_tree, read_tree, Repo, CHEAP_KDF, SMALL_PACKS};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip,
    Truncate,
    Delete,
}

fn objects(repo: &Path, dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(repo.join(dir))
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    v.sort();
    v
}

/// True when the index object at `path` of the repository at `repo` lists a pack.
fn indexes_packs(repo: &Path, path: &Path) -> bool {
    use podvault_proto::index::IndexFile;
    use podvault_proto::IndexId;
    let r = podvault::repository::Repository::open(
        &podvault::backend::Location::Fs(repo.to_path_buf()),
        Repo::fs(repo).password.as_bytes(),
    )
    .unwrap();
    let id: IndexId = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
    !r.load::<IndexFile>(&id).unwrap().packs.is_empty()
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from).into_iter().flatten() {
        let rel = e.path().strip_prefix(from).unwrap();
        let dst = to.join(rel);
        if e.file_type().is_dir() {
            fs::create_dir_all(&dst).unwrap();
        } else {
            fs::copy(e.path(), &dst).unwrap();
        }
    }
}

fn damage(path: &Path, how: Damage, rng: &mut impl Rng) {
    let mut bytes = fs::read(path).unwrap();
    match how {
        Damage::Flip => {
            let i = rng.random_range(0..bytes.len());
            bytes[i] ^= 1 << rng.random_range(0..8);
            fs::write(path, bytes).unwrap();
        }
        Damage::Truncate => {
            let keep = rng.random_range(0..bytes.len());
            bytes.truncate(keep);
            fs::write(path, bytes).unwrap();
        }
        Damage::Delete => fs::remove_file(path).unwrap(),
    }
}

#[test]
fn every_flip_and_truncation_is_detected_and_no_wrong_byte_is_restored() {
    let work = tempfile::tempdir().unwrap();
    let pristine = work.path().join("pristine");
    let repo = Repo::fs(&pristine);
    repo.init_with(&SMALL_PACKS);
    let src = work.path().join("src");
    generate_tree(&src, 11, 3 << 20);
    let snap = repo.backup_json(&[src.to_str().unwrap()])["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    // A second key, so a damaged key file is not the one that opens the repository.
    let pw2 = work.path().join("pw2");
    fs::write(&pw2, "second").unwrap();
    let mut add = vec!["key", "add", "--new-password-file", pw2.to_str().unwrap()];
    add.extend(CHEAP_KDF);
    repo.ok(&add);
    repo.ok(&["check", "--read-data"]);
    let source = read_tree(&src);
    let current_key = {
        let keys: serde_json::Value =
            serde_json::from_str(&repo.ok(&["key", "list", "--json"])).unwrap();
        keys.as_array()
            .unwrap()
            .iter()
            .find(|k| k["current"] == true)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(0xb17);
    let kinds = ["data", "index", "snapshots", "keys"];
    let mut cases = 0;
    let mut restores_checked = 0;
    for round in 0..8 {
        for kind in kinds {
            for how in [Damage::Flip, Damage::Truncate, Damage::Delete] {
                if matches!(
                    (kind, how),
                    ("keys", Damage::Delete) | ("snapshots", Damage::Delete)
                ) {
                    continue; // a removed key or snapshot is not damage: it is a removal
                }
                let case_dir = work.path().join(format!("case-{round}-{kind}-{how:?}"));
                copy_dir(&pristine, &case_dir);
                let mut candidates = objects(&case_dir, kind);
                if kind == "keys" {
                    candidates.retain(|p| !p.ends_with(&current_key));
                }
                if kind == "index" {
                    // Objects that only name a running backup's session index nothing:
                    // losing one is not damage.
                    candidates.retain(|p| indexes_packs(&case_dir, p));
                }
                let victim = candidates[rng.random_range(0..candidates.len())].clone();
                let name = victim.file_name().unwrap().to_string_lossy().into_owned();
                damage(&victim, how, &mut rng);
                cases += 1;
                let r = Repo::fs(&case_dir);

                let check = r.run(&["check", "--read-data"]);
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&check.stdout),
                    String::from_utf8_lossy(&check.stderr)
                );
                assert_eq!(
                    check.status.code(),
                    Some(1),
                    "{kind} {how:?} {name}: check did not fail:\n{text}"
                );
                assert!(
                    text.contains(&name[..16]) || kind == "index" && text.contains("blob"),
                    "{kind} {how:?}: check does not name {name}:\n{text}"
                );

                if kind == "keys" {
                    continue; // data is unaffected; check caught it, that is the point
                }
                let out = case_dir.join("restored");
                let restore = r.run(&["restore", &snap, "--target", out.to_str().unwrap()]);
                let err = String::from_utf8_lossy(&restore.stderr).into_owned();
                if kind == "index" && restore.status.success() {
                    // A damaged index object is skipped; if the blobs it listed are also
                    // indexed elsewhere the restore is complete — and must then be exact.
                    assert!(read_tree(&out) == source, "{kind} {how:?}: restore differs");
                    restores_checked += 1;
                    continue;
                }
                assert!(
                    !restore.status.success(),
                    "{kind} {how:?} {name}: restore reported success"
                );
                assert!(!err.trim().is_empty(), "{kind} {how:?}: no message");
                // Whatever was written is exactly the source: no wrong bytes.
                if out.exists() {
                    let got = read_tree(&out);
                    for (path, entry) in &got {
                        let want = source.iter().find(|(p, _)| p == path);
                        if let Some((_, want)) = want {
                            if want.is_file() {
                                assert!(
                                    entry.same_content(want),
                                    "{kind} {how:?}: {} restored with wrong bytes",
                                    String::from_utf8_lossy(path)
                                );
                            }
                        }
                    }
                    if kind == "data" && !text.contains("its contents are lost") {
                        let files = got.iter().filter(|(_, e)| e.is_file()).count();
                        assert!(files > 100, "only {files} unaffected files were restored");
                    }
                }
                restores_checked += 1;
                let _ = fs::remove_dir_all(&case_dir);
            }
        }
    }
    println!("bit rot: {cases} damaged objects, all detected by check; {restores_checked} restores verified");
}
