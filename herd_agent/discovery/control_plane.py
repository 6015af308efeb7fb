"""Find a healthy control plane: EC2 tag lookup (or fixed addresses), health probe, choice.

Lookup: ``ec2:DescribeInstances`` filtered on ``tag:<cluster_tag>=<cluster>``,
``tag:<role_tag>=<control-plane value>`` and ``instance-state-name`` in (running, pending),
paginated — one call for a cluster of up to 1000 control planes. ``discovery.addresses`` replaces
the lookup with fixed IPs; ``discovery.instance_ids`` looks up exactly those instances.

Health probe (documented in docs/discovery.md): an HTTPS ``GET /ping`` on the k3s API port; a
server that answers ``200 pong`` is healthy (k3s serves ``/ping`` unauthenticated on its supervisor
port for exactly this). The probe carries no credential, so its TLS handshake is not verified — the
k3s agent itself verifies the server against the CA hash in the join token.

Choice: healthy ones only; same AZ first; then by private IP, so every joiner of an AZ agrees.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import ExitCode, HerdError

log = logging.getLogger(__name__)


class NoControlPlaneError(HerdError):
    """No healthy control plane after the bounded retries (exit 69)."""

    exit_code = ExitCode.UNAVAILABLE


@dataclass(frozen=True, order=True)
class Candidate:
    """A control-plane instance: its private IP, and when known its instance id and AZ."""

    ip: str
    instance_id: str | None = None
    availability_zone: str | None = None


def describe_control_planes(ident: Identity, cfg: Config) -> list[Candidate]:
    """Control-plane candidates from config or EC2, excluding this instance.

    Raises:
        AwsError: DescribeInstances failed (AccessDenied names ``ec2:DescribeInstances``).
    """
    fixed = cfg.get("discovery.addresses")
    if fixed:
        return [Candidate(ip) for ip in fixed if ip != ident.private_ip]
    from herd_agent import aws

    ec2 = aws.client("ec2", ident.region)
    ids = cfg.get("discovery.instance_ids")
    if ids:
        kwargs: dict = {"InstanceIds": list(ids)}
    else:
        kwargs = {
            "Filters": [
                {"Name": f"tag:{cfg.get('identity.cluster_tag')}", "Values": [ident.cluster]},
                {"Name": f"tag:{cfg.get('identity.role_tag')}", "Values": [cfg.get("identity.control_plane_value")]},
                {"Name": "instance-state-name", "Values": ["running", "pending"]},
            ],
            "MaxResults": 1000,
        }
    out: list[Candidate] = []
    while True:
        page = aws.call(ec2, "DescribeInstances", **kwargs)
        for reservation in page.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                ip = inst.get("PrivateIpAddress")
                if not ip or inst.get("InstanceId") == ident.instance_id:
                    continue
                if inst.get("State", {}).get("Name") not in ("running", "pending"):
                    continue
                out.append(Candidate(ip, inst.get("InstanceId"), inst.get("Placement", {}).get("AvailabilityZone")))
        token = page.get("NextToken")
        if not token:
            return sorted(out)
        kwargs["NextToken"] = token


def reachable(ip: str, port: int, timeout_s: float) -> bool:
    """True when a TCP connection to ``ip:port`` opens within ``timeout_s`` seconds.

    The watcher's periodic liveness check of the recorded control plane: a terminated or stopped
    instance refuses or never answers. It costs no TLS (which would hold ~1.5 MiB of OpenSSL
    state in the resident watcher); the full :func:`probe` runs before a new one is chosen.
    """
    try:
        with socket.create_connection((ip, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def probe(ip: str, port: int, timeout_s: float) -> bool:
    """True when ``https://ip:port/ping`` answers ``200`` with body ``pong`` within ``timeout_s`` seconds."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # no credential is sent; see module docstring
    try:
        with socket.create_connection((ip, port), timeout=timeout_s) as raw, ctx.wrap_socket(raw) as tls:
            tls.settimeout(timeout_s)
            tls.sendall(f"GET /ping HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while len(data) < 65536:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
    except (OSError, ssl.SSLError):
        return False
    head, _, body = data.partition(b"\r\n\r\n")
    return head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")) and body.strip().endswith(b"pong")


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


def discover(
    ident: Identity,
    cfg: Config,
    *,
    healthy: Callable[[Candidate], bool] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Candidate:
    """Find a healthy control plane, retrying with backoff (``discovery.attempts`` rounds).

    Args:
        healthy: probe override (tests); default :func:`probe` on ``discovery.api_port``.
        sleep: tenacity's sleep (tests pass a no-op).

    Raises:
        NoControlPlaneError: none healthy after all rounds (exit 69); the message lists what was seen.
        AwsError: the EC2 lookup was refused.
    """
    port = cfg.get("discovery.api_port")
    timeout = cfg.get("discovery.health_timeout_s")
    check = healthy or (lambda c: probe(c.ip, port, timeout))
    seen: list[Candidate] = []

    def one_round() -> Candidate:
        nonlocal seen
        seen = describe_control_planes(ident, cfg)
        found = choose(seen, check, ident.availability_zone)
        if found is None:
            raise NoControlPlaneError("none healthy yet")
        return found

    import tenacity

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(cfg.get("discovery.attempts")),
        wait=tenacity.wait_exponential(multiplier=0.5, max=cfg.get("discovery.backoff_max_s")),
        retry=tenacity.retry_if_exception_type(NoControlPlaneError),
        before_sleep=lambda rs: log.info("no healthy control plane yet (round %d); retrying", rs.attempt_number),
        reraise=True,
        **({"sleep": sleep} if sleep else {}),
    )
    try:
        chosen = retrying(one_round)
    except NoControlPlaneError:
        listed = ", ".join(f"{c.instance_id or '-'}@{c.ip}" for c in seen) or "no control-plane instances"
        raise NoControlPlaneError(
            f"no healthy control plane for cluster {ident.cluster!r} after {cfg.get('discovery.attempts')} rounds "
            f"(found: {listed}; probe: https://IP:{port}/ping). Check the control planes' tags "
            f"({cfg.get('identity.cluster_tag')}, {cfg.get('identity.role_tag')}) and that port {port} is open"
        ) from None
    log.info("control plane: %s (%s, %s)", chosen.ip, chosen.instance_id or "fixed address", chosen.availability_zone)
    return chosen
