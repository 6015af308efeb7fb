"""The applier with the real helm 3 and helm 4 against the emulated API server."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from herd_agent.leader.apply import Applier
from herd_agent.leader.releases import parse

from .conftest import make_leader, spec

pytestmark = pytest.mark.allow_subprocess


def _no_secrets(ref: Any) -> str:
    raise AssertionError(f"no secret expected: {ref}")


def release_secrets(kube_sandbox: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    items = kube_sandbox.list("Secret", namespace, where=lambda s: s.get("type") == "helm.sh/release.v1"
                              and s["metadata"]["labels"].get("name") == name)
    return sorted(items, key=lambda s: int(s["metadata"]["labels"]["version"]))


def test_apply_in_needs_order_then_idempotent_then_only_changed(kube_sandbox: Any, helm_binary: Path,
                                                                tmp_path: Path) -> None:
    kube_sandbox.add_node("node-a")
    ld = make_leader(kube_sandbox, helm_binary, tmp_path)
    applier = Applier(ld.kube, ld.helm, ld.fence, ld.reporter, tmp_path / "values", _no_secrets, poll_s=0.1)

    out = applier.apply(parse(spec()))

    assert out.states == {"platform/widgets-crd": "deployed", "platform/widget-operator": "deployed",
                          "apps/shop": "deployed", "monitoring/metrics": "deployed"}
    crd = kube_sandbox.get("CustomResourceDefinition", "widgets.example.io")
    operator = release_secrets(kube_sandbox, "platform", "widget-operator")[-1]
    shop = release_secrets(kube_sandbox, "apps", "shop")[-1]
    # each release was written only after what it needs existed
    assert int(crd["metadata"]["resourceVersion"]) < int(operator["metadata"]["resourceVersion"])
    dep = kube_sandbox.get("Deployment", "widget-operator", "platform")
    assert int(dep["metadata"]["resourceVersion"]) < int(shop["metadata"]["resourceVersion"])
    assert shop["metadata"]["labels"]["herd.io/leader-epoch"] == "0"
    assert shop["metadata"]["labels"]["status"] == "deployed"

    again = applier.apply(parse(spec()))
    assert set(again.states.values()) == {"unchanged"}
    assert again.changed == []
    assert len(release_secrets(kube_sandbox, "apps", "shop")) == 1

    changed = applier.apply(parse(spec(message="bonjour")))
    assert changed.changed == ["apps/shop"]
    assert [len(release_secrets(kube_sandbox, ns, n)) for ns, n in (
        ("platform", "widgets-crd"), ("platform", "widget-operator"), ("apps", "shop"), ("monitoring", "metrics"))] \
        == [1, 1, 2, 1]
    assert kube_sandbox.get("ConfigMap", "shop-config", "apps")["data"]["message"] == "bonjour"


def test_pending_upgrade_of_a_dead_epoch_is_rolled_back_then_applied(kube_sandbox: Any, helm_binary: Path,
                                                                      tmp_path: Path) -> None:
    import subprocess

    kube_sandbox.add_node("node-a")
    ld = make_leader(kube_sandbox, helm_binary, tmp_path)
    applier = Applier(ld.kube, ld.helm, ld.fence, ld.reporter, tmp_path / "values", _no_secrets, poll_s=0.1)
    rset = parse({"releases": [spec()["releases"][3]]})
    applier.apply(rset)
    # a dead leader's helm upgrade: it waits on pods that never get Ready, and is killed -9
    kube_sandbox.set_node_ready("node-a", False)
    argv = [str(helm_binary), "upgrade", "metrics", spec()["releases"][3]["chart"], "--namespace", "monitoring",
            "--set", "image=example/metrics:2", "--labels", "herd.io/leader-epoch=7", "--wait", "--timeout", "120s",
            "--kubeconfig", str(kube_sandbox.admin_kubeconfig)]
    proc = subprocess.Popen(argv, env=ld.helm.env | {"PATH": "/usr/bin"},  # noqa: S603
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = threading.Event()
        for _ in range(600):
            if any(s["metadata"]["labels"]["status"] == "pending-upgrade"
                   for s in release_secrets(kube_sandbox, "monitoring", "metrics")):
                break
            done.wait(0.05)
        else:
            raise AssertionError("helm never made a pending-upgrade revision")
    finally:
        proc.kill()
        proc.wait()
    kube_sandbox.set_node_ready("node-a", True)

    out = applier.apply(rset)

    assert out.recovered == ["monitoring/metrics"]
    statuses = [s["metadata"]["labels"]["status"] for s in release_secrets(kube_sandbox, "monitoring", "metrics")]
    # helm rollback leaves the dead revision's record as it was; the release itself (its newest
    # revision, what every helm operation checks) is deployed again
    assert statuses == ["superseded", "pending-upgrade", "deployed"]
    assert "another operation" not in ld.helm.run("upgrade", "metrics", spec()["releases"][3]["chart"],
                                                  "--namespace", "monitoring")
    assert ld.reporter.states["monitoring/metrics"]["state"] in ("deployed", "unchanged")


def test_pending_install_that_never_deployed_is_uninstalled_then_installed(kube_sandbox: Any, helm_binary: Path,
                                                                          tmp_path: Path) -> None:
    import subprocess

    kube_sandbox.add_node("node-a")
    kube_sandbox.set_node_ready("node-a", False)
    ld = make_leader(kube_sandbox, helm_binary, tmp_path)
    applier = Applier(ld.kube, ld.helm, ld.fence, ld.reporter, tmp_path / "values", _no_secrets, poll_s=0.1)
    chart = spec()["releases"][3]["chart"]
    argv = [str(helm_binary), "install", "metrics", chart, "--namespace", "monitoring", "--create-namespace",
            "--labels", "herd.io/leader-epoch=2", "--wait", "--timeout", "120s",
            "--kubeconfig", str(kube_sandbox.admin_kubeconfig)]
    proc = subprocess.Popen(argv, env=ld.helm.env | {"PATH": "/usr/bin"},  # noqa: S603
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pause = threading.Event()
        for _ in range(600):
            if [s["metadata"]["labels"]["status"] for s in release_secrets(kube_sandbox, "monitoring", "metrics")] \
                    == ["pending-install"]:
                break
            pause.wait(0.05)
        else:
            raise AssertionError("helm never made a pending-install revision")
    finally:
        proc.kill()
        proc.wait()
    kube_sandbox.set_node_ready("node-a", True)

    out = applier.apply(parse({"releases": [spec()["releases"][3]]}))

    assert out.recovered == ["monitoring/metrics"]
    assert ld.reporter.recoveries == 1
    records = release_secrets(kube_sandbox, "monitoring", "metrics")
    assert [s["metadata"]["labels"]["status"] for s in records] == ["deployed"]
    assert records[0]["metadata"]["labels"]["herd.io/leader-epoch"] == "0"
