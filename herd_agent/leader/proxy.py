"""The fencing proxy: helm reaches the API server only through the leader, which fences each of
helm's writes as it passes.

Why: the fence checks the Lease right before the leader *starts* a helm command, but helm then
sends its own requests for seconds or minutes. A leader frozen (SIGSTOP, a VM pause) while a helm
child runs would wake after another leader took over; the helm child, frozen with it or not,
would go on writing under the old epoch until the leader noticed and killed it. With the proxy:

- helm gets a kubeconfig (0600, under ``leader.work_dir``) whose server is this proxy on
  ``https://127.0.0.1:<port>``, with a per-process certificate authority and a random bearer
  token; helm never sees the cluster's credentials;
- every request is relayed with the leader's own credentials through
  :class:`~herd_agent.leader.fence.FencedTransport`: a write (:func:`~herd_agent.leader.fence.is_fenced_write`)
  goes out only while the fence allows it, checked right before it is sent upstream. A refused
  write gets a Kubernetes ``Status`` 403 (reason ``Forbidden``), so helm fails the command and
  the release record stays as it was (the next leader recovers it, :mod:`herd_agent.leader.stuck`);
- the proxy lives in the leader's process: frozen with it, dead with it. A helm child that
  outlives a killed leader (kill -9 of the main process only) has no way to the API at all.

Responses are streamed (helm 4's ``--wait=watcher`` and helm 3's wait use watches), bodies are
passed through unchanged (``Content-Encoding`` included), and the connection to helm is HTTP/1.1
with keep-alive. Upgrade requests (exec, port-forward) are refused: helm's install, upgrade,
rollback, uninstall and reads do not use them. The server is the standard library's
``http.server`` on a TLS socket; the upstream client is lightkube's httpx client.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import os
import secrets
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import yaml

from herd_agent.host.fsroot import HostRoot
from herd_agent.leader.fence import Deposed
from herd_agent.redact import register_secret

log = logging.getLogger(__name__)

PROXY_KUBECONFIG = "helm-kubeconfig"
CERT_LIFETIME_S = 10 * 365 * 24 * 3600.0  # the key lives in this process's memory only
IDLE_TIMEOUT_S = 300.0  # a keep-alive connection from helm with no request for this long is closed
# RFC 9110 7.6.1 hop-by-hop fields, plus those the proxy sets itself
_NOT_RELAYED = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
                "trailer", "transfer-encoding", "upgrade", "host", "content-length", "authorization"}


def status_body(code: int, reason: str, message: str) -> bytes:
    """A Kubernetes ``Status`` object (meta/v1), the error body client-go decodes into its message."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


class FencingProxy:
    """A loopback HTTPS reverse proxy from helm to the API server, fencing helm's writes.

    Args:
        upstream: an ``httpx2.Client`` for the API server (base URL, credentials, TLS) whose
            transport is a :class:`~herd_agent.leader.fence.FencedTransport`
            (:func:`herd_agent.kube.http_client`); its read timeout should be None (watches).
        root: host root, for the kubeconfig written for helm.
        work_dir: host directory (mode 0700) for that kubeconfig (``leader.work_dir``).
    """

    def __init__(self, upstream: httpx2.Client, root: HostRoot, work_dir: str) -> None:
        self.upstream = upstream
        self.root = root
        self.kubeconfig = f"{work_dir.rstrip('/')}/{PROXY_KUBECONFIG}"
        self.token = secrets.token_urlsafe(32)
        register_secret(self.token)
        self.refused = 0
        self._server: _Server | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The loopback port helm connects to (0 before :meth:`start`)."""
        return self._server.server_address[1] if self._server else 0

    def start(self) -> str:
        """Listen on ``127.0.0.1`` (a free port) with a fresh certificate, write helm's kubeconfig
        (0600) and serve in a daemon thread.

        Returns:
            The host path of the kubeconfig helm must use (``--kubeconfig``).
        Raises:
            HostWriteError: the kubeconfig could not be written.
        """
        from herd_agent.certs import issue_certificate, new_ca

        ca_cert, ca_key = new_ca("herd-agent leader fencing proxy", CERT_LIFETIME_S)
        cert, key = issue_certificate(ca_cert, ca_key, "localhost", "127.0.0.1", CERT_LIFETIME_S)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        self._load_chain(context, cert, key)
        server = _Server(("127.0.0.1", 0), self)
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": "herd-leader",
               "clusters": [{"name": "herd-leader", "cluster": {
                   "server": f"https://127.0.0.1:{self.port}",
                   "certificate-authority-data": base64.b64encode(ca_cert).decode()}}],
               "users": [{"name": "herd-leader", "user": {"token": self.token}}],
               "contexts": [{"name": "herd-leader", "context": {"cluster": "herd-leader", "user": "herd-leader"}}]}
        self.root.write(self.kubeconfig, yaml.safe_dump(doc), mode=0o600, only_if_changed=False)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="fencing-proxy",
                         daemon=True).start()
        log.info("fencing proxy for helm on 127.0.0.1:%d", self.port)
        return str(self.root.path(self.kubeconfig))

    def _load_chain(self, context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
        """``load_cert_chain`` reads files only: the key is written 0600 in the 0700 work dir,
        loaded and removed at once."""
        path = self.root.path(self.kubeconfig).with_name(f".proxy-{os.getpid()}.pem")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key + cert)
            context.load_cert_chain(str(path))
        finally:
            path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop listening, close the upstream client, remove helm's kubeconfig."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.upstream.close()
        self.root.remove(self.kubeconfig)

    # -- one request -------------------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        """True when ``header`` is ``Bearer <our token>`` (constant-time compare)."""
        return hmac.compare_digest((header or "").encode(), f"Bearer {self.token}".encode())

    def relay(self, h: _Handler) -> None:
        """Relay one request from helm: check the token, fence a write right before it is sent
        upstream, stream the answer back."""
        if not self.authorized(h.headers.get("Authorization")):
            h.close_connection = True  # its body, if any, is not read
            return h.answer(401, "Unauthorized", "the fencing proxy takes only the token of its kubeconfig")
        if h.headers.get("Upgrade"):
            h.close_connection = True
            return h.answer(501, "NotImplemented", "the fencing proxy relays no upgraded connections")
        body = h.read_body()
        headers = [(k, v) for k, v in h.headers.items() if k.lower() not in _NOT_RELAYED]
        if "Accept-Encoding" not in h.headers:  # bodies pass through as they come: ask for none helm did not
            headers.append(("Accept-Encoding", "identity"))
        request = self.upstream.build_request(h.command, h.path, headers=headers, content=body or None)
        try:
            response = self.upstream.send(request, stream=True)
        except Deposed as exc:
            with self._lock:
                self.refused += 1
            return h.answer(403, "Forbidden", f"herd-agent leader: {exc} (the Lease term is over; "
                                              "another leader recovers the release)")
        except httpx2.HTTPError as exc:
            return h.answer(502, "InternalError", f"herd-agent fencing proxy: the API server did not answer: {exc}")
        try:
            h.stream(response)
        finally:
            response.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], proxy: FencingProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("fencing proxy: connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.request.do_handshake()  # in this connection's thread, never in the accept loop

    def _relay(self) -> None:
        self.server.proxy.relay(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _relay

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        log.debug("fencing proxy: " + format, *args)

    def read_body(self) -> bytes:
        """The request body: ``Content-Length`` bytes or a chunked body (RFC 9112 7.1)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, code: int, reason: str, message: str) -> None:
        """Answer with a Kubernetes ``Status`` body."""
        body = status_body(code, reason, message)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def stream(self, response: httpx2.Response) -> None:
        """Send the upstream ``response`` on, its body as it arrives (watches), unchanged."""
        self.send_response_only(response.status_code, response.reason_phrase)
        for name, value in response.headers.multi_items():
            if name.lower() not in _NOT_RELAYED:
                self.send_header(name, value)
        no_body = self.command == "HEAD" or response.status_code in (204, 304) or response.status_code < 200
        length = response.headers.get("Content-Length")
        chunked = "chunked" in (response.headers.get("Transfer-Encoding") or "").lower()
        if no_body or (length is not None and not chunked):
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            if not no_body:
                for part in response.iter_raw():
                    self.wfile.write(part)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for part in response.iter_raw():
                if part:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        except httpx2.HTTPError:  # the upstream stream broke: end ours the same way (helm re-watches)
            self.close_connection = True
        except OSError:  # helm went away
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.request.close()
