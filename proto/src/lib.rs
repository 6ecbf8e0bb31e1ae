//! Shared podvault types with no I/O and no async runtime.
//!
//! This crate owns everything that must agree between the engine, the node agent and the
//! controller: typed object ids, the repository's on-disk records (one module per record type)
//! and the retention policy. Every persisted record carries an explicit format version;
//! decoding a version this build does not know is an error, never a panic.

pub mod config;
pub mod id;
pub mod index;
pub mod key;
pub mod pack;
pub mod record;
pub mod retention;
pub mod snapshot;
pub mod tree;

pub use id::{BlobId, ChunkId, ConfigId, IndexId, KeyId, ObjectId, PackId, SnapshotId, TreeId};
pub use record::{DecodeError, ObjectKind, ObjectRecord, Record};

#[cfg(feature = "k8s")]
pub mod crd;
#[cfg(feature = "k8s")]
pub mod k8s;
