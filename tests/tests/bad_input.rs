//! Bad input gets a clear error naming what is wrong, and nothing already stored is damaged.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use podvault_tests::{fill, generate_tree, podvault_bin, Repo};
use rand::SeedableRng;

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
    repo.ok(&[
        "init",
        "--kdf-memory-kib",
        "1024",
        "--kdf-iterations",
        "1",
        "--pack-size-mib",
        "1",
    ]);
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

#[test]
fn a_damaged_index_or_snapshot_is_named() {
    let work = tempfile::tempdir().unwrap();
    let repo_dir = work.path().join("repo");
    let repo = Repo::fs(&repo_dir);
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    repo.init();
    repo.backup_json(&[src.to_str().unwrap()]);
    for dir in ["index", "snapshots"] {
        let victim = fs::read_dir(repo_dir.join(dir))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
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
