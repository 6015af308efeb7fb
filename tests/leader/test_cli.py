"""The real ``herd-agent leader --once``, ``releases status`` and ``plan releases`` processes
against the emulated API server with the real helm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import agent_env, spec

pytestmark = pytest.mark.allow_subprocess


def agent(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "herd_agent", "--root", str(root), *args],  # noqa: S603
                          capture_output=True, text=True, timeout=300, env=agent_env())


def setup_root(root: Path, kubeconfig: Path, helm: Path, leader_spec: dict[str, Any]) -> None:
    etc = root / "etc" / "herd-agent"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "kubeconfig").write_text(kubeconfig.read_text())
    (etc / "config.yaml").write_text(yaml.safe_dump({"kube": {"kubeconfig": "/etc/herd-agent/kubeconfig"},
                                                     "leader": {"helm": str(helm), "spec": leader_spec}}))


def test_leader_once_then_status_then_plan(kube_sandbox: Any, toolchain: Any, tmp_path: Path) -> None:
    kube_sandbox.add_node("node-a")
    root = tmp_path / "root"
    setup_root(root, kube_sandbox.admin_kubeconfig, toolchain.helm4, spec())

    run = agent(root, "leader", "--once", "--identity", "cp-test")
    assert run.returncode == 0, run.stderr[-3000:]

    lease = kube_sandbox.get("Lease", "herd-agent-leader", "kube-system")["spec"]
    assert not lease.get("holderIdentity")  # released on the way out
    status = agent(root, "releases", "status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    doc = json.loads(status.stdout)
    assert {k: v["helm_status"] for k, v in doc["releases"].items() if "/" in k and k != "manifests"} == {
        "platform/widgets-crd": "deployed", "platform/widget-operator": "deployed", "apps/shop": "deployed",
        "monitoring/metrics": "deployed"}
    # the status record keeps every release (each server-side apply carries them all)
    assert {k: v.get("state") for k, v in doc["releases"].items()} == {
        "platform/widgets-crd": "deployed", "platform/widget-operator": "deployed", "apps/shop": "deployed",
        "monitoring/metrics": "deployed"}
    metrics = (root / "var/lib/node_exporter/textfile_collector/herd_agent_leader.prom").read_text()
    assert 'herd_agent_leader_release_state{release="apps/shop",state="deployed"} 1.0' in metrics

    setup_root(root, kube_sandbox.admin_kubeconfig, toolchain.helm4, spec(message="changed"))
    writes_before = len(kube_sandbox.server.request_log)
    plan = agent(root, "plan", "releases")
    assert plan.returncode == 0, plan.stderr[-2000:]
    lines = {line.split()[1]: line.split()[0] for line in plan.stdout.splitlines() if not line.startswith(" ")}
    assert lines == {"platform/widgets-crd:": "unchanged", "platform/widget-operator:": "unchanged",
                     "apps/shop:": "upgrade", "monitoring/metrics:": "unchanged"}
    assert '+  message: changed' in plan.stdout
    assert kube_sandbox.server.request_log[writes_before:] == []


def test_a_bad_release_set_is_a_config_error_before_any_write(kube_sandbox: Any, toolchain: Any,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "root"
    setup_root(root, kube_sandbox.admin_kubeconfig, toolchain.helm4,
               {"releases": [{"name": "a", "chart": "/c", "needs": ["b"]}]})
    run = agent(root, "leader", "--once")
    assert run.returncode == 78
    assert "needs default/b, which is not declared" in run.stderr
    assert kube_sandbox.find("Lease", "herd-agent-leader", "kube-system") is None
