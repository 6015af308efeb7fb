"""The scenario framework's own parts, without a cluster: timeline, budget tracking, config, tables."""

from __future__ import annotations

import io
import itertools
import json

import pytest

from herd_agent.config.loader import load_config
from herd_agent.host.fsroot import HostRoot
from herd_sandbox.scenario import checks, scenarios
from herd_sandbox.scenario.cluster import WORKER_KUBECONFIG, PdbTracker, agent_config
from herd_sandbox.scenario.runner import checks_table
from herd_sandbox.scenario.timeline import Timeline


def test_timeline_prints_each_entry_once_and_keeps_it_for_json(tmp_path) -> None:
    ticks = itertools.count(start=100.0, step=1.5)
    out = io.StringIO()
    tl = Timeline(out=out, log_file=tmp_path / "timeline.log", clock=lambda: next(ticks))
    tl.step("found the cluster")
    tl.add("cp1", "joined (founder) in 5.0 s", instance_id="i-0123456789abcdef0")
    tl.error("join failed", "w2", "i-0fedcba9876543210")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("==") and "found the cluster" in lines[0]
    assert "cp1" in lines[1] and "i-0123456789abcdef0" in lines[1] and lines[1].strip().startswith("3.0s")
    assert lines[2].startswith("!!")
    assert (tmp_path / "timeline.log").read_text().splitlines() == lines
    doc = json.loads(json.dumps(tl.to_json()))
    assert [e["kind"] for e in doc] == ["step", "instance", "error"]
    assert doc[1] == {"t": 3.0, "who": "cp1", "instance_id": "i-0123456789abcdef0", "kind": "instance",
                      "text": "joined (founder) in 5.0 s"}


def _pod(name: str, ready: bool = True, deleting: bool = False, node: str = "n1") -> dict:
    meta = {"name": name, "namespace": "default", "labels": {"app": "web"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


PDB = {"metadata": {"name": "web", "namespace": "default"},
       "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}}


def test_pdb_tracker_ignores_start_up_and_records_a_dip_below_the_budget() -> None:
    tracker = PdbTracker(now=lambda: 7.0)
    tracker.on_event("PodDisruptionBudget", "ADDED", PDB)
    tracker.on_event("Pod", "ADDED", _pod("a", ready=False))  # starting up: 0 of 2, not a violation
    tracker.on_event("Pod", "MODIFIED", _pod("a"))
    tracker.on_event("Pod", "ADDED", _pod("b"))
    tracker.on_event("Pod", "ADDED", _pod("c"))
    assert tracker.violations == []
    tracker.on_event("Pod", "MODIFIED", _pod("a", deleting=True))  # an allowed eviction: 2 of 2 left
    tracker.on_event("Pod", "ADDED", _pod("d"))
    assert tracker.violations == [] and tracker.lowest == {"default/web": (2, 2)}
    tracker.on_event("Pod", "DELETED", _pod("b", node="w9"))  # 2 of 2 still
    tracker.on_event("Pod", "DELETED", _pod("c", node="w9"))  # c right after it: 1 of 2, a violation
    assert len(tracker.violations) == 1  # one dip, recorded once
    v = tracker.violations[0]
    assert (v.pdb, v.healthy, v.desired, v.t) == ("default/web", 1, 2, 7.0)
    assert v.cause == "DELETED pod default/c on w9"
    assert tracker.errors == []


def test_pdb_tracker_uses_the_budgets_computed_desired_healthy() -> None:
    tracker = PdbTracker(now=lambda: 0.0)
    pdb = {**PDB, "spec": {"maxUnavailable": "50%", "selector": {"matchLabels": {"app": "web"}}},
           "status": {"desiredHealthy": 3}}
    tracker.on_event("PodDisruptionBudget", "ADDED", pdb)
    for n in "abc":
        tracker.on_event("Pod", "ADDED", _pod(n))
    tracker.on_event("Pod", "MODIFIED", _pod("a", ready=False))
    assert [(v.healthy, v.desired) for v in tracker.violations] == [(2, 3)]


@pytest.mark.parametrize("mode", ["external", "embedded"])
@pytest.mark.parametrize("role", ["control-plane", "node"])
def test_instance_config_is_valid_for_the_agent(tmp_path, mode: str, role: str) -> None:
    root = HostRoot(tmp_path)
    root.write("/etc/herd-agent/config.yaml", agent_config(mode, worker=role == "node"), mode=0o644)
    cfg = load_config(root, role=role)
    assert cfg.get("etcd.mode") == mode
    assert cfg.get("kube.kubeconfig") == (WORKER_KUBECONFIG if role == "node" else None)


def test_member_names_map_back_to_nodes() -> None:
    assert checks.member_node("i-0abc-1f2e3d4c", embedded=True) == "i-0abc"
    assert checks.member_node("i-0abc-1f2e3d4c", embedded=False) == "i-0abc-1f2e3d4c"
    assert checks.member_node("i-0abc", embedded=True) == "i-0abc"


def test_checks_table_aligns_and_marks_failures() -> None:
    table = checks_table([checks.Check("short", True, "fine"), checks.Check("a longer name", False, "broken")])
    lines = table.splitlines()
    assert lines[0].startswith("check ")
    assert lines[2].split() == ["short", "PASS", "fine"]
    assert lines[3].startswith("a longer name  FAIL    broken")
    assert checks.processes([], []).ok and not checks.processes(["w1: k3s-agent.service not running"], []).ok


def test_scenarios_have_what_the_issue_asks() -> None:
    full = scenarios.get("lifecycle")
    titles = [s.title for s in full.steps]
    assert titles[0].startswith("found the cluster: 3 control planes and 3 workers")
    assert any("scale the workers in by 1" == t for t in titles)
    assert any("scale the workers out by 2" == t for t in titles)
    assert any(t.startswith("replace every control plane") for t in titles)
    assert any(t.startswith("spot-interrupt") for t in titles)
    assert scenarios.get("embedded").etcd_mode == "embedded" and full.etcd_mode == "external"
    race = scenarios.get("founding-race")
    assert race.steps[0].title.startswith("found the cluster: 5 control planes")
    assert checks.one_founder in race.extra_checks
    assert all(scenarios.get(n, short=True).short for n in scenarios.SCENARIOS)
