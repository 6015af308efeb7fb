"""The join tests' sandbox cluster: groups of instances joined by the real agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from herd_sandbox.aws.region import Region
from herd_sandbox.kube.sandbox import KubeSandbox
from tests.clusters import SandboxCluster


@pytest.fixture(scope="module")
def region() -> Iterator[Region]:
    """One sandbox AWS region per join test module, at time factor 0.1 (not the suite's 0.01): a
    group's launch hook times out 7200 AWS seconds after launch (720 s here), and every instance of
    a group of five joining at once must finish inside it, which took 64 s on a loaded 2-core
    machine (72 s at 0.01 was too close). Nothing a join test waits for runs on this clock."""
    with Region(time_factor=0.1) as r:
        yield r


@pytest.fixture
def cluster(region: Region, kube_sandbox: KubeSandbox, tmp_path: Path, toolchain) -> Iterator[SandboxCluster]:
    """A fresh cluster name in the module's region, closed (units stopped) after the test."""
    c = SandboxCluster(region, kube_sandbox, tmp_path, toolchain)
    try:
        yield c
    finally:
        c.close()
