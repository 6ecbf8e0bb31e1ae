//! Object storage through OpenDAL: a local directory (the embedded default) or S3.
//!
//! The engine sees a flat namespace of immutable objects (`config`, `keys/…`, `snapshots/…`,
//! `index/…`, `data/xx/…`). Durability contract: when [`Backend::write`] returns `Ok`, the
//! object is complete and visible under its final name (the fs service writes to a temporary
//! file under `.tmp/` and renames it; an S3 PUT is atomic), so a crash never leaves a torn
//! object under a real name. Transient failures are retried with exponential backoff and
//! jitter (a bounded number of times), and every operation has a timeout, so a dead endpoint
//! fails in bounded time with an error naming the object and the location.
//!
//! All I/O runs on one engine-wide tokio runtime; the engine's worker threads call the
//! blocking wrappers, which is safe from any thread that is not itself a runtime worker.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{services, ErrorKind, Operator};

use crate::error::{Error, Result};

/// S3 connection settings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`).
    pub prefix: String,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Fs(PathBuf),
    /// An S3 bucket and prefix.
    S3(S3Location),
}

impl Location {
    /// Parses `/path`, `file:///path`, a relative path, or `s3://bucket[/prefix]`. S3
    /// settings other than bucket and prefix start empty; see [`S3Location`].
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let rest = rest.trim_matches('/');
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "repository {text:?} names no bucket (expected s3://bucket/prefix)"
                )));
            }
            return Ok(Location::S3(S3Location {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
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
        let op = match location {
            Location::Fs(path) => {
                let root = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
                let builder = services::Fs::default()
                    .root(&root.to_string_lossy())
                    .atomic_write_dir(&root.join(".tmp").to_string_lossy());
                Operator::new(builder).map_err(build_err)?
            }
            Location::S3(s) => {
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
                Operator::new(b).map_err(build_err)?
            }
        };
        let op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(60))
                    .with_io_timeout(Duration::from_secs(30)),
            )
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_max_times(5)
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(4)),
            );
        Ok(Backend {
            op,
            location: display,
        })
    }

    /// Human-readable location, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn err(&self, action: &'static str, object: &str, source: opendal::Error) -> Error {
        Error::Backend {
            action,
            object: object.to_owned(),
            location: self.location.clone(),
            source: Box::new(source),
        }
    }

    /// Reads a whole object.
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        runtime()
            .block_on(self.op.read(path))
            .map(|b| b.to_vec())
            .map_err(|e| self.err("reading", path, e))
    }

    /// Reads `range` of an object; fails if fewer bytes exist.
    pub fn read_range(&self, path: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let want = range.end - range.start;
        let data = runtime()
            .block_on(async { self.op.read_with(path).range(range.clone()).await })
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
        self.op
            .write(path, data)
            .await
            .map(|_| ())
            .map_err(|e| self.err("writing", path, e))
    }

    /// True when the object exists.
    pub fn exists(&self, path: &str) -> Result<bool> {
        runtime()
            .block_on(self.op.exists(path))
            .map_err(|e| self.err("checking", path, e))
    }

    /// Size of an object in bytes.
    pub fn size(&self, path: &str) -> Result<u64> {
        runtime()
            .block_on(self.op.stat(path))
            .map(|m| m.content_length())
            .map_err(|e| self.err("checking", path, e))
    }

    /// Deletes an object (absent objects are not an error).
    pub fn delete(&self, path: &str) -> Result<()> {
        runtime()
            .block_on(self.op.delete(path))
            .map_err(|e| self.err("deleting", path, e))
    }

    /// Lists object paths (relative to the repository root) under `dir`, recursively.
    /// A missing directory lists as empty.
    pub fn list(&self, dir: &str) -> Result<Vec<String>> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        match runtime().block_on(async { self.op.list_with(&prefix).recursive(true).await }) {
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
}
