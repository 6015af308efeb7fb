"""CloudFormation in the sandbox region: moto's stacks, plus what moto leaves out that AWS does.

``AWS::AutoScaling::AutoScalingGroup``'s ``LifecycleHookSpecificationList``: on AWS the hooks
exist before the group launches its first instance (that is why the property exists: a separate
``AWS::AutoScaling::LifecycleHook`` resource would come too late for them). moto's resource
ignores the list, so :func:`install` wraps it: the group is created empty, its hooks are created,
then its capacity is set; instances launch into ``Pending:Wait`` as on AWS.

``AWS::KMS::Key``'s ``KeyPolicy`` is "a JSON object" in a template (CloudFormation's resource
reference) and a JSON string in the KMS API; moto's resource keeps the object, and its KMS then
fails on every use of the key. :func:`install` hands moto the policy as the string KMS stores.
"""

from __future__ import annotations

from typing import Any

_installed = False


def install() -> None:
    """Wrap moto's CloudFormation model of the Auto Scaling group (idempotent)."""
    global _installed
    if _installed:
        return
    from moto.autoscaling.models import FakeAutoScalingGroup, autoscaling_backends

    original = FakeAutoScalingGroup.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create(cls: Any, resource_name: str, cloudformation_json: dict[str, Any], account_id: str,
               region_name: str, **kwargs: Any) -> Any:
        props = cloudformation_json.get("Properties", {})
        specs = props.get("LifecycleHookSpecificationList") or []
        if not specs:
            return original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        empty = {**cloudformation_json, "Properties": {**props, "DesiredCapacity": 0, "MinSize": 0}}
        group = original(cls, resource_name, empty, account_id, region_name, **kwargs)
        backend = autoscaling_backends[account_id][region_name]
        for spec in specs:
            backend.create_lifecycle_hook(
                name=spec["LifecycleHookName"], as_name=group.name, transition=spec["LifecycleTransition"],
                timeout=int(spec["HeartbeatTimeout"]) if "HeartbeatTimeout" in spec else None,
                result=spec.get("DefaultResult", "ABANDON"))
        group.min_size = int(props.get("MinSize") or 0)
        desired = props.get("DesiredCapacity")
        backend.set_desired_capacity(group.name, int(desired if desired is not None else group.min_size))
        return group

    FakeAutoScalingGroup.create_from_cloudformation_json = classmethod(create)  # type: ignore[method-assign]
    _install_kms_key()
    _installed = True


def _install_kms_key() -> None:
    import json

    from moto.kms.models import Key

    original = Key.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create(cls: Any, resource_name: str, cloudformation_json: dict[str, Any], account_id: str,
               region_name: str, **kwargs: Any) -> Any:
        props = cloudformation_json.get("Properties", {})
        if isinstance(props.get("KeyPolicy"), dict):
            props = {**props, "KeyPolicy": json.dumps(props["KeyPolicy"])}
        return original(cls, resource_name, {**cloudformation_json, "Properties": props}, account_id, region_name,
                        **kwargs)

    Key.create_from_cloudformation_json = classmethod(create)  # type: ignore[method-assign]
