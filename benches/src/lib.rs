//! Shared code of the podvault benchmarks: seeded dataset generation ([`dataset`]), child
//! process measurement ([`measure`]), statistics and the Markdown report ([`stats`]) and the
//! PNG chart ([`chart`]). The `compare` binary wires them into the side-by-side harness; the
//! smoke test in `tests/harness.rs` exercises them at a tiny scale.

pub mod chart;
pub mod dataset;
pub mod measure;
pub mod rng;
pub mod stats;
