"""Periodic operations: their period, rate-limited error logging, pause, and the worker thread."""

from __future__ import annotations

import logging
import threading

import pytest

from herd_agent.logs import RateLimitedLogger
from herd_agent.watch.periodic import PeriodicOperation, PeriodicWorker


def test_runs_when_due_then_after_its_period() -> None:
    now, runs = [100.0], []
    op = PeriodicOperation("gc", lambda: runs.append(now[0]), 300, first_delay_s=300, clock=lambda: now[0])
    worker = PeriodicWorker([op], clock=lambda: now[0])
    assert worker.run_due() == []
    now[0] = 400.0
    assert worker.run_due() == ["gc"] and runs == [400.0]
    now[0] = 699.0
    assert worker.run_due() == []
    now[0] = 700.0
    assert worker.run_due() == ["gc"]


def test_failures_are_logged_rate_limited_and_the_operation_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]

    def boom() -> None:
        raise OSError("control plane unreachable")

    op = PeriodicOperation("hosts-refresh", boom, 10, clock=lambda: now[0],
                           limited=RateLimitedLogger(logging.getLogger("t"), 60, clock=lambda: now[0]))
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(5):
            assert op.run() is False
            now[0] += 10
    assert op.failures == 5 and op.runs == 5
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "hosts-refresh failed: control plane unreachable" in lines[0]


def test_pause_keeps_operations_from_starting() -> None:
    runs: list[int] = []
    worker = PeriodicWorker([PeriodicOperation("metrics", lambda: runs.append(1), 0)])
    worker.pause()
    assert worker.run_due() == [] and runs == []
    worker.resume()
    assert worker.run_due() == ["metrics"]


def test_the_worker_thread_runs_operations_in_order() -> None:
    done = threading.Event()
    seen: list[str] = []
    ops = [PeriodicOperation("a", lambda: seen.append("a"), 3600),
           PeriodicOperation("b", lambda: (seen.append("b"), done.set()), 3600)]
    worker = PeriodicWorker(ops).start()
    try:
        assert done.wait(10)
        assert seen == ["a", "b"]
    finally:
        worker.stop(timeout=10)
