//! Kubernetes vocabulary shared by the agent and the controller, as pure functions.
//!
//! - [`annotations`]: the pod annotations and object labels podvault reads and writes, and
//!   parsers for their values.
//! - [`series`]: which backups belong together (retention, history, staleness alerts).
//! - [`volume`]: which pod volumes may be backed up, and where a volume lives on its node under
//!   the kubelet root.
//! - [`isolation`]: which snapshots a restore may read.
//!
//! Nothing here performs I/O or talks to an API server: callers fetch the Pod (and the bound
//! PersistentVolume) and pass them in, so every rule is testable without a cluster.

pub mod annotations;
pub mod isolation;
pub mod series;
pub mod volume;

pub use annotations::*;
pub use isolation::{check_restore_namespace, snapshot_namespace, IsolationError};
pub use series::{dump_snapshot_tags, snapshot_tags, ParseSeriesError, Series, SeriesSource};
pub use volume::{
    claim_name, classify_volume, escape_plugin_name, find_volume, resolve_volume, VolumeClass,
    VolumeError, VolumeLocation, VolumePolicy,
};
