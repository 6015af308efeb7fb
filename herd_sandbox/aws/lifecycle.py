"""The Auto Scaling lifecycle-hook state machine moto does not model.

Mirrors the behaviour documented in the Amazon EC2 Auto Scaling User Guide ("Amazon EC2 Auto
Scaling lifecycle hooks", "Complete a lifecycle action"):

- Launch: ``Pending`` → ``Pending:Wait`` (one action per launch hook) → ``Pending:Proceed`` →
  ``InService``. ``ABANDON`` (or a timeout whose DefaultResult is ABANDON) terminates the instance
  and the group launches a replacement.
- Termination (scale-in, TerminateInstanceInAutoScalingGroup, an Unhealthy instance):
  ``Terminating`` → ``Terminating:Wait`` → ``Terminating:Proceed`` → ``Terminated``; the EC2
  instance is terminated at the end. CONTINUE and ABANDON both let termination go on. The
  transition takes time, as on AWS: after the last action of a termination wait ends, the
  instance stays ``Terminating:Proceed`` and keeps running for :data:`PROCEED_DELAY_S` (scaled)
  before it is terminated — an agent must not assume it is gone the moment it completed the action.
- Each wait ends when every hook's action is complete (an ABANDON ends it at once), when the
  heartbeat timeout passes without ``RecordLifecycleActionHeartbeat``, or when the global timeout
  ``min(172800 s, 100 × HeartbeatTimeout)`` passes; a timeout applies the hook's DefaultResult.

All methods expect the caller to hold the region lock (the Condition passed in); the scheduler
thread takes it itself. Durations are AWS seconds multiplied by ``time_factor`` on the wall clock.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from herd_sandbox.aws.servers import THREAD_PREFIX

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
PROCEED_DELAY_S = 30.0
"""AWS seconds an instance stays ``Terminating:Proceed`` (running) after its termination wait ended."""

MAX_GLOBAL_TIMEOUT = 172800
"""AWS caps the global timeout of a lifecycle action at 48 hours (seconds)."""

COUNTED_STATES = frozenset({"Pending", "Pending:Wait", "Pending:Proceed", "InService"})
"""Lifecycle states that count towards a group's desired capacity."""


def global_timeout(heartbeat_timeout: float) -> float:
    """AWS's global timeout for a lifecycle action: ``min(172800, 100 × heartbeat)`` seconds."""
    return min(float(MAX_GLOBAL_TIMEOUT), 100.0 * heartbeat_timeout)


def target_lifecycle_state(lifecycle_state: str | None) -> str | None:
    """The IMDS ``autoscaling/target-lifecycle-state`` value for a group lifecycle state.

    IMDS reports the state the instance is transitioning to: ``InService`` while launching or in
    service, ``Terminated`` once termination has begun, ``Standby``, ``Detached``, ``Warmed:*``.
    None (IMDS answers 404) when the instance never belonged to a group.
    """
    if lifecycle_state is None:
        return None
    if lifecycle_state.startswith("Pending") or lifecycle_state == "InService":
        return "InService"
    if lifecycle_state.startswith("Terminat"):
        return "Terminated"
    if "Standby" in lifecycle_state:
        return "Standby"
    if lifecycle_state.startswith("Detach"):
        return "Detached"
    return lifecycle_state


class ManualClock:
    """A monotonic clock that moves only when told: ``clock.advance(seconds)``.

    Pass it as ``Region(clock=…)`` to test timeouts exactly; then call ``Region.run_timers()``.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._mu = threading.Lock()

    def __call__(self) -> float:
        """The current reading (seconds)."""
        with self._mu:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0); returns the new reading."""
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        with self._mu:
            self._now += seconds
            return self._now


class LifecycleError(Exception):
    """An Auto Scaling API error to send back (code is the AWS error code, e.g. ValidationError)."""

    def __init__(self, message: str, code: str = "ValidationError") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class LifecycleAction:
    """One pending lifecycle action: a hook waiting on one instance.

    Deadlines are ``time.monotonic()`` values on the sandbox (scaled) clock; ``heartbeat_timeout``
    and ``global_timeout`` are the unscaled AWS values in seconds.
    """

    instance_id: str
    group: str
    hook: str
    transition: str
    token: str
    default_result: str
    heartbeat_timeout: float
    global_timeout: float
    heartbeat_deadline: float
    global_deadline: float
    result: str | None = None
    how: str | None = None  # "completed" (CompleteLifecycleAction) or "timeout" (DefaultResult applied)

    @property
    def deadline(self) -> float:
        """When DefaultResult applies unless a heartbeat or completion comes first (monotonic)."""
        return min(self.heartbeat_deadline, self.global_deadline)


class LifecycleEngine:
    """Holds every pending lifecycle action and drives instances through the wait states.

    Args:
        cond: the region's Condition (its lock guards moto's backends); notified on every change.
        backend: returns the region's moto ``AutoScalingBackend``.
        time_factor: sandbox seconds per AWS second (0.01 → a 3600 s heartbeat timeout passes in 36 s).
        on_state: called ``(instance_id, lifecycle_state)`` on every transition.
        clock: monotonic clock in seconds (tests may pass their own).
    """

    def __init__(
        self,
        cond: threading.Condition,
        backend: Callable[[], Any],
        time_factor: float = 1.0,
        on_state: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if time_factor <= 0:
            raise ValueError(f"time_factor must be > 0, got {time_factor}")
        self.cond = cond
        self.time_factor = time_factor
        self._backend = backend
        self._on_state = on_state or (lambda _i, _s: None)
        self._clock = clock
        self._actions: dict[str, list[LifecycleAction]] = {}
        self.finished: list[LifecycleAction] = []  # every ended action, with its result and how it ended
        self._left: dict[str, str] = {}  # lifecycle state of instances no longer in a group
        self._proceeding: dict[str, tuple[float, Any, Any]] = {}  # instance id → (terminate at, group, state)
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- time ----------------------------------------------------------------------------------
    def scaled(self, seconds: float) -> float:
        """AWS seconds → sandbox wall-clock seconds."""
        return seconds * self.time_factor

    def unscaled(self, seconds: float) -> float:
        """Sandbox wall-clock seconds → AWS seconds."""
        return seconds / self.time_factor

    # -- scheduler -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the one scheduler thread that applies DefaultResult when timeouts pass."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}lifecycle-timer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the scheduler thread and wait for it (seconds)."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        with self.cond:
            while not self._stopping:
                self.expire()
                pending = [a.deadline for acts in self._actions.values() for a in acts if a.result is None]
                pending += [due for due, _g, _s in self._proceeding.values()]
                self.cond.wait(None if not pending else max(0.0, min(pending) - self._clock()))

    def expire(self) -> int:
        """Apply DefaultResult to every action whose timeout has passed; returns how many.

        The scheduler thread calls this; with a :class:`ManualClock`, call it (under the lock)
        after advancing the clock to apply timeouts synchronously.
        """
        with self.cond:
            now = self._clock()
            due = [a for acts in self._actions.values() for a in acts if a.result is None and a.deadline <= now]
            for action in due:
                acts = self._actions.get(action.instance_id, [])
                if action in acts:
                    self._finish(action, action.default_result, how="timeout")
            for instance_id, (at, group, state) in list(self._proceeding.items()):
                if at <= now:
                    del self._proceeding[instance_id]
                    self._terminated(group, state)
            return len(due)

    # -- queries -------------------------------------------------------------------------------
    def lifecycle_state(self, instance_id: str) -> str | None:
        """The instance's Auto Scaling lifecycle state, including Terminated/Detached after it left."""
        state = self._find(instance_id)
        if state is not None:
            return str(state.lifecycle_state)
        return self._left.get(instance_id)

    def actions(self, instance_id: str | None = None) -> list[LifecycleAction]:
        """Pending actions (all instances, or one), as immutable snapshots."""
        ids = [instance_id] if instance_id else list(self._actions)
        return [a for i in ids for a in self._actions.get(i, []) if a.result is None]

    # -- transitions ---------------------------------------------------------------------------
    def launched(self, group: Any, state: Any) -> None:
        """A group just launched the instance of moto ``InstanceState`` ``state``."""
        hooks = self._hooks(group.name, LAUNCHING)
        self._set(state, "Pending")
        if hooks:
            self._wait(group, state, hooks, LAUNCHING, "Pending:Wait")
        else:
            self._set(state, "Pending:Proceed")
            self._set(state, "InService")

    def begin_termination(self, group: Any, state: Any) -> None:
        """Start terminating a group member (scale-in, explicit termination, unhealthy)."""
        self._cancel(state.instance.id)
        self._set(state, "Terminating")
        hooks = self._hooks(group.name, TERMINATING)
        if hooks:
            self._wait(group, state, hooks, TERMINATING, "Terminating:Wait")
        else:
            self._terminated(group, state)

    def forget(self, instance_id: str, final_state: str) -> None:
        """The instance left its group outside the state machine (EC2 terminate, detach)."""
        self._cancel(instance_id)
        self._left[instance_id] = final_state
        self._on_state(instance_id, final_state)
        self.cond.notify_all()

    def complete(self, group: str, hook: str, instance_id: str | None, token: str | None, result: str) -> None:
        """CompleteLifecycleAction: finish the action identified by token or instance id.

        Raises:
            LifecycleError: result is not CONTINUE/ABANDON, neither id nor token given, or no
                active action matches (wrong instance, wrong state, already completed) —
                ``ValidationError: No active Lifecycle Action found with instance ID i-…``.
        """
        if result not in ("CONTINUE", "ABANDON"):
            raise LifecycleError(f"Invalid value for LifecycleActionResult: {result}")
        self._finish(self._match(group, hook, instance_id, token), result, how="completed")

    def heartbeat(self, group: str, hook: str, instance_id: str | None, token: str | None) -> None:
        """RecordLifecycleActionHeartbeat: restart the heartbeat timer (not beyond the global timeout).

        Raises:
            LifecycleError: as :meth:`complete`.
        """
        action = self._match(group, hook, instance_id, token)
        deadline = min(self._clock() + self.scaled(action.heartbeat_timeout), action.global_deadline)
        self._replace(action, replace(action, heartbeat_deadline=deadline))
        self.cond.notify_all()

    # -- internals -----------------------------------------------------------------------------
    def _hooks(self, group: str, transition: str) -> list[Any]:
        return [h for h in self._backend().describe_lifecycle_hooks(group) if h.lifecycle_transition == transition]

    def _find(self, instance_id: str) -> Any:
        for group in self._backend().autoscaling_groups.values():
            for state in group.instance_states:
                if state.instance.id == instance_id:
                    return state
        return None

    def _set(self, state: Any, lifecycle_state: str) -> None:
        state.lifecycle_state = lifecycle_state
        self._left.pop(state.instance.id, None)
        self._on_state(state.instance.id, lifecycle_state)
        self.cond.notify_all()

    def _wait(self, group: Any, state: Any, hooks: list[Any], transition: str, wait_state: str) -> None:
        now = self._clock()
        acts = []
        for hook in hooks:
            hb = float(hook.heartbeat_timeout)
            gt = global_timeout(hb)
            acts.append(
                LifecycleAction(
                    instance_id=state.instance.id,
                    group=group.name,
                    hook=hook.name,
                    transition=transition,
                    token=str(uuid.uuid4()),
                    default_result=hook.default_result or "ABANDON",
                    heartbeat_timeout=hb,
                    global_timeout=gt,
                    heartbeat_deadline=now + self.scaled(hb),
                    global_deadline=now + self.scaled(gt),
                )
            )
        self._actions[state.instance.id] = acts
        self._set(state, wait_state)

    def _cancel(self, instance_id: str) -> None:
        self._actions.pop(instance_id, None)
        self._proceeding.pop(instance_id, None)

    def _replace(self, old: LifecycleAction, new: LifecycleAction) -> None:
        acts = self._actions[old.instance_id]
        acts[acts.index(old)] = new

    def _match(self, group: str, hook: str, instance_id: str | None, token: str | None) -> LifecycleAction:
        if not instance_id and not token:
            raise LifecycleError("Either LifecycleActionToken or InstanceId must be specified")
        candidates = (
            self._actions.get(instance_id, []) if instance_id else [a for acts in self._actions.values() for a in acts]
        )
        for action in candidates:
            if (
                action.result is None
                and action.group == group
                and action.hook == hook
                and (token is None or action.token == token)
            ):
                return action
        if instance_id:
            raise LifecycleError(f"No active Lifecycle Action found with instance ID {instance_id}")
        raise LifecycleError(f"No active Lifecycle Action found with token {token}")

    def _finish(self, action: LifecycleAction, result: str, how: str) -> None:
        finished = replace(action, result=result, how=how)
        self._replace(action, finished)
        self.finished.append(finished)
        acts = self._actions[action.instance_id]
        state = self._find(action.instance_id)
        if state is None:  # the instance left the group meanwhile
            self._cancel(action.instance_id)
            return
        group = state.auto_scaling_group
        done = result == "ABANDON" or all(a.result is not None for a in acts)
        if not done:
            self.cond.notify_all()
            return
        self._cancel(action.instance_id)
        abandoned = any(a.result == "ABANDON" for a in acts)
        if action.transition == LAUNCHING:
            if abandoned:
                # AWS: ABANDON on launch terminates the instance; capacity is restored by a new launch.
                self._terminated(group, state)
                group.set_desired_capacity(group.desired_capacity)
            else:
                self._set(state, "Pending:Proceed")
                self._set(state, "InService")
        else:
            self._set(state, "Terminating:Proceed")
            self._proceeding[state.instance.id] = (self._clock() + self.scaled(PROCEED_DELAY_S), group, state)
            self.cond.notify_all()

    def _terminated(self, group: Any, state: Any) -> None:
        instance_id = state.instance.id
        self._set(state, "Terminating:Proceed")
        group.instance_states = [s for s in group.instance_states if s is not state]
        backend = self._backend()
        backend.ec2_backend.terminate_instances([instance_id])
        self._left[instance_id] = "Terminated"
        self._on_state(instance_id, "Terminated")
        self.cond.notify_all()
