//! The engine's error type.
//!
//! One public type for the whole engine. Each variant names the thing that is wrong (which
//! path, which object, which repository) so a message read in a terminal or a Kubernetes
//! status is actionable on its own. Lower layers add that context once, where it is known;
//! callers do not re-wrap.

use std::path::PathBuf;

use podvault_proto::DecodeError;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `config` object at the location.
    #[error(
        "no podvault repository at {location}: it has no config object (run `podvault init` first)"
    )]
    NotInitialised {
        /// Repository location.
        location: String,
    },
    /// `init` on a location that already holds a repository.
    #[error("a podvault repository already exists at {location}")]
    AlreadyInitialised {
        /// Repository location.
        location: String,
    },
    /// No key file opens with the password.
    #[error("wrong password: none of the {keys} key file(s) in {location} opens with it")]
    WrongPassword {
        /// Repository location.
        location: String,
        /// Number of key files tried.
        keys: usize,
    },
    /// The storage backend failed.
    #[error("{action} {object} in {location}: {source}")]
    Backend {
        /// What was being done ("reading", "writing", "listing", ...).
        action: &'static str,
        /// Object path.
        object: String,
        /// Repository location.
        location: String,
        /// The backend's error (boxed: it is large and errors travel far).
        #[source]
        source: Box<opendal::Error>,
    },
    /// An object exists but its bytes are wrong.
    #[error("{object} is damaged: {detail}")]
    Corrupt {
        /// Object (and blob) concerned.
        object: String,
        /// What check failed.
        detail: String,
    },
    /// An object decrypted but does not decode.
    #[error("{object}: {source}")]
    Decode {
        /// Object concerned.
        object: String,
        /// Decoder error.
        #[source]
        source: DecodeError,
    },
    /// A local file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No snapshot matches.
    #[error("no snapshot matches {0:?}")]
    SnapshotNotFound(String),
    /// A snapshot id prefix matches several snapshots.
    #[error("snapshot prefix {0:?} matches more than one snapshot; give more digits")]
    AmbiguousSnapshot(String),
    /// A blob referenced by a tree or snapshot is not in any index.
    #[error("blob {id} ({what}) is not in the repository index")]
    MissingBlob {
        /// Blob id.
        id: String,
        /// What refers to it.
        what: String,
    },
    /// Invalid arguments or options.
    #[error("{0}")]
    InvalidInput(String),
    /// The restore did not restore everything.
    #[error("restore incomplete: {failed} file(s) could not be restored (first: {first})")]
    RestoreIncomplete {
        /// Number of files that failed.
        failed: usize,
        /// The first failure, with its cause.
        first: String,
    },
    /// Reading a stream being backed up failed (its producer failed); no snapshot was
    /// written.
    #[error("reading {name} failed, so no snapshot was written: {source}")]
    Stream {
        /// The stream's path in the snapshot (`<stdin>/db.sql`).
        name: String,
        /// The reader's error.
        #[source]
        source: std::io::Error,
    },
    /// The operation was canceled by the caller.
    #[error("canceled")]
    Canceled,
}

impl Error {
    /// Attaches a path to an I/O error.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True when a backend object was not found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Backend { source, .. } if source.kind() == opendal::ErrorKind::NotFound)
    }

    /// A short fixed string naming the error class, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotInitialised { .. } => "not_initialised",
            Error::AlreadyInitialised { .. } => "already_initialised",
            Error::WrongPassword { .. } => "wrong_password",
            Error::Backend { .. } => "backend",
            Error::Corrupt { .. } | Error::Decode { .. } | Error::MissingBlob { .. } => "corrupt",
            Error::Io { .. } => "io",
            Error::Stream { .. } => "stream",
            Error::SnapshotNotFound(_) | Error::AmbiguousSnapshot(_) => "snapshot_not_found",
            Error::InvalidInput(_) => "invalid_input",
            Error::RestoreIncomplete { .. } => "restore_incomplete",
            Error::Canceled => "canceled",
        }
    }
}
