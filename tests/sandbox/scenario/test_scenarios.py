"""``herd-sandbox run``: the shortened variant of each scenario, end to end on real parts
(agent processes, etcd, kubectl, moto-backed AWS, emulated IMDS and Kubernetes API), plus the
run's own guarantees: --json, exit codes, and no process left behind after a failure or Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from herd_sandbox.scenario import scenarios
from herd_sandbox.scenario.runner import run_scenario
from herd_sandbox.scenario.tools import Tools

pytestmark = pytest.mark.allow_subprocess

COMMON_CHECKS = {
    "etcd members = running control planes, all voters", "Nodes = running instances, all Ready",
    "every lifecycle action completed, none timed out", "no PodDisruptionBudget violated",
    "/etc/hosts valid on every instance", "every join succeeded", "every leave finished every step",
    "no process left behind",
}


def leftovers(state_dir: Path) -> list[str]:
    """Processes whose environment points into ``state_dir`` (an instance root of that run)."""
    marker = f"HERD_AGENT_ROOT={state_dir.resolve()}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(item.startswith(marker) for item in (entry / "environ").read_bytes().split(b"\0")):
                if (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def sandbox_run(*args: str, toolchain) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "herd_sandbox", "run", *args, "--kubectl", str(toolchain.kubectl)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HERD_"))},
    )


def test_founding_race_from_the_command_line_with_json(tmp_path: Path, toolchain) -> None:
    proc = sandbox_run("founding-race", "--short", "--json", "--state-dir", str(tmp_path / "run"),
                       "--etcd", str(toolchain.etcd), toolchain=toolchain)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-4000:]
    doc = json.loads(out)
    assert doc["ok"] and doc["scenario"] == "founding-race" and doc["short"] and doc["exit_code"] == 0
    verdicts = {c["name"]: c["ok"] for c in doc["checks"]}
    assert set(verdicts) == COMMON_CHECKS | {"exactly one founder"} and all(verdicts.values()), verdicts
    assert sum(1 for m in doc["machines"].values() if m["founder"]) == 1 and len(doc["machines"]) == 3
    etcd = next(c for c in doc["checks"] if c["name"].startswith("etcd members"))["data"]
    assert len(set(etcd["cluster_ids"].values())) == 1 and len(etcd["members"]) == 3
    # The state directory keeps every instance's logs; the timeline is in the document too.
    state = Path(doc["state_dir"])
    for m in doc["machines"].values():
        assert (Path(m["dir"]) / "join.log").stat().st_size > 0
        assert (Path(m["dir"]) / "root/var/log/herd-sandbox/herd-etcd.service.log").exists()
    assert (state / "timeline.log").read_text().count("joined") == 3
    assert any("kubectl get nodes" in e["text"] for e in doc["timeline"] if e["kind"] == "step")
    assert leftovers(state) == []


def test_lifecycle_short(tmp_path: Path, toolchain) -> None:
    result = run_scenario(scenarios.get("lifecycle", short=True), state_dir=tmp_path / "run", out=None,
                          tools=Tools(toolchain.etcd, toolchain.kubectl))
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert result.ok, f"{result.failed_step}; {failed}; logs in {result.state_dir}"
    assert {c.name for c in result.checks} == COMMON_CHECKS
    leaves = next(c for c in result.checks if c.name == "every leave finished every step").data
    assert sorted(v["reason"] for v in leaves.values()) == ["asg-terminate", "asg-terminate", "spot-terminate"]
    texts = [e["text"] for e in result.timeline]
    assert any(t.startswith("poddisruptionbudget.policy/web created") for t in texts)  # real kubectl apply
    assert any(t.startswith("NAME ") and "STATUS" in t for t in texts)  # real kubectl get nodes
    assert leftovers(result.state_dir) == []


STACK = Path(__file__).resolve().parents[3] / "ami" / "cloudformation" / "cluster.yaml"


def test_lifecycle_short_on_the_stack(tmp_path: Path, toolchain) -> None:
    """The example stack deployed into the region; the lifecycle on the groups, launch templates,
    hooks, KMS key and instance roles it made, every instance call decided by its role's policy."""
    result = run_scenario(scenarios.get("lifecycle", short=True, stack=STACK), state_dir=tmp_path / "run", out=None,
                          tools=Tools(toolchain.etcd, toolchain.kubectl))
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert result.ok, f"{result.failed_step}; {failed}; logs in {result.state_dir}"
    assert {c.name for c in result.checks} == COMMON_CHECKS | {"every instance call checked by IAM, none refused"}
    texts = [e["text"] for e in result.timeline]
    assert any(t.startswith("stack ") and " created: groups " in t for t in texts)
    iam_check = next(c for c in result.checks if c.name.startswith("every instance call checked")).data
    # the tokens were written and read under the stack's customer-managed key, through the services
    assert {"kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"} <= set(iam_check["kms_actions"])
    leaves = next(c for c in result.checks if c.name == "every leave finished every step").data
    assert sorted(v["reason"] for v in leaves.values()) == ["asg-terminate", "asg-terminate", "spot-terminate"]
    for m in result.machines.values():  # cloud-init's write_files put the stack's settings in place
        assert (Path(m["dir"]) / "root/etc/herd-agent/config.d/10-stack.yaml").exists()
    assert leftovers(result.state_dir) == []


def test_stack_only_with_the_lifecycle_scenarios(tmp_path: Path, toolchain) -> None:
    proc = sandbox_run("founding-race", "--stack", str(STACK), toolchain=toolchain)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "does not run on a stack" in out, out


def test_embedded_short(tmp_path: Path, toolchain) -> None:
    result = run_scenario(scenarios.get("embedded", short=True), state_dir=tmp_path / "run", out=None,
                          tools=Tools(toolchain.etcd, toolchain.kubectl))
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert result.ok, f"{result.failed_step}; {failed}; logs in {result.state_dir}"
    members = next(c for c in result.checks if c.name.startswith("etcd members")).data["members"]
    assert all(m["client_urls"][0].startswith("https://") for m in members)
    assert leftovers(result.state_dir) == []


def test_a_failing_run_exits_1_names_the_step_and_leaves_no_process(tmp_path: Path, toolchain) -> None:
    broken = tmp_path / "etcd"
    broken.write_text("#!/bin/sh\necho 'etcd: cannot start (test)' >&2\nexit 1\n")
    broken.chmod(0o755)
    proc = sandbox_run("founding-race", "--short", "--state-dir", str(tmp_path / "run"), "--etcd", str(broken),
                       toolchain=toolchain)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, out[-3000:]
    assert "step failed: found the cluster" in out and "join failed on cp" in out
    assert "FAILED" in out and str(tmp_path / "run") in out
    assert leftovers(tmp_path / "run") == []


def test_ctrl_c_stops_every_process_and_exits_130(tmp_path: Path, toolchain) -> None:
    proc = sandbox_run("lifecycle", "--short", "--state-dir", str(tmp_path / "run"), "--etcd", str(toolchain.etcd),
                       toolchain=toolchain)
    seen: list[str] = []
    joined = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "herd-agent watch running" in line:
                joined.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert joined.wait(120), "".join(seen)[-3000:]
    assert leftovers(tmp_path / "run"), "instances should be running before the interrupt"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130, "".join(seen)[-3000:]
    reader.join(10)
    text = "".join(seen)
    assert "interrupted: stopping every process of the run" in text and "INTERRUPTED" in text
    assert leftovers(tmp_path / "run") == []
