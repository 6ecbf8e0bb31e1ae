//! Which pod volumes podvault backs up, and where each lives on its node.
//!
//! The kubelet mounts every volume of a pod under
//! `<kubelet-root>/pods/<pod-uid>/volumes/<escaped-plugin>/<name>`, where `<escaped-plugin>` is
//! the volume plugin's qualified name with `/` replaced by `~` and `<name>` is the
//! PersistentVolume's name for claim-backed volumes and the pod's volume name otherwise. CSI
//! volumes add one level: `…/kubernetes.io~csi/<name>/mount`. [`resolve_volume`] computes that
//! path from the Pod (and the claim's bound PersistentVolume), without touching the disk; the
//! agent then checks that the directory exists.
//!
//! Rules (all decided from the objects alone):
//! - `secret`, `configMap`, `projected` and `downwardAPI` volumes are refused: their content
//!   comes from the API server and is rewritten by the kubelet, so a restore would fight it.
//! - `hostPath` volumes in a pod spec are refused unless [`VolumePolicy::allow_host_path`] is
//!   set (a namespace admin writes that path); when allowed, the location is the host path
//!   itself (not under the kubelet root).
//! - `hostPath` PersistentVolumes (what local-path-provisioner, the default storage of k3s
//!   and kind, makes) are cluster-scoped objects a namespace admin cannot write. They resolve
//!   to their host path when it lies strictly below one of the host directories a cluster
//!   admin listed in [`VolumePolicy::host_path_roots`] (agent option `--host-path-root`,
//!   chart `agent.hostPathRoots`), is absolute and has only plain components. The agent then
//!   reaches it from the listed root without following any symlink.
//! - `image` volumes (read-only OCI content) and raw block PersistentVolumes are refused.
//! - In-tree cloud plugins that Kubernetes ≥ 1.27 serves through CSI migration
//!   (awsElasticBlockStore, azureDisk, azureFile, cinder, gcePersistentDisk, vsphereVolume,
//!   portworxVolume) are mounted by the CSI plugin, so they resolve to CSI paths.
//! - Plugins that are gone from Kubernetes (cephfs, rbd, glusterfs, flocker, quobyte,
//!   storageos, scaleIO, photonPersistentDisk) are refused by name.
//! - A generic ephemeral volume is backed by the claim `<pod>-<volume>`, and resolves like one.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, Pod, Volume};

/// What the agent is allowed to back up beyond the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumePolicy {
    /// Back up hostPath volumes (off by default: they expose arbitrary node directories).
    pub allow_host_path: bool,
    /// Host directories whose subdirectories may be hostPath PersistentVolumes podvault backs
    /// up and restores into (e.g. `/opt/local-path-provisioner`). Empty by default.
    pub host_path_roots: Vec<PathBuf>,
}

/// The allowed root a hostPath PersistentVolume's path lies strictly below, and the path
/// relative to it; `None` when the path is not absolute, has a component other than a plain
/// name (`.`, `..`, `//` are refused rather than normalised), or is not below any root.
pub fn host_path_under_root<'a>(roots: &'a [PathBuf], path: &str) -> Option<(&'a Path, PathBuf)> {
    use std::path::Component;
    if !path.starts_with('/')
        || path
            .split('/')
            .skip(1)
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return None;
    }
    let path = Path::new(path);
    roots.iter().find_map(|root| {
        let rel = path.strip_prefix(root).ok()?;
        let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
        (plain && rel.components().next().is_some()).then(|| (root.as_path(), rel.to_path_buf()))
    })
}

/// What the pod spec says a volume is, once the skip rules have passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeClass {
    /// Backed by a PersistentVolumeClaim: the bound PersistentVolume decides the path.
    Claim {
        /// Claim name (for a generic ephemeral volume, `<pod>-<volume>`).
        claim: String,
    },
    /// Managed by a kubelet plugin for this pod only.
    Inline {
        /// The plugin's qualified name, e.g. `kubernetes.io/empty-dir`.
        plugin: String,
    },
    /// A directory of the node (allowed by policy).
    HostPath {
        /// The absolute path on the node.
        path: String,
    },
}

/// Where a volume lives on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeLocation {
    /// The directory to read (backup) or write (restore).
    pub path: PathBuf,
    /// The kubelet plugin that mounted it (`kubernetes.io/csi`, …; `kubernetes.io/host-path`).
    pub plugin: String,
    /// The claim behind the volume, if any.
    pub claim: Option<String>,
    /// The bound PersistentVolume's name, if any.
    pub persistent_volume: Option<String>,
}

/// Why a volume cannot be backed up or located. Messages name the pod, the volume and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// The pod has no volume of that name.
    #[error("pod {pod} has no volume {volume:?} (its volumes: {available})")]
    NotInPod {
        /// `namespace/name` of the pod.
        pod: String,
        /// The volume asked for.
        volume: String,
        /// The pod's volume names, comma-separated.
        available: String,
    },
    /// secret, configMap, projected or downwardAPI.
    #[error("volume {volume:?} of pod {pod} is a {kind} volume; podvault does not back up secret, configMap, projected or downwardAPI volumes (their content comes from the API server)")]
    ApiSourced {
        /// `namespace/name` of the pod.
        pod: String,
        /// The volume.
        volume: String,
        /// The volume type as spelled in the pod spec.
        kind: &'static str,
    },
    /// hostPath without permission.
    #[error("volume {volume:?} of pod {pod} is a hostPath volume ({path}); hostPath volumes are backed up only when explicitly allowed (agent option --allow-host-path)")]
    HostPathNotAllowed {
        /// `namespace/name` of the pod.
        pod: String,
        /// The volume.
        volume: String,
        /// The host path.
        path: String,
    },
    /// A hostPath PersistentVolume outside the host directories the agent may use.
    #[error("volume {volume:?} of pod {pod} uses PersistentVolume {pv}, a hostPath volume at {path}, which is not below a host directory the agent may use ({roots}); a cluster admin lists such directories with the agent option --host-path-root (chart agent.hostPathRoots) and mounts them into the agent at the same path")]
    HostPathOutsideRoots {
        /// `namespace/name` of the pod.
        pod: String,
        /// The volume.
        volume: String,
        /// The PersistentVolume.
        pv: String,
        /// Its host path.
        path: String,
        /// The roots allowed, comma-separated, or `none are listed`.
        roots: String,
    },
    /// A volume type podvault cannot back up.
    #[error("volume {volume:?} of pod {pod} is a {kind} volume, which podvault cannot back up: {reason}")]
    Unsupported {
        /// `namespace/name` of the pod (or `PersistentVolume/<name>`).
        pod: String,
        /// The volume.
        volume: String,
        /// The volume type as spelled in the API.
        kind: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The pod object has no uid (so it has no directory on any node).
    #[error("pod {pod} has no uid; it does not exist on a node yet")]
    NoPodUid {
        /// `namespace/name` of the pod.
        pod: String,
    },
    /// A claim-backed volume whose PersistentVolume was not given (claim not bound yet).
    #[error("volume {volume:?} of pod {pod} uses claim {claim:?}, which is not bound to a PersistentVolume")]
    ClaimNotBound {
        /// `namespace/name` of the pod.
        pod: String,
        /// The volume.
        volume: String,
        /// The claim.
        claim: String,
    },
    /// The PersistentVolume given is bound to another claim.
    #[error("PersistentVolume {pv} is bound to {bound}, not to claim {claim}")]
    WrongPersistentVolume {
        /// The PersistentVolume's name.
        pv: String,
        /// `namespace/name` of the claim it is bound to (or `nothing`).
        bound: String,
        /// `namespace/name` of the claim the pod uses.
        claim: String,
    },
    /// A raw block PersistentVolume.
    #[error("PersistentVolume {pv} (claim {claim}) is a raw block device (volumeMode: Block); podvault backs up filesystems only")]
    BlockVolume {
        /// The PersistentVolume's name.
        pv: String,
        /// `namespace/name` of the claim.
        claim: String,
    },
    /// A volume or PersistentVolume with no source set.
    #[error("{what} has no volume source podvault recognises")]
    NoSource {
        /// What was inspected (`volume "x" of pod ns/p` or `PersistentVolume pv-1`).
        what: String,
    },
}

const CSI: &str = "kubernetes.io/csi";
const MIGRATED: &str = "kubernetes.io/csi";
const REMOVED: &str = "its in-tree plugin has been removed from Kubernetes";

fn pod_ref(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The volume called `name` in the pod's `spec.volumes`.
pub fn find_volume<'a>(pod: &'a Pod, name: &str) -> Result<&'a Volume, VolumeError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    volumes
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| VolumeError::NotInPod {
            pod: pod_ref(pod),
            volume: name.to_string(),
            available: if volumes.is_empty() {
                "none".to_string()
            } else {
                volumes
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

/// The claim behind a volume: its `persistentVolumeClaim.claimName`, or `<pod>-<volume>` for a
/// generic ephemeral volume; `None` for every other type.
pub fn claim_name(pod: &Pod, volume: &Volume) -> Option<String> {
    if let Some(pvc) = &volume.persistent_volume_claim {
        return Some(pvc.claim_name.clone());
    }
    volume.ephemeral.as_ref().map(|_| {
        format!(
            "{}-{}",
            pod.metadata.name.as_deref().unwrap_or_default(),
            volume.name
        )
    })
}

/// Applies the skip rules to one pod volume and says what it is.
pub fn classify_volume(
    pod: &Pod,
    volume: &Volume,
    policy: &VolumePolicy,
) -> Result<VolumeClass, VolumeError> {
    let api = |kind| VolumeError::ApiSourced {
        pod: pod_ref(pod),
        volume: volume.name.clone(),
        kind,
    };
    let unsupported = |kind, reason| VolumeError::Unsupported {
        pod: pod_ref(pod),
        volume: volume.name.clone(),
        kind,
        reason,
    };
    let inline = |plugin: &str| {
        Ok(VolumeClass::Inline {
            plugin: plugin.to_string(),
        })
    };
    let v = volume;
    if let Some(claim) = claim_name(pod, v) {
        return Ok(VolumeClass::Claim { claim });
    }
    if v.secret.is_some() {
        return Err(api("secret"));
    }
    if v.config_map.is_some() {
        return Err(api("configMap"));
    }
    if v.projected.is_some() {
        return Err(api("projected"));
    }
    if v.downward_api.is_some() {
        return Err(api("downwardAPI"));
    }
    if let Some(hp) = &v.host_path {
        return if policy.allow_host_path {
            Ok(VolumeClass::HostPath {
                path: hp.path.clone(),
            })
        } else {
            Err(VolumeError::HostPathNotAllowed {
                pod: pod_ref(pod),
                volume: v.name.clone(),
                path: hp.path.clone(),
            })
        };
    }
    if v.image.is_some() {
        return Err(unsupported(
            "image",
            "its content is a read-only OCI image, restored by pulling the image",
        ));
    }
    if v.empty_dir.is_some() {
        return inline("kubernetes.io/empty-dir");
    }
    if v.csi.is_some() {
        return inline(CSI);
    }
    if v.nfs.is_some() {
        return inline("kubernetes.io/nfs");
    }
    if v.iscsi.is_some() {
        return inline("kubernetes.io/iscsi");
    }
    if v.fc.is_some() {
        return inline("kubernetes.io/fc");
    }
    if v.git_repo.is_some() {
        return inline("kubernetes.io/git-repo");
    }
    if let Some(flex) = &v.flex_volume {
        return inline(&flex.driver);
    }
    if v.aws_elastic_block_store.is_some()
        || v.azure_disk.is_some()
        || v.azure_file.is_some()
        || v.cinder.is_some()
        || v.gce_persistent_disk.is_some()
        || v.vsphere_volume.is_some()
        || v.portworx_volume.is_some()
    {
        return inline(MIGRATED);
    }
    let removed = [
        ("cephfs", v.cephfs.is_some()),
        ("rbd", v.rbd.is_some()),
        ("glusterfs", v.glusterfs.is_some()),
        ("flocker", v.flocker.is_some()),
        ("quobyte", v.quobyte.is_some()),
        ("storageos", v.storageos.is_some()),
        ("scaleIO", v.scale_io.is_some()),
        ("photonPersistentDisk", v.photon_persistent_disk.is_some()),
    ];
    if let Some(&(kind, _)) = removed.iter().find(|(_, set)| *set) {
        return Err(unsupported(kind, REMOVED));
    }
    Err(VolumeError::NoSource {
        what: format!("volume {:?} of pod {}", v.name, pod_ref(pod)),
    })
}

/// The kubelet plugin that mounts a PersistentVolume.
fn pv_plugin(pv: &PersistentVolume, claim: &str) -> Result<String, VolumeError> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    let Some(spec) = &pv.spec else {
        return Err(VolumeError::NoSource {
            what: format!("PersistentVolume {name}"),
        });
    };
    if spec.volume_mode.as_deref() == Some("Block") {
        return Err(VolumeError::BlockVolume {
            pv: name,
            claim: claim.to_string(),
        });
    }
    let unsupported = |kind, reason| VolumeError::Unsupported {
        pod: format!("PersistentVolume/{name}"),
        volume: name.clone(),
        kind,
        reason,
    };
    let s = spec;
    let plugin = if s.csi.is_some()
        || s.aws_elastic_block_store.is_some()
        || s.azure_disk.is_some()
        || s.azure_file.is_some()
        || s.cinder.is_some()
        || s.gce_persistent_disk.is_some()
        || s.vsphere_volume.is_some()
        || s.portworx_volume.is_some()
    {
        CSI.to_string()
    } else if s.local.is_some() {
        "kubernetes.io/local-volume".to_string()
    } else if s.nfs.is_some() {
        "kubernetes.io/nfs".to_string()
    } else if s.iscsi.is_some() {
        "kubernetes.io/iscsi".to_string()
    } else if s.fc.is_some() {
        "kubernetes.io/fc".to_string()
    } else if let Some(flex) = &s.flex_volume {
        flex.driver.clone()
    } else if s.host_path.is_some() {
        "kubernetes.io/host-path".to_string()
    } else {
        let removed = [
            ("cephfs", s.cephfs.is_some()),
            ("rbd", s.rbd.is_some()),
            ("glusterfs", s.glusterfs.is_some()),
            ("flocker", s.flocker.is_some()),
            ("quobyte", s.quobyte.is_some()),
            ("storageos", s.storageos.is_some()),
            ("scaleIO", s.scale_io.is_some()),
            ("photonPersistentDisk", s.photon_persistent_disk.is_some()),
        ];
        return match removed.iter().find(|(_, set)| *set) {
            Some(&(kind, _)) => Err(unsupported(kind, REMOVED)),
            None => Err(VolumeError::NoSource {
                what: format!("PersistentVolume {name}"),
            }),
        };
    };
    Ok(plugin)
}

/// The kubelet's directory name for a plugin: its qualified name with `/` replaced by `~`.
pub fn escape_plugin_name(plugin: &str) -> String {
    plugin.replace('/', "~")
}

/// `<kubelet-root>/pods/<uid>/volumes/<escaped-plugin>/<name>`, plus `/mount` for CSI.
fn plugin_dir(kubelet_root: &Path, uid: &str, plugin: &str, name: &str) -> PathBuf {
    let mut p = kubelet_root
        .join("pods")
        .join(uid)
        .join("volumes")
        .join(escape_plugin_name(plugin))
        .join(name);
    if plugin == CSI {
        p.push("mount");
    }
    p
}

/// Where volume `volume` of `pod` lives on its node, under `kubelet_root` (usually
/// `/var/lib/kubelet`). `pv` must be the PersistentVolume bound to the volume's claim when the
/// volume is claim-backed; it is ignored otherwise. Pure: nothing is read from disk.
pub fn resolve_volume(
    kubelet_root: &Path,
    pod: &Pod,
    volume: &str,
    pv: Option<&PersistentVolume>,
    policy: &VolumePolicy,
) -> Result<VolumeLocation, VolumeError> {
    let vol = find_volume(pod, volume)?;
    let class = classify_volume(pod, vol, policy)?;
    let uid = || {
        pod.metadata
            .uid
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| VolumeError::NoPodUid { pod: pod_ref(pod) })
    };
    match class {
        VolumeClass::HostPath { path } => Ok(VolumeLocation {
            path: PathBuf::from(path),
            plugin: "kubernetes.io/host-path".to_string(),
            claim: None,
            persistent_volume: None,
        }),
        VolumeClass::Inline { plugin } => Ok(VolumeLocation {
            path: plugin_dir(kubelet_root, uid()?, &plugin, volume),
            plugin,
            claim: None,
            persistent_volume: None,
        }),
        VolumeClass::Claim { claim } => {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let claim_ref = format!("{namespace}/{claim}");
            let Some(pv) = pv else {
                return Err(VolumeError::ClaimNotBound {
                    pod: pod_ref(pod),
                    volume: volume.to_string(),
                    claim,
                });
            };
            let pv_name = pv.metadata.name.clone().unwrap_or_default();
            let bound = pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .map(|r| {
                    format!(
                        "{}/{}",
                        r.namespace.as_deref().unwrap_or_default(),
                        r.name.as_deref().unwrap_or_default()
                    )
                });
            if bound.as_deref() != Some(claim_ref.as_str()) {
                return Err(VolumeError::WrongPersistentVolume {
                    pv: pv_name,
                    bound: bound.unwrap_or_else(|| "nothing".to_string()),
                    claim: claim_ref,
                });
            }
            let plugin = pv_plugin(pv, &claim_ref)?;
            if plugin == "kubernetes.io/host-path" {
                let path = pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.host_path.as_ref())
                    .map(|h| h.path.clone())
                    .unwrap_or_default();
                let below_root = host_path_under_root(&policy.host_path_roots, &path).is_some();
                if !policy.allow_host_path && !below_root {
                    return Err(VolumeError::HostPathOutsideRoots {
                        pod: pod_ref(pod),
                        volume: volume.to_string(),
                        pv: pv_name,
                        path,
                        roots: match policy.host_path_roots.is_empty() {
                            true => "none are listed".to_string(),
                            false => policy
                                .host_path_roots
                                .iter()
                                .map(|r| r.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", "),
                        },
                    });
                }
                return Ok(VolumeLocation {
                    path: PathBuf::from(path),
                    plugin,
                    claim: Some(claim),
                    persistent_volume: Some(pv_name),
                });
            }
            Ok(VolumeLocation {
                path: plugin_dir(kubelet_root, uid()?, &plugin, &pv_name),
                plugin,
                claim: Some(claim),
                persistent_volume: Some(pv_name),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const UID: &str = "8c4b2a8e-1f0c-4c47-9d3e-4f3a5b6c7d8e";

    fn pod() -> Pod {
        serde_yaml::from_str(&format!(
            "
metadata: {{name: web-0, namespace: shop, uid: {UID}}}
spec:
  containers: [{{name: c}}]
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: data-web-0}}}}
  - {{name: scratch, emptyDir: {{}}}}
  - {{name: mem, emptyDir: {{medium: Memory}}}}
  - {{name: inline-csi, csi: {{driver: secrets-store.csi.k8s.io}}}}
  - {{name: eph, ephemeral: {{volumeClaimTemplate: {{spec: {{accessModes: [ReadWriteOnce]}}}}}}}}
  - {{name: share, nfs: {{server: nfs.local, path: /exports}}}}
  - {{name: flex, flexVolume: {{driver: example.com/lvm}}}}
  - {{name: ebs, awsElasticBlockStore: {{volumeID: vol-1}}}}
  - {{name: token, secret: {{secretName: s}}}}
  - {{name: cfg, configMap: {{name: c}}}}
  - {{name: proj, projected: {{sources: []}}}}
  - {{name: info, downwardAPI: {{items: []}}}}
  - {{name: host, hostPath: {{path: /srv/data}}}}
  - {{name: img, image: {{reference: busybox}}}}
  - {{name: ceph, cephfs: {{monitors: [m]}}}}
"
        ))
        .unwrap()
    }

    fn pv(yaml_source: &str, claim: &str) -> PersistentVolume {
        serde_yaml::from_str(&format!(
            "
metadata: {{name: pvc-1234}}
spec:
  claimRef: {{namespace: shop, name: {claim}}}
  {yaml_source}
"
        ))
        .unwrap()
    }

    fn root() -> PathBuf {
        PathBuf::from("/var/lib/kubelet")
    }

    fn at(suffix: &str) -> PathBuf {
        root().join(format!("pods/{UID}/volumes/{suffix}"))
    }

    fn resolve(volume: &str, pv: Option<&PersistentVolume>) -> Result<VolumeLocation, VolumeError> {
        resolve_volume(&root(), &pod(), volume, pv, &VolumePolicy::default())
    }

    #[test]
    fn csi_pv_resolves_to_mount_dir() {
        let pv = pv(
            "csi: {driver: ebs.csi.aws.com, volumeHandle: vol-1}",
            "data-web-0",
        );
        let loc = resolve("data", Some(&pv)).unwrap();
        assert_eq!(loc.path, at("kubernetes.io~csi/pvc-1234/mount"));
        assert_eq!(loc.plugin, "kubernetes.io/csi");
        assert_eq!(loc.claim.as_deref(), Some("data-web-0"));
        assert_eq!(loc.persistent_volume.as_deref(), Some("pvc-1234"));
    }

    #[test]
    fn non_csi_pvs_resolve_to_plugin_dir() {
        for (source, dir) in [
            ("nfs: {server: s, path: /e}", "kubernetes.io~nfs/pvc-1234"),
            (
                "local: {path: /mnt/disks/1}",
                "kubernetes.io~local-volume/pvc-1234",
            ),
            (
                "iscsi: {targetPortal: t, iqn: i, lun: 0}",
                "kubernetes.io~iscsi/pvc-1234",
            ),
            (
                "flexVolume: {driver: example.com/lvm}",
                "example.com~lvm/pvc-1234",
            ),
            // Migrated in-tree cloud plugins are mounted by the CSI plugin.
            (
                "gcePersistentDisk: {pdName: d}",
                "kubernetes.io~csi/pvc-1234/mount",
            ),
        ] {
            let pv = pv(source, "data-web-0");
            assert_eq!(
                resolve("data", Some(&pv)).unwrap().path,
                at(dir),
                "{source}"
            );
        }
    }

    #[test]
    fn inline_volumes_resolve_by_volume_name() {
        for (volume, dir) in [
            ("scratch", "kubernetes.io~empty-dir/scratch"),
            ("mem", "kubernetes.io~empty-dir/mem"),
            ("inline-csi", "kubernetes.io~csi/inline-csi/mount"),
            ("share", "kubernetes.io~nfs/share"),
            ("flex", "example.com~lvm/flex"),
            ("ebs", "kubernetes.io~csi/ebs/mount"),
        ] {
            assert_eq!(resolve(volume, None).unwrap().path, at(dir), "{volume}");
        }
    }

    #[test]
    fn ephemeral_volume_uses_its_generated_claim() {
        let pv = pv("csi: {driver: d, volumeHandle: h}", "web-0-eph");
        let loc = resolve("eph", Some(&pv)).unwrap();
        assert_eq!(loc.claim.as_deref(), Some("web-0-eph"));
        assert_eq!(loc.path, at("kubernetes.io~csi/pvc-1234/mount"));
    }

    #[test]
    fn api_sourced_volumes_are_refused_by_name() {
        for (volume, kind) in [
            ("token", "secret"),
            ("cfg", "configMap"),
            ("proj", "projected"),
            ("info", "downwardAPI"),
        ] {
            let err = resolve(volume, None).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("volume {volume:?} of pod shop/web-0 is a {kind} volume; podvault does not back up secret, configMap, projected or downwardAPI volumes (their content comes from the API server)")
            );
        }
    }

    #[test]
    fn host_path_only_when_allowed() {
        let err = resolve("host", None).unwrap_err();
        assert_eq!(err.to_string(), "volume \"host\" of pod shop/web-0 is a hostPath volume (/srv/data); hostPath volumes are backed up only when explicitly allowed (agent option --allow-host-path)");
        let allow = VolumePolicy {
            allow_host_path: true,
            ..VolumePolicy::default()
        };
        let loc = resolve_volume(&root(), &pod(), "host", None, &allow).unwrap();
        assert_eq!(loc.path, PathBuf::from("/srv/data"));
        // A hostPath PersistentVolume outside every listed root needs the same permission.
        let pv = pv("hostPath: {path: /srv/pv}", "data-web-0");
        assert_eq!(
            resolve("data", Some(&pv)).unwrap_err().to_string(),
            "volume \"data\" of pod shop/web-0 uses PersistentVolume pvc-1234, a hostPath volume at /srv/pv, which is not below a host directory the agent may use (none are listed); a cluster admin lists such directories with the agent option --host-path-root (chart agent.hostPathRoots) and mounts them into the agent at the same path"
        );
        let loc = resolve_volume(&root(), &pod(), "data", Some(&pv), &allow).unwrap();
        assert_eq!(loc.path, PathBuf::from("/srv/pv"));
    }

    #[test]
    fn host_path_persistent_volumes_below_a_listed_root() {
        let roots = VolumePolicy {
            host_path_roots: vec![PathBuf::from("/opt/local-path-provisioner")],
            ..VolumePolicy::default()
        };
        // What local-path-provisioner makes: <root>/pvc-<uid>_<namespace>_<claim>.
        let good = "/opt/local-path-provisioner/pvc-1234_shop_data-web-0";
        let pv_at = |path: &str| pv(&format!("hostPath: {{path: {path:?}}}"), "data-web-0");
        let loc = resolve_volume(&root(), &pod(), "data", Some(&pv_at(good)), &roots).unwrap();
        assert_eq!(loc.path, PathBuf::from(good));
        assert_eq!(loc.plugin, "kubernetes.io/host-path");
        assert_eq!(loc.persistent_volume.as_deref(), Some("pvc-1234"));
        for bad in [
            "/opt/local-path-provisioner",
            "/opt/local-path-provisioner/",
            "/opt/local-path-provisioner/../../etc",
            "/opt/local-path-provisioner/./x",
            "/opt/local-path-provisioner//x",
            "/opt/local-path-provisioner-evil/x",
            "opt/local-path-provisioner/x",
            "/etc",
        ] {
            let err = resolve_volume(&root(), &pod(), "data", Some(&pv_at(bad)), &roots);
            assert!(
                matches!(err, Err(VolumeError::HostPathOutsideRoots { .. })),
                "{bad}: {err:?}"
            );
        }
        // Nested layouts (pathPattern {{.PVC.Namespace}}/{{.PVC.Name}}) are below the root too.
        assert_eq!(
            host_path_under_root(
                &roots.host_path_roots,
                "/opt/local-path-provisioner/shop/data"
            ),
            Some((
                Path::new("/opt/local-path-provisioner"),
                PathBuf::from("shop/data")
            ))
        );
        // A pod's own hostPath volume is never allowed by the roots: its path is the pod's.
        assert!(matches!(
            resolve_volume(&root(), &pod(), "host", None, &roots),
            Err(VolumeError::HostPathNotAllowed { .. })
        ));
    }

    #[test]
    fn unsupported_and_missing() {
        let err = resolve("img", None).unwrap_err().to_string();
        assert!(
            err.contains("is a image volume") && err.contains("OCI image"),
            "{err}"
        );
        let err = resolve("ceph", None).unwrap_err().to_string();
        assert!(err.contains("cephfs") && err.contains("removed"), "{err}");
        let err = resolve("nope", None).unwrap_err().to_string();
        assert!(
            err.starts_with("pod shop/web-0 has no volume \"nope\" (its volumes: data, scratch,"),
            "{err}"
        );
    }

    #[test]
    fn claim_must_be_bound_to_the_given_pv() {
        let err = resolve("data", None).unwrap_err().to_string();
        assert_eq!(err, "volume \"data\" of pod shop/web-0 uses claim \"data-web-0\", which is not bound to a PersistentVolume");
        let other = pv("csi: {driver: d, volumeHandle: h}", "other");
        let err = resolve("data", Some(&other)).unwrap_err().to_string();
        assert_eq!(
            err,
            "PersistentVolume pvc-1234 is bound to shop/other, not to claim shop/data-web-0"
        );
        let block = pv(
            "csi: {driver: d, volumeHandle: h}\n  volumeMode: Block",
            "data-web-0",
        );
        assert!(matches!(
            resolve("data", Some(&block)),
            Err(VolumeError::BlockVolume { .. })
        ));
    }

    #[test]
    fn pod_without_uid_has_no_directory() {
        let mut p = pod();
        p.metadata.uid = None;
        let err = resolve_volume(&root(), &p, "scratch", None, &VolumePolicy::default());
        assert!(matches!(err, Err(VolumeError::NoPodUid { .. })));
    }

    /// Lays out a real kubelet-shaped tree and checks that the computed paths are exactly the
    /// directories holding the data (and that neighbouring volumes are not confused).
    #[test]
    fn computed_paths_exist_in_a_kubelet_shaped_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let kubelet = tmp.path();
        let vols = kubelet.join("pods").join(UID).join("volumes");
        let layout = [
            ("kubernetes.io~csi/pvc-1234/mount", "csi.txt"),
            ("kubernetes.io~empty-dir/scratch", "scratch.txt"),
            ("kubernetes.io~csi/inline-csi/mount", "inline.txt"),
            ("kubernetes.io~nfs/share", "nfs.txt"),
            ("kubernetes.io~secret/token", "token"),
        ];
        for (dir, file) in layout {
            fs::create_dir_all(vols.join(dir)).unwrap();
            fs::write(vols.join(dir).join(file), dir).unwrap();
        }
        // The kubelet also keeps a vol_data.json beside each CSI mount dir.
        fs::write(vols.join("kubernetes.io~csi/pvc-1234/vol_data.json"), "{}").unwrap();
        let pv = pv("csi: {driver: d, volumeHandle: h}", "data-web-0");
        let policy = VolumePolicy::default();
        for (volume, pv, file) in [
            ("data", Some(&pv), "csi.txt"),
            ("scratch", None, "scratch.txt"),
            ("inline-csi", None, "inline.txt"),
            ("share", None, "nfs.txt"),
        ] {
            let loc = resolve_volume(kubelet, &pod(), volume, pv, &policy).unwrap();
            assert!(loc.path.is_dir(), "{}", loc.path.display());
            let names: Vec<_> = fs::read_dir(&loc.path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(names, vec![file.to_string()], "{volume}");
        }
        assert!(resolve_volume(kubelet, &pod(), "token", None, &policy).is_err());
    }
}
