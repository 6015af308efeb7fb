"""Fixtures for the emulated API server's tests: the shared sandbox fixtures plus kubectl helpers."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from herd_sandbox.kube.pytest_fixtures import (  # noqa: F401  (fixtures used by name)
    kube_client,
    kube_kubeconfig,
    kube_sandbox,
    kube_sandbox_factory,
)
from herd_sandbox.kube.sandbox import KubeSandbox


@dataclass
class Kubectl:
    """Runs one real kubectl binary against a kubeconfig."""

    binary: Path
    kubeconfig: Path
    version: str = ""

    def run(self, *args: str, check: bool = True, timeout: float = 60, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True, text=True, timeout=timeout, input=stdin,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)


@pytest.fixture(params=["1.32", "1.37"])
def kubectl(request: pytest.FixtureRequest, toolchain: Any) -> Kubectl:
    """The real kubectl (each version in turn) pointed at ``kube_sandbox`` as admin."""
    kube: KubeSandbox = request.getfixturevalue("kube_sandbox")
    binary = toolchain.kubectl if request.param == "1.32" else toolchain.kubectl_new
    return Kubectl(binary, kube.admin_kubeconfig, request.param)


def pod_template(app: str, empty_dir: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": f"example/{app}:1"}]}
    if empty_dir:
        spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    return {"metadata": {"labels": {"app": app}}, "spec": spec}


def deployment(name: str, replicas: int, namespace: str = "default", empty_dir: bool = False) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": pod_template(name, empty_dir)}}


def daemonset(name: str, namespace: str = "kube-system") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": pod_template(name)}}


def pdb(name: str, app: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"app": app}}, **spec}}


def running_pods(kube: KubeSandbox, where: Callable[[dict[str, Any]], bool] = lambda p: True) -> list[dict[str, Any]]:
    return [p for p in kube.list("Pod") if (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp") and where(p)]


class Api:
    """A raw HTTPS client (requests) for checks below the client libraries: status codes and bodies."""

    def __init__(self, kube: KubeSandbox, token: str | None = None, base: str | None = None) -> None:
        import requests

        self.base = base or kube.url
        self.session = requests.Session()
        self.verify = str(kube.ca_path)  # per request: a session-wide verify loses to REQUESTS_CA_BUNDLE
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                **kwargs: Any) -> Any:
        data = None if body is None else (body if isinstance(body, (str, bytes)) else json.dumps(body))
        headers = {"Content-Type": content_type} if data is not None else {}
        headers.update(kwargs.pop("headers", {}))
        return self.session.request(method, self.base + path, data=data, headers=headers, timeout=10,
                                    verify=self.verify, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("POST", path, body, **kwargs)

    def put(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("PUT", path, body, **kwargs)

    def patch(self, path: str, body: Any, kind: str = "merge", **kwargs: Any) -> Any:
        types = {"merge": "application/merge-patch+json", "strategic": "application/strategic-merge-patch+json",
                 "json": "application/json-patch+json", "apply": "application/apply-patch+yaml"}
        return self.request("PATCH", path, body, content_type=types[kind], **kwargs)

    def delete(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("DELETE", path, body, **kwargs)


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Api:
    """Raw HTTPS access to ``kube_sandbox`` as admin."""
    kube: KubeSandbox = request.getfixturevalue("kube_sandbox")
    return Api(kube, kube.identity("admin").token)
