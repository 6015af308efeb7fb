"""Periodic operations, run off the poll thread.

Each periodic job (hosts refresh, etcd gc, metrics) is a named :class:`PeriodicOperation` with its
period and rate-limited error logging, as WALinuxAgent's ``ga/periodic_operation.py`` does.
:class:`PeriodicWorker` runs a list of them on one worker thread, so a slow job (a hosts refresh
inside the discovery retry loop, an etcd gc waiting on an unhealthy cluster) never delays the
IMDS poll that detects termination.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from herd_agent.logs import RateLimitedLogger

log = logging.getLogger(__name__)


class PeriodicOperation:
    """``operation()`` every ``period_s`` seconds.

    Args:
        name: for logs ("hosts-refresh").
        operation: the job; an exception is logged (at most once a minute per operation, the rest
            counted) and the job runs again after its period.
        period_s: seconds between the end of one run and the start of the next.
        first_delay_s: seconds from start to the first run (0: at once).
        clock: monotonic seconds.
    """

    def __init__(self, name: str, operation: Callable[[], None], period_s: float, *, first_delay_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, limited: RateLimitedLogger | None = None) -> None:
        self.name = name
        self.period_s = float(period_s)
        self._operation = operation
        self._clock = clock
        self._limited = limited or RateLimitedLogger(log, interval=60, clock=clock)
        self.next_run = clock() + first_delay_s
        self.runs = 0
        self.failures = 0

    def due(self) -> bool:
        """The period has passed."""
        return self._clock() >= self.next_run

    def run(self) -> bool:
        """Run once now; True when it succeeded. Never raises."""
        try:
            self._operation()
            self._limited.reset(self.name)
            return True
        except Exception as exc:
            self.failures += 1
            self._limited.log(logging.WARNING, self.name, "periodic operation %s failed: %s", self.name, exc)
            return False
        finally:
            self.runs += 1
            self.next_run = self._clock() + self.period_s


class PeriodicWorker:
    """Runs due operations, in list order, on one daemon thread until :meth:`stop`.

    :meth:`pause` keeps due operations from starting (one already running finishes); the watcher
    pauses the worker while a leave runs.
    """

    def __init__(self, operations: Sequence[PeriodicOperation], *, clock: Callable[[], float] = time.monotonic,
                 max_sleep_s: float = 5.0) -> None:
        self.operations = list(operations)
        self._clock = clock
        self._max_sleep_s = max_sleep_s
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeriodicWorker:
        """Start the thread (no-op without operations); returns self."""
        if self.operations and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="periodic", daemon=True)
            self._thread.start()
        return self

    def run_due(self) -> list[str]:
        """Run every due operation once (unless paused); returns their names."""
        ran = []
        for op in self.operations:
            if self._stop.is_set() or self._paused.is_set():
                break
            if op.due():
                op.run()
                ran.append(op.name)
        return ran

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_due()
            wait = min(op.next_run for op in self.operations) - self._clock()
            self._stop.wait(min(max(wait, 0.05), self._max_sleep_s))

    def pause(self) -> None:
        """Start no more operations until :meth:`resume`."""
        self._paused.set()

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self._paused.clear()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; waits up to ``timeout`` seconds for a running operation (daemon
        thread: it never holds up process exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
