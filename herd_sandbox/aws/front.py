"""WSGI middleware in front of moto: call log, throttling, injected faults
(:mod:`herd_sandbox.aws.faults`), the control routes (:mod:`herd_sandbox.aws.control`), and the
Auto Scaling actions moto lacks.

Handled here rather than in moto: ``CompleteLifecycleAction``, ``RecordLifecycleActionHeartbeat``,
``PutLifecycleHook`` validation (HeartbeatTimeout 30–7200 s, DefaultResult CONTINUE|ABANDON), and
``CreateAutoScalingGroup``'s ``LifecycleHookSpecificationList`` (hooks exist before the first launch,
as on AWS). Everything else goes to moto's own WSGI app under the region lock.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from herd_sandbox.aws.calllog import Call, CallLog
from herd_sandbox.aws.faults import FaultInjector
from herd_sandbox.aws.lifecycle import LifecycleEngine, LifecycleError
from herd_sandbox.aws.throttle import Throttler
from herd_sandbox.aws.wire import (
    ParsedRequest,
    Reply,
    access_denied_reply,
    empty_result_reply,
    error_reply,
    parse_request,
    throttle_reply,
)

_HOOK_SPEC = re.compile(r"^LifecycleHookSpecificationList\.member\.(\d+)\.(\w+)$")


class AwsFront:
    """The region's WSGI entry point.

    Args:
        moto_app: moto's ``DomainDispatcherApplication``.
        lock: the region lock; held while moto or the lifecycle engine runs.
        engine: the lifecycle-hook state machine.
        calls: where every call is recorded.
        throttler: throttling rules.
        caller_of: maps an access key id to a caller name (instance id, ``"operator"``…).
        faults: injected 5xx / access-denied rules (a fresh :class:`FaultInjector` by default).
        authorize: ``authorize(request, caller)`` is False when the caller's IAM policy denies the call.
        control: ``control(method, path, body)`` answers a control route (a :class:`Reply`) or
            returns None for any other path (:meth:`herd_sandbox.aws.control.ControlRoutes.answer`);
            None: the control routes without instances (the ``faults`` route only).
    """

    def __init__(
        self,
        moto_app: Any,
        lock: threading.RLock | threading.Condition,
        engine: LifecycleEngine,
        calls: CallLog,
        throttler: Throttler,
        caller_of: Callable[[str], str],
        asg_backend: Callable[[], Any],
        faults: FaultInjector | None = None,
        authorize: Callable[[ParsedRequest, str], bool] | None = None,
        control: Callable[[str, str, bytes], Reply | None] | None = None,
    ) -> None:
        self._moto = moto_app
        self._lock = lock
        self._engine = engine
        self._calls = calls
        self._throttler = throttler
        self._caller_of = caller_of
        self._asg = asg_backend
        self.faults = faults or FaultInjector()
        self._authorize = authorize  # IAM: the caller's role policy allows the call (herd_sandbox.aws.iam)
        if control is None:
            from herd_sandbox.aws.control import ControlRoutes

            control = ControlRoutes(self.faults, _no_instances).answer
        self._control = control

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """WSGI entry: log, maybe throttle, then answer (own handler or moto)."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        control = self._control(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""), body)
        if control is not None:
            return self._send(start_response, control)
        req = parse_request(environ, body)
        if not req.service:  # unsigned: moto's own dashboard/API; not an AWS call
            with self._lock:
                reply = self._call_moto(environ)
            return self._send(start_response, reply)
        started = time.time()
        caller = self._caller_of(req.access_key_id)
        throttled = False
        injected = None
        if self._throttler.denied(req.service, req.action, caller) or (
                self._authorize is not None and not self._authorize(req, caller)):
            reply = access_denied_reply(req, caller)
        elif throttled := self._throttler.should_throttle(req.service, req.action):
            reply = throttle_reply(req)
        elif (injected := self.faults.answer(req, caller)) is not None:
            reply = injected[0]
        else:
            reply = self._dispatch(req, environ)
        outcome = "throttled" if throttled else injected[1] if injected else (reply.error_code() or "ok")
        self._calls.record(
            Call(
                service=req.service,
                action=req.action,
                caller=caller,
                access_key_id=req.access_key_id,
                instance_ids=req.instance_ids(),
                time=started,
                outcome=outcome,
                status=reply.status,
            )
        )
        return self._send(start_response, reply)

    @staticmethod
    def _send(start_response: Callable[..., Any], reply: Reply) -> list[bytes]:
        headers = [(k, v) for k, v in reply.headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(reply.body))))
        start_response(f"{reply.status} {'OK' if reply.status < 400 else 'Error'}", headers)
        return [reply.body]

    def _call_moto(self, environ: dict[str, Any]) -> Reply:
        captured: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            captured["status"] = int(status.split(" ", 1)[0])
            captured["headers"] = list(headers)
            return lambda _data: None

        result = self._moto(environ, start)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return Reply(captured.get("status", 500), captured.get("headers", []), body)

    def _dispatch(self, req: ParsedRequest, environ: dict[str, Any]) -> Reply:
        if req.service == "autoscaling":
            handler = {
                "CompleteLifecycleAction": self._complete,
                "RecordLifecycleActionHeartbeat": self._heartbeat,
                "PutLifecycleHook": self._put_hook,
                "CreateAutoScalingGroup": self._create_group,
            }.get(req.action)
            if handler is not None:
                with self._lock:
                    try:
                        return handler(req, environ)
                    except LifecycleError as err:
                        return error_reply(req, 400, err.code, err.message)
        with self._lock:
            return self._call_moto(environ)

    @staticmethod
    def _action_ref(p: dict[str, Any]) -> tuple[str, str, str | None, str | None]:
        """(group, hook, instance id, token) named by a lifecycle-action request."""
        return (
            p.get("AutoScalingGroupName", ""),
            p.get("LifecycleHookName", ""),
            p.get("InstanceId") or None,
            p.get("LifecycleActionToken") or None,
        )

    def _complete(self, req: ParsedRequest, environ: dict[str, Any]) -> Reply:
        self._engine.complete(*self._action_ref(req.params), req.params.get("LifecycleActionResult", ""))
        return empty_result_reply(req)

    def _heartbeat(self, req: ParsedRequest, environ: dict[str, Any]) -> Reply:
        self._engine.heartbeat(*self._action_ref(req.params))
        return empty_result_reply(req)

    @staticmethod
    def _validate_hook(spec: dict[str, str]) -> None:
        if "HeartbeatTimeout" in spec:
            try:
                hb = int(spec["HeartbeatTimeout"])
            except ValueError as err:
                raise LifecycleError(f"Invalid HeartbeatTimeout: {spec['HeartbeatTimeout']}") from err
            if not 30 <= hb <= 7200:
                raise LifecycleError(f"Heartbeat timeout {hb} is invalid. It must be between 30 and 7200 seconds.")
        if spec.get("DefaultResult", "ABANDON") not in ("CONTINUE", "ABANDON"):
            raise LifecycleError(f"Invalid value for DefaultResult: {spec['DefaultResult']}")
        transition = spec.get("LifecycleTransition")
        if transition is not None and transition not in (
            "autoscaling:EC2_INSTANCE_LAUNCHING",
            "autoscaling:EC2_INSTANCE_TERMINATING",
        ):
            raise LifecycleError(f"Invalid Lifecycle Transition: {transition}")

    def _put_hook(self, req: ParsedRequest, environ: dict[str, Any]) -> Reply:
        self._validate_hook(req.params)
        return self._call_moto(environ)

    def _create_group(self, req: ParsedRequest, environ: dict[str, Any]) -> Reply:
        specs: dict[str, dict[str, str]] = {}
        for key, value in req.params.items():
            m = _HOOK_SPEC.match(key)
            if m:
                specs.setdefault(m.group(1), {})[m.group(2)] = value
        group = req.params.get("AutoScalingGroupName", "")
        backend = self._asg()
        if group in backend.autoscaling_groups:
            return self._call_moto(environ)  # moto answers AlreadyExists
        for spec in specs.values():
            self._validate_hook(spec)
            if "LifecycleHookName" not in spec or "LifecycleTransition" not in spec:
                raise LifecycleError("LifecycleHookName and LifecycleTransition are required")
        created = []
        for spec in specs.values():
            backend.create_lifecycle_hook(
                name=spec["LifecycleHookName"],
                as_name=group,
                transition=spec["LifecycleTransition"],
                timeout=int(spec["HeartbeatTimeout"]) if "HeartbeatTimeout" in spec else None,
                result=spec.get("DefaultResult", "ABANDON"),
            )
            created.append(spec["LifecycleHookName"])
        reply = self._call_moto(environ)
        if reply.status >= 400:
            for name in created:
                backend.delete_lifecycle_hook(group, name)
        return reply


def _no_instances(instance_id: str) -> Any:
    raise KeyError(instance_id)
