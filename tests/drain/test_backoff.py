"""The drain's per-pod backoff after a PodDisruptionBudget refusal (429) or a server error (5xx):
1 s doubling to 10 s (docs/leave.md), on a fake clock, so a drain never hammers the API server
while a budget holds. Pure: a scripted API, no sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from herd_agent.drain.engine import Drainer, DrainPolicy


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default",
                         "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "controller": True}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "c"}]},
            "status": {"phase": "Running"}}


class RefusingApi:
    """Refuses every eviction with ``code``; records the fake time of each attempt."""

    def __init__(self, clock: list[float], code: int) -> None:
        self.clock, self.code = clock, code
        self.attempts: list[float] = []

    def list_pods(self, node: str) -> list[dict[str, Any]]:
        return [pod("web-1")]

    def evict(self, namespace: str, name: str) -> tuple[int, str]:
        self.attempts.append(self.clock[0])
        if self.code == 429:
            return 429, ("Cannot evict pod as it would violate the pod's disruption budget. "
                         "The disruption budget web needs 3 healthy pods and has 3 currently")
        return self.code, "etcdserver: request timed out"

    def delete(self, namespace: str, name: str, grace_s: int | None) -> int:
        return 200


@pytest.mark.parametrize("code", [429, 500, 503])
def test_refused_evictions_back_off_exponentially_to_ten_seconds(code: int) -> None:
    now = [0.0]

    def wait(seconds: float) -> bool:
        now[0] += seconds
        return False

    api = RefusingApi(now, code)
    drainer = Drainer(api, "n1", DrainPolicy(delete_after_budget=False), 60.0, clock=lambda: now[0], wait=wait)
    report = drainer.run()
    gaps = [round(b - a, 2) for a, b in zip(api.attempts, api.attempts[1:], strict=False)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 10.0], gaps
    assert all(g == 10.0 for g in gaps[4:]), gaps
    assert len(api.attempts) <= 10  # 60 s of budget: 1+2+4+8+10+10+10+10 — never once a second
    (o,) = report.outcomes.values()
    assert o.outcome == "timed-out" and report.budget_spent
    if code == 429:
        assert o.pdb == "default/web" and "PodDisruptionBudget web" in o.detail
