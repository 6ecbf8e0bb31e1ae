//! `podvault-controller`: schedules PodVolumeBackups from pod annotations.
//!
//! Start-up order: metrics server, then leader election (a follower only serves `/healthz`
//! and `/metrics`), then the pod controller and the history sweep. Losing the lease ends the
//! process so it restarts as a follower.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::{Api, Client};
use podvault_controller::lease::try_acquire_or_renew;
use podvault_controller::metrics::Metrics;
use podvault_controller::operations::{reconcile_route, route_error_policy, RouteContext, Routed};
use podvault_controller::options::ControllerOptions;
use podvault_controller::plan::MANAGER;
use podvault_controller::reconciler::{error_policy, reconcile, sweep, Access, Context};
use podvault_controller::schedule::Schedule;
use podvault_controller::server;
use podvault_proto::crd::{BackupRepository, PodVolumeBackup, PodVolumeRestore};

/// Sets up logging to stderr: `RUST_LOG` filters (default `info`); plain text with colours
/// only on a terminal, or one JSON object per line.
fn init_logging(format: &str) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One TLS provider for the process (see the agent's `tls` module for why).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let opts = ControllerOptions::parse();
    init_logging(&opts.log_format);
    Schedule::parse(&opts.default_schedule).context("--default-schedule")?;
    let metrics = Metrics::new()?;
    let mut server = tokio::spawn(server::serve(opts.metrics_addr, metrics.clone()));

    let config = kube::Config::infer()
        .await
        .context("loading the Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let url = config.cluster_url.clone();
    let client = Client::try_from(config)
        .with_context(|| format!("creating the Kubernetes client for {url}"))?;
    Api::<PodVolumeBackup>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
        .with_context(|| {
            format!(
                "Kubernetes API at {url}: listing PodVolumeBackups (is the API server \
                 reachable, are the CRDs installed, and does the controller's ServiceAccount \
                 have the shipped RBAC?)"
            )
        })?;
    let identity = opts
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("{MANAGER}-{}", std::process::id()));
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.lease_namespace);
    let duration = chrono::Duration::seconds(i64::from(opts.lease_duration_secs.max(3)));
    let renew_every = Duration::from_secs(u64::from(opts.lease_duration_secs.max(3) / 3));

    tracing::info!(%identity, lease = %opts.lease_name, "waiting for leadership");
    // Registered once, so a SIGTERM between two looks at the lease is not missed.
    let mut stop = std::pin::pin!(terminated());
    loop {
        match try_acquire_or_renew(
            &leases,
            &opts.lease_name,
            &identity,
            chrono::Utc::now(),
            duration,
        )
        .await
        {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::select! {
            _ = tokio::time::sleep(renew_every) => {}
            r = &mut server => bail!("metrics server stopped: {r:?}"),
            // A standby has nothing to finish: stop at once, not at the end of the grace period.
            () = &mut stop => {
                tracing::info!("stopping (standby, never led)");
                return Ok(());
            }
        }
    }
    metrics.leader.set(1);
    tracing::info!(%identity, "leading");

    // Watch caches for the repository-access rule (BackupRepositories, Namespaces' labels).
    let (repositories, repositories_writer) = reflector::store::<BackupRepository>();
    let (namespaces, namespaces_writer) = reflector::store::<Namespace>();
    let caches = futures::future::join(
        reflector(
            repositories_writer,
            watcher(
                Api::<BackupRepository>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(())),
        reflector(
            namespaces_writer,
            watcher(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(())),
    );

    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_string(),
                instance: Some(identity.clone()),
            },
        ),
        metrics: metrics.clone(),
        options: opts.plan_options(),
        backup_history: opts.backup_history(),
        restore_history: opts.restore_history(),
        clock: Arc::new(chrono::Utc::now),
        access: Access {
            repositories: repositories.clone(),
            namespaces: namespaces.clone(),
        },
    });

    let pods: Api<Pod> = Api::all(client.clone());
    let controller = Controller::new(pods, watcher::Config::default().any_semantic());
    let store = controller.store();
    let run = controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(pod = %obj, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        });

    // Node routing of user-created objects and the finalizer's safety net.
    let route_ctx = Arc::new(RouteContext {
        client: client.clone(),
        pods: store.clone(),
        clock: Arc::new(chrono::Utc::now),
        finalizer_timeout: Duration::from_secs(opts.finalizer_timeout_secs),
    });
    let routes = futures::future::join(
        run_routes::<PodVolumeBackup>(client.clone(), route_ctx.clone()),
        run_routes::<PodVolumeRestore>(client.clone(), route_ctx),
    );

    let sweep_ctx = ctx.clone();
    let sweep_every = Duration::from_secs(opts.sweep_interval_secs.max(1));
    let sweeper = async move {
        loop {
            tokio::time::sleep(sweep_every).await;
            match sweep(&sweep_ctx, &store.state()).await {
                Ok(report) => tracing::debug!(?report, "sweep"),
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
        }
    };

    // Scheduled repository maintenance (Jobs), and the repository gauges.
    let maintenance_opts = opts.maintenance_options();
    let maintenance_every = opts.maintenance_interval_secs;
    let maintenance_client = client.clone();
    let maintenance_metrics = metrics.clone();
    let maintainer = async move {
        if maintenance_every == 0 {
            return futures::future::pending::<()>().await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(maintenance_every)).await;
            let now = chrono::Utc::now();
            let repos = repositories.state();
            for repo in &repos {
                match podvault_controller::maintenance::tick(
                    &maintenance_client,
                    repo,
                    &maintenance_opts,
                    now,
                )
                .await
                {
                    Ok(action) => {
                        tracing::debug!(repository = %repo.metadata.name.as_deref().unwrap_or_default(), ?action, "maintenance")
                    }
                    Err(e) => {
                        tracing::warn!(repository = %repo.metadata.name.as_deref().unwrap_or_default(), error = %e, "maintenance tick failed")
                    }
                }
            }
            podvault_controller::maintenance::export(&maintenance_metrics, &repos, now);
        }
    };

    let renewer = async {
        let mut last_renewed = chrono::Utc::now();
        loop {
            tokio::time::sleep(renew_every).await;
            let now = chrono::Utc::now();
            match try_acquire_or_renew(&leases, &opts.lease_name, &identity, now, duration).await {
                Ok(true) => last_renewed = now,
                Ok(false) => return "another replica holds the lease",
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the lease");
                    if now - last_renewed >= duration {
                        return "could not renew the lease in time";
                    }
                }
            }
        }
    };

    tokio::select! {
        _ = run => tracing::info!("controller stopped"),
        _ = caches => tracing::info!("watch caches stopped"),
        _ = routes => tracing::info!("routing stopped"),
        _ = sweeper => {}
        _ = maintainer => {}
        why = renewer => {
            metrics.leader.set(0);
            bail!("lost leadership: {why}");
        }
        r = &mut server => bail!("metrics server stopped: {r:?}"),
    }
    Ok(())
}

/// Runs the routing controller of kind `K` (see `podvault_controller::operations`).
async fn run_routes<K: Routed>(client: Client, ctx: Arc<RouteContext>) {
    Controller::new(Api::<K>::all(client), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile_route::<K>, route_error_policy::<K>, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "routing");
            }
        })
        .await;
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
