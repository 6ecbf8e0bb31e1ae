//! Stream backups (`backup --stdin`) and `dump`: round trips through the real binary on the
//! local backend and on a real S3 server, refusals, deduplication between two streams, and
//! the engine-level promise that a stream whose reader fails writes no snapshot.

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use podvault::archiver::{backup_stream, BackupOptions};
use podvault::backend::Location;
use podvault::error::Error;
use podvault::progress::Progress;
use podvault::repository::Repository;
use podvault_tests::{fill, Repo};
use rand::SeedableRng;

/// Seeded dump-like data: text with random stretches.
fn stream_data(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = (len - v.len()).min(1 << 20);
        let compressible = v.len() % (3 << 20) != 0;
        v.extend(fill(&mut rng, n, compressible));
    }
    v
}

fn round_trip(repo: &Repo) {
    repo.init();
    let data = stream_data(1, 9 << 20);
    let out = repo.backup_stdin_json("db.sql", &data, &["--tag", "kind=dump"]);
    let s = &out["summary"];
    assert_eq!(s["files_new"], 1, "{s}");
    assert_eq!(s["total_bytes"], data.len() as u64);
    assert_eq!(s["bytes_read"], data.len() as u64);
    assert!(out["parent"].is_null());

    let dumped = repo.dump("latest", "db.sql");
    assert!(dumped == data, "dump differs from the input");
    // Also with a leading slash and by snapshot id.
    let id = out["snapshot"].as_str().unwrap();
    assert!(repo.dump(&id[..8], "/db.sql") == data);

    // The snapshot says where it came from; the file is private to its owner.
    let snaps: serde_json::Value =
        serde_json::from_str(&repo.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(snaps[0]["paths"], serde_json::json!(["<stdin>/db.sql"]));
    assert_eq!(snaps[0]["tags"], serde_json::json!(["kind=dump"]));
    let ls: serde_json::Value =
        serde_json::from_str(repo.ok(&["--json", "ls", "latest"]).trim()).expect("one entry");
    assert_eq!(ls["path"], "db.sql");
    assert_eq!(ls["mode"], 0o600);
    assert_eq!(ls["size"], data.len() as u64);

    // A second stream of the same name: the first is its parent.
    let again = repo.backup_stdin_json("db.sql", &data, &[]);
    assert_eq!(again["parent"], out["snapshot"]);
    assert_eq!(again["summary"]["files_changed"], 1);
    // Identical content: only the root tree is new (the file's mtime is the backup's).
    assert_eq!(again["summary"]["blobs_added"], 1, "{}", again["summary"]);
    assert!(again["summary"]["bytes_added"].as_u64().unwrap() < 1024);

    // Default name, empty stream.
    let empty = repo.run_with_stdin(&["backup", "--stdin"], b"");
    assert!(empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("empty"));
    assert!(repo.dump("latest", "stdin").is_empty());
}

#[test]
fn fs_stdin_round_trip_is_byte_identical() {
    let work = tempfile::tempdir().unwrap();
    round_trip(&Repo::fs(&work.path().join("repo")));
}

#[test]
fn s3_stdin_round_trip_is_byte_identical() {
    let Some(repo) = Repo::s3("stdin") else {
        return;
    };
    round_trip(&repo);
}

/// Runs a command that must fail; returns its exit code and standard error.
fn fails(repo: &Repo, args: &[&str], input: &[u8]) -> (i32, String) {
    let out = repo.run_with_stdin(args, input);
    assert!(!out.status.success(), "{args:?} succeeded");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_stdin_and_dump_requests_are_refused_and_write_nothing() {
    let work = tempfile::tempdir().unwrap();
    let repo = Repo::fs(&work.path().join("repo"));
    repo.init();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/file"), b"content").unwrap();
    std::os::unix::fs::symlink("file", src.join("dir/link")).unwrap();
    repo.ok(&["backup", src.to_str().unwrap()]);

    // --stdin with paths: a usage error.
    let (code, err) = fails(&repo, &["backup", "--stdin", src.to_str().unwrap()], b"x");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    // Names that are not one path component.
    for bad in ["a/b", "..", ".", "", "/db.sql"] {
        let (_, err) = fails(&repo, &["backup", "--stdin", "--stdin-filename", bad], b"x");
        assert!(err.contains("one path component"), "{bad:?}: {err}");
    }
    // A name without --stdin.
    let (_, err) = fails(
        &repo,
        &[
            "backup",
            "--stdin-filename",
            "db.sql",
            src.to_str().unwrap(),
        ],
        b"",
    );
    assert!(err.contains("needs --stdin"), "{err}");
    assert_eq!(
        repo.snapshot_count(),
        1,
        "no refused backup wrote a snapshot"
    );

    // dump: not found, a directory, a symlink.
    let (_, err) = fails(&repo, &["dump", "latest", "dir/nope"], b"");
    assert!(err.contains("no such file"), "{err}");
    let (_, err) = fails(&repo, &["dump", "latest", "dir"], b"");
    assert!(err.contains("is a directory"), "{err}");
    let (_, err) = fails(&repo, &["dump", "latest", "dir/link"], b"");
    assert!(err.contains("symbolic link"), "{err}");
    let (_, err) = fails(&repo, &["dump", "latest", "dir/file/x"], b"");
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(repo.dump("latest", "dir/file"), b"content");
}

/// Every data pack of a local repository.
fn data_packs(repo_dir: &Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(repo_dir.join("data"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

#[test]
fn dump_of_a_damaged_or_missing_blob_fails_naming_file_blob_and_pack() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    let repo = Repo::fs(&dir);
    repo.init();
    let data = stream_data(2, 3 << 20);
    repo.backup_stdin_json("db.sql", &data, &[]);
    let packs = data_packs(&dir);
    // Data and tree packs; find the data pack by size.
    let pack = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let pack_name = pack.file_name().unwrap().to_string_lossy().into_owned();

    // One flipped byte in the middle of the pack.
    let original = fs::read(&pack).unwrap();
    let mut damaged = original.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    fs::write(&pack, &damaged).unwrap();
    let (code, err) = fails(&repo, &["dump", "latest", "db.sql"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("db.sql"), "names the file: {err}");
    assert!(err.contains(&pack_name), "names the pack: {err}");
    assert!(err.contains("damaged") && err.contains("blob "), "{err}");

    // The pack gone.
    fs::remove_file(&pack).unwrap();
    let (code, err) = fails(&repo, &["dump", "latest", "db.sql"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("db.sql") && err.contains(&pack_name), "{err}");
    fs::write(&pack, &original).unwrap();
    assert!(repo.dump("latest", "db.sql") == data);
}

#[test]
fn a_slightly_changed_stream_adds_only_a_few_chunks() {
    let work = tempfile::tempdir().unwrap();
    let repo = Repo::fs(&work.path().join("repo"));
    repo.init();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let first_data = fill(&mut rng, 24 << 20, false);
    let first = repo.backup_stdin_json("db.sql", &first_data, &[]);
    let chunks = first["summary"]["blobs_added"].as_u64().unwrap();
    assert!(chunks > 12, "24 MiB at ~1 MiB average: {chunks} blobs");

    // A few rows changed in place, some inserted: three local edits.
    let mut second_data = first_data.clone();
    second_data[5 << 20..(5 << 20) + 300].fill(b'x');
    second_data.splice(12 << 20..12 << 20, *b"INSERT INTO t VALUES (42);\n");
    let n = second_data.len();
    second_data.truncate(n - 1000);
    let second = repo.backup_stdin_json("db.sql", &second_data, &[]);
    let s = &second["summary"];
    let blobs = s["blobs_added"].as_u64().unwrap();
    let added = s["bytes_added"].as_u64().unwrap();
    eprintln!(
        "stream of {} MiB: first backup {chunks} blobs; after 3 small edits {blobs} blobs, {added} bytes added ({:.1}% of the stream)",
        n >> 20,
        100.0 * added as f64 / n as f64
    );
    // At most two chunks per edit, plus the root tree.
    assert!(blobs <= 7, "{s}");
    assert!(added < 12 << 20, "{s}");
    assert_eq!(second["parent"], first["snapshot"]);
    assert!(repo.dump("latest", "db.sql") == second_data);
}

/// A reader that yields `data`, then fails the way a dump command's wrapper does when the
/// command exits non-zero.
struct FailingReader {
    data: io::Cursor<Vec<u8>>,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.data.read(buf)? {
            0 => Err(io::Error::other("pg_dumpall exited with status 1")),
            n => Ok(n),
        }
    }
}

#[test]
fn a_reader_error_fails_the_backup_and_writes_no_snapshot() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    let cli = Repo::fs(&dir);
    cli.init();
    let good = stream_data(4, 4 << 20);
    cli.backup_stdin_json("db.sql", &good, &[]);

    let repo = Repository::open(
        &Location::parse(dir.to_str().unwrap()).unwrap(),
        cli.password.as_bytes(),
    )
    .unwrap();
    let opts = BackupOptions::default();
    let cancel = AtomicBool::new(false);
    // Fails mid-stream, after several chunks (and packs) were stored.
    let reader = FailingReader {
        data: io::Cursor::new(stream_data(5, 6 << 20)),
    };
    let err = backup_stream(
        &repo,
        "db.sql",
        reader,
        &opts,
        &Progress::default(),
        &cancel,
    )
    .expect_err("the backup must fail");
    assert!(matches!(err, Error::Stream { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("<stdin>/db.sql") && msg.contains("no snapshot") && msg.contains("status 1"),
        "{msg}"
    );
    // Fails on the very first read.
    let err = backup_stream(
        &repo,
        "db.sql",
        FailingReader {
            data: io::Cursor::new(Vec::new()),
        },
        &opts,
        &Progress::default(),
        &cancel,
    )
    .expect_err("the backup must fail");
    assert!(matches!(err, Error::Stream { .. }), "{err:?}");
    assert_eq!(repo.snapshots().unwrap().len(), 1, "no snapshot written");
    assert!(
        cli.dump("latest", "db.sql") == good,
        "latest is still the good one"
    );

    // Canceled before the end: no snapshot either.
    let canceled = AtomicBool::new(true);
    let err = backup_stream(
        &repo,
        "db.sql",
        io::Cursor::new(good.clone()),
        &opts,
        &Progress::default(),
        &canceled,
    )
    .expect_err("canceled");
    assert!(matches!(err, Error::Canceled), "{err:?}");
    assert_eq!(repo.snapshots().unwrap().len(), 1);

    // The repository is sound and the next stream backup works.
    cli.ok(&["check"]);
    let next = backup_stream(
        &repo,
        "db.sql",
        io::Cursor::new(good.clone()),
        &opts,
        &Progress::default(),
        &cancel,
    )
    .unwrap();
    assert_eq!(next.snapshot.paths, ["<stdin>/db.sql"]);
    assert_eq!(next.snapshot.summary.blobs_added, 1, "only the root tree");
    assert_eq!(repo.snapshots().unwrap().len(), 2);
}

/// `--stdin-from-command` stores the command's output only when it exits 0: a dump that
/// dies part-way (what a shell pipe into `--stdin` would store as a complete file) writes
/// no snapshot and fails naming the command and its exit status.
#[test]
fn a_command_that_fails_writes_no_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::fs(&tmp.path().join("repo"));
    repo.init();
    let data = tmp.path().join("data.bin");
    fs::write(&data, stream_data(5, 3 << 20)).unwrap();
    let cat = format!("cat '{}'", data.display());
    repo.ok(&[
        "backup",
        "-q",
        "--stdin-from-command",
        "--stdin-filename",
        "db.sql",
        "--",
        "sh",
        "-c",
        &cat,
    ]);
    let dumped = repo.cmd(&["dump", "latest", "db.sql"]).output().unwrap();
    assert!(dumped.status.success());
    assert_eq!(dumped.stdout, fs::read(&data).unwrap(), "byte-identical");
    let snapshots = || {
        fs::read_dir(tmp.path().join("repo/snapshots"))
            .unwrap()
            .count()
    };
    assert_eq!(snapshots(), 1);
    let cut = format!("head -c 1000000 '{}'; exit 3", data.display());
    let (code, err) = fails(
        &repo,
        &[
            "backup",
            "-q",
            "--stdin-from-command",
            "--stdin-filename",
            "db.sql",
            "--",
            "sh",
            "-c",
            &cut,
        ],
        b"",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no snapshot was written") && err.contains("exit status: 3"),
        "{err}"
    );
    assert_eq!(snapshots(), 1, "a failed command writes no snapshot");
    let (code, err) = fails(
        &repo,
        &[
            "backup",
            "--stdin-from-command",
            "--",
            "/nonexistent/dump-tool",
        ],
        b"",
    );
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/dump-tool"), "{err}");
    assert_eq!(snapshots(), 1);
}
