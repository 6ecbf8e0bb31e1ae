//! PostgreSQL dumps through podvault against a real server: `pg_dumpall | podvault backup
//! --stdin`, `podvault dump | psql`, the data compared table by table, the deduplication of
//! daily dumps measured (printed with `--nocapture`), and a failing dump command leaving no
//! snapshot.
//!
//! The test starts its own cluster (initdb into a temporary directory, a free port on
//! 127.0.0.1, the socket in that directory); as root the server runs as `nobody` through
//! `setpriv`. The PostgreSQL binaries are searched in `$PODVAULT_PG_BIN`,
//! `/usr/lib/postgresql/<version>/bin` (Debian), `/usr/local/bin` and `$PATH`; when they are
//! missing the test fails, unless `PODVAULT_SKIP_POSTGRES=1` (`.ci/run` installs them).

use std::io::{self, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::AtomicBool;

use podvault::archiver::{backup_stream, BackupOptions};
use podvault::backend::Location;
use podvault::error::Error;
use podvault::progress::Progress;
use podvault::repository::Repository;
use podvault_tests::Repo;

/// Where the server binaries (`initdb`, `pg_ctl`) and the clients (`psql`, `pg_dumpall`) are.
struct Binaries {
    server: PathBuf,
    client: PathBuf,
}

fn find_binaries() -> Option<Binaries> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PODVAULT_PG_BIN")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    // Debian: /usr/lib/postgresql/<version>/bin, newest first.
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        dirs.extend(versions.into_iter().map(|(_, p)| p));
    }
    dirs.push("/usr/local/bin".into());
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let with = |names: &[&str]| {
        dirs.iter()
            .find(|d| names.iter().all(|n| d.join(n).is_file()))
            .cloned()
    };
    Some(Binaries {
        server: with(&["initdb", "pg_ctl", "postgres"]).or_else(|| with(&["initdb", "pg_ctl"]))?,
        client: with(&["psql", "pg_dumpall"])?,
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A PostgreSQL cluster of the test's own; stopped when dropped.
struct Cluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: Binaries,
    port: u16,
    /// Run server commands as `nobody` (the server refuses to run as root).
    as_nobody: bool,
}

impl Cluster {
    fn start(bin: Binaries) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let as_nobody = rustix::process::getuid().is_root();
        let (data, sock, log) = (
            dir.path().join("pgdata"),
            dir.path().join("sock"),
            dir.path().join("server.log"),
        );
        std::fs::create_dir(&sock).expect("socket dir");
        if as_nobody {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            std::fs::create_dir(&data).expect("data dir");
            for p in [&data, &sock] {
                std::os::unix::fs::chown(p, Some(65534), Some(65534)).expect("chown to nobody");
            }
            std::fs::write(&log, b"").expect("log");
            std::os::unix::fs::chown(&log, Some(65534), Some(65534)).expect("chown log");
        }
        let c = Cluster {
            _dir: dir,
            data,
            bin,
            port: free_port(),
            as_nobody,
        };
        c.server_cmd(
            "initdb",
            &[
                "-D",
                c.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ],
        );
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            c.port,
            sock.display()
        );
        c.server_cmd(
            "pg_ctl",
            &[
                "-D",
                c.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        c
    }

    /// Runs a server binary (as `nobody` when root); it must succeed.
    fn server_cmd(&self, name: &str, args: &[&str]) {
        let exe = self.bin.server.join(name);
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir("/")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{name} {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A client command (`psql`, `pg_dumpall`) connected to the cluster over TCP.
    fn client(&self, name: &str) -> Command {
        self.client_at(name, self.port)
    }

    /// A client command connecting to `port` on 127.0.0.1.
    fn client_at(&self, name: &str, port: u16) -> Command {
        let mut c = Command::new(self.bin.client.join(name));
        c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .env("PGCONNECT_TIMEOUT", "10");
        c
    }

    /// Runs SQL on `db`, stopping at the first error; returns the output (unaligned, tuples
    /// only).
    fn sql(&self, db: &str, sql: &str) -> String {
        let out = self
            .client("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// One checksum per table of the test database.
    fn checksums(&self) -> Vec<(String, String)> {
        ["customers", "orders", "events"]
            .iter()
            .map(|t| {
                let q = format!(
                    "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM {t} t"
                );
                (t.to_string(), self.sql("shop", &q))
            })
            .collect()
    }

    /// `pg_dumpall` against `port` with its output going to a pipe (another port than the
    /// cluster's makes it fail).
    fn spawn_dumpall(&self, port: u16) -> Child {
        self.client_at("pg_dumpall", port)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pg_dumpall")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let exe = self.bin.server.join("pg_ctl");
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .current_dir("/")
            .output();
    }
}

/// Deterministic data: three tables, 160,000 rows.
const SEED_SQL: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, created date NOT NULL);
INSERT INTO customers SELECT i, 'customer ' || i, md5(i::text) || '@example.com', date '2020-01-01' + (i % 1500)
  FROM generate_series(1, 20000) i;
CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL REFERENCES customers, amount numeric(10,2) NOT NULL, note text);
INSERT INTO orders SELECT i, 1 + (i * 7919) % 20000, ((i * 31) % 100000) / 100.0, md5((i * 3)::text) || ' ' || md5((i * 5)::text)
  FROM generate_series(1, 60000) i;
CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL, payload jsonb NOT NULL);
INSERT INTO events SELECT i, (ARRAY['view', 'click', 'buy'])[1 + i % 3], jsonb_build_object('n', i, 'h', md5(i::text))
  FROM generate_series(1, 80000) i;
";

/// One simulated day: about 1% of the rows changed — recent orders updated, new events,
/// a few customers scattered over the table.
fn day_sql(day: u32) -> String {
    let from = 50_000 - day * 2_000;
    format!(
        "UPDATE orders SET amount = amount + {day}, note = md5(note || '{day}') WHERE id BETWEEN {from} AND {to};
         INSERT INTO events SELECT i, 'buy', jsonb_build_object('n', i, 'day', {day})
           FROM generate_series({e0}, {e1}) i;
         UPDATE customers SET email = 'moved-{day}-' || email WHERE id % 1000 = {day};",
        to = from + 599,
        e0 = 100_000 + day * 1_000,
        e1 = 100_000 + day * 1_000 + 799,
    )
}

/// `pg_dumpall | podvault backup --stdin --stdin-filename db.sql --json`; both must succeed.
fn dump_and_backup(pg: &Cluster, repo: &Repo) -> serde_json::Value {
    let mut dump = pg.spawn_dumpall(pg.port);
    let out = repo
        .cmd(&[
            "backup",
            "--json",
            "--stdin",
            "--stdin-filename",
            "db.sql",
            "--tag",
            "db=shop",
        ])
        .stdin(dump.stdout.take().expect("pipe"))
        .output()
        .expect("podvault");
    let dumped = dump.wait_with_output().expect("pg_dumpall");
    assert!(
        dumped.status.success(),
        "pg_dumpall failed: {}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("backup JSON")
}

/// `podvault dump latest db.sql | psql`; both must succeed.
fn restore(pg: &Cluster, repo: &Repo) {
    let mut dump = repo
        .cmd(&["dump", "latest", "db.sql"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("podvault dump");
    // Without ON_ERROR_STOP: `CREATE ROLE postgres` of the dump fails, as the role exists.
    let psql = pg
        .client("psql")
        .args(["-X", "-q", "-d", "postgres"])
        .stdin(dump.stdout.take().expect("pipe"))
        .output()
        .expect("psql");
    let dumped = dump.wait_with_output().expect("podvault dump");
    assert!(
        dumped.status.success(),
        "podvault dump failed: {}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    assert!(
        psql.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&psql.stderr)
    );
}

/// The output of a command, failing at its end if the command exited non-zero — what the
/// agent does with a dump command's output.
struct CommandReader {
    child: Child,
    stdout: ChildStdout,
}

impl Read for CommandReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stdout.read(buf)? {
            0 => {
                let status = self.child.wait()?;
                if status.success() {
                    Ok(0)
                } else {
                    let mut err = String::new();
                    if let Some(e) = self.child.stderr.as_mut() {
                        let _ = e.read_to_string(&mut err);
                    }
                    Err(io::Error::other(format!(
                        "pg_dumpall exited with {status}: {}",
                        err.trim()
                    )))
                }
            }
            n => Ok(n),
        }
    }
}

#[test]
fn pg_dumpall_round_trip_and_daily_dedup() {
    let Some(bin) = find_binaries() else {
        if std::env::var("PODVAULT_SKIP_POSTGRES").as_deref() == Ok("1") {
            eprintln!("skipping: PostgreSQL binaries not found and PODVAULT_SKIP_POSTGRES=1");
            return;
        }
        panic!(
            "PostgreSQL binaries (initdb, pg_ctl, psql, pg_dumpall) not found in \
             $PODVAULT_PG_BIN, /usr/lib/postgresql/*/bin, /usr/local/bin or $PATH: install \
             them (`apt-get install -y postgresql`, as .ci/run does) or set \
             PODVAULT_SKIP_POSTGRES=1 to skip this test"
        );
    };
    let pg = Cluster::start(bin);
    pg.sql("postgres", "CREATE DATABASE shop");
    pg.sql("shop", SEED_SQL);
    let before = pg.checksums();

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    let repo = Repo::fs(&dir);
    // A 12 MB dump is only about ten chunks at the default 1 MiB average, and a chunk is the
    // unit of deduplication: 64 KiB chunks show what a change costs at finer granularity
    // (the default's figures are in the README).
    let chunk_kib = std::env::var("PODVAULT_PG_CHUNK_KIB").unwrap_or_else(|_| "64".into());
    repo.init_with(&["--chunk-avg-kib", &chunk_kib]);
    eprintln!("repository chunks: {chunk_kib} KiB average");
    let first = dump_and_backup(&pg, &repo);
    let dump_bytes = first["summary"]["total_bytes"].as_u64().unwrap();
    assert!(dump_bytes > 5 << 20, "dump of {dump_bytes} bytes");

    // Restore into a cluster that lost the database.
    pg.sql("postgres", "DROP DATABASE shop");
    restore(&pg, &repo);
    assert_eq!(pg.checksums(), before, "restored data differs");

    // Five days of ~1% changes, one dump a day.
    eprintln!(
        "day 0: dump {:>10} bytes, added {:>10} bytes ({} blobs), stored {} bytes",
        dump_bytes,
        first["summary"]["bytes_added"],
        first["summary"]["blobs_added"],
        first["summary"]["bytes_stored"],
    );
    let (mut total_dumped, mut total_added) = (
        dump_bytes,
        first["summary"]["bytes_added"].as_u64().unwrap(),
    );
    let mut previous = first["snapshot"].clone();
    for day in 1..=5 {
        pg.sql("shop", &day_sql(day));
        let out = dump_and_backup(&pg, &repo);
        let s = &out["summary"];
        let (dumped, added) = (
            s["total_bytes"].as_u64().unwrap(),
            s["bytes_added"].as_u64().unwrap(),
        );
        eprintln!(
            "day {day}: dump {dumped:>10} bytes, added {added:>10} bytes ({} blobs, {:.1}% of the dump), stored {} bytes",
            s["blobs_added"],
            100.0 * added as f64 / dumped as f64,
            s["bytes_stored"],
        );
        assert_eq!(
            out["parent"], previous,
            "the previous day's dump is the parent"
        );
        assert!(
            added * 2 < dumped,
            "day {day}: a 1% change added {added} of {dumped} bytes"
        );
        total_dumped += dumped;
        total_added += added;
        previous = out["snapshot"].clone();
    }
    eprintln!(
        "6 daily dumps: {total_dumped} bytes dumped, {total_added} bytes added: dedup ratio {:.2}x",
        total_dumped as f64 / total_added as f64
    );
    assert!(total_dumped > 2 * total_added, "dedup over six days");

    // The last day restores exactly.
    let last = pg.checksums();
    pg.sql("postgres", "DROP DATABASE shop");
    restore(&pg, &repo);
    assert_eq!(pg.checksums(), last, "restored data differs (day 5)");

    // A dump that fails (wrong port) through the engine, as the agent will run it: the
    // reader fails at the end because the command exited non-zero; no snapshot is written.
    let snapshots = repo.snapshot_count();
    let mut child = pg.spawn_dumpall(free_port());
    let stdout = child.stdout.take().expect("pipe");
    let reader = CommandReader { child, stdout };
    let engine = Repository::open(
        &Location::parse(dir.to_str().unwrap()).unwrap(),
        repo.password.as_bytes(),
    )
    .unwrap();
    let err = backup_stream(
        &engine,
        "db.sql",
        reader,
        &BackupOptions::default(),
        &Progress::default(),
        &AtomicBool::new(false),
    )
    .expect_err("a failed dump must fail the backup");
    assert!(matches!(err, Error::Stream { .. }), "{err:?}");
    eprintln!("failed dump: {err}");
    assert!(err.to_string().contains("pg_dumpall exited"), "{err}");
    assert_eq!(
        repo.snapshot_count(),
        snapshots,
        "no snapshot for a failed dump"
    );
}
