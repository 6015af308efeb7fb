"""Settings of the etcd membership code, read from the agent config (``etcd.*`` keys) or built
directly in tests and benchmarks.

Names of files and units on the host:

- ``herd-etcd.service``: the stacked etcd member in ``external`` mode. Its unit runs the etcd
  binary with ``EnvironmentFile=/etc/herd-agent/etcd.env``; etcd reads every flag from an
  ``ETCD_<FLAG>`` variable (``ETCD_INITIAL_CLUSTER`` is ``--initial-cluster``), so the agent
  writes only that file, never the unit.
- ``<data_dir>.identity.json``: the identity journal next to the data dir (see journal.py).
- ``/var/lib/herd-agent/etcd-gc.json``: first-seen times of stale candidates (see gc.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from herd_agent.etcd.client import TlsFiles
from herd_agent.host.fsroot import HostRoot

K3S_ETCD_TLS = "/var/lib/rancher/k3s/server/tls/etcd"


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

    @classmethod
    def from_config(cls, cfg: Any, cluster: str = "herd") -> EtcdSettings:
        """Build from a loaded :class:`~herd_agent.config.loader.Config` (its ``etcd.*`` keys).

        Embedded mode takes k3s' etcd client certificate (server-client.crt/.key, server-ca.crt).
        """
        mode = cfg.get("etcd.mode")
        tls = None
        scheme = "http"
        if mode == "embedded":
            scheme = "https"
            tls = TlsFiles(ca=f"{K3S_ETCD_TLS}/server-ca.crt", cert=f"{K3S_ETCD_TLS}/server-client.crt",
                           key=f"{K3S_ETCD_TLS}/server-client.key")
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
