//! `podvault maintenance`: one scheduled prune, check or restore drill of a BackupRepository,
//! run in a Job the controller creates (see the controller's `maintenance` module).
//!
//! The Job holds the repository's maintenance Lease (`podvault-maintenance-<repository>`,
//! taken by the controller in the Job's name before it creates it); the runner refuses to
//! start when the Lease names another holder, so two runs on one repository never overlap,
//! whatever the controller replicas do. It records the run in the BackupRepository's
//! `status.maintenance` (Running, then Succeeded or Failed, with bytes freed or data
//! verified), the repository's size, snapshot and pack counts, and per series the last
//! drill, and publishes an Event. Exit code 0 when the run succeeded, 1 otherwise.
//!
//! - **prune** runs `podvault prune --grace <spec grace>`.
//! - **check** runs `podvault check --read-data-subset k/N` with k rotating through the
//!   runs (`checksRun mod N + 1`), so N runs read every pack once; N = 0 checks structure
//!   only.
//! - **drill** picks the series whose last drill is oldest (never drilled first), up to
//!   `seriesPerRun` and `maxBytesPerRun`, and streams every file of each one's latest
//!   snapshot to its end, verifying every chunk ([`crate::dump::verify_snapshot`]); a dump
//!   snapshot is one file streamed to EOF.
//!
//! Memory: the engine's own bounds. Prune holds, per index entry, the index (48 bytes), the
//! entries grouped by pack (80), the set of referenced blobs (about 55 with the hash table's
//! slack) and the claim of each referenced blob (about 110): about 300 bytes, 3 GB for a
//! 10 M-entry index (computed from those structures, not measured at that size). The Job's
//! memory limit is the controller's `--maintenance-memory` (4 GiB).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use podvault_proto::crd::{
    maintenance_lease_name as lease_name, BackupRepository, MaintenanceKind, MaintenanceRun,
    MaintenanceStatus, SeriesDrill,
};
use podvault_proto::snapshot::Snapshot;

use super::repo::{open_repository, settings, SecretData};
use crate::check::{CheckOptions, Subset};
use crate::prune::PruneOptions;
use crate::repository::Repository;

/// Field manager of the runner's writes.
pub const MANAGER: &str = "podvault-maintenance";

/// `podvault maintenance` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MaintenanceArgs {
    /// The BackupRepository.
    #[arg(long)]
    pub repository: String,
    /// prune, check or drill.
    #[arg(long)]
    pub kind: MaintenanceKind,
    /// The Job this runs in (the holder the Lease must name).
    #[arg(long, env = "PODVAULT_MAINTENANCE_JOB")]
    pub job: String,
    /// Namespace of the Lease and the Secrets.
    #[arg(long, env = "POD_NAMESPACE", default_value = "podvault")]
    pub namespace: String,
}

/// The part of the data check run number `checks_run` (0-based) reads: `k/N`, rotating.
pub fn check_subset(parts: u32, checks_run: u64) -> Option<Subset> {
    (parts > 0).then(|| Subset::Part {
        n: (checks_run % u64::from(parts)) as u32 + 1,
        m: parts,
    })
}

/// A series' latest snapshot, a drill candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Series key.
    pub series: String,
    /// Snapshot id (hex).
    pub snapshot: String,
    /// Bytes its files hold.
    pub bytes: u64,
}

/// Which series to drill this run: oldest last drill first (never drilled before all,
/// then by series key), at most `per_run`, while the bytes stay within `max_bytes` (the
/// first one always runs, so a series larger than the cap is still drilled). Returns the
/// chosen ones and how many were left for later.
pub fn drill_sample(
    mut candidates: Vec<Candidate>,
    drills: &[SeriesDrill],
    per_run: u32,
    max_bytes: u64,
) -> (Vec<Candidate>, usize) {
    let last: HashMap<&str, i64> = drills
        .iter()
        .map(|d| {
            let at = [d.last_success.as_ref(), d.last_failure.as_ref()]
                .into_iter()
                .flatten()
                .map(|t| t.0.as_second())
                .max()
                .unwrap_or(i64::MIN);
            (d.series.as_str(), at)
        })
        .collect();
    candidates.sort_by(|a, b| {
        let la = last.get(a.series.as_str()).copied().unwrap_or(i64::MIN);
        let lb = last.get(b.series.as_str()).copied().unwrap_or(i64::MIN);
        la.cmp(&lb).then_with(|| a.series.cmp(&b.series))
    });
    let total = candidates.len();
    let mut chosen = Vec::new();
    let mut bytes = 0u64;
    for c in candidates {
        if chosen.len() >= per_run as usize {
            break;
        }
        if !chosen.is_empty() && bytes.saturating_add(c.bytes) > max_bytes {
            continue;
        }
        bytes = bytes.saturating_add(c.bytes);
        chosen.push(c);
    }
    let left = total - chosen.len();
    (chosen, left)
}

/// The latest snapshot of every series (snapshots without an identity are the CLI's and
/// are not drilled).
pub fn latest_per_series(snapshots: &[(String, Snapshot)]) -> Vec<Candidate> {
    let mut latest: HashMap<String, (&str, &Snapshot)> = HashMap::new();
    for (id, s) in snapshots {
        let Some(series) = s.series() else { continue };
        let e = latest.entry(series.to_string()).or_insert((id, s));
        if s.time_ns > e.1.time_ns {
            *e = (id, s);
        }
    }
    latest
        .into_iter()
        .map(|(series, (id, s))| Candidate {
            series,
            snapshot: id.to_string(),
            bytes: s.summary.total_bytes,
        })
        .collect()
}

/// What one run did.
struct Outcome {
    ok: bool,
    message: String,
    bytes_freed: Option<u64>,
    verified: Option<u64>,
    drills: Vec<SeriesDrill>,
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// `podvault maintenance`: exit code 0 when the run succeeded.
pub fn maintenance_command(args: &MaintenanceArgs) -> crate::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::Error::io("<tokio runtime>", e))?;
    match rt.block_on(run(args)) {
        Ok(true) => Ok(crate::cli::EXIT_OK),
        Ok(false) => Ok(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(1)
        }
    }
}

async fn run(args: &MaintenanceArgs) -> anyhow::Result<bool> {
    let client = Client::try_default().await?;
    let name = &args.repository;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.namespace);
    let holder = leases
        .get_opt(&lease_name(name))
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity);
    if holder.as_deref() != Some(args.job.as_str()) {
        tracing::warn!(repository = %name, ?holder, job = %args.job, "the maintenance Lease names another holder; not running");
        return Ok(false);
    }
    let repos: Api<BackupRepository> = Api::all(client.clone());
    let repo_obj = repos.get(name).await?;
    let started = now();
    let mut run = MaintenanceRun {
        kind: args.kind,
        job: args.job.clone(),
        started: started.clone(),
        finished: None,
        result: "Running".into(),
        bytes_freed: None,
        verified: None,
        message: String::new(),
    };
    record(&repos, name, |m| m.record(run.clone()), None).await?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let read = |secret: String| {
        let secrets = secrets.clone();
        async move {
            let s = secrets
                .get(&secret)
                .await
                .map_err(|e| anyhow::anyhow!("reading Secret {}/{secret}: {e}", args.namespace))?;
            Ok::<SecretData, anyhow::Error>(super::prepare::secret_data(&s))
        }
    };
    let spec = repo_obj.spec.clone();
    let password = read(spec.password_secret.name.clone()).await?;
    let credentials = match &spec.credentials_secret {
        Some(c) => Some(read(c.name.clone()).await?),
        None => None,
    };
    let settings =
        settings(name, &spec, &password, credentials.as_ref()).map_err(|m| anyhow::anyhow!(m))?;
    let location = settings.location.to_string();
    let status = repo_obj
        .status
        .as_ref()
        .and_then(|s| s.maintenance.clone())
        .unwrap_or_default();
    let kind = args.kind;
    let outcome = tokio::task::spawn_blocking(move || {
        let repo = match open_repository(&settings, false) {
            Ok(r) => r,
            Err(e) => {
                return (
                    Outcome {
                        ok: false,
                        message: format!("opening the repository: {e}"),
                        bytes_freed: None,
                        verified: None,
                        drills: Vec::new(),
                    },
                    None,
                )
            }
        };
        let outcome = execute(&repo, kind, &spec.maintenance, &status);
        (outcome, stats(&repo))
    })
    .await?;
    let (outcome, stats) = outcome;
    run.finished = Some(now());
    run.result = if outcome.ok { "Succeeded" } else { "Failed" }.into();
    run.bytes_freed = outcome.bytes_freed;
    run.verified = outcome.verified;
    run.message = outcome.message.clone();
    let drills = outcome.drills;
    record(
        &repos,
        name,
        |m| {
            m.record(run.clone());
            if kind == MaintenanceKind::Check {
                m.checks_run += 1;
            }
            if let Some((size, snapshots, packs)) = stats {
                m.size_bytes = Some(size);
                m.snapshots = Some(snapshots);
                m.packs = Some(packs);
            }
            for d in &drills {
                match m.drills.iter_mut().find(|x| x.series == d.series) {
                    Some(x) => {
                        x.snapshot = d.snapshot.clone();
                        x.message = d.message.clone();
                        if d.last_success.is_some() {
                            x.last_success = d.last_success.clone();
                        }
                        if d.last_failure.is_some() {
                            x.last_failure = d.last_failure.clone();
                        }
                    }
                    None => m.drills.push(d.clone()),
                }
            }
            m.drills.sort_by(|a, b| a.series.cmp(&b.series));
        },
        Some(location),
    )
    .await?;
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: MANAGER.into(),
            instance: Some(args.job.clone()),
        },
    );
    let event = Event {
        type_: if outcome.ok {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: format!(
            "{}{}",
            capitalised(kind.as_str()),
            if outcome.ok { "Succeeded" } else { "Failed" }
        ),
        note: Some(truncate(&outcome.message, 1000)),
        action: capitalised(kind.as_str()),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &repo_obj.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing the maintenance event");
    }
    println!("{kind} of {name}: {}: {}", run.result, outcome.message);
    Ok(outcome.ok)
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Size (bytes of all packs), snapshots and packs of the repository.
fn stats(repo: &Repository) -> Option<(u64, u64, u64)> {
    let index = repo.load_index().ok()?;
    let (mut size, mut packs) = (0u64, 0u64);
    for p in index.packs() {
        size += u64::from(p.size);
        packs += 1;
    }
    let snapshots = repo.list::<Snapshot>().ok()?.len() as u64;
    Some((size, snapshots, packs))
}

fn execute(
    repo: &Repository,
    kind: MaintenanceKind,
    spec: &podvault_proto::crd::Maintenance,
    status: &MaintenanceStatus,
) -> Outcome {
    let mut out = Outcome {
        ok: false,
        message: String::new(),
        bytes_freed: None,
        verified: None,
        drills: Vec::new(),
    };
    match kind {
        MaintenanceKind::Prune => {
            let grace = match humantime::parse_duration(&spec.prune.grace) {
                Ok(g) => g,
                Err(e) => {
                    out.message =
                        format!("spec.maintenance.prune.grace {:?}: {e}", spec.prune.grace);
                    return out;
                }
            };
            let opts = PruneOptions {
                grace,
                ..PruneOptions::default()
            };
            match crate::prune::prune(repo, &opts) {
                Ok(r) => {
                    out.ok = true;
                    out.bytes_freed = Some(r.bytes_deleted);
                    out.message = format!(
                        "{} packs deleted ({} bytes freed), {} marked, {} pending, {} left alone for {} running backup(s)",
                        r.packs_deleted, r.bytes_deleted, r.packs_marked, r.packs_pending, r.packs_protected, r.sessions_alive
                    );
                }
                Err(e) => out.message = format!("prune failed: {e}"),
            }
        }
        MaintenanceKind::Check => {
            let subset = check_subset(spec.check.read_data_parts, status.checks_run);
            let opts = CheckOptions {
                read_data: false,
                read_data_subset: subset,
                threads: None,
            };
            match crate::check::check(repo, &opts) {
                Ok(r) => {
                    out.verified = Some(r.packs_read as u64);
                    let part = match subset {
                        Some(Subset::Part { n, m }) => format!("data part {n}/{m}"),
                        _ => "structure only".into(),
                    };
                    out.ok = r.is_clean();
                    out.message = match out.ok {
                        true => format!(
                            "clean: {} snapshots, {} packs, {part}: {} packs read",
                            r.snapshots, r.packs, r.packs_read
                        ),
                        false => format!(
                            "{} problem(s) ({part}), {} snapshot(s) affected; first: {}: {}",
                            r.errors.len(),
                            r.affected.len(),
                            r.errors[0].object,
                            r.errors[0].detail
                        ),
                    };
                }
                Err(e) => out.message = format!("check failed: {e}"),
            }
        }
        MaintenanceKind::Drill => {
            let snapshots = match repo.snapshots() {
                Ok(s) => s,
                Err(e) => {
                    out.message = format!("listing snapshots: {e}");
                    return out;
                }
            };
            let by_id: Vec<(String, Snapshot)> = snapshots
                .into_iter()
                .map(|(id, s)| (id.to_hex(), s))
                .collect();
            let (chosen, left) = drill_sample(
                latest_per_series(&by_id),
                &status.drills,
                spec.drill.series_per_run,
                spec.drill.max_bytes_per_run,
            );
            let snaps: HashMap<&str, &Snapshot> =
                by_id.iter().map(|(id, s)| (id.as_str(), s)).collect();
            let (mut passed, mut failed, mut bytes) = (0u64, 0u64, 0u64);
            let mut first_failure = None;
            for c in &chosen {
                let at = now();
                let result = crate::dump::verify_snapshot(
                    repo,
                    snaps[c.snapshot.as_str()],
                    &AtomicBool::new(false),
                );
                let mut d = SeriesDrill {
                    series: c.series.clone(),
                    snapshot: c.snapshot.clone(),
                    last_success: None,
                    last_failure: None,
                    message: String::new(),
                };
                match result {
                    Ok(v) => {
                        passed += 1;
                        bytes += v.bytes;
                        d.last_success = Some(at);
                        d.message = format!(
                            "snapshot {}: {} files, {} bytes read back and verified",
                            &c.snapshot[..8],
                            v.files,
                            v.bytes
                        );
                    }
                    Err(e) => {
                        failed += 1;
                        d.last_failure = Some(at);
                        d.message = format!("snapshot {}: {e}", &c.snapshot[..8]);
                        first_failure.get_or_insert_with(|| format!("{}: {}", c.series, d.message));
                    }
                }
                out.drills.push(d);
            }
            out.verified = Some(passed);
            out.ok = failed == 0;
            out.message = format!(
                "{passed} series passed, {failed} failed ({bytes} bytes verified); {left} left for later runs{}",
                first_failure.map(|f| format!("; first failure: {f}")).unwrap_or_default()
            );
        }
    }
    out
}

/// Reads the BackupRepository, applies `change` to its maintenance status (and sets the
/// location) and writes `status.maintenance` back, retrying on conflicts.
async fn record(
    repos: &Api<BackupRepository>,
    name: &str,
    change: impl Fn(&mut MaintenanceStatus),
    location: Option<String>,
) -> anyhow::Result<()> {
    for _ in 0..5 {
        let obj = repos.get_status(name).await?;
        let mut m = obj
            .status
            .as_ref()
            .and_then(|s| s.maintenance.clone())
            .unwrap_or_default();
        change(&mut m);
        let mut patch = serde_json::json!({
            "metadata": {"resourceVersion": obj.metadata.resource_version},
            "status": {"maintenance": m},
        });
        if let Some(l) = &location {
            patch["status"]["location"] = serde_json::json!(l);
        }
        let pp = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match repos.patch_status(name, &pp, &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("BackupRepository {name}: status kept changing; the run was not recorded")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn cand(series: &str, bytes: u64) -> Candidate {
        Candidate {
            series: series.into(),
            snapshot: format!("{:0>64}", series.len()),
            bytes,
        }
    }

    fn drilled(series: &str, ok: Option<i64>, failed: Option<i64>) -> SeriesDrill {
        SeriesDrill {
            series: series.into(),
            snapshot: "0".repeat(64),
            last_success: ok.map(at),
            last_failure: failed.map(at),
            message: String::new(),
        }
    }

    #[test]
    fn check_parts_rotate_through_all_data() {
        let parts: Vec<_> = (0..8).map(|k| check_subset(3, k)).collect();
        let n = |s: &Option<Subset>| match s {
            Some(Subset::Part { n, m: 3 }) => *n,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            parts.iter().map(n).collect::<Vec<_>>(),
            [1, 2, 3, 1, 2, 3, 1, 2]
        );
        assert!(check_subset(0, 5).is_none(), "0: structure only");
    }

    #[test]
    fn drills_take_the_longest_undrilled_series_first() {
        let candidates = vec![
            cand("a/x", 10),
            cand("b/x", 10),
            cand("c/x", 10),
            cand("d/x", 10),
        ];
        let drills = vec![
            drilled("a/x", Some(300), None),
            drilled("b/x", Some(100), Some(200)),
            drilled("c/x", None, Some(50)),
        ];
        // d never drilled; then c (50), b (200: its failure is its last drill), a (300).
        let (chosen, left) = drill_sample(candidates.clone(), &drills, 3, u64::MAX);
        let names: Vec<_> = chosen.iter().map(|c| c.series.as_str()).collect();
        assert_eq!(names, ["d/x", "c/x", "b/x"]);
        assert_eq!(left, 1);
        // Run after run, every series comes round.
        let (all, left) = drill_sample(candidates, &drills, 10, u64::MAX);
        assert_eq!(all.len(), 4);
        assert_eq!(left, 0);
    }

    #[test]
    fn drills_respect_the_byte_cap_but_always_run_one() {
        let candidates = vec![cand("a/x", 100), cand("b/x", 30), cand("c/x", 30)];
        let (chosen, left) = drill_sample(candidates.clone(), &[], 10, 60);
        // a alone passes the cap; it still runs as the first, then nothing else fits.
        let names: Vec<_> = chosen.iter().map(|c| c.series.as_str()).collect();
        assert_eq!(names, ["a/x"]);
        assert_eq!(left, 2);
        let (chosen, _) = drill_sample(candidates, &[drilled("a/x", Some(1), None)], 10, 60);
        let names: Vec<_> = chosen.iter().map(|c| c.series.as_str()).collect();
        assert_eq!(names, ["b/x", "c/x"]);
    }

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(lease_name("shared"), "podvault-maintenance-shared");
        let long = "r".repeat(200);
        let n = lease_name(&long);
        assert!(n.len() <= 63, "{n}");
        assert_ne!(n, lease_name(&"r".repeat(199)));
    }
}
