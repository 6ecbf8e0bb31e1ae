//! Bad input gets a clear error naming what is wrong, and nothing already stored is damaged.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use podvault_tests::{fill, generate_tree, init_args, podvault_bin, Repo};
use rand::{Rng, SeedableRng};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn wrong_password_missing_repository_and_double_init() {
    let work = tempfile::tempdir().unwrap();
    let repo = Repo::fs(&work.path().join("repo"));
    let out = repo.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no podvault repository at"),
        "{}",
        stderr(&out)
    );
    repo.init();
    let out = repo.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let wrong = Repo {
        password: "battery staple".into(),
        ..repo.clone()
    };
    let out = wrong.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("wrong password"), "{}", stderr(&out));
    let out = repo.run(&["backup", "/definitely/not/here"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/definitely/not/here"),
        "{}",
        stderr(&out)
    );
    let out = repo.run(&["restore", "deadbeef", "--target", "/tmp/x"]);
    assert!(
        stderr(&out).contains("no snapshot matches"),
        "{}",
        stderr(&out)
    );
    // Nothing above changed the repository.
    assert_eq!(
        fs::read_dir(work.path().join("repo/snapshots"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

fn largest_file(dir: &Path) -> PathBuf {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .into_path()
}

#[test]
fn a_damaged_pack_fails_the_affected_files_only_and_never_writes_wrong_bytes() {
    let work = tempfile::tempdir().unwrap();
    let repo_dir = work.path().join("repo");
    let repo = Repo::fs(&repo_dir);
    let src = work.path().join("src");
    generate_tree(&src, 3, 24 << 20);
    // Small packs, so damage to one pack leaves others intact.
    repo.init_with(&["--pack-size-mib", "1"]);
    repo.backup_json(&[src.to_str().unwrap()]);

    let pack = largest_file(&repo_dir.join("data"));
    let mut bytes = fs::read(&pack).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x01;
    fs::write(&pack, bytes).unwrap();
    let pack_name = pack.file_name().unwrap().to_string_lossy().into_owned();

    let out_dir = work.path().join("out");
    let out = repo.run(&["restore", "latest", "--target", out_dir.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&pack_name), "error names the pack: {err}");
    assert!(err.contains("restore incomplete"), "{err}");
    // Every file that was restored is byte-identical; the damaged one is absent.
    let mut restored = 0;
    for e in walkdir::WalkDir::new(&out_dir).min_depth(1) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(&out_dir).unwrap();
            assert_eq!(
                fs::read(e.path()).unwrap(),
                fs::read(src.join(rel)).unwrap(),
                "{rel:?} has wrong bytes"
            );
            restored += 1;
        }
    }
    assert!(restored > 250, "unaffected files are restored ({restored})");
}

/// A local repository (in `work/repo`) holding one snapshot of `work/src`, a one-file tree.
fn one_snapshot() -> (tempfile::TempDir, PathBuf, Repo, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let repo_dir = work.path().join("repo");
    let repo = Repo::fs(&repo_dir);
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    repo.init();
    repo.backup_json(&[src.to_str().unwrap()]);
    (work, repo_dir, repo, src)
}

#[test]
fn a_damaged_index_or_snapshot_is_named() {
    let (work, repo_dir, repo, _) = one_snapshot();
    for dir in ["index", "snapshots"] {
        // The largest object: the backup's index objects include small ones that only name
        // its session (losing one of those loses nothing, and the restore rightly succeeds).
        let victim = fs::read_dir(repo_dir.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .max_by_key(|p| fs::metadata(p).unwrap().len())
            .unwrap();
        let original = fs::read(&victim).unwrap();
        let mut bad = original.clone();
        bad[original.len() / 2] ^= 0x80;
        fs::write(&victim, &bad).unwrap();
        let out = repo.run(&[
            "restore",
            "latest",
            "--target",
            work.path().join("o").to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{dir}/")) && err.contains("damaged"),
            "{err}"
        );
        fs::write(&victim, original).unwrap();
    }
    repo.ok(&[
        "restore",
        "latest",
        "--target",
        work.path().join("ok").to_str().unwrap(),
    ]);
}

#[test]
fn unreadable_files_are_reported_and_the_backup_completes_with_exit_code_3() {
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let repo = Repo::fs(&work.path().join("repo"));
    let src = work.path().join("src");
    fs::create_dir_all(src.join("locked-dir")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    fs::write(src.join("ok.txt"), fill(&mut rng, 5000, true)).unwrap();
    fs::write(src.join("secret.txt"), b"no").unwrap();
    fs::write(src.join("locked-dir/inner"), b"no").unwrap();
    fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(src.join("locked-dir"), fs::Permissions::from_mode(0o000)).unwrap();
    repo.init();
    for e in walkdir::WalkDir::new(work.path().join("repo")) {
        fs::set_permissions(e.unwrap().path(), fs::Permissions::from_mode(0o777)).unwrap();
    }
    // Root reads everything, so run the backup as an unprivileged user when we are root.
    let mut cmd = repo.cmd(&["backup", "--json", src.to_str().unwrap()]);
    if nix_is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(podvault_bin())
            .args(["backup", "--json", src.to_str().unwrap()]);
        c.env("PODVAULT_REPOSITORY", &repo.location)
            .env("PODVAULT_PASSWORD", &repo.password);
        cmd = c;
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = v["summary"]["errors"].to_string();
    assert!(
        errors.contains("secret.txt") && errors.contains("locked-dir"),
        "{errors}"
    );
    assert_eq!(v["summary"]["files_new"], 1, "ok.txt is stored");
    let restored = work.path().join("out");
    repo.ok(&["restore", "latest", "--target", restored.to_str().unwrap()]);
    assert_eq!(
        fs::read(restored.join("ok.txt")).unwrap(),
        fs::read(src.join("ok.txt")).unwrap()
    );
    assert!(!restored.join("secret.txt").exists());
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

// ---- repository structure missing ----

#[test]
fn all_key_files_removed_is_named() {
    let (_work, repo_dir, repo, src) = one_snapshot();
    for k in fs::read_dir(repo_dir.join("keys")).unwrap() {
        fs::remove_file(k.unwrap().path()).unwrap();
    }
    for args in [&["snapshots"][..], &["backup", src.to_str().unwrap()]] {
        let out = repo.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("keys/") && err.contains("no key files"),
            "{err}"
        );
    }
    // Nothing was written: still one snapshot, and still no key.
    assert_eq!(fs::read_dir(repo_dir.join("snapshots")).unwrap().count(), 1);
    assert_eq!(fs::read_dir(repo_dir.join("keys")).unwrap().count(), 0);
}

#[test]
fn repository_config_missing_is_named() {
    let (work, repo_dir, repo, src) = one_snapshot();
    fs::remove_file(repo_dir.join("config")).unwrap();
    let target = work.path().join("out");
    for args in [
        &["snapshots"][..],
        &["backup", src.to_str().unwrap()],
        &["restore", "latest", "--target", target.to_str().unwrap()],
    ] {
        let out = repo.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("config") && err.contains(repo_dir.to_str().unwrap()),
            "{err}"
        );
    }
    assert!(!target.exists(), "a failed restore created its target");
    assert_eq!(fs::read_dir(repo_dir.join("snapshots")).unwrap().count(), 1);
}

/// On a repository that lost its config, `init` must not write a second master key beside
/// the old keys and snapshots (the old data would no longer open).
#[test]
fn init_refuses_a_location_that_still_holds_keys_or_snapshots() {
    let (_work, repo_dir, repo, _) = one_snapshot();
    fs::remove_file(repo_dir.join("config")).unwrap();
    let out = repo.run(&init_args(&[]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(fs::read_dir(repo_dir.join("keys")).unwrap().count(), 1);
}

// ---- S3 servers ----

#[test]
fn s3_bucket_missing_is_named() {
    let Some(good) = Repo::s3("no-bucket") else {
        return;
    };
    let nonce: u64 = rand::random();
    let bucket = format!("podvault-no-such-bucket-{nonce:016x}");
    let repo = Repo {
        location: format!("s3://{bucket}/repo"),
        ..good
    };
    let work = tempfile::tempdir().unwrap();
    fs::write(work.path().join("f"), b"data").unwrap();
    let out = repo.run(&init_args(&[]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&bucket) && err.contains("does not exist"),
        "init names the missing bucket: {err}"
    );
    for args in [
        &["snapshots"][..],
        &["backup", work.path().to_str().unwrap()],
    ] {
        let out = repo.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&bucket), "{args:?} names the bucket: {err}");
    }
}

/// The signature-checking S3 server (s3s-fs) that `tests/run.sh` starts, or `None` when it
/// is absent (allowed only outside CI).
fn s3s_repo(prefix: &str) -> Option<Repo> {
    let Ok(endpoint) = std::env::var("PODVAULT_TEST_S3S_ENDPOINT") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide PODVAULT_TEST_S3S_ENDPOINT (tests/run.sh starts s3s-fs)"
        );
        eprintln!("skipping: PODVAULT_TEST_S3S_ENDPOINT is not set (tests/run.sh starts s3s-fs)");
        return None;
    };
    let var =
        |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} must be set with the endpoint"));
    let nonce: u64 = rand::random();
    Some(Repo {
        location: format!(
            "s3://{}/{prefix}-{nonce:016x}",
            var("PODVAULT_TEST_S3S_BUCKET")
        ),
        password: "correct horse".into(),
        env: vec![
            ("PODVAULT_S3_ENDPOINT".into(), endpoint),
            ("AWS_REGION".into(), "us-east-1".into()),
            (
                "AWS_ACCESS_KEY_ID".into(),
                var("PODVAULT_TEST_S3S_ACCESS_KEY"),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                var("PODVAULT_TEST_S3S_SECRET_KEY"),
            ),
        ],
    })
}

#[test]
fn s3_wrong_credentials_are_a_clear_auth_error() {
    let Some(repo) = s3s_repo("creds") else {
        return;
    };
    // The right credentials work, so what follows is about the credentials alone.
    repo.init();
    let work = tempfile::tempdir().unwrap();
    fs::write(work.path().join("f"), b"data").unwrap();
    repo.backup_json(&[work.path().to_str().unwrap()]);
    let with = |key: &str, secret: &str| Repo {
        env: repo
            .env
            .iter()
            .map(|(k, v)| match k.as_str() {
                "AWS_ACCESS_KEY_ID" => (k.clone(), key.to_owned()),
                "AWS_SECRET_ACCESS_KEY" => (k.clone(), secret.to_owned()),
                _ => (k.clone(), v.clone()),
            })
            .collect(),
        ..repo.clone()
    };
    let access = repo
        .env
        .iter()
        .find(|(k, _)| k == "AWS_ACCESS_KEY_ID")
        .unwrap()
        .1
        .clone();
    for bad in [
        with(&access, "not-the-secret"),
        with("not-a-key", "not-the-secret"),
    ] {
        for args in [
            &["snapshots"][..],
            &["backup", work.path().to_str().unwrap()],
        ] {
            let start = std::time::Instant::now();
            let out = bad.run(args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.contains("PermissionDenied") && err.contains("403"),
                "{args:?}: not a clear auth error: {err}"
            );
            assert!(
                err.contains(&repo.location),
                "{args:?} names the repository: {err}"
            );
            // A permanent error is not retried for a minute.
            assert!(start.elapsed() < std::time::Duration::from_secs(30));
        }
    }
    // The repository is intact.
    let out = repo.ok(&["snapshots", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

// ---- the restore target's disk fills up ----

/// A small tmpfs mounted for the test; unmounted on drop.
struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts a 4 MiB tmpfs at `dir`, or says why not (skips unless CI as root).
fn small_disk(dir: &Path) -> Option<SmallDisk> {
    fs::create_dir_all(dir).unwrap();
    if !nix_is_root() {
        eprintln!("skipping: mounting a small tmpfs needs root");
        return None;
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0755", "podvault-test"])
        .arg(dir)
        .output()
        .expect("run mount");
    if !out.status.success() {
        let why = stderr(&out);
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must be able to mount a tmpfs: {why}"
        );
        eprintln!("skipping: cannot mount a tmpfs: {why}");
        return None;
    }
    Some(SmallDisk(dir.to_owned()))
}

#[test]
fn a_full_restore_target_fails_naming_the_file_and_never_reports_success() {
    let work = tempfile::tempdir().unwrap();
    let Some(disk) = small_disk(&work.path().join("small")) else {
        return;
    };
    let repo = Repo::fs(&work.path().join("repo"));
    let src = work.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for i in 0..4 {
        fs::write(
            src.join(format!("big-{i}.bin")),
            fill(&mut rng, 3 << 20, false),
        )
        .unwrap();
    }
    for i in 0..20 {
        fs::write(
            src.join(format!("d/small-{i}.txt")),
            fill(&mut rng, 2000, true),
        )
        .unwrap();
    }
    repo.init();
    repo.backup_json(&[src.to_str().unwrap()]);
    let target = disk.0.join("target");
    let out = repo.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("restored snapshot"));
    assert!(err.contains("restore incomplete"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains(&format!("{}/big-", target.display())),
        "the error names a file: {err}"
    );
    // Whatever is there is right: no truncated or zero-filled file is left behind.
    let mut present = 0;
    for e in walkdir::WalkDir::new(&target).min_depth(1) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(&target).unwrap();
            assert!(
                fs::read(e.path()).unwrap() == fs::read(src.join(rel)).unwrap(),
                "{rel:?} was left with wrong bytes"
            );
            present += 1;
        }
    }
    assert!(
        present < 24,
        "not everything fits, so not everything is there"
    );
    drop(disk);
}

// ---- the source vanishes while the backup walks it ----

/// Every entry a snapshot records, by path: kind and size.
fn recorded(
    repo: &podvault::repository::Repository,
    index: &podvault::index::MasterIndex,
    tree: podvault_proto::TreeId,
    prefix: &Path,
    out: &mut std::collections::BTreeMap<PathBuf, (podvault_proto::tree::NodeKind, u64)>,
) {
    use std::os::unix::ffi::OsStrExt;
    for node in repo.load_tree(index, &tree).unwrap().nodes {
        let path = prefix.join(std::ffi::OsStr::from_bytes(&node.name));
        if let Some(sub) = node.subtree {
            recorded(repo, index, sub, &path, out);
        }
        out.insert(path, (node.kind, node.size));
    }
}

#[test]
fn files_vanishing_during_a_backup_never_break_it_or_the_snapshot() {
    use std::sync::atomic::{AtomicBool, Ordering};

    use podvault_proto::tree::NodeKind;
    use rand::seq::SliceRandom;

    let work = tempfile::tempdir().unwrap();
    let repo_dir = work.path().join("repo");
    let repo = Repo::fs(&repo_dir);
    let src = work.path().join("src");
    generate_tree(&src.join("seeded"), 11, 8 << 20);
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut victims = Vec::new();
    for d in 0..40 {
        let dir = src.join(format!("dir-{d:02}"));
        fs::create_dir_all(dir.join("inner")).unwrap();
        for f in 0..60 {
            let p = dir
                .join(if f % 4 == 0 { "inner" } else { "" })
                .join(format!("f-{f:02}"));
            let len = rng.random_range(0..20_000);
            fs::write(&p, fill(&mut rng, len, f % 2 == 0)).unwrap();
            victims.push(p);
        }
        victims.push(dir.join("inner"));
        if d % 8 == 0 {
            victims.push(dir);
        }
    }
    for i in 0..6 {
        let p = src.join(format!("slow-{i}.bin"));
        fs::write(&p, fill(&mut rng, 4 << 20, false)).unwrap();
        victims.push(p);
    }
    victims.shuffle(&mut rng);
    let orig = work.path().join("orig");
    assert!(std::process::Command::new("cp")
        .args(["-a"])
        .arg(&src)
        .arg(&orig)
        .status()
        .unwrap()
        .success());
    repo.init();

    let done = AtomicBool::new(false);
    let (out, deleted) = std::thread::scope(|s| {
        let deleter = s.spawn(|| {
            let mut deleted = 0;
            for v in &victims {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let r = if v.is_dir() {
                    fs::remove_dir_all(v)
                } else {
                    fs::remove_file(v)
                };
                deleted += r.is_ok() as usize;
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
            deleted
        });
        let out = repo.run(&["backup", "--json", "--threads", "1", src.to_str().unwrap()]);
        done.store(true, Ordering::Relaxed);
        (out, deleter.join().unwrap())
    });
    let err = stderr(&out);
    eprintln!(
        "{deleted} of {} paths deleted during the backup",
        victims.len()
    );
    assert!(!err.contains("panicked"), "{err}");
    let code = out.status.code();
    assert!(matches!(code, Some(0 | 1 | 3)), "{code:?}: {err}");
    if code == Some(1) {
        // Failing is allowed if it is clear, and it must leave no snapshot.
        assert!(
            err.starts_with("error: ") || err.contains("\nerror: "),
            "{err}"
        );
        assert_eq!(
            fs::read_dir(repo_dir.join("snapshots"))
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
        return;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "the backup reported {} vanished path(s) and {} file(s) changed while read",
        v["summary"]["errors"].as_array().unwrap().len(),
        v["summary"]["changed_during_read"]
            .as_array()
            .unwrap()
            .len()
    );
    for e in v["summary"]["errors"].as_array().unwrap() {
        let path = e["path"].as_str().unwrap();
        assert!(path.starts_with(src.to_str().unwrap()), "{e}");
        assert!(!e["message"].as_str().unwrap().is_empty(), "{e}");
    }
    assert_eq!(
        code == Some(3),
        !v["summary"]["errors"].as_array().unwrap().is_empty()
    );

    // The snapshot restores to exactly what it recorded, with the original bytes.
    let lib = podvault::repository::Repository::open(
        &podvault::backend::Location::Fs(repo_dir.clone()),
        repo.password.as_bytes(),
    )
    .unwrap();
    let index = lib.load_index().unwrap();
    let id: podvault_proto::SnapshotId = v["snapshot"].as_str().unwrap().parse().unwrap();
    let snap = lib.load::<podvault_proto::snapshot::Snapshot>(&id).unwrap();
    let mut want = std::collections::BTreeMap::new();
    recorded(&lib, &index, snap.tree, Path::new(""), &mut want);
    let restored = work.path().join("restored");
    repo.ok(&[
        "restore",
        &id.to_hex(),
        "--target",
        restored.to_str().unwrap(),
    ]);
    let mut got = std::collections::BTreeMap::new();
    for e in walkdir::WalkDir::new(&restored).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(&restored).unwrap().to_owned();
        let m = e.path().symlink_metadata().unwrap();
        let ft = m.file_type();
        if ft.is_file() {
            assert!(
                fs::read(e.path()).unwrap() == fs::read(orig.join(&rel)).unwrap(),
                "{rel:?} differs from the original"
            );
        } else if ft.is_symlink() {
            assert_eq!(
                fs::read_link(e.path()).unwrap(),
                fs::read_link(orig.join(&rel)).unwrap()
            );
        }
        got.insert(rel, ft);
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the restore holds exactly the recorded entries"
    );
    for (rel, (kind, size)) in &want {
        let ft = got[rel];
        match kind {
            NodeKind::File => {
                assert!(ft.is_file(), "{rel:?}");
                assert_eq!(
                    fs::metadata(restored.join(rel)).unwrap().len(),
                    *size,
                    "{rel:?}"
                );
            }
            NodeKind::Dir => assert!(ft.is_dir(), "{rel:?}"),
            NodeKind::Symlink => assert!(ft.is_symlink(), "{rel:?}"),
            _ => {}
        }
    }
    let check = repo.run(&["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("no errors were found"));
}
