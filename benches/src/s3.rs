//! The S3 server of the comparison's S3 mode: started on 127.0.0.1 by the harness, one bucket,
//! stopped (and its storage removed) when dropped.
//!
//! Two servers are supported:
//! - [`ServerKind::S3sFs`] — s3s-fs 0.14.1 (`cargo install s3s-fs --version 0.14.1 --features
//!   binary --locked`): checks signatures and stores every object as one file of the object's
//!   size under `<root>/<bucket>/<key>`, so what a prefix holds is measured on disk, exactly.
//! - [`ServerKind::Moto`] — moto's server from the tests' Python venv (`tests/run.sh` creates
//!   it; `$PODVAULT_VENV`, default `~/.cache/podvault-venv`): in memory, any credentials; the
//!   bucket is created and a prefix measured or removed with boto3 from that venv, talking to
//!   the server directly (never through the counting proxy, so it does not count against a
//!   tool).

use std::fs;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::measure;

/// The bucket every tool and run shares (each under its own prefix).
pub const BUCKET: &str = "podvault-bench";
/// Access key given to the server and the tools.
pub const ACCESS_KEY: &str = "podvault-bench";
/// Secret key given to the server and the tools.
pub const SECRET_KEY: &str = "podvault-bench-secret";
/// Region given to the tools (moto needs `us-east-1` for a bucket without a location).
pub const REGION: &str = "us-east-1";

/// Which S3 server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// s3s-fs: signature-checking, objects stored as files.
    S3sFs,
    /// moto: in-memory, Python.
    Moto,
}

impl ServerKind {
    /// Parses `s3s-fs` or `moto`.
    pub fn parse(s: &str) -> Option<ServerKind> {
        match s {
            "s3s-fs" => Some(ServerKind::S3sFs),
            "moto" => Some(ServerKind::Moto),
            _ => None,
        }
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::S3sFs => "s3s-fs",
            ServerKind::Moto => "moto",
        }
    }
}

/// A running S3 server with one bucket ([`BUCKET`]).
#[derive(Debug)]
pub struct S3Server {
    kind: ServerKind,
    endpoint: String,
    version: String,
    /// s3s-fs: its storage root; moto: a scratch directory for its log.
    root: PathBuf,
    /// moto: the venv's Python, which has boto3.
    python: PathBuf,
    child: Child,
}

impl S3Server {
    /// Starts a server of `kind` on a free loopback port, with its files under `scratch`
    /// (created; removed again on drop), and creates the bucket.
    pub fn start(kind: ServerKind, scratch: &Path) -> io::Result<S3Server> {
        if scratch.exists() {
            fs::remove_dir_all(scratch)?;
        }
        fs::create_dir_all(scratch)?;
        let port = free_port()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let log = fs::File::create(scratch.join("server.log"))?;
        let venv = std::env::var_os("PODVAULT_VENV")
            .map(PathBuf::from)
            .or_else(|| home().map(|h| h.join(".cache/podvault-venv")))
            .unwrap_or_default();
        let python = venv.join("bin/python");
        let (child, version) = match kind {
            ServerKind::S3sFs => {
                let bin = s3s_fs_bin().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "s3s-fs not found on PATH or in ~/.cargo/bin: \
                         cargo install s3s-fs --version 0.14.1 --features binary --locked",
                    )
                })?;
                let root = scratch.join("root");
                fs::create_dir_all(root.join(BUCKET))?;
                let version = first_line(Command::new(&bin).arg("--version"))
                    .unwrap_or_else(|| "s3s-fs".into());
                let child = Command::new(&bin)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                    .arg(&root)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .map_err(|e| context(e, &format!("starting {}", bin.display())))?;
                (child, version)
            }
            ServerKind::Moto => {
                let bin = venv.join("bin/moto_server");
                if !bin.is_file() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "{} not found: run tests/run.sh once (it creates the venv) or set PODVAULT_VENV",
                            bin.display()
                        ),
                    ));
                }
                let version = first_line(Command::new(&python).args([
                    "-c",
                    "import importlib.metadata as m; print('moto', m.version('moto'))",
                ]))
                .unwrap_or_else(|| "moto".into());
                let child = Command::new(&bin)
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .map_err(|e| context(e, &format!("starting {}", bin.display())))?;
                (child, version)
            }
        };
        let server = S3Server {
            kind,
            endpoint,
            version,
            root: scratch.to_path_buf(),
            python,
            child,
        };
        server.wait_ready(port)?;
        if kind == ServerKind::Moto {
            server.boto(
                "import time\n\
                 for _ in range(100):\n\
                 \x20   try:\n\
                 \x20       c.create_bucket(Bucket=B)\n\
                 \x20       break\n\
                 \x20   except Exception:\n\
                 \x20       time.sleep(0.1)\n\
                 else:\n\
                 \x20   raise SystemExit('could not create the bucket')\n",
                "",
            )?;
        }
        Ok(server)
    }

    /// The server's URL (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Which server this is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The server's name and version, e.g. `s3s-fs 0.14.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Bytes and number of objects under `prefix/` in the bucket, from the server's side:
    /// s3s-fs's files on disk, or a LIST straight to moto.
    pub fn usage(&self, prefix: &str) -> io::Result<(u64, u64)> {
        match self.kind {
            ServerKind::S3sFs => {
                measure::dir_usage(&self.root.join("root").join(BUCKET).join(prefix))
            }
            ServerKind::Moto => {
                let out = self.boto(
                    "n = b = 0\n\
                     for page in c.get_paginator('list_objects_v2').paginate(Bucket=B, Prefix=P + '/'):\n\
                     \x20   for o in page.get('Contents', []):\n\
                     \x20       n += 1\n\
                     \x20       b += o['Size']\n\
                     print(b, n)\n",
                    prefix,
                )?;
                let mut words = out.split_whitespace().map(str::parse::<u64>);
                match (words.next(), words.next()) {
                    (Some(Ok(b)), Some(Ok(n))) => Ok((b, n)),
                    _ => Err(io::Error::other(format!(
                        "listing {prefix}/ on moto printed {out:?}"
                    ))),
                }
            }
        }
    }

    /// Deletes every object under `prefix/`.
    pub fn remove(&self, prefix: &str) -> io::Result<()> {
        match self.kind {
            ServerKind::S3sFs => {
                match fs::remove_dir_all(self.root.join("root").join(BUCKET).join(prefix)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
            ServerKind::Moto => self
                .boto(
                    "for page in c.get_paginator('list_objects_v2').paginate(Bucket=B, Prefix=P + '/'):\n\
                     \x20   keys = [{'Key': o['Key']} for o in page.get('Contents', [])]\n\
                     \x20   if keys:\n\
                     \x20       c.delete_objects(Bucket=B, Delete={'Objects': keys})\n",
                    prefix,
                )
                .map(drop),
        }
    }

    /// Waits until the port accepts connections (or the server has exited).
    fn wait_ready(&self, port: u16) -> io::Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{} did not listen on port {port} within 30 s; see {}",
                self.kind.name(),
                self.root.join("server.log").display()
            ),
        ))
    }

    /// Runs a boto3 script against the server with `c` (a client), `B` (the bucket) and `P`
    /// (`prefix`) defined; returns what it printed.
    fn boto(&self, script: &str, prefix: &str) -> io::Result<String> {
        let full = format!(
            "import boto3, sys\n\
             c = boto3.client('s3', endpoint_url={:?}, region_name={REGION:?}, \
             aws_access_key_id={ACCESS_KEY:?}, aws_secret_access_key={SECRET_KEY:?})\n\
             B = {BUCKET:?}\nP = sys.argv[1]\n{script}",
            self.endpoint
        );
        let out = Command::new(&self.python)
            .args(["-c", &full, prefix])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| context(e, &format!("running {}", self.python.display())))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "boto3 against {} failed: {}",
                self.endpoint,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn s3s_fs_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        home()
            .map(|h| h.join(".cargo/bin/s3s-fs"))
            .filter(|p| p.is_file())
    })
}

fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (out.status.success() && !line.is_empty()).then(|| line.to_string())
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
