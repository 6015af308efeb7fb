"""Seeing what the leader does: a status ConfigMap, Events, and metrics in the textfile.

- ConfigMap ``<lease name>-status`` in the Lease's namespace: ``data[<namespace>.<release>]`` =
  one JSON line ``{"state", "why", "epoch", "at"}``, plus ``data.leader`` (holder, epoch). Written
  by the leader only, fenced like every other write (a deposed leader's status is stale, not
  overwritten). ``herd-agent releases status`` reads it.
- Events (core/v1) about the Lease object (``involvedObject`` kind Lease), reason ``Release<State>``
  (``ReleaseDeployed``, ``ReleaseFailed``, ``ReleaseRecovered``...), message redacted.
- ``herd_agent_leader.prom`` in ``metrics.textfile_dir`` (its own file, so the watcher's
  ``herd_agent.prom`` is untouched): ``herd_agent_leader_is_leader``, ``herd_agent_leader_epoch``,
  ``herd_agent_leader_release_state{release,state}`` (1 for the current state),
  ``herd_agent_leader_apply_seconds``, ``herd_agent_leader_recoveries_total``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.host.fsroot import HostRoot
from herd_agent.leader.fence import Deposed, Fence
from herd_agent.leave.report import render_gauges
from herd_agent.logs import RateLimitedLogger
from herd_agent.redact import redact

log = logging.getLogger(__name__)
_limited = RateLimitedLogger(log, interval=60)

METRICS_FILE = "herd_agent_leader.prom"
STATES = ("pending", "waiting", "applying", "deployed", "unchanged", "ready", "failed", "blocked", "uninstalled",
          "recovered")


def status_configmap_name(lease_name: str) -> str:
    """The status ConfigMap's name for a Lease name."""
    return f"{lease_name}-status"


def _key(release_id: str) -> str:
    return release_id.replace("/", ".")


class Reporter:
    """Records release states. Every API write goes through ``fence``.

    Args:
        kube: lightkube client.
        fence: the leader's fence.
        namespace, lease_name: where the Lease (and so the status ConfigMap, the Events) live.
        root, cfg: for the metrics textfile (``metrics.textfile_dir``).
        identity: our holder identity (Event source).
    """

    def __init__(self, kube: Any, fence: Fence, namespace: str, lease_name: str, root: HostRoot, cfg: Config,
                 identity: str) -> None:
        self.kube = kube
        self.fence = fence
        self.namespace = namespace
        self.lease_name = lease_name
        self.root = root
        self.cfg = cfg
        self.identity = identity
        self.states: dict[str, dict[str, Any]] = {}
        self.recoveries = 0
        self.apply_seconds: float | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one status apply at a time, each with every entry

    def set(self, release_id: str, state: str, why: str = "", *, event: bool = True, warning: bool = False) -> None:
        """Record ``state`` (one of :data:`STATES`) of ``release_id`` with ``why``: status ConfigMap,
        an Event (when ``event``), the metrics. A Deposed fence drops the API writes (never raises)."""
        why = redact(why)[:1000]
        epoch = self.fence.epoch()
        entry = {"state": state, "why": why, "epoch": str(epoch) if epoch else None,
                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with self._lock:
            self.states[release_id] = entry
            if state == "recovered":
                self.recoveries += 1
        log.info("release %s: %s%s", release_id, state, f" ({why})" if why else "")
        try:
            self._write_configmap()
            if event:
                self._event(f"Release{state.capitalize()}", f"{release_id}: {state}{': ' + why if why else ''}",
                            warning)
        except Deposed:
            pass
        self.write_metrics()

    def _write_configmap(self) -> None:
        """Server-side apply of the whole status (every entry we know): an apply that omits a key
        this field manager applied before removes it (Kubernetes "Server-Side Apply"), so each
        apply carries them all, one apply at a time."""
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import ConfigMap

        with self._write_lock:
            epoch = self.fence.check(f"status ConfigMap {self.namespace}/{status_configmap_name(self.lease_name)}")
            with self._lock:
                data = {_key(rid): json.dumps(e, sort_keys=True) for rid, e in self.states.items()}
            data["leader"] = json.dumps({"holder": epoch.holder, "epoch": epoch.transitions})
            cm = ConfigMap(metadata=ObjectMeta(name=status_configmap_name(self.lease_name), namespace=self.namespace,
                                               annotations=self.fence.labels(epoch)), data=data)
            try:
                self.kube.apply(cm, field_manager="herd-agent-leader", force=True)
            except Exception as exc:
                _limited.log(logging.WARNING, "status", "could not write the status ConfigMap: %s", exc)

    def _event(self, reason: str, message: str, warning: bool) -> None:
        from lightkube.models.core_v1 import EventSource, ObjectReference
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import Event

        self.fence.check(f"Event {reason}")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            self.kube.create(Event(
                metadata=ObjectMeta(name=f"{self.lease_name}.{uuid.uuid4().hex[:16]}", namespace=self.namespace),
                involvedObject=ObjectReference(kind="Lease", name=self.lease_name, namespace=self.namespace,
                                               apiVersion="coordination.k8s.io/v1"),
                reason=reason, message=redact(message), type="Warning" if warning else "Normal",
                source=EventSource(component="herd-agent-leader"), count=1, firstTimestamp=now,
                lastTimestamp=now, reportingComponent="herd-agent-leader", reportingInstance=self.identity[:128]))
        except Exception as exc:
            _limited.log(logging.WARNING, "event", "could not create Event %s: %s", reason, exc)

    def write_metrics(self, *, leading: bool | None = None) -> None:
        """Rewrite ``herd_agent_leader.prom`` (atomic, 0644); never raises."""
        epoch = self.fence.epoch()
        is_leader = leading if leading is not None else (epoch is not None and self.fence.holding())
        gauges: list[tuple[str, str, float, dict[str, str]]] = [
            ("herd_agent_leader_is_leader", "1 while this agent holds the leader Lease.", float(is_leader), {}),
            ("herd_agent_leader_epoch", "leaseTransitions of the term this agent leads (0 when not leading).",
             float(epoch.transitions if epoch and is_leader else 0), {}),
            ("herd_agent_leader_recoveries_total", "Stuck releases this agent recovered.", float(self.recoveries), {}),
        ]
        if self.apply_seconds is not None:
            gauges.append(("herd_agent_leader_apply_seconds", "Seconds the last full apply took.",
                           self.apply_seconds, {}))
        with self._lock:
            for rid, entry in sorted(self.states.items()):
                gauges.append(("herd_agent_leader_release_state", "1 for the release's current state.", 1.0,
                               {"release": rid, "state": entry["state"]}))
        try:
            path = f"{self.cfg.get('metrics.textfile_dir').rstrip('/')}/{METRICS_FILE}"
            self.root.write(path, _merge_help(render_gauges(gauges)), mode=0o644)
        except Exception as exc:
            _limited.log(logging.WARNING, "metrics", "could not write the leader metrics textfile: %s", exc)


def _merge_help(text: str) -> str:
    """One ``# HELP``/``# TYPE`` per metric name (render_gauges writes them per sample)."""
    seen: set[str] = set()
    out = []
    for line in text.splitlines():
        if line.startswith("# "):
            key = " ".join(line.split()[:3])
            if key in seen:
                continue
            seen.add(key)
        out.append(line)
    return "\n".join(out) + "\n"


def read_status(kube: Any, namespace: str, lease_name: str) -> dict[str, Any]:
    """The status record and the Lease, for ``herd-agent releases status`` (reads only)."""
    from lightkube.resources.coordination_v1 import Lease
    from lightkube.resources.core_v1 import ConfigMap

    out: dict[str, Any] = {"lease": None, "leader": None, "releases": {}}
    try:
        lease = kube.get(Lease, lease_name, namespace=namespace)
        out["lease"] = {"holder": lease.spec.holderIdentity, "transitions": lease.spec.leaseTransitions,
                        "renewTime": str(lease.spec.renewTime) if lease.spec.renewTime else None}
    except Exception as exc:
        if getattr(getattr(exc, "status", None), "code", None) != 404:
            raise
    try:
        cm = kube.get(ConfigMap, status_configmap_name(lease_name), namespace=namespace)
        for k, v in (cm.data or {}).items():
            if k == "leader":
                out["leader"] = json.loads(v)
            else:
                out["releases"][k.replace(".", "/", 1)] = json.loads(v)
    except Exception as exc:
        if getattr(getattr(exc, "status", None), "code", None) != 404:
            raise
    return out
