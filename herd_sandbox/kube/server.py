"""The HTTP(S) front of the emulated API server: routing, content negotiation, watches.

URL space (https://kubernetes.io/docs/reference/using-api/api-concepts/):
``/api/v1[/namespaces/<ns>]/<plural>[/<name>[/<subresource>]]`` and the same under
``/apis/<group>/<version>``; discovery at ``/api``, ``/api/v1``, ``/apis``, ``/apis/<g>``,
``/apis/<g>/<v>``; ``/version``, ``/healthz``, ``/livez``, ``/readyz``; ``/openapi/v2`` is a
document without definitions (kubectl and helm then skip client-side schema validation);
``/openapi/v3`` answers 404.

Verbs map as the real server maps them: GET → get/list/watch (``?watch=true``), POST → create,
PUT → update, PATCH → patch (merge, strategic merge, JSON patch, apply), DELETE →
delete/deletecollection. Responses are JSON; ``Accept: …;as=Table;g=meta.k8s.io;v=v1`` gets
a Table. Watches stream chunked JSON lines ``{"type": …, "object": …}``.

Request and response bodies and headers are never logged (tokens, secrets).
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import select
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from herd_sandbox.kube import convert, discovery, disruption, errors, patch, protobuf
from herd_sandbox.kube.auth import Authenticator, Authorizer, Identity, Request, service_account_user
from herd_sandbox.kube.errors import ApiError
from herd_sandbox.kube.faults import KubeFaults
from herd_sandbox.kube.resources import BUILTIN_GROUPS, ResourceType
from herd_sandbox.kube.selectors import parse_field_selector, parse_label_selector
from herd_sandbox.kube.store import Obj, Store, now_rfc3339

log = logging.getLogger(__name__)

JSON = "application/json"
PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+cbor": "unsupported",
}


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # server_close() must not wait for idle keep-alive connections
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], api: ApiServer, tls: ssl.SSLContext | None) -> None:
        self.api = api
        self.tls = tls
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            try:
                request.settimeout(10)
                request = self.tls.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError) as exc:
                log.debug("sandbox kube: TLS handshake from %s failed: %s", client_address, exc)
                return
        self.RequestHandlerClass(request, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("sandbox kube: connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sandbox kube: %s", format % args)

    # -- entry points -------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def send_response(self, code: int, message: str | None = None) -> None:
        self._code = code
        super().send_response(code, message)

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        self._code: int | None = None
        user = None
        try:
            body = self._read_body()
            if body and self.headers.get("Content-Type", "").startswith(protobuf.PROTOBUF):
                body = _dumps(protobuf.decode(body))  # typed clientsets send protobuf; the rest is JSON
            split = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            identity = self._authenticate()
            user = identity.name
            api.handle(self, method, split.path.rstrip("/") or "/", query, body, identity)
        except ApiError as exc:
            self.send_json(exc.code, exc.status())
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # answer as the real server does for internal errors
            log.exception("sandbox kube: %s %s failed", method, self.path.split("?")[0])
            self.send_json(500, ApiError(500, "InternalError", f"Internal error occurred: {exc}").status())
        finally:
            if method != "GET":
                api.log_write(method, self.path.split("?")[0], user, self._code)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _authenticate(self) -> Identity:
        """Client certificate first, then bearer token, as kube-apiserver's authenticator union orders them."""
        api = self.server.api
        if isinstance(self.connection, ssl.SSLSocket):
            cert = self.connection.getpeercert()
            if cert:
                identity = api.authn.from_cert_subject(cert.get("subject", ()))
                if identity is not None:
                    return identity
        header = self.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            identity = api.authn.from_token(header[7:].strip())
            if identity is not None:
                return identity
        raise ApiError(401, "Unauthorized", "Unauthorized")

    # -- responses ----------------------------------------------------------------------
    def send_json(self, code: int, body: Any) -> None:
        """Send ``body`` as a JSON response with status ``code``."""
        data = _dumps(body)
        self.send_response(code)
        self.send_header("Content-Type", JSON)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, code: int, text: str) -> None:
        """Send a plain-text response."""
        self.send_bytes(code, "text/plain; charset=utf-8", text.encode())

    def send_bytes(self, code: int, content_type: str, data: bytes) -> None:
        """Send ``data`` as is."""
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def client_gone(self) -> bool:
        """True when the client closed the connection (checked while a watch is idle).

        A watch connection carries no further request until the response ends, so readable
        data here can only be the end of the stream (or a TLS close notification).
        """
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1)
        except (OSError, ValueError):
            return True

    def start_stream(self) -> None:
        """Start a chunked JSON stream (a watch)."""
        self.send_response(200)
        self.send_header("Content-Type", JSON)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        """Write one chunk of a chunked response and flush it."""
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        """Write the terminating chunk."""
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _wants(accept: str, what: str) -> bool:
    return any(f"as={what}" in part.replace(" ", "") and "g=meta.k8s.io" in part for part in accept.split(","))


def _int(query: dict[str, str], name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise errors.bad_request(f"invalid {name}: {value!r}") from exc


class ApiServer:
    """Serves a :class:`Store` over HTTP and HTTPS on loopback.

    Args:
        store: the objects.
        authn: bearer-token and client-certificate identities.
        authz: the RBAC authorizer.
        host: the loopback address to bind (127.0.0.0/8 only).
        tls: a server-side SSL context (its CA verifies client certificates); None serves HTTP only.
        bookmark_interval: seconds between BOOKMARK events on idle watches that asked for them.
    """

    def __init__(self, store: Store, authn: Authenticator, authz: Authorizer, host: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None, bookmark_interval: float = 1.0) -> None:
        if not host.startswith("127."):
            raise ValueError(f"the sandbox API server binds only to loopback (127.0.0.0/8), not {host!r}")
        self.store = store
        self.registry = store.registry
        self.authn = authn
        self.authz = authz
        self.host = host
        self.bookmark_interval = bookmark_interval
        self._tls = tls
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.https_port = 0
        self.http_port = 0
        self._stopping = threading.Event()
        self.faults = KubeFaults()
        self.request_log: list[dict[str, Any]] = []
        self.log_context: Callable[[], dict[str, Any]] | None = None
        self._log_lock = threading.Lock()

    def log_write(self, method: str, path: str, user: str | None, code: int | None) -> None:
        """Append one write request (method, path, user, status code, wall time) to
        :attr:`request_log`, with whatever :attr:`log_context` returns at that moment (the
        leader scenario records the Lease holder and epoch). Bodies are never logged."""
        entry: dict[str, Any] = {"t": time.time(), "method": method, "path": path, "user": user, "code": code}
        if self.log_context is not None:
            try:
                entry.update(self.log_context())
            except Exception:  # the log must never break a request
                log.debug("sandbox kube: request log context failed", exc_info=True)
        with self._log_lock:
            self.request_log.append(entry)

    def start(self, https_port: int = 0, http_port: int = 0) -> None:
        """Bind the HTTPS (when TLS is configured) and HTTP listeners (0 = any free port) and serve."""
        if self._tls is not None:
            https = _Server((self.host, https_port), self, self._tls)
            self.https_port = https.server_address[1]
            self._servers.append(https)
        http = _Server((self.host, http_port), self, None)
        self.http_port = http.server_address[1]
        self._servers.append(http)
        for srv in self._servers:
            thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                      name=f"kube-sandbox-http-{srv.server_address[1]}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop listening and end open watches."""
        self._stopping.set()
        self.store.close_watches()
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def https_url(self) -> str:
        """``https://127.0.0.1:<port>``."""
        return f"https://{self.host}:{self.https_port}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.http_port}"

    # -- routing ------------------------------------------------------------------------

    def handle(self, h: _Handler, method: str, path: str, query: dict[str, str], body: bytes,
               identity: Identity) -> None:
        """Answer one authenticated request (raises ApiError for error answers)."""
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts and parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            group = version = ""
            rest = []
        if rest:
            self._resource(h, method, group, version, rest, query, body, identity, path)
            return
        self.authz.check(identity, Request(verb=method.lower(), path=path))
        if method != "GET":
            raise errors.method_not_allowed()
        if path == "/version":
            h.send_json(200, discovery.SERVER_VERSION)
        elif path == "/openapi/v2":
            content_type, data = discovery.openapi_v2(h.headers.get("Accept", ""))
            h.send_bytes(200, content_type, data)
        elif path in ("/healthz", "/livez", "/readyz"):
            h.send_text(200, "ok")
        elif path == "/api":
            h.send_json(200, discovery.api_versions(f"{self.host}:{self.https_port or self.http_port}"))
        elif path == "/apis":
            h.send_json(200, discovery.api_group_list(self.registry))
        elif parts[:1] == ["apis"] and len(parts) == 2 and discovery.api_group(self.registry, parts[1]):
            h.send_json(200, discovery.api_group(self.registry, parts[1]))
        elif len(parts) in (2, 3) and parts[0] in ("api", "apis"):
            doc = discovery.api_resource_list(self.registry, group, version)
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            h.send_json(200, doc)
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _resource(self, h: _Handler, method: str, group: str, version: str, rest: list[str],
                  query: dict[str, str], body: bytes, identity: Identity, path: str) -> None:
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            candidate = self.registry.get(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace, rest = rest[1], rest[2:]
        rtype = self.registry.get(group, version, rest[0])
        if rtype is None or len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and rtype.subresource(sub) is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        watch = query.get("watch") in ("true", "1")
        verb = {"GET": "watch" if watch else ("get" if name else "list"), "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}[method]
        if method == "POST" and name and sub is None:
            raise errors.method_not_allowed()
        self.authz.check(identity, Request(verb=verb, group=group, resource=rtype.plural, subresource=sub or "",
                                           namespace=namespace or "", name=name or "", path=path))
        self.faults.apply(verb, rtype.plural, sub or "")  # injected faults (herd_sandbox/kube/faults.py)
        served = rtype.subresource(sub).verbs if sub else rtype.verbs  # type: ignore[union-attr]
        if verb not in served and not (verb == "watch" and "watch" in rtype.verbs):
            raise errors.method_not_allowed()
        accept = h.headers.get("Accept", "")
        if verb == "watch":
            self._watch(h, rtype, namespace, name, query, accept)
        elif verb == "list":
            self._list(h, rtype, namespace, query, accept)
        elif verb == "get":
            assert name is not None
            obj = convert.from_storage(rtype, self.store.get_ref(rtype, namespace, name))
            if sub == "scale":
                h.send_json(200, self._scale(rtype, obj))
            elif _wants(accept, "Table") and sub is None:
                h.send_json(200, discovery.table(rtype, [obj], obj["metadata"]["resourceVersion"],
                                                 query.get("includeObject", "Metadata")))
            else:
                h.send_json(200, obj)
        elif verb == "create":
            self._create(h, rtype, namespace, name, sub, self._json(body), identity)
        elif verb == "update":
            assert name is not None
            self._update(h, rtype, namespace, name, sub, self._json(body))
        elif verb == "patch":
            assert name is not None
            self._patch(h, rtype, namespace, name, sub, body, h.headers.get("Content-Type", ""), query)
        elif verb == "delete":
            assert name is not None
            self._delete(h, rtype, namespace, name, query, body)
        else:
            self._delete_collection(h, rtype, namespace, query, body)

    @staticmethod
    def _json(body: bytes) -> Any:
        if not body:
            raise errors.bad_request("the request body is empty")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise errors.bad_request(f"the body of the request could not be decoded as JSON: {exc}") from exc

    # -- reads --------------------------------------------------------------------------

    def _predicate(self, rtype: ResourceType, query: dict[str, str], name: str | None = None) -> Any:
        labels = parse_label_selector(query.get("labelSelector"))
        served_fields = parse_field_selector(query.get("fieldSelector"), rtype.field_selectors, rtype.kind)
        if rtype.storage_group is None:
            fields = served_fields
        else:  # selectors name the served form's fields
            def fields(o: Obj) -> bool:
                return served_fields(convert.from_storage(rtype, o))
        if name:
            return lambda o: o["metadata"]["name"] == name and labels(o) and fields(o)
        return lambda o: labels(o) and fields(o)

    def _list(self, h: _Handler, rtype: ResourceType, namespace: str | None, query: dict[str, str],
              accept: str) -> None:
        items, rv = self.store.list_ref(rtype, namespace if rtype.namespaced else None, self._predicate(rtype, query))
        items = [convert.from_storage(rtype, o) for o in items]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        limit = _int(query, "limit")
        token = query.get("continue")
        if token:
            try:
                start = json.loads(base64.urlsafe_b64decode(token.encode()))
            except ValueError as exc:
                raise errors.bad_request("continue key is not valid") from exc
            items = [o for o in items if [o["metadata"].get("namespace", ""), o["metadata"]["name"]] > start["k"]]
            meta["resourceVersion"] = start["rv"]
        if limit and limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = base64.urlsafe_b64encode(_dumps(
                {"k": [last.get("namespace", ""), last["name"]], "rv": meta["resourceVersion"]})).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if _wants(accept, "Table"):
            include = query.get("includeObject", "Metadata")
            h.send_json(200, discovery.table(rtype, items, meta["resourceVersion"], include))
            return
        if _wants(accept, "PartialObjectMetadataList"):
            h.send_json(200, {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                              "items": [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                         "metadata": o["metadata"]} for o in items]})
            return
        h.send_json(200, {"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta, "items": items})

    def _watch(self, h: _Handler, rtype: ResourceType, namespace: str | None, name: str | None,
               query: dict[str, str], accept: str) -> None:
        predicate = self._predicate(rtype, query, name)
        timeout = _int(query, "timeoutSeconds") or 1800
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        initial = query.get("sendInitialEvents") in ("true", "1")
        as_table = _wants(accept, "Table")
        try:
            watcher, backlog = self.store.watch(rtype, namespace, predicate, query.get("resourceVersion"),
                                                initial or None)
        except ApiError as exc:
            if exc.code != 410:
                raise
            h.start_stream()
            h.write_chunk(_dumps({"type": "ERROR", "object": exc.status()}) + b"\n")
            h.end_stream()
            return

        def encode(etype: str, obj: Obj) -> bytes:
            obj = convert.from_storage(rtype, obj)
            if as_table and etype != "BOOKMARK":
                obj = discovery.table(rtype, [obj], obj["metadata"]["resourceVersion"],
                                      query.get("includeObject", "Metadata"))
            return _dumps({"type": etype, "object": obj}) + b"\n"

        def bookmark(extra: dict[str, str] | None = None) -> bytes:
            meta: dict[str, Any] = {"resourceVersion": str(self.store.revision)}
            if extra:
                meta["annotations"] = extra
            return _dumps({"type": "BOOKMARK", "object": {"kind": rtype.kind, "apiVersion": rtype.api_version,
                                                          "metadata": meta}}) + b"\n"

        deadline = time.monotonic() + timeout
        try:
            h.start_stream()
            for etype, obj in backlog:
                h.write_chunk(encode(etype, obj))
            if initial and bookmarks:
                h.write_chunk(bookmark({"k8s.io/initial-events-end": "true"}))
            while not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = watcher.queue.get(timeout=min(remaining, self.bookmark_interval))
                except queue.Empty:
                    if h.client_gone():
                        break
                    if bookmarks:
                        h.write_chunk(bookmark())
                    continue
                if item is None:
                    break
                h.write_chunk(encode(*item))
            h.end_stream()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            h.close_connection = True
        finally:
            self.store.unwatch(watcher)

    def _scale(self, rtype: ResourceType, obj: Obj) -> dict[str, Any]:
        meta = obj["metadata"]
        selector = (obj.get("spec") or {}).get("selector") or {}
        labels = ",".join(f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items())
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                             if k in meta},
                "spec": {"replicas": int((obj.get("spec") or {}).get("replicas", 0))},
                "status": {"replicas": int((obj.get("status") or {}).get("replicas", 0)), "selector": labels}}

    # -- writes -------------------------------------------------------------------------

    def _create(self, h: _Handler, rtype: ResourceType, namespace: str | None, name: str | None, sub: str | None,
                body: Any, identity: Identity) -> None:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        if sub == "eviction":
            assert name is not None and namespace is not None
            disruption.evict(self.store, namespace, name, body.get("deleteOptions"))
            h.send_json(201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
            return
        if sub == "token":
            assert name is not None and namespace is not None
            h.send_json(201, self._token_request(namespace, name, body))
            return
        if sub == "binding":
            assert name is not None
            node = (body.get("target") or {}).get("name", "")
            self.store.modify(rtype, namespace, name, lambda d: d["spec"].__setitem__("nodeName", node))
            h.send_json(201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
            return
        self._check_kind(rtype, body)
        if rtype.kind == "SelfSubjectAccessReview":
            h.send_json(201, self._access_review(identity, body))
            return
        h.send_json(201, convert.from_storage(rtype, self.store.create(rtype, namespace, body)))

    def _access_review(self, identity: Identity, body: dict[str, Any]) -> dict[str, Any]:
        """Answer a SelfSubjectAccessReview (``kubectl auth can-i``) with the RBAC authorizer."""
        spec = body.get("spec") or {}
        attrs = spec.get("resourceAttributes")
        if attrs:
            req = Request(verb=attrs.get("verb", ""), group=attrs.get("group", ""), resource=attrs.get("resource", ""),
                          subresource=attrs.get("subresource", ""), namespace=attrs.get("namespace", ""),
                          name=attrs.get("name", ""))
        else:
            plain = spec.get("nonResourceAttributes") or {}
            req = Request(verb=plain.get("verb", ""), path=plain.get("path", ""))
        allowed = self.authz.allowed(identity, req)
        status: dict[str, Any] = {"allowed": allowed}
        if allowed and identity.enforce_rbac:
            status["reason"] = "RBAC: allowed by a binding"
        return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}

    def _token_request(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        sa_type = self.registry.by_kind("", "ServiceAccount")
        assert sa_type is not None
        self.store.get_ref(sa_type, namespace, name)
        user, groups = service_account_user(namespace, name)
        identity = self.authn.by_name(user) or Identity(user, groups, enforce_rbac=True)
        token = self.authn.issue_token(identity)
        spec = dict(body.get("spec") or {})
        seconds = int(spec.get("expirationSeconds") or 3600)
        spec["expirationSeconds"] = seconds
        return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": namespace, "creationTimestamp": now_rfc3339()},
                "spec": spec, "status": {"token": token, "expirationTimestamp": now_rfc3339(seconds)}}

    @staticmethod
    def _check_kind(rtype: ResourceType, body: dict[str, Any]) -> None:
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if kind and kind != rtype.kind:
            raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                                     f"version ({rtype.api_version})" if api_version != rtype.api_version
                                     else f"kind {kind} does not match the expected kind {rtype.kind}")

    def _update(self, h: _Handler, rtype: ResourceType, namespace: str | None, name: str, sub: str | None,
                body: Any) -> None:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        if sub == "scale":
            replicas = int((body.get("spec") or {}).get("replicas", 0))
            sent_rv = (body.get("metadata") or {}).get("resourceVersion")
            with self.store.lock:
                current = self.store.get(rtype, namespace, name)
                if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                    raise errors.conflict(rtype.plural, rtype.group, name)
                current.setdefault("spec", {})["replicas"] = replicas
                result = self.store.update(rtype, namespace, name, current, check_version=False)
            h.send_json(200, self._scale(rtype, result))
            return
        self._check_kind(rtype, body)
        h.send_json(200, convert.from_storage(rtype, self.store.update(rtype, namespace, name, body,
                                                                        subresource=sub)))

    def _patch(self, h: _Handler, rtype: ResourceType, namespace: str | None, name: str, sub: str | None,
               body: bytes, content_type: str, query: dict[str, str]) -> None:
        kind = PATCH_TYPES.get(content_type.split(";")[0].strip())
        if kind is None or kind == "unsupported":
            raise errors.unsupported_media_type(content_type)
        if kind == "apply":
            try:
                doc = yaml.safe_load(body)
            except yaml.YAMLError as exc:
                raise errors.bad_request(f"error decoding YAML: {exc}") from exc
            if not query.get("fieldManager"):
                raise errors.bad_request("PATCH, application/apply-patch+yaml requires a non-empty fieldManager")
        else:
            doc = self._json(body)
        with self.store.lock:
            current = self.store.find(rtype, namespace, name)
            if current is None:
                if kind == "apply" and sub is None and isinstance(doc, dict):
                    self._check_kind(rtype, doc)
                    doc.setdefault("metadata", {})["name"] = name
                    created = self.store.create(rtype, namespace, doc)
                    self.store.remember_applied(created["metadata"]["uid"], query["fieldManager"], doc)
                    h.send_json(201, convert.from_storage(rtype, created))
                    return
                raise errors.not_found(rtype.plural, rtype.group, name)
            base: Any = self._scale(rtype, current) if sub == "scale" else convert.from_storage(rtype, current)
            if kind == "merge":
                result = patch.merge_patch(base, doc)
            elif kind == "json":
                result = patch.json_patch(base, doc)
            elif kind == "strategic" and rtype.group not in BUILTIN_GROUPS:
                raise errors.unsupported_media_type(content_type)  # as for custom resources
            elif kind == "apply":
                uid, manager = current["metadata"]["uid"], query["fieldManager"]
                dropped = patch.dropped_fields(self.store.applied(uid, manager), doc)
                result = patch.strategic_merge(patch.merge_patch(base, dropped), doc)
                self.store.remember_applied(uid, manager, doc)
            else:
                result = patch.strategic_merge(base, doc)
            if not isinstance(result, dict):
                raise errors.bad_request("the patch produced a value that is not an object")
            if sub == "scale":
                replicas = int((result.get("spec") or {}).get("replicas", 0))
                updated = self.store.modify(rtype, namespace, name,
                                            lambda d: d.setdefault("spec", {}).__setitem__("replicas", replicas))
                assert updated is not None
                h.send_json(200, self._scale(rtype, updated))
                return
            check = (result.get("metadata") or {}).get("resourceVersion") != current["metadata"]["resourceVersion"]
            updated = self.store.update(rtype, namespace, name, result, subresource=sub, check_version=check)
            h.send_json(200, convert.from_storage(rtype, updated))

    @staticmethod
    def _delete_options(query: dict[str, str], body: bytes) -> tuple[int | None, dict[str, str] | None]:
        options: dict[str, Any] = {}
        if body:
            try:
                options = json.loads(body) or {}
            except ValueError as exc:
                raise errors.bad_request(f"the DeleteOptions could not be decoded: {exc}") from exc
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = _int(query, "gracePeriodSeconds")
        return grace, options.get("preconditions")

    def _delete(self, h: _Handler, rtype: ResourceType, namespace: str | None, name: str, query: dict[str, str],
                body: bytes) -> None:
        grace, preconditions = self._delete_options(query, body)
        obj, removed = self.store.delete(rtype, namespace, name, grace, preconditions)
        if removed and rtype.key not in (("", "pods"), ("", "namespaces")):
            h.send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                              "details": {"name": name, "group": rtype.group, "kind": rtype.plural,
                                          "uid": obj["metadata"]["uid"]}})
        else:
            h.send_json(200, convert.from_storage(rtype, obj))

    def _delete_collection(self, h: _Handler, rtype: ResourceType, namespace: str | None, query: dict[str, str],
                           body: bytes) -> None:
        grace, _ = self._delete_options(query, body)
        items, _ = self.store.list_ref(rtype, namespace if rtype.namespaced else None, self._predicate(rtype, query))
        done = []
        for obj in items:
            try:
                done.append(self.store.delete(rtype, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                              grace)[0])
            except ApiError as exc:
                if exc.code != 404:
                    raise
        h.send_json(200, {"kind": rtype.list_kind, "apiVersion": rtype.api_version,
                          "metadata": {"resourceVersion": str(self.store.revision)},
                          "items": [convert.from_storage(rtype, o) for o in done]})
