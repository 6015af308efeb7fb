"""Pure drain logic: pod dispositions (kubectl drain's rules) and the time budget."""

from __future__ import annotations

import pytest

from herd_agent.drain.budget import drain_budget, global_timeout_s, heartbeat_interval_s, leave_deadline
from herd_agent.drain.classify import Disposition, classify


def pod(**kw) -> dict:
    meta = {"name": "p", "namespace": "default", **kw.pop("meta", {})}
    return {"metadata": meta, "spec": kw.pop("spec", {}), "status": kw.pop("status", {"phase": "Running"})}


RS = {"ownerReferences": [{"kind": "ReplicaSet", "name": "web-1", "controller": True}]}
DS = {"ownerReferences": [{"kind": "DaemonSet", "name": "fluent", "controller": True}]}


@pytest.mark.parametrize(
    ("p", "emptydir", "unmanaged", "want"),
    [
        (pod(meta=RS), False, False, Disposition.EVICT),
        (pod(meta=DS), True, True, Disposition.SKIP_DAEMONSET),
        (pod(meta={"annotations": {"kubernetes.io/config.mirror": "abc"}}), True, True, Disposition.SKIP_MIRROR),
        (pod(meta={**RS, "deletionTimestamp": "2026-01-01T00:00:00Z"}), True, True, Disposition.WAIT),
        (pod(meta=RS, status={"phase": "Succeeded"}), False, False, Disposition.DELETE),
        (pod(), True, False, Disposition.BLOCK_UNMANAGED),
        (pod(), True, True, Disposition.EVICT),
        (pod(meta=RS, spec={"volumes": [{"name": "cache", "emptyDir": {}}]}), False, True, Disposition.BLOCK_EMPTYDIR),
        (pod(meta=RS, spec={"volumes": [{"name": "cache", "emptyDir": {}}]}), True, True, Disposition.EVICT),
        (pod(meta=RS, spec={"volumes": [{"name": "cfg", "configMap": {"name": "x"}}]}), False, False,
         Disposition.EVICT),
    ],
)
def test_classify(p: dict, emptydir: bool, unmanaged: bool, want: Disposition) -> None:
    assert classify(p, delete_emptydir_data=emptydir, evict_unmanaged=unmanaged).disposition == want


def test_block_reasons_name_the_setting() -> None:
    v = classify(pod(meta=RS, spec={"volumes": [{"name": "cache", "emptyDir": {}}]}),
                 delete_emptydir_data=False, evict_unmanaged=True)
    assert "cache" in v.reason and "leave.delete_emptydir_data" in v.reason


def test_budget_math() -> None:
    assert global_timeout_s(3600) == 172800
    assert global_timeout_s(30) == 3000
    assert heartbeat_interval_s(3600) == 1200
    assert heartbeat_interval_s(90) == 30
    assert heartbeat_interval_s(30) == 15
    assert leave_deadline([None, 500.0, 120.0]) == 120.0
    assert leave_deadline([None]) is None
    assert drain_budget(100.0, 220.0, 30.0) == 90.0
    assert drain_budget(100.0, 110.0, 30.0) == 0.0
    assert drain_budget(0.0, None, 30.0, cap_s=600) == 600
