"""Fixtures for leader-mode tests: a sandbox API with a Ready node, the real helm 3/4, an elector."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from herd_agent.config.loader import load_config
from herd_agent.host.fsroot import HostRoot
from herd_agent.leader.election import LeaderElector
from herd_agent.leader.fence import Fence
from herd_agent.leader.helm import Helm
from herd_agent.leader.status import Reporter

CHARTS = Path(__file__).resolve().parent.parent / "charts"
RENEWERS_STOP = threading.Event()


@pytest.fixture(autouse=True)
def _stop_renewers() -> Iterator[None]:
    """Every leader made by :func:`make_leader` renews its Lease until its test ends."""
    RENEWERS_STOP.clear()
    yield
    RENEWERS_STOP.set()


def lease_client(kubeconfig: Path) -> Any:
    """A lightkube client for a sandbox kubeconfig."""
    from lightkube import Client, KubeConfig

    return Client(config=KubeConfig.from_file(str(kubeconfig)), field_manager="herd-tests", trust_env=False)


@dataclass
class Leader:
    """One leader's parts wired like the service wires them."""

    kube: Any
    elector: LeaderElector
    fence: Fence
    helm: Helm
    reporter: Reporter
    root: HostRoot


def agent_env() -> dict[str, str]:
    """This process's environment without AWS, herd-agent or systemd settings, for an agent process."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HERD_", "NOTIFY_SOCKET"))}


def helm_env(work: Path) -> dict[str, str]:
    """helm's homes (cache, config, data, HOME) under ``work``, away from the user's."""
    return {"HELM_CACHE_HOME": str(work / "cache"), "HELM_CONFIG_HOME": str(work / "config"),
            "HELM_DATA_HOME": str(work / "data"), "HOME": str(work)}


def make_leader(kube_sandbox: Any, helm_binary: Path, tmp_path: Path, identity: str = "cp-1") -> Leader:
    """Build and elect one leader (it holds the Lease on return)."""
    root = HostRoot(tmp_path / identity)
    root.path("/").mkdir(parents=True, exist_ok=True)
    cfg = load_config(root)
    kube = lease_client(kube_sandbox.admin_kubeconfig)
    elector = LeaderElector(kube, "kube-system", "herd-agent-leader", identity)
    assert elector.try_acquire_or_renew()
    threading.Thread(target=elector.renew, args=(RENEWERS_STOP,), daemon=True).start()  # keeps the Lease
    fence = Fence(elector.holding, elector.epoch, elector.remaining_s)
    work = tmp_path / identity / "helm"
    helm = Helm(str(helm_binary), str(kube_sandbox.admin_kubeconfig), helm_env(work))
    reporter = Reporter(kube, fence, "kube-system", "herd-agent-leader", root, cfg, identity)
    return Leader(kube, elector, fence, helm, reporter, root)


def spec(message: str = "hello", shop_needs: tuple[str, ...] = ("widget-operator",), **extra: Any) -> dict[str, Any]:
    """The four test charts as a release set: crd ← operator ← shop, and metrics alone."""
    return {
        "releases": [
            {"name": "widgets-crd", "namespace": "platform", "chart": str(CHARTS / "widgets-crd")},
            {"name": "widget-operator", "namespace": "platform", "chart": str(CHARTS / "widget-operator"),
             "needs": ["widgets-crd"]},
            {"name": "shop", "namespace": "apps", "chart": str(CHARTS / "shop"),
             "needs": [f"platform/{n}" for n in shop_needs], "values": [{"message": message}], "timeout": 60},
            {"name": "metrics", "namespace": "monitoring", "chart": str(CHARTS / "metrics")},
        ],
        **extra,
    }


@pytest.fixture(params=["helm3", "helm4"])
def helm_binary(request: pytest.FixtureRequest, toolchain: Any) -> Path:
    """The real helm 3 and helm 4 binaries, one per test run."""
    return Path(getattr(toolchain, request.param))
