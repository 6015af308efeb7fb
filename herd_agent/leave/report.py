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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_gauges(gauges: list[tuple[str, str, float, dict[str, str]]]) -> str:
    """Prometheus text exposition format (version 0.0.4) for gauges: ``# HELP``, ``# TYPE``, samples.

    Args:
        gauges: ``(name, help, value, labels)`` tuples.

    The format is small enough to write directly; the tests parse the output with
    prometheus_client's own parser. Importing prometheus_client would cost the resident watcher
    2.3 MiB of its 25 MiB budget (docs/dependencies.md).
    """
    lines = []
    for name, doc, value, labels in gauges:
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} gauge")
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{label_text}}} {float(value)!r}" if labels else f"{name} {float(value)!r}")
    return "\n".join(lines) + "\n"


def write_metrics(root: HostRoot, cfg: Config, values: dict[str, Any]) -> None:
    """Write ``herd_agent.prom`` into ``metrics.textfile_dir`` (atomic, 0644) for node_exporter's
    textfile collector.

    Args:
        values: any of ``leave_duration_seconds``, ``pods_evicted``, ``pods_blocked``,
            ``termination_reason`` (str), ``watcher_healthy`` (bool), ``watcher_last_poll``
            (epoch seconds). Values given before and not now are kept (the file is one set).
    """
    spec = {
        "leave_duration_seconds": ("herd_agent_leave_duration_seconds", "Seconds the last leave sequence took."),
        "pods_evicted": ("herd_agent_leave_pods_evicted", "Pods evicted by the last leave."),
        "pods_blocked": ("herd_agent_leave_pods_blocked", "Pods that did not leave in time in the last leave."),
        "watcher_healthy": ("herd_agent_watcher_healthy", "1 when the watcher's last IMDS poll succeeded."),
        "watcher_last_poll": ("herd_agent_watcher_last_poll_timestamp_seconds",
                              "Epoch seconds of the watcher's last good IMDS poll."),
    }
    _state.update(values)
    gauges: list[tuple[str, str, float, dict[str, str]]] = []
    for key, (name, doc) in spec.items():
        if key in _state:
            gauges.append((name, doc, float(_state[key]), {}))
    if "termination_reason" in _state:
        gauges.append(("herd_agent_last_termination_reason", "The last termination reason (value 1).", 1.0,
                       {"reason": str(_state["termination_reason"])}))
    try:
        path = f"{cfg.get('metrics.textfile_dir').rstrip('/')}/{METRICS_FILE}"
        root.write(path, render_gauges(gauges), mode=0o644)
    except Exception as exc:
        _limited.log(logging.WARNING, "metrics", "could not write the metrics textfile: %s", exc)


_state: dict[str, Any] = {}


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
