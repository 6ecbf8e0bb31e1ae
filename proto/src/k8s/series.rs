//! Series: the unit of retention, history and staleness.
//!
//! A series is the sequence of snapshots of "the same data over time":
//! - a volume backed by a PersistentVolumeClaim (or a generic ephemeral volume, whose claim is
//!   `<pod>-<volume>`) is the series `<namespace>/pvc/<claim>`: whichever pod mounts the claim,
//!   under whatever volume name, the data is the claim's, so several pods sharing one claim
//!   share one series (and the controller backs it up once per tick);
//! - any other volume (emptyDir, inline CSI, …) is the series `<namespace>/pod/<pod>/<volume>`.
//!   Pods of a StatefulSet keep their names, so their series survive restarts; a Deployment's
//!   pods get new names, which is right for pod-local scratch data.
//!
//! The key is the stable identity. Names of pods, claims and namespaces cannot contain `/`,
//! so keys parse back unambiguously. Label values are limited to 63 characters, so objects are
//! labelled with [`Series::hash`], a fixed 64-bit FNV-1a of the key that never changes across
//! versions, and annotated with the full key.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Pod;

use crate::snapshot::{Identity, IdentityKind};

use super::volume::{claim_name, find_volume, VolumeError};

/// What a series follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeriesSource {
    /// A pod-local volume: the pod's name and the volume's name in the pod spec.
    PodVolume {
        /// Pod name.
        pod: String,
        /// Volume name in `spec.volumes`.
        volume: String,
    },
    /// A PersistentVolumeClaim, whoever mounts it.
    Claim {
        /// Claim name.
        claim: String,
    },
}

/// A series: a namespace and what it follows there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Series {
    /// Namespace of the pod or claim.
    pub namespace: String,
    /// The pod volume or claim.
    pub source: SeriesSource,
}

/// A malformed series key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid series {key:?}: expected <namespace>/pod/<pod>/<volume> or <namespace>/pvc/<claim>"
)]
pub struct ParseSeriesError {
    /// The text given.
    pub key: String,
}

impl Series {
    /// The series of a pod-local volume.
    pub fn pod_volume(namespace: &str, pod: &str, volume: &str) -> Self {
        Series {
            namespace: namespace.to_string(),
            source: SeriesSource::PodVolume {
                pod: pod.to_string(),
                volume: volume.to_string(),
            },
        }
    }

    /// The series of a claim.
    pub fn claim(namespace: &str, claim: &str) -> Self {
        Series {
            namespace: namespace.to_string(),
            source: SeriesSource::Claim {
                claim: claim.to_string(),
            },
        }
    }

    /// The series of volume `volume` of `pod`: the claim's series when the volume is a PVC or
    /// a generic ephemeral volume, the pod volume's series otherwise.
    pub fn of_pod_volume(pod: &Pod, volume: &str) -> Result<Self, VolumeError> {
        let vol = find_volume(pod, volume)?;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        Ok(match claim_name(pod, vol) {
            Some(claim) => Series::claim(namespace, &claim),
            None => Series::pod_volume(namespace, pod_name, volume),
        })
    }

    /// The series of the logical dump named `name` (see [`super::dump_name`]) of `pod`.
    pub fn of_pod_dump(pod: &Pod, name: &str) -> Self {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        Series::pod_volume(
            namespace,
            pod.metadata.name.as_deref().unwrap_or_default(),
            name,
        )
    }

    /// `pod` or `pvc`.
    pub fn kind(&self) -> &'static str {
        match self.source {
            SeriesSource::PodVolume { .. } => "pod",
            SeriesSource::Claim { .. } => "pvc",
        }
    }

    /// The full key: `<namespace>/pod/<pod>/<volume>` or `<namespace>/pvc/<claim>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.metric_label())
    }

    /// The key without the namespace (`pod/<pod>/<volume>` or `pvc/<claim>`): the `series`
    /// label of metrics, which carry the namespace in their own `namespace` label.
    pub fn metric_label(&self) -> String {
        match &self.source {
            SeriesSource::PodVolume { pod, volume } => format!("pod/{pod}/{volume}"),
            SeriesSource::Claim { claim } => format!("pvc/{claim}"),
        }
    }

    /// 16 lowercase hex digits of FNV-1a-64 over the key: the [`super::LABEL_SERIES`] label.
    pub fn hash(&self) -> String {
        format!("{:016x}", fnv1a64(self.key().as_bytes()))
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

impl FromStr for Series {
    type Err = ParseSeriesError;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        let err = || ParseSeriesError {
            key: key.to_string(),
        };
        let parts: Vec<&str> = key.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(err());
        }
        match parts.as_slice() {
            [ns, "pod", pod, volume] => Ok(Series::pod_volume(ns, pod, volume)),
            [ns, "pvc", claim] => Ok(Series::claim(ns, claim)),
            _ => Err(err()),
        }
    }
}

/// The identity the agent records on a snapshot of `volume` of `pod`, taken on `node` for the
/// PodVolumeBackup whose uid is `operation_uid`: everything from the pod (read from the API
/// server) and the node, nothing from the operation's spec.
pub fn volume_identity(
    pod: &Pod,
    volume: &str,
    node: &str,
    operation_uid: Option<&str>,
) -> Result<Identity, VolumeError> {
    let series = Series::of_pod_volume(pod, volume)?;
    let vol = find_volume(pod, volume)?;
    let mut id = identity(&series, pod, IdentityKind::Volume, node, operation_uid);
    id.pvc = claim_name(pod, vol);
    id.volume = Some(volume.to_string());
    Ok(id)
}

/// The identity the agent records on a logical dump named `name` of `pod`, taken on `node`
/// for the PodVolumeBackup whose uid is `operation_uid`.
pub fn dump_identity(pod: &Pod, name: &str, node: &str, operation_uid: Option<&str>) -> Identity {
    let mut id = identity(
        &Series::of_pod_dump(pod, name),
        pod,
        IdentityKind::Dump,
        node,
        operation_uid,
    );
    id.dump = Some(name.to_string());
    id
}

fn identity(
    series: &Series,
    pod: &Pod,
    kind: IdentityKind,
    node: &str,
    operation_uid: Option<&str>,
) -> Identity {
    Identity {
        kind,
        namespace: series.namespace.clone(),
        series: series.key(),
        pod: pod.metadata.name.clone().unwrap_or_default(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        pvc: None,
        volume: None,
        dump: None,
        node: node.to_string(),
        operation_uid: operation_uid.map(str::to_string),
        legacy: false,
    }
}

/// FNV-1a, 64 bit: tiny, dependency-free and fixed forever (labels depend on it).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    const POD: &str = "
metadata: {name: web-0, namespace: shop, uid: 1111-2222}
spec:
  containers: [{name: c}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: data-web-0}
  - name: scratch
    emptyDir: {}
  - name: eph
    ephemeral: {volumeClaimTemplate: {spec: {accessModes: [ReadWriteOnce]}}}
";

    #[test]
    fn claim_volumes_follow_the_claim_and_others_the_pod() {
        let p = pod(POD);
        assert_eq!(
            Series::of_pod_volume(&p, "data").unwrap().key(),
            "shop/pvc/data-web-0"
        );
        assert_eq!(
            Series::of_pod_volume(&p, "scratch").unwrap().key(),
            "shop/pod/web-0/scratch"
        );
        assert_eq!(
            Series::of_pod_volume(&p, "eph").unwrap().key(),
            "shop/pvc/web-0-eph"
        );
        let err = Series::of_pod_volume(&p, "nope").unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
    }

    #[test]
    fn two_pods_sharing_a_claim_share_a_series() {
        let a = pod(POD);
        let b = pod(&POD
            .replace("web-0, ", "web-1, ")
            .replace("name: data\n", "name: shared\n"));
        assert_eq!(
            Series::of_pod_volume(&a, "data").unwrap(),
            Series::of_pod_volume(&b, "shared").unwrap()
        );
    }

    #[test]
    fn keys_round_trip_and_reject_garbage() {
        for s in [Series::pod_volume("ns", "p", "v"), Series::claim("ns", "c")] {
            assert_eq!(s.key().parse::<Series>().unwrap(), s);
        }
        for bad in [
            "",
            "ns",
            "ns/pod/p",
            "ns/pvc/c/x",
            "ns/foo/c",
            "ns//c",
            "/pvc/c",
        ] {
            assert!(bad.parse::<Series>().is_err(), "{bad}");
        }
        assert_eq!(Series::claim("ns", "c").metric_label(), "pvc/c");
    }

    #[test]
    fn hash_is_fixed() {
        // Pinned: labels on existing objects depend on this value never changing.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        let h = Series::claim("shop", "data-web-0").hash();
        assert_eq!(h.len(), 16);
        assert_ne!(h, Series::claim("shop", "data-web-1").hash());
    }

    #[test]
    fn identities() {
        let p = pod(POD);
        let id = volume_identity(&p, "data", "node-a", Some("op-1")).unwrap();
        assert_eq!(id.series, "shop/pvc/data-web-0");
        assert_eq!(id.namespace, "shop");
        assert_eq!(id.pod, "web-0");
        assert_eq!(id.pod_uid, "1111-2222");
        assert_eq!(id.pvc.as_deref(), Some("data-web-0"));
        assert_eq!(id.volume.as_deref(), Some("data"));
        assert_eq!(id.node, "node-a");
        assert_eq!(id.operation_uid.as_deref(), Some("op-1"));
        assert_eq!(id.kind, IdentityKind::Volume);
        assert!(id.is_consistent());
        let scratch = volume_identity(&p, "scratch", "n", None).unwrap();
        assert_eq!(scratch.pvc, None);
        assert_eq!(scratch.series, "shop/pod/web-0/scratch");
        let dump = dump_identity(&p, "db.sql", "n", None);
        assert_eq!(dump.series, "shop/pod/web-0/db.sql");
        assert_eq!(dump.kind, IdentityKind::Dump);
        assert_eq!(dump.dump.as_deref(), Some("db.sql"));
        assert!(dump.is_consistent());
    }
}
