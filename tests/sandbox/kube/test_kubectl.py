"""Conformance: the real kubectl (1.32 and 1.37) against the emulated API server."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from herd_sandbox.kube.sandbox import KubeSandbox

from .conftest import Kubectl, daemonset, deployment, pdb, running_pods

pytestmark = pytest.mark.allow_subprocess


def test_get_nodes_json_lists_nodes_with_kind_and_conditions(kube_sandbox: KubeSandbox, kubectl: Kubectl) -> None:
    kube_sandbox.add_node("node-a", control_plane=True)
    kube_sandbox.add_node("node-b")

    doc = kubectl.json("get", "nodes")

    assert [n["metadata"]["name"] for n in doc["items"]] == ["node-a", "node-b"]
    assert {n["kind"] for n in doc["items"]} == {"Node"}
    ready = [c for c in doc["items"][0]["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"


def test_get_nodes_table_shows_status_and_roles(kube_sandbox: KubeSandbox, kubectl: Kubectl) -> None:
    kube_sandbox.add_node("node-a", control_plane=True)
    kube_sandbox.add_node("node-b", ready=False)

    out = kubectl.run("get", "nodes").stdout.splitlines()

    assert out[0].split()[:3] == ["NAME", "STATUS", "ROLES"]
    assert out[1].split()[:3] == ["node-a", "Ready", "control-plane,etcd,master"]
    assert out[2].split()[:2] == ["node-b", "NotReady"]


def test_label_annotate_cordon_uncordon(kube_sandbox: KubeSandbox, kubectl: Kubectl) -> None:
    kube_sandbox.add_node("node-a")

    kubectl.run("label", "node", "node-a", "herd/lb-exclude=true")
    kubectl.run("annotate", "node", "node-a", "herd/leaving=2026-01-01")
    kubectl.run("cordon", "node-a")
    node = kube_sandbox.get("Node", "node-a")
    assert node["metadata"]["labels"]["herd/lb-exclude"] == "true"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-a"
    assert node["metadata"]["annotations"]["herd/leaving"] == "2026-01-01"
    assert node["spec"]["unschedulable"] is True

    kubectl.run("label", "node", "node-a", "herd/lb-exclude-")
    kubectl.run("uncordon", "node-a")
    node = kube_sandbox.get("Node", "node-a")
    assert "herd/lb-exclude" not in node["metadata"]["labels"]
    assert not node["spec"].get("unschedulable")


def test_taint_add_overwrite_and_remove_keeps_other_taints(kube_sandbox: KubeSandbox, kubectl: Kubectl) -> None:
    kube_sandbox.add_node("node-a", taints=[{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}])

    kubectl.run("taint", "node", "node-a", "herd/leaving=true:NoSchedule")
    taints = kube_sandbox.get("Node", "node-a")["spec"]["taints"]
    assert {(t["key"], t.get("value"), t["effect"]) for t in taints} == {
        ("dedicated", "infra", "NoSchedule"), ("herd/leaving", "true", "NoSchedule")}

    kubectl.run("taint", "node", "node-a", "herd/leaving=later:NoSchedule", "--overwrite")
    taints = kube_sandbox.get("Node", "node-a")["spec"]["taints"]
    assert ("herd/leaving", "later") in {(t["key"], t.get("value")) for t in taints}

    kubectl.run("taint", "node", "node-a", "herd/leaving:NoSchedule-")
    taints = kube_sandbox.get("Node", "node-a")["spec"]["taints"]
    assert [(t["key"], t["effect"]) for t in taints] == [("dedicated", "NoSchedule")]


def test_drain_evicts_deployment_pods_keeps_daemonset_and_mirror(kube_sandbox: KubeSandbox, kubectl: Kubectl) -> None:
    for name in ("node-a", "node-b", "node-c"):
        kube_sandbox.add_node(name)
    kube_sandbox.add_static_pod("node-a", "etcd")
    kube_sandbox.seed(daemonset("agent"), deployment("web", 3, empty_dir=True))
    kube_sandbox.wait_for(lambda: len(running_pods(kube_sandbox)) == 7)
    on_a = {p["metadata"]["name"] for p in running_pods(kube_sandbox, lambda p: p["spec"]["nodeName"] == "node-a")}
    web_on_a = {n for n in on_a if n.startswith("web-")}
    assert len(on_a) == 3 and len(web_on_a) == 1

    result = kubectl.run("drain", "node-a", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=30s")

    assert "node/node-a drained" in result.stdout
    assert kube_sandbox.get("Node", "node-a")["spec"]["unschedulable"] is True
    web = kube_sandbox.wait_for(lambda: (lambda pods: pods if len(pods) == 3 else None)(
        running_pods(kube_sandbox, lambda p: p["metadata"]["name"].startswith("web-"))))
    assert all(p["spec"]["nodeName"] != "node-a" for p in web)
    assert not web_on_a & {p["metadata"]["name"] for p in web}
    left_on_a = {p["metadata"]["name"] for p in kube_sandbox.list("Pod") if p["spec"]["nodeName"] == "node-a"}
    assert left_on_a == on_a - web_on_a  # the DaemonSet pod and the mirror pod stay
    assert any(n.startswith("etcd-") for n in left_on_a) and any(n.startswith("agent-") for n in left_on_a)


def test_drain_times_out_on_a_budget_that_never_allows(kube_sandbox: KubeSandbox, kubectl: Kubectl) -> None:
    kube_sandbox.add_node("node-a")
    kube_sandbox.seed(deployment("db", 1), pdb("db", "db", minAvailable=1))
    kube_sandbox.wait_for(lambda: kube_sandbox.get("PodDisruptionBudget", "db")["status"].get("expectedPods") == 1)

    # kubectl retries a refused eviction every 5 s and checks its deadline between attempts: 9 s
    # shows exactly one retry (~10 s of wall time; the second attempt is in time even when the first
    # answer is slow); the other version gets 4 s (one attempt) to keep the suite fast.
    timeout, attempts = (9, 2) if kubectl.version == "1.32" else (4, 1)
    started = time.monotonic()
    result = kubectl.run("drain", "node-a", "--ignore-daemonsets", f"--timeout={timeout}s", check=False)

    assert result.returncode != 0
    assert time.monotonic() - started >= timeout
    refusals = result.stderr.count("Cannot evict pod as it would violate the pod's disruption budget.")
    assert refusals == attempts
    assert f"global timeout reached: {timeout}s" in result.stderr
    assert len(running_pods(kube_sandbox)) == 1


def test_delete_node_and_wait_for_ready(kube_sandbox: KubeSandbox, kubectl: Kubectl) -> None:
    kube_sandbox.add_node("node-a")
    kube_sandbox.add_node("node-b", ready=False)

    kubectl.run("wait", "--for=condition=Ready", "node/node-a", "--timeout=5s")
    blocked = kubectl.run("wait", "--for=condition=Ready", "node/node-b", "--timeout=1s", check=False)
    assert blocked.returncode != 0 and "timed out" in blocked.stderr

    proc = subprocess.Popen(  # noqa: S603
        [str(kubectl.binary), "--kubeconfig", str(kubectl.kubeconfig), "wait", "--for=condition=Ready",
         "node/node-b", "--timeout=20s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the flip must reach kubectl over its watch, not its first GET
        kube_sandbox.wait_for(lambda: kube_sandbox.watch_count("Node") > 0)
        kube_sandbox.set_node_ready("node-b", True)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "condition met" in out

    kubectl.run("delete", "node", "node-a")
    assert kube_sandbox.find("Node", "node-a") is None
    missing = kubectl.run("get", "node", "node-a", check=False)
    assert missing.returncode != 0 and 'nodes "node-a" not found' in missing.stderr


LEASE = """
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: herd-leader
  namespace: kube-system
spec:
  holderIdentity: {holder}
  leaseDurationSeconds: 15
"""


def test_apply_and_get_lease(kube_sandbox: KubeSandbox, kubectl: Kubectl) -> None:
    created = kubectl.run("apply", "--validate=false", "-f", "-", stdin=LEASE.format(holder="i-1"))
    assert "lease.coordination.k8s.io/herd-leader created" in created.stdout
    updated = kubectl.run("apply", "-f", "-", stdin=LEASE.format(holder="i-2"))  # validating (empty OpenAPI)
    assert "configured" in updated.stdout

    lease = kubectl.json("get", "lease", "herd-leader", "-n", "kube-system")

    assert lease["spec"]["holderIdentity"] == "i-2"
    assert lease["spec"]["leaseDurationSeconds"] == 15
    assert "kubectl.kubernetes.io/last-applied-configuration" in lease["metadata"]["annotations"]
    assert kubectl.run("get", "leases", "-n", "kube-system").stdout.split()[:3] == ["NAME", "HOLDER", "AGE"]


def test_stale_replace_of_a_lease_is_a_409(kube_sandbox: KubeSandbox, kubectl: Kubectl) -> None:
    kubectl.run("apply", "--validate=false", "-f", "-", stdin=LEASE.format(holder="i-1"))
    stale = kubectl.json("get", "lease", "herd-leader", "-n", "kube-system")
    fresh = dict(stale, spec={**stale["spec"], "holderIdentity": "i-2"})
    kubectl.run("replace", "-f", "-", stdin=json.dumps(fresh))

    stale["spec"]["holderIdentity"] = "i-3"
    result = kubectl.run("replace", "--validate=false", "-f", "-", stdin=json.dumps(stale), check=False)

    assert result.returncode != 0
    assert "Error from server (Conflict)" in result.stderr
    assert "the object has been modified" in result.stderr
    assert kube_sandbox.get("Lease", "herd-leader", "kube-system")["spec"]["holderIdentity"] == "i-2"


def test_rollout_status_completes(kube_sandbox: KubeSandbox, kubectl: Kubectl) -> None:
    kube_sandbox.add_node("node-a")
    kube_sandbox.seed(deployment("web", 2))

    result = kubectl.run("rollout", "status", "deployment/web", "--timeout=20s")

    assert 'deployment "web" successfully rolled out' in result.stdout
    kubectl.run("set", "image", "deployment/web", "main=example/web:2")
    result = kubectl.run("rollout", "status", "deployment/web", "--timeout=20s")
    assert 'deployment "web" successfully rolled out' in result.stdout
    images = {p["spec"]["containers"][0]["image"] for p in running_pods(kube_sandbox)}
    assert images == {"example/web:2"}


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: releases.herd.example.com
spec:
  group: herd.example.com
  scope: Namespaced
  names: {plural: releases, singular: release, kind: Release, shortNames: [rel]}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
    additionalPrinterColumns:
    - {name: Chart, type: string, jsonPath: .spec.chart}
"""
RELEASE = """
apiVersion: herd.example.com/v1
kind: Release
metadata: {name: ingress, namespace: default}
spec: {chart: ingress-nginx}
"""


def test_custom_resources_via_crd(kube_sandbox: KubeSandbox, kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", "-", stdin=CRD)
    kubectl.run("wait", "--for=condition=Established", "crd/releases.herd.example.com", "--timeout=10s")
    assert "release.herd.example.com/ingress created" in kubectl.run("apply", "-f", "-", stdin=RELEASE).stdout

    table = kubectl.run("get", "rel").stdout.split()
    assert table[:3] == ["NAME", "CHART", "AGE"] and table[3:5] == ["ingress", "ingress-nginx"]
    kubectl.run("patch", "release", "ingress", "--type=merge", "-p", '{"spec":{"chart":"traefik"}}')
    assert kubectl.json("get", "release", "ingress")["spec"]["chart"] == "traefik"
    kubectl.run("delete", "crd", "releases.herd.example.com")
    with pytest.raises(KeyError):
        kube_sandbox.resource_type("Release", "herd.example.com/v1")  # no longer served
    gone = kubectl.run("get", "--raw", "/apis/herd.example.com/v1/namespaces/default/releases", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
