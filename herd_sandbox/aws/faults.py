"""Injected AWS faults per action: server errors (5xx) and transient access denials.

Public API (docs/sandbox-aws.md, "Faults"): ``Region.faults.add(AwsFault(...))`` in Python, or
``herd-sandbox aws fault ...`` against a running region (through the region's control route
``faults``, :mod:`herd_sandbox.aws.control`), or
``herd-sandbox aws serve --fault SPEC``. Throttling stays with :mod:`herd_sandbox.aws.throttle`.

What each kind answers, as real AWS does for the request's protocol:

- ``5xx``: HTTP 500 ``InternalFailure`` (EC2: ``InternalError``) — "the request processing has
  failed because of an unknown error"; botocore's standard retry mode retries it;
- ``access-denied``: the service's access-denied error (HTTP 403 ``AccessDenied`` for Auto
  Scaling, ``UnauthorizedOperation`` for EC2, 400 ``AccessDeniedException`` for JSON APIs), the
  message naming the IAM action; botocore does not retry it. Transient: ``count`` calls, as IAM's
  eventual consistency produces after a policy change.

The call log labels each injected answer ``fault-5xx`` or ``fault-access-denied`` (never ``ok``,
never mistaken for a real AccessDenied from the IAM enforcement).
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass

from herd_sandbox.aws.wire import ParsedRequest, Reply, access_denied_reply, error_reply

KINDS = ("5xx", "access-denied")
_SPEC = re.compile(r"^(?P<service>[a-z0-9-]+):(?P<action>\*|[A-Za-z0-9]+)=(?P<kind>5xx|access-denied)"
                   r"(?:\*(?P<count>\d+))?(?:@(?P<caller>[\w.-]+))?$")


@dataclass
class AwsFault:
    """One fault rule.

    Attributes:
        service: SigV4 signing name (``autoscaling``, ``ec2``, ``ssm``…).
        action: API action, or ``"*"`` for every action of the service.
        kind: ``"5xx"`` or ``"access-denied"``.
        count: how many matching calls fail (then the rule is spent); None: until cleared.
        caller: only calls from this caller (an instance id, ``"operator"``); None: everyone.
    """

    service: str
    action: str
    kind: str
    count: int | None = 1
    caller: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"fault count must be >= 1 (or None for until cleared), got {self.count}")

    @classmethod
    def parse(cls, spec: str) -> AwsFault:
        """``service:Action=kind[*COUNT][@caller]``, e.g. ``autoscaling:CompleteLifecycleAction=5xx*8``.

        Raises:
            ValueError: the spec does not have that shape (the message shows it).
        """
        m = _SPEC.match(spec.strip())
        if not m:
            raise ValueError(f"fault {spec!r}: expected service:Action=5xx|access-denied[*COUNT][@caller], "
                             "e.g. autoscaling:CompleteLifecycleAction=5xx*3")
        return cls(m["service"], m["action"], m["kind"], int(m["count"]) if m["count"] else 1, m["caller"])


class FaultInjector:
    """The region's fault rules; thread-safe. The AWS front asks :meth:`answer` before dispatching."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._rules: list[AwsFault] = []

    def add(self, fault: AwsFault) -> None:
        """Add a rule (rules are matched in the order added)."""
        with self._mu:
            self._rules.append(fault)

    def clear(self) -> None:
        """Remove every rule."""
        with self._mu:
            self._rules.clear()

    def rules(self) -> list[AwsFault]:
        """The rules still active (copies)."""
        with self._mu:
            return [AwsFault(**asdict(r)) for r in self._rules]

    def _take(self, service: str, action: str, caller: str) -> AwsFault | None:
        with self._mu:
            for rule in self._rules:
                if rule.service == service and rule.action in (action, "*") and rule.caller in (None, caller):
                    if rule.count is not None:
                        rule.count -= 1
                        if rule.count == 0:
                            self._rules.remove(rule)
                    return rule
            return None

    def answer(self, req: ParsedRequest, caller: str) -> tuple[Reply, str] | None:
        """The injected reply and its call-log label for this call, or None (no rule matched)."""
        rule = self._take(req.service, req.action, caller)
        if rule is None:
            return None
        if rule.kind == "5xx":
            code = "InternalError" if req.protocol == "ec2" else "InternalFailure"
            return error_reply(req, 500, code, "The request processing has failed because of an unknown "
                                               "error, exception or failure."), "fault-5xx"
        return access_denied_reply(req, caller), "fault-access-denied"
