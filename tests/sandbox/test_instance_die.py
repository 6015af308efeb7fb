"""``herd-sandbox instance die`` (issue 12: "this instance dies now") as a real process against real
instance processes: every process the instance runs is SIGKILLed, nothing leaves (no cordon, no
heartbeat, no CompleteLifecycleAction), the region is told only when asked, and bad input changes
nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from herd_sandbox.aws.lifecycle import TERMINATING
from herd_sandbox.aws.region import Region
from herd_sandbox.instance import SandboxInstance
from herd_sandbox.kube.sandbox import KubeSandbox
from tests.clusters import SandboxCluster

pytestmark = pytest.mark.allow_subprocess

REPO = Path(__file__).resolve().parents[2]


def die(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``herd-sandbox instance die WORKDIR ARGS`` as its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTEST_", "HERD_"))}
    return subprocess.run([sys.executable, "-m", "herd_sandbox", "instance", "die", str(workdir), *args],  # noqa: S603
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")  # killed, not yet reaped by its parent


def sleeper(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "600"], env=env, start_new_session=True)  # noqa: S603, S607


@pytest.fixture
def cluster(region: Region, kube_sandbox: KubeSandbox, tmp_path: Path, toolchain: Any):
    c = SandboxCluster(region, kube_sandbox, tmp_path, toolchain)
    yield c
    c.close()


def test_die_kills_the_watcher_and_k3s_and_nothing_leaves(cluster: SandboxCluster) -> None:
    c = cluster
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    # 600 s is 6 s at the region's factor 0.01: a live watcher would cordon, heartbeat and complete.
    (w,) = c.group("node", 1, terminate_hook=True, heartbeat_timeout=600)
    c.join(w)
    inst = c.instances[w]
    watcher = c.watch(w)
    deadline = time.monotonic() + 60
    while "watching for termination" not in c.log(w):
        assert watcher.poll() is None and time.monotonic() < deadline, c.log(w)[-3000:]
        time.sleep(0.05)  # polling a log file another process writes
    k3s_pid = int(inst.root.read_text("/run/herd-sandbox/k3s-agent.service.pid"))
    assert not gone(k3s_pid)
    died_at = time.time()
    r = die(inst.workdir, "--unhealthy")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["instance_id"] == w and out["aws"] == "unhealthy"
    assert {watcher.pid, k3s_pid} <= set(out["killed"])
    assert watcher.wait(timeout=30) == -signal.SIGKILL
    assert gone(k3s_pid)
    # The group acts on the dead machine: Terminating:Wait, and nobody completes the hook.
    done = c.region.wait_for(
        lambda: [a for a in c.region.finished_actions(w) if a.transition == TERMINATING], timeout=120,
        what=f"the terminate hook of {w} ended")
    assert [(a.how, a.result) for a in done] == [("timeout", "CONTINUE")]
    hook_calls = {"CompleteLifecycleAction", "RecordLifecycleActionHeartbeat"}
    assert not [call for call in c.region.calls(caller=w, since=died_at) if call.action in hook_calls]
    node = c.kube.find("Node", w)
    assert node is not None and not node["spec"].get("unschedulable")  # never cordoned
    assert not inst.root.exists("/var/lib/herd-agent/leave.json")
    with pytest.raises(RuntimeError, match="is dead"):  # a new harness object for it refuses too
        SandboxInstance(w, inst.workdir, {}).spawn_agent("watch")


def test_die_terminate_kills_by_root_spares_reused_pids_and_marks_ec2(region: Region, tmp_path: Path) -> None:
    region.create_launch_template("die-lt")
    region.create_group("die", "die-lt", desired=1)
    (iid,) = region.group_instances("die")
    inst = SandboxInstance(iid, tmp_path / iid, region.env(iid)).prepare()
    mine = sleeper(inst.env())  # started by hand: no pid file, found by its HERD_AGENT_ROOT
    stranger = sleeper()  # its pid sits in a stale pid file (the pid was reused): not the instance's
    (inst.workdir / "run").mkdir(exist_ok=True)
    (inst.workdir / "run" / "agent-1.pid").write_text(f"{stranger.pid}\n")
    try:
        r = die(inst.workdir, "--terminate")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"instance_id": iid, "killed": [mine.pid], "aws": "terminated"}
        assert mine.wait(timeout=30) == -signal.SIGKILL
        assert stranger.poll() is None
        assert region.ec2_state(iid) == "terminated"
    finally:
        for proc in (mine, stranger):
            proc.kill()
            proc.wait()


def test_die_bad_input_changes_nothing(region: Region, tmp_path: Path) -> None:
    region.create_launch_template("die-bad-lt")
    region.create_group("die-bad", "die-bad-lt", desired=1)
    (iid,) = region.group_instances("die-bad")
    inst = SandboxInstance(iid, tmp_path / iid, region.env(iid)).prepare()
    mine = sleeper(inst.env())
    try:
        r = die(tmp_path / "nowhere")
        assert r.returncode == 66 and "is not a sandbox instance's directory" in r.stderr
        r = die(inst.workdir, "--terminate", "--endpoint", "http://127.0.0.1:9")
        assert r.returncode == 69 and "nothing killed yet" in r.stderr and "--endpoint" in r.stderr
        (inst.workdir / "instance.json").write_text(json.dumps({"instance_id": "i-0000000000000dead",
                                                                "aws_endpoint_url": region.endpoint_url}))
        r = die(inst.workdir, "--unhealthy")
        assert r.returncode == 66 and "i-0000000000000dead" in r.stderr, r.stderr
        assert mine.poll() is None and not (inst.workdir / "dead").exists()
        assert region.ec2_state(iid) == "running"
    finally:
        mine.kill()
        mine.wait()
