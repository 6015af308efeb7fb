"""Telling people and machines what the leave does: Kubernetes Events on the Node, a Prometheus
textfile for node_exporter's textfile collector, and an optional webhook.

None of these may hold up the leave: each failure is logged (rate-limited) and dropped.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.host.fsroot import HostRoot
from herd_agent.logs import RateLimitedLogger

log = logging.getLogger(__name__)
_limited = RateLimitedLogger(log, interval=60)

METRICS_FILE = "herd_agent.prom"


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def node_event(kube: Any, node: str, reason: str, message: str, *, warning: bool = False,
               name: str | None = None) -> bool:
    """Create a core/v1 Event about Node ``node`` (``involvedObject`` kind Node, namespace default,
    source ``herd-agent``), as ``kubectl describe node`` shows them.

    Args:
        name: the Event's name; a fixed name makes the Event once-only (a second create answers
            409 AlreadyExists, which counts as sent). Default: ``<node>.<random hex>``.

    Returns True when the Event exists now (created, or already there).
    """
    try:
        import uuid  # here, not at the top: the resident watcher imports this module

        from lightkube import ApiError
        from lightkube.models.core_v1 import EventSource, ObjectReference
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import Event

        from herd_agent.redact import redact

        now = _rfc3339(time.time())
        try:
            kube.create(Event(
                metadata=ObjectMeta(name=name or f"{node}.{uuid.uuid4().hex[:16]}", namespace="default"),
                involvedObject=ObjectReference(kind="Node", name=node, apiVersion="v1"),
                reason=reason, message=redact(message), type="Warning" if warning else "Normal",
                source=EventSource(component="herd-agent", host=node), count=1,
                firstTimestamp=now, lastTimestamp=now, reportingComponent="herd-agent", reportingInstance=node,
            ))
        except ApiError as exc:
            if exc.status.code == 409 and name:
                return True
            raise
        return True
    except Exception as exc:  # an Event must never break the leave
        _limited.log(logging.WARNING, "event", "could not create Event %s on Node %s: %s", reason, node, exc)
        return False


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
        values: any of ``leave_duration_seconds``, ``pods_evicted``, ``pods_blocked``, ``pods_force_deleted``,
            ``termination_reason`` (str), ``watcher_healthy`` (bool), ``watcher_last_poll``
            (epoch seconds). Values given before and not now are kept (the file is one set).
    """
    spec = {
        "leave_duration_seconds": ("herd_agent_leave_duration_seconds", "Seconds the last leave sequence took."),
        "pods_evicted": ("herd_agent_leave_pods_evicted", "Pods evicted by the last leave."),
        "pods_blocked": ("herd_agent_leave_pods_blocked",
                         "Pods that did not leave on their own in the last leave (blocked, timed out or "
                         "force-deleted)."),
        "pods_force_deleted": ("herd_agent_leave_pods_force_deleted",
                               "Pods deleted in the last leave because the drain budget ran out, overriding "
                               "their PodDisruptionBudget."),
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


class WebhookRefused(Exception):
    """The webhook was not sent: plain http without ``notify.webhook_allow_plain_http``."""


def check_webhook_url(cfg: Config) -> str | None:
    """The configured webhook URL, or None when unset.

    Raises:
        WebhookRefused: ``http://`` while ``notify.webhook_allow_plain_http`` is false (the URL is
            itself a credential, e.g. a Slack-style incoming-webhook URL, and would cross the wire
            in clear).
    """
    url = cfg.get("notify.webhook_url")
    if not url:
        return None
    from herd_agent.redact import register_url

    register_url(url)
    if not url.lower().startswith("https://") and not cfg.get("notify.webhook_allow_plain_http"):
        raise WebhookRefused("notify.webhook_url is plain http: use https, or set "
                             "notify.webhook_allow_plain_http: true to send it unencrypted")
    return url


def webhook(cfg: Config, event: dict[str, Any]) -> bool:
    """POST ``event`` as JSON to ``notify.webhook_url`` with the secret header (when configured).

    The URL and the secret are registered with the redactor before anything can log them; redirects
    are not followed (a 3xx is a failure: following it would hand the secret header to another
    address); plain http needs ``notify.webhook_allow_plain_http``. Failures are logged
    (rate-limited, redacted) and dropped. Returns True when the receiver answered 2xx.
    """
    try:
        url = check_webhook_url(cfg)
    except WebhookRefused as exc:
        _limited.log(logging.WARNING, "webhook", "webhook not sent: %s", exc)
        return False
    if not url:
        return False
    headers = {"Content-Type": "application/json"}
    secret = cfg.get("notify.webhook_secret")
    if secret:
        from herd_agent.redact import register_secret

        register_secret(secret)
        headers[cfg.get("notify.webhook_secret_header")] = secret
    try:
        import requests

        resp = requests.post(url, json=event, headers=headers, timeout=5, allow_redirects=False)
        if 300 <= resp.status_code < 400:
            raise RuntimeError(f"the receiver answered {resp.status_code} (a redirect, not followed)")
        resp.raise_for_status()
        return True
    except Exception as exc:
        from herd_agent.redact import redact

        _limited.log(logging.WARNING, "webhook", "webhook failed: %s", redact(f"{type(exc).__name__}: {exc}"))
        return False


class LeaveReporter:
    """One leave's reports: an Event on the Node, a webhook POST and systemd STATUS per phase, and
    the metrics at the end. Beside the step engine; nothing here can fail the leave.

    Args:
        root, cfg: host root and config (metrics directory, webhook).
        node: our Node's name.
        ident: our identity (instance id, cluster in the webhook body).
        journal: the leave's journal (reason; ``started_at`` names the once-only start Event).
        kube: ``() -> lightkube.Client | None``: the client when one exists (Events need it).
        status: systemd STATUS sender.
        clock: epoch seconds.
    """

    def __init__(self, root: HostRoot, cfg: Config, node: str, ident: Any, journal: Any,
                 kube: Any, status: Any, clock: Any = time.time) -> None:
        self.root, self.cfg, self.node, self.ident, self.journal = root, cfg, node, ident, journal
        self.kube, self.status, self.clock = kube, status, clock
        try:
            check_webhook_url(cfg)  # registers the URL with the redactor before anything logs
        except WebhookRefused as exc:
            _limited.log(logging.WARNING, "webhook", "webhook disabled: %s", exc)

    def _webhook(self, event: dict[str, Any]) -> None:
        webhook(self.cfg, {**event, "node": self.node, "instance_id": self.ident.instance_id,
                           "cluster": self.ident.cluster, "reason": self.journal.reason, "time": self.clock()})

    def phase(self, reason: str, message: str, *, warning: bool = False, name: str | None = None) -> None:
        """Report one phase: systemd STATUS, an Event on the Node (``name`` makes it once-only),
        a webhook POST."""
        self.status(f"leaving ({self.journal.reason}): {message}")
        kube = self.kube()
        if kube is not None:
            node_event(kube, self.node, reason, message, warning=warning, name=name)
        self._webhook({"event": reason, "message": message})

    def started(self) -> None:
        """``HerdLeaveStarted``, once per leave: the Event's name is derived from the leave's start
        time, so a resumed leave's second create answers 409 and no second Event appears."""
        self.phase("HerdLeaveStarted", f"leaving the cluster: {self.journal.reason}",
                   name=f"{self.node}.herd-leave-started.{int(self.journal.started_at * 1000):x}")

    def finished(self) -> None:
        """Metrics for node_exporter, the summary as STATUS and log, the ``HerdLeaveFinished`` webhook."""
        journal = self.journal
        pods = journal.pods.values()
        write_metrics(self.root, self.cfg, {
            "leave_duration_seconds": (journal.finished_at or self.clock()) - journal.started_at,
            "pods_evicted": sum(1 for p in pods if p["outcome"] in ("evicted", "gone")),
            "pods_blocked": sum(1 for p in pods if p["outcome"] in ("blocked", "timed-out") or p.get("forced")),
            "pods_force_deleted": sum(1 for p in pods if p.get("forced")),
            "termination_reason": journal.reason})
        failed = [n for n, s in journal.steps.items() if s.status == "failed"]
        summary = f"left: {', '.join(f'{n}={s.status}' for n, s in journal.steps.items())}"
        self.status(summary)
        self._webhook({"event": "HerdLeaveFinished", "failed_steps": failed, "result": journal.result})
        log.info("%s", summary)
