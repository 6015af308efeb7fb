"""The drain loop over the Kubernetes API (policy/v1 Eviction), planned against a budget.

Each round re-lists the node's pods (``fieldSelector=spec.nodeName=<node>``), classifies them
(:mod:`herd_agent.drain.classify`), deletes finished ones, and evicts the rest with bounded
parallelism. Answers, from the Kubernetes API-initiated eviction docs:

- 201: accepted; the pod terminates gracefully and the loop waits for it to be gone;
- 429: a PodDisruptionBudget refuses now; retried with per-pod exponential backoff (1 s doubling
  to 10 s), the PDB's name and message recorded;
- 404: already gone; 5xx: retried with the same backoff; 403: a permission error, recorded.

The loop sleeps until the next retry is due or a second passes (to see terminations), never
spins. When the budget is spent, the pods left are deleted (``leave.delete_after_budget``, grace
period 0) or left, and each is recorded as timed out. A pod deleted that way is marked ``forced``
with the PodDisruptionBudget that refused it (:meth:`DrainReport.forced`), so the reports can say
which budgets were overridden.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from herd_agent.drain.classify import Disposition, classify, key

log = logging.getLogger(__name__)

_PDB_NAME = re.compile(r"disruption budget (\S+?)(?: |$|\.)")


@dataclass
class PodOutcome:
    """How one pod fared: ``evicted``, ``deleted``, ``gone``, ``skipped``, ``blocked`` or ``timed-out``.

    ``pdb`` names the PodDisruptionBudget (``namespace/name``) that last refused its eviction;
    ``forced`` is True when the pod was deleted because the budget ran out (its PDB overridden).
    """

    pod: str
    outcome: str
    detail: str = ""
    attempts: int = 0
    pdb: str | None = None
    forced: bool = False


@dataclass
class DrainReport:
    """The drain's result: per-pod outcomes, whether every evictable pod left, seconds taken."""

    outcomes: dict[str, PodOutcome] = field(default_factory=dict)
    complete: bool = False
    seconds: float = 0.0
    budget_spent: bool = False

    def count(self, outcome: str) -> int:
        """How many pods ended with ``outcome``."""
        return sum(1 for o in self.outcomes.values() if o.outcome == outcome)

    def blocked(self) -> list[PodOutcome]:
        """Pods that never left on their own: still blocked, timed out, or force-deleted when the
        budget ran out."""
        return [o for o in self.outcomes.values() if o.outcome in ("blocked", "timed-out") or o.forced]

    def forced(self) -> list[PodOutcome]:
        """Pods deleted because the budget ran out (their PodDisruptionBudget overridden)."""
        return [o for o in self.outcomes.values() if o.forced]


@dataclass(frozen=True)
class DrainPolicy:
    """``leave.*`` choices: emptyDir and unmanaged pods, parallelism, what to do when time runs out."""

    delete_emptydir_data: bool = True
    evict_unmanaged: bool = True
    parallelism: int = 8
    delete_after_budget: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> DrainPolicy:
        """From ``leave.delete_emptydir_data``, ``leave.evict_unmanaged``, ``leave.eviction_parallelism``,
        ``leave.delete_after_budget``."""
        return cls(cfg.get("leave.delete_emptydir_data"), cfg.get("leave.evict_unmanaged"),
                   cfg.get("leave.eviction_parallelism"), cfg.get("leave.delete_after_budget"))


class KubeDrainApi:
    """The three calls the drain makes, over a lightkube client (a seam: tests may fake it)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def list_pods(self, node: str) -> list[dict[str, Any]]:
        """Every pod bound to ``node`` in every namespace, as manifests."""
        from lightkube.resources.core_v1 import Pod

        return [p.to_dict() for p in self.client.list(Pod, namespace="*", fields={"spec.nodeName": node})]

    def evict(self, namespace: str, name: str) -> tuple[int, str]:
        """POST an Eviction; (HTTP status, message). 201 means accepted."""
        from lightkube import ApiError
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import Pod

        try:
            self.client.create(Pod.Eviction(metadata=ObjectMeta(name=name, namespace=namespace)), name,
                               namespace=namespace)
        except ApiError as exc:
            status = exc.status
            text = status.message or ""
            causes = getattr(getattr(status, "details", None), "causes", None) or []
            extra = "; ".join(c.message for c in causes if getattr(c, "message", None))
            return int(status.code or 500), f"{text} {extra}".strip()
        return 201, ""

    def delete(self, namespace: str, name: str, grace_s: int | None) -> int:
        """DELETE a pod (with a grace period when given); HTTP status (200, or 404 when gone)."""
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Pod

        try:
            self.client.delete(Pod, name, namespace=namespace, grace_period=grace_s)
        except ApiError as exc:
            return int(exc.status.code or 500)
        return 200


class Drainer:
    """Drain one node.

    Args:
        api: list/evict/delete (a :class:`KubeDrainApi`).
        node: node name.
        policy: a :class:`DrainPolicy`.
        budget_s: seconds the drain may use.
        clock: monotonic seconds.
        wait: ``wait(seconds)`` that returns early when the drain should stop (default an Event).
        on_progress: called with a one-line status each round (systemd STATUS, events).
        on_round: called with the outcomes so far after each round (the leave journals them, so
            a resumed drain keeps the history of the pods that left before a crash).
    """

    BACKOFF_START_S = 1.0
    BACKOFF_MAX_S = 10.0
    POLL_S = 1.0

    def __init__(self, api: KubeDrainApi, node: str, policy: DrainPolicy, budget_s: float, *,
                 clock: Callable[[], float] = time.monotonic, wait: Callable[[float], Any] | None = None,
                 on_progress: Callable[[str], None] | None = None,
                 on_round: Callable[[dict[str, PodOutcome]], None] | None = None) -> None:
        self.api = api
        self.node = node
        self.policy = policy
        self.budget_s = budget_s
        self.clock = clock
        self._stop = threading.Event()
        self.wait = wait or self._stop.wait
        self.on_progress = on_progress or (lambda _s: None)
        self.on_round = on_round or (lambda _o: None)
        self.report = DrainReport()
        self._next_try: dict[str, float] = {}
        self._tries: dict[str, int] = {}

    def _outcome(self, pod: str, outcome: str, detail: str = "") -> None:
        o = self.report.outcomes.setdefault(pod, PodOutcome(pod, outcome))
        o.outcome, o.detail = outcome, detail or o.detail

    def _backoff(self, pod: str, now: float) -> None:
        n = self._tries.get(pod, 0)
        self._next_try[pod] = now + min(self.BACKOFF_MAX_S, self.BACKOFF_START_S * (2 ** max(0, n - 1)))

    def _evict(self, pod: dict[str, Any]) -> tuple[str, int, str]:
        meta = pod["metadata"]
        code, message = self.api.evict(meta.get("namespace", "default"), meta["name"])
        return key(pod), code, message

    def run(self) -> DrainReport:
        """Drain until every evictable pod is gone or the budget is spent."""
        started = self.clock()
        deadline = started + self.budget_s
        with ThreadPoolExecutor(max_workers=self.policy.parallelism, thread_name_prefix="evict") as pool:
            while True:
                now = self.clock()
                pods = self.api.list_pods(self.node)
                present = {key(p) for p in pods}
                for name, o in self.report.outcomes.items():
                    if name not in present and o.outcome in ("evicting", "deleting", "blocked"):
                        o.outcome = "evicted" if o.outcome in ("evicting", "blocked") else "deleted"
                to_evict, waiting, blocked_by_policy = [], 0, 0
                for pod in pods:
                    verdict = classify(pod, delete_emptydir_data=self.policy.delete_emptydir_data,
                                       evict_unmanaged=self.policy.evict_unmanaged)
                    k = key(pod)
                    d = verdict.disposition
                    if d in (Disposition.SKIP_DAEMONSET, Disposition.SKIP_MIRROR):
                        self._outcome(k, "skipped", verdict.reason)
                    elif d in (Disposition.BLOCK_EMPTYDIR, Disposition.BLOCK_UNMANAGED):
                        self._outcome(k, "blocked", verdict.reason)
                        blocked_by_policy += 1
                    elif d == Disposition.WAIT:
                        if k not in self.report.outcomes:
                            self._outcome(k, "evicting", verdict.reason)
                        waiting += 1
                    elif d == Disposition.DELETE:
                        if self._next_try.get(k, 0.0) <= now:
                            code = self.api.delete(pod["metadata"].get("namespace", "default"),
                                                   pod["metadata"]["name"], None)
                            if code in (200, 404):
                                self._outcome(k, "deleting", verdict.reason)
                            else:
                                self._outcome(k, "blocked", f"delete answered {code} ({verdict.reason})")
                                self._tries[k] = self._tries.get(k, 0) + 1
                                self._backoff(k, now)
                        waiting += 1
                    elif self._next_try.get(k, 0.0) <= now:
                        to_evict.append(pod)
                    else:
                        waiting += 1
                for k, code, message in pool.map(self._evict, to_evict):
                    self._tries[k] = self._tries.get(k, 0) + 1
                    self.report.outcomes.setdefault(k, PodOutcome(k, "evicting")).attempts = self._tries[k]
                    if code == 201:
                        prior = self.report.outcomes[k]
                        refused = f" after {prior.attempts - 1} refusal(s); last: {prior.detail}" \
                            if prior.outcome == "blocked" else ""
                        self._outcome(k, "evicting", f"eviction accepted{refused}")
                    elif code == 404:
                        self._outcome(k, "gone")
                    elif code == 429:
                        match = _PDB_NAME.search(message)
                        # A 429 names its budget in a DisruptionBudget cause; one without is the API
                        # server throttling (API Priority and Fairness), not a budget.
                        pdb = f"PodDisruptionBudget {match.group(1)}" if match else "the API server (429, no budget)"
                        self._outcome(k, "blocked", f"blocked by {pdb}: {message}")
                        if match:
                            self.report.outcomes[k].pdb = f"{k.split('/', 1)[0]}/{match.group(1)}"
                        self._backoff(k, self.clock())
                        log.log(logging.INFO if self._tries[k] == 1 else logging.DEBUG,
                                "eviction of %s refused by %s (attempt %d); retrying", k, pdb, self._tries[k])
                    else:
                        self._outcome(k, "blocked", f"eviction answered {code}: {message}")
                        self._backoff(k, self.clock())
                remaining = waiting + len(to_evict)
                self.on_round(self.report.outcomes)
                left = deadline - self.clock()
                self.on_progress(f"draining {self.node}: {remaining} pod(s) to go, "
                                 f"{self.report.count('evicted')} evicted, {left:.0f}s of budget left")
                if remaining == 0:
                    self.report.complete = blocked_by_policy == 0
                    break
                now = self.clock()
                if now >= deadline:
                    self.report.budget_spent = True
                    self._out_of_time(pods)
                    break
                due = [t for t in self._next_try.values() if t > now]
                pause = min([self.POLL_S, deadline - now] + [t - now for t in due])
                if self.wait(max(0.05, pause)):
                    break
        self.report.seconds = self.clock() - started
        return self.report

    def _out_of_time(self, pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            k = key(pod)
            o = self.report.outcomes.get(k)
            if o is None or o.outcome in ("skipped", "evicted", "deleted", "gone"):
                continue
            if self.policy.delete_after_budget and o.outcome != "evicting":
                code = self.api.delete(pod["metadata"].get("namespace", "default"), pod["metadata"]["name"], 0)
                o.outcome = "deleted" if code in (200, 404) else "timed-out"
                o.forced = code in (200, 404)
                o.detail = f"budget spent; deleted ({o.detail})" if code in (200, 404) else o.detail
            elif o.outcome != "evicting":
                o.outcome = "timed-out"
                o.detail = f"budget spent ({o.detail})"
            else:
                o.outcome = "timed-out"
                o.detail = "still terminating when the budget was spent"
        log.warning("drain of %s: budget of %.0fs spent; %d pod(s) did not leave in time", self.node, self.budget_s,
                    len(self.report.blocked()))
        self.on_round(self.report.outcomes)

    def stop(self) -> None:
        """Ask a running drain to stop at its next wait."""
        self._stop.set()
