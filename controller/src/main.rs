//! `podvault-controller`: schedules PodVolumeBackups from pod annotations.
//!
//! Start-up order: metrics server, then leader election (a follower only serves `/healthz`
//! and `/metrics`), then the pod controller and the history sweep. Losing the lease ends the
//! process so it restarts as a follower.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use podvault_controller::lease::try_acquire_or_renew;
use podvault_controller::metrics::Metrics;
use podvault_controller::options::ControllerOptions;
use podvault_controller::plan::MANAGER;
use podvault_controller::reconciler::{error_policy, reconcile, sweep, Context};
use podvault_controller::schedule::Schedule;
use podvault_controller::server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let opts = ControllerOptions::parse();
    Schedule::parse(&opts.default_schedule).context("--default-schedule")?;
    let metrics = Metrics::new()?;
    let mut server = tokio::spawn(server::serve(opts.metrics_addr, metrics.clone()));

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let identity = opts
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("{MANAGER}-{}", std::process::id()));
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.lease_namespace);
    let duration = chrono::Duration::seconds(i64::from(opts.lease_duration_secs.max(3)));
    let renew_every = Duration::from_secs(u64::from(opts.lease_duration_secs.max(3) / 3));

    tracing::info!(%identity, lease = %opts.lease_name, "waiting for leadership");
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
        }
    }
    metrics.leader.set(1);
    tracing::info!(%identity, "leading");

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
        _ = sweeper => {}
        why = renewer => {
            metrics.leader.set(0);
            bail!("lost leadership: {why}");
        }
        r = &mut server => bail!("metrics server stopped: {r:?}"),
    }
    Ok(())
}
