"""The agent's default heartbeat cadence against real hook semantics, with no test override: a
region of its own at time factor 0.1 (one sandbox region per process, so not in
test_leave_sandbox.py, whose module shares one at 0.01)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from herd_sandbox.aws.region import Region
from herd_sandbox.kube.sandbox import KubeSandbox
from tests.clusters import SandboxCluster
from tests.leave.test_leave_sandbox import LEAVE_CONFIG, cordon, deployment, journal, live_pods, pdb

pytestmark = pytest.mark.allow_subprocess


@pytest.fixture(scope="module")
def region_x01() -> Iterator[Region]:
    with Region(time_factor=0.1) as r:
        yield r


def test_default_heartbeat_cadence_and_the_forced_drain_report(region_x01: Region, kube_sandbox: KubeSandbox,
                                                               tmp_path: Path, toolchain) -> None:
    """The agent's default cadence (max(30 s, timeout/3), at most timeout/2), no override, against
    a 120 s hook timeout in a region at time factor 0.1 (12 s; beats every 40 s, 4 s here, and
    room for the agent's unscaled start-up before its first beat on a loaded machine): every gap
    between beats stays well under the timeout and the action is completed, not timed out. The
    PDB that never allows is overridden when the budget runs out, and the reports say so: a
    Warning naming the pods and the PDB, herd_agent_leave_pods_blocked and _force_deleted, one
    start Event."""
    region = region_x01
    c = SandboxCluster(region, kube_sandbox, tmp_path, toolchain, LEAVE_CONFIG + "  deadline_s: 20\n")
    try:
        (cp,) = c.group("control-plane", 1)
        c.join(cp)
        cordon(c.kube, cp)
        w1, w2 = c.group("node", 2, terminate_hook=True, heartbeat_timeout=120)
        c.join(w1)
        c.kube.seed(deployment("db", 2), pdb("db-strict", "db", maxUnavailable=0))
        c.kube.wait_for(lambda: len(live_pods(c.kube, w1, "db")) == 2, timeout=30)
        c.join(w2)
        since = time.time()
        region.terminate_instance(w1, decrement=True)
        region.wait_for(lambda: region.lifecycle_state(w1) == "Terminating:Wait", timeout=30, what="wait")
        r = c.instances[w1].agent("leave", "--reason", "asg-terminate")
        assert r.returncode == 0, r.stderr
        (action,) = [a for a in region.finished_actions(w1) if a.hook == "terminate"]
        assert (action.result, action.how) == ("CONTINUE", "completed")
        (done,) = [x for x in region.calls(caller=w1, action="CompleteLifecycleAction", since=since)
                   if x.outcome == "ok"]
        beats = [b.time for b in region.calls(caller=w1, action="RecordLifecycleActionHeartbeat", since=since)]
        times = beats + [done.time]  # from the first beat: the agent's start-up is not scaled
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        timeout_s = region.scaled(120)
        assert len(beats) >= 3, gaps
        assert max(gaps) < 0.8 * timeout_s, gaps  # the default cadence is timeout/3 here (40 s of 120)
        j = journal(c, w1)
        db = {p: o for p, o in j["pods"].items() if p.startswith("default/db-")}
        assert len(db) == 2 and all(o["outcome"] == "deleted" and o["forced"] for o in db.values()), db
        assert all(o["pdb"] == "default/db-strict" for o in db.values()), db
        events = [e for e in c.kube.list("Event") if e.get("involvedObject", {}).get("name") == w1]
        (warning,) = [e for e in events if e["reason"] == "HerdDrainIncomplete"]
        assert warning["type"] == "Warning"
        assert all(p in warning["message"] for p in db) and "default/db-strict" in warning["message"]
        assert not [e for e in events if e["reason"] == "HerdDrained"]
        assert len([e for e in events if e["reason"] == "HerdLeaveStarted"]) == 1
        metrics = c.instances[w1].root.read_text("/var/lib/node_exporter/textfile_collector/herd_agent.prom")
        assert "herd_agent_leave_pods_blocked 2.0" in metrics
        assert "herd_agent_leave_pods_force_deleted 2.0" in metrics
    finally:
        c.close()
