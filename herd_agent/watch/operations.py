"""The watcher's periodic operations: hosts refresh, etcd gc, metrics.

They run on the periodic worker thread (:mod:`.periodic`) with their own IMDS client, so none of
them can hold up the termination poll. Each raises on failure; :class:`PeriodicOperation` logs it
rate-limited. boto3, lightkube and the etcd client are imported only when an operation needs
them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from herd_agent.config.loader import Config

# What the idle jobs use, imported here on the main thread: imported on the worker thread they
# would grow a second malloc arena in the resident process (measured: about 0.2 MiB RSS).
from herd_agent.discovery import control_plane
from herd_agent.discovery.imds import ImdsClient
from herd_agent.host.fsroot import HostRoot
from herd_agent.join import state as join_state
from herd_agent.leave import report
from herd_agent.logs import RateLimitedLogger
from herd_agent.watch.periodic import PeriodicOperation

log = logging.getLogger(__name__)

METRICS_PERIOD_S = 60.0


class WatcherOperations:
    """The periodic jobs over one host.

    Args:
        root: host root; cfg: effective config.
        imds: an IMDS client for this thread (not the poll's).
        instance_id: ``() -> str or None`` — this instance, once the poll has read it; jobs that
            touch the join state wait for it (a state file of another instance is left alone).
        healthy, last_poll: the watcher's health and last good poll (epoch seconds), for metrics.
        clock: epoch seconds.
    """

    def __init__(self, root: HostRoot, cfg: Config, imds: ImdsClient, instance_id: Callable[[], str | None], *,
                 healthy: Callable[[], bool] = lambda: True, last_poll: Callable[[], float | None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.root, self.cfg, self.imds = root, cfg, imds
        self._instance_id = instance_id
        self._healthy, self._last_poll, self._clock = healthy, last_poll, clock
        self.limited = RateLimitedLogger(log, interval=60)

    def operations(self) -> list[PeriodicOperation]:
        """Hosts refresh (``hosts.refresh_interval_s``, first at once), etcd gc
        (``etcd.gc_interval_s``, first after one interval), metrics (every 60 s)."""
        gc_every = float(self.cfg.get("etcd.gc_interval_s"))
        return [
            PeriodicOperation("hosts-refresh", self.refresh_hosts, float(self.cfg.get("hosts.refresh_interval_s"))),
            PeriodicOperation("etcd-gc", self.etcd_gc, gc_every, first_delay_s=gc_every),
            PeriodicOperation("metrics", self.write_metrics, METRICS_PERIOD_S),
        ]

    def _own_state(self) -> Any:
        me = self._instance_id()
        state = join_state.load_state(self.root)
        if me is None or state is None or state.instance_id != me:
            return None
        return state

    def refresh_hosts(self) -> None:
        """Keep the endpoint name on a healthy control plane, as decided by its one owner,
        :func:`herd_agent.discovery.control_plane.healthy_endpoint`: the recorded one is kept while
        it accepts connections (``liveness="connect"``: no TLS, no AWS call, no IMDS read); only
        when it stopped are the control planes looked up by tag and probed (TLS verified against
        the pinned CA) — the discovery retry loop, minutes while none answers, which is why this
        runs off the poll thread.

        Raises:
            HerdError: discovery found no healthy control plane, IMDS or AWS failed.
        """
        state = self._own_state()
        if state is None or not state.endpoint_ip:
            return
        from herd_agent.discovery.identity import read_identity

        old = state.endpoint_ip
        read: list[Any] = []

        def identity() -> Any:  # called only when the recorded endpoint stopped answering
            self.limited.log(logging.WARNING, "hosts", "control plane %s stopped answering; choosing another", old)
            read.append(read_identity(self.imds, self.cfg))
            return read[-1]

        chosen = control_plane.healthy_endpoint(identity, self.cfg, current=old, liveness="connect",
                                                ca_pem=control_plane.pinned_ca(self.root)).chosen
        if chosen.ip == old:
            self.limited.reset("hosts")
            return
        from herd_agent.host import hosts
        from herd_agent.k3s.config import endpoint_name

        hosts.sync(self.root, {endpoint_name(self.cfg, read[-1]): chosen.ip})
        state.endpoint_ip = chosen.ip
        join_state.save_state(self.root, state)
        log.warning("/etc/hosts: control plane %s stopped answering; the endpoint now points at %s", old, chosen.ip)

    def etcd_gc(self) -> None:
        """Control planes, external etcd: one stale-member pass (``herd-agent etcd gc``) under the
        membership lock, with EC2 as cloud truth. Imports boto3 only here, on control planes."""
        state = self._own_state()
        if state is None or state.role != "control-plane" or self.cfg.get("etcd.mode") != "external":
            return
        from herd_agent import aws
        from herd_agent.discovery.identity import valid_ip, valid_region
        from herd_agent.etcd.gc import Ec2InstanceOracle
        from herd_agent.etcd.membership import Membership
        from herd_agent.etcd.settings import EtcdSettings
        from herd_agent.etcd.settings import Identity as EtcdIdentity

        ip, region = valid_ip(self.imds.local_ipv4(), "local-ipv4"), valid_region(self.imds.region())
        settings = EtcdSettings.from_config(self.cfg, cluster=state.cluster)
        me = Membership(self.root, settings, EtcdIdentity(state.instance_id, ip))
        result = me.gc([settings.client_url(ip)], Ec2InstanceOracle(region, client=aws.client("ec2", region)))
        if result.removed is not None:
            log.warning("etcd gc removed stale member %s", result.removed)

    def write_metrics(self) -> None:
        """The watcher's gauges in the Prometheus textfile."""
        report.write_metrics(self.root, self.cfg, {"watcher_healthy": self._healthy(),
                                                   "watcher_last_poll": self._last_poll() or 0.0})
