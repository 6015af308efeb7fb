"""The watcher loop against the strict fake IMDS: it only dispatches, once per event; IMDS
trouble and garbage never crash it; a blocked periodic operation never delays detection."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from herd_agent.config import load_config
from herd_agent.discovery import imds as paths
from herd_agent.host.fsroot import HostRoot
from herd_agent.watch import Watcher
from herd_agent.watch.events import SPOT_NOTICE_S
from herd_agent.watch.periodic import PeriodicOperation, PeriodicWorker
from tests.fakes import FakeImds
from tests.watch.conftest import IID
from tests.watch.test_monitors import GARBAGE

NOW = 1796191000.0


class Recorder:
    """Reactions that record what the loop asked for."""

    def __init__(self, confirm: str | None = "Terminating:Wait", fail_leave: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._confirm, self._fail_leave = confirm, fail_leave

    def leave(self, reason: str, deadline: float | None, complete_hook: bool, stopping: bool) -> None:
        self.calls.append(("leave", reason, deadline, complete_hook, stopping))
        if self._fail_leave:
            raise RuntimeError("the leave could not start")

    def cordon(self, why: str) -> None:
        self.calls.append(("cordon", why))

    pending: str | None = None

    def unfinished(self) -> str | None:
        return self.pending

    def resume(self) -> bool | None:
        self.calls.append(("resume",))
        return True if self.pending else None

    def confirm_termination(self) -> str | None:
        self.calls.append(("confirm",))
        return self._confirm


class Notes:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def ready(self, status: str | None = None) -> bool:
        self.sent.append("READY")
        return True

    def start_watchdog(self, healthy: Any, interval: float | None = None) -> bool:
        self.sent.append("WATCHDOG")
        return True

    def stopping(self, status: str | None = None) -> bool:
        self.sent.append(f"STOPPING {status}")
        return True


def make(tmp_path: Path, fake: FakeImds, config: str = "", reactions: Recorder | None = None,
         worker: PeriodicWorker | None = None, **kw: Any) -> tuple[Watcher, Recorder, Notes]:
    (tmp_path / "etc/herd-agent").mkdir(parents=True, exist_ok=True)
    (tmp_path / "etc/herd-agent/config.yaml").write_text(config)
    rec, notes = reactions or Recorder(), Notes()
    w = Watcher(HostRoot(tmp_path), load_config(HostRoot(tmp_path)), imds=fake.client(), notifier=notes,  # type: ignore[arg-type]
                reactions=rec, worker=worker or PeriodicWorker([]), clock=lambda: NOW, **kw)
    return w, rec, notes


def test_quiet_poll_is_good_and_sends_ready_once(tmp_path: Path, fake: FakeImds) -> None:
    w, rec, notes = make(tmp_path, fake)
    assert not w.healthy()
    assert w.poll_once() == [] and w.poll_once() == []
    assert w.healthy() and w.instance_id == IID
    assert notes.sent == ["READY", "WATCHDOG"]
    assert rec.calls == []


def test_spot_notice_leaves_once_with_its_deadline(tmp_path: Path, fake: FakeImds) -> None:
    w, rec, notes = make(tmp_path, fake)
    w.poll_once()
    fake.answer(paths.SPOT_INSTANCE_ACTION, {"action": "terminate", "time": "2026-12-02T06:00:00Z"})
    (event,) = w.poll_once()
    assert event.reason == "spot-terminate"
    assert rec.calls == [("leave", "spot-terminate", 1796191200.0, True, False)]
    assert w.left
    w.poll_once()
    assert len([c for c in rec.calls if c[0] == "leave"]) == 1


def test_target_terminated_is_confirmed_then_leaves(tmp_path: Path, fake: FakeImds) -> None:
    w, rec, _ = make(tmp_path, fake)
    fake.answer(paths.TARGET_LIFECYCLE_STATE, "Terminated")
    w.poll_once()
    assert rec.calls == [("confirm",), ("leave", "asg-terminate", None, True, False)]


def test_unconfirmed_termination_is_asked_again_after_5_s(tmp_path: Path, fake: FakeImds) -> None:
    rec, now = Recorder(confirm=None), [0.0]
    w, _, _ = make(tmp_path, fake, reactions=rec, monotonic=lambda: now[0])
    fake.answer(paths.TARGET_LIFECYCLE_STATE, "Terminated")
    w.poll_once()
    now[0] += 1
    w.poll_once()
    now[0] += 4
    w.poll_once()
    assert rec.calls == [("confirm",), ("confirm",)] and not w.left


def test_advisories_are_read_every_tenth_poll_and_dispatched_by_config(tmp_path: Path, fake: FakeImds) -> None:
    w, rec, _ = make(tmp_path, fake, "watch:\n  on_rebalance: cordon\n  on_maintenance: leave\n")
    for _ in range(10):
        w.poll_once()
    assert fake.gets(paths.REBALANCE) == 1 and fake.gets(paths.SCHEDULED_EVENTS) == 1
    assert fake.gets(paths.SPOT_INSTANCE_ACTION) == 10
    fake.answer(paths.REBALANCE, {"noticeTime": "2026-12-02T06:00:00Z"})
    fake.answer(paths.SCHEDULED_EVENTS, [{"EventId": "instance-event-1", "Code": "system-reboot", "State": "active"}])
    for _ in range(20):
        w.poll_once()
    assert rec.calls == [("cordon", "rebalance"), ("leave", "maintenance", None, False, False)]
    assert not w.left  # an advisory leave keeps the instance (and the watcher) running


def test_imds_down_is_a_bad_poll_not_a_crash(tmp_path: Path, fake: FakeImds) -> None:
    w, rec, notes = make(tmp_path, fake)
    fake.answer(paths.SPOT_INSTANCE_ACTION, b"", status=503)
    assert w.poll_once() == []
    assert not w.ready and notes.sent == [] and rec.calls == []


def test_a_monitor_bug_is_logged_and_the_others_still_run(tmp_path: Path, fake: FakeImds) -> None:
    class Broken:
        name, every = "broken", 1

        def check(self) -> None:
            raise AttributeError("'list' object has no attribute 'get'")

    w, rec, _ = make(tmp_path, fake)
    w.monitors.insert(0, Broken())  # type: ignore[arg-type]
    fake.answer(paths.SPOT_INSTANCE_ACTION, {"action": "terminate", "time": "2026-12-02T06:00:00Z"})
    w.poll_once()
    assert rec.calls[0][:2] == ("leave", "spot-terminate")


@pytest.mark.parametrize("path", [paths.SPOT_INSTANCE_ACTION, paths.TARGET_LIFECYCLE_STATE, paths.REBALANCE,
                                  paths.SCHEDULED_EVENTS])
@pytest.mark.parametrize("body", GARBAGE.values(), ids=GARBAGE)
def test_garbage_on_any_signal_never_crashes_the_loop(tmp_path: Path, fake: FakeImds, path: str,
                                                     body: bytes) -> None:
    w, rec, _ = make(tmp_path, fake, "watch:\n  on_rebalance: leave\n")
    fake.answer(path, body)
    for _ in range(11):
        w.poll_once()
    leaves = [c for c in rec.calls if c[0] == "leave"]
    if path == paths.SPOT_INSTANCE_ACTION:
        assert leaves == [("leave", "spot-terminate", NOW + SPOT_NOTICE_S, True, False)]
    elif path == paths.REBALANCE:
        assert leaves == [("leave", "rebalance", None, False, False)]
    else:
        assert leaves == [] and w.healthy()  # ignored, and the polls stay good


def test_sigterm_leaves_only_when_the_machine_shuts_down(tmp_path: Path, fake: FakeImds) -> None:
    w, rec, notes = make(tmp_path, fake, shutting_down=lambda: False)
    assert w.on_sigterm() == 0 and rec.calls == []
    w, rec, notes = make(tmp_path, fake, shutting_down=lambda: True)
    assert w.on_sigterm() == 0
    (call,) = rec.calls
    assert call[:2] == ("leave", "shutdown") and call[3:] == (True, True)


def test_a_leave_that_could_not_start_is_tried_again_next_poll(tmp_path: Path, fake: FakeImds) -> None:
    rec = Recorder(fail_leave=True)
    w, _, _ = make(tmp_path, fake, reactions=rec)
    fake.answer(paths.SPOT_INSTANCE_ACTION, {"action": "terminate", "time": "2026-12-02T06:00:00Z"})
    w.poll_once()
    assert not w.left and not w.leaving
    rec._fail_leave = False
    w.poll_once()
    assert [c[:2] for c in rec.calls] == [("leave", "spot-terminate")] * 2 and w.left


def test_a_blocked_periodic_operation_never_delays_detection(tmp_path: Path, fake: FakeImds) -> None:
    """issue 12: the hosts refresh (a discovery retry loop) runs on the worker thread."""
    started, release = threading.Event(), threading.Event()

    def hosts_refresh_stuck_in_discovery() -> None:
        started.set()
        release.wait(60)

    worker = PeriodicWorker([PeriodicOperation("hosts-refresh", hosts_refresh_stuck_in_discovery, 30)])
    w, rec, _ = make(tmp_path, fake, worker=worker)
    try:
        worker.start()
        assert started.wait(10)
        w.poll_once()
        assert w.healthy()  # the watchdog stays fed: a stuck refresh never gets the watcher restarted
        fake.answer(paths.SPOT_INSTANCE_ACTION, {"action": "terminate", "time": "2026-12-02T06:00:00Z"})
        w.poll_once()
        assert rec.calls == [("leave", "spot-terminate", 1796191200.0, True, False)]
        assert not release.is_set()  # detected while the refresh was still stuck
    finally:
        release.set()
        worker.stop(timeout=10)


def test_watchdog_stays_fed_during_a_leave_only(tmp_path: Path, fake: FakeImds) -> None:
    clock = [0.0]
    w, _, _ = make(tmp_path, fake, monotonic=lambda: clock[0])
    w.poll_once()
    assert w.healthy()
    clock[0] += 3 * w.interval + 6
    assert not w.healthy()  # polls stopped succeeding: systemd's watchdog may restart us
    w.leaving = True
    assert w.healthy()


def test_a_bad_token_fails_the_poll_and_is_not_taken_for_a_malformed_signal(tmp_path: Path, fake: FakeImds) -> None:
    w, rec, _ = make(tmp_path, fake)
    w.poll_once()
    fake.revoke()
    fake.token_body = b"abc\r\nX-Injected: 1"
    for _ in range(11):
        assert w.poll_once() == []
    assert rec.calls == [] and not w.left
    fake.token_body = None
    fake.answer(paths.SPOT_INSTANCE_ACTION, {"action": "terminate", "time": "2026-12-02T06:00:00Z"})
    (event,) = w.poll_once()
    assert event.reason == "spot-terminate" and not event.malformed


@pytest.mark.allow_subprocess
def test_the_watcher_package_imports_lean() -> None:
    """The resident watcher imports no boto3, Kubernetes client, etcd client or sandbox at start."""
    import subprocess
    import sys

    code = ("import sys, herd_agent.watch, herd_agent.watch.operations, herd_agent.watch.reactions\n"
            "bad = [m for m in ('boto3', 'botocore', 'lightkube', 'kubernetes', 'tenacity', 'herd_sandbox', "
            "'herd_agent.etcd.client', 'herd_agent.leave.sequence', 'herd_agent.join.sequence', 'subprocess') "
            "if m in sys.modules]\n"
            "print(','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_ready_goes_out_before_a_leave_on_the_first_poll(tmp_path: Path, fake: FakeImds) -> None:
    fake.answer(paths.SPOT_INSTANCE_ACTION, {"action": "terminate", "time": "2026-12-02T06:00:00Z"})
    order: list[str] = []
    rec = Recorder()
    w, _, notes = make(tmp_path, fake, reactions=rec)
    notes.ready = lambda status=None: order.append("READY") or True  # type: ignore[method-assign]
    rec.leave = lambda *a: order.append("leave")  # type: ignore[method-assign]
    w.poll_once()
    assert order == ["READY", "leave"]


def test_a_notice_seen_before_imds_failed_mid_poll_is_still_acted_on(tmp_path: Path, fake: FakeImds) -> None:
    fake.answer(paths.SPOT_INSTANCE_ACTION, {"action": "terminate", "time": "2026-12-02T06:00:00Z"})
    fake.answer(paths.TARGET_LIFECYCLE_STATE, b"", status=503)
    w, rec, _ = make(tmp_path, fake)
    w.poll_once()
    assert rec.calls == [("leave", "spot-terminate", 1796191200.0, True, False)] and w.left


def _random_answer(rng: Any) -> bytes:
    import json

    def value(depth: int = 0) -> Any:
        makers = [
            lambda: None, lambda: rng.random() * 1e12, lambda: rng.randrange(-10**9, 10**9),
            lambda: rng.choice([True, False]),
            lambda: "".join(chr(rng.randrange(0, 0x2FFF)) for _ in range(rng.randrange(0, 40))),
            lambda: [value(depth + 1) for _ in range(rng.randrange(0, 4))],
            lambda: {rng.choice(["action", "time", "EventId", "Code", "State", "noticeTime", "x"]): value(depth + 1)
                     for _ in range(rng.randrange(0, 4))},
            lambda: {"action": rng.choice(["terminate", "stop", "x"]), "time": value(depth + 1)},
        ]
        return makers[rng.randrange(8 if depth < 3 else 5)]()

    shape = rng.randrange(4)
    if shape == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    if shape == 1:
        return b"\r\n".join(bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 30))) for _ in range(3))
    return json.dumps(value()).encode()


def test_seeded_fuzz_of_every_signal_never_crashes_a_poll(tmp_path: Path, fake: FakeImds) -> None:
    import random

    rng = random.Random(20261202)
    signals = [paths.SPOT_INSTANCE_ACTION, paths.TARGET_LIFECYCLE_STATE, paths.REBALANCE, paths.SCHEDULED_EVENTS]
    malformed = 0
    for _ in range(150):
        w, rec, _ = make(tmp_path, fake, "watch:\n  on_rebalance: cordon\n  on_maintenance: cordon\n",
                         reactions=Recorder(confirm="InService"))
        for path in signals:
            fake.answer(path, _random_answer(rng))
        events = w.poll_once()  # the first poll reads every signal
        for event in events:
            assert event.reaction in ("leave", "cordon", "ignore")
            if event.reason.startswith("spot-"):
                assert isinstance(event.deadline, float) and event.complete_hook
            malformed += event.malformed
    assert malformed > 50  # the fuzz reached the malformed-signal rules


def test_resuming_a_leave_sends_ready_first_and_keeps_the_watchdog_fed(tmp_path: Path, fake: FakeImds) -> None:
    """The unit's start timeout (90 s) and WatchdogSec=30s would otherwise kill a long resumed drain."""
    rec = Recorder()
    rec.pending = "asg-terminate"
    w, _, notes = make(tmp_path, fake, reactions=rec)
    seen: list[tuple[list[str], bool]] = []
    rec.resume = lambda: seen.append((list(notes.sent), w.healthy())) or True  # type: ignore[method-assign]
    w.term.set()  # systemd stops us once the leave is done
    assert w.run() == 0
    assert seen == [(["READY", "WATCHDOG"], True)]
    assert w.left and fake.requests == []  # left: no polling at all


def test_nothing_to_resume_polls_and_sends_ready_after_the_first_good_poll(tmp_path: Path, fake: FakeImds) -> None:
    w, rec, notes = make(tmp_path, fake, shutting_down=lambda: False)
    w.term.set()
    assert w.run() == 0
    assert rec.calls == [] and notes.sent[:2] == ["READY", "WATCHDOG"] and w.ready
