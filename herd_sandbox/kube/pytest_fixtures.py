"""Pytest fixtures for tests that need a Kubernetes API (import them into a conftest.py).

- ``kube_sandbox``: a started :class:`~herd_sandbox.kube.KubeSandbox`, fresh per test,
  time factor 0.01 (a 30 s pod grace period lasts 0.3 s), no nodes; stopped afterwards.
- ``kube_sandbox_factory``: a callable ``factory(**kwargs) -> KubeSandbox`` for tests that need
  other options (several sandboxes, a different time factor, a small watch history); every
  sandbox it made is stopped afterwards, and the test fails if a controller pass raised.
- ``kube_kubeconfig``: the admin kubeconfig path (``pathlib.Path``, mode 0600) of ``kube_sandbox``.
- ``kube_client``: a lightkube ``Client`` for ``kube_sandbox`` as admin.

The server runs in threads of the test process (no subprocess); it binds to 127.0.0.1 only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from herd_sandbox.kube.sandbox import KubeSandbox


@pytest.fixture
def kube_sandbox_factory() -> Iterator[Callable[..., KubeSandbox]]:
    """A factory of started sandboxes (``KubeSandbox(**kwargs)``, time factor 0.01 unless given)."""
    made: list[KubeSandbox] = []

    def factory(**kwargs: Any) -> KubeSandbox:
        kwargs.setdefault("time_factor", 0.01)
        sandbox = KubeSandbox(**kwargs).start()
        made.append(sandbox)
        return sandbox

    yield factory
    errors = []
    for sandbox in reversed(made):
        sandbox.stop()
        errors += sandbox.world.errors if sandbox.world else []
    assert not errors, f"the simulated cluster's controllers failed during the test: {errors}"


@pytest.fixture
def kube_sandbox(kube_sandbox_factory: Callable[..., KubeSandbox]) -> KubeSandbox:
    """A started emulated API server with its simulated cluster (no nodes yet)."""
    return kube_sandbox_factory()


@pytest.fixture
def kube_kubeconfig(kube_sandbox: KubeSandbox) -> Path:
    """The admin kubeconfig of ``kube_sandbox``."""
    return kube_sandbox.admin_kubeconfig


@pytest.fixture
def kube_client(kube_sandbox: KubeSandbox) -> Iterator[Any]:
    """A lightkube Client talking to ``kube_sandbox`` as admin (closed afterwards)."""
    from lightkube import Client, KubeConfig

    client = Client(config=KubeConfig.from_file(str(kube_sandbox.admin_kubeconfig)), field_manager="herd-tests")
    yield client
    client.close()
