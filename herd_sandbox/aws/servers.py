"""Threaded loopback HTTP servers for the sandbox, with a stop that leaves nothing behind.

werkzeug's threaded server keeps one handler thread per HTTP/1.1 keep-alive connection, and those
threads outlive ``shutdown()``. :class:`LoopbackServer` tracks every accepted connection and its
thread, so :meth:`LoopbackServer.stop` closes the listening socket, shuts every open connection
down and joins every thread it started.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

THREAD_PREFIX = "herd-sandbox-"


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's handler without the per-request access log line."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None

    def log(self, type: str, message: str, *args: Any) -> None:  # noqa: A002 - werkzeug's signature
        if type == "error":
            super().log(type, message, *args)


class _TrackingServer(ThreadedWSGIServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, app: Any, name: str) -> None:
        super().__init__(host, port, app, handler=_QuietHandler)
        self._name = name
        self._mu = threading.Lock()
        self._open: dict[socket.socket, threading.Thread] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_one,
            args=(request, client_address),
            name=f"{THREAD_PREFIX}{self._name}-conn",
            daemon=True,
        )
        with self._mu:
            self._open[request] = thread
        thread.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._mu:
                self._open.pop(request, None)

    def drop_connections(self, timeout: float) -> None:
        with self._mu:
            items = list(self._open.items())
        for sock, _thread in items:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _sock, thread in items:
            thread.join(timeout)


class LoopbackServer:
    """One WSGI app served on ``host:port`` (host must be in 127.0.0.0/8) by a background thread.

    Args:
        app: the WSGI application.
        host: a loopback IPv4 address such as ``"127.0.0.1"`` or ``"127.16.0.5"``.
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        name: a label used in thread names (``herd-sandbox-<name>…``).

    Raises:
        ValueError: ``host`` is not a loopback address (the sandbox never binds anything else).
        OSError: the address cannot be bound.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, name: str = "http") -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"sandbox servers bind loopback only, not {host}")
        self._server = _TrackingServer(host, port, app, name)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{THREAD_PREFIX}{name}",
            daemon=True,
        )
        self._stopped = False

    @property
    def url(self) -> str:
        """``http://host:port`` of this server."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> LoopbackServer:
        """Start serving in the background; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close the listening socket, drop open connections and join all threads.

        Idempotent. ``timeout`` (seconds) bounds each join.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()
        self._server.drop_connections(timeout)
