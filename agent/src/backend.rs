//! Object storage through OpenDAL: a local directory (the embedded default) or S3.
//!
//! The engine sees a flat namespace of immutable objects (`config`, `keys/…`, `snapshots/…`,
//! `index/…`, `data/xx/…`). Durability contract: when [`Backend::write`] returns `Ok`, the
//! object is complete, durable and visible under its final name (in a local directory it is
//! written to a temporary file under `.tmp/`, flushed with `fsync`, renamed into place and
//! its directory flushed; an S3 PUT is atomic and the server checks the body against
//! `Content-Length`), so a crash, a power cut or a dropped connection never leaves a torn or
//! lost object under a real name that something refers to.
//!
//! Failures: every request attempt has a deadline ([`BackendOptions::timeout`] for control
//! requests such as HEAD, DELETE and list pages; [`BackendOptions::io_timeout`] for each body
//! transfer step, e.g. a whole PUT or one read of a GET body without progress). Transient
//! failures — HTTP 5xx, throttling (`SlowDown`, 429), connection resets and refusals,
//! truncated bodies, timeouts — are retried up to [`BackendOptions::retries`] times with
//! exponential backoff and jitter; anything else fails at once. Retrying is safe because
//! every object is written once under a name derived from its content (or, for `config` and
//! keys, written once by `init`), so a replayed PUT writes the same bytes. Each retry is
//! logged as a warning; the final error names the action, the object, the location (with the
//! endpoint), how many attempts were made over how long, and the root cause. One operation
//! therefore takes at most about `(retries + 1) × deadline` plus the backoff delays (from
//! 0.2 s, doubling, at most 10 s each): some 3 minutes with the defaults against an endpoint
//! that never answers, a few seconds against a closed port.
//!
//! Options are per repository, given as query parameters of the S3 URL, for example
//! `s3://bucket/prefix?timeout=5s&retries=3` (see [`BackendOptions::from_query`]), parsed
//! into [`S3Location::options`].
//!
//! All I/O runs on one engine-wide tokio runtime; the engine's worker threads call the
//! blocking wrappers, which is safe from any thread that is not itself a runtime worker.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use opendal::layers::TimeoutLayer;
use opendal::{services, Buffer, ErrorKind, Operator};
use rand::Rng;
use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Retry and timeout policy of a backend (per repository).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendOptions {
    /// Deadline of one attempt of a control request (stat, delete, one list page).
    pub timeout: Duration,
    /// Deadline of one body-transfer step of one attempt (a whole PUT, or one read of a GET
    /// body that makes no progress).
    pub io_timeout: Duration,
    /// How many times a transient failure is retried after the first attempt.
    pub retries: u32,
    /// First backoff delay; it doubles on each retry (with jitter) up to `max_backoff`.
    pub backoff: Duration,
    /// Longest backoff delay.
    pub max_backoff: Duration,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            timeout: Duration::from_secs(30),
            // A 16 MiB pack PUT must fit: 60 s allows ~280 KB/s per upload.
            io_timeout: Duration::from_secs(60),
            retries: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl BackendOptions {
    /// Largest accepted `retries`.
    pub const MAX_RETRIES: u32 = 50;

    /// Parses URL query parameters (`a=1&b=2`, without the `?`) over the defaults:
    /// `timeout=<duration>` sets both deadlines, `io-timeout=<duration>` then overrides the
    /// body-transfer one, and `retries=<n>` (0 to 50) the retry count. Durations are
    /// humantime (`500ms`, `5s`, `2m`) or plain seconds. Unknown parameters are an error.
    pub fn from_query(query: &str) -> std::result::Result<Self, String> {
        let mut o = BackendOptions::default();
        let (mut timeout, mut io_timeout) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "timeout" => timeout = Some(parse_timeout(key, value)?),
                "io-timeout" | "io_timeout" => io_timeout = Some(parse_timeout(key, value)?),
                "retries" => {
                    o.retries = value
                        .parse()
                        .ok()
                        .filter(|n| *n <= Self::MAX_RETRIES)
                        .ok_or_else(|| {
                            format!(
                                "option retries={value:?} is not a whole number from 0 to {}",
                                Self::MAX_RETRIES
                            )
                        })?
                }
                _ => {
                    return Err(format!(
                        "unknown option {key:?} (known: timeout, io-timeout, retries)"
                    ))
                }
            }
        }
        if let Some(t) = timeout {
            (o.timeout, o.io_timeout) = (t, t);
        }
        if let Some(t) = io_timeout {
            o.io_timeout = t;
        }
        Ok(o)
    }

    /// The delay before retry number `retry` (1-based): exponential, capped, with jitter
    /// (uniform in the upper half, so concurrent clients spread out but never hammer).
    pub fn backoff_delay(&self, retry: u32) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let d = exp.min(self.max_backoff);
        let half = d / 2;
        half + Duration::from_nanos(rand::rng().random_range(0..=half.as_nanos() as u64))
    }
}

fn parse_timeout(key: &str, value: &str) -> std::result::Result<Duration, String> {
    let d = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(value)
            .map_err(|e| format!("option {key}={value:?} is not a duration: {e}"))?,
    };
    if d.is_zero() {
        return Err(format!("option {key} must be greater than zero"));
    }
    Ok(d)
}

/// The innermost error under `e` (e.g. "Connection refused"), when `e`'s own message does
/// not already show it: transport errors often bury the useful part several sources deep.
fn root_cause(e: &opendal::Error) -> Option<String> {
    let mut cause: &dyn std::error::Error = std::error::Error::source(e)?;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    (!e.to_string().contains(&text)).then_some(text)
}

/// S3 connection settings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`).
    pub prefix: String,
    /// Retry and timeout policy (from the URL's query; defaults otherwise).
    pub options: BackendOptions,
    /// Endpoint URL (for S3-compatible servers); AWS when absent.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Access key id; when given with the secret, no other credential source is consulted.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
    /// Use virtual-host-style addressing instead of path style.
    pub virtual_host_style: bool,
    /// Extra CA certificates (PEM) trusted for the endpoint, besides the system's roots.
    pub ca_bundle: Option<Vec<u8>>,
}

impl fmt::Debug for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Location")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where a repository lives.
// One value per command: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Fs(PathBuf),
    /// An S3 bucket and prefix.
    S3(S3Location),
}

impl Location {
    /// Parses `/path`, `file:///path`, a relative path, or `s3://bucket[/prefix][?options]`
    /// (options: see [`BackendOptions::from_query`]; they are checked here). S3 settings
    /// other than bucket, prefix and options start empty; see [`S3Location`].
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, q),
                None => (rest, ""),
            };
            let path = path.trim_matches('/');
            let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
            if bucket.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "repository {text:?} names no bucket (expected s3://bucket/prefix)"
                )));
            }
            let options = BackendOptions::from_query(query)
                .map_err(|e| Error::InvalidInput(format!("repository {text:?}: {e}")))?;
            return Ok(Location::S3(S3Location {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
                options,
                region: "us-east-1".into(),
                ..S3Location::default()
            }));
        }
        let path = text.strip_prefix("file://").unwrap_or(text);
        if path.is_empty() {
            return Err(Error::InvalidInput("repository location is empty".into()));
        }
        if text.contains("://") && !text.starts_with("file://") {
            return Err(Error::InvalidInput(format!(
                "repository {text:?}: unsupported scheme (use a path, file://, or s3://)"
            )));
        }
        Ok(Location::Fs(PathBuf::from(path)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Fs(p) => write!(f, "{}", p.display()),
            Location::S3(s) => {
                write!(f, "s3://{}/{}", s.bucket, s.prefix)?;
                if let Some(e) = &s.endpoint {
                    write!(f, " (endpoint {e})")?;
                }
                Ok(())
            }
        }
    }
}

/// Temporary files of a local repository, on its own file system so renames are atomic.
const SPOOL_DIR: &str = ".tmp";

/// The spool directory of the local repository at `root`, created if missing.
fn local_spool(root: &Path) -> Result<PathBuf> {
    let dir = root.join(SPOOL_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// Flushes `file`, renames it to `target` (creating its directory) and flushes that
/// directory, so the object survives a crash or power cut once this returns.
fn persist_durably(file: NamedTempFile, target: &Path) -> Result<()> {
    file.as_file()
        .sync_all()
        .map_err(|e| Error::io(file.path(), e))?;
    let dir = target.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    file.persist(target)
        .map_err(|e| Error::io(target, e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// The operator `op` with an HTTP client that trusts the CA certificates in `pem` besides
/// the system's roots (one client per backend, so connections are pooled).
fn with_ca_bundle(op: Operator, pem: &[u8]) -> std::result::Result<Operator, String> {
    crate::tls::install_provider();
    let certs = crate::tls::parse_ca_bundle(pem)?;
    let client = reqwest::Client::builder()
        .tls_certs_merge(certs)
        .build()
        .map_err(|e| format!("building the HTTPS client: {e}"))?;
    let transport = opendal::HttpTransporter::new(
        opendal_http_transport_reqwest::ReqwestTransport::new(client),
    );
    let ctx = op.base_context().with_http_transport(transport);
    Ok(op.with_context(ctx))
}

/// [`Backend::create_if_absent`] for a local repository at `root`.
fn create_local_if_absent(root: &Path, path: &str, data: &[u8]) -> Result<bool> {
    let target = root.join(path);
    let dir = target.parent().unwrap_or(root).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let spool = local_spool(root)?;
    let mut file = tempfile::Builder::new()
        .prefix("object-")
        .tempfile_in(&spool)
        .map_err(|e| Error::io(&spool, e))?;
    file.write_all(data)
        .map_err(|e| Error::io(file.path(), e))?;
    file.as_file()
        .sync_all()
        .map_err(|e| Error::io(file.path(), e))?;
    // The temporary file is removed when `file` drops, whether or not the link was made.
    match std::fs::hard_link(file.path(), &target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(Error::io(&target, e)),
    }
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&dir, e))?;
    Ok(true)
}

/// The engine-wide I/O runtime.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("podvault-io")
            .enable_all()
            .build()
            // Building a runtime only fails when the OS refuses threads or timers.
            .expect("cannot start the I/O runtime")
    })
}

/// A repository's object store.
#[derive(Clone)]
pub struct Backend {
    op: Operator,
    location: String,
    options: BackendOptions,
    /// The directory of a local repository (writes bypass OpenDAL to control `fsync`).
    fs_root: Option<PathBuf>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backend({})", self.location)
    }
}

impl Backend {
    /// Connects to a location (no request is made yet).
    pub fn open(location: &Location) -> Result<Self> {
        opendal::install_default();
        let display = location.to_string();
        let build_err = |source: opendal::Error| Error::Backend {
            action: "configuring",
            object: "backend".into(),
            location: display.clone(),
            source: Box::new(source),
        };
        let mut fs_root = None;
        let (op, options) = match location {
            Location::Fs(path) => {
                let root = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
                // Reads, listing and deletion only: writes go through `persist_durably`.
                let builder = services::Fs::default().root(&root.to_string_lossy());
                fs_root = Some(root);
                (
                    Operator::new(builder).map_err(build_err)?,
                    BackendOptions::default(),
                )
            }
            Location::S3(s) => {
                let options = s.options;
                let mut b = services::S3::default()
                    .bucket(&s.bucket)
                    .root(&format!("/{}", s.prefix))
                    .region(&s.region);
                if let Some(e) = &s.endpoint {
                    b = b.endpoint(e);
                }
                if let (Some(id), Some(secret)) = (&s.access_key_id, &s.secret_access_key) {
                    b = b
                        .access_key_id(id)
                        .secret_access_key(secret)
                        .disable_config_load()
                        .disable_ec2_metadata();
                    if let Some(t) = &s.session_token {
                        b = b.session_token(t);
                    }
                }
                if s.virtual_host_style {
                    b = b.enable_virtual_host_style();
                }
                let mut op = Operator::new(b).map_err(build_err)?;
                if let Some(pem) = &s.ca_bundle {
                    op = with_ca_bundle(op, pem).map_err(|e| {
                        Error::InvalidInput(format!("repository {display}: --cacert: {e}"))
                    })?;
                }
                (op, options)
            }
        };
        // Deadlines per attempt; retries are ours (see `retry`), outside the timeouts.
        let op = op.layer(
            TimeoutLayer::new()
                .with_timeout(options.timeout)
                .with_io_timeout(options.io_timeout),
        );
        Ok(Backend {
            op,
            location: display,
            options,
            fs_root,
        })
    }

    /// Where packs being filled are spooled: inside a local repository (so a finished pack
    /// is renamed into place, never copied), else the system's temporary directory
    /// (`TMPDIR`), from which a finished pack is uploaded.
    pub fn spool_dir(&self) -> Result<PathBuf> {
        match &self.fs_root {
            Some(root) => local_spool(root),
            None => Ok(std::env::temp_dir()),
        }
    }

    /// Stores a spooled file as object `path`; durable and visible when this returns `Ok`.
    pub fn write_file(&self, path: &str, file: NamedTempFile) -> Result<()> {
        runtime().block_on(self.write_file_async(path, file))
    }

    /// Async form of [`Backend::write_file`].
    pub async fn write_file_async(&self, path: &str, file: NamedTempFile) -> Result<()> {
        match &self.fs_root {
            Some(root) => {
                let target = root.join(path);
                tokio::task::spawn_blocking(move || persist_durably(file, &target))
                    .await
                    .map_err(|e| Error::InvalidInput(format!("writing {path}: {e}")))?
            }
            None => {
                let data = tokio::fs::read(file.path())
                    .await
                    .map_err(|e| Error::io(file.path(), e))?;
                self.write_async(path, data).await
            }
        }
    }

    /// Human-readable location, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The retry and timeout policy in force.
    pub fn options(&self) -> BackendOptions {
        self.options
    }

    fn err(&self, action: &'static str, object: &str, source: opendal::Error) -> Error {
        Error::Backend {
            action,
            object: object.to_owned(),
            location: self.location.clone(),
            source: Box::new(source),
        }
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the retries are used up.
    /// Transient (OpenDAL "temporary") errors are retried after a backoff; the final error
    /// records how many attempts were made and for how long.
    async fn retry<T, F, Fut>(
        &self,
        action: &'static str,
        object: &str,
        mut attempt: F,
    ) -> std::result::Result<T, opendal::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = opendal::Result<T>>,
    {
        let start = Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_temporary() && n <= self.options.retries => {
                    let delay = self.options.backoff_delay(n);
                    tracing::warn!(
                        "{action} {object} in {}: attempt {n} of {} failed, retrying in {delay:.1?}: {e}",
                        self.location,
                        self.options.retries + 1
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) if n > 1 || e.is_temporary() => {
                    let cause = root_cause(&e);
                    let mut e = e
                        .with_context("attempts", n)
                        .with_context("elapsed", format!("{:.1?}", start.elapsed()));
                    if let Some(cause) = cause {
                        e = e.with_context("cause", cause);
                    }
                    return Err(e.set_persistent());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a whole object.
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        runtime()
            .block_on(self.retry("reading", path, || self.op.read(path)))
            .map(|b| b.to_vec())
            .map_err(|e| self.err("reading", path, e))
    }

    /// Reads `range` of an object; fails if fewer bytes exist.
    pub fn read_range(&self, path: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let want = range.end - range.start;
        let data = runtime()
            .block_on(self.retry("reading", path, || async {
                self.op.read_with(path).range(range.clone()).await
            }))
            .map(|b| b.to_vec())
            .map_err(|e| self.err("reading", path, e))?;
        if data.len() as u64 != want {
            return Err(Error::Corrupt {
                object: path.to_owned(),
                detail: format!(
                    "expected {want} bytes at offset {}, got {}",
                    range.start,
                    data.len()
                ),
            });
        }
        Ok(data)
    }

    /// Writes an object; durable and visible when this returns `Ok`.
    pub fn write(&self, path: &str, data: Vec<u8>) -> Result<()> {
        runtime().block_on(self.write_async(path, data))
    }

    /// Async form of [`Backend::write`], for uploads running beside CPU work.
    pub async fn write_async(&self, path: &str, data: Vec<u8>) -> Result<()> {
        if let Some(root) = &self.fs_root {
            let root = root.clone();
            let target = root.join(path);
            return tokio::task::spawn_blocking(move || {
                let spool = local_spool(&root)?;
                let mut file = tempfile::Builder::new()
                    .prefix("object-")
                    .tempfile_in(&spool)
                    .map_err(|e| Error::io(&spool, e))?;
                file.write_all(&data)
                    .map_err(|e| Error::io(file.path(), e))?;
                persist_durably(file, &target)
            })
            .await
            .map_err(|e| Error::InvalidInput(format!("writing {path}: {e}")))?;
        }
        // One buffer shared by every attempt (clones are reference counted).
        let data = Buffer::from(data);
        self.retry("writing", path, || self.op.write(path, data.clone()))
            .await
            .map(|_| ())
            .map_err(|e| self.err("writing", path, e))
    }

    /// Creates object `path` holding `data` only if no object of that name exists: of any
    /// number of concurrent callers (processes or machines) exactly one gets `Ok(true)`, the
    /// others `Ok(false)`, and the object then holds the winner's bytes, durably.
    ///
    /// Local directories: the bytes are written and flushed to a temporary file which is then
    /// hard-linked to `path`; `link` fails with `EEXIST` when `path` exists, atomically.
    ///
    /// S3: a conditional PUT (`If-None-Match: *`, honoured by AWS S3 since 2024, MinIO,
    /// Ceph RGW, moto). Whatever the answer (a retried PUT that had landed answers 412, a
    /// server may ignore the header), the object is read back and compared with `data`: it is
    /// ours only if it holds our bytes. On a server that ignores the header, two writers
    /// whose PUT, read-back and PUT, read-back do not overlap would both see their own bytes;
    /// podvault's agents therefore also serialise first use of a repository through the
    /// Kubernetes API (see `worker::repo`).
    pub fn create_if_absent(&self, path: &str, data: Vec<u8>) -> Result<bool> {
        if let Some(root) = &self.fs_root {
            return create_local_if_absent(root, path, &data);
        }
        let buffer = Buffer::from(data.clone());
        let put = runtime().block_on(self.retry("creating", path, || async {
            self.op
                .write_with(path, buffer.clone())
                .if_not_exists(true)
                .await
        }));
        match put {
            Ok(_) => {}
            Err(e) if e.kind() == opendal::ErrorKind::ConditionNotMatch => {}
            Err(e) => return Err(self.err("creating", path, e)),
        }
        match runtime().block_on(self.retry("reading", path, || self.op.read(path))) {
            Ok(b) => Ok(b.to_vec() == data),
            // Gone again already (a concurrent creator that lost and cleaned up cannot delete
            // it; only a human can): report it rather than guess.
            Err(e) => Err(self.err("reading back", path, e)),
        }
    }

    /// True when the object exists.
    pub fn exists(&self, path: &str) -> Result<bool> {
        runtime()
            .block_on(self.retry("checking", path, || self.op.exists(path)))
            .map_err(|e| self.err("checking", path, e))
    }

    /// Size of an object in bytes.
    pub fn size(&self, path: &str) -> Result<u64> {
        runtime()
            .block_on(self.retry("checking", path, || self.op.stat(path)))
            .map(|m| m.content_length())
            .map_err(|e| self.err("checking", path, e))
    }

    /// When an object was last written (Unix seconds, the store's clock), if the store says.
    pub fn modified(&self, path: &str) -> Result<Option<i64>> {
        runtime()
            .block_on(self.retry("checking", path, || self.op.stat(path)))
            .map(|m| m.last_modified().map(|t| t.into_inner().as_second()))
            .map_err(|e| self.err("checking", path, e))
    }

    /// Deletes an object (absent objects are not an error).
    pub fn delete(&self, path: &str) -> Result<()> {
        runtime()
            .block_on(self.retry("deleting", path, || self.op.delete(path)))
            .map_err(|e| self.err("deleting", path, e))
    }

    /// Lists object paths (relative to the repository root) under `dir`, recursively.
    /// A missing directory lists as empty.
    pub fn list(&self, dir: &str) -> Result<Vec<String>> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        let listed = runtime().block_on(self.retry("listing", &prefix, || async {
            self.op.list_with(&prefix).recursive(true).await
        }));
        match listed {
            Ok(entries) => Ok(entries
                .into_iter()
                .filter(|e| e.metadata().is_file())
                .map(|e| e.path().trim_start_matches('/').to_owned())
                .collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.err("listing", &prefix, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert_eq!(
            Location::parse("/srv/repo").unwrap(),
            Location::Fs("/srv/repo".into())
        );
        assert_eq!(
            Location::parse("file:///srv/repo").unwrap(),
            Location::Fs("/srv/repo".into())
        );
        let Location::S3(s) = Location::parse("s3://bucket/a/b/").unwrap() else {
            panic!("not s3")
        };
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("bucket", "a/b"));
        assert!(Location::parse("s3://").is_err());
        assert!(Location::parse("gs://x").is_err());
        assert!(Location::parse("").is_err());
    }

    #[test]
    fn fs_backend_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(&Location::Fs(dir.path().to_owned())).unwrap();
        assert!(b.list("snapshots").unwrap().is_empty());
        b.write("data/ab/abcd", b"hello".to_vec()).unwrap();
        assert!(b.exists("data/ab/abcd").unwrap());
        assert_eq!(b.read("data/ab/abcd").unwrap(), b"hello");
        assert_eq!(b.read_range("data/ab/abcd", 1..3).unwrap(), b"el");
        assert!(b.read_range("data/ab/abcd", 3..9).is_err());
        assert_eq!(b.list("data").unwrap(), vec!["data/ab/abcd".to_owned()]);
        assert_eq!(b.size("data/ab/abcd").unwrap(), 5);
        b.delete("data/ab/abcd").unwrap();
        assert!(!b.exists("data/ab/abcd").unwrap());
        let err = b.read("config").unwrap_err().to_string();
        assert!(err.contains("config"), "{err}");
    }
    #[test]
    fn s3_url_options_are_checked_and_kept_apart_from_the_prefix() {
        let Location::S3(s) = Location::parse("s3://b/a/b/?timeout=2s&retries=3").unwrap() else {
            panic!("not s3")
        };
        assert_eq!(s.prefix.as_str(), "a/b");
        let o = s.options;
        assert_eq!(o.timeout, Duration::from_secs(2));
        assert_eq!(o.io_timeout, Duration::from_secs(2));
        assert_eq!(o.retries, 3);
        let Location::S3(s) = Location::parse("s3://b?io-timeout=90&timeout=500ms").unwrap() else {
            panic!("not s3")
        };
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("b", ""));
        let o = s.options;
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert_eq!(o.io_timeout, Duration::from_secs(90));
        let Location::S3(s) = Location::parse("s3://b/p").unwrap() else {
            panic!("not s3")
        };
        assert_eq!(s.options, BackendOptions::default());
        for bad in [
            "s3://b/p?timeout=soon",
            "s3://b/p?timeout=0s",
            "s3://b/p?retries=-1",
            "s3://b/p?retries=1000",
            "s3://b/p?colour=blue",
        ] {
            let err = Location::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let o = BackendOptions::default();
        for retry in 1..=12 {
            let full = o
                .backoff
                .saturating_mul(1 << (retry - 1))
                .min(o.max_backoff);
            let d = o.backoff_delay(retry);
            assert!(
                d >= full / 2 && d <= full,
                "retry {retry}: {d:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn a_refused_connection_fails_after_the_retries_naming_the_endpoint() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Location::S3(mut s) = Location::parse("s3://b/p?retries=2&timeout=2s").unwrap() else {
            panic!("not s3")
        };
        s.endpoint = Some(format!("http://127.0.0.1:{port}"));
        s.access_key_id = Some("id".into());
        s.secret_access_key = Some("secret".into());
        let b = Backend::open(&Location::S3(s)).unwrap();
        let err = b.exists("config").unwrap_err().to_string();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(err.contains("checking config"), "{err}");
        assert!(err.contains("attempts: 3"), "{err}");
        assert!(err.to_lowercase().contains("refused"), "{err}");
    }
}
