"""The watcher loop: poll the monitors, dispatch their events, answer SIGTERM.

Every ``watch.poll_interval_s`` the loop asks each due monitor (:mod:`.monitors`) once; the
advisories (rebalance, scheduled events) every tenth poll. An event is dispatched once per key:
``leave`` runs the leave sequence, ``cordon`` cordons the Node, ``ignore`` logs it.

**Health.** A poll is good when IMDS answered every monitor (a malformed answer still counts as
an answer: it is handled by rule). ``READY=1`` follows the first good poll; ``WATCHDOG=1`` is
sent while the last good poll is at most three intervals old, or while a leave runs (the leave
is the work then; its own deadline bounds it). Nothing else runs on the poll thread: the
periodic operations (:mod:`.operations`) have their own thread, so termination detection is never
blocked by a hosts refresh or an etcd gc.

**SIGTERM.** systemd sends it both when the machine shuts down and when only the service stops
(``systemctl restart`` after a package upgrade). The watcher leaves only in the first case
(:func:`.reactions.system_is_shutting_down`); otherwise it exits without draining. See
docs/leave.md.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from herd_agent.config.loader import Config
from herd_agent.discovery.imds import ImdsClient, ImdsError
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.notify import Notifier
from herd_agent.logs import RateLimitedLogger
from herd_agent.watch.events import CORDON, LEAVE, TerminationEvent
from herd_agent.watch.monitors import (
    Monitor,
    RebalanceMonitor,
    ScheduledEventsMonitor,
    SpotMonitor,
    TargetLifecycleMonitor,
)
from herd_agent.watch.periodic import PeriodicWorker

log = logging.getLogger(__name__)


class Reactions(Protocol):
    """What the loop can do (default :class:`herd_agent.watch.reactions.LeaveReactions`)."""

    def leave(self, reason: str, deadline: float | None, complete_hook: bool, stopping: bool) -> None:
        """Run the leave (blocking); raises when it could not run."""
        ...

    def cordon(self, why: str) -> None:
        """Cordon the Node; raises on failure."""
        ...

    def unfinished(self) -> str | None:
        """The reason of a journaled unfinished leave, or None."""
        ...

    def resume(self) -> bool | None:
        """Finish an unfinished leave: None when none, True when the hook was completed."""
        ...

    def confirm_termination(self) -> str | None:
        """The Auto Scaling lifecycle state, "" when unknown, None when the call failed."""
        ...


class Watcher:
    """The watcher.

    Args:
        root: host root; cfg: effective config.
        imds: the poll's IMDS client (default from ``imds.*``).
        notifier: systemd notifier.
        reactions: leave/cordon/resume/confirm (default over the leave package).
        monitors: override the monitor list (tests); default :meth:`default_monitors`.
        worker: override the periodic worker (tests); default the hosts refresh, etcd gc and
            metrics operations with their own IMDS client.
        shutting_down: ``() -> bool``, asked on SIGTERM (default asks systemd).
        clock: epoch seconds; monotonic: monotonic seconds.
    """

    def __init__(self, root: HostRoot, cfg: Config, *, imds: ImdsClient | None = None,
                 notifier: Notifier | None = None, reactions: Reactions | None = None,
                 monitors: Sequence[Monitor] | None = None, worker: PeriodicWorker | None = None,
                 shutting_down: Callable[[], bool] | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.root, self.cfg = root, cfg
        self.imds = imds or ImdsClient.from_config(cfg)
        self.notifier = notifier or Notifier()
        if reactions is None:
            from herd_agent.watch.reactions import LeaveReactions

            reactions = LeaveReactions(root, cfg, self.imds, self.notifier)
        self.reactions = reactions
        if shutting_down is None:
            from herd_agent.watch.reactions import system_is_shutting_down as shutting_down
        self._shutting_down = shutting_down
        self.clock, self.monotonic = clock, monotonic
        self.interval = float(cfg.get("watch.poll_interval_s"))
        self.limited = RateLimitedLogger(log, interval=60, clock=monotonic)
        self.monitors = list(monitors) if monitors is not None else self.default_monitors()
        self.worker = worker if worker is not None else self._default_worker()
        self.term = threading.Event()
        self.last_good_poll: float | None = None
        self.last_good_poll_epoch: float | None = None
        self.ready = False
        self._notified = False
        self.leaving = False
        self.left = False
        self.instance_id: str | None = None
        self.handled: set[str] = set()
        self.polls = 0

    def default_monitors(self) -> list[Monitor]:
        """Spot first (it carries the nearest deadline), then the target lifecycle state, then
        the advisories."""
        return [
            SpotMonitor(self.imds, self.clock),
            TargetLifecycleMonitor(self.imds, self.limited, self.reactions.confirm_termination, self.monotonic),
            RebalanceMonitor(self.imds, self.cfg.get("watch.on_rebalance")),
            ScheduledEventsMonitor(self.imds, self.cfg.get("watch.on_maintenance"), self.limited),
        ]

    def _default_worker(self) -> PeriodicWorker:
        from herd_agent.watch.operations import WatcherOperations

        ops = WatcherOperations(self.root, self.cfg, ImdsClient.from_config(self.cfg), lambda: self.instance_id,
                                healthy=self.healthy, last_poll=lambda: self.last_good_poll_epoch, clock=self.clock)
        return PeriodicWorker(ops.operations())

    # --- health ---------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """Polls are succeeding (the last good one is at most three intervals old), or a leave runs."""
        if self.leaving:
            return True
        return self.last_good_poll is not None and self.monotonic() - self.last_good_poll <= 3 * self.interval + 5

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT set :attr:`term`; the loop decides what to do."""
        signal.signal(signal.SIGTERM, lambda *_: self.term.set())
        signal.signal(signal.SIGINT, lambda *_: self.term.set())

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Poll until terminated or left; returns the exit code."""
        pending = self._guard("resume", self.reactions.unfinished)
        if pending:
            # Resuming may take the whole drain budget: tell systemd we are up (the start timeout
            # would kill us) and keep the watchdog fed while the leave runs.
            self._notify_ready(f"resuming an unfinished {pending} leave")
            self.leaving = True
            try:
                self.left = bool(self._guard("resume", self.reactions.resume))
            finally:
                self.leaving = False
        while not self.left:
            self.poll_once()
            if self.left:
                break
            if self.term.is_set() or self.term.wait(self.interval):
                self.worker.stop(timeout=1)
                return self.on_sigterm()
        self.worker.stop(timeout=1)
        self.notifier.stopping("left the cluster")
        # Nothing more to watch: stay until systemd stops us, so Restart= does not loop.
        self.term.wait()
        return 0

    def poll_once(self) -> list[TerminationEvent]:
        """Ask each due monitor once, then dispatch what they returned; returns those events.

        Never raises: IMDS trouble makes the poll bad (logged rate-limited; the events already
        seen are still dispatched), and a bug in a monitor is logged and the next monitor asked.
        ``READY=1`` goes out before the first dispatch, so a leave never runs under the start
        timeout.
        """
        seen: list[TerminationEvent] = []
        good = False
        try:
            if self.instance_id is None:
                self.instance_id = self.imds.instance_id()
            for monitor in self.monitors:
                if self.polls % monitor.every:
                    continue
                try:
                    event = monitor.check()
                except ImdsError:
                    raise
                except Exception as exc:  # a bug must not stop the watching
                    self.limited.log(logging.ERROR, f"bug:{monitor.name}", "monitor %s failed: %r", monitor.name, exc)
                    continue
                if event is not None:
                    seen.append(event)
            good = True
        except ImdsError as exc:
            self.limited.log(logging.WARNING, "imds", "IMDS poll failed: %s", exc)
        finally:
            self.polls += 1
        if good:
            self.limited.reset("imds")
            self.last_good_poll, self.last_good_poll_epoch = self.monotonic(), self.clock()
        if good or seen:
            self._become_ready()
        for event in seen:
            self.dispatch(event)
            if self.left:
                break
        return seen

    def _notify_ready(self, status: str) -> None:
        if not self._notified:
            self._notified = True
            self.notifier.ready(status)
            self.notifier.start_watchdog(self.healthy)

    def _become_ready(self) -> None:
        if self.ready or self.instance_id is None:
            return
        self.ready = True
        self._notify_ready(f"watching {self.instance_id} every {self.interval:g}s")
        self.worker.start()  # the periodic operations need the instance id the poll read
        log.info("watching for termination every %gs", self.interval)

    def dispatch(self, event: TerminationEvent) -> None:
        """React to ``event`` once per key; a leave that could not start is tried again on the
        next poll that still sees the event."""
        if event.key in self.handled:
            return
        self.handled.add(event.key)
        log.warning("%s; reaction: %s", event.detail, event.reaction)
        if event.reaction == LEAVE:
            if not self._leave(event.reason, event.deadline, event.complete_hook):
                self.handled.discard(event.key)
        elif event.reaction == CORDON:
            self._guard("cordon", lambda: self.reactions.cordon(event.reason))

    def _leave(self, reason: str, deadline: float | None, complete_hook: bool, *, stopping: bool = False) -> bool:
        """Run the leave; False when it raised (it could not start)."""
        self.leaving = True
        self.worker.pause()
        try:
            self.reactions.leave(reason, deadline, complete_hook, stopping)
            if complete_hook:
                self.left = True
            return True
        except Exception as exc:
            self.limited.log(logging.ERROR, f"leave:{reason}", "leave (%s) failed: %s", reason, exc)
            return False
        finally:
            self.leaving = False
            if not self.left:
                self.worker.resume()

    @staticmethod
    def _guard(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            log.error("%s failed: %s", what, exc)
            return None

    def on_sigterm(self) -> int:
        """SIGTERM: leave when the machine shuts down; exit quietly when only the service stops."""
        if self.left:
            return 0
        if self._shutting_down():
            log.warning("the machine is shutting down: leaving the cluster")
            self.notifier.stopping("shutting down: leaving the cluster")
            deadline = self.clock() + float(self.cfg.get("leave.stop_timeout_s")) - 10
            self._leave("shutdown", deadline, True, stopping=True)
        else:
            log.info("the service is stopping but the machine is not shutting down: not draining")
            self.notifier.stopping("service stop (not a shutdown): not draining")
        return 0
