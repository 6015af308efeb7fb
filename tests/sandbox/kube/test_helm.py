"""The real helm (3 and 4) against the emulated API server: install, upgrade, uninstall with --wait."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from herd_sandbox.kube.sandbox import KubeSandbox

from .conftest import running_pods

pytestmark = pytest.mark.allow_subprocess

CHART = {
    "Chart.yaml": "apiVersion: v2\nname: demo\nversion: 0.1.0\n",
    "values.yaml": "replicas: 2\nimage: example/demo:1\n",
    "templates/all.yaml": """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
data:
  image: {{ .Values.image | quote }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      containers:
      - name: main
        image: {{ .Values.image }}
""",
}


@pytest.fixture(params=["helm3", "helm4"])
def helm(request: pytest.FixtureRequest, toolchain: Any, kube_sandbox: KubeSandbox, tmp_path: Path) -> Any:
    chart = tmp_path / "chart"
    for name, text in CHART.items():
        (chart / name).parent.mkdir(parents=True, exist_ok=True)
        (chart / name).write_text(text)
    binary = getattr(toolchain, request.param)
    env = {"HOME": str(tmp_path), "HELM_CACHE_HOME": str(tmp_path / "cache"),
           "HELM_CONFIG_HOME": str(tmp_path / "config"), "HELM_DATA_HOME": str(tmp_path / "data"), "PATH": "/usr/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603
            [str(binary), "--kubeconfig", str(kube_sandbox.admin_kubeconfig), *args],
            capture_output=True, text=True, timeout=90, env=env)
        assert result.returncode == 0, f"{request.param} {' '.join(args)}: {result.stderr}"
        return result

    run.chart = str(chart)  # type: ignore[attr-defined]
    return run


def test_install_upgrade_uninstall(kube_sandbox: KubeSandbox, helm: Any) -> None:
    kube_sandbox.add_node("node-a")

    helm("install", "demo", helm.chart, "--namespace", "apps", "--create-namespace", "--wait", "--timeout", "60s")

    assert len(running_pods(kube_sandbox, lambda p: p["metadata"]["namespace"] == "apps")) == 2
    releases = kube_sandbox.list("Secret", "apps", where=lambda s: s.get("type") == "helm.sh/release.v1")
    assert [r["metadata"]["labels"]["status"] for r in releases] == ["deployed"]

    helm("upgrade", "demo", helm.chart, "--namespace", "apps", "--set", "image=example/demo:2", "--wait",
         "--timeout", "60s")
    assert kube_sandbox.get("ConfigMap", "demo-config", "apps")["data"]["image"] == "example/demo:2"
    assert {p["spec"]["containers"][0]["image"] for p in running_pods(kube_sandbox)} == {"example/demo:2"}
    assert "deployed" in helm("status", "demo", "--namespace", "apps").stdout

    helm("uninstall", "demo", "--namespace", "apps", "--wait")
    assert kube_sandbox.find("Deployment", "demo", "apps") is None
    assert kube_sandbox.list("Secret", "apps", where=lambda s: s.get("type") == "helm.sh/release.v1") == []
