"""How long the drain may take. Pure.

The leave must finish before the first of its deadlines (monotonic seconds):

- the lifecycle hook's global timeout: start of the action + min(172800, 100 × heartbeat
  timeout) — heartbeats extend the heartbeat timeout, never the global one (EC2 Auto Scaling docs);
- a spot interruption: the notice's ``time`` (two minutes after the notice);
- a stop by systemd: when the stop began + the unit's ``TimeoutStopSec`` (``leave.stop_timeout_s``).

The drain gets what is left minus ``reserve`` for the steps after it (etcd, Node deletion,
stopping k3s, completing the hook).
"""

from __future__ import annotations

from collections.abc import Iterable


def global_timeout_s(heartbeat_timeout_s: float) -> float:
    """A lifecycle action's global timeout: min(48 h, 100 × heartbeat timeout), seconds."""
    return min(172800.0, 100.0 * heartbeat_timeout_s)


def heartbeat_interval_s(heartbeat_timeout_s: float) -> float:
    """How often to heartbeat a hook, seconds: max(30 s, heartbeat timeout / 3), and never more
    than half the timeout (the two agree for timeouts of 60 s and up; at the 30 s minimum a beat
    every 30 s would land exactly on the expiry, so it beats every 15 s)."""
    return min(max(30.0, heartbeat_timeout_s / 3), heartbeat_timeout_s / 2)


def leave_deadline(deadlines: Iterable[float | None]) -> float | None:
    """The earliest of the known deadlines (None entries ignored); None when there is none."""
    known = [d for d in deadlines if d is not None]
    return min(known) if known else None


def drain_budget(now: float, deadline: float | None, reserve_s: float, cap_s: float = 3600.0) -> float:
    """Seconds the drain may use: ``deadline - now - reserve_s``, at least 0, at most ``cap_s``
    (used when there is no deadline at all)."""
    if deadline is None:
        return cap_s
    return max(0.0, min(cap_s, deadline - now - reserve_s))
