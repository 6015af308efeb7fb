"""The step engine over a context (no cluster): the journal is 0600 and redacted, a failed step
does not stop the sequence, the last step always runs, failpoints are inert unless set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from herd_agent import failpoints
from herd_agent.config import load_config
from herd_agent.discovery.identity import Identity
from herd_agent.host.fsroot import HostRoot
from herd_agent.leave import journal as jr
from herd_agent.leave.engine import StepEngine
from herd_agent.leave.sequence import LeaveSequence
from herd_agent.leave.steps import Step
from herd_agent.redact import register_secret

IDENT = Identity("i-0abc0000000000001", "us-east-1", "us-east-1a", "10.0.0.9", "m6i.large", None, "c", "node")
SECRET = "wh-sk-7f3a9c1e55d04b2b"


class Boom(Step):
    name = "drain"

    def describe(self, ctx: object) -> str:
        return "boom"

    def run(self, ctx: object) -> str:
        raise RuntimeError(f"POST https://hooks.example.invalid/{SECRET} failed")


class Ok(Step):
    def __init__(self, name: str) -> None:
        self.name = name

    def describe(self, ctx: object) -> str:
        return "ok"

    def run(self, ctx: object) -> str:
        return f"{self.name} ok"


def test_failed_step_is_journaled_redacted_0600_and_the_last_step_still_runs(tmp_path: Path) -> None:
    register_secret(SECRET)
    (tmp_path / "etc/herd-agent").mkdir(parents=True)
    root = HostRoot(tmp_path)
    journal = jr.LeaveJournal(reason="manual")
    ctx = LeaveSequence(root, load_config(root), kube_factory=lambda _i: None).context(IDENT, journal)
    StepEngine(ctx, (Ok("cordon"), Boom(), Ok("complete-hook"))).run()
    path = root.path(jr.JOURNAL)
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert SECRET not in text and "***" in text
    steps = json.loads(text)["steps"]
    assert (steps["cordon"]["status"], steps["drain"]["status"], steps["complete-hook"]["status"]) == (
        "done", "failed", "done")
    assert ctx.failed == ["drain"]


def test_failpoints_are_inert_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    stops: list[int] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: stops.append(sig))
    monkeypatch.delenv(failpoints.FAILPOINT_ENV, raising=False)
    failpoints.failpoint("drain:acted")
    monkeypatch.setenv(failpoints.FAILPOINT_ENV, "cordon:after, drain:acted")
    failpoints.failpoint("drain:started")
    failpoints.failpoint("drain:acted")
    assert len(stops) == 1
    monkeypatch.setenv(failpoints.TIME_FACTOR_ENV, "0.01")
    assert failpoints.scaled(3600) == pytest.approx(36)
    for bad in ("0", "-1", "2", "fast"):
        monkeypatch.setenv(failpoints.TIME_FACTOR_ENV, bad)
        assert failpoints.time_factor() == 1.0
