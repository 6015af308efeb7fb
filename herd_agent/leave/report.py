"""Telling people and machines what the leave does: Kubernetes Events on the Node, a Prometheus
textfile for node_exporter's textfile collector, and an optional webhook.

None of these may hold up the leave: each failure is logged (rate-limited) and dropped.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.host.fsroot import HostRoot
from herd_agent.logs import RateLimitedLogger

log = logging.getLogger(__name__)
_limited = RateLimitedLogger(log, interval=60)

METRICS_FILE = "herd_agent.prom"


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def node_event(kube: Any, node: str, reason: str, message: str, *, warning: bool = False) -> None:
    """Create a core/v1 Event about Node ``node`` (``involvedObject`` kind Node, namespace default,
    source ``herd-agent``), as ``kubectl describe node`` shows them."""
    try:
        from lightkube.models.core_v1 import EventSource, ObjectReference
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import Event

        now = _rfc3339(time.time())
        kube.create(Event(
            metadata=ObjectMeta(name=f"{node}.{uuid.uuid4().hex[:16]}", namespace="default"),
            involvedObject=ObjectReference(kind="Node", name=node, apiVersion="v1"),
            reason=reason, message=message, type="Warning" if warning else "Normal",
            source=EventSource(component="herd-agent", host=node), count=1,
            firstTimestamp=now, lastTimestamp=now, reportingComponent="herd-agent", reportingInstance=node,
        ))
    except Exception as exc:  # an Event must never break the leave
        _limited.log(logging.WARNING, "event", "could not create Event %s on Node %s: %s", reason, node, exc)


def write_metrics(root: HostRoot, cfg: Config, values: dict[str, Any]) -> None:
    """Write ``herd_agent.prom`` into ``metrics.textfile_dir`` (atomic, 0644).

    Args:
        values: any of ``leave_duration_seconds``, ``pods_evicted``, ``pods_blocked``,
            ``termination_reason`` (str), ``watcher_healthy`` (bool), ``watcher_last_poll``
            (epoch seconds).
    """
    try:
        from prometheus_client import CollectorRegistry, Gauge, generate_latest

        reg = CollectorRegistry()

        def gauge(name: str, doc: str, value: float, **labels: str) -> None:
            g = Gauge(name, doc, list(labels), registry=reg)
            (g.labels(**labels) if labels else g).set(value)

        if "leave_duration_seconds" in values:
            gauge("herd_agent_leave_duration_seconds", "Seconds the last leave sequence took.",
                  values["leave_duration_seconds"])
        if "pods_evicted" in values:
            gauge("herd_agent_leave_pods_evicted", "Pods evicted by the last leave.", values["pods_evicted"])
        if "pods_blocked" in values:
            gauge("herd_agent_leave_pods_blocked", "Pods that did not leave in time in the last leave.",
                  values["pods_blocked"])
        if "termination_reason" in values:
            gauge("herd_agent_last_termination_reason", "The last termination reason (value 1).", 1,
                  reason=str(values["termination_reason"]))
        if "watcher_healthy" in values:
            gauge("herd_agent_watcher_healthy", "1 when the watcher's last IMDS poll succeeded.",
                  1.0 if values["watcher_healthy"] else 0.0)
        if "watcher_last_poll" in values:
            gauge("herd_agent_watcher_last_poll_timestamp_seconds", "Epoch seconds of the last good IMDS poll.",
                  values["watcher_last_poll"])
        path = f"{cfg.get('metrics.textfile_dir').rstrip('/')}/{METRICS_FILE}"
        root.write(path, generate_latest(reg).decode(), mode=0o644)
    except Exception as exc:
        _limited.log(logging.WARNING, "metrics", "could not write the metrics textfile: %s", exc)


def webhook(cfg: Config, event: dict[str, Any]) -> None:
    """POST ``event`` as JSON to ``notify.webhook_url`` with the secret header (when configured)."""
    url = cfg.get("notify.webhook_url")
    if not url:
        return
    headers = {"Content-Type": "application/json"}
    secret = cfg.get("notify.webhook_secret")
    if secret:
        from herd_agent.redact import register_secret

        register_secret(secret)
        headers[cfg.get("notify.webhook_secret_header")] = secret
    try:
        import requests

        requests.post(url, json=event, headers=headers, timeout=5).raise_for_status()
    except Exception as exc:
        _limited.log(logging.WARNING, "webhook", "webhook %s failed: %s", url, exc)
