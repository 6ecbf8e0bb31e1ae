//! Shared code of the podvault benchmarks: seeded dataset generation ([`dataset`]), child
//! process measurement ([`measure`]), statistics and the Markdown report ([`stats`]), the
//! PNG chart ([`chart`]) and the S3 server of the S3 mode ([`s3`]). The `compare` binary
//! wires them into the side-by-side harness; the smoke test in `tests/harness.rs` exercises
//! them at a tiny scale.

pub mod chart;
pub mod dataset;
pub mod measure;
pub mod rng;
pub mod s3;
pub mod stats;
