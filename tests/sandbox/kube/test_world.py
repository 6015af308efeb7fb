"""The simulated cluster: scheduling, readiness, DaemonSets, mirror pods, garbage collection."""

from __future__ import annotations

from typing import Any

from herd_sandbox.kube.sandbox import KubeSandbox

from .conftest import daemonset, deployment, running_pods


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def test_node_readiness_drives_pod_readiness_and_scheduling(kube_sandbox: KubeSandbox) -> None:
    kube_sandbox.add_node("node-a")
    kube_sandbox.add_node("node-b", ready=False)
    kube_sandbox.seed(deployment("web", 3))
    pods = kube_sandbox.wait_for(lambda: (lambda p: p if len(p) == 3 else None)(running_pods(kube_sandbox)))
    assert {p["spec"]["nodeName"] for p in pods} == {"node-a"}  # NotReady nodes get nothing
    assert all(ready(p) for p in pods)

    kube_sandbox.set_node_ready("node-a", False)
    kube_sandbox.wait_for(lambda: not any(ready(p) for p in kube_sandbox.list("Pod")))
    node = kube_sandbox.get("Node", "node-a")
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "Unknown"
    kube_sandbox.wait_for(lambda: "readyReplicas" not in kube_sandbox.get("Deployment", "web")["status"])

    kube_sandbox.set_node_ready("node-a", True)
    kube_sandbox.wait_for(lambda: kube_sandbox.get("Deployment", "web")["status"].get("readyReplicas") == 3)


def test_daemonset_respects_taints_and_mirror_pods_follow_their_node(kube_sandbox: KubeSandbox) -> None:
    kube_sandbox.add_node("node-a", unschedulable=True)  # cordoned: DaemonSet pods still land
    kube_sandbox.add_node("node-b", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    kube_sandbox.add_static_pod("node-a", "kube-vip")
    kube_sandbox.create(daemonset("agent"))

    pods = kube_sandbox.wait_for(
        lambda: running_pods(kube_sandbox, lambda p: p["metadata"]["name"].startswith("agent-")))
    assert [p["spec"]["nodeName"] for p in pods] == ["node-a"]  # the tainted node is not tolerated
    owner = pods[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("DaemonSet", "agent", True)
    ds = kube_sandbox.wait_for(lambda: kube_sandbox.get("DaemonSet", "agent", "kube-system")["status"])
    assert ds["desiredNumberScheduled"] == 1

    mirror = kube_sandbox.get("Pod", "kube-vip-node-a", "kube-system")
    assert "kubernetes.io/config.mirror" in mirror["metadata"]["annotations"]
    assert mirror["metadata"]["ownerReferences"][0]["kind"] == "Node"

    kube_sandbox.delete("Node", "node-a")
    kube_sandbox.wait_for(lambda: kube_sandbox.list("Pod", "kube-system") == [])


def test_deleting_a_deployment_collects_its_replicasets_and_pods(kube_sandbox: KubeSandbox) -> None:
    kube_sandbox.add_node("node-a")
    kube_sandbox.create(deployment("web", 2))
    kube_sandbox.wait_for(lambda: len(running_pods(kube_sandbox)) == 2)

    kube_sandbox.delete("Deployment", "web")

    kube_sandbox.wait_for(lambda: not kube_sandbox.list("ReplicaSet") and not kube_sandbox.list("Pod"))


def test_scale_down_and_up_keeps_the_count(kube_sandbox: KubeSandbox) -> None:
    kube_sandbox.add_node("node-a")
    kube_sandbox.create(deployment("web", 3))
    kube_sandbox.wait_for(lambda: len(running_pods(kube_sandbox)) == 3)

    kube_sandbox.modify("Deployment", "web", lambda d: d["spec"].update(replicas=1))
    kube_sandbox.wait_for(lambda: len(kube_sandbox.list("Pod")) == 1)
    kube_sandbox.modify("Deployment", "web", lambda d: d["spec"].update(replicas=2))
    kube_sandbox.wait_for(lambda: kube_sandbox.get("Deployment", "web")["status"].get("availableReplicas") == 2)
