"""The state every membership operation shares: this instance's member (root, settings, identity,
runner, clock) and the small steps found, join, leave and gc all take.

The operations themselves live one per module over this state, as etcd-manager splits its
controller by operation: :mod:`.found`, :mod:`.join`, :mod:`.leave` (and the stale-member pass in
:mod:`.gc`); :class:`herd_agent.etcd.membership.Membership` is the facade callers use.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from herd_agent.etcd.client import EtcdClient, Member, MemberStatus
from herd_agent.etcd.errors import EtcdError
from herd_agent.etcd.journal import IdentityRecord, write_journal
from herd_agent.etcd.lock import MembershipLock
from herd_agent.etcd.settings import EtcdSettings, Identity
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.runner import Runner, get_runner

if TYPE_CHECKING:
    from herd_agent.etcd.pki import CaStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JoinResult:
    """What a join or found did.

    Attributes:
        cluster_id, member_id: our cluster and member.
        reused: the existing membership and data dir were kept (restart only).
        join_s: seconds from the learner add to the promotion (0 when reused/founded).
        catchup_s: seconds from etcd ready to the promotion.
        removed: IDs of members removed on the way (our stale entries and stale members).
    """

    cluster_id: int
    member_id: int
    reused: bool = False
    join_s: float = 0.0
    catchup_s: float = 0.0
    removed: tuple[int, ...] = ()


def render_env(settings: EtcdSettings, identity: Identity, initial_cluster: str, state: str) -> str:
    """The unit's environment file: one ``ETCD_<FLAG>=value`` line per etcd flag.

    With TLS (the default in external mode) the member serves clients and peers over HTTPS and
    demands a client certificate from both (etcd flags ``--cert-file``, ``--key-file``,
    ``--trusted-ca-file``, ``--client-cert-auth`` and their ``--peer-*`` twins; etcd's
    "Transport security model" doc). One member certificate serves all four roles: it carries
    serverAuth and clientAuth, as etcd's own gateway dials its gRPC server with it.

    Args:
        initial_cluster: ``--initial-cluster`` value (see :func:`herd_agent.etcd.quorum.render_initial_cluster`).
        state: ``new`` (founder) or ``existing`` (joiner).
    """
    client = settings.client_url(identity.ip)
    listen_client = [client]
    # An instance whose own address is a loopback address is already reachable locally there.
    if settings.listen_localhost and not ipaddress.ip_address(identity.ip).is_loopback:
        listen_client.append(f"{settings.scheme}://127.0.0.1:{settings.client_port}")
    env = {
        "ETCD_NAME": identity.name,
        "ETCD_DATA_DIR": settings.data_dir,
        "ETCD_LISTEN_PEER_URLS": settings.peer_url(identity.ip),
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": settings.peer_url(identity.ip),
        "ETCD_LISTEN_CLIENT_URLS": ",".join(listen_client),
        "ETCD_ADVERTISE_CLIENT_URLS": client,
        "ETCD_INITIAL_CLUSTER": initial_cluster,
        "ETCD_INITIAL_CLUSTER_STATE": state,
        "ETCD_INITIAL_CLUSTER_TOKEN": settings.cluster_token,
        "ETCD_STRICT_RECONFIG_CHECK": "true",
    }
    if settings.member_tls:
        files = settings.pki_files()
        env.update({
            "ETCD_CERT_FILE": files.cert, "ETCD_KEY_FILE": files.key, "ETCD_TRUSTED_CA_FILE": files.ca,
            "ETCD_CLIENT_CERT_AUTH": "true",
            "ETCD_PEER_CERT_FILE": files.cert, "ETCD_PEER_KEY_FILE": files.key,
            "ETCD_PEER_TRUSTED_CA_FILE": files.ca, "ETCD_PEER_CLIENT_CERT_AUTH": "true",
        })
    env.update(settings.extra_env)
    lines = ["# Written by herd-agent (etcd membership); read by herd-etcd.service. Do not edit."]
    lines += [f"{k}={v}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


class LocalMember:
    """This instance's etcd member: what found, join, leave and gc share.

    Args:
        root: host root (env file, data dir, journal, gc state, certificates).
        settings: etcd settings.
        identity: our member name and IP.
        runner: the agent's runner (``systemctl``); default the process-wide one.
        clock: epoch-seconds clock for the gc grace periods and certificate renewal.
        ca_store: where the cluster CA lives (external mode with TLS); see :mod:`herd_agent.etcd.pki`.
    """

    def __init__(self, root: HostRoot, settings: EtcdSettings, identity: Identity, *,
                 runner: Runner | None = None, clock: Callable[[], float] = time.time,
                 ca_store: CaStore | None = None) -> None:
        self.root = root
        self.settings = settings
        self.identity = identity
        self.runner = runner
        self.clock = clock
        self.ca_store = ca_store

    @property
    def peer_url(self) -> str:
        """Our peer URL."""
        return self.settings.peer_url(self.identity.ip)

    @property
    def client_url(self) -> str:
        """Our client URL."""
        return self.settings.client_url(self.identity.ip)

    def client(self, endpoints: Sequence[str]) -> EtcdClient:
        """A client for ``endpoints`` with our TLS files and retry time."""
        return EtcdClient(list(endpoints), tls=self.settings.tls_files(self.root),
                          retry_s=self.settings.reconfig_retry_s)

    def systemctl(self, verb: str) -> None:
        """``systemctl VERB <unit>`` through the runner (start waits like ``Type=notify``)."""
        runner = self.runner or get_runner()
        timeout = self.settings.start_timeout_s + 30 if verb in ("start", "restart") else 120
        runner.run(["systemctl", verb, self.settings.unit], timeout=timeout)

    def write_env(self, initial_cluster: str, state: str) -> None:
        """Write the unit's env file (0640: no secrets in it, only paths)."""
        text = render_env(self.settings, self.identity, initial_cluster, state)
        self.root.write(self.settings.env_file, text, mode=0o640)

    def lock(self, client: EtcdClient, wait_s: float | None = None) -> MembershipLock:
        """The cluster-wide membership lock, held by our name."""
        return MembershipLock(client, self.settings.lock_key, self.identity.name, ttl_s=self.settings.lock_ttl_s,
                              wait_s=self.settings.lock_wait_s if wait_s is None else wait_s)

    def mine(self, members: Sequence[Member]) -> list[Member]:
        """Members that carry our name or our peer URL."""
        return [m for m in members if m.name == self.identity.name or self.peer_url in m.peer_urls]

    def journal(self, cluster_id: int, member_id: int, state: str) -> None:
        """Record our identity next to the data dir."""
        write_journal(self.root, self.settings.data_dir,
                      IdentityRecord(cluster_id, member_id, self.identity.name, self.peer_url, state))

    def ensure_certificates(self, *, founder: bool = False) -> bool:
        """External mode with TLS: make sure our CA copy and member certificate are in place and
        not due for renewal (see :func:`herd_agent.etcd.pki.ensure_member_certificate`).

        Returns:
            True when a certificate was (re)issued. False without TLS or when nothing changed.

        Raises:
            herd_agent.etcd.pki.PkiError: no CA store, or the CA is missing or unreadable.
        """
        if not self.settings.member_tls:
            return False
        from herd_agent.etcd.pki import ensure_member_certificate

        return ensure_member_certificate(self.root, self.settings, self.identity, self.ca_store,
                                         founder=founder, now=self.clock())

    def wait_serving(self, client: EtcdClient, *, need_leader: bool = True) -> int:
        """Wait until our member answers its status (with a leader); returns our member ID.

        Raises:
            herd_agent.etcd.errors.WaitTimeout: not within ``start_timeout_s``.
        """
        status = self.wait_status(client, lambda s: bool(s.leader) or not need_leader,
                                  "did not serve with a leader")
        return status.member_id

    def wait_status(self, client: EtcdClient, ready: Callable[[MemberStatus], bool], what: str) -> MemberStatus:
        """Poll our member's status (etcd ``Maintenance.Status``) every 50 ms until ``ready(status)``.

        Args:
            ready: the condition on our member's status; it may itself call etcd (an
                :class:`~herd_agent.etcd.errors.EtcdError` from it counts as "not yet").
            what: the failure, for the error message (e.g. ``"did not serve with a leader"``).
        Returns:
            The first status for which ``ready`` held.
        Raises:
            herd_agent.etcd.errors.WaitTimeout: not within ``start_timeout_s`` seconds.
        """
        from herd_agent.etcd.errors import WaitTimeout

        deadline = time.monotonic() + self.settings.start_timeout_s
        while True:
            try:
                status = client.status(self.client_url, timeout_s=2.0)
                if ready(status):
                    return status
            except EtcdError:
                pass
            if time.monotonic() > deadline:
                raise WaitTimeout(f"etcd member at {self.client_url} {what} within "
                                  f"{self.settings.start_timeout_s:.0f}s")
            time.sleep(0.05)
