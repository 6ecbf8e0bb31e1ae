//! The record trait: how each on-disk record is versioned, encoded and tied to its object kind.
//!
//! Encoded records start with a little-endian `u16` format version followed by the body
//! (postcard for structured records, a fixed-width layout for the index). Decoding checks the
//! version first, so a record written by a newer podvault fails with [`DecodeError::UnknownVersion`]
//! rather than being misread.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a stored record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record was written with a format version this build does not read.
    #[error("{record} has format version {found}; this podvault reads version {supported}")]
    UnknownVersion {
        /// Record type name.
        record: &'static str,
        /// Version found in the data.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The data ended before the record did.
    #[error("{record} is truncated")]
    Truncated {
        /// Record type name.
        record: &'static str,
    },
    /// The bytes do not form a valid record.
    #[error("{record} is malformed: {detail}")]
    Malformed {
        /// Record type name.
        record: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// The kinds of objects stored in a repository, each under its own name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// The single `config` object.
    Config,
    /// `keys/<id>`: password-wrapped master keys (plaintext JSON).
    Key,
    /// `snapshots/<id>`.
    Snapshot,
    /// `index/<id>`.
    Index,
    /// `data/<xx>/<id>`: packs of blobs.
    Pack,
}

impl ObjectKind {
    /// Name used in object paths and error messages.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Key => "keys",
            ObjectKind::Snapshot => "snapshots",
            ObjectKind::Index => "index",
            ObjectKind::Pack => "data",
        }
    }

    /// Associated data bound into the encryption of whole objects of this kind, so an object
    /// cannot be passed off as one of another kind.
    pub fn aad(self) -> &'static [u8] {
        match self {
            ObjectKind::Config => b"podvault:config",
            ObjectKind::Key => b"podvault:key",
            ObjectKind::Snapshot => b"podvault:snapshot",
            ObjectKind::Index => b"podvault:index",
            ObjectKind::Pack => b"podvault:pack-header",
        }
    }
}

/// A versioned record with a stable binary encoding.
pub trait Record: Sized {
    /// Record type name, for error messages.
    const NAME: &'static str;
    /// The format version this build writes and reads.
    const VERSION: u16;

    /// Encodes the record, version first.
    fn encode(&self) -> Vec<u8>;

    /// Decodes a record, rejecting unknown versions.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

/// A record stored as a whole repository object (as opposed to a blob inside a pack).
pub trait ObjectRecord: Record {
    /// Where objects of this record type live.
    const KIND: ObjectKind;
    /// The id type naming objects of this kind.
    type Id: crate::id::ObjectId;
}

/// Splits the version prefix off `bytes`, checking it against `R::VERSION`.
pub fn check_version<R: Record>(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    let (head, body) = bytes
        .split_first_chunk::<2>()
        .ok_or(DecodeError::Truncated { record: R::NAME })?;
    let found = u16::from_le_bytes(*head);
    if found != R::VERSION {
        return Err(DecodeError::UnknownVersion {
            record: R::NAME,
            found,
            supported: R::VERSION,
        });
    }
    Ok(body)
}

/// Splits the version prefix off `bytes`, accepting any of `versions` (a record that still
/// reads older versions); returns the version found and the body.
pub fn check_version_in<'a, R: Record>(
    bytes: &'a [u8],
    versions: &[u16],
) -> Result<(u16, &'a [u8]), DecodeError> {
    let (head, body) = bytes
        .split_first_chunk::<2>()
        .ok_or(DecodeError::Truncated { record: R::NAME })?;
    let found = u16::from_le_bytes(*head);
    if !versions.contains(&found) {
        return Err(DecodeError::UnknownVersion {
            record: R::NAME,
            found,
            supported: R::VERSION,
        });
    }
    Ok((found, body))
}

/// Encodes `value` as version prefix + postcard body.
pub fn encode_postcard<R: Record + Serialize>(value: &R) -> Vec<u8> {
    let mut out = R::VERSION.to_le_bytes().to_vec();
    // Serializing plain data structs into a Vec cannot fail: postcard only errors on
    // unsupported serde features (none are used) or a full fixed buffer (a Vec grows).
    postcard::to_io(value, &mut out).expect("postcard encoding of a plain record");
    out
}

/// Decodes a version prefix + postcard body, rejecting trailing bytes.
pub fn decode_postcard<R: Record + DeserializeOwned>(bytes: &[u8]) -> Result<R, DecodeError> {
    decode_postcard_body(R::NAME, check_version::<R>(bytes)?)
}

/// Decodes a postcard body (the version prefix already checked) of the record `record`,
/// rejecting trailing bytes. For records that still read an older version's body.
pub fn decode_postcard_body<T: DeserializeOwned>(
    record: &'static str,
    body: &[u8],
) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated { record },
        other => DecodeError::Malformed {
            record,
            detail: other.to_string(),
        },
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed {
            record,
            detail: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(value)
}

/// Implements [`Record`] for a serde type using the postcard envelope.
#[macro_export]
macro_rules! postcard_record {
    ($ty:ty, $name:literal, $version:literal) => {
        impl $crate::record::Record for $ty {
            const NAME: &'static str = $name;
            const VERSION: u16 = $version;
            fn encode(&self) -> Vec<u8> {
                $crate::record::encode_postcard(self)
            }
            fn decode(bytes: &[u8]) -> Result<Self, $crate::record::DecodeError> {
                $crate::record::decode_postcard(bytes)
            }
        }
    };
}
