"""sd_notify over a real AF_UNIX datagram socket set as NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from herd_agent.host.notify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_stopping_extend(notify_socket: socket.socket) -> None:
    n = Notifier()
    assert n.ready("joined")
    assert recv(notify_socket) == "READY=1\nSTATUS=joined"
    n.status("waiting for Node Ready (12s)")
    assert recv(notify_socket) == "STATUS=waiting for Node Ready (12s)"
    n.extend_timeout(90)
    assert recv(notify_socket) == "EXTEND_TIMEOUT_USEC=90000000"
    n.stopping("leaving: drain")
    assert recv(notify_socket) == "STOPPING=1\nSTATUS=leaving: drain"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"herd-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert Notifier().ready()
        assert recv(sock) == "READY=1"
    finally:
        sock.close()


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier().ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert Notifier.watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert Notifier.watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 10.0
    assert Notifier.watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert Notifier.watchdog_interval({}) is None
    assert Notifier.watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_watchdog_pings_while_healthy_only(notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s → a ping every 0.1 s
    healthy = [True]
    n = Notifier()
    started = time.monotonic()
    assert n.start_watchdog(lambda: healthy[0])
    try:
        for _ in range(3):
            assert recv(notify_socket) == "WATCHDOG=1"
        # A ping is received no earlier than it was sent (a slow reader may get several at once):
        # three pings span at least two periods, or the notifier pings faster than half the interval.
        assert time.monotonic() - started >= 0.18
        healthy[0] = False
        # Drain anything sent before the flip, then expect silence for several periods.
        notify_socket.settimeout(0.35)
        try:
            while True:
                recv(notify_socket)
        except TimeoutError:
            pass
        with pytest.raises(TimeoutError):
            recv(notify_socket)
    finally:
        n.stop_watchdog()


def test_watchdog_off_without_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert Notifier().start_watchdog(lambda: True) is False
