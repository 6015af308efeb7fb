"""Each monitor against the strict fake IMDS: the event it returns, and the documented rule for a
malformed answer (docs/leave.md, "Malformed signals")."""

from __future__ import annotations

import logging

import pytest

from herd_agent.discovery import imds as paths
from herd_agent.discovery.imds import ImdsError
from herd_agent.logs import RateLimitedLogger
from herd_agent.watch.events import SPOT_NOTICE_S, TerminationEvent
from herd_agent.watch.monitors import RebalanceMonitor, ScheduledEventsMonitor, SpotMonitor, TargetLifecycleMonitor
from tests.fakes import FakeImds

NOW = 1796191000.0
log = logging.getLogger("test")

GARBAGE = {
    "not json": b"<html>oops</html>",
    "oversized": b"[" + b" " * (paths.MAX_BODY + 1) + b"]",
    "not utf-8": b"\xff\xfe\xfd",
    "a list": b"[]",
    "a dict": b'{"a": 1}',
    "an integer": b"7",
    "null": b"null",
}


def limited() -> RateLimitedLogger:
    return RateLimitedLogger(log, interval=60, clock=lambda: 0.0)


# --- spot ------------------------------------------------------------------------------------
def test_spot_quiet_then_notice() -> None:
    fake = FakeImds().missing(paths.SPOT_INSTANCE_ACTION)
    monitor = SpotMonitor(fake.client(), lambda: NOW)
    assert monitor.check() is None
    fake.answer(paths.SPOT_INSTANCE_ACTION, {"action": "terminate", "time": "2026-12-02T06:00:00Z"})
    event = monitor.check()
    assert event == TerminationEvent("spot-terminate", "spot", "leave", 1796191200.0, True,
                                     "spot interruption notice: terminate at 2026-12-02T06:00:00Z")


def test_spot_stop_leaves_with_the_stop_reason() -> None:
    fake = FakeImds().answer(paths.SPOT_INSTANCE_ACTION, {"action": "stop", "time": "2026-12-02T06:00:00+00:00"})
    event = SpotMonitor(fake.client(), lambda: NOW).check()
    assert event is not None
    assert (event.reason, event.deadline, event.complete_hook) == ("spot-stop", 1796191200.0, True)


@pytest.mark.parametrize("body", [*GARBAGE.values(), b'{"action": "terminate", "time": 1796191200}',
                                  b'{"action": ["terminate"], "time": "2026-12-02T06:00:00Z"}'],
                         ids=[*GARBAGE, "integer time", "list action"])
def test_malformed_spot_notice_is_an_interruption_with_the_earliest_deadline(body: bytes) -> None:
    now = [NOW]
    monitor = SpotMonitor(FakeImds().answer(paths.SPOT_INSTANCE_ACTION, body).client(), lambda: now[0])
    event = monitor.check()
    assert event is not None and event.malformed
    assert (event.reason, event.key, event.reaction, event.complete_hook) == ("spot-terminate", "spot", "leave", True)
    assert event.deadline == NOW + SPOT_NOTICE_S
    now[0] += 30  # the deadline counts from the first sighting, it does not slide
    assert monitor.check().deadline == NOW + SPOT_NOTICE_S  # type: ignore[union-attr]


def test_spot_imds_down_propagates() -> None:
    fake = FakeImds().answer(paths.SPOT_INSTANCE_ACTION, b"", status=503)
    with pytest.raises(ImdsError):
        SpotMonitor(fake.client(), lambda: NOW).check()


# --- target lifecycle state ------------------------------------------------------------------
def test_target_terminated_confirmed_by_auto_scaling() -> None:
    fake = FakeImds().answer(paths.TARGET_LIFECYCLE_STATE, "InService")
    asked: list[int] = []

    def confirm() -> str:
        asked.append(1)
        return "Terminating:Wait"

    monitor = TargetLifecycleMonitor(fake.client(), limited(), confirm)
    assert monitor.check() is None and not asked  # InService: no AWS call
    fake.answer(paths.TARGET_LIFECYCLE_STATE, "Terminated")
    event = monitor.check()
    assert event is not None and (event.reason, event.key, event.deadline, event.complete_hook) == (
        "asg-terminate", "asg", None, True)
    assert asked == [1]


@pytest.mark.parametrize("confirmed", ["InService", "", None])
def test_target_terminated_not_confirmed_waits_and_asks_again_at_most_every_5_s(confirmed: str | None) -> None:
    fake = FakeImds().answer(paths.TARGET_LIFECYCLE_STATE, "Terminated")
    now, asked = [0.0], []
    monitor = TargetLifecycleMonitor(fake.client(), limited(), lambda: asked.append(now[0]) or confirmed,
                                     clock=lambda: now[0])
    for _ in range(10):  # ten polls in a second: one AWS call
        assert monitor.check() is None
        now[0] += 0.1
    now[0] = 5.0
    assert monitor.check() is None
    assert asked == [0.0, 5.0]


def test_target_lifecycle_404_is_quiet() -> None:
    fake = FakeImds().missing(paths.TARGET_LIFECYCLE_STATE)
    assert TargetLifecycleMonitor(fake.client(), limited(), lambda: pytest.fail("no confirm")).check() is None


TEXT_GARBAGE = {k: v for k, v in GARBAGE.items() if k != "null"}  # "null" is a word: an unknown state


@pytest.mark.parametrize("body", [*TEXT_GARBAGE.values(), b"Terminated\nInService", b"Terminated now"],
                         ids=[*TEXT_GARBAGE, "two lines", "two words"])
def test_malformed_target_state_is_ignored_and_logged_rate_limited(body: bytes,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monitor = TargetLifecycleMonitor(FakeImds().answer(paths.TARGET_LIFECYCLE_STATE, body).client(), limited(),
                                     lambda: pytest.fail("a malformed state must not trigger a confirmation"))
    with caplog.at_level(logging.WARNING, logger="test"):
        assert monitor.check() is None
        assert monitor.check() is None
    lines = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert len(lines) == 1 and paths.TARGET_LIFECYCLE_STATE in lines[0].getMessage()


# --- rebalance -------------------------------------------------------------------------------
def test_rebalance_recommendation_with_configured_reaction() -> None:
    fake = FakeImds().missing(paths.REBALANCE)
    monitor = RebalanceMonitor(fake.client(), "cordon")
    assert monitor.check() is None
    fake.answer(paths.REBALANCE, {"noticeTime": "2026-12-02T06:00:00Z"})
    assert monitor.check() == TerminationEvent("rebalance", "rebalance", "cordon", None, False,
                                               "rebalance recommendation (noticeTime 2026-12-02T06:00:00Z)")


@pytest.mark.parametrize("body", GARBAGE.values(), ids=GARBAGE)
def test_malformed_rebalance_counts_as_a_recommendation(body: bytes) -> None:
    event = RebalanceMonitor(FakeImds().answer(paths.REBALANCE, body).client(), "leave").check()
    assert event is not None and event.malformed and (event.reason, event.reaction, event.complete_hook) == (
        "rebalance", "leave", False)


# --- scheduled events ------------------------------------------------------------------------
def entry(event_id: str, state: str = "active") -> dict[str, str]:
    return {"NotBefore": "21 Jan 2019 09:00:43 GMT", "Code": "system-reboot", "Description": "reboot",
            "EventId": event_id, "NotAfter": "21 Jan 2019 09:17:23 GMT", "State": state}


def test_scheduled_events_one_new_active_event_per_check() -> None:
    fake = FakeImds().answer(paths.SCHEDULED_EVENTS, [entry("instance-event-1", "completed"),
                                                      entry("instance-event-2"), entry("instance-event-3")])
    monitor = ScheduledEventsMonitor(fake.client(), "cordon", limited())
    keys = [e.key for e in iter(monitor.check, None)]
    assert keys == ["event:instance-event-2", "event:instance-event-3"]
    assert monitor.check() is None


@pytest.mark.parametrize("body", [*GARBAGE.values(), b'{"EventId": "instance-event-1", "Code": "x"}',
                                  b'[{"EventId": 1, "Code": "x"}]', b'["instance-event-1"]'],
                         ids=[*GARBAGE, "a dict", "integer id", "string entries"])
def test_malformed_scheduled_events_are_ignored(body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    if body == b"[]":
        pytest.skip("an empty list is a valid answer")
    monitor = ScheduledEventsMonitor(FakeImds().answer(paths.SCHEDULED_EVENTS, body).client(), "leave", limited())
    with caplog.at_level(logging.WARNING, logger="test"):
        assert monitor.check() is None
        assert monitor.check() is None
    assert len([r for r in caplog.records if "ignored" in r.getMessage()]) == 1
