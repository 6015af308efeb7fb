"""Fault injection for AWS calls: throttling per action (a rate or a burst of the next N calls),
and access denial per action and caller (what a missing IAM permission looks like)."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass


@dataclass
class _Rule:
    rate: float = 0.0
    burst: int = 0


class Throttler:
    """Decides whether a call is answered with the service's throttling error.

    Rules are keyed by ``(service, action)``; ``action="*"`` matches every action of the service.
    A burst is consumed before the rate applies. ``seed`` makes the rate reproducible.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._mu = threading.Lock()
        self._rules: dict[tuple[str, str], _Rule] = {}
        self._random = random.Random(seed)
        self._denied: set[tuple[str, str, str | None]] = set()

    def deny(self, service: str, action: str, caller: str | None = None) -> None:
        """Refuse ``service``/``action`` (``"*"`` for all) for ``caller`` (None: everyone) with the
        service's access-denied error, as a missing IAM permission would."""
        with self._mu:
            self._denied.add((service, action, caller))

    def denied(self, service: str, action: str, caller: str) -> bool:
        """True when a deny rule matches this call."""
        with self._mu:
            return any((service, a, c) in self._denied for a in (action, "*") for c in (caller, None))

    def set(self, service: str, action: str = "*", rate: float | None = None, burst: int | None = None) -> None:
        """Throttle ``service``/``action``.

        Args:
            service: signing name, e.g. ``"ec2"``, ``"autoscaling"``, ``"ssm"``.
            action: API action name, or ``"*"`` for all actions of the service.
            rate: fraction 0.0–1.0 of calls to throttle from now on (None keeps the current rate).
            burst: throttle exactly the next N calls (None keeps the current burst).

        Raises:
            ValueError: rate outside 0–1 or a negative burst.
        """
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within 0..1, got {rate}")
        if burst is not None and burst < 0:
            raise ValueError(f"burst must be >= 0, got {burst}")
        with self._mu:
            rule = self._rules.setdefault((service, action), _Rule())
            if rate is not None:
                rule.rate = rate
            if burst is not None:
                rule.burst = burst

    def clear(self) -> None:
        """Remove every rule (throttles and denials)."""
        with self._mu:
            self._rules.clear()
            self._denied.clear()

    def should_throttle(self, service: str, action: str) -> bool:
        """Consume one decision for a call; True means answer with the throttling error."""
        with self._mu:
            for key in ((service, action), (service, "*")):
                rule = self._rules.get(key)
                if rule is None:
                    continue
                if rule.burst > 0:
                    rule.burst -= 1
                    return True
                if rule.rate > 0.0 and self._random.random() < rule.rate:
                    return True
            return False
