"""Injected faults on the emulated Kubernetes API: error answers and slow answers per verb and
resource, e.g. 429 or 5xx on ``pods/eviction``, as API Priority and Fairness or a sick apiserver
would give them.

Public API (docs/sandbox-kube.md, "Faults"): ``KubeSandbox.faults.add(KubeFault(...))``;
``herd-sandbox kube serve --fault SPEC``. A rule matches after authentication and authorization
(a request the caller may not make still gets its 403), before the request is served.

- ``status=429``: ``TooManyRequests`` "Too many requests, please try again later." with
  ``details.retryAfterSeconds``, as API Priority and Fairness answers;
- ``status=500`` / ``503``: ``InternalError`` / ``ServiceUnavailable``;
- ``delay_s``: the answer (the real one, or the error) comes that many seconds late.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass

from herd_sandbox.kube.errors import ApiError

_REASONS = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
_SPEC = re.compile(r"^(?P<verb>\*|[a-z]+):(?P<resource>[a-z*]+)(?:/(?P<sub>[a-z]+))?="
                   r"(?:(?P<status>\d{3})|slow(?P<delay>[0-9.]+)s)(?:\*(?P<count>\d+))?$")


@dataclass
class KubeFault:
    """One fault rule.

    Attributes:
        verb: ``create``, ``get``, ``list``, ``patch``, ``delete``… or ``"*"``.
        resource: plural resource name (``pods``) or ``"*"``.
        subresource: ``eviction``, ``status``…; "" for the resource itself.
        status: the error to answer (429, 500, 503, 504), or None to only delay.
        delay_s: seconds to hold the answer.
        count: matching requests affected (then the rule is spent); None: until cleared.
    """

    verb: str
    resource: str
    subresource: str = ""
    status: int | None = None
    delay_s: float = 0.0
    count: int | None = 1

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in _REASONS:
            raise ValueError(f"fault status must be one of {sorted(_REASONS)}, got {self.status}")
        if self.status is None and self.delay_s <= 0:
            raise ValueError("a fault needs a status or a delay")

    @classmethod
    def parse(cls, spec: str) -> KubeFault:
        """``verb:resource[/sub]=STATUS|slowSECONDSs[*COUNT]``, e.g. ``create:pods/eviction=429*5``
        or ``list:pods=slow2s``.

        Raises:
            ValueError: another shape.
        """
        m = _SPEC.match(spec.strip())
        if not m:
            raise ValueError(f"fault {spec!r}: expected verb:resource[/sub]=STATUS|slowNs[*COUNT], "
                             "e.g. create:pods/eviction=429*5")
        return cls(m["verb"], m["resource"], m["sub"] or "", int(m["status"]) if m["status"] else None,
                   float(m["delay"]) if m["delay"] else 0.0, int(m["count"]) if m["count"] else 1)


class KubeFaults:
    """The API server's fault rules (thread-safe)."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._rules: list[KubeFault] = []
        self.hits: list[tuple[str, str, str, int | None]] = []  # (verb, resource, subresource, status) answered

    def add(self, fault: KubeFault) -> None:
        """Add a rule (matched in the order added)."""
        with self._mu:
            self._rules.append(fault)

    def clear(self) -> None:
        """Remove every rule."""
        with self._mu:
            self._rules.clear()

    def rules(self) -> list[KubeFault]:
        """Active rules (copies)."""
        with self._mu:
            return [KubeFault(**asdict(r)) for r in self._rules]

    def apply(self, verb: str, resource: str, subresource: str) -> None:
        """Delay and/or raise for a matching rule; nothing when none matches.

        Raises:
            ApiError: the injected status.
        """
        with self._mu:
            rule = next((r for r in self._rules if r.verb in (verb, "*") and r.resource in (resource, "*")
                         and r.subresource == subresource), None)
            if rule is None:
                return
            if rule.count is not None:
                rule.count -= 1
                if rule.count == 0:
                    self._rules.remove(rule)
            self.hits.append((verb, resource, subresource, rule.status))
        if rule.delay_s:
            time.sleep(rule.delay_s)  # the slow answer itself
        if rule.status == 429:
            raise ApiError(429, "TooManyRequests", "Too many requests, please try again later.",
                           {"retryAfterSeconds": 1})
        if rule.status is not None:
            raise ApiError(rule.status, _REASONS[rule.status], f"injected fault: {_REASONS[rule.status]}")
