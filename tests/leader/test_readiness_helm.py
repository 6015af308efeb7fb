"""The webhook and APIService gates on real behaviour: the operator chart, installed by the real
helm 3 and 4, serves a validating webhook and an aggregated API; the emulator's endpoints and
APIService-availability controllers decide when they are ready, and the readiness rules follow.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from herd_agent.leader.apply import Applier
from herd_agent.leader.readiness import kube_lookup, object_ready, release_ready
from herd_agent.leader.releases import parse

from .conftest import CHARTS, helm_env, lease_client, make_leader, spec
from .test_apply_helm import _no_secrets, release_secrets

pytestmark = pytest.mark.allow_subprocess


def helm(helm_binary: Path, kube_sandbox: Any, tmp_path: Path, *args: str) -> str:
    out = subprocess.run([str(helm_binary), *args, "--kubeconfig", str(kube_sandbox.admin_kubeconfig)],  # noqa: S603
                         env=helm_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def await_(cond: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return got


def available(kube_sandbox: Any) -> tuple[str, str]:
    api = kube_sandbox.find("APIService", "v1alpha1.status.example.io") or {}
    cond = next((c for c in (api.get("status") or {}).get("conditions") or [] if c["type"] == "Available"), {})
    return cond.get("status", ""), cond.get("reason", "")


def label(kube_sandbox: Any, key: str) -> None:
    def put(node: dict[str, Any]) -> None:
        node["metadata"].setdefault("labels", {})[key] = "yes"
    kube_sandbox.modify("Node", "node-a", put)


def test_webhook_and_apiservice_gate_until_their_backends_are_ready(kube_sandbox: Any, helm_binary: Path,
                                                                     tmp_path: Path) -> None:
    kube_sandbox.add_node("node-a")
    helm(helm_binary, kube_sandbox, tmp_path, "install", "widgets-crd", str(CHARTS / "widgets-crd"),
         "--namespace", "platform", "--create-namespace")
    await_(lambda: kube_sandbox.find("CustomResourceDefinition", "widgets.example.io"), "the CRD")
    # neither the operator (serving the APIService) nor the webhook can be scheduled yet
    helm(helm_binary, kube_sandbox, tmp_path, "install", "widget-operator", str(CHARTS / "widget-operator"),
         "--namespace", "platform", "--set", "nodeSelector.herd\\.io/operator=yes",
         "--set", "webhookNodeSelector.herd\\.io/webhook=yes")
    manifest = helm(helm_binary, kube_sandbox, tmp_path, "get", "manifest", "widget-operator",
                    "--namespace", "platform")
    lookup = kube_lookup(lease_client(kube_sandbox.admin_kubeconfig))

    def gate(kind: str, name: str) -> tuple[bool, str]:
        live = lookup({"APIService": "apiregistration.k8s.io/v1"}.get(kind, "admissionregistration.k8s.io/v1"),
                      kind, None, name)
        assert live is not None
        return object_ready(live, lookup)

    assert await_(lambda: available(kube_sandbox)[1] == "MissingEndpoints" and available(kube_sandbox),
                  "the aggregator's verdict") == ("False", "MissingEndpoints")
    assert kube_sandbox.find("Endpoints", "widget-operator-webhook", "platform") is not None
    assert not gate("APIService", "v1alpha1.status.example.io")[0]
    ok, why = gate("ValidatingWebhookConfiguration", "widget-operator-widgets")
    assert not ok and "no ready endpoint" in why

    label(kube_sandbox, "herd.io/operator")  # the operator runs: the aggregated API becomes Available
    await_(lambda: available(kube_sandbox) == ("True", "Passed"), "the APIService Available")
    ep = kube_sandbox.get("Endpoints", "widget-operator-api", "platform")
    assert ep["subsets"][0]["ports"] == [{"name": "https", "port": 6443, "protocol": "TCP"}]
    assert gate("APIService", "v1alpha1.status.example.io")[0]
    ok, why = gate("ValidatingWebhookConfiguration", "widget-operator-widgets")
    assert not ok and "widget-operator-webhook" in why
    ready, reasons = release_ready(manifest, lookup, "platform")
    assert not ready and any("webhook widgets.example.io has no ready endpoint" in r for r in reasons)

    label(kube_sandbox, "herd.io/webhook")  # the webhook's pod runs and turns Ready
    await_(lambda: gate("ValidatingWebhookConfiguration", "widget-operator-widgets")[0], "the webhook ready")
    ep = kube_sandbox.get("Endpoints", "widget-operator-webhook", "platform")
    assert ep["subsets"][0]["ports"] == [{"name": "https", "port": 9443, "protocol": "TCP"}]
    assert await_(lambda: release_ready(manifest, lookup, "platform")[0], "the whole release ready")


def _state(kube_sandbox: Any, release: str) -> dict[str, Any]:
    cm = kube_sandbox.find("ConfigMap", "herd-agent-leader-status", "kube-system") or {}
    return json.loads((cm.get("data") or {}).get(release, "{}"))


def test_the_release_that_needs_the_operator_waits_for_its_webhook_and_apiservice(
        kube_sandbox: Any, helm_binary: Path, tmp_path: Path) -> None:
    kube_sandbox.add_node("node-a")
    ld = make_leader(kube_sandbox, helm_binary, tmp_path)
    applier = Applier(ld.kube, ld.helm, ld.fence, ld.reporter, tmp_path / "values", _no_secrets, poll_s=0.1)
    releases = spec()["releases"][:3]
    # helm does not wait: the applier's readiness gates alone hold shop back
    releases[1].update(wait=False, timeout=120, values=[{"nodeSelector": {"herd.io/operator": "yes"},
                                                         "webhookNodeSelector": {"herd.io/webhook": "yes"}}])
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(applier.apply(parse({"releases": releases}))))
    worker.start()
    try:
        why = await_(lambda: (s := _state(kube_sandbox, "platform.widget-operator")).get("state") == "waiting"
                     and s["why"], "the operator waiting")
        assert "v1alpha1.status.example.io not Available" in why
        label(kube_sandbox, "herd.io/operator")
        await_(lambda: "not Available" not in _state(kube_sandbox, "platform.widget-operator").get("why", "x"),
               "the APIService Available")
        assert "webhook widgets.example.io has no ready endpoint" in \
            _state(kube_sandbox, "platform.widget-operator")["why"]
        assert not release_secrets(kube_sandbox, "apps", "shop")
        label(kube_sandbox, "herd.io/webhook")
        worker.join(120)
    finally:
        label(kube_sandbox, "herd.io/operator")
        label(kube_sandbox, "herd.io/webhook")
        worker.join(120)
    assert outcome and outcome[0].states["apps/shop"] == "deployed"
    shop = release_secrets(kube_sandbox, "apps", "shop")[0]
    api = kube_sandbox.get("APIService", "v1alpha1.status.example.io")
    hook = kube_sandbox.get("Endpoints", "widget-operator-webhook", "platform")
    rv = lambda o: int(o["metadata"]["resourceVersion"])  # noqa: E731
    assert rv(api) < rv(shop) and rv(hook) < rv(shop)
