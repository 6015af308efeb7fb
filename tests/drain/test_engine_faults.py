"""The drain under API faults on the eviction subresource (429 from API Priority and Fairness,
5xx, slow answers), injected through the emulator's public fault API: every pod still leaves,
with the refusals recorded, within the budget."""

from __future__ import annotations

from typing import Any

from herd_agent.drain.engine import Drainer, DrainPolicy, KubeDrainApi
from herd_sandbox.kube.faults import KubeFault
from herd_sandbox.kube.sandbox import KubeSandbox
from tests.drain.test_engine import deployment, on_node


def test_drain_rides_out_eviction_faults(kube_sandbox: KubeSandbox, kube_client: Any) -> None:
    kube = kube_sandbox
    kube.add_node("n1")
    kube.seed(deployment("web", 3))
    kube.wait_for(lambda: len([p for p in on_node(kube, "n1") if p["status"].get("phase") == "Running"]) == 3)
    kube.modify("Node", "n1", lambda n: n["spec"].update(unschedulable=True))
    kube.add_node("n2")
    kube.faults.add(KubeFault("create", "pods", "eviction", status=429, count=3))
    kube.faults.add(KubeFault("create", "pods", "eviction", status=500, count=2))
    kube.faults.add(KubeFault("list", "pods", "", delay_s=0.3, count=2))
    report = Drainer(KubeDrainApi(kube_client), "n1", DrainPolicy(parallelism=3), 60).run()
    assert report.complete and not report.budget_spent
    assert report.count("evicted") == 3
    assert sum(o.attempts for o in report.outcomes.values()) == 3 + 5  # each refusal retried once due
    assert any("429" in o.detail or "500" in o.detail for o in report.outcomes.values())
    assert not any(o.pdb for o in report.outcomes.values())  # a throttling 429 is not blamed on a budget
    assert [h[3] for h in kube.faults.hits].count(429) == 3 and kube.faults.rules() == []
