"""The drain engine against the emulated API server: PDBs, DaemonSets, mirror and emptyDir pods."""

from __future__ import annotations

from typing import Any

from herd_agent.drain.engine import Drainer, DrainPolicy, KubeDrainApi
from herd_sandbox.kube.sandbox import KubeSandbox


def deployment(name: str, replicas: int, empty_dir: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": f"example/{name}:1"}]}
    if empty_dir:
        spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}


def on_node(kube: KubeSandbox, node: str) -> list[dict[str, Any]]:
    return [p for p in kube.list("Pod") if p["spec"].get("nodeName") == node]


def setup(kube: KubeSandbox) -> None:
    kube.add_node("n1")
    kube.seed(
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "kube-system"},
         "spec": {"selector": {"matchLabels": {"app": "agent"}},
                  "template": {"metadata": {"labels": {"app": "agent"}},
                               "spec": {"containers": [{"name": "a", "image": "a"}]}}}},
        deployment("web", 4),
        deployment("cache", 1, empty_dir=True),
    )
    kube.add_static_pod("n1", "etcd-static")
    kube.wait_for(lambda: len([p for p in on_node(kube, "n1") if p["status"].get("phase") == "Running"]) == 7)
    kube.add_node("n2", ready=False)
    kube.add_node("n3", ready=False)


def test_drain_moves_workloads_and_leaves_daemonset_and_mirror(kube_sandbox: KubeSandbox, kube_client) -> None:
    kube = kube_sandbox
    setup(kube)
    kube.seed({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"minAvailable": 3, "selector": {"matchLabels": {"app": "web"}}}})
    kube.modify("Node", "n1", lambda n: n["spec"].update(unschedulable=True))
    statuses: list[str] = []
    drainer: Drainer

    def progress(line: str) -> None:
        statuses.append(line)
        # Replacements stay Pending on the NotReady nodes, so the PDB (3 of 4) refuses all but
        # one eviction; once a refusal is on record the nodes turn Ready and the rest can follow.
        if any("PodDisruptionBudget web" in o.detail for o in drainer.report.outcomes.values()):
            for n in ("n2", "n3"):
                kube.set_node_ready(n, True)

    drainer = Drainer(KubeDrainApi(kube_client), "n1", DrainPolicy(parallelism=4), 60, on_progress=progress)
    report = drainer.run()
    assert report.complete and not report.budget_spent
    left = {p["metadata"]["name"] for p in on_node(kube, "n1")}
    assert any(n.startswith("agent-") for n in left) and "etcd-static-n1" in left and len(left) == 2
    assert report.count("evicted") == 5 and report.count("skipped") == 2
    web_elsewhere = [p for p in kube.list("Pod") if p["metadata"]["labels"].get("app") == "web"
                     and p["spec"].get("nodeName") in ("n2", "n3") and not p["metadata"].get("deletionTimestamp")]
    assert len(web_elsewhere) == 4
    # minAvailable 3 of 4: evictions past the first were refused until replacements were Ready.
    web = [o for o in report.outcomes.values() if o.pod.startswith("default/web-")]
    assert any("PodDisruptionBudget web" in o.detail for o in web)
    assert statuses and statuses[-1].startswith("draining n1: 0 pod(s) to go")


def test_pdb_that_never_allows_is_driven_by_the_budget(kube_sandbox: KubeSandbox, kube_client) -> None:
    kube = kube_sandbox
    kube.add_node("n1")
    kube.seed(deployment("db", 2),
              {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": {"name": "db-strict", "namespace": "default"},
               "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "db"}}}})
    kube.wait_for(lambda: len([p for p in on_node(kube, "n1") if p["status"].get("phase") == "Running"]) == 2)
    waits: list[float] = []
    fake_now = [0.0]

    def wait(seconds: float) -> bool:  # virtual time: the budget passes without real waiting
        waits.append(seconds)
        fake_now[0] += seconds
        return False

    report = Drainer(KubeDrainApi(kube_client), "n1", DrainPolicy(delete_after_budget=False), 25,
                     clock=lambda: fake_now[0], wait=wait).run()
    assert report.budget_spent and not report.complete
    assert report.count("timed-out") == 2
    for o in report.blocked():
        assert "PodDisruptionBudget db-strict" in o.detail and o.attempts >= 3
    # Backoff, not a busy loop: waits grow and never drop below the floor.
    assert min(waits) >= 0.05 and len(waits) < 60
    assert len(on_node(kube, "n1")) == 2  # not deleted: delete_after_budget is off


def test_budget_spent_deletes_what_is_left(kube_sandbox: KubeSandbox, kube_client) -> None:
    kube = kube_sandbox
    kube.add_node("n1")
    kube.seed(deployment("db", 1),
              {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": {"name": "db-strict", "namespace": "default"},
               "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "db"}}}})
    kube.wait_for(lambda: len([p for p in on_node(kube, "n1") if p["status"].get("phase") == "Running"]) == 1)
    kube.modify("Node", "n1", lambda n: n["spec"].update(unschedulable=True))
    report = Drainer(KubeDrainApi(kube_client), "n1", DrainPolicy(), 0).run()
    assert report.budget_spent and report.count("deleted") == 1
    assert "budget spent; deleted" in next(iter(report.outcomes.values())).detail
    kube.wait_for(lambda: not [p for p in on_node(kube, "n1") if not p["metadata"].get("deletionTimestamp")])


def test_policy_blocks_are_recorded(kube_sandbox: KubeSandbox, kube_client) -> None:
    kube = kube_sandbox
    kube.add_node("n1")
    kube.seed(deployment("cache", 1, empty_dir=True))
    kube.wait_for(lambda: len(on_node(kube, "n1")) == 1)
    fake_now = [0.0]

    def wait(seconds: float) -> bool:
        fake_now[0] += seconds
        return False

    report = Drainer(KubeDrainApi(kube_client), "n1", DrainPolicy(delete_emptydir_data=False), 3,
                     clock=lambda: fake_now[0], wait=wait).run()
    (outcome,) = report.outcomes.values()
    assert "emptyDir volume(s) scratch" in outcome.detail and not report.complete
