//! podvault: an encrypted, deduplicating, incremental backup engine for Kubernetes volumes.
//!
//! The engine is organised by concern: [`chunker`] cuts content-defined chunks,
//! [`crypto`] derives keys, ids and seals data, [`blob`] compresses and seals one blob,
//! [`packer`] groups blobs into pack objects, [`index`] answers "where is blob X",
//! [`repository`] stores and loads records through a [`backend`], [`archiver`] runs a backup,
//! [`restorer`] a restore, [`dump`] streams one file of a snapshot and [`forget`] applies
//! retention. [`cli`] is the `podvault` command.
//! The engine knows nothing of Kubernetes.

pub mod archiver;
pub mod backend;
pub mod blob;
pub mod cache;
pub mod check;
pub mod chunker;
pub mod cli;
pub mod commands;
pub mod crypto;
pub mod dump;
pub mod error;
pub mod forget;
pub mod fsat;
pub mod index;
pub mod packer;
pub mod progress;
pub mod prune;
pub mod repository;
pub mod restorer;
pub mod tls;
pub mod worker;

pub use error::{Error, Result};
