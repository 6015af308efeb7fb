"""The sandbox's own checks of what the agent produced, written from the documentation of the
systems involved, never with the agent's functions (a bug shared by the agent and its checker
would otherwise go unseen).

- :class:`EtcdGateway`: a small client of etcd's v3 JSON gateway (etcd docs, "gRPC gateway":
  ``POST /v3/cluster/member/list`` etc., member IDs as decimal strings, ``isLearner`` omitted when
  false), used by the k3s stand-in and by the scenario checks.
- :func:`initial_cluster`: etcd's ``--initial-cluster`` value (etcd docs, "Clustering":
  ``name=peerURL`` pairs, comma-separated, one per peer URL of every member; a member added but not
  started yet has no name and takes the joiner's).
- :func:`hosts_block_problems`: /etc/hosts validity (hosts(5): ``IP canonical_name [aliases]``,
  ``#`` starts a comment) plus the agent's documented block contract (docs/join.md: exactly one
  begin and one end marker line, only ``IP<TAB>NAME`` lines between them).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

import requests

# The marker lines the agent documents (docs/join.md); the check matches them literally.
HOSTS_BEGIN = "# BEGIN herd-agent managed block: do not edit, herd-agent rewrites it"
HOSTS_END = "# END herd-agent managed block"


class EtcdGatewayError(Exception):
    """An etcd gateway call failed: transport error, non-200 status, or an error body.

    Attributes:
        message: etcd's error text (e.g. ``etcdserver: unhealthy cluster``), or the transport error.
        status: the HTTP status, or None when no answer came.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def member_not_found(self) -> bool:
        """etcd's ``etcdserver: member not found`` (gRPC NotFound)."""
        return "member not found" in self.message

    @property
    def not_learner(self) -> bool:
        """etcd's ``etcdserver: can only promote a learner member`` answered to a voter."""
        return "can only promote a learner member" in self.message and "in sync" not in self.message


@dataclass(frozen=True)
class GatewayMember:
    """One entry of ``members`` in a MemberList answer.

    Attributes:
        id: the member ID (etcd sends it as a decimal string; here an int).
        name: the member name ("" until a just-added member starts).
        peer_urls / client_urls: its URLs.
        is_learner: a learner (etcd omits the field when false).
    """

    id: int
    name: str
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> GatewayMember:
        """Parse one member object of the gateway's JSON."""
        return cls(int(obj["ID"]), str(obj.get("name") or ""), tuple(obj.get("peerURLs") or ()),
                   tuple(obj.get("clientURLs") or ()), bool(obj.get("isLearner", False)))

    def to_json(self) -> dict[str, Any]:
        """The member as the scenario report shows it."""
        return {"id": f"{self.id:x}", "name": self.name, "peer_urls": list(self.peer_urls),
                "client_urls": list(self.client_urls), "is_learner": self.is_learner}


@dataclass
class EtcdGateway:
    """A client of one or more members' v3 JSON gateways (tries each endpoint in turn).

    Args:
        endpoints: client URLs (``https://IP:2379``).
        ca / cert / key: TLS files (paths), or None for plain HTTP / no client certificate.
        timeout_s: per request, seconds.
    """

    endpoints: list[str]
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout_s: float = 3.0
    _session: requests.Session = field(default_factory=requests.Session, repr=False)

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def call(self, path: str, body: dict[str, Any] | None = None, endpoint: str | None = None) -> dict[str, Any]:
        """``POST /v3<path>`` with a JSON body; the first endpoint that answers wins.

        Raises:
            EtcdGatewayError: every endpoint failed, or the answer carried an error.
        """
        last: EtcdGatewayError | None = None
        for url in [endpoint] if endpoint else self.endpoints:
            try:
                resp = self._session.post(
                    f"{url}/v3{path}", data=json.dumps(body or {}), timeout=self.timeout_s,
                    verify=self.ca if self.ca else True,
                    cert=(self.cert, self.key) if self.cert and self.key else None,
                )
            except requests.RequestException as exc:
                last = EtcdGatewayError(f"{url}: {type(exc).__name__}: {exc}")
                continue
            try:
                data = resp.json()
            except ValueError:
                data = {}
            if resp.status_code != 200 or "error" in data or "message" in data and "code" in data:
                msg = str(data.get("message") or data.get("error") or resp.text[:200])
                err = EtcdGatewayError(msg, resp.status_code)
                if "not supported for learner" in msg or resp.status_code >= 500 and "unhealthy" not in msg:
                    last = err  # a learner endpoint or a sick member: try the next
                    continue
                raise err
            return data
        raise last or EtcdGatewayError("no endpoint")

    def member_list(self) -> tuple[int, list[GatewayMember]]:
        """``/cluster/member/list`` → (cluster ID, members)."""
        data = self.call("/cluster/member/list", {"linearizable": True})
        header = data.get("header") or {}
        return int(header.get("cluster_id", 0)), [GatewayMember.from_json(m) for m in data.get("members") or []]

    def member_add(self, peer_urls: list[str], learner: bool = True) -> tuple[GatewayMember, list[GatewayMember]]:
        """``/cluster/member/add`` → (the new member, all members)."""
        data = self.call("/cluster/member/add", {"peerURLs": peer_urls, "isLearner": learner})
        return GatewayMember.from_json(data["member"]), [GatewayMember.from_json(m) for m in data.get("members") or []]

    def member_remove(self, member_id: int) -> None:
        """``/cluster/member/remove``."""
        self.call("/cluster/member/remove", {"ID": str(member_id)})

    def member_promote(self, member_id: int) -> None:
        """``/cluster/member/promote``."""
        self.call("/cluster/member/promote", {"ID": str(member_id)})

    def leader_of(self, endpoint: str) -> int:
        """``/maintenance/status`` of one endpoint → the leader ID it follows (0 = none)."""
        return int(self.call("/maintenance/status", {}, endpoint=endpoint).get("leader", 0))


def initial_cluster(members: list[GatewayMember], name: str, peer_url: str) -> str:
    """etcd's ``--initial-cluster`` for a member joining with ``name`` at ``peer_url``: every member's
    ``name=peerURL`` pair (the joiner's own entry, unstarted with no name, takes ``name``)."""
    pairs = []
    for m in members:
        member_name = name if peer_url in m.peer_urls else m.name
        if not member_name:
            continue  # another unstarted member: etcd refuses to start beside it anyway
        pairs.extend(f"{member_name}={url}" for url in m.peer_urls)
    if not any(p.endswith(f"={peer_url}") for p in pairs):
        pairs.append(f"{name}={peer_url}")
    return ",".join(pairs)


def hosts_block_problems(text: str, base: str, endpoint: str,
                         allowed_ips: set[str]) -> tuple[list[str], dict[str, str]]:
    """Check an /etc/hosts text: one block, well-formed, mapping ``endpoint`` to an allowed IP, and
    the user's lines (``base``) untouched around it.

    Returns:
        (problems as sentences, the block's mapping name → IP).
    """
    lines = text.splitlines()
    problems: list[str] = []
    begins = [i for i, ln in enumerate(lines) if ln == HOSTS_BEGIN]
    ends = [i for i, ln in enumerate(lines) if ln == HOSTS_END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        return [f"managed block malformed ({len(begins)} begin, {len(ends)} end marker lines)"], {}
    body = lines[begins[0] + 1:ends[0]]
    outside = lines[:begins[0]] + lines[ends[0] + 1:]
    entries: dict[str, str] = {}
    for ln in body:
        fields = ln.split("\t")
        if len(fields) != 2:
            problems.append(f"block line {ln!r} is not IP<TAB>NAME")
            continue
        ip, name = fields
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            problems.append(f"block line {ln!r}: {ip!r} is not an IP address")
            continue
        if not name or any(ch.isspace() for ch in name):
            problems.append(f"block line {ln!r}: bad name")
            continue
        entries[name] = ip
    if [ln for ln in outside if ln.strip()] != [ln for ln in base.splitlines() if ln.strip()]:
        problems.append("the lines outside the block changed")
    if set(entries) != {endpoint}:
        problems.append(f"managed names {sorted(entries)}, expected [{endpoint!r}]")
    elif entries[endpoint] not in allowed_ips:
        problems.append(f"{endpoint} → {entries[endpoint]}, not a running control plane")
    return problems, entries
