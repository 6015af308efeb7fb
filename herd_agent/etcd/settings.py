"""Settings of the etcd membership code, read from the agent config (``etcd.*`` keys) or built
directly in tests and benchmarks.

Names of files and units on the host:

- ``herd-etcd.service``: the stacked etcd member in ``external`` mode. Its unit runs the etcd
  binary with ``EnvironmentFile=/etc/herd-agent/etcd.env``; etcd reads every flag from an
  ``ETCD_<FLAG>`` variable (``ETCD_INITIAL_CLUSTER`` is ``--initial-cluster``), so the agent
  writes only that file, never the unit.
- ``<data_dir>.identity.json``: the identity journal next to the data dir (see journal.py).
- ``/var/lib/herd-agent/etcd-gc.json``: first-seen times of stale candidates (see gc.py).
- ``/var/lib/herd-agent/etcd-pki/``: external mode with TLS: ``ca.crt`` (the cluster CA
  certificate), ``member.crt``/``member.key`` (this member's certificate, for serving clients and
  peers and as the client certificate of the agent and of k3s' datastore connection), all 0600
  (see pki.py). The CA's key is never written here: it stays in Secrets Manager.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from herd_agent.etcd.client import TlsFiles
from herd_agent.host.fsroot import HostRoot

log = logging.getLogger(__name__)

K3S_ETCD_TLS = "/var/lib/rancher/k3s/server/tls/etcd"
PKI_DIR = "/var/lib/herd-agent/etcd-pki"
INSECURE_WARNING = ("etcd.insecure_plain_http is true: the external etcd members talk plain HTTP, "
                    "UNENCRYPTED AND UNAUTHENTICATED; anyone who reaches the client port (%d) reads and "
                    "writes the whole datastore")
_warned = False


def transport_of(settings: EtcdSettings) -> str:
    """One line saying how the members talk (for ``etcd status`` and ``config check``)."""
    if settings.mode == "embedded":
        return "TLS with client certificates (k3s' embedded etcd)"
    if settings.member_tls:
        return "TLS with client-certificate authentication on client and peer URLs"
    return "PLAIN HTTP: unencrypted and unauthenticated (etcd.insecure_plain_http: true)"


@dataclass(frozen=True)
class Identity:
    """Who this instance is in etcd.

    Attributes:
        name: the member name (the k3s node name: instance id by default).
        ip: the instance's private IP; peer and client URLs are built on it.
    """

    name: str
    ip: str


@dataclass(frozen=True)
class EtcdSettings:
    """Everything the membership code needs besides the identity.

    Attributes:
        mode: ``external`` (the agent runs ``unit``) or ``embedded`` (k3s' own etcd).
        client_port, peer_port: TCP ports of every member.
        data_dir: host path of the member's data directory (external mode).
        unit: systemd unit that runs the member (external mode).
        env_file: host path of the unit's ``EnvironmentFile`` the agent writes.
        cluster_token: ``--initial-cluster-token`` of a new cluster.
        listen_localhost: also listen for clients on 127.0.0.1 (k3s' datastore endpoint), unless
            the instance IP is itself a loopback address;
            off in tests where many members share one host.
        lock_key: key of the cluster-wide membership lock.
        lock_ttl_s: lease TTL of the lock, seconds (it expires this long after its holder dies).
        lock_wait_s: longest wait for the lock, seconds.
        reconfig_retry_s: how long transient reconfiguration errors are retried, seconds.
        start_timeout_s: longest wait for a started member to answer and catch up, seconds.
        leave_timeout_s: longest wait for leadership moves and removal confirmation, seconds.
        embedded_removal_wait_s: in embedded mode, how long to wait for k3s to remove the member
            after the Node was deleted before removing it directly, seconds.
        stale_grace_s: a member whose instance is gone this long is stale, seconds.
        unstarted_grace_s: a member added but never started this long is stale, seconds.
        gc_state_file: host path of the stale-candidate first-seen file.
        scheme: ``http`` or ``https`` for the member URLs the agent builds.
        tls: client TLS files as host paths (embedded mode: k3s' etcd client certificate).
        extra_env: more ``ETCD_*`` variables for the env file (tests shorten
            ``ETCD_HEARTBEAT_INTERVAL``/``ETCD_ELECTION_TIMEOUT`` here).
        embedded_client_url: client URL of k3s' embedded etcd on this host.
        member_tls: external mode: the agent runs its members with TLS and client-certificate
            authentication (client and peer), certificates under ``pki_dir`` from the cluster CA.
        pki_dir: host directory of ``ca.crt``, ``member.crt``, ``member.key`` (0600 each).
        ca_secret: Secrets Manager secret id holding the cluster CA (certificate and key, PEM, JSON).
        cert_lifetime_s: lifetime of a member certificate, seconds; renewed when less than a
            third is left.
        ca_lifetime_s: lifetime of the cluster CA, seconds.
    """

    mode: str = "external"
    client_port: int = 2379
    peer_port: int = 2380
    data_dir: str = "/var/lib/etcd"
    unit: str = "herd-etcd.service"
    env_file: str = "/etc/herd-agent/etcd.env"
    cluster_token: str = "herd"
    listen_localhost: bool = True
    lock_key: str = "/herd/etcd/membership-lock"
    lock_ttl_s: int = 15
    lock_wait_s: float = 600.0
    reconfig_retry_s: float = 60.0
    start_timeout_s: float = 120.0
    leave_timeout_s: float = 60.0
    embedded_removal_wait_s: float = 60.0
    stale_grace_s: float = 300.0
    unstarted_grace_s: float = 600.0
    gc_state_file: str = "/var/lib/herd-agent/etcd-gc.json"
    scheme: str = "http"
    tls: TlsFiles | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    embedded_client_url: str = "https://127.0.0.1:2379"
    member_tls: bool = False
    pki_dir: str = PKI_DIR
    ca_secret: str = "/herd/herd/etcd-ca"
    cert_lifetime_s: float = 365 * 86400.0
    ca_lifetime_s: float = 10 * 365 * 86400.0

    @classmethod
    def external_tls(cls, **over: Any) -> EtcdSettings:
        """External-mode settings with member TLS on (https URLs, our client certificate)."""
        pki = str(over.get("pki_dir", PKI_DIR))
        over.setdefault("tls", TlsFiles(ca=f"{pki}/ca.crt", cert=f"{pki}/member.crt", key=f"{pki}/member.key"))
        return cls(mode="external", scheme="https", member_tls=True, **over)

    def pki_files(self) -> TlsFiles:
        """Host paths of the CA certificate and our member certificate and key (external TLS)."""
        return TlsFiles(ca=f"{self.pki_dir}/ca.crt", cert=f"{self.pki_dir}/member.crt",
                        key=f"{self.pki_dir}/member.key")

    @classmethod
    def from_config(cls, cfg: Any, cluster: str = "herd") -> EtcdSettings:
        """Build from a loaded :class:`~herd_agent.config.loader.Config` (its ``etcd.*`` keys).

        Embedded mode takes k3s' etcd client certificate (server-client.crt/.key, server-ca.crt).
        External mode runs TLS with client certificates unless ``etcd.insecure_plain_http`` says
        otherwise; that opt-out is logged at WARNING once per process (every join, every
        ``herd-agent etcd`` command, the watcher's first etcd pass).
        """
        global _warned
        mode = cfg.get("etcd.mode")
        tls = None
        scheme = "http"
        member_tls = False
        pki = PKI_DIR
        if mode == "embedded":
            scheme = "https"
            tls = TlsFiles(ca=f"{K3S_ETCD_TLS}/server-ca.crt", cert=f"{K3S_ETCD_TLS}/server-client.crt",
                           key=f"{K3S_ETCD_TLS}/server-client.key")
        elif cfg.get("etcd.insecure_plain_http"):
            if not _warned:
                log.warning(INSECURE_WARNING, int(cfg.get("etcd.client_port")))
                _warned = True
        else:
            scheme, member_tls = "https", True
            tls = TlsFiles(ca=f"{pki}/ca.crt", cert=f"{pki}/member.crt", key=f"{pki}/member.key")
        return cls(
            mode=mode,
            client_port=int(cfg.get("etcd.client_port")),
            peer_port=int(cfg.get("etcd.peer_port")),
            data_dir=str(cfg.get("etcd.data_dir")),
            cluster_token=f"herd-{cluster}",
            stale_grace_s=float(cfg.get("etcd.stale_grace_s")),
            unstarted_grace_s=float(cfg.get("etcd.unstarted_grace_s")),
            scheme=scheme,
            tls=tls,
            member_tls=member_tls,
            pki_dir=pki,
            ca_secret=str(cfg.get("etcd.ca_secret")).replace("{cluster}", cluster),
            cert_lifetime_s=float(cfg.get("etcd.cert_lifetime_days")) * 86400.0,
        )

    def peer_url(self, ip: str) -> str:
        """Peer URL of the member on ``ip``."""
        return f"{self.scheme}://{ip}:{self.peer_port}"

    def client_url(self, ip: str) -> str:
        """Client URL of the member on ``ip``."""
        return f"{self.scheme}://{ip}:{self.client_port}"

    def tls_files(self, root: HostRoot) -> TlsFiles | None:
        """The client TLS files mapped to real paths under ``root`` (None without TLS)."""
        if self.tls is None:
            return None
        def real(p: str | None) -> str | None:
            return str(root.path(p)) if p else None
        return TlsFiles(ca=real(self.tls.ca), cert=real(self.tls.cert), key=real(self.tls.key),
                        verify=self.tls.verify)
