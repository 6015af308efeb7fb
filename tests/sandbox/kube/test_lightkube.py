"""The agent's Kubernetes client (lightkube) against the emulated API server: the calls the agent makes."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube import ApiError, Client
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.operators import not_equal
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Node, Pod
from lightkube.resources.events_v1 import Event as EventV1
from lightkube.types import PatchType

from herd_sandbox.kube.sandbox import KubeSandbox

from .conftest import daemonset, deployment, pdb, running_pods


@pytest.fixture
def cluster(kube_sandbox: KubeSandbox) -> KubeSandbox:
    for name in ("node-a", "node-b"):
        kube_sandbox.add_node(name)
    kube_sandbox.seed(daemonset("agent"), deployment("web", 2))
    kube_sandbox.wait_for(lambda: len(running_pods(kube_sandbox)) == 4)
    return kube_sandbox


def test_get_and_list_nodes(cluster: KubeSandbox, kube_client: Client) -> None:
    node = kube_client.get(Node, "node-a")
    assert node.metadata.name == "node-a"
    assert node.metadata.resourceVersion and node.metadata.uid
    assert [n.metadata.name for n in kube_client.list(Node)] == ["node-a", "node-b"]
    assert [n.metadata.name for n in kube_client.list(Node, labels={"kubernetes.io/hostname": "node-b"})] == ["node-b"]


def test_list_pods_by_node_with_field_selector(cluster: KubeSandbox, kube_client: Client) -> None:
    on_a = list(kube_client.list(Pod, namespace="*", fields={"spec.nodeName": "node-a"}))
    expected = {p["metadata"]["name"] for p in running_pods(cluster, lambda p: p["spec"]["nodeName"] == "node-a")}
    assert {p.metadata.name for p in on_a} == expected and len(expected) == 2

    not_a = list(kube_client.list(Pod, namespace="*", fields={"spec.nodeName": not_equal("node-a")}))
    assert {p.spec.nodeName for p in not_a} == {"node-b"}
    running = list(kube_client.list(Pod, namespace="default", fields={"status.phase": "Running"}))
    assert len(running) == 2


def test_list_is_chunked_with_continue(cluster: KubeSandbox, kube_client: Client) -> None:
    names = [p.metadata.name for p in kube_client.list(Pod, namespace="*", chunk_size=1)]
    assert len(names) == 4 and len(set(names)) == 4


def test_patch_node_cordon_labels_and_taints(cluster: KubeSandbox, kube_client: Client) -> None:
    kube_client.patch(Node, "node-a", {"spec": {"unschedulable": True}})  # strategic merge, lightkube's default
    lb_label = "node.kubernetes.io/exclude-from-external-load-balancers"
    kube_client.patch(Node, "node-a", {"metadata": {"labels": {lb_label: "true"}}}, patch_type=PatchType.MERGE)
    kube_client.patch(Node, "node-a", [{"op": "add", "path": "/spec/taints",
                                        "value": [{"key": "herd/leaving", "effect": "NoSchedule"}]}],
                      patch_type=PatchType.JSON)

    node = cluster.get("Node", "node-a")
    assert node["spec"]["unschedulable"] is True
    assert node["metadata"]["labels"][lb_label] == "true"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-a"
    assert node["spec"]["taints"] == [{"key": "herd/leaving", "effect": "NoSchedule"}]

    # a cordoned, tainted node gets no replacement pods
    def web() -> list[dict[str, Any]]:
        return running_pods(cluster, lambda p: p["metadata"]["name"].startswith("web-"))

    before = {p["metadata"]["name"] for p in web()}
    victim = next(p for p in web() if p["spec"]["nodeName"] == "node-a")
    cluster.delete("Pod", victim["metadata"]["name"], grace_period=0)
    replacement = cluster.wait_for(lambda: [p for p in web() if p["metadata"]["name"] not in before])
    assert replacement[0]["spec"]["nodeName"] == "node-b"


def _evict(client: Client, pod: dict[str, Any]) -> None:
    name = pod["metadata"]["name"]
    client.create(Pod.Eviction(metadata=ObjectMeta(name=name, namespace="default")), name, namespace="default")


def test_eviction_refused_by_budget_is_429(cluster: KubeSandbox, kube_client: Client) -> None:
    cluster.create(pdb("web", "web", minAvailable=2))
    cluster.wait_for(lambda: cluster.get("PodDisruptionBudget", "web")["status"].get("currentHealthy") == 2)
    pod = running_pods(cluster, lambda p: p["metadata"]["name"].startswith("web-"))[0]

    with pytest.raises(ApiError) as err:
        _evict(kube_client, pod)

    status = err.value.status
    assert status.code == 429 and status.reason == "TooManyRequests"
    assert status.message == "Cannot evict pod as it would violate the pod's disruption budget."
    assert status.details.causes[0].reason == "DisruptionBudget"
    assert status.details.causes[0].message == "The disruption budget web needs 2 healthy pods and has 2 currently"
    assert not cluster.get("Pod", pod["metadata"]["name"])["metadata"].get("deletionTimestamp")


def test_eviction_allowed_is_graceful_and_spends_the_budget(cluster: KubeSandbox, kube_client: Client) -> None:
    # a StatefulSet does not replace a pod until its name is free, so the budget stays spent
    cluster.create({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "default"},
                    "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                             "template": deployment("db", 1)["spec"]["template"]}})
    cluster.create(pdb("db", "db", maxUnavailable=1))
    cluster.wait_for(lambda: cluster.get("PodDisruptionBudget", "db")["status"].get("disruptionsAllowed") == 1)
    first, second = running_pods(cluster, lambda p: p["metadata"]["name"].startswith("db-"))
    cluster.time_factor = 100  # keep the first pod terminating while we look

    _evict(kube_client, first)

    evicted = cluster.get("Pod", first["metadata"]["name"])
    assert evicted["metadata"]["deletionTimestamp"]
    assert evicted["metadata"]["deletionGracePeriodSeconds"] == 30
    status = cluster.get("PodDisruptionBudget", "db")["status"]
    assert (status["disruptionsAllowed"], status["currentHealthy"], status["expectedPods"]) == (0, 1, 2)
    with pytest.raises(ApiError) as err:
        _evict(kube_client, second)
    assert err.value.status.code == 429

    cluster.time_factor = 0.0
    cluster.delete("Pod", first["metadata"]["name"], grace_period=0)
    cluster.wait_for(lambda: cluster.get("PodDisruptionBudget", "db")["status"]["disruptionsAllowed"] == 1)


def test_eviction_of_a_pod_with_two_budgets_is_500(cluster: KubeSandbox, kube_client: Client) -> None:
    cluster.seed(pdb("web-a", "web", maxUnavailable=1), pdb("web-b", "web", maxUnavailable=1))
    pod = running_pods(cluster, lambda p: p["metadata"]["name"].startswith("web-"))[0]
    with pytest.raises(ApiError) as err:
        _evict(kube_client, pod)
    assert err.value.status.code == 500
    assert "more than one PodDisruptionBudget" in err.value.status.message


def test_delete_node(cluster: KubeSandbox, kube_client: Client) -> None:
    kube_client.delete(Node, "node-b")
    with pytest.raises(ApiError) as err:
        kube_client.get(Node, "node-b")
    assert err.value.status.code == 404 and err.value.status.reason == "NotFound"
    # pods bound to the deleted node are garbage-collected; the Deployment replaces its pod on node-a
    cluster.wait_for(lambda: {p["spec"]["nodeName"] for p in cluster.list("Pod")} == {"node-a"}
                     and len(running_pods(cluster, lambda p: p["metadata"]["name"].startswith("web-"))) == 2)


def test_create_events(cluster: KubeSandbox, kube_client: Client) -> None:
    ref = ObjectReference(kind="Node", name="node-a", uid=cluster.get("Node", "node-a")["metadata"]["uid"])
    created = kube_client.create(Event(metadata=ObjectMeta(generateName="node-a.", namespace="default"),
                                       involvedObject=ref, reason="Draining", message="herd-agent drains",
                                       type="Normal", source=EventSource(component="herd-agent")))
    assert created.metadata.name.startswith("node-a.")
    listed = list(kube_client.list(Event, namespace="default", fields={"involvedObject.name": "node-a"}))
    assert [e.reason for e in listed] == ["Draining"]

    kube_client.create(EventV1(metadata=ObjectMeta(name="node-a.leave", namespace="default"),
                               eventTime="2026-01-01T00:00:00.000000Z", reason="Left", action="Leave",
                               reportingController="herd-agent", reportingInstance="i-1", type="Normal",
                               regarding=ref, note="left"))
    assert kube_client.get(EventV1, "node-a.leave", namespace="default").note == "left"
    # one set of Events behind both APIs, with the fields mapped
    core = kube_client.get(Event, "node-a.leave", namespace="default")
    assert (core.message, core.involvedObject.name, core.reportingComponent) == ("left", "node-a", "herd-agent")
    both = list(kube_client.list(Event, namespace="default", fields={"involvedObject.name": "node-a"}))
    assert sorted(e.reason for e in both) == ["Draining", "Left"]


def test_lease_get_create_replace_and_409(kube_client: Client) -> None:
    with pytest.raises(ApiError) as err:
        kube_client.get(Lease, "herd-leader", namespace="kube-system")
    assert err.value.status.code == 404

    lease = kube_client.create(Lease(metadata=ObjectMeta(name="herd-leader", namespace="kube-system"),
                                     spec=LeaseSpec(holderIdentity="i-1", leaseDurationSeconds=15)))
    with pytest.raises(ApiError) as err:
        kube_client.create(Lease(metadata=ObjectMeta(name="herd-leader", namespace="kube-system"),
                                 spec=LeaseSpec(holderIdentity="i-2")))
    assert err.value.status.code == 409 and err.value.status.reason == "AlreadyExists"

    lease.spec.holderIdentity = "i-1"
    lease.spec.leaseTransitions = 1
    renewed = kube_client.replace(lease)
    assert int(renewed.metadata.resourceVersion) > int(lease.metadata.resourceVersion)

    lease.spec.holderIdentity = "i-2"  # a contender with the stale resourceVersion loses
    with pytest.raises(ApiError) as err:
        kube_client.replace(lease)
    assert err.value.status.code == 409 and err.value.status.reason == "Conflict"
    assert kube_client.get(Lease, "herd-leader", namespace="kube-system").spec.holderIdentity == "i-1"


def test_watch_pods_from_a_resource_version_sees_deletion(cluster: KubeSandbox, kube_client: Client) -> None:
    listing = kube_client.list(Pod, namespace="default")
    pods = list(listing)
    cluster.delete("Pod", pods[0].metadata.name, grace_period=0)

    seen = []
    for kind, obj in kube_client.watch(Pod, namespace="default", resource_version=listing.resourceVersion,
                                       server_timeout=5):
        seen.append((kind, obj.metadata.name))
        if kind == "DELETED":
            break

    assert ("DELETED", pods[0].metadata.name) in seen
    assert ("ADDED", pods[0].metadata.name) not in seen  # resumed after the list, no replay of old state


def test_watch_from_an_expired_version_raises_410(kube_sandbox_factory: Any) -> None:
    from lightkube import KubeConfig

    kube = kube_sandbox_factory(history=2)
    kube.add_node("node-a")
    start = kube.get("Node", "node-a")["metadata"]["resourceVersion"]
    for n in range(4):
        kube.modify("Node", "node-a", lambda node, n=n: node["metadata"].setdefault("labels", {}).update(n=str(n)))
    client = Client(config=KubeConfig.from_file(str(kube.admin_kubeconfig)))

    with pytest.raises(ApiError) as err:
        next(iter(client.watch(Node, resource_version=start, server_timeout=2)))

    assert err.value.status.code == 410 and err.value.status.reason == "Expired"
