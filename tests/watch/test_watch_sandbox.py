"""The real ``herd-agent watch`` process in the sandbox: detection is never blocked by the hosts
refresh, and garbage IMDS answers never crash it (each gets the rule in docs/leave.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from herd_agent.discovery import imds as paths
from herd_sandbox.aws.imds import Fault
from herd_sandbox.aws.region import Region
from herd_sandbox.kube.sandbox import KubeSandbox
from tests.clusters import SandboxCluster

pytestmark = pytest.mark.allow_subprocess


@pytest.fixture
def cluster(region: Region, kube_sandbox: KubeSandbox, tmp_path: Path, toolchain):
    c = SandboxCluster(region, kube_sandbox, tmp_path, toolchain,
                       "hosts:\n  refresh_interval_s: 5\nleave:\n  heartbeat_interval_s: 0.3\n  reserve_s: 5\n")
    yield c
    c.close()


def wait_log(c: SandboxCluster, iid: str, proc, text: str, timeout: float = 60) -> float:
    """Wait until the watcher's log holds ``text``; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while text not in c.log(iid):
        assert proc.poll() is None, f"the watcher exited {proc.returncode}:\n{c.log(iid)[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in:\n{c.log(iid)[-3000:]}"
        time.sleep(0.05)  # polling a log file another process writes
    return time.monotonic()


def test_spot_notice_is_noticed_while_the_hosts_refresh_is_stuck_in_discovery(cluster: SandboxCluster) -> None:
    """issue 12: the recorded control plane stops answering; the hosts refresh enters the
    discovery retry loop (40 rounds here, about a minute); a spot notice injected then is still
    noticed within a few polls, long before that loop ends."""
    c = cluster
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    (w,) = c.group("node", 1, terminate_hook=True)
    c.join(w)
    proc = c.watch(w)
    wait_log(c, w, proc, "watching for termination")
    c.instances[cp].systemctl("stop", "k3s.service")  # its /ping (and API port) stop answering
    wait_log(c, w, proc, "stopped answering; choosing another")
    c.region.inject_spot_interruption(w)
    wait_log(c, w, proc, "spot interruption notice: terminate")
    text = c.log(w)
    # Not timed (bench/watcher.py measures detect_latency_cp_down_ms): the notice is in the log
    # before the refresh's retry loop gave up, so that loop did not hold the poll.
    refresh_failed = "periodic operation hosts-refresh failed"
    assert refresh_failed not in text[:text.index("spot interruption notice")], text[-3000:]


def test_garbage_imds_answers_never_crash_the_watcher(cluster: SandboxCluster) -> None:
    """issue 13: oversized bodies, wrong JSON types, CR/LF in the token, non-JSON — each gets the
    documented handling and the watcher keeps watching; a malformed spot notice then counts as an
    interruption."""
    c = cluster
    (w,) = c.group("node", 1)
    c.instances[w].write_config("watch:\n  on_maintenance: leave\n  on_rebalance: ignore\n", name="watch.yaml")
    proc = c.watch(w)
    wait_log(c, w, proc, "watching for termination")
    imds = c.region.instance(w).imds
    imds.inject_fault(Fault(path=paths.TARGET_LIFECYCLE_STATE, body=b"Terminated\nInService"))
    imds.inject_fault(Fault(path=paths.SCHEDULED_EVENTS, body=b'{"EventId": "instance-event-1", "Code": "x"}'))
    imds.inject_fault(Fault(path=paths.REBALANCE, body=b"\x00" * (1 << 20)))
    wait_log(c, w, proc, f"{paths.TARGET_LIFECYCLE_STATE} is malformed: not a lifecycle state word; ignored")
    wait_log(c, w, proc, f"{paths.SCHEDULED_EVENTS} is malformed: a JSON dict, not a list; ignored")
    wait_log(c, w, proc, f"{paths.REBALANCE} is malformed: larger than 65536 bytes")
    # A token with CR/LF: polls fail (logged), the watcher stays; once IMDS heals it recovers.
    imds.revoke_tokens()
    imds.inject_fault(Fault(path=paths.TOKEN_PATH, body=b"abc\r\nX-Injected: 1", remaining=3))
    wait_log(c, w, proc, "IMDS poll failed: IMDS answer for /latest/api/token is malformed")
    imds.inject_fault(Fault(path=paths.SPOT_INSTANCE_ACTION, body=b'{"action": "terminate", "time": 1796191200}'))
    wait_log(c, w, proc, "time is a int, not an RFC 3339 time string; counted as a spot interruption")
    assert proc.poll() is None
    assert "Traceback" not in c.log(w)


def test_maintenance_event_with_cordon_reaction_cordons_only(cluster: SandboxCluster) -> None:
    """The ``cordon`` reaction cordons the Node (the leave's cordon) and nothing more: no leave,
    and the watcher keeps watching."""
    c = cluster
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    (w,) = c.group("node", 1)
    c.join(w)
    c.instances[w].write_config("watch:\n  on_maintenance: cordon\n", name="watch.yaml")
    proc = c.watch(w)
    wait_log(c, w, proc, "watching for termination")
    c.region.inject_maintenance_event(w, code="system-reboot")
    wait_log(c, w, proc, "cordon for maintenance: cordoned")
    node = c.kube.find("Node", w)
    assert node is not None and node["spec"].get("unschedulable") is True
    assert not c.instances[w].root.exists("/var/lib/herd-agent/leave.json")
    assert proc.poll() is None


def test_the_watcher_resumes_a_leave_killed_mid_way(cluster: SandboxCluster) -> None:
    """A leave killed after its drain is finished by the next watcher start, exactly once, and the
    watcher then only waits to be stopped (it does not poll a leaving instance)."""
    import signal

    import psutil

    c = cluster
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    (w,) = c.group("node", 1, terminate_hook=True)
    c.join(w)
    c.region.terminate_instance(w, decrement=True)
    c.region.wait_for(lambda: c.region.lifecycle_state(w) == "Terminating:Wait", timeout=30, what="wait state")
    inst = c.instances[w]
    proc = inst.spawn_agent("leave", "--reason", "asg-terminate", log_name="leave.log",
                            env={"HERD_AGENT_FAILPOINT": "drain:after"})
    p = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    while p.status() != psutil.STATUS_STOPPED:
        assert proc.poll() is None, (inst.workdir / "leave.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.02)  # waiting for another process to reach its failpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    watcher = c.watch(w)
    wait_log(c, w, watcher, "an unfinished asg-terminate leave is journaled: resuming it")
    journal = c.region.wait_for(lambda: (j := json.loads(inst.root.read_text("/var/lib/herd-agent/leave.json")))
                                .get("finished_at") and j, timeout=60, what="the journal finished")
    c.region.wait_for(lambda: c.region.lifecycle_state(w) == "Terminated", timeout=60, what="terminated")
    steps = journal["steps"]
    assert {n: (s["status"], s["starts"]) for n, s in steps.items() if s["status"] != "skipped"} == {
        "cordon": ("done", 1), "drain": ("done", 1), "delete-node": ("done", 1), "stop-k3s": ("done", 1),
        "complete-hook": ("done", 1)}
    assert c.kube.find("Node", w) is None
    assert "watching for termination" not in c.log(w) and watcher.poll() is None
