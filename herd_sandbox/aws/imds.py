"""An IMDSv2 emulator: one per sandbox instance, on that instance's loopback address.

Mirrors the EC2 User Guide ("Use the Instance Metadata Service to access instance metadata",
"Instance metadata categories"):

- ``PUT /latest/api/token`` needs ``X-aws-ec2-metadata-token-ttl-seconds`` in 1–21600, else 400;
  a PUT carrying ``X-Forwarded-For`` is refused with 403. The token comes back as text.
- Every GET needs a live ``X-aws-ec2-metadata-token`` (IMDSv2 required), else 401.
- Unknown paths are 404; ``meta-data/tags/instance…`` is 404 unless instance-metadata tags are
  enabled for the instance; ``spot/instance-action`` and ``events/recommendations/rebalance`` are
  404 until an interruption / rebalance recommendation is injected;
  ``events/maintenance/scheduled`` is a JSON list (``[]`` when nothing is scheduled).

Fault primitives (public, for tests and the benchmarks): :meth:`ImdsServer.inject_fault` (delay,
status, drop, or a raw ``body`` served as a 200 — oversized, non-JSON, wrong types, a token with
CR/LF), :meth:`ImdsServer.revoke_tokens` (every issued token answers 401 from now on, or after a
given number of seconds, as after expiry or an IMDS restart), :attr:`ImdsServer.max_token_ttl`
(tokens issued from now on live at most that long), :meth:`ImdsServer.override_identity` (what
the instance is told about itself — instance id, private IP, hostname, region, AZ — replaced before
the agent boots). A running region takes them over HTTP too (:mod:`herd_sandbox.aws.control`,
``herd-sandbox aws imds …``).
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from herd_sandbox.aws.servers import LoopbackServer

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TOKEN_TTL = 21600


@dataclass(frozen=True)
class Identity:
    """What IMDS tells an instance about itself (read fresh from the EC2 backend on each request)."""

    instance_id: str
    region: str
    availability_zone: str
    private_ip: str
    instance_type: str
    image_id: str
    account_id: str
    local_hostname: str
    mac: str
    launch_time: str
    architecture: str = "x86_64"
    vpc_id: str = ""


class MetadataSource(Protocol):
    """Where an :class:`ImdsServer` reads the live facts of its instance."""

    def identity(self, instance_id: str) -> Identity: ...  # noqa: D102
    def tags(self, instance_id: str) -> dict[str, str]: ...  # noqa: D102
    def target_lifecycle_state(self, instance_id: str) -> str | None: ...  # noqa: D102
    def user_data(self, instance_id: str) -> bytes | None: ...  # noqa: D102


@dataclass
class Fault:
    """A fault the IMDS applies to matching requests before anything else.

    Attributes:
        path: a path prefix such as ``"/latest/meta-data/spot"``; None matches every request
            (token PUTs included).
        delay: seconds to wait before answering (or dropping).
        status: answer with this HTTP status (e.g. 500) instead of the real response.
        drop: close the connection without any response.
        remaining: apply to this many requests, then expire; None = until cleared.
        body: answer ``status`` (default 200) with exactly these bytes instead of the real
            response — a garbage answer (oversized, not JSON, wrong JSON types; on the token path
            a token with CR/LF). Token checks are skipped for it.
    """

    path: str | None = None
    delay: float = 0.0
    status: int | None = None
    drop: bool = False
    remaining: int | None = None
    body: bytes | None = None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Events:
    spot: dict[str, str] | None = None
    rebalance: dict[str, str] | None = None
    maintenance: list[dict[str, str]] = field(default_factory=list)


class ImdsServer:
    """IMDSv2 for one instance, served on ``host`` (the instance's 127.x.y.z address).

    Args:
        instance_id: the EC2 instance id it answers for.
        host: loopback address to bind.
        source: live instance facts (identity, tags, target lifecycle state, user data).
        metadata_tags: whether ``meta-data/tags/instance`` is enabled (the launch template's
            ``MetadataOptions.InstanceMetadataTags``; AWS default is disabled).
        token_time_factor: wall-clock seconds per token-TTL second (1.0 = real time).
        port: TCP port (0 = a free one).
    """

    def __init__(
        self,
        instance_id: str,
        host: str,
        source: MetadataSource,
        metadata_tags: bool = False,
        token_time_factor: float = 1.0,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.instance_id = instance_id
        self.metadata_tags = metadata_tags
        self.token_time_factor = token_time_factor
        self._source = source
        self._clock = clock
        self._mu = threading.Lock()
        self._tokens: dict[str, float] = {}
        self._faults: list[Fault] = []
        self._events = _Events()
        self._identity_overrides: dict[str, str] = {}
        self.max_token_ttl: float | None = None
        """When set, tokens issued from now on expire after at most this many seconds (scaled by
        :attr:`token_time_factor`), whatever TTL was asked for: a fault, expiry coming early."""
        self._server = LoopbackServer(self, host=host, port=port, name=f"imds-{instance_id}")

    @property
    def url(self) -> str:
        """The endpoint for ``AWS_EC2_METADATA_SERVICE_ENDPOINT``: ``http://127.x.y.z:PORT``."""
        return self._server.url

    def start(self) -> ImdsServer:
        """Start serving; returns self."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every connection (idempotent)."""
        self._server.stop()

    # -- injection -----------------------------------------------------------------------------
    def inject_fault(self, fault: Fault) -> None:
        """Add a :class:`Fault`; faults are checked in the order added."""
        with self._mu:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Remove every fault."""
        with self._mu:
            self._faults.clear()

    def revoke_tokens(self, after: float = 0.0) -> int:
        """Expire every token issued so far ``after`` AWS seconds from now (0: now; scaled by
        :attr:`token_time_factor`): a GET with one then answers 401, as after the token's TTL ran
        out or IMDS restarted. A token that would expire sooner anyway keeps its own expiry.
        Returns how many live tokens were cut short.

        Raises:
            ValueError: ``after`` is negative.
        """
        if after < 0:
            raise ValueError(f"after must be >= 0 seconds, got {after}")
        now = self._clock()
        until = now + after * self.token_time_factor
        with self._mu:
            live = {t: exp for t, exp in self._tokens.items() if exp > now}
            cut = sum(1 for exp in live.values() if exp > until)
            self._tokens = {t: min(exp, until) for t, exp in live.items() if min(exp, until) > now}
        return cut

    IDENTITY_FIELDS = ("instance_id", "private_ip", "local_hostname", "region", "availability_zone")

    def override_identity(self, **fields: str) -> None:
        """Replace what IMDS tells the instance about itself (the identity document's
        ``instanceId``/``privateIp``/``region``/``availabilityZone`` and the matching
        ``meta-data/`` paths, ``local-hostname`` and ``hostname``), e.g. to feed the agent a
        malformed identity before it boots. Keys: :attr:`IDENTITY_FIELDS`; values are served
        verbatim (strings). Raises ValueError on an unknown key or a value that is not a string."""
        unknown = set(fields) - set(self.IDENTITY_FIELDS)
        if unknown:
            raise ValueError(f"unknown identity fields: {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(self.IDENTITY_FIELDS)}")
        wrong = sorted(k for k, v in fields.items() if not isinstance(v, str))
        if wrong:
            raise ValueError(f"identity field(s) {', '.join(wrong)}: the value must be a string")
        with self._mu:
            self._identity_overrides.update(fields)

    def identity_overrides(self) -> dict[str, str]:
        """The identity overrides in force (a copy; empty when none)."""
        with self._mu:
            return dict(self._identity_overrides)

    def clear_identity_overrides(self) -> None:
        """Serve the instance's real identity again."""
        with self._mu:
            self._identity_overrides.clear()

    def _identity(self) -> Identity:
        ident = self._source.identity(self.instance_id)
        with self._mu:
            overrides = dict(self._identity_overrides)
        return replace(ident, **overrides) if overrides else ident

    def set_spot_interruption(self, action: str = "terminate", notice: float = 120.0) -> dict[str, str]:
        """Publish ``spot/instance-action``: ``{"action": action, "time": now + notice}``.

        ``action`` is ``terminate``, ``stop`` or ``hibernate``; ``notice`` is seconds (AWS: two
        minutes). Returns the published document. Raises ValueError on an unknown action.
        """
        if action not in ("terminate", "stop", "hibernate"):
            raise ValueError(f"spot action must be terminate, stop or hibernate, not {action!r}")
        doc = {"action": action, "time": _iso(datetime.now(UTC) + timedelta(seconds=notice))}
        with self._mu:
            self._events.spot = doc
        return doc

    def set_rebalance(self) -> dict[str, str]:
        """Publish ``events/recommendations/rebalance``: ``{"noticeTime": now}``; returns it."""
        doc = {"noticeTime": _iso(datetime.now(UTC))}
        with self._mu:
            self._events.rebalance = doc
        return doc

    def add_maintenance_event(
        self,
        code: str = "system-reboot",
        description: str = "scheduled reboot",
        in_seconds: float = 86400.0,
        duration: float = 3600.0,
    ) -> dict[str, str]:
        """Add one entry to ``events/maintenance/scheduled`` and return it.

        Entry shape per AWS: ``NotBefore``/``NotAfter`` ("21 Jan 2019 09:00:43 GMT"), ``Code``
        (``instance-reboot``, ``system-reboot``, ``system-maintenance``, ``instance-retirement``,
        ``instance-stop``), ``Description``, ``EventId`` (``instance-event-…``), ``State`` (``active``).
        """
        start = datetime.now(UTC) + timedelta(seconds=in_seconds)
        fmt = "%d %b %Y %H:%M:%S GMT"
        entry = {
            "NotBefore": start.strftime(fmt),
            "Code": code,
            "Description": description,
            "EventId": "instance-event-" + secrets.token_hex(8)[:17],
            "NotAfter": (start + timedelta(seconds=duration)).strftime(fmt),
            "State": "active",
        }
        with self._mu:
            self._events.maintenance.append(entry)
        return entry

    # -- WSGI ----------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """WSGI entry: injected faults first, then token issue/check and the metadata lookup."""
        path = environ.get("PATH_INFO", "/")
        fault = self._fault_for(path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)  # an injected slow response: the delay is the point
            if fault.drop:
                sock = environ.get("werkzeug.socket")
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                raise ConnectionAbortedError("injected IMDS connection drop")
            if fault.body is not None:
                return self._reply(start_response, fault.status or 200, fault.body)
            if fault.status is not None:
                return self._reply(start_response, fault.status, b"")
        status, body, headers = self._handle(environ, path)
        return self._reply(start_response, status, body, headers)

    def _fault_for(self, path: str) -> Fault | None:
        with self._mu:
            for fault in self._faults:
                if fault.path is None or path.startswith(fault.path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    @staticmethod
    def _reply(
        start_response: Callable[..., Any], status: int, body: bytes, headers: list[tuple[str, str]] | None = None
    ) -> list[bytes]:
        reasons = {
            200: "OK",
            400: "Bad Request",
            401: "Unauthorized",
            403: "Forbidden",
            404: "Not Found",
            405: "Method Not Allowed",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }
        hdrs = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))] + (headers or [])
        start_response(f"{status} {reasons.get(status, 'Error')}", hdrs)
        return [body]

    def _handle(self, environ: dict[str, Any], path: str) -> tuple[int, bytes, list[tuple[str, str]]]:
        method = environ.get("REQUEST_METHOD", "GET")
        if path == TOKEN_PATH:
            if method != "PUT":
                return 405, b"", []
            return self._issue_token(environ)
        if method not in ("GET", "HEAD"):
            return 405, b"", []
        if not self._token_valid(environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN")):
            return 401, b"", []
        value = self._lookup(path)
        if value is None:
            return 404, b"", []
        return 200, value, []

    def _issue_token(self, environ: dict[str, Any]) -> tuple[int, bytes, list[tuple[str, str]]]:
        if environ.get("HTTP_X_FORWARDED_FOR"):
            return 403, b"", []
        raw = environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN_TTL_SECONDS")
        try:
            ttl = int(raw) if raw is not None else 0
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TOKEN_TTL:
            return 400, b"", []
        token = secrets.token_urlsafe(40)
        now = self._clock()
        with self._mu:
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            cap = self.max_token_ttl
            self._tokens[token] = now + (ttl if cap is None else min(ttl, cap)) * self.token_time_factor
        return 200, token.encode(), [(TTL_HEADER, str(ttl))]

    def _token_valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._mu:
            expiry = self._tokens.get(token)
        return expiry is not None and expiry > self._clock()

    def _lookup(self, path: str) -> bytes | None:
        if not path.startswith("/latest/"):
            return None
        rel = path[len("/latest/") :]
        if rel == "user-data":
            return self._source.user_data(self.instance_id)
        if rel == "dynamic/instance-identity/document":
            ident = self._identity()
            doc = {
                "accountId": ident.account_id,
                "architecture": ident.architecture,
                "availabilityZone": ident.availability_zone,
                "billingProducts": None,
                "devpayProductCodes": None,
                "marketplaceProductCodes": None,
                "imageId": ident.image_id,
                "instanceId": ident.instance_id,
                "instanceType": ident.instance_type,
                "kernelId": None,
                "pendingTime": ident.launch_time,
                "privateIp": ident.private_ip,
                "ramdiskId": None,
                "region": ident.region,
                "version": "2017-09-30",
            }
            return json.dumps(doc, indent=2).encode()
        if rel.startswith("meta-data/") or rel == "meta-data":
            value = self._meta(rel[len("meta-data/") :].rstrip("/") if "/" in rel else "")
            return None if value is None else value.encode()
        return None

    def _meta(self, key: str) -> str | None:
        ident = self._identity()
        simple = {
            "instance-id": ident.instance_id,
            "local-ipv4": ident.private_ip,
            "local-hostname": ident.local_hostname,
            "hostname": ident.local_hostname,
            "mac": ident.mac,
            "ami-id": ident.image_id,
            "instance-type": ident.instance_type,
            "placement/region": ident.region,
            "placement/availability-zone": ident.availability_zone,
        }
        if key in simple:
            return simple[key]
        if key == "":
            listing = [
                "ami-id",
                "autoscaling/",
                "events/",
                "hostname",
                "instance-id",
                "instance-type",
                "local-hostname",
                "local-ipv4",
                "mac",
                "network/",
                "placement/",
                "spot/",
                "tags/",
            ]
            return "\n".join(listing)
        if key == "placement":
            return "availability-zone\nregion"
        # network/interfaces/macs/<mac>/vpc-id (EC2 User Guide, "Instance metadata categories");
        # the sandbox instance has one interface.
        if key in ("network", "network/interfaces"):
            return "interfaces/" if key == "network" else "macs/"
        if key == "network/interfaces/macs":
            return f"{ident.mac}/"
        if key == f"network/interfaces/macs/{ident.mac}":
            return "device-number\nlocal-ipv4s\nmac\nvpc-id" if ident.vpc_id else "device-number\nlocal-ipv4s\nmac"
        if key.startswith(f"network/interfaces/macs/{ident.mac}/"):
            leaf = key.rsplit("/", 1)[1]
            return {"device-number": "0", "local-ipv4s": ident.private_ip, "mac": ident.mac,
                    "vpc-id": ident.vpc_id or None}.get(leaf)
        if key == "tags/instance" or key.startswith("tags/instance/"):
            if not self.metadata_tags:
                return None
            tags = self._source.tags(self.instance_id)
            if key == "tags/instance":
                return "\n".join(sorted(tags))
            return tags.get(key[len("tags/instance/") :])
        if key == "autoscaling/target-lifecycle-state":
            return self._source.target_lifecycle_state(self.instance_id)
        with self._mu:
            events = self._events
            if key == "spot/instance-action":
                return None if events.spot is None else json.dumps(events.spot)
            if key == "events/recommendations/rebalance":
                return None if events.rebalance is None else json.dumps(events.rebalance)
            if key == "events/maintenance/scheduled":
                return json.dumps(events.maintenance, indent=2)
        return None
