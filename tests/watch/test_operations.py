"""The watcher's periodic jobs on a host root: they touch only this instance's join state, and the
metrics say whether the poll is healthy."""

from __future__ import annotations

import json
from pathlib import Path

from herd_agent.config import load_config
from herd_agent.host.fsroot import HostRoot
from herd_agent.watch.operations import WatcherOperations
from tests.fakes import FakeImds
from tests.watch.conftest import IID


def ops(tmp_path: Path, instance_id: str | None = IID, healthy: bool = True) -> WatcherOperations:
    root = HostRoot(tmp_path)
    root.write("/etc/herd-agent/config.yaml", "metrics:\n  textfile_dir: /metrics\n", mode=0o644)
    return WatcherOperations(root, load_config(root), FakeImds().client(), lambda: instance_id,
                             healthy=lambda: healthy, last_poll=lambda: 1796191000.5)


def test_the_list_names_each_job_with_its_period(tmp_path: Path) -> None:
    listed = {op.name: op.period_s for op in ops(tmp_path).operations()}
    assert listed == {"hosts-refresh": 30.0, "etcd-gc": 300.0, "metrics": 60.0}


def test_metrics_report_the_poll_health(tmp_path: Path) -> None:
    ops(tmp_path, healthy=False).write_metrics()
    text = (tmp_path / "metrics/herd_agent.prom").read_text()
    assert "herd_agent_watcher_healthy 0.0" in text
    assert "herd_agent_watcher_last_poll_timestamp_seconds 1796191000.5" in text


def test_jobs_leave_another_instances_join_state_alone(tmp_path: Path) -> None:
    """A state file written by another instance (a reused root image) is not this one's: the
    strict fake IMDS fails the test if a job so much as reads IMDS."""
    state = {"instance_id": "i-99999999", "cluster": "blue", "role": "control-plane", "endpoint_ip": "10.0.0.9"}
    (tmp_path / "var/lib/herd-agent").mkdir(parents=True)
    (tmp_path / "var/lib/herd-agent/join.json").write_text(json.dumps(state))
    o = ops(tmp_path)
    o.refresh_hosts()
    o.etcd_gc()
    assert ops(tmp_path, instance_id=None)._own_state() is None
    assert ops(tmp_path, instance_id="i-99999999")._own_state().endpoint_ip == "10.0.0.9"
