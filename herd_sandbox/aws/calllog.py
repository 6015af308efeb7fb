"""The sandbox's record of every AWS API call it answered."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Call:
    """One AWS API request as the sandbox saw it.

    Attributes:
        service: the SigV4 signing name (``ec2``, ``autoscaling``, ``ssm``, ``secretsmanager``, ``sts``…).
        action: the API action (``DescribeInstances``, ``CompleteLifecycleAction``…).
        caller: who signed it: a sandbox instance id (each instance has its own access key id),
            ``"operator"`` for the region's own key, or the raw access key id otherwise
            (``"anonymous"`` for unsigned requests).
        access_key_id: the access key id from the SigV4 ``Authorization`` header ("" if unsigned).
        instance_ids: every EC2 instance id named in the request parameters, in order.
        time: wall-clock time of the request (seconds since the epoch).
        outcome: ``"ok"``, ``"throttled"`` (injected throttling), ``"fault-5xx"`` /
            ``"fault-access-denied"`` (injected faults, :mod:`herd_sandbox.aws.faults`) or the AWS error code
            (``"ValidationError"``, ``"ParameterNotFound"``…; ``"HTTP<status>"`` if none is given).
        status: the HTTP status code returned.
    """

    service: str
    action: str
    caller: str
    access_key_id: str
    instance_ids: tuple[str, ...]
    time: float
    outcome: str
    status: int

    @property
    def instance_id(self) -> str | None:
        """The first instance id named in the request, or None."""
        return self.instance_ids[0] if self.instance_ids else None


class CallLog:
    """Thread-safe, append-only list of :class:`Call`, queryable with filters."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._calls: list[Call] = []

    def record(self, call: Call) -> None:
        """Append one call."""
        with self._mu:
            self._calls.append(call)

    def clear(self) -> None:
        """Forget every recorded call."""
        with self._mu:
            self._calls.clear()

    def __len__(self) -> int:
        with self._mu:
            return len(self._calls)

    def query(
        self,
        service: str | None = None,
        action: str | Iterable[str] | None = None,
        caller: str | None = None,
        instance: str | None = None,
        since: float | None = None,
        until: float | None = None,
        outcome: str | None = None,
    ) -> list[Call]:
        """Calls matching every given filter, oldest first.

        Args:
            service: signing name, e.g. ``"autoscaling"``.
            action: one action name or several.
            caller: instance id, ``"operator"`` or access key id (see :class:`Call`).
            instance: an instance id that must be among :attr:`Call.instance_ids`.
            since, until: inclusive bounds on :attr:`Call.time` (epoch seconds).
            outcome: ``"ok"``, ``"throttled"`` or an error code.
        """
        actions = {action} if isinstance(action, str) else (set(action) if action is not None else None)
        with self._mu:
            calls = list(self._calls)
        return [
            c
            for c in calls
            if (service is None or c.service == service)
            and (actions is None or c.action in actions)
            and (caller is None or c.caller == caller)
            and (instance is None or instance in c.instance_ids)
            and (since is None or c.time >= since)
            and (until is None or c.time <= until)
            and (outcome is None or c.outcome == outcome)
        ]
