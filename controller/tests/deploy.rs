//! Keeps `deploy/` honest: the CRDs are exactly what `crdgen` prints, and every plain
//! manifest and example parses into the Kubernetes (or podvault) type of its kind without
//! losing a field, so a typo or a stale field fails here instead of in a cluster. The alerts
//! live once (`deploy/prometheus/podvault-rules.yaml`; the PrometheusRule manifest and the Helm
//! template are generated from it here), and every metric the alerts and the dashboard read
//! is one the agent or the controller exports. (`tests/alerts.rs` runs promtool on the rules.)

use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::DynamicObject;
use podvault_proto::crd::{BackupRepository, PodVolumeBackup, PodVolumeRestore};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn documents(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {}", dir.display());
    files
}

/// Checks that everything written in `original` survived in `typed` (which may add defaults).
fn assert_kept(original: &Value, typed: &Value, path: &str) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let Some(w) = b.get(k) else {
                    panic!("{path}.{k}: dropped (unknown or misspelt field)");
                };
                assert_kept(v, w, &format!("{path}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: list length changed");
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                assert_kept(v, w, &format!("{path}[{i}]"));
            }
        }
        (a, b) => assert_eq!(a, b, "{path}: value changed"),
    }
}

/// Parses `doc` as `T` and checks that nothing was dropped (unknown or misspelt fields).
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
    let obj: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{origin}: {e}"));
    assert_kept(doc, &serde_json::to_value(&obj).unwrap(), origin);
    obj
}

/// Parses one document by its kind; returns the kind.
fn check(doc: &Value, origin: &str) -> String {
    let api_version = doc["apiVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("{origin}: no apiVersion"));
    let kind = doc["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("{origin}: no kind"))
        .to_string();
    let origin = format!("{origin} ({kind})");
    match (api_version, kind.as_str()) {
        ("v1", "Namespace") => drop(typed::<Namespace>(doc, &origin)),
        ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(doc, &origin)),
        ("v1", "Service") => drop(typed::<Service>(doc, &origin)),
        ("v1", "Secret") => drop(typed::<Secret>(doc, &origin)),
        ("v1", "Pod") => drop(typed::<Pod>(doc, &origin)),
        ("apps/v1", "DaemonSet") => drop(typed::<DaemonSet>(doc, &origin)),
        ("apps/v1", "Deployment") => drop(typed::<Deployment>(doc, &origin)),
        ("batch/v1", "CronJob") => drop(typed::<CronJob>(doc, &origin)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(typed::<ClusterRole>(doc, &origin)),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            drop(typed::<ClusterRoleBinding>(doc, &origin))
        }
        ("rbac.authorization.k8s.io/v1", "Role") => drop(typed::<Role>(doc, &origin)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(typed::<RoleBinding>(doc, &origin)),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            drop(typed::<CustomResourceDefinition>(doc, &origin))
        }
        ("podvault.dev/v1alpha1", "PodVolumeBackup") => {
            drop(typed::<PodVolumeBackup>(doc, &origin))
        }
        ("podvault.dev/v1alpha1", "PodVolumeRestore") => {
            let pvr = typed::<PodVolumeRestore>(doc, &origin);
            pvr.spec
                .snapshot
                .validate()
                .unwrap_or_else(|e| panic!("{origin}: {e}"));
        }
        ("podvault.dev/v1alpha1", "BackupRepository") => {
            let repo = typed::<BackupRepository>(doc, &origin);
            repo.spec
                .validate()
                .unwrap_or_else(|e| panic!("{origin}: {e}"));
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor" | "PrometheusRule") => {
            let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
            assert!(obj.metadata.name.is_some(), "{origin}: no name");
            assert!(doc["spec"].is_object(), "{origin}: no spec");
        }
        other => panic!("{origin}: unexpected kind {other:?}"),
    }
    kind
}

#[test]
fn crds_in_deploy_are_exactly_crdgen_output() {
    let generated = podvault_controller::crds_yaml().unwrap();
    for path in [
        deploy().join("crds/crds.yaml"),
        deploy().join("helm/podvault/crds/crds.yaml"),
    ] {
        let on_disk = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{} is stale; regenerate with: cargo run -p podvault-controller --bin crdgen > {}",
            path.display(),
            path.display()
        );
    }
    // And they are valid CRDs.
    let docs = documents(&deploy().join("crds/crds.yaml"));
    assert_eq!(docs.len(), 3);
    for (i, doc) in docs.iter().enumerate() {
        assert_eq!(
            check(doc, &format!("crds.yaml#{i}")),
            "CustomResourceDefinition"
        );
    }
}

#[test]
fn every_manifest_and_example_parses_into_its_type() {
    let mut kinds = Vec::new();
    for dir in ["manifests", "monitoring", "examples"] {
        for file in yaml_files(&deploy().join(dir)) {
            for (i, doc) in documents(&file).iter().enumerate() {
                kinds.push(check(doc, &format!("{}#{i}", file.display())));
            }
        }
    }
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "DaemonSet",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "PodVolumeBackup",
        "PodVolumeRestore",
        "BackupRepository",
        "Secret",
        "Pod",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in deploy/");
    }
}

/// `kubectl apply -f deploy/manifests/` must work on a cluster without the Prometheus
/// Operator: its kinds live in `deploy/monitoring/`, applied only where the operator runs.
#[test]
fn plain_manifests_need_no_operator_crds() {
    for file in yaml_files(&deploy().join("manifests")) {
        for doc in documents(&file) {
            let api = doc["apiVersion"].as_str().unwrap_or_default();
            assert!(
                !api.starts_with("monitoring.coreos.com/"),
                "{} holds a {api} object; it belongs in deploy/monitoring/",
                file.display()
            );
        }
    }
}

fn manifest<T: DeserializeOwned>(file: &str, kind: &str, name: &str) -> T {
    let doc = documents(&deploy().join("manifests").join(file))
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} not in {file}"));
    serde_json::from_value(doc).unwrap()
}

#[test]
fn agent_daemonset_sees_kubelet_pods_and_knows_its_node() {
    let ds: DaemonSet = manifest("20-agent.yaml", "DaemonSet", "podvault-agent");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.args.as_deref(), Some(&["agent".to_string()][..]));
    let env = c.env.as_ref().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "kubelet-pods")
        .unwrap();
    assert_eq!(mount.mount_path, "/var/lib/kubelet/pods");
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    let vol = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "kubelet-pods")
        .unwrap();
    assert_eq!(vol.host_path.unwrap().path, "/var/lib/kubelet/pods");
    assert_eq!(pod.service_account_name.as_deref(), Some("podvault-agent"));
}

#[test]
fn rbac_is_least_privilege() {
    let docs = documents(&deploy().join("manifests/10-rbac.yaml"));
    for doc in &docs {
        if doc["kind"] == "ClusterRole" {
            let role: ClusterRole = serde_json::from_value(doc.clone()).unwrap();
            for rule in role.rules.unwrap_or_default() {
                let resources = rule.resources.unwrap_or_default();
                assert!(
                    !resources.iter().any(|r| r == "secrets" || r == "*"),
                    "ClusterRole {:?} grants {resources:?}",
                    role.metadata.name
                );
                assert!(!rule.verbs.iter().any(|v| v == "*"));
            }
        }
    }
    let secrets: Role = manifest("10-rbac.yaml", "Role", "podvault-agent-secrets");
    assert_eq!(secrets.metadata.namespace.as_deref(), Some("podvault"));
    let rule = &secrets.rules.unwrap()[0];
    assert_eq!(rule.verbs, vec!["get"]);
    // The agent writes the status of PVBs/PVRs/BackupRepositories; on the objects themselves
    // it may only patch (its finalizer), never update, create or delete them.
    let agent: ClusterRole = manifest("10-rbac.yaml", "ClusterRole", "podvault-agent");
    for rule in agent.rules.unwrap() {
        let resources = rule.resources.unwrap_or_default();
        if rule.api_groups.as_deref() != Some(&["podvault.dev".to_string()][..]) {
            continue;
        }
        if resources.iter().all(|r| r.ends_with("/status")) {
            continue;
        }
        for v in &rule.verbs {
            assert!(
                ["get", "list", "watch", "patch"].contains(&v.as_str()),
                "agent may {v} {resources:?}"
            );
        }
        if rule.verbs.iter().any(|v| v == "patch") {
            assert!(
                resources
                    .iter()
                    .all(|r| r == "podvolumebackups" || r == "podvolumerestores"),
                "{resources:?}"
            );
        }
    }
}

/// Every `(apiGroup, resource, verb)` the agent's service account is granted by the cluster
/// roles bound to it in the manifests, with the role granting it.
fn agent_cluster_grants() -> std::collections::BTreeSet<(String, String, String, String)> {
    let docs = documents(&deploy().join("manifests/10-rbac.yaml"));
    let mut grants = std::collections::BTreeSet::new();
    for doc in docs.iter().filter(|d| d["kind"] == "ClusterRoleBinding") {
        let binding: ClusterRoleBinding = serde_json::from_value(doc.clone()).unwrap();
        if !binding
            .subjects
            .unwrap_or_default()
            .iter()
            .any(|s| s.kind == "ServiceAccount" && s.name == "podvault-agent")
        {
            continue;
        }
        let role_name = binding.role_ref.name;
        let role: ClusterRole = manifest("10-rbac.yaml", "ClusterRole", &role_name);
        for rule in role.rules.unwrap_or_default() {
            for g in rule.api_groups.clone().unwrap_or_default() {
                for r in rule.resources.clone().unwrap_or_default() {
                    for v in &rule.verbs {
                        grants.insert((role_name.clone(), g.clone(), r.clone(), v.clone()));
                    }
                }
            }
        }
    }
    grants
}

#[test]
fn the_only_exec_permission_is_pods_exec_in_its_own_role() {
    let grants = agent_cluster_grants();
    // Nothing in the agent's main role touches a subresource of pods.
    assert!(
        !grants
            .iter()
            .any(|(role, _, r, _)| role == "podvault-agent" && r.starts_with("pods/")),
        "{grants:?}"
    );
    // The hooks role grants exec and nothing else.
    let exec: Vec<_> = grants
        .iter()
        .filter(|(role, ..)| role == "podvault-agent-exec")
        .map(|(_, g, r, v)| (g.as_str(), r.as_str(), v.as_str()))
        .collect();
    // get: WebSocket upgrades are GETs (authorized as get unless the API server's
    // AuthorizePodWebsocketUpgradeCreatePermission gate makes them create) — found against
    // a real API server, which refused `create` alone with Forbidden.
    assert_eq!(
        exec,
        vec![("", "pods/exec", "create"), ("", "pods/exec", "get")]
    );
    // And nothing else anywhere grants exec, attach, port-forward or proxy.
    for (role, _, r, v) in &grants {
        if [
            "pods/attach",
            "pods/portforward",
            "pods/proxy",
            "nodes/proxy",
        ]
        .contains(&r.as_str())
            || (r == "pods/exec" && role != "podvault-agent-exec")
            || (r == "pods" && !["get", "list", "watch"].contains(&v.as_str()))
        {
            panic!("{role} grants {v} on {r}");
        }
    }
    // The plain DaemonSet enables hooks, as its RBAC allows them.
    let ds: DaemonSet = manifest("20-agent.yaml", "DaemonSet", "podvault-agent");
    let env = ds.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let allow = env
        .iter()
        .find(|e| e.name == "PODVAULT_ALLOW_EXEC")
        .unwrap();
    assert_eq!(allow.value.as_deref(), Some("true"));
    // The chart makes it one switch: the role exists only when hooks are enabled, and the
    // agent's flag follows the same value.
    let chart = deploy().join("helm/podvault");
    let values = documents(&chart.join("values.yaml")).remove(0);
    assert!(values["agent"]["hooks"]["enabled"].is_boolean());
    let rbac = fs::read_to_string(chart.join("templates/rbac.yaml")).unwrap();
    let start = rbac
        .find("{{- if .Values.agent.hooks.enabled }}")
        .expect("the exec role is conditional");
    let end = start + rbac[start..].find("{{- end }}").unwrap();
    let guarded = &rbac[start..end];
    assert!(guarded.contains("name: podvault-agent-exec"));
    assert!(guarded.contains("resources: [pods/exec]") && guarded.contains("verbs: [get, create]"));
    assert_eq!(
        rbac.matches("resources: [pods/exec]").count(),
        1,
        "pods/exec outside the guard"
    );
    let agent = fs::read_to_string(chart.join("templates/agent.yaml")).unwrap();
    assert!(agent.contains("value: {{ .Values.agent.hooks.enabled | quote }}"));
}

/// The one source of the shipped alerts (a plain Prometheus rule file).
const RULES_SOURCE: &str = "prometheus/podvault-rules.yaml";
/// Generated from [`RULES_SOURCE`].
const RULES_MANIFEST: &str = "monitoring/prometheusrule.yaml";
/// Generated from [`RULES_SOURCE`].
const RULES_HELM: &str = "helm/podvault/templates/prometheusrule.yaml";

/// The rule file's `groups:` document without its leading comment, indented under `spec:`.
fn rules_spec(source: &str) -> String {
    let start = source
        .find("\ngroups:")
        .expect("the rule file has a top-level groups: key")
        + 1;
    source[start..]
        .lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("  {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Escapes Prometheus templates (`{{ $labels.x }}`) so Helm prints them as they are.
fn helm_escape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let end = start
            + rest[start..]
                .find("}}")
                .expect("unbalanced {{ in the rule file")
            + 2;
        out.push_str(&rest[..start]);
        out.push_str("{{`");
        out.push_str(&rest[start..end]);
        out.push_str("`}}");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn prometheus_rule(namespace: &str, spec: &str) -> String {
    format!(
        "# Generated from deploy/{RULES_SOURCE}, which documents each alert. Edit that\n\
         # file, then: PODVAULT_REGENERATE=1 cargo test -p podvault-controller --test deploy\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n\
         \x20 name: podvault\n\
         \x20 namespace: {namespace}\n\
         \x20 labels: {{app.kubernetes.io/part-of: podvault}}\n\
         spec:\n\
         {spec}"
    )
}

/// The PrometheusRule manifest and Helm template generated from the rule file.
fn generated_rules() -> [(PathBuf, String); 2] {
    let source = fs::read_to_string(deploy().join(RULES_SOURCE)).unwrap();
    let spec = rules_spec(&source);
    let manifest = prometheus_rule("podvault", &spec);
    let helm = format!(
        "{{{{- if .Values.metrics.prometheusRule }}}}\n{}{{{{- end }}}}\n",
        prometheus_rule("{{ .Release.Namespace }}", &helm_escape(&spec))
    );
    [
        (deploy().join(RULES_MANIFEST), manifest),
        (deploy().join(RULES_HELM), helm),
    ]
}

#[test]
fn manifest_and_helm_rules_are_generated_from_the_one_rule_file() {
    let regenerate = std::env::var_os("PODVAULT_REGENERATE").is_some();
    for (path, want) in generated_rules() {
        if regenerate {
            fs::write(&path, &want).unwrap();
        }
        let on_disk = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == want,
            "{} is stale; regenerate with: PODVAULT_REGENERATE=1 cargo test -p podvault-controller --test deploy",
            path.display()
        );
    }
    // The manifest's spec is the rule file, value for value.
    let source = documents(&deploy().join(RULES_SOURCE)).remove(0);
    let manifest = documents(&deploy().join(RULES_MANIFEST)).remove(0);
    assert_eq!(manifest["spec"], source);
    let rules = source["groups"][0]["rules"].as_array().unwrap();
    let alerts: Vec<_> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(
        alerts,
        [
            "PodvaultBackupFailed",
            "PodvaultRestoreFailed",
            "PodvaultBackupStale",
            "PodvaultBackupStuck",
            "PodvaultAgentMissing",
            "PodvaultControllerMissing",
            "PodvaultRepositoryCheckFailed",
            "PodvaultPruneFailing",
            "PodvaultMaintenanceNotRun",
            "PodvaultRestoreDrillFailed",
            "PodvaultRestoreDrillStale",
        ]
    );
    for rule in rules {
        let alert = rule["alert"].as_str().unwrap();
        let expr = rule["expr"].as_str().unwrap();
        assert!(
            !expr.contains("increase("),
            "{alert}: a counter born at 1 shows no increase()"
        );
        for key in ["summary", "description"] {
            assert!(rule["annotations"][key].is_string(), "{alert}: no {key}");
        }
        assert!(
            rule["labels"]["severity"].is_string(),
            "{alert}: no severity"
        );
    }
    let stale = rules[2]["expr"].as_str().unwrap();
    assert!(stale
        .contains("2 * max by (namespace, series) (podvault_backup_schedule_interval_seconds)"));
}

/// Metric names in a PromQL expression (or a Grafana query) that start with `podvault_`.
fn podvault_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("podvault_"))
        .map(str::to_string)
        .collect()
}

/// The controller's real `/metrics` text with every metric given a sample.
fn controller_metrics_text() -> String {
    use podvault_controller::history::SeriesState;
    let m = podvault_controller::metrics::Metrics::new().unwrap();
    m.reconciliations.inc();
    m.reconcile_errors.with_label_values(&["list"]).inc();
    m.reconcile_duration.observe(0.1);
    m.backups_scheduled
        .with_label_values(&["ns", "created"])
        .inc();
    m.volumes_skipped.with_label_values(&["host_path"]).inc();
    m.history_deleted.with_label_values(&["backup"]).inc();
    m.leader.set(1);
    for g in [
        &m.repository_maintenance_last_success,
        &m.repository_maintenance_last_failure,
        &m.repository_maintenance_interval,
    ] {
        g.with_label_values(&["shared", "check"]).set(1.0);
    }
    for g in [
        &m.repository_size,
        &m.repository_snapshots,
        &m.repository_packs,
        &m.repository_created,
        &m.drill_window,
    ] {
        g.with_label_values(&["shared"]).set(1.0);
    }
    for g in [&m.drill_last_success, &m.drill_last_failure] {
        g.with_label_values(&["shared", "shop", "shop/pvc/db"])
            .set(1.0);
    }
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000, 0).unwrap();
    let state = SeriesState {
        interval: Some(3600.0),
        first_seen: t,
        last_success: Some(t),
        last_failure: Some(t),
        oldest_new: Some(t),
        oldest_in_progress: Some(t),
    };
    m.set_series(
        &[(("ns".to_string(), "pvc/x".to_string()), state)].into(),
        t,
    );
    m.render()
}

/// Metric names the agent registers: the `"podvault_…"` literals of its metrics module (its
/// unit test checks that each of them is in the agent's real `/metrics` output; the
/// controller does not depend on the agent, so it reads the declarations).
fn agent_metric_names() -> Vec<String> {
    let src = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src/worker/metrics.rs"),
    )
    .unwrap();
    let src = &src[..src.find("#[cfg(test)]").unwrap()];
    let names: Vec<String> = src
        .split('"')
        .filter(|t| {
            t.starts_with("podvault_") && t.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .map(str::to_string)
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    names
}

/// True when `name` (possibly a histogram's `_bucket`/`_sum`/`_count`) is exported.
fn exported(name: &str, controller: &str, agent: &[String]) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    controller.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
    }) || agent.iter().any(|a| a == name || a == base)
}

#[test]
fn alerts_and_dashboard_use_only_exported_metrics() {
    let controller = controller_metrics_text();
    let agent = agent_metric_names();
    let mut exprs: Vec<(String, String)> = Vec::new();
    let rules = documents(&deploy().join(RULES_SOURCE)).remove(0);
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        exprs.push((
            format!("alert {}", rule["alert"].as_str().unwrap()),
            rule["expr"].as_str().unwrap().to_string(),
        ));
    }
    let text = fs::read_to_string(deploy().join("grafana/podvault-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("podvault_"), "{t}");
            exprs.push((format!("panel {}", p["title"]), expr.to_string()));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            exprs.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    let mut checked = 0;
    for (what, expr) in &exprs {
        for name in podvault_names(expr) {
            assert!(
                exported(&name, &controller, &agent),
                "{what} reads {name}, which neither the agent nor the controller exports"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} metric references found");
    // And the check itself can fail.
    assert!(!exported(
        "podvault_backups_failed_total",
        &controller,
        &agent
    ));
}

#[test]
fn helm_chart_mirrors_the_manifests() {
    let chart = deploy().join("helm/podvault");
    let values = documents(&chart.join("values.yaml")).remove(0);
    for key in ["image", "repository", "controller", "agent"] {
        assert!(values[key].is_object(), "values.yaml lacks {key}");
    }
    assert_eq!(values["agent"]["kubeletRootDir"], "/var/lib/kubelet");
    assert_eq!(values["agent"]["concurrency"], 2);
    assert!(values["controller"]["defaultSchedule"].is_string());
    let chart_yaml = documents(&chart.join("Chart.yaml")).remove(0);
    assert_eq!(chart_yaml["name"], "podvault");
    for file in yaml_files(&chart.join("templates")) {
        let text = fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("namespace: podvault\n"),
            "{}: hard-coded namespace",
            file.display()
        );
    }
    let agent = fs::read_to_string(chart.join("templates/agent.yaml")).unwrap();
    assert!(agent.contains("mountPropagation: HostToContainer"));
    assert!(agent.contains("fieldPath: spec.nodeName"));
}
