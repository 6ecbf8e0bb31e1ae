//! The node agent: executes PodVolumeBackups and PodVolumeRestores of pods on its node.
//!
//! One agent runs per node (a DaemonSet). It claims each operation exactly once by replacing
//! the object's status with a `resourceVersion` precondition (New → InProgress; a 409 Conflict
//! means another agent or an earlier incarnation of this one got there first), runs the engine
//! on the volume's host directory under the kubelet root, and keeps `status` current.
//!
//! The module is split so that almost everything is testable without an API server:
//! - [`decide`]: pure decisions (what to do with an object given its status and this node,
//!   status construction, progress throttling, engine options from a spec and a pod);
//! - [`repo`]: repository settings from a BackupRepository and its Secrets, open-or-init;
//! - [`execute`]: the executor bodies [`execute::execute_backup`] and
//!   [`execute::execute_restore`], plain blocking functions taking objects already fetched;
//! - [`outcome`]: failure reasons (one enum), result classes and the report both return;
//! - the thin Kubernetes seam, by concern: [`agent`] (process state, node-scoped watches,
//!   start-up), [`operation`] (one decide → claim → run → finish path for both kinds),
//!   [`status`] (claim, status patches, finalizer), [`prepare`] (reads before a run and the
//!   coordinated first use of a repository);
//! - [`hooks`]: pre/post backup hooks (annotation parsing and their rules, pure) and
//!   [`exec`]: running a command in a container through `pods/exec` (hooks, dumps);
//!   [`dump`]: a backup command's stdout streamed into a one-file snapshot (the glue);
//! - [`metrics`]: Prometheus metrics and the `/metrics` + `/healthz` server;
//! - [`restore_wait`]: the `podvault restore-wait` init-container mode.
//! - [`maintenance`]: `podvault maintenance`, one scheduled prune, check or drill (in a Job).
//!
//! The engine knows nothing of this module; this module only calls the engine's public API.

pub mod agent;
pub mod decide;
pub mod dump;
pub mod exec;
pub mod execute;
pub mod hooks;
pub mod maintenance;
pub mod metrics;
pub mod operation;
pub mod outcome;
pub mod prepare;
pub mod repo;
pub mod restore_wait;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::EXIT_FAILURE;

/// Options of `podvault agent` (all also read from the environment, as the DaemonSet sets them).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Name of the node this agent runs on; only pods on it are handled.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// This agent's identity, recorded in `status.agent` (its pod name).
    #[arg(long, env = "POD_NAME")]
    pub agent_name: Option<String>,
    /// Namespace the agent runs in: BackupRepository Secrets are read from here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "podvault")]
    pub namespace: String,
    /// The kubelet's root directory (holding `pods/<uid>/volumes`).
    #[arg(
        long,
        env = "PODVAULT_KUBELET_ROOT",
        default_value = "/var/lib/kubelet"
    )]
    pub kubelet_root: PathBuf,
    /// Operations run at the same time on this node.
    #[arg(long, env = "PODVAULT_CONCURRENCY", default_value_t = 2)]
    pub concurrency: usize,
    /// BackupRepository used when an operation names none.
    #[arg(long, env = "PODVAULT_DEFAULT_REPOSITORY", default_value = "default")]
    pub default_repository: String,
    /// Address serving `/metrics` and `/healthz`.
    #[arg(long, env = "PODVAULT_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    pub metrics_addr: SocketAddr,
    /// Run backup hooks and backup commands in pods' containers (`pods/exec`). When off, a
    /// PodVolumeBackup of a pod with hook or backup-command annotations fails with
    /// `exec_not_allowed` instead of running without its hook.
    #[arg(long, env = "PODVAULT_ALLOW_EXEC")]
    pub allow_exec: bool,
    /// Back up and restore hostPath volumes too, wherever they point (a pod's hostPath is
    /// chosen by whoever writes the pod: prefer --host-path-root).
    #[arg(long, env = "PODVAULT_ALLOW_HOST_PATH")]
    pub allow_host_path: bool,
    /// A host directory whose subdirectories may be hostPath PersistentVolumes to back up and
    /// restore into (e.g. `/opt/local-path-provisioner`, the default storage of k3s and kind);
    /// repeatable, or comma-separated in the variable. It must be mounted into the agent at
    /// the same path (read-only when restores into it are not wanted).
    #[arg(
        long = "host-path-root",
        env = "PODVAULT_HOST_PATH_ROOTS",
        value_delimiter = ',',
        value_name = "DIR"
    )]
    pub host_path_roots: Vec<PathBuf>,
    /// Seconds between status progress updates of a running operation.
    #[arg(long, default_value_t = 3)]
    pub progress_interval_secs: u64,
    /// Seconds to wait for a Pending pod's volume to be mounted before failing.
    #[arg(long, default_value_t = 120)]
    pub mount_wait_secs: u64,
}

impl AgentArgs {
    /// The agent identity: `--agent-name`, else the host name.
    pub fn identity(&self) -> String {
        self.agent_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(crate::repository::hostname)
    }

    /// Progress update interval.
    pub fn progress_interval(&self) -> Duration {
        Duration::from_secs(self.progress_interval_secs.max(1))
    }
}

/// `podvault agent`: runs until the process is stopped. Errors are printed here (they are
/// Kubernetes or server errors, not engine errors) and give exit code 1.
pub fn agent_command(args: &AgentArgs) -> crate::Result<u8> {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("podvault-agent")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Err(crate::Error::io("<tokio runtime>", e)),
    };
    match rt.block_on(agent::run(args.clone())) {
        Ok(()) => Ok(crate::cli::EXIT_OK),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(EXIT_FAILURE)
        }
    }
}
