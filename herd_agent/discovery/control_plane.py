"""The one owner of "which control plane does this instance talk to": :func:`healthy_endpoint`.

Every caller asks here — the join (its discovery and its heal during the Ready wait),
``herd-agent hosts sync`` and the watcher's hosts refresh — and nothing else probes or chooses.

**Decision** (one round):

1. ``current`` (the recorded endpoint), when given and still alive, is kept: no AWS call. Alive
   means it passes the probe, or for the resident watcher (``liveness="connect"``) that it accepts
   a TCP connection on the API port (a TLS context would break the watcher's memory budget).
2. Otherwise the candidates are looked up: ``ec2:DescribeInstances`` filtered on
   ``tag:<cluster_tag>=<cluster>``, ``tag:<role_tag>=<control-plane value>``,
   ``instance-state-name`` in (running, pending) and ``vpc-id=<this instance's VPC>`` (from IMDS),
   paginated; this instance excluded. ``discovery.addresses`` replaces the lookup with fixed IPs;
   ``discovery.instance_ids`` looks up exactly those instances.
3. They are probed in preference order — same AZ first, then by private IP, so every joiner of an
   AZ agrees — and the first healthy one wins.

Rounds repeat with exponential backoff (``discovery.attempts``, ``discovery.backoff_max_s``).

**Probe** (k3s serves both paths unauthenticated on its supervisor port, docs.k3s.io "Cluster
Datastore" / "k3s token"): with a **secure** join token (``K10<CA hash>::…``, see
:mod:`herd_agent.k3s.tokens`), ``GET /cacerts`` without verification, compare its sha256 with the
token's hash (a mismatch rejects the candidate: a rogue or foreign server), then ``GET /ping`` with
TLS verified against that CA, expecting ``200`` and ``pong``. Once the CA is pinned (the join
stores it in ``/var/lib/herd-agent/server-ca.crt``), every probe verifies against it. With no CA
known (a founder's own first look, a short token) the ``/ping`` handshake is not verified; no
credential is sent by the probe either way. The server certificate's chain is verified, not its
name: any server of the cluster may answer on its own IP.

Answers are bounded: at most 64 KiB read per response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import ExitCode, HerdError

if TYPE_CHECKING:  # the resident watcher imports this module: keep its import light
    from herd_agent.k3s.tokens import JoinToken

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024


class NoControlPlaneError(HerdError):
    """No healthy control plane after the bounded retries (exit 69).

    Attributes:
        waiting_for_token: a control plane answered, but the join token was missing or not yet
            in secure format.
    """

    exit_code = ExitCode.UNAVAILABLE
    waiting_for_token = False


class CaMismatchError(HerdError):
    """Control planes answered, but none with the CA the secure join token names (exit 82)."""

    exit_code = ExitCode.CA_MISMATCH


@dataclass(frozen=True, order=True)
class Candidate:
    """A control-plane instance: its private IP, and when known its instance id and AZ."""

    ip: str
    instance_id: str | None = None
    availability_zone: str | None = None


@dataclass
class Endpoint:
    """The decision: the chosen control plane, what was seen, and the CA pinned (PEM) if any."""

    chosen: Candidate
    seen: list[Candidate] = field(default_factory=list)
    ca_pem: bytes | None = None


def describe_control_planes(ident: Identity, cfg: Config, *, ec2: Any = None) -> list[Candidate]:
    """Control-plane candidates from config or EC2, excluding this instance.

    Args:
        ec2: a boto3 EC2 client (tests pass one wrapped in botocore's Stubber); default
            ``aws.client("ec2", ident.region)``.

    Raises:
        AwsError: DescribeInstances failed (AccessDenied names ``ec2:DescribeInstances``).
    """
    fixed = cfg.get("discovery.addresses")
    if fixed:
        return [Candidate(ip) for ip in fixed if ip != ident.private_ip]
    from herd_agent import aws

    ec2 = ec2 if ec2 is not None else aws.client("ec2", ident.region)
    ids = cfg.get("discovery.instance_ids")
    if ids:
        kwargs: dict = {"InstanceIds": list(ids)}
    else:
        filters = [
            {"Name": f"tag:{cfg.get('identity.cluster_tag')}", "Values": [ident.cluster]},
            {"Name": f"tag:{cfg.get('identity.role_tag')}", "Values": [cfg.get("identity.control_plane_value")]},
            {"Name": "instance-state-name", "Values": ["running", "pending"]},
        ]
        if ident.vpc_id:
            filters.append({"Name": "vpc-id", "Values": [ident.vpc_id]})
        kwargs = {"Filters": filters, "MaxResults": 1000}
    out: list[Candidate] = []
    while True:
        page = aws.call(ec2, "DescribeInstances", **kwargs)
        for reservation in page.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                ip = inst.get("PrivateIpAddress")
                if not isinstance(ip, str) or not ip or inst.get("InstanceId") == ident.instance_id:
                    continue
                if inst.get("State", {}).get("Name") not in ("running", "pending"):
                    continue
                if ident.vpc_id and inst.get("VpcId") not in (None, ident.vpc_id):
                    continue
                out.append(Candidate(ip, inst.get("InstanceId"), inst.get("Placement", {}).get("AvailabilityZone")))
        token = page.get("NextToken")
        if not token:
            return sorted(out)
        kwargs["NextToken"] = token


def _get(ip: str, port: int, path: str, timeout_s: float, ca_pem: bytes | None) -> tuple[int, bytes] | None:
    """``GET https://ip:port/path``: (status, body up to 64 KiB), or None when unreachable, too
    large, or the TLS check failed. ``ca_pem`` None: unverified (k3s' own /cacerts fetch is too).

    Standard-library ``http.client`` (the IMDS client's transport too), so the resident watcher
    imports no further HTTP stack for its periodic probe.
    """
    import http.client
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the chain is verified, not the name (module docstring)
    if ca_pem:
        try:
            ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
        except (ssl.SSLError, ValueError):
            return None
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(ip, port, timeout=timeout_s, context=ctx)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        body = r.read(MAX_ANSWER_BYTES + 1)
    except (OSError, http.client.HTTPException, ssl.SSLError):
        return None
    finally:
        conn.close()
    if len(body) > MAX_ANSWER_BYTES:
        return None
    return r.status, body


def _connects(ip: str, port: int, timeout_s: float) -> bool:
    """True when a TCP connection to ``ip:port`` opens within ``timeout_s`` seconds."""
    import socket

    try:
        with socket.create_connection((ip, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def probe(ip: str, port: int, timeout_s: float, *, ca_pem: bytes | None = None) -> bool:
    """True when ``https://ip:port/ping`` answers ``200`` and ``pong`` within ``timeout_s`` seconds,
    over TLS verified against ``ca_pem`` when given."""
    got = _get(ip, port, "/ping", timeout_s, ca_pem)
    return got is not None and got[0] == 200 and got[1].strip() == b"pong"


def fetch_ca(ip: str, port: int, timeout_s: float) -> bytes | None:
    """The CA bundle a server serves at ``/cacerts`` (unverified fetch, as k3s does), or None."""
    got = _get(ip, port, "/cacerts", timeout_s, None)
    return got[1] if got is not None and got[0] == 200 else None


@dataclass
class Prober:
    """The health check of one decision: pins the CA from a secure token, then verifies with it.

    Attributes:
        ca_pem: the pinned CA (given, or learned from the first server whose /cacerts matches).
        rejected: ``ip -> reason`` of servers whose CA did not match the token.
    """

    port: int
    timeout_s: float
    token: JoinToken | None = None
    ca_pem: bytes | None = None
    rejected: dict[str, str] = field(default_factory=dict)

    def __call__(self, cand: Candidate) -> bool:  # noqa: D102
        if self.token is not None and self.token.secure:
            from herd_agent.k3s.tokens import ca_matches

            served = fetch_ca(cand.ip, self.port, self.timeout_s)
            if served is None:
                return False
            if not ca_matches(self.token, served):
                import hashlib

                self.rejected[cand.ip] = (f"{cand.instance_id or '-'}@{cand.ip} serves a CA with sha256 "
                                          f"{hashlib.sha256(served).hexdigest()[:16]}…")
                log.warning("control plane %s: its CA does not match the join token's hash; not using it", cand.ip)
                return False
            if self.ca_pem is None:
                self.ca_pem = served
        return probe(cand.ip, self.port, self.timeout_s, ca_pem=self.ca_pem)


def choose(candidates: Sequence[Candidate], healthy: Callable[[Candidate], bool], az: str) -> Candidate | None:
    """The preferred healthy candidate: same AZ first, then by IP. Pure but for ``healthy``.

    Candidates are probed in preference order and the first healthy one wins, so a cluster with a
    healthy same-AZ control plane costs one probe.
    """
    ordered = sorted(candidates, key=lambda c: (c.availability_zone != az, c.ip))
    for cand in ordered:
        if healthy(cand):
            return cand
    return None


def healthy_endpoint(
    ident: Identity | Callable[[], Identity],
    cfg: Config,
    *,
    current: str | None = None,
    token: Callable[[], JoinToken | None] | None = None,
    require_secure: bool = False,
    ca_pem: bytes | None = None,
    liveness: str = "ping",
    attempts: int | None = None,
    ec2: Any = None,
    check: Callable[[Candidate], bool] | None = None,
    sleep: Callable[[float], None] | None = None,
    exclude: Collection[str] = (),
) -> Endpoint:
    """Decide the control plane to use (the module docstring's rules), retrying with backoff.

    Args:
        ident: this instance, or a function that reads it — called only when a lookup is needed,
            so keeping a healthy ``current`` costs no IMDS read (the resident watcher).
        current: the recorded endpoint IP; kept while it passes the probe (no AWS call).
        token: reads the join token (each round: a joiner waits for the secure one), or None.
        require_secure: a round without a secure token fails ("the cluster's secure token is not
            published yet"): joiners never send credentials under a short token.
        ca_pem: a CA already pinned (PEM); probes verify against it.
        liveness: how ``current`` is re-checked: ``ping`` (the full probe) or ``connect`` (a TCP
            connect to the API port: no TLS, for the resident watcher, whose memory budget a TLS
            context would break; the endpoint was verified when chosen, sends it nothing, and k3s
            verifies it against its own pinned CA). Candidates always get the full probe.
        attempts: rounds (default ``discovery.attempts``); 1 for a single look.
        ec2: EC2 client for the lookup (tests: a Stubber-wrapped one).
        check: health check override (tests); default a :class:`Prober`.
        sleep: tenacity's sleep (tests pass a no-op).
        exclude: private IPs never to choose (e.g. a control plane whose etcd stopped answering
            mid-join: it is leaving).

    Raises:
        NoControlPlaneError: none healthy after all rounds (exit 69); lists what was seen.
        CaMismatchError: servers answered but none with the token's CA (exit 82).
        AwsError: the EC2 lookup was refused.
    """
    port = cfg.get("discovery.api_port")
    timeout = cfg.get("discovery.health_timeout_s")
    rounds = attempts or cfg.get("discovery.attempts")
    prober = Prober(port, timeout, ca_pem=ca_pem)
    if liveness not in ("ping", "connect"):
        raise ValueError(f"liveness must be 'ping' or 'connect' (got {liveness!r})")
    if current:
        if check is not None:
            alive = check(Candidate(current))
        elif liveness == "connect":
            alive = _connects(current, port, timeout)
        else:
            alive = probe(current, port, timeout, ca_pem=ca_pem)
        if alive:
            return Endpoint(Candidate(current), [], ca_pem)
    if callable(ident):
        ident = ident()
    me: Identity = ident
    seen: list[Candidate] = []
    waiting_for_token = False

    def one_round() -> Candidate:
        nonlocal seen, waiting_for_token
        prober.token = token() if token else None
        waiting_for_token = False
        seen = describe_control_planes(me, cfg, ec2=ec2)
        found = choose([c for c in seen if c.ip not in exclude], check or prober, me.availability_zone)
        if found is None:
            raise NoControlPlaneError("none healthy yet")
        if require_secure and not (prober.token and prober.token.secure):
            waiting_for_token = True
            raise NoControlPlaneError("the cluster's secure join token is not published yet")
        return found

    import tenacity

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(rounds),
        wait=tenacity.wait_exponential(multiplier=0.5, max=cfg.get("discovery.backoff_max_s")),
        retry=tenacity.retry_if_exception_type(NoControlPlaneError),
        before_sleep=lambda rs: log.info("no healthy control plane yet (round %d: %s); retrying",
                                         rs.attempt_number, rs.outcome.exception() if rs.outcome else ""),
        reraise=True,
        **({"sleep": sleep} if sleep else {}),
    )
    try:
        chosen = retrying(one_round)
    except NoControlPlaneError:
        if prober.rejected:
            raise CaMismatchError(
                f"refusing control plane(s) of cluster {me.cluster!r} whose CA does not match the join token "
                f"({'; '.join(prober.rejected.values())}): a rogue or foreign server carries the cluster's tags. "
                "Find who tagged it; check that the token parameter belongs to this cluster"
            ) from None
        listed = ", ".join(f"{c.instance_id or '-'}@{c.ip}" for c in seen) or "no control-plane instances"
        why = ("the cluster's secure join token was never published (the founder publishes it once its k3s runs)"
               if waiting_for_token else f"found: {listed}; probe: https://IP:{port}/ping")
        error = NoControlPlaneError(
            f"no healthy control plane for cluster {me.cluster!r} after {rounds} rounds ({why}). "
            f"Check the control planes' tags ({cfg.get('identity.cluster_tag')}, {cfg.get('identity.role_tag')}), "
            f"their VPC, and that port {port} is open"
        )
        error.waiting_for_token = waiting_for_token
        raise error from None
    log.info("control plane: %s (%s, %s)", chosen.ip, chosen.instance_id or "fixed address", chosen.availability_zone)
    return Endpoint(chosen, seen, prober.ca_pem)


def pinned_ca(root: Any) -> bytes | None:
    """The CA the join pinned (``/var/lib/herd-agent/server-ca.crt`` under ``root``), or None."""
    from herd_agent.k3s.tokens import SERVER_CA_FILE

    try:
        return bytes(root.path(SERVER_CA_FILE).read_bytes()) or None
    except OSError:
        return None
