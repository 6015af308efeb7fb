"""The watcher and the leave sequence end to end in the sandbox: real agent processes, the
emulated Kubernetes API with PDBs, moto-backed lifecycle hooks, IMDS, real etcd."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from herd_sandbox.aws.region import Region
from herd_sandbox.kube.sandbox import KubeSandbox
from tests.clusters import SandboxCluster

pytestmark = pytest.mark.allow_subprocess

# No heartbeat override: the agent runs its default cadence, scaled by the region's time factor
# (HERD_AGENT_TIME_FACTOR, set by tests/clusters.py), against the region's scaled hook timeouts.
LEAVE_CONFIG = "leave:\n  reserve_s: 5\n"




@pytest.fixture
def make_cluster(region: Region, kube_sandbox: KubeSandbox, tmp_path: Path, toolchain):
    made: list[SandboxCluster] = []

    def make(config: str = "", reserve_s: int = 5) -> SandboxCluster:
        leave = LEAVE_CONFIG.replace("reserve_s: 5", f"reserve_s: {reserve_s}")
        c = SandboxCluster(region, kube_sandbox, tmp_path, toolchain, leave + config)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def deployment(name: str, replicas: int, empty_dir: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": f"example/{name}:1"}],
                            "terminationGracePeriodSeconds": 30}
    if empty_dir:
        spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}


def pdb(name: str, app: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": app}}, **spec}}


def live_pods(kube: KubeSandbox, node: str | None = None, app: str | None = None) -> list[dict[str, Any]]:
    return [p for p in kube.list("Pod")
            if (node is None or p["spec"].get("nodeName") == node)
            and (app is None or p["metadata"].get("labels", {}).get("app") == app)
            and not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"]


def cordon(kube: KubeSandbox, node: str) -> None:
    kube.modify("Node", node, lambda n: n["spec"].update(unschedulable=True))


def wait_ready_line(c: SandboxCluster, iid: str, proc, log_name: str = "watch.log") -> None:
    deadline = time.monotonic() + 30
    while "watching for termination" not in c.log(iid, log_name):
        assert proc.poll() is None, c.log(iid, log_name)
        assert time.monotonic() < deadline, c.log(iid)
        time.sleep(0.05)  # polling a log file another process writes


def journal(c: SandboxCluster, iid: str) -> dict[str, Any]:
    return json.loads(c.instances[iid].root.read_text("/var/lib/herd-agent/leave.json"))


def finished_journal(c: SandboxCluster, iid: str, timeout: float = 60) -> dict[str, Any]:
    """The leave journal once the agent recorded the end of the sequence."""
    def done() -> dict[str, Any] | None:
        if not c.instances[iid].root.exists("/var/lib/herd-agent/leave.json"):
            return None
        j = journal(c, iid)
        return j if j.get("finished_at") else None

    return c.region.wait_for(done, timeout=timeout, what=f"{iid} leave journal finished")


def watched_worker(c: SandboxCluster, seed: Sequence[dict[str, Any]] = ()) -> tuple[str, Any]:
    """One joined control plane and one joined worker whose watcher is up (READY line seen);
    ``seed`` objects go into the API first. Returns the worker's instance id and its watcher."""
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    (w1,) = c.group("node", 1)
    c.join(w1)
    for obj in seed:
        c.kube.seed(obj)
    proc = c.watch(w1)
    wait_ready_line(c, w1, proc)
    return w1, proc


def test_worker_with_20_pods_is_scaled_in(make_cluster) -> None:
    c = make_cluster()
    kube = c.kube
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    cordon(kube, cp)
    w1, w2 = c.group("node", 2, terminate_hook=True, heartbeat_timeout=3600)  # 36 s here, beats every 12 s
    c.join(w1)
    kube.seed(
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "logs", "namespace": "kube-system"},
         "spec": {"selector": {"matchLabels": {"app": "logs"}},
                  "template": {"metadata": {"labels": {"app": "logs"}},
                               "spec": {"containers": [{"name": "l", "image": "logs:1"}]}}}},
        deployment("web", 10), pdb("web", "web", minAvailable=8),
        deployment("cache", 4, empty_dir=True), deployment("batch", 4),
    )
    kube.add_static_pod(w1, "node-exporter")
    kube.wait_for(lambda: len([p for p in kube.list("Pod") if p["spec"].get("nodeName") == w1
                               and p["status"].get("phase") == "Running"]) == 20, timeout=30)
    c.join(w2)
    proc = c.watch(w1)
    wait_ready_line(c, w1, proc)
    # Replacements cannot turn Ready while w2 is NotReady, so the PDB (8 of 10) must refuse
    # evictions; once the agent logged a refusal, w2 comes back and the drain completes.
    kube.set_node_ready(w2, False)
    c.region.terminate_instance(w1, decrement=True)
    c.region.wait_for(lambda: "refused by PodDisruptionBudget web" in c.log(w1), timeout=60, what="a PDB refusal")
    kube.set_node_ready(w2, True)
    c.region.wait_for(lambda: c.region.lifecycle_state(w1) == "Terminated", timeout=90, what="w1 terminated")

    assert kube.find("Node", w1) is None
    assert len(live_pods(kube, w2, "web")) == 10 and len(live_pods(kube, w2, "cache")) == 4
    (action,) = [a for a in c.region.finished_actions(w1) if a.hook == "terminate"]
    assert (action.result, action.how) == ("CONTINUE", "completed")
    beats = c.region.calls(caller=w1, action="RecordLifecycleActionHeartbeat")
    assert beats and all(b.outcome == "ok" for b in beats)
    j = finished_journal(c, w1)
    assert {n: s["status"] for n, s in j["steps"].items()} == {
        "cordon": "done", "drain": "done", "etcd": "skipped", "delete-node": "done", "stop-k3s": "done",
        "complete-hook": "done"}
    outcomes = {p: o["outcome"] for p, o in j["pods"].items()}
    assert outcomes[f"kube-system/node-exporter-{w1}"] == "skipped"
    assert [o for p, o in outcomes.items() if p.startswith("kube-system/logs-")] == ["skipped"]
    assert sum(o == "evicted" for o in outcomes.values()) == 18
    assert any("PodDisruptionBudget web" in o["detail"] for o in j["pods"].values())
    assert j["result"] == "CONTINUE"
    metrics = c.instances[w1].root.read_text("/var/lib/node_exporter/textfile_collector/herd_agent.prom")
    assert "herd_agent_leave_pods_evicted 18.0" in metrics
    assert 'herd_agent_last_termination_reason{reason="asg-terminate"} 1.0' in metrics
    events = [e for e in kube.list("Event") if e.get("involvedObject", {}).get("name") == w1]
    assert {"HerdLeaveStarted", "HerdDrained"} <= {e["reason"] for e in events}


def test_pdb_that_never_allows_is_driven_by_the_deadline(make_cluster) -> None:
    # 10 s kept back for the steps after the drain: room on a loaded machine to finish inside the deadline.
    c = make_cluster("  deadline_s: 20\n", reserve_s=10)
    kube = c.kube
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    cordon(kube, cp)
    w1, w2 = c.group("node", 2, terminate_hook=True)
    c.join(w1)
    kube.seed(deployment("db", 2), pdb("db-strict", "db", maxUnavailable=0))
    kube.wait_for(lambda: len(live_pods(kube, w1, "db")) == 2, timeout=30)
    c.join(w2)
    proc = c.watch(w1)
    wait_ready_line(c, w1, proc)
    started = time.monotonic()
    c.region.terminate_instance(w1, decrement=True)
    c.region.wait_for(lambda: c.region.lifecycle_state(w1) == "Terminated", timeout=90, what="w1 terminated")
    took = time.monotonic() - started
    (action,) = [a for a in c.region.finished_actions(w1) if a.hook == "terminate"]
    assert action.how == "completed"  # before the hook's timeout, not by it
    j = finished_journal(c, w1)
    assert took < 40
    assert j["finished_at"] <= j["deadline"]
    db = {p: o for p, o in j["pods"].items() if p.startswith("default/db-")}
    assert len(db) == 2
    for o in db.values():
        assert o["outcome"] == "deleted" and "PodDisruptionBudget db-strict" in o["detail"]


def test_spot_interruption_leaves_inside_the_notice(make_cluster) -> None:
    c = make_cluster()
    w1, _proc = watched_worker(c, [deployment("web", 3)])
    notice = c.region.inject_spot_interruption(w1)
    c.kube.wait_for(lambda: c.kube.find("Node", w1) is None, timeout=60)
    j = finished_journal(c, w1)
    assert j["reason"] == "spot-terminate"
    deadline = time.mktime(time.strptime(notice["time"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert j["deadline"] == pytest.approx(deadline, abs=1)
    assert j["finished_at"] < deadline


def test_restart_outside_shutdown_drains_nothing_shutdown_leaves(make_cluster) -> None:
    c = make_cluster()
    w1, proc = watched_worker(c)
    inst = c.instances[w1]
    proc.send_signal(signal.SIGTERM)  # `systemctl restart herd-agent`: the system is running
    assert proc.wait(timeout=30) == 0
    assert not c.kube.get("Node", w1)["spec"].get("unschedulable")
    assert not inst.root.exists("/var/lib/herd-agent/leave.json")
    assert "not draining" in c.log(w1)
    inst.root.write("/run/herd-sandbox/system-state", "stopping\n", mode=0o644)  # now the machine shuts down
    proc = c.watch(w1, log_name="watch2.log")
    wait_ready_line(c, w1, proc, "watch2.log")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert c.kube.find("Node", w1) is None
    assert journal(c, w1)["reason"] == "shutdown"


def kill_at(inst: Any, point: str) -> None:
    """Run ``herd-agent leave`` until it stops itself at failpoint ``point``, then kill -9 it."""
    proc = inst.spawn_agent("leave", "--reason", "asg-terminate", log_name="leave.log",
                            env={"HERD_AGENT_FAILPOINT": point})
    p = psutil.Process(proc.pid)
    deadline = time.monotonic() + 90
    while p.status() != psutil.STATUS_STOPPED:
        assert proc.poll() is None, (point, (inst.workdir / "leave.log").read_text())
        assert time.monotonic() < deadline, point
        time.sleep(0.02)  # waiting for another process to reach its failpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def mid_step_points(steps: list[str]) -> list[str]:
    """For each step: killed after ``started`` was journaled, and after it acted but before ``done``."""
    return [f"{s}:{where}" for s in steps for where in ("started", "acted")]


def assert_resumed_once(c: SandboxCluster, iid: str, since: float, points: list[str]) -> dict[str, Any]:
    """After the kills at ``points`` and a final run: every step done or skipped, each started once
    more than it was killed mid-step, the action completed exactly once, one start Event."""
    r = c.instances[iid].agent("leave", "--reason", "asg-terminate")
    assert r.returncode == 0, r.stderr
    j = journal(c, iid)
    assert j["finished_at"]
    for name, state in j["steps"].items():
        assert state["status"] in ("done", "skipped"), (name, state)
        kills = sum(1 for p in points if p.split(":")[0] == name and p.split(":")[1] in ("started", "acted"))
        assert state["starts"] == (0 if state["status"] == "skipped" else kills + 1), (name, state)
    completes = [x for x in c.region.calls(caller=iid, action="CompleteLifecycleAction", since=since)
                 if x.outcome == "ok"]
    assert len(completes) == 1
    assert [(a.result, a.how) for a in c.region.finished_actions(iid) if a.hook == "terminate"] == [
        ("CONTINUE", "completed")]
    assert c.kube.find("Node", iid) is None
    started = [e for e in c.kube.list("Event")
               if e.get("involvedObject", {}).get("name") == iid and e["reason"] == "HerdLeaveStarted"]
    assert len(started) == 1, started
    assert c.instances[iid].root.path("/var/lib/herd-agent/leave.json").stat().st_mode & 0o777 == 0o600
    return j


def test_worker_killed_mid_step_at_every_step_resumes_and_finishes_once(make_cluster) -> None:
    """kill -9 between ``started`` and ``done`` of every step (before it acted, and after it acted),
    plus after the last step: every step is idempotent on replay (the Node already deleted, the
    action already completed), the journal keeps the pods evicted before the crash."""
    c = make_cluster()
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    cordon(c.kube, cp)
    w1, w2 = c.group("node", 2, terminate_hook=True)
    c.join(w1)
    c.kube.seed(deployment("web", 3))
    c.kube.wait_for(lambda: len(live_pods(c.kube, w1, "web")) == 3, timeout=30)
    c.join(w2)
    since = time.time()
    c.region.terminate_instance(w1, decrement=True)
    c.region.wait_for(lambda: c.region.lifecycle_state(w1) == "Terminating:Wait", timeout=30, what="wait state")
    points = mid_step_points(["cordon", "drain", "delete-node", "stop-k3s", "complete-hook"]) + ["complete-hook:after"]
    for point in points:
        kill_at(c.instances[w1], point)
    j = assert_resumed_once(c, w1, since, points)
    web = {p: o for p, o in j["pods"].items() if p.startswith("default/web-")}
    assert len(web) == 3 and all(o["outcome"] == "evicted" for o in web.values()), web
    c.region.wait_for(lambda: c.region.lifecycle_state(w1) == "Terminated", timeout=30, what="terminated")
    assert len(live_pods(c.kube, w2, "web")) == 3


def test_external_etcd_control_plane_killed_mid_step_keeps_quorum(make_cluster) -> None:
    c = make_cluster()
    cps = c.group("control-plane", 3, terminate_hook=True)
    for iid in cps:
        c.join(iid)
    leaving = cps[1]
    since = time.time()
    c.region.terminate_instance(leaving, decrement=True)
    c.region.wait_for(lambda: c.region.lifecycle_state(leaving) == "Terminating:Wait", timeout=30, what="wait")
    points = mid_step_points(["delete-node", "stop-k3s", "etcd", "complete-hook"]) + ["complete-hook:after"]
    for point in points:
        kill_at(c.instances[leaving], point)
    j = assert_resumed_once(c, leaving, since, points)
    assert j["steps"]["etcd"]["status"] == "done"
    ip = c.region.instance(cps[0]).private_ip
    members = requests.post(f"http://{ip}:2379/v3/cluster/member/list", json={}, timeout=5).json()["members"]
    assert sorted(m["name"] for m in members) == sorted([cps[0], cps[2]])
    assert requests.get(f"http://{ip}:2379/health", timeout=5).json()["health"] == "true"


def test_complete_lifecycle_action_is_retried_through_throttling_5xx_and_access_denied(make_cluster) -> None:
    """CompleteLifecycleAction failing past botocore's own attempts (a throttling burst, a run of
    5xx, a transient AccessDenied) is retried with backoff, heartbeats going on, until it succeeds."""
    from herd_sandbox.aws.faults import AwsFault

    c = make_cluster()
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    (w1,) = c.group("node", 1, terminate_hook=True, heartbeat_timeout=1200)  # 12 s here: beats must go on
    c.join(w1)
    c.region.throttle("autoscaling", "CompleteLifecycleAction", burst=6)
    c.region.faults.add(AwsFault("autoscaling", "CompleteLifecycleAction", "5xx", count=6, caller=w1))
    c.region.faults.add(AwsFault("autoscaling", "CompleteLifecycleAction", "access-denied", count=2, caller=w1))
    try:
        since = time.time()
        c.region.terminate_instance(w1, decrement=True)
        c.region.wait_for(lambda: c.region.lifecycle_state(w1) == "Terminating:Wait", timeout=30, what="wait")
        r = c.instances[w1].agent("leave", "--reason", "asg-terminate")
        assert r.returncode == 0, r.stderr
    finally:
        c.region.clear_throttles()
        c.region.faults.clear()
    assert [(a.result, a.how) for a in c.region.finished_actions(w1) if a.hook == "terminate"] == [
        ("CONTINUE", "completed")]
    calls = c.region.calls(caller=w1, action="CompleteLifecycleAction", since=since)
    outcomes = [x.outcome for x in calls]
    assert {"throttled", "fault-5xx", "fault-access-denied"} <= set(outcomes) and outcomes[-1] == "ok"
    assert outcomes.count("ok") == 1
    beats = c.region.calls(caller=w1, action="RecordLifecycleActionHeartbeat", since=calls[0].time)
    assert [b for b in beats if b.time < calls[-1].time], "no heartbeat while the completion was retried"
    assert journal(c, w1)["steps"]["complete-hook"]["status"] == "done"


def test_an_instance_that_dies_runs_no_leave(make_cluster) -> None:
    """``SandboxInstance.die()``: every process of the instance is killed at once (the watcher, the
    k3s stand-in); nothing leaves: no journal, the Node stays (a dead node's pods are not reaped)."""
    c = make_cluster()
    w1, proc = watched_worker(c)
    inst = c.instances[w1]
    units = [p.name[:-4] for p in inst.root.path("/run/herd-sandbox").glob("*.pid")]
    assert "k3s-agent.service" in units
    killed = inst.die()
    assert proc.pid in killed and proc.wait(timeout=10) == -signal.SIGKILL
    for unit in units:
        assert inst.systemctl("is-active", unit).stdout.strip() == "inactive"
    assert not inst.root.exists("/var/lib/herd-agent/leave.json")
    assert c.kube.find("Node", w1) is not None
    with pytest.raises(RuntimeError, match="dead"):
        inst.spawn_agent("watch")


def test_systemctl_list_jobs_shows_the_shutdown_job(make_cluster) -> None:
    c = make_cluster()
    (w1,) = c.group("node", 1)
    inst = c.instances[w1]
    assert inst.systemctl("list-jobs").stdout.strip() == "No jobs running."
    assert inst.systemctl("list-jobs", "--no-legend").stdout == ""
    inst.begin_shutdown("reboot.target")
    listed = inst.systemctl("list-jobs").stdout.splitlines()
    assert listed[0].split() == ["JOB", "UNIT", "TYPE", "STATE"] and listed[-1] == "1 jobs listed."
    assert inst.systemctl("list-jobs", "--no-legend").stdout.split() == ["1", "reboot.target", "start", "waiting"]
    r = inst.systemctl("is-system-running")
    assert (r.stdout.strip(), r.returncode) == ("stopping", 1)


def test_control_plane_scale_in_keeps_quorum(make_cluster) -> None:
    c = make_cluster()
    cps = c.group("control-plane", 3, terminate_hook=True)
    for iid in cps:
        c.join(iid)
    procs = {iid: c.watch(iid) for iid in cps}
    for iid, proc in procs.items():
        wait_ready_line(c, iid, proc)
    leaving = cps[1]
    c.region.terminate_instance(leaving, decrement=True)
    c.region.wait_for(lambda: c.region.lifecycle_state(leaving) == "Terminated", timeout=120, what="terminated")
    ip = c.region.instance(cps[0]).private_ip
    members = requests.post(f"http://{ip}:2379/v3/cluster/member/list", json={}, timeout=5).json()["members"]
    assert sorted(m["name"] for m in members) == sorted([cps[0], cps[2]])
    assert not any(m.get("isLearner") for m in members)
    health = requests.get(f"http://{ip}:2379/health", timeout=5).json()
    assert health["health"] == "true"
    assert finished_journal(c, leaving)["steps"]["etcd"]["status"] == "done"
    assert c.kube.find("Node", leaving) is None


def test_plan_leave_shows_pods_budgets_and_blockers_and_changes_nothing(make_cluster) -> None:
    c = make_cluster()
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    cordon(c.kube, cp)
    (w1,) = c.group("node", 1)
    c.join(w1)
    c.kube.seed(deployment("web", 3), pdb("web", "web", minAvailable=3), deployment("cache", 1, empty_dir=True))
    c.kube.wait_for(lambda: len(live_pods(c.kube, w1)) == 4, timeout=30)
    r = c.instances[w1].agent("plan", "leave")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"leave plan for Node {w1} (worker)" in out
    assert out.count("evict ") >= 4 and "[default/web]" in out
    assert "default/web: 0 disruption(s) allowed now (3 healthy, 3 needed)" in out
    assert "PodDisruptionBudget default/web allows no disruption now" in out
    assert "expected duration: about" in out
    assert not c.kube.get("Node", w1)["spec"].get("unschedulable")
    assert len(live_pods(c.kube, w1)) == 4
    assert not c.instances[w1].root.exists("/var/lib/herd-agent/leave.json")


def test_plan_leave_looks_at_the_node_named_by_hostname(make_cluster) -> None:
    """``k3s.node_name: hostname``: the Node is named after IMDS local-hostname's first label, and
    ``plan leave`` plans for that Node (it once looked for the instance id instead)."""
    c = make_cluster("k3s:\n  node_name: hostname\n")
    (cp,) = c.group("control-plane", 1)
    (w1,) = c.group("node", 1)
    for iid in (cp, w1):
        c.join(iid)
    # Independently of the agent: EC2's private DNS name of the worker, first label (k3s' hostname).
    dns = c.region.client("ec2").describe_instances(InstanceIds=[w1])["Reservations"][0]["Instances"][0]
    hostname = dns["PrivateDnsName"].split(".")[0]
    assert hostname and hostname != w1
    node_names = {n["metadata"]["name"] for n in c.kube.list("Node")}
    assert hostname in node_names and w1 not in node_names
    cordon(c.kube, next(iter(node_names - {hostname})))  # the control plane: pods go to the worker
    c.kube.seed(deployment("web", 2))
    c.kube.wait_for(lambda: len(live_pods(c.kube, hostname)) == 2, timeout=30)
    r = c.instances[w1].agent("plan", "leave")
    assert r.returncode == 0, r.stderr
    assert f"leave plan for Node {hostname} (worker)" in r.stdout
    assert r.stdout.count("evict ") == 2
