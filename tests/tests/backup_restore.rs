//! Round trips, incremental behaviour and deduplication through the real `podvault` binary,
//! on the local-directory backend and on a real S3 server on 127.0.0.1.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use podvault_tests::{assert_same_tree, fill, generate_tree, Repo};
use rand::SeedableRng;

fn round_trip(repo: &Repo, work: &Path) {
    let src = work.join("src");
    generate_tree(&src, 7, 6 << 20);
    repo.init();
    let first = repo.backup_json(&[src.to_str().unwrap(), "--tag", "volume=data"]);
    assert_eq!(first["summary"]["errors"].as_array().unwrap().len(), 0);
    assert!(first["summary"]["files_new"].as_u64().unwrap() > 250);
    let out = work.join("restored");
    repo.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&src, &out);

    // `ls` shows odd names, `snapshots --json` the tags.
    let ls = repo.ok(&["ls", "latest", "a/b"]);
    assert!(ls.contains("a/b/shared-link.dat"), "{ls}");
    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(snaps[0]["tags"][0], "volume=data");
}

#[test]
fn fs_round_trip_is_byte_identical_with_metadata() {
    let work = tempfile::tempdir().unwrap();
    round_trip(&Repo::fs(&work.path().join("repo")), work.path());
}

#[test]
fn s3_round_trip_is_byte_identical_with_metadata() {
    let Some(repo) = Repo::s3("round-trip") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    round_trip(&repo, work.path());
    // A partial restore of one directory from S3 (one without hard links leaving it).
    let out = work.path().join("partial");
    repo.ok(&[
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
        "--include",
        "a/b/c",
    ]);
    assert_same_tree(&work.path().join("src/a/b/c"), &out.join("a/b/c"));
    assert!(!out.join("docs").exists());
}

#[test]
fn unchanged_data_is_neither_read_nor_stored_again() {
    let work = tempfile::tempdir().unwrap();
    let repo = Repo::fs(&work.path().join("repo"));
    let src = work.path().join("src");
    generate_tree(&src, 11, 2 << 20);
    repo.init();
    let first = repo.backup_json(&[src.to_str().unwrap()]);
    let second = repo.backup_json(&[src.to_str().unwrap()]);
    let s = &second["summary"];
    assert_eq!(s["bytes_read"], 0, "{s}");
    assert_eq!(s["bytes_added"], 0, "{s}");
    assert_eq!(s["blobs_added"], 0, "{s}");
    assert_eq!(s["files_new"], 0);
    assert_eq!(s["files_unchanged"], first["summary"]["files_new"]);
    assert_eq!(second["parent"], first["snapshot"]);

    // The same data under another path is stored once: only directory trees are new.
    let copy = work.path().join("copy");
    fs::create_dir(&copy).unwrap();
    for e in walkdir::WalkDir::new(&src).min_depth(1) {
        let e = e.unwrap();
        let to = copy.join(e.path().strip_prefix(&src).unwrap());
        let ft = e.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&to).unwrap();
        } else if ft.is_file() {
            fs::copy(e.path(), &to).unwrap();
        }
    }
    let third = repo.backup_json(&[copy.to_str().unwrap()]);
    let t = &third["summary"];
    assert!(
        t["bytes_read"].as_u64().unwrap() > 2 << 20,
        "new path: everything is read"
    );
    assert!(
        t["bytes_added"].as_u64().unwrap() < 64 << 10,
        "but only trees are new: {t}"
    );
}

#[test]
fn changing_one_mib_of_a_large_file_adds_a_few_chunks() {
    let work = tempfile::tempdir().unwrap();
    let repo = Repo::fs(&work.path().join("repo"));
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let big = src.join("disk.img");
    fs::write(&big, fill(&mut rng, 100 << 20, false)).unwrap();
    repo.init();
    let first = repo.backup_json(&[src.to_str().unwrap()]);
    let chunks_first = first["summary"]["blobs_added"].as_u64().unwrap();
    assert!(
        chunks_first > 40,
        "100 MiB at ~1 MiB average: {chunks_first}"
    );

    let f = fs::OpenOptions::new().write(true).open(&big).unwrap();
    f.write_all_at(&fill(&mut rng, 1 << 20, false), 50 << 20)
        .unwrap();
    drop(f);
    let second = repo.backup_json(&[src.to_str().unwrap()]);
    let s = &second["summary"];
    assert_eq!(s["files_changed"], 1);
    let added = s["bytes_added"].as_u64().unwrap();
    let blobs = s["blobs_added"].as_u64().unwrap();
    // One data chunk per overlapped boundary plus a tree: a handful, never a re-upload.
    assert!(blobs <= 8, "{blobs} blobs added");
    assert!(added < 20 << 20, "{added} bytes added for a 1 MiB change");
    let out = work.path().join("out");
    repo.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert!(fs::read(out.join("disk.img")).unwrap() == fs::read(&big).unwrap());
}

#[test]
fn excludes_special_files_and_diff() {
    let work = tempfile::tempdir().unwrap();
    let repo = Repo::fs(&work.path().join("repo"));
    let src = work.path().join("src");
    fs::create_dir_all(src.join("cache/deep")).unwrap();
    fs::write(src.join("keep.txt"), b"keep").unwrap();
    fs::write(src.join("scratch.tmp"), b"tmp").unwrap();
    fs::write(src.join("cache/deep/x"), b"cached").unwrap();
    nix_mkfifo(&src.join("pipe"));
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    repo.init();
    repo.backup_json(&[
        src.to_str().unwrap(),
        "--exclude",
        "*.tmp",
        "--exclude",
        "cache/**",
    ]);
    let ls = repo.ok(&["ls", "latest"]);
    assert!(
        ls.contains("keep.txt") && ls.contains("pipe") && ls.contains("sock"),
        "{ls}"
    );
    assert!(
        !ls.contains("scratch.tmp") && !ls.contains("cache/deep"),
        "{ls}"
    );

    fs::write(src.join("keep.txt"), b"changed").unwrap();
    fs::write(src.join("new.txt"), b"new").unwrap();
    repo.backup_json(&[
        src.to_str().unwrap(),
        "--exclude",
        "*.tmp",
        "--exclude",
        "cache/**",
    ]);
    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    let (a, b) = (
        snaps[0]["id"].as_str().unwrap(),
        snaps[1]["id"].as_str().unwrap(),
    );
    let diff = repo.ok(&["diff", &a[..8], b]);
    assert!(
        diff.contains("M keep.txt") && diff.contains("+ new.txt"),
        "{diff}"
    );

    let out = work.path().join("out");
    repo.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(out.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(fs::read(out.join("keep.txt")).unwrap(), b"changed");
    assert!(!out.join("sock").exists(), "sockets are not recreated");
}

fn nix_mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn forget_applies_the_policy_and_dry_run_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let repo = Repo::fs(&work.path().join("repo"));
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    repo.init();
    for i in 0..4 {
        fs::write(src.join("f"), format!("version {i}")).unwrap();
        repo.backup_json(&[src.to_str().unwrap()]);
    }
    let count = || {
        serde_json::from_str::<serde_json::Value>(&repo.ok(&["snapshots", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    let dry = repo.ok(&["forget", "--keep-last", "2", "--dry-run"]);
    assert_eq!(dry.matches("would remove").count(), 2, "{dry}");
    assert_eq!(count(), 4);
    let out = repo.run(&["forget"]);
    assert_eq!(out.status.code(), Some(1), "an empty policy is refused");
    repo.ok(&["forget", "--keep-last", "2"]);
    assert_eq!(count(), 2);
    let restored = work.path().join("out");
    repo.ok(&["restore", "latest", "--target", restored.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(restored.join("f")).unwrap(), "version 3");
}
