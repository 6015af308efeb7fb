"""The region's control routes: the one place a running region takes fault injections over HTTP.

Every route lives under :data:`CONTROL_PREFIX` on the region's AWS endpoint (unsigned, never an
AWS call, never in the call log). ``herd-sandbox aws fault`` and ``herd-sandbox aws imds …``
(:mod:`herd_sandbox.aws.cli`) are its clients; docs/sandbox-aws.md lists the routes.

=======================================  =======  ==================================================
route                                    method   does
=======================================  =======  ==================================================
``faults``                               GET      list the AWS fault rules
                                         POST     add one (JSON ``{service, action, kind, count, caller}``)
                                         DELETE   clear them (:mod:`herd_sandbox.aws.faults`)
``imds/<instance-id>/revoke-tokens``     POST     JSON ``{"after": seconds}`` (default 0): every token
                                                  issued so far expires that many AWS seconds from
                                                  now (scaled by the token clock); answers
                                                  ``{"instance_id", "revoked"}``
``imds/<instance-id>/token-ttl``         PUT      JSON ``{"max_ttl": seconds|null}``: tokens issued
                                                  from now on live at most that long
``imds/<instance-id>/identity``          GET      the identity overrides in force
                                         PUT      JSON ``{field: value}``: add overrides
                                         DELETE   drop every override
=======================================  =======  ==================================================

Errors answer JSON ``{"error": message}``: 404 for an unknown route or instance, 400 for a body
that is not what the route takes (unknown identity field, a non-number), 405 for a wrong method.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from herd_sandbox.aws.faults import AwsFault, FaultInjector
from herd_sandbox.aws.imds import ImdsServer
from herd_sandbox.aws.wire import Reply

CONTROL_PREFIX = "/_herd_sandbox/aws/"
"""Every control route of a running region lives under this path."""
_IMDS_ROUTE = re.compile(r"^imds/(?P<instance>[^/]+)/(?P<what>revoke-tokens|token-ttl|identity)$")


class BadControlRequest(ValueError):
    """A control request the route cannot take; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlRoutes:
    """Dispatches the control routes of one region.

    Args:
        faults: the region's AWS fault rules.
        imds_of: the IMDS server of an instance id; raises KeyError for an unknown one.
    """

    def __init__(self, faults: FaultInjector, imds_of: Callable[[str], ImdsServer]) -> None:
        self._faults = faults
        self._imds_of = imds_of

    def answer(self, method: str, path: str, body: bytes) -> Reply | None:
        """The reply for a request to ``path``, or None when ``path`` is not a control route."""
        if not path.startswith(CONTROL_PREFIX):
            return None
        route = path[len(CONTROL_PREFIX):]
        m = _IMDS_ROUTE.match(route)
        try:
            if route == "faults":
                return json_reply(200, self._fault_rules(method, _json_object(body)))
            if m is None:
                raise BadControlRequest(404, f"no control route {path}")
            return json_reply(200, self._imds(method, m["instance"], m["what"], _json_object(body)))
        except BadControlRequest as exc:
            return json_reply(exc.status, {"error": str(exc)})

    def _fault_rules(self, method: str, doc: dict[str, Any]) -> dict[str, Any]:
        if method not in ("GET", "POST", "DELETE"):
            raise BadControlRequest(405, f"faults: method {method} not allowed (use GET, POST, DELETE)")
        try:
            if method == "POST":
                self._faults.add(AwsFault(**doc))
            elif method == "DELETE":
                self._faults.clear()
        except (TypeError, ValueError) as exc:
            raise BadControlRequest(400, f"fault rule {doc}: {exc}") from None
        return {"rules": [asdict(r) for r in self._faults.rules()]}

    def _imds(self, method: str, instance_id: str, what: str, doc: dict[str, Any]) -> dict[str, Any]:
        try:
            imds = self._imds_of(instance_id)
        except KeyError:
            raise BadControlRequest(404, f"unknown instance {instance_id!r}: this region launched no such "
                                         "instance (its ids are in `herd-sandbox aws serve`'s JSON line)") from None
        allowed = {"revoke-tokens": ("POST",), "token-ttl": ("PUT",), "identity": ("GET", "PUT", "DELETE")}[what]
        if method not in allowed:
            raise BadControlRequest(405, f"{what}: method {method} not allowed (use {', '.join(allowed)})")
        try:
            if what == "revoke-tokens":
                revoked = imds.revoke_tokens(after=_seconds(doc.get("after", 0), "after"))
                return {"instance_id": instance_id, "revoked": revoked}
            if what == "token-ttl":
                raw = doc.get("max_ttl")
                imds.max_token_ttl = None if raw is None else _seconds(raw, "max_ttl", positive=True)
                return {"instance_id": instance_id, "max_ttl": imds.max_token_ttl}
            if method == "PUT":
                imds.override_identity(**doc)
            elif method == "DELETE":
                imds.clear_identity_overrides()
        except (TypeError, ValueError) as exc:
            raise BadControlRequest(400, str(exc)) from None
        return {"instance_id": instance_id, "overrides": imds.identity_overrides()}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body or b"{}")
    except ValueError as exc:
        raise BadControlRequest(400, f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadControlRequest(400, "the body must be a JSON object")
    return doc


def _seconds(value: Any, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (positive and value == 0):
        raise BadControlRequest(400, f"{name} must be a number of seconds {'> 0' if positive else '>= 0'}, "
                                     f"got {value!r}")
    return float(value)


def json_reply(status: int, doc: dict[str, Any]) -> Reply:
    """A control route's JSON answer."""
    return Reply(status, [("Content-Type", "application/json")], json.dumps(doc).encode())
