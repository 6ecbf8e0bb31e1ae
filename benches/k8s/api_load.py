#!/usr/bin/env python3
"""API requests and memory of one node agent for one schedule tick of a large cluster.

Needs a real kube-apiserver (admin kubeconfig in PODVAULT_E2E_KUBECONFIG) with nothing else
talking to it, kubectl, and a built `podvault` binary. It lays out PODS annotated pods on
NODES nodes (spec.nodeName set, status Running, one emptyDir volume "data" each) and one
PodVolumeBackup per pod labelled with its node, as the controller's tick creates them; then
runs ONE agent (for node-0) until every backup of its node has finished, and reports:

- API requests the agent caused, by verb and resource, from the API server's own
  `apiserver_request_total` (delta over the run; nothing else may use the server meanwhile);
- the agent's peak RSS (VmHWM) and run time.

    PODVAULT_E2E_KUBECONFIG=/path/admin.kubeconfig \
      python3 benches/k8s/api_load.py --podvault target/release/podvault [--pods 2000 --nodes 20]

Objects go into a fresh namespace `load-<n>` and are left there (delete it afterwards).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter


def kubectl(cfg, *args, input=None, check=True):
    r = subprocess.run(["kubectl", "--kubeconfig", cfg, *args], input=input,
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)}: {r.stderr}")
    return r.stdout


def request_counts(cfg):
    """apiserver_request_total summed by (verb, resource/subresource), podvault kinds + core."""
    text = kubectl(cfg, "get", "--raw", "/metrics")
    counts = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        value = float(line.rsplit(" ", 1)[1])
        res = labels.get("resource", "")
        if labels.get("subresource"):
            res += "/" + labels["subresource"]
        counts[(labels.get("verb", ""), res)] += value
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podvault", required=True)
    ap.add_argument("--pods", type=int, default=2000)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--timeout", type=int, default=900)
    a = ap.parse_args()
    cfg = os.environ.get("PODVAULT_E2E_KUBECONFIG") or sys.exit("set PODVAULT_E2E_KUBECONFIG")
    here = os.path.dirname(os.path.abspath(__file__))
    deploy = os.path.join(here, "..", "..", "deploy")
    kubectl(cfg, "apply", "-f", os.path.join(deploy, "manifests", "00-namespace.yaml"))
    kubectl(cfg, "apply", "-f", os.path.join(deploy, "crds", "crds.yaml"))
    kubectl(cfg, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")

    ns = f"load-{int(time.time())}"
    work = tempfile.mkdtemp(prefix="podvault-api-load-")
    root, repo = os.path.join(work, "kubelet"), os.path.join(work, "repo")
    kubectl(cfg, "create", "namespace", ns)
    # A bare API server has no controller-manager to create it, and pods need it.
    kubectl(cfg, "-n", ns, "create", "serviceaccount", "default", check=False)
    kubectl(cfg, "-n", "podvault", "create", "secret", "generic", f"{ns}-pw",
            "--from-literal=password=load-test", check=False)
    kubectl(cfg, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "podvault.dev/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": ns},
        "spec": {"backend": {"fs": {"path": repo}},
                 "passwordSecret": {"name": f"{ns}-pw", "key": "password"}}}))

    # Pods, in batches of 500 (one apply each).
    t0 = time.time()
    for start in range(0, a.pods, 500):
        items = []
        for i in range(start, min(a.pods, start + 500)):
            items.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"app-{i}", "namespace": ns,
                             "annotations": {"backup.podvault.dev/backup-volumes": "data"}},
                "spec": {"nodeName": f"node-{i % a.nodes}",
                         "containers": [{"name": "c", "image": "busybox"}],
                         "volumes": [{"name": "data", "emptyDir": {}}]}})
        kubectl(cfg, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                            "items": items}))
    pods = json.loads(kubectl(cfg, "-n", ns, "get", "pods", "-o", "json"))["items"]
    # A tiny volume on disk for node-0's pods. (No kubelet: the pods stay Pending, which the
    # agent treats like Running once the volume directory exists.)
    for p in pods:
        name = p["metadata"]["name"]
        if p["spec"]["nodeName"] == "node-0":
            d = os.path.join(root, "pods", p["metadata"]["uid"], "volumes",
                             "kubernetes.io~empty-dir", "data")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "file"), "w") as f:
                f.write(name * 100)
    # One PVB per pod, as the controller's tick creates them (node label + finalizer).
    for start in range(0, a.pods, 500):
        items = []
        for i in range(start, min(a.pods, start + 500)):
            items.append({
                "apiVersion": "podvault.dev/v1alpha1", "kind": "PodVolumeBackup",
                "metadata": {"name": f"app-{i}-data", "namespace": ns,
                             "labels": {"podvault.dev/node": f"node-{i % a.nodes}"},
                             "finalizers": ["podvault.dev/cancel-on-delete"]},
                "spec": {"pod": f"app-{i}", "volume": "data", "repository": ns}})
        kubectl(cfg, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                            "items": items}))
    print(f"created {a.pods} pods and PVBs on {a.nodes} nodes in {time.time() - t0:.0f}s",
          flush=True)

    before = request_counts(cfg)
    env = dict(os.environ, KUBECONFIG=cfg, PODVAULT_LOG="warn")
    agent = subprocess.Popen([a.podvault, "agent", "--node", "node-0", "--kubelet-root", root,
                              "--metrics-addr", "127.0.0.1:0", "--concurrency",
                              str(a.concurrency), "--agent-name", "load-agent"], env=env)
    t0 = time.time()
    mine = a.pods // a.nodes
    done = 0
    peak = 0
    while time.time() - t0 < a.timeout:
        time.sleep(2)
        try:
            with open(f"/proc/{agent.pid}/status") as f:
                peak = max(peak, int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)))
        except OSError:
            break
        phases = Counter(
            (o.get("status") or {}).get("phase", "New")
            for o in json.loads(kubectl(cfg, "-n", ns, "get", "pvb", "-l",
                                        "podvault.dev/node=node-0", "-o", "json"))["items"])
        done = phases["Completed"] + phases["Failed"] + phases["Canceled"]
        if done >= mine:
            break
    elapsed = time.time() - t0
    # Count what the agent did, not our polling: subtract our own LIST calls.
    agent.terminate()
    agent.wait(timeout=30)
    after = request_counts(cfg)
    delta = Counter({k: after[k] - before[k] for k in after if after[k] - before[k] > 0})
    polls = int(elapsed / 2) + 1
    delta[("LIST", "podvolumebackups")] -= polls
    print(f"agent on node-0: {done}/{mine} PVBs finished in {elapsed:.0f}s; "
          f"peak RSS {peak / 1024:.0f} MiB")
    # Only what the agent can have caused (the API server's own leases, discovery by kubectl
    # and the like are left out).
    agent_kinds = ("pods", "persistentvolumeclaims", "persistentvolumes", "secrets", "events",
                   "podvolumebackups", "podvolumerestores", "backuprepositories")
    mine = {k: n for k, n in delta.items() if n > 0 and k[1].split("/")[0] in agent_kinds}
    print(f"{'verb':8} {'resource':40} requests")
    for (verb, res), n in sorted(mine.items(), key=lambda kv: (-kv[1], kv[0])):
        if verb != "WATCH":
            print(f"{verb:8} {res:40} {int(n)}")
    pod_gets = sum(n for (v, r), n in mine.items() if v == "GET" and r == "pods")
    print(f"pod GETs: {int(pod_gets)}")
    watches = sum(n for (v, _), n in mine.items() if v == "WATCH")
    print(f"WATCH    (watch requests opened)                  {int(watches)}")
    print(f"total (excluding watches): {int(sum(n for (v, _), n in mine.items() if v != 'WATCH'))}")


if __name__ == "__main__":
    main()
