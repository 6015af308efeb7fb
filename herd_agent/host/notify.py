"""systemd service notifications (sd_notify(3)) and the watchdog keep-alive.

Messages go through systemd-python's ``systemd.daemon.notify``, which reads ``NOTIFY_SOCKET``
(a path or an abstract ``@`` socket). Without ``NOTIFY_SOCKET`` every call is a no-op, so the same
code runs by hand and under systemd.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def _send(message: str) -> bool:
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    from systemd import daemon

    return bool(daemon.notify(message))


class Notifier:
    """Send READY/STATUS/STOPPING/WATCHDOG/EXTEND_TIMEOUT_USEC to the service manager.

    Args:
        send: ``send(message) -> bool``; default sends to ``NOTIFY_SOCKET`` when it is set.
    """

    def __init__(self, send: Callable[[str], bool] | None = None) -> None:
        self._send = send or _send
        self._watchdog_stop = threading.Event()
        self._watchdog_thread: threading.Thread | None = None

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (with an optional ``STATUS=``): start-up is done (Type=notify)."""
        return self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        """``STATUS=text``: the one-line state ``systemctl status`` shows."""
        return self._send(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the service is shutting down."""
        return self._send("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: ask for ``seconds`` more before the start/stop timeout fires.

        systemd(1) extends the running timeout so that it ends no earlier than ``seconds`` from
        now; send it again before that runs out to keep extending.
        """
        return self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: one keep-alive."""
        return self._send("WATCHDOG=1")

    @staticmethod
    def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
        """Seconds between keep-alives: half of ``WATCHDOG_USEC``, or None when the watchdog is off.

        ``WATCHDOG_PID``, when set, must be our pid (sd_watchdog_enabled(3)).
        """
        env = os.environ if environ is None else environ
        usec = env.get("WATCHDOG_USEC")
        if not usec:
            return None
        pid = env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 2 / 1_000_000 if value > 0 else None

    def start_watchdog(self, healthy: Callable[[], bool], interval: float | None = None) -> bool:
        """Send ``WATCHDOG=1`` every ``interval`` seconds (default half ``WATCHDOG_USEC``) while
        ``healthy()`` returns True; an unhealthy tick sends nothing, so systemd restarts us.

        Returns:
            False when the watchdog is not enabled for this process.
        """
        period = interval if interval is not None else self.watchdog_interval()
        if period is None:
            return False
        self._watchdog_stop.clear()

        def loop() -> None:
            while not self._watchdog_stop.is_set():
                try:
                    if healthy():
                        self.watchdog()
                except Exception:  # a failing health check is just "unhealthy"
                    log.exception("watchdog health check failed")
                self._watchdog_stop.wait(period)

        self._watchdog_thread = threading.Thread(target=loop, name="watchdog", daemon=True)
        self._watchdog_thread.start()
        return True

    def stop_watchdog(self) -> None:
        """Stop the keep-alive thread (waits for it)."""
        self._watchdog_stop.set()
        if self._watchdog_thread is not None:
            self._watchdog_thread.join()
            self._watchdog_thread = None
