"""The join tests' sandbox cluster: groups of instances joined by the real agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from herd_sandbox.aws.region import Region
from herd_sandbox.kube.sandbox import KubeSandbox
from tests.clusters import SandboxCluster


@pytest.fixture
def cluster(region: Region, kube_sandbox: KubeSandbox, tmp_path: Path, toolchain) -> Iterator[SandboxCluster]:
    """A fresh cluster name in the module's region, closed (units stopped) after the test."""
    c = SandboxCluster(region, kube_sandbox, tmp_path, toolchain)
    try:
        yield c
    finally:
        c.close()
