"""Extensions to moto's Auto Scaling and EC2 backends, active only for the running sandbox region.

moto launches straight to InService, terminates on scale-in at once and counts only InService
instances towards capacity. These class-level patches route the relevant moto methods to the
sandbox region that owns the backend (same account and region name); any other moto use in the
process (``mock_aws`` in someone else's test) gets moto's own behaviour.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

_lock = threading.Lock()
_installed = False
_owner: Owner | None = None


class Owner(Protocol):
    """What a sandbox region provides to the patched moto methods."""

    account_id: str
    region_name: str

    def set_desired_capacity(self, group: Any, new_capacity: int | None) -> None: ...  # noqa: D102
    def active_instances(self, group: Any) -> list[Any]: ...  # noqa: D102
    def group_launched(self, group: Any, states: list[Any]) -> None: ...  # noqa: D102
    def instances_launched(self, ec2: Any, instances: list[Any], kwargs: dict[str, Any]) -> None: ...  # noqa: D102
    def terminate_in_group(self, backend: Any, instance_id: str, decrement: bool) -> Any: ...  # noqa: D102
    def health_changed(self, backend: Any, instance_id: str, health: str) -> None: ...  # noqa: D102
    def leaving(self, backend: Any, instance_ids: list[str], final_state: str) -> None: ...  # noqa: D102
    def hook_created(self, hook: Any) -> None: ...  # noqa: D102


def claim(owner: Owner) -> None:
    """Make ``owner`` the one sandbox region of this process and install the patches.

    Raises:
        RuntimeError: another sandbox region is running in this process (moto's state is global).
    """
    global _owner
    with _lock:
        if _owner is not None:
            raise RuntimeError("a sandbox AWS region is already running in this process; stop it first")
        _install()
        _owner = owner


def release(owner: Owner) -> None:
    """Undo :func:`claim` (the patches stay installed but fall through to moto)."""
    global _owner
    with _lock:
        if _owner is owner:
            _owner = None


def _owning(backend: Any) -> Owner | None:
    owner = _owner
    if owner is None:
        return None
    if getattr(backend, "account_id", None) == owner.account_id and (
        getattr(backend, "region_name", None) == owner.region_name
    ):
        return owner
    return None


def _install() -> None:
    global _installed
    if _installed:
        return
    from moto.autoscaling import models as asg
    from moto.ec2.models import EC2Backend

    group_cls = asg.FakeAutoScalingGroup
    backend_cls = asg.AutoScalingBackend
    orig_set_desired = group_cls.set_desired_capacity
    orig_active = group_cls.active_instances
    orig_replace = group_cls.replace_autoscaling_group_instances
    orig_run = EC2Backend.run_instances
    orig_terminate = backend_cls.terminate_instance
    orig_health = backend_cls.set_instance_health
    orig_notify = backend_cls.notify_terminate_instances
    orig_detach = backend_cls.detach_instances
    orig_hook = backend_cls.create_lifecycle_hook

    def set_desired_capacity(self: Any, new_capacity: int | None) -> None:
        owner = _owning(self.autoscaling_backend)
        if owner is None:
            return orig_set_desired(self, new_capacity)
        return owner.set_desired_capacity(self, new_capacity)

    def active_instances(self: Any) -> list[Any]:
        owner = _owning(self.autoscaling_backend)
        if owner is None:
            return orig_active(self)
        return owner.active_instances(self)

    def replace_instances(self: Any, count_needed: int, propagated_tags: dict[str, str]) -> None:
        before = {id(s) for s in self.instance_states}
        orig_replace(self, count_needed, propagated_tags)
        owner = _owning(self.autoscaling_backend)
        if owner is not None:
            owner.group_launched(self, [s for s in self.instance_states if id(s) not in before])

    def run_instances(self: Any, *args: Any, **kwargs: Any) -> Any:
        reservation = orig_run(self, *args, **kwargs)
        owner = _owning(self)
        if owner is not None:
            owner.instances_launched(self, list(reservation.instances), kwargs)
        return reservation

    def terminate_instance(self: Any, instance_id: str, should_decrement: bool) -> Any:
        owner = _owning(self)
        if owner is None:
            return orig_terminate(self, instance_id, should_decrement)
        return owner.terminate_in_group(self, instance_id, should_decrement)

    def set_instance_health(self: Any, instance_id: str, health_status: str) -> None:
        orig_health(self, instance_id, health_status)
        owner = _owning(self)
        if owner is not None:
            owner.health_changed(self, instance_id, health_status)

    def notify_terminate_instances(self: Any, instance_ids: list[str]) -> None:
        owner = _owning(self)
        if owner is not None:
            owner.leaving(self, instance_ids, "Terminated")
        orig_notify(self, instance_ids)

    def detach_instances(self: Any, group_name: str, instance_ids: list[str], should_decrement: bool) -> Any:
        owner = _owning(self)
        if owner is not None:
            owner.leaving(self, instance_ids, "Detached")
        return orig_detach(self, group_name, instance_ids, should_decrement)

    def create_lifecycle_hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        hook = orig_hook(self, *args, **kwargs)
        owner = _owning(self)
        if owner is not None:
            owner.hook_created(hook)
        return hook

    group_cls.set_desired_capacity = set_desired_capacity  # type: ignore[method-assign]
    group_cls.active_instances = active_instances  # type: ignore[method-assign]
    group_cls.replace_autoscaling_group_instances = replace_instances  # type: ignore[method-assign]
    EC2Backend.run_instances = run_instances  # type: ignore[method-assign]
    backend_cls.terminate_instance = terminate_instance  # type: ignore[method-assign]
    backend_cls.set_instance_health = set_instance_health  # type: ignore[method-assign]
    backend_cls.notify_terminate_instances = notify_terminate_instances  # type: ignore[method-assign]
    backend_cls.detach_instances = detach_instances  # type: ignore[method-assign]
    backend_cls.create_lifecycle_hook = create_lifecycle_hook  # type: ignore[method-assign]
    _installed = True
