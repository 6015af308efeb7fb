"""The GitOps hand-off (server-side apply, fenced, epoch annotations) and the leader unit's promises."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import pytest

from herd_agent.leader.election import Epoch
from herd_agent.leader.fence import Deposed, Fence
from herd_agent.leader.manifests import apply_all

from .conftest import CHARTS, lease_client

ROOT_APP = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
            "metadata": {"name": "root", "namespace": "default"},
            "spec": {"source": {"repoURL": "https://git.example.com/p.git", "path": "apps"},
                     "syncPolicy": {"automated": {"prune": True, "selfHeal": True}}}}


def install_application_crd(kube_sandbox: Any) -> None:
    import yaml

    kube_sandbox.create(yaml.safe_load((CHARTS / "argo-cd-crds" / "templates" / "application-crd.yaml").read_text()))


def test_root_application_is_server_side_applied_with_the_epoch(kube_sandbox: Any) -> None:
    install_application_crd(kube_sandbox)
    fence = Fence(lambda: True, lambda: Epoch("cp-1_x", 4))
    assert apply_all(lease_client(kube_sandbox.admin_kubeconfig), fence, [ROOT_APP]) == ["Application default/root"]
    app = kube_sandbox.get("Application", "root", "default", api_version="argoproj.io/v1alpha1")
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert app["metadata"]["annotations"]["herd.io/leader-epoch"] == "4"
    assert [m["manager"] for m in app["metadata"].get("managedFields", [])] in ([], ["herd-agent-leader"])


def test_a_deposed_leader_applies_nothing(kube_sandbox: Any) -> None:
    install_application_crd(kube_sandbox)
    fence = Fence(lambda: False, lambda: Epoch("cp-1_x", 4))
    with pytest.raises(Deposed):
        apply_all(lease_client(kube_sandbox.admin_kubeconfig), fence, [ROOT_APP])
    assert kube_sandbox.find("Application", "root", "default", api_version="argoproj.io/v1alpha1") is None


def test_leader_unit_is_notify_with_watchdog_on_control_planes_only() -> None:
    unit = Path(__file__).resolve().parents[2] / "units" / "herd-agent-leader.service"
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment, method-assign]
    cp.read_string(unit.read_text())
    assert cp["Service"]["Type"] == "notify"
    assert cp["Service"]["WatchdogSec"]
    assert cp["Service"]["ExecStart"] == "/usr/bin/herd-agent leader"
    assert "ConditionPathExists=/etc/rancher/k3s/k3s.yaml" in unit.read_text().splitlines()
