"""``herd-sandbox run leader`` (short variant) with helm 3 and helm 4, end to end on real parts."""

from __future__ import annotations

from pathlib import Path

import pytest

from herd_sandbox.scenario import scenarios
from herd_sandbox.scenario.runner import run_scenario
from herd_sandbox.scenario.tools import Tools

pytestmark = pytest.mark.allow_subprocess

LEADER_CHECKS = {
    "every release deployed, none pending",
    "every leader write made by the Lease holder (one writer per epoch)",
    "the deposed leader wrote nothing after it woke",
    "plan releases writes nothing",
    "the secret value never in argv, logs or Events",
    "failover within LeaseDuration + RetryPeriod",
}


@pytest.mark.parametrize("name", ["leader", "leader-helm3"])
def test_leader_scenario_short(name: str, tmp_path: Path, toolchain) -> None:
    result = run_scenario(scenarios.get(name, short=True), state_dir=tmp_path / "run", out=None,
                          tools=Tools(toolchain.etcd, toolchain.kubectl))
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert result.ok, f"{result.failed_step}; {failed}; logs in {result.state_dir}"
    assert LEADER_CHECKS <= {c.name for c in result.checks}
