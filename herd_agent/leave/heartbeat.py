"""Heartbeats for the terminating lifecycle action, beside the step engine (its own thread).

Cadence (:func:`herd_agent.drain.budget.heartbeat_interval_s`): max(30 s, heartbeat timeout / 3),
never more than half the timeout, from the hook's ``HeartbeatTimeout`` as ``DescribeLifecycleHooks``
reports it (AWS seconds), then scaled by :func:`herd_agent.failpoints.scaled` (x 1.0 outside
tests); or ``leave.heartbeat_interval_s`` when set. The first beat goes at once: a resumed leave
cannot know how long it was down. Each ``RecordLifecycleActionHeartbeat`` resets the action's
heartbeat timeout, never its global timeout (EC2 Auto Scaling docs). A failed beat is logged and
the next one comes on time; an answer of "no active Lifecycle Action" ends the beats (the action
is over: completed, or timed out).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from herd_agent.drain.budget import heartbeat_interval_s
from herd_agent.failpoints import scaled

log = logging.getLogger(__name__)


def interval_for(hook: dict[str, Any], override_s: float | None) -> float:
    """Seconds between beats for a journaled ``hook`` (``heartbeat_timeout_s`` in AWS seconds)."""
    if override_s:
        return float(override_s)
    return scaled(heartbeat_interval_s(float(hook["heartbeat_timeout_s"])))


class Heartbeater:
    """Beat ``hook`` for ``instance_id`` every ``interval_s`` until :meth:`stop`.

    Args:
        lifecycle: ``() -> LifecycleHooks`` (built in the thread on the first beat).
        hook: the journaled hook ``{name, group, heartbeat_timeout_s, ...}``.
        instance_id: ours.
        interval_s: wall-clock seconds between beats.
        on_beat: called after each accepted beat (the watcher extends systemd's stop timeout).
    """

    def __init__(self, lifecycle: Callable[[], Any], hook: dict[str, Any], instance_id: str, interval_s: float,
                 on_beat: Callable[[float], None] | None = None) -> None:
        self.lifecycle = lifecycle
        self.hook = hook
        self.instance_id = instance_id
        self.interval_s = interval_s
        self.on_beat = on_beat or (lambda _i: None)
        self.beats = 0
        self._alive = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        """False once a beat found no active lifecycle action."""
        return self._alive

    def start(self) -> Heartbeater:
        """Start beating in a daemon thread; the first beat at once (a resumed leave cannot know how
        long it was down), then one every interval."""
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self.interval_s
            try:
                if not self.lifecycle().heartbeat(self.hook["group"], self.hook["name"], self.instance_id):
                    log.info("no active lifecycle action to heartbeat; stopping heartbeats")
                    self._alive = False
                    return
                self.beats += 1
                log.info("lifecycle hook %s: heartbeat", self.hook["name"])
                self.on_beat(self.interval_s)
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop beating and wait (at most ``timeout`` s) for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
