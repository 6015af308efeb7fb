"""A small client for etcd's v3 JSON gateway (grpc-gateway), over HTTP or HTTPS.

Every call is a ``POST`` of a JSON body to ``<endpoint><prefix>/<service>/<method>``; the prefix
is ``/v3`` on etcd 3.4+ and ``/v3beta`` on 3.3, chosen once per endpoint from ``GET /version``.
The gateway answers errors as JSON ``{"error", "code", "message"}`` where ``code`` is the gRPC
status code; :func:`herd_agent.etcd.errors.error_from_body` turns them into typed errors (errors.py).

Wire conventions the gateway keeps (and this client keeps out of its callers' way):

- member, lease and revision numbers are uint64 and travel as **decimal strings**
  (``"ID": "1886424282058903940"``); this module hands them out as ``int``. ``etcdctl`` prints
  the same member IDs in hex (:func:`member_id_hex`).
- keys and values in KV, txn and lease calls are **base64**; this module takes and returns bytes.
- fields that hold their zero value are omitted (``isLearner`` is absent when false).

Reconfiguration answers that clear up by themselves ("unhealthy cluster" right after a start or
a change, "too many learner members", "learner not in sync with leader") are retried with
exponential backoff for a bounded time (:meth:`EtcdClient.call` ``retry_s``).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from herd_agent.etcd.errors import (
    RETRYABLE,
    EtcdError,  # noqa: F401 - the base class stays importable from here for callers outside etcd/
    EtcdUnreachable,
    LearnerEndpoint,
    error_from_body,
)

log = logging.getLogger(__name__)

def member_id_hex(member_id: int) -> str:
    """The member ID as ``etcdctl`` prints it (lower-case hex, no prefix)."""
    return format(member_id, "x")


def b64(data: bytes | str) -> str:
    """Base64 text of ``data`` (str is UTF-8 encoded), as the gateway wants keys and values."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
    """Bytes of a base64 field from the gateway (absent → empty)."""
    return base64.b64decode(text or "")


@dataclass(frozen=True)
class Member:
    """One etcd member as ``/cluster/member/list`` reports it.

    Attributes:
        id: member ID (uint64).
        name: ``--name`` of the member; empty while it was added but has never started.
        peer_urls, client_urls: advertised URLs (client URLs empty until started).
        is_learner: a non-voting member.
    """

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False

    @property
    def started(self) -> bool:
        """True once the member has started and published its name and client URLs."""
        return bool(self.name) and bool(self.client_urls)

    @property
    def is_voter(self) -> bool:
        """True for a voting member (started or not)."""
        return not self.is_learner

    @property
    def peer_host(self) -> str:
        """Host part of the first peer URL (the instance's IP), or ''."""
        return url_host(self.peer_urls[0]) if self.peer_urls else ""

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Member:
        """Build from the gateway's JSON member object."""
        return cls(
            id=int(obj["ID"]),
            name=str(obj.get("name", "")),
            peer_urls=tuple(obj.get("peerURLs") or ()),
            client_urls=tuple(obj.get("clientURLs") or ()),
            is_learner=bool(obj.get("isLearner", False)),
        )

    def to_json(self) -> dict[str, Any]:
        """Plain dict with the ID as a decimal string and hex (for status output)."""
        return {"id": str(self.id), "id_hex": member_id_hex(self.id), "name": self.name,
                "peer_urls": list(self.peer_urls), "client_urls": list(self.client_urls),
                "is_learner": self.is_learner, "started": self.started}


@dataclass(frozen=True)
class MemberStatus:
    """``/maintenance/status`` of one member.

    Attributes:
        member_id: the answering member (header.member_id).
        leader: ID of the leader it follows (0 = none known).
        raft_index, raft_term, raft_applied_index: its raft progress.
        errors: alarms/errors the member reports (e.g. ``NOSPACE``).
        is_learner: the member is a learner.
        version: etcd server version.
    """

    member_id: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    errors: tuple[str, ...]
    is_learner: bool
    version: str

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> MemberStatus:
        """Build from the gateway's JSON status answer."""
        header = obj.get("header") or {}
        return cls(
            member_id=int(header.get("member_id", 0)),
            leader=int(obj.get("leader", 0)),
            raft_index=int(obj.get("raftIndex", 0)),
            raft_term=int(obj.get("raftTerm", 0)),
            raft_applied_index=int(obj.get("raftAppliedIndex", 0)),
            errors=tuple(obj.get("errors") or ()),
            is_learner=bool(obj.get("isLearner", False)),
            version=str(obj.get("version", "")),
        )


@dataclass(frozen=True)
class TlsFiles:
    """Client TLS material (real paths, already mapped through the host root).

    Attributes:
        ca: CA bundle the server certificate is verified against.
        cert, key: client certificate and key (the key never leaves the file).
        verify: False turns certificate verification OFF; only when the config says so in plain words.
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True


def url_host(url: str) -> str:
    """Host of ``scheme://host:port`` (without brackets)."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


@dataclass
class EtcdClient:
    """Talks to one etcd cluster through a list of client URLs (first that answers wins).

    Args:
        endpoints: client URLs, e.g. ``["https://127.0.0.1:2379"]``; tried in order on a
            transport error, and the one that answered is tried first next time.
        tls: client certificates and CA for HTTPS endpoints.
        timeout_s: per-request timeout in seconds.
        retry_s: default seconds to keep retrying the transient reconfiguration errors.
    """

    endpoints: Sequence[str]
    tls: TlsFiles | None = None
    timeout_s: float = 5.0
    retry_s: float = 30.0
    _session: requests.Session = field(init=False, repr=False)
    _prefixes: dict[str, str] = field(init=False, repr=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("EtcdClient needs at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in self.endpoints]
        self._session = requests.Session()
        self._session.trust_env = False  # loopback/etcd traffic never goes through an HTTP proxy
        if self.tls is not None:
            self._session.verify = (self.tls.ca or True) if self.tls.verify else False
            if self.tls.cert:
                self._session.cert = (self.tls.cert, self.tls.key) if self.tls.key else self.tls.cert

    def with_endpoints(self, endpoints: Iterable[str]) -> EtcdClient:
        """A client for other endpoints of the same cluster with the same TLS and timeouts."""
        return EtcdClient(list(endpoints), tls=self.tls, timeout_s=self.timeout_s, retry_s=self.retry_s)

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._session.close()

    # --- transport -------------------------------------------------------------------------

    def version(self, endpoint: str) -> dict[str, str]:
        """``GET /version`` of one endpoint: ``{"etcdserver": "3.5.1", "etcdcluster": "3.5.0"}``.

        Raises:
            EtcdUnreachable: no answer.
        """
        try:
            resp = self._session.get(f"{endpoint}/version", timeout=self.timeout_s)
            resp.raise_for_status()
            return resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise EtcdUnreachable(f"etcd at {endpoint} did not answer /version: {exc}", endpoint=endpoint) from exc

    def prefix(self, endpoint: str) -> str:
        """The gateway path prefix of ``endpoint``: ``/v3`` for 3.4+, ``/v3beta`` for 3.3 (cached)."""
        with self._lock:
            cached = self._prefixes.get(endpoint)
        if cached:
            return cached
        server = self.version(endpoint).get("etcdserver", "")
        prefix = gateway_prefix(server)
        with self._lock:
            self._prefixes[endpoint] = prefix
        return prefix

    def post_one(self, endpoint: str, path: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        """POST ``body`` to ``path`` (e.g. ``/cluster/member/list``) on exactly one endpoint.

        Raises:
            EtcdUnreachable: transport failure.
            EtcdError: (a typed subclass of) the gateway's error answer.
        """
        url = f"{endpoint}{self.prefix(endpoint)}{path}"
        try:
            resp = self._session.post(url, json=body, timeout=timeout_s or self.timeout_s)
        except requests.RequestException as exc:
            raise EtcdUnreachable(f"etcd at {endpoint} unreachable for {path}: {exc}", endpoint=endpoint) from exc
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code >= 400 or (isinstance(data, dict) and "error" in data):
            raise error_from_body(resp.status_code, data, endpoint)
        if isinstance(data, dict) and isinstance(data.get("result"), dict):  # streaming methods
            return data["result"]
        return data

    def post(self, path: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        """POST to the first endpoint that answers (see :meth:`post_one`).

        Raises:
            EtcdUnreachable: every endpoint failed at the transport level.
            EtcdError: the first answering endpoint's error.
        """
        failures: list[str] = []
        for endpoint in list(self.endpoints):
            try:
                result = self.post_one(endpoint, path, body, timeout_s)
            except (EtcdUnreachable, LearnerEndpoint) as exc:
                # A learner (e.g. a peer that is joining right now) answers no client RPC: move on.
                failures.append(str(exc))
                continue
            if endpoint != self.endpoints[0]:
                self.endpoints = [endpoint] + [e for e in self.endpoints if e != endpoint]
            return result
        raise EtcdUnreachable("no etcd endpoint answered: " + "; ".join(failures),
                              endpoint=",".join(self.endpoints))

    def call(self, path: str, body: dict[str, Any], *, retry_s: float | None = None) -> Any:
        """:meth:`post` with bounded retries of :data:`RETRYABLE` errors and unreachable endpoints.

        Args:
            retry_s: keep retrying this many seconds (default ``self.retry_s``); 0 = no retry.

        Raises:
            EtcdError: the last error once the time is spent, or any non-retryable error at once.
        """
        limit = self.retry_s if retry_s is None else retry_s
        if limit <= 0:
            return self.post(path, body)
        retrying = Retrying(
            retry=retry_if_exception_type((*RETRYABLE, EtcdUnreachable)),
            wait=wait_exponential(multiplier=0.05, min=0.05, max=1.0),
            stop=stop_after_delay(limit),
            reraise=True,
            before_sleep=before_sleep_log(log, logging.DEBUG),
        )
        return retrying(self.post, path, body)

    # --- cluster -----------------------------------------------------------------------------

    def member_list(self, *, linearizable: bool = True) -> tuple[int, list[Member]]:
        """``Cluster.MemberList``: ``(cluster_id, members)``.

        ``linearizable`` (etcd 3.5 ``linearizable`` field) makes the answering member confirm
        the list with the leader, so a just-removed member is not reported from a stale follower.
        """
        body = {"linearizable": True} if linearizable else {}
        data = self.call("/cluster/member/list", body)
        cluster_id = int((data.get("header") or {}).get("cluster_id", 0))
        return cluster_id, [Member.from_json(m) for m in data.get("members") or ()]

    def sync_endpoints(self, exclude: Sequence[str] = ()) -> list[str]:
        """Add the client URLs of the cluster's started voters to :attr:`endpoints` (clientv3's
        ``Client.Sync``: endpoints from ``MemberList``), keeping the current ones first.

        A join that reached the cluster through one control plane keeps working when that one
        leaves mid-join (its etcd stops): the lock's lease keep-alive and the membership calls
        move on to the other voters. The list comes from the cluster we already verified (the
        TLS client certificate and the cluster CA stay the same for every endpoint).

        Args:
            exclude: client URLs never to add (our own member's, which is not serving yet).
        Returns:
            The endpoints after the sync.
        Raises:
            EtcdError: the member list could not be read.
        """
        _, members = self.member_list()
        skip = {e.rstrip("/") for e in exclude}
        known = list(self.endpoints)
        for m in members:
            if not m.started or m.is_learner:
                continue
            for url in m.client_urls:
                url = url.rstrip("/")
                if url not in known and url not in skip:
                    known.append(url)
        self.endpoints = known
        return known

    def member_add(self, peer_urls: Sequence[str], *, learner: bool = True,
                   retry_s: float | None = None) -> tuple[Member, list[Member]]:
        """``Cluster.MemberAdd``: add a member (a learner by default).

        Returns:
            ``(new member, members after the add)``.

        Raises:
            TooManyLearners, UnhealthyCluster: after the retry time is spent.
            PeerURLExists: another member has one of these peer URLs.
        """
        data = self.call("/cluster/member/add", {"peerURLs": list(peer_urls), "isLearner": learner},
                         retry_s=retry_s)
        return Member.from_json(data["member"]), [Member.from_json(m) for m in data.get("members") or ()]

    def member_remove(self, member_id: int, *, retry_s: float | None = None) -> list[Member]:
        """``Cluster.MemberRemove``: remove a member; returns the members left.

        Raises:
            MemberNotFound: no such member (already removed).
            UnhealthyCluster: etcd's own quorum guard refused, after the retry time is spent.
        """
        data = self.call("/cluster/member/remove", {"ID": str(member_id)}, retry_s=retry_s)
        return [Member.from_json(m) for m in data.get("members") or ()]

    def member_promote(self, member_id: int, *, retry_s: float | None = None) -> list[Member]:
        """``Cluster.MemberPromote``: make a caught-up learner a voter; returns the members.

        Raises:
            LearnerNotInSync: still behind the leader after the retry time is spent.
            MemberNotLearner: it is already a voter.
        """
        data = self.call("/cluster/member/promote", {"ID": str(member_id)}, retry_s=retry_s)
        return [Member.from_json(m) for m in data.get("members") or ()]

    # --- maintenance -----------------------------------------------------------------------------

    def status(self, endpoint: str, timeout_s: float | None = None) -> MemberStatus:
        """``Maintenance.Status`` of the member behind exactly one client URL (no failover).

        Raises:
            EtcdUnreachable, EtcdError.
        """
        return MemberStatus.from_json(self.post_one(endpoint, "/maintenance/status", {}, timeout_s))

    def transfer_leadership(self, leader_endpoint: str, target_id: int) -> None:
        """``Maintenance.MoveLeader`` sent to the current leader's client URL.

        Raises:
            NotLeader: the endpoint is not the leader.
            BadLeaderTransferee: the target is not a started voter.
        """
        self.post_one(leader_endpoint, "/maintenance/transfer-leadership", {"targetID": str(target_id)})

    # --- KV and leases (used by the lock) ---------------------------------------------------------

    def lease_grant(self, ttl_s: int) -> tuple[int, int]:
        """``Lease.LeaseGrant``: ``(lease id, granted TTL seconds)``."""
        data = self.call("/lease/grant", {"TTL": int(ttl_s)})
        return int(data["ID"]), int(data.get("TTL", 0))

    def lease_keepalive(self, lease_id: int) -> int:
        """One ``Lease.LeaseKeepAlive`` round; returns the remaining TTL (0 = the lease is gone)."""
        data = self.post("/lease/keepalive", {"ID": str(lease_id)})
        return int((data or {}).get("TTL", 0))

    def lease_revoke(self, lease_id: int) -> None:
        """``Lease.LeaseRevoke``: drop the lease and every key attached to it."""
        self.post("/lease/revoke", {"ID": str(lease_id)})

    def get(self, key: bytes | str) -> tuple[bytes, int, int] | None:
        """``KV.Range`` of one key: ``(value, create_revision, lease)`` or None when absent."""
        data = self.call("/kv/range", {"key": b64(key)})
        kvs = data.get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return unb64(kv.get("value")), int(kv.get("create_revision", 0)), int(kv.get("lease", 0))

    def put_if_absent(self, key: bytes | str, value: bytes | str, lease_id: int = 0) -> tuple[bool, bytes, int]:
        """A ``KV.Txn``: create ``key`` only when ``create_revision == 0`` (it does not exist).

        Returns:
            ``(created, holder value, create revision)``: on failure the current value and its
            revision, so the caller can say who holds it.
        """
        k = b64(key)
        put: dict[str, Any] = {"key": k, "value": b64(value)}
        if lease_id:
            put["lease"] = str(lease_id)
        data = self.call("/kv/txn", {
            "compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": k}}],
        })
        if data.get("succeeded"):
            return True, unb64(b64(value)), int((data.get("header") or {}).get("revision", 0))
        responses = data.get("responses") or [{}]
        kvs = (responses[0].get("response_range") or {}).get("kvs") or [{}]
        return False, unb64(kvs[0].get("value")), int(kvs[0].get("create_revision", 0))

    def delete_if_created_at(self, key: bytes | str, create_revision: int) -> bool:
        """A ``KV.Txn``: delete ``key`` only when its ``create_revision`` is ours; True when deleted."""
        k = b64(key)
        data = self.call("/kv/txn", {
            "compare": [{"key": k, "result": "EQUAL", "target": "CREATE",
                         "create_revision": str(create_revision)}],
            "success": [{"request_delete_range": {"key": k}}],
        })
        return bool(data.get("succeeded"))


def gateway_prefix(server_version: str) -> str:
    """Gateway prefix for an etcd server version string: ``/v3beta`` for 3.3 and older, else ``/v3``."""
    try:
        major, minor = (int(p) for p in server_version.split(".")[:2])
    except ValueError:
        return "/v3"
    return "/v3beta" if (major, minor) <= (3, 3) else "/v3"
