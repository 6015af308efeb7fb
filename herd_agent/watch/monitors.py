"""One monitor per IMDS termination signal.

Each monitor reads one typed IMDS property and returns a :class:`TerminationEvent` or None; the
loop (:mod:`.loop`) only dispatches. The shape follows aws-node-termination-handler's
``pkg/monitor`` (one small type per signal). Signals and their AWS sources:

- :class:`TargetLifecycleMonitor`: ``autoscaling/target-lifecycle-state`` (Auto Scaling user
  guide, "Retrieve the target lifecycle state through instance metadata"). ``Terminated`` is the
  state the instance is moving to; it is confirmed with one ``DescribeAutoScalingInstances``
  (``Terminating*``) before the watcher acts.
- :class:`SpotMonitor`: ``spot/instance-action`` (EC2 user guide, "Spot Instance interruption
  notices"): 404 until EC2 interrupts, then ``{"action", "time"}`` two minutes ahead.
- :class:`RebalanceMonitor`: ``events/recommendations/rebalance`` (404 until EC2 recommends it).
- :class:`ScheduledEventsMonitor`: ``events/maintenance/scheduled`` (a list of events).

Malformed answers (:class:`ImdsBadAnswer`) follow the rules in docs/leave.md, "Malformed
signals": a spot notice counts as an interruption with the earliest safe deadline; a rebalance
answer counts as a recommendation; a lifecycle state or scheduled-events answer is ignored and
logged rate-limited. An unreachable IMDS (:class:`ImdsError`) propagates: the poll failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from herd_agent.discovery import imds as paths
from herd_agent.discovery.imds import ImdsBadAnswer, ImdsClient
from herd_agent.logs import RateLimitedLogger
from herd_agent.watch.events import LEAVE, SPOT_NOTICE_S, TerminationEvent

log = logging.getLogger(__name__)

ADVISORY_EVERY = 10  # polls between two reads of the rebalance and maintenance paths
CONFIRM_EVERY_S = 5.0  # at most one DescribeAutoScalingInstances per this many seconds


class Monitor(Protocol):
    """One IMDS signal.

    Attributes:
        name: for logs; every: check on every ``every``-th poll (1 = each poll).
    """

    name: str
    every: int

    def check(self) -> TerminationEvent | None:
        """Read the signal once.

        Raises:
            ImdsError: IMDS did not answer (the poll failed); never ImdsBadAnswer.
        """
        ...


def _malformed(exc: ImdsBadAnswer, path: str) -> ImdsBadAnswer:
    """``exc`` when it is about ``path`` itself; any other bad answer (the session token) means
    the signal was not read at all, which fails the poll instead."""
    if exc.path != path:
        raise exc
    return exc


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TargetLifecycleMonitor:
    """``Terminated`` target lifecycle state, confirmed by Auto Scaling.

    Args:
        imds: the client; limited: rate-limited logger shared by the watcher.
        confirm: ``() -> LifecycleState or None`` — the instance's state per
            ``DescribeAutoScalingInstances`` (None: the call failed; it logs why); asked at most
            once per :data:`CONFIRM_EVERY_S` while Auto Scaling disagrees.
        clock: monotonic seconds.
    """

    name, every = "target-lifecycle-state", 1

    def __init__(self, imds: ImdsClient, limited: RateLimitedLogger, confirm: Callable[[], str | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.imds, self.limited, self.confirm, self.clock = imds, limited, confirm, clock
        self._last_confirm: float | None = None

    def check(self) -> TerminationEvent | None:  # noqa: D102 (see Monitor.check)
        try:
            state = self.imds.target_lifecycle_state()
        except ImdsBadAnswer as exc:
            _malformed(exc, paths.TARGET_LIFECYCLE_STATE)
            self.limited.log(logging.WARNING, self.name, "%s; ignored (docs/leave.md, malformed signals)", exc)
            return None
        if state != "Terminated":
            return None
        now = self.clock()
        if self._last_confirm is not None and now - self._last_confirm < CONFIRM_EVERY_S:
            return None
        self._last_confirm = now
        confirmed = self.confirm()
        if confirmed is None or not confirmed.startswith("Terminating"):
            self.limited.log(logging.INFO, "confirm", "IMDS says Terminated, Auto Scaling says %s; waiting",
                             confirmed or "unknown")
            return None
        self.limited.reset("confirm")
        return TerminationEvent("asg-terminate", "asg", LEAVE, None, True,
                                f"Auto Scaling is terminating this instance ({confirmed})")


class SpotMonitor:
    """A spot interruption notice: leave before its ``time``.

    Args:
        imds: the client; clock: epoch seconds (the malformed rule's deadline).
    """

    name, every = "spot-instance-action", 1

    def __init__(self, imds: ImdsClient, clock: Callable[[], float]) -> None:
        self.imds, self.clock = imds, clock
        self._first_malformed: float | None = None

    def check(self) -> TerminationEvent | None:  # noqa: D102 (see Monitor.check)
        try:
            notice = self.imds.spot_instance_action()
        except ImdsBadAnswer as exc:
            _malformed(exc, paths.SPOT_INSTANCE_ACTION)
            # The path answers only once EC2 interrupts: something is coming. Assume the worst.
            if self._first_malformed is None:
                self._first_malformed = self.clock()
            deadline = self._first_malformed + SPOT_NOTICE_S
            return TerminationEvent("spot-terminate", "spot", LEAVE, deadline, True,
                                    f"{exc}; counted as a spot interruption with deadline {_iso(deadline)}",
                                    malformed=True)
        if notice is None:
            return None
        return TerminationEvent(f"spot-{notice.action}", "spot", LEAVE, notice.time, True,
                                f"spot interruption notice: {notice.action} at {_iso(notice.time)}")


class RebalanceMonitor:
    """A rebalance recommendation: ``reaction`` (config ``watch.on_rebalance``)."""

    name, every = "rebalance", ADVISORY_EVERY

    def __init__(self, imds: ImdsClient, reaction: str) -> None:
        self.imds, self.reaction = imds, reaction

    def check(self) -> TerminationEvent | None:  # noqa: D102 (see Monitor.check)
        try:
            rec = self.imds.rebalance_recommendation()
        except ImdsBadAnswer as exc:
            _malformed(exc, paths.REBALANCE)
            return TerminationEvent("rebalance", "rebalance", self.reaction, None, False,
                                    f"{exc}; counted as a rebalance recommendation", malformed=True)
        if rec is None:
            return None
        return TerminationEvent("rebalance", "rebalance", self.reaction, None, False,
                                f"rebalance recommendation (noticeTime {_iso(rec.notice_time)})")


class ScheduledEventsMonitor:
    """Active scheduled maintenance events: ``reaction`` (config ``watch.on_maintenance``).

    Returns one new active event per check (the next check returns the next one).
    """

    name, every = "scheduled-events", ADVISORY_EVERY

    def __init__(self, imds: ImdsClient, reaction: str, limited: RateLimitedLogger) -> None:
        self.imds, self.reaction, self.limited = imds, reaction, limited
        self._seen: set[str] = set()

    def check(self) -> TerminationEvent | None:  # noqa: D102 (see Monitor.check)
        try:
            events = self.imds.scheduled_events()
        except ImdsBadAnswer as exc:
            _malformed(exc, paths.SCHEDULED_EVENTS)
            self.limited.log(logging.WARNING, self.name, "%s; ignored (docs/leave.md, malformed signals)", exc)
            return None
        for event in events:
            if event.state == "active" and event.event_id not in self._seen:
                self._seen.add(event.event_id)
                return TerminationEvent("maintenance", f"event:{event.event_id}", self.reaction, None, False,
                                        f"scheduled event {event.code} {event.event_id} (not before "
                                        f"{event.not_before or 'unknown'})")
        return None
