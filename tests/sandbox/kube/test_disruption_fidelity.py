"""Emulator fidelity where it could hide drain bugs (Kubernetes' documented behaviour): PDB status
from the disruption-controller pass (429 while observedGeneration lags), bare pods under a
maxUnavailable budget fail safe, pods that exit before their grace period or run it out, pods on a
NotReady node never reaped; and injected API faults (429 / 5xx / slow) on the eviction subresource."""

from __future__ import annotations

import time
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from herd_sandbox.kube.faults import KubeFault
from herd_sandbox.kube.sandbox import KubeSandbox
from herd_sandbox.kube.store import EXITS_AFTER_ANNOTATION

from .conftest import deployment


def pdb(name: str, app: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": app}}, **spec}}


def bare_pod(name: str, app: str, node: str, **annotations: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}, "annotations": annotations},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "c", "image": "c"}]}}


def evict(client: Any, name: str) -> int:
    try:
        client.create(Pod.Eviction(metadata=ObjectMeta(name=name, namespace="default")), name, namespace="default")
    except ApiError as exc:
        return int(exc.status.code)
    return 201


def running(kube: KubeSandbox, app: str) -> list[dict[str, Any]]:
    return [p for p in kube.list("Pod") if p["metadata"].get("labels", {}).get("app") == app
            and p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def test_bare_pods_under_max_unavailable_fail_safe(kube_sandbox: KubeSandbox, kube_client: Any) -> None:
    kube_sandbox.add_node("n1")
    kube_sandbox.seed(bare_pod("solo-1", "solo", "n1"), bare_pod("solo-2", "solo", "n1"),
                      pdb("solo", "solo", maxUnavailable=1))
    kube_sandbox.wait_for(lambda: len(running(kube_sandbox, "solo")) == 2)
    status = kube_sandbox.wait_for(lambda: (kube_sandbox.get("PodDisruptionBudget", "solo", "default")
                                            .get("status") or {}).get("conditions") and
                                   kube_sandbox.get("PodDisruptionBudget", "solo", "default")["status"])
    assert status["disruptionsAllowed"] == 0
    (cond,) = status["conditions"]
    assert (cond["status"], cond["reason"]) == ("False", "SyncFailed") and "solo-" in cond["message"]
    assert evict(kube_client, "solo-1") == 429


def test_eviction_waits_for_the_controller_pass(kube_sandbox: KubeSandbox, kube_client: Any) -> None:
    kube_sandbox.add_node("n1")
    kube_sandbox.seed(deployment("web", 3))
    kube_sandbox.wait_for(lambda: len(running(kube_sandbox, "web")) == 3)
    kube_sandbox.world.stop()  # no disruption-controller pass from now on: the status stays as it is
    kube_sandbox.create(pdb("web", "web", minAvailable=1))
    name = running(kube_sandbox, "web")[0]["metadata"]["name"]
    with pytest.raises(ApiError) as exc:
        kube_client.create(Pod.Eviction(metadata=ObjectMeta(name=name, namespace="default")), name,
                           namespace="default")
    assert exc.value.status.code == 429
    assert "still being processed" in exc.value.status.details.causes[0].message


def test_pods_exit_early_or_run_out_their_grace_and_a_notready_node_keeps_them(kube_sandbox: KubeSandbox) -> None:
    kube_sandbox.add_node("n1")
    kube_sandbox.add_node("n2")
    kube_sandbox.seed(bare_pod("quick", "a", "n1", **{EXITS_AFTER_ANNOTATION: "1"}), bare_pod("stubborn", "a", "n1"),
                      bare_pod("stranded", "b", "n2", **{EXITS_AFTER_ANNOTATION: "0"}))
    kube_sandbox.wait_for(lambda: len(running(kube_sandbox, "a")) == 2 and len(running(kube_sandbox, "b")) == 1)
    kube_sandbox.set_node_ready("n2", False)
    started = time.monotonic()
    for name in ("quick", "stubborn", "stranded"):
        kube_sandbox.delete("Pod", name, "default")
    kube_sandbox.wait_for(lambda: kube_sandbox.find("Pod", "quick", "default") is None)
    quick = time.monotonic() - started
    kube_sandbox.wait_for(lambda: kube_sandbox.find("Pod", "stubborn", "default") is None)
    stubborn = time.monotonic() - started
    assert quick < stubborn  # 1 s of 30 s, at the sandbox's time factor
    assert stubborn >= 30 * kube_sandbox.store.time_factor * 0.9
    assert kube_sandbox.find("Pod", "stranded", "default") is not None  # its kubelet is gone
    kube_sandbox.delete("Node", "n2")  # pod GC removes the pods of a deleted Node
    kube_sandbox.wait_for(lambda: kube_sandbox.find("Pod", "stranded", "default") is None)


def test_injected_eviction_faults_and_slow_answers(kube_sandbox: KubeSandbox, kube_client: Any) -> None:
    kube_sandbox.add_node("n1")
    kube_sandbox.seed(deployment("web", 2))
    kube_sandbox.wait_for(lambda: len(running(kube_sandbox, "web")) == 2)
    a, b = (p["metadata"]["name"] for p in running(kube_sandbox, "web"))
    kube_sandbox.faults.add(KubeFault("create", "pods", "eviction", status=429, count=1))
    kube_sandbox.faults.add(KubeFault("create", "pods", "eviction", status=503, count=1))
    assert [evict(kube_client, a), evict(kube_client, a), evict(kube_client, a)] == [429, 503, 201]
    kube_sandbox.faults.add(KubeFault.parse("create:pods/eviction=slow0.5s"))
    started = time.monotonic()
    assert evict(kube_client, b) == 201
    assert time.monotonic() - started >= 0.5
    assert kube_sandbox.faults.rules() == []
    with pytest.raises(ValueError, match="verb:resource"):
        KubeFault.parse("pods=429")
