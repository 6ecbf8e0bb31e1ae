//! Kubernetes vocabulary shared by the agent and the controller, as pure functions.
//!
//! - [`annotations`]: the pod annotations and object labels podvault reads and writes, and
//!   parsers for their values.
//! - [`series`]: which backups belong together (retention, history, staleness alerts).
//! - [`volume`]: which pod volumes may be backed up, and where a volume lives on its node under
//!   the kubelet root.
//! - [`isolation`]: what one namespace may reach: snapshots, identity tags, repositories.
//!
//! Nothing here performs I/O or talks to an API server: callers fetch the Pod (and the bound
//! PersistentVolume) and pass them in, so every rule is testable without a cluster.

pub mod annotations;
pub mod isolation;
pub mod series;
pub mod volume;

pub use annotations::*;
pub use isolation::{
    access_needs_labels, check_repository_access, check_restore_namespace, check_user_tags,
    IsolationError, RepositoryAccessError, ReservedTagError, RESERVED_TAG_PREFIX,
};
pub use series::{dump_identity, volume_identity, ParseSeriesError, Series, SeriesSource};
pub use volume::{
    claim_name, classify_volume, escape_plugin_name, find_volume, host_path_under_root,
    resolve_volume, VolumeClass, VolumeError, VolumeLocation, VolumePolicy,
};
