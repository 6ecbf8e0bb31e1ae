//! The local metadata cache and reads shaped for object storage, with the real `podvault`
//! binary against a real S3 server (moto, started by `tests/run.sh`) through a counting
//! proxy, and on local directories.
//!
//! What is proved:
//! - with a warm cache a no-change backup makes the same number of requests for a tree of
//!   10 directories as for one of 600 (O(1) in the number of directories), and a cold cache
//!   costs a few requests more, the same for both (whole tree packs, not one request per
//!   directory); a restore's requests do not grow with the number of directories either;
//! - a damaged cache entry (flipped byte, truncated, another pack's bytes under its name) is
//!   detected, replaced, and never changes what is restored or listed;
//! - entries of another repository are never used (separate directories by repository id,
//!   and a foreign entry planted under a valid name fails verification);
//! - several processes sharing one cold cache all succeed with identical results;
//! - `--no-cache` reads everything from the repository and writes no cache.

use std::fs;
use std::path::{Path, PathBuf};

use podvault_tests::proxy::{FaultConfig, FaultProxy, RequestKind};
use podvault_tests::{assert_same_tree, fill, generate_tree, Repo};
use rand::SeedableRng;

/// `dirs` directories (two levels), each with a few small files; seeded.
fn wide_tree(root: &Path, dirs: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for d in 0..dirs {
        let dir = root
            .join(format!("d{:03}", d / 20))
            .join(format!("e{d:04}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..3 {
            fs::write(dir.join(format!("f{f}")), fill(&mut rng, 600, true)).unwrap();
        }
    }
}

/// The repository with its cache under `cache`.
fn with_cache(repo: &Repo, cache: &Path) -> Repo {
    let mut r = repo.clone();
    r.env.retain(|(k, _)| k != "PODVAULT_CACHE_DIR");
    r.env
        .push(("PODVAULT_CACHE_DIR".into(), cache.display().to_string()));
    r
}

/// The same S3 repository reached through `proxy`.
fn via(repo: &Repo, proxy: &FaultProxy) -> Repo {
    let mut r = repo.clone();
    for (k, v) in &mut r.env {
        if k == "PODVAULT_S3_ENDPOINT" {
            *v = proxy.url();
        }
    }
    r
}

/// Requests a command made through the proxy.
fn requests(proxy: &FaultProxy, repo: &Repo, args: &[&str]) -> u64 {
    let before = proxy.counts().requests;
    repo.ok(args);
    proxy.counts().requests - before
}

/// Cache entry files (not directories or temporaries) under `root`.
fn entries(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            let name = e.file_name().to_string_lossy();
            !name.starts_with('.') && name != "CACHEDIR.TAG"
        })
        .map(|e| e.into_path())
        .collect()
}

/// Figures of one tree size: requests of a cold no-change backup, a warm one, and a restore
/// with a warm cache.
#[derive(Debug, PartialEq, Eq)]
struct Figures {
    cold: u64,
    warm: u64,
    restore: u64,
}

fn measure(dirs: usize) -> Option<Figures> {
    let base = Repo::s3(&format!("cache-requests-{dirs}"))?;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    wide_tree(&src, dirs, 7);
    let proxy = FaultProxy::start(
        &base
            .env
            .iter()
            .find(|(k, _)| k == "PODVAULT_S3_ENDPOINT")
            .unwrap()
            .1,
        FaultConfig::all(0.0, std::time::Duration::ZERO, 1),
    )
    .unwrap();
    let repo = with_cache(&via(&base, &proxy), &tmp.path().join("cache"));
    repo.init();
    let src_s = src.to_str().unwrap();
    repo.ok(&["backup", "-q", src_s]);
    // A new machine: the cache is empty.
    fs::remove_dir_all(tmp.path().join("cache")).unwrap();
    let cold = requests(&proxy, &repo, &["backup", "-q", src_s]);
    let gets = proxy.traffic().requests(RequestKind::Get);
    let warm = requests(&proxy, &repo, &["backup", "-q", src_s]);
    // Warm, and the previous backup's objects written through: the config and the key file
    // are the only objects read.
    let warm_gets = proxy.traffic().requests(RequestKind::Get) - gets;
    assert_eq!(
        warm_gets, 2,
        "GETs of a warm no-change backup ({dirs} directories)"
    );
    let target = tmp.path().join("restored");
    let restore = requests(
        &proxy,
        &repo,
        &[
            "restore",
            "latest",
            "-q",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_same_tree(&src, &target);
    eprintln!(
        "{dirs} directories: no-change backup {cold} requests with a cold cache, {warm} warm; \
         restore {restore}"
    );
    Some(Figures {
        cold,
        warm,
        restore,
    })
}

#[test]
fn s3_requests_do_not_grow_with_the_number_of_directories() {
    let Some(small) = measure(10) else { return };
    let large = measure(600).unwrap();
    // Before whole-pack tree reads, the large tree's no-change backup made one ranged GET
    // per directory (600+) even with everything else equal.
    assert_eq!(
        small.warm, large.warm,
        "warm no-change backup: {small:?} vs {large:?}"
    );
    assert_eq!(
        small.cold, large.cold,
        "cold no-change backup: {small:?} vs {large:?}"
    );
    assert!(
        small.cold > small.warm,
        "a cold cache must fetch something: {small:?}"
    );
    // Restores read the same packs; the 600-directory tree has more file data (1800 vs 30
    // small files) but it fits in a few packs either way.
    assert!(
        large.restore <= small.restore + 4,
        "restore requests grew with directories: {small:?} vs {large:?}"
    );
}

/// A local repository with its cache; returns (repo, source, cache root).
fn local_setup(tmp: &Path) -> (Repo, PathBuf, PathBuf) {
    let src = tmp.join("src");
    generate_tree(&src, 11, 200_000);
    wide_tree(&src.join("wide"), 80, 12);
    let cache = tmp.join("cache");
    let repo = with_cache(&Repo::fs(&tmp.join("repo")), &cache);
    repo.init();
    repo.ok(&["backup", "-q", src.to_str().unwrap()]);
    (repo, src, cache)
}

#[test]
fn damaged_cache_entries_are_detected_and_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src, cache) = local_setup(tmp.path());
    let listing = repo.ok(&["ls", "latest"]);
    let files = entries(&cache);
    let kinds = |dir: &str| {
        files
            .iter()
            .filter(|p| p.parent().unwrap().ends_with(dir))
            .count()
    };
    assert!(
        kinds("snapshots") >= 1 && kinds("index") >= 1 && kinds("trees") >= 1,
        "snapshots, index and tree packs are cached: {files:?}"
    );
    let originals: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect();

    // Three kinds of damage: a flipped byte, a truncation, and another entry's bytes.
    let foreign = originals
        .iter()
        .find(|(p, _)| p.parent().unwrap().ends_with("snapshots"))
        .unwrap()
        .1
        .clone();
    for (i, (path, bytes)) in originals.iter().enumerate() {
        let mut damaged = bytes.clone();
        match i % 3 {
            0 => {
                let mid = damaged.len() / 2;
                damaged[mid] ^= 0x40;
            }
            1 => damaged.truncate(damaged.len() / 2),
            _ => damaged = foreign.clone(),
        }
        if damaged == *bytes {
            damaged.push(0);
        }
        fs::write(path, damaged).unwrap();
    }
    let out = repo.run(&["ls", "latest"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), listing);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged cache entry"),
        "the damage is reported: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = tmp.path().join("restored");
    repo.ok(&[
        "restore",
        "latest",
        "-q",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_same_tree(&src, &target);
    // Every entry read again is intact (replaced from the repository).
    for (path, bytes) in &originals {
        if let Ok(now) = fs::read(path) {
            assert_eq!(&now, bytes, "{} was replaced by good bytes", path.display());
        }
    }
    // A no-change backup on the repaired cache finds every file unchanged.
    let j = repo.backup_json(&["-q", src.to_str().unwrap()]);
    assert_eq!(j["summary"]["files_new"].as_u64(), Some(0), "{j}");
    assert_eq!(j["summary"]["files_changed"].as_u64(), Some(0), "{j}");
}

/// The per-repository directories of a cache root.
fn repo_dirs(cache: &Path) -> Vec<PathBuf> {
    fs::read_dir(cache)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.path())
        .collect()
}

#[test]
fn another_repositorys_cache_is_never_used() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _src_a, cache) = local_setup(tmp.path());
    a.ok(&["ls", "latest"]);
    let dir_a = repo_dirs(&cache).pop().unwrap();
    let src_b = tmp.path().join("src-b");
    generate_tree(&src_b, 99, 50_000);
    let b = with_cache(&Repo::fs(&tmp.path().join("repo-b")), &cache);
    b.init();
    b.ok(&["backup", "-q", src_b.to_str().unwrap()]);
    let listing = b.ok(&["ls", "latest"]);
    let dirs = repo_dirs(&cache);
    assert_eq!(dirs.len(), 2, "one directory per repository id: {dirs:?}");
    let dir_b = dirs.iter().find(|d| **d != dir_a).unwrap().clone();
    for kind in ["snapshots", "index", "trees"] {
        let a_entry = entries(&dir_a.join(kind)).into_iter().next().unwrap();
        for b_entry in entries(&dir_b.join(kind)) {
            fs::copy(&a_entry, &b_entry).unwrap();
        }
    }
    let out = b.run(&["ls", "latest"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), listing);
    let target = tmp.path().join("restored-b");
    b.ok(&[
        "restore",
        "latest",
        "-q",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_same_tree(&src_b, &target);
}

#[test]
fn processes_sharing_a_cold_cache_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src, cache) = local_setup(tmp.path());
    let listing = repo.ok(&["ls", "latest"]);
    fs::remove_dir_all(&cache).unwrap();
    let children: Vec<_> = (0..6)
        .map(|i| {
            let target = tmp.path().join(format!("r{i}"));
            let args: Vec<String> = if i % 2 == 0 {
                vec!["ls".into(), "latest".into()]
            } else {
                vec![
                    "restore".into(),
                    "latest".into(),
                    "-q".into(),
                    "--target".into(),
                    target.display().to_string(),
                ]
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            (
                i,
                target,
                repo.cmd(&args)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for (i, target, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "process {i}: {out:?}");
        if i % 2 == 0 {
            assert_eq!(String::from_utf8_lossy(&out.stdout), listing);
        } else {
            assert_same_tree(&src, &target);
        }
    }
    assert!(!entries(&cache).is_empty());
}

#[test]
fn no_cache_writes_no_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    generate_tree(&src, 3, 10_000);
    let cache = tmp.path().join("cache");
    let repo = with_cache(&Repo::fs(&tmp.path().join("repo")), &cache);
    repo.init();
    repo.ok(&["--no-cache", "backup", "-q", src.to_str().unwrap()]);
    repo.ok(&["--no-cache", "backup", "-q", src.to_str().unwrap()]);
    let target = tmp.path().join("restored");
    repo.ok(&[
        "--no-cache",
        "restore",
        "latest",
        "-q",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_same_tree(&src, &target);
    assert!(
        entries(&cache).is_empty(),
        "--no-cache wrote {:?}",
        entries(&cache)
    );
}
