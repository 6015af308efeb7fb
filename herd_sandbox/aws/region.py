"""The local AWS region: moto in server mode behind :class:`~herd_sandbox.aws.front.AwsFront`,
the lifecycle-hook state machine, and one IMDSv2 emulator per instance. See docs/sandbox-aws.md.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from herd_sandbox.aws import patches
from herd_sandbox.aws.calllog import Call, CallLog
from herd_sandbox.aws.imds import Fault, Identity, ImdsServer
from herd_sandbox.aws.lifecycle import (
    COUNTED_STATES,
    LAUNCHING,
    TERMINATING,
    LifecycleAction,
    LifecycleEngine,
    global_timeout,
    target_lifecycle_state,
)
from herd_sandbox.aws.servers import LoopbackServer
from herd_sandbox.aws.throttle import Throttler

T = TypeVar("T")

OPERATOR_ACCESS_KEY_ID = "AKIASANDBOXOPERATOR0"
"""Access key id of the region's own clients and of callers without an instance ("operator")."""
OPERATOR_SECRET_ACCESS_KEY = "sandbox-operator-secret"
DEFAULT_IMAGE_ID = "ami-0123456789abcdef0"
INSTANCE_NETWORK = "127.100.0.0/14"
"""Instance private addresses are drawn from here; all of 127/8 routes to ``lo`` on Linux."""


@dataclass(frozen=True)
class Hook:
    """A lifecycle hook to create with a group.

    Attributes:
        name: LifecycleHookName.
        transition: ``"launching"``/``"terminating"`` or the full ``autoscaling:EC2_INSTANCE_…`` name.
        heartbeat_timeout: seconds, 30–7200 (AWS default 3600).
        default_result: ``"CONTINUE"`` or ``"ABANDON"`` (AWS default ABANDON).
    """

    name: str
    transition: str
    heartbeat_timeout: int = 3600
    default_result: str = "ABANDON"

    @property
    def lifecycle_transition(self) -> str:
        """The AWS LifecycleTransition value."""
        short = {"launching": LAUNCHING, "terminating": TERMINATING}
        return short.get(self.transition.lower(), self.transition)


@dataclass
class Instance:
    """A sandbox EC2 instance: its address, IMDS and the credentials its processes sign with.

    The access key id is unique per instance, so the call log attributes each AWS call to the
    instance that made it (:attr:`Call.caller` is the instance id).
    """

    instance_id: str
    private_ip: str
    access_key_id: str
    secret_access_key: str
    session_token: str
    imds: ImdsServer = field(repr=False)

    @property
    def imds_url(self) -> str:
        """``http://127.x.y.z:PORT`` for ``AWS_EC2_METADATA_SERVICE_ENDPOINT``."""
        return self.imds.url


class Region:
    """A local AWS region on loopback: EC2, Auto Scaling, SSM, Secrets Manager, STS (moto) plus
    lifecycle hooks, throttling injection, a call log and per-instance IMDSv2.

    Use as a context manager (``with Region() as region: …``) or call :meth:`start`/:meth:`stop`.
    Only one region runs per process at a time (moto keeps global state).

    Args:
        region_name: the AWS region name clients sign for (``us-east-1``).
        time_factor: the region's one clock factor, sandbox seconds per AWS second: lifecycle-hook
            heartbeat and global timeouts, the ``Terminating:Proceed`` delay, IMDS token TTLs, and
            (through ``HERD_AGENT_TIME_FACTOR`` in :meth:`env`) the agent's heartbeat cadence and
            hook deadline. 0.01 makes a 3600 s heartbeat timeout pass in 36 s. Spot notices keep
            real time (the agent does not scale them).
        imds_token_time_factor: wall-clock seconds per IMDS token TTL second; None (default):
            ``time_factor``.
        host: loopback address for the AWS endpoint; ``port`` 0 picks a free port.
        throttle_seed: seed for rate-based throttling decisions (reproducible runs).
        clock: monotonic clock (seconds) for hook timeouts and IMDS token expiry; a
            :class:`~herd_sandbox.aws.lifecycle.ManualClock` makes them step-controlled
            (then call :meth:`run_timers`). Default ``time.monotonic``.
    """

    def __init__(
        self,
        region_name: str = "us-east-1",
        time_factor: float = 1.0,
        imds_token_time_factor: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        throttle_seed: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if time_factor <= 0:
            raise ValueError(f"time_factor must be > 0, got {time_factor}")
        self.region_name = region_name
        self.time_factor = time_factor
        self.imds_token_time_factor = time_factor if imds_token_time_factor is None else imds_token_time_factor
        self._clock = clock or time.monotonic
        self._host = host
        self._port = port
        self.account_id = ""
        self.cond = threading.Condition(threading.RLock())
        self.call_log = CallLog()
        self._policies: dict[str, list[dict[str, Any]]] = {}  # instance id / "group:<name>" → IAM policies
        self.iam_decisions: list[tuple[str, Any, Any]] = []  # (caller, AuthzRequest, Decision) per checked call
        self.throttler = Throttler(throttle_seed)
        self._instances: dict[str, Instance] = {}
        self._by_key: dict[str, str] = {}
        # Each process takes its own block of 1024 addresses, so two sandboxes running at once on
        # one machine (a test run and a `sandbox run`) never hand out the same address.
        self._next_ip = (os.getpid() % 60) * 1024 + 1
        self._server: LoopbackServer | None = None
        self._engine: LifecycleEngine | None = None
        self._clients: dict[tuple[str, str | None], Any] = {}
        self._started = False
        self._set_amis_env = False

    # -- lifecycle of the region itself -------------------------------------------------------
    def start(self) -> Region:
        """Start the AWS endpoint and the hook scheduler; returns self.

        Raises:
            RuntimeError: another sandbox region already runs in this process.
        """
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.server import DomainDispatcherApplication, create_backend_app

        from herd_sandbox.aws.control import ControlRoutes
        from herd_sandbox.aws.faults import FaultInjector
        from herd_sandbox.aws.front import AwsFront

        self.account_id = DEFAULT_ACCOUNT_ID
        patches.claim(self)
        # moto's catalogue of public AMIs costs ~0.3 s per EC2 backend and the sandbox has no use
        # for it (any ImageId is accepted). An explicit setting wins; stop() restores the process env.
        if "MOTO_EC2_LOAD_DEFAULT_AMIS" not in os.environ:
            os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
            self._set_amis_env = True
        try:
            _reset_moto()
            from herd_sandbox.aws import cfn

            cfn.install()  # stacks' groups get their LifecycleHookSpecificationList (herd_sandbox/aws/cfn.py)
            self._engine = LifecycleEngine(self.cond, self._asg, self.time_factor, clock=self._clock)
            faults = FaultInjector()
            front = self._front = AwsFront(
                DomainDispatcherApplication(create_backend_app),
                self.cond,
                self._engine,
                self.call_log,
                self.throttler,
                self.caller_of,
                self._asg,
                faults=faults,
                authorize=self.authorize,
                control=ControlRoutes(faults, lambda i: self.instance(i).imds).answer,
            )
            self._server = LoopbackServer(front, host=self._host, port=self._port, name="aws").start()
            self._engine.start()
            self._started = True
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server and thread the region started and forget moto's state. Idempotent."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._engine is not None:
            self._engine.stop()
        with self.cond:
            imds = [i.imds for i in self._instances.values()]
        for server in imds:
            server.stop()
        if self._started or self._engine is not None:
            _reset_moto()
        self._engine = None
        self._started = False
        self._clients.clear()
        if self._set_amis_env:
            os.environ.pop("MOTO_EC2_LOAD_DEFAULT_AMIS", None)
            self._set_amis_env = False
        patches.release(self)

    def __enter__(self) -> Region:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- endpoints, credentials, clients -------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: the one endpoint for every service (``AWS_ENDPOINT_URL``)."""
        if self._server is None:
            raise RuntimeError("region is not running")
        return self._server.url

    def attach_policy(self, target: str, document: dict[str, Any], *, group: bool = False) -> None:
        """Attach an IAM policy document to an instance (or, ``group=True``, to every instance of an
        Auto Scaling group, replacements included), replacing the one attached before: from then on
        each call the instance signs is allowed only if its policy allows it (:mod:`herd_sandbox.aws.iam`).
        Groups made by :meth:`create_group` with the ``herd:cluster``/``herd:role`` tags get their
        role's shipped policy (``ami/iam``) this way unless one is attached first."""
        with self.cond:
            self._policies[f"group:{target}" if group else target] = [document]

    def authorize(self, req: Any, caller: str) -> bool:
        """False when ``caller`` (an instance) has policies and they do not allow ``req``."""
        from herd_sandbox.aws import iam

        with self.cond:
            policies = list(self._policies.get(caller, []))
            if caller.startswith("i-"):
                for name, g in self._asg().autoscaling_groups.items():
                    if any(s.instance.id == caller for s in g.instance_states):
                        policies += self._policies.get(f"group:{name}", []) or self._profile_policies(g)
            if not policies:
                return True

            def group(name: str) -> tuple[str, dict[str, str]] | None:
                g = self._asg().autoscaling_groups.get(name)
                return None if g is None else (g.arn, {t["Key"]: t["Value"] for t in g.tags})

            def secret_arn(ident: str) -> str | None:
                from moto.core import DEFAULT_ACCOUNT_ID
                from moto.secretsmanager.models import secretsmanager_backends

                try:
                    return str(secretsmanager_backends[DEFAULT_ACCOUNT_ID][self.region_name].describe_secret(ident).arn)
                except Exception:
                    return None

            request = iam.request_of(req.service, req.action, req.params, region=self.region_name,
                                     account=self.account_id, group=group, secret_arn=secret_arn)
            decision = iam.evaluate(policies, request)
            self.iam_decisions.append((caller, request, decision))
            if not decision.allowed:
                return False
            kms = iam.kms_request_of(req.service, req.action, req.params, region=self.region_name,
                                     account=self.account_id, stored_keys=lambda: self._stored_keys(req),
                                     key_arn=self._kms_key)
            if kms is None:
                return True
            decision = iam.evaluate(policies, kms)
            self.iam_decisions.append((caller, kms, decision))
            return decision.allowed

    def _stored_keys(self, req: Any) -> list[str | None]:
        """The KMS key each SecureString parameter / secret a call names is stored under (None: none)."""
        from moto.backends import get_backend

        backend = get_backend(req.service)[self.account_id][self.region_name]
        if req.service == "ssm":
            names = [req.params.get("Name")] + list(req.params.get("Names") or [])
            params = [backend.get_parameter(n) for n in names if isinstance(n, str)]
            return [p.keyid or "alias/aws/ssm" for p in params if p is not None and p.parameter_type == "SecureString"]
        try:
            secret = backend.describe_secret(req.params.get("SecretId"))
        except Exception:  # noqa: BLE001 - moto's not-found error: the call itself will say so
            return []
        return [getattr(secret, "kms_key_id", None) or "alias/aws/secretsmanager"]

    def _kms_key(self, key_id: str) -> tuple[str, bool] | None:
        """Any key id, key ARN, alias or alias ARN → (key ARN, AWS-managed), None when unknown."""
        from moto.backends import get_backend

        if key_id.split(":alias/")[-1].startswith(("alias/aws/", "aws/")):
            return key_id, True
        backend = get_backend("kms")[self.account_id][self.region_name]
        try:
            key = backend.keys[backend.any_id_to_key_id(key_id)]
        except Exception:  # noqa: BLE001 - no such key or alias
            return None
        return key.arn, key.key_manager == "AWS"

    def _profile_policies(self, group: Any) -> list[dict[str, Any]]:
        """The inline policies of the role in the instance profile of the group's launch template
        (as a CloudFormation stack creates them); [] when there is none."""
        import json

        from moto.iam.models import iam_backends

        spec = group.launch_template if isinstance(group.launch_template, dict) else {}
        try:
            template = self._ec2().get_launch_template(spec["LaunchTemplateId"])
            arn = template.latest_version().data.get("IamInstanceProfile", {}).get("Arn")
        except Exception:
            return []
        profiles = [p for p in iam_backends[self.account_id]["global"].instance_profiles.values() if p.arn == arn]
        docs = []
        for profile in profiles:
            for role in profile.roles:
                for doc in role.policies.values():
                    docs.append(json.loads(doc) if isinstance(doc, str) else doc)
        return docs

    def caller_of(self, access_key_id: str) -> str:
        """Caller name for an access key id: instance id, ``"operator"``, the key, or ``"anonymous"``."""
        if not access_key_id:
            return "anonymous"
        if access_key_id == OPERATOR_ACCESS_KEY_ID:
            return "operator"
        return self._by_key.get(access_key_id, access_key_id)

    def env(self, instance_id: str | None = None) -> dict[str, str]:
        """Environment for a process using this region (an agent on ``instance_id``, or the operator).

        Returns ``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, the credentials
        (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, and ``AWS_SESSION_TOKEN`` for instances)
        and, for an instance, ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (+ ``…_MODE=IPv4``) and
        ``HERD_AGENT_TIME_FACTOR`` (the region's clock factor, so the agent's hook deadline and
        heartbeat cadence run on the region's clock; :mod:`herd_agent.failpoints`).

        Raises:
            KeyError: unknown instance id.
        """
        env = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region_name,
            "AWS_DEFAULT_REGION": self.region_name,
            "AWS_ACCESS_KEY_ID": OPERATOR_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": OPERATOR_SECRET_ACCESS_KEY,
        }
        if instance_id is not None:
            inst = self.instance(instance_id)
            env.update(
                {
                    "AWS_ACCESS_KEY_ID": inst.access_key_id,
                    "AWS_SECRET_ACCESS_KEY": inst.secret_access_key,
                    "AWS_SESSION_TOKEN": inst.session_token,
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT": inst.imds_url,
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv4",
                    "HERD_AGENT_TIME_FACTOR": repr(self.time_factor),
                }
            )
        return env

    def client(self, service: str, instance_id: str | None = None, **config: Any) -> Any:
        """A boto3 client for ``service`` pointed at this region.

        Signed with the operator key, or with ``instance_id``'s key so calls are attributed to
        it. Keyword arguments go to ``botocore.config.Config`` (e.g. ``retries={...}``); clients
        without them are cached per (service, instance).
        """
        from botocore.config import Config

        key = (service, instance_id)
        if not config and key in self._clients:
            return self._clients[key]
        env = self.env(instance_id)
        client = _boto3_session().client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=env.get("AWS_SESSION_TOKEN"),
            config=Config(**config),
        )
        if not config:
            self._clients[key] = client
        return client

    def _operator(self, service: str) -> Any:
        return self.client(service)

    # -- instances ------------------------------------------------------------------------------
    def instance(self, instance_id: str) -> Instance:
        """The sandbox record of an instance. Raises KeyError when unknown."""
        with self.cond:
            return self._instances[instance_id]

    def instances(self) -> list[Instance]:
        """Every instance launched in this region, in launch order (terminated ones included)."""
        with self.cond:
            return list(self._instances.values())

    def group_instances(self, group: str, states: frozenset[str] | None = None) -> list[str]:
        """Instance ids currently in ``group`` (optionally only those in one of ``states``)."""
        with self.cond:
            g = self._asg().autoscaling_groups.get(group)
            if g is None:
                return []
            return [s.instance.id for s in g.instance_states if states is None or s.lifecycle_state in states]

    def lifecycle_state(self, instance_id: str) -> str | None:
        """The Auto Scaling lifecycle state (``Pending:Wait``, ``InService``, ``Terminated``…) or None."""
        with self.cond:
            return self._engine_or_fail().lifecycle_state(instance_id)

    def ec2_state(self, instance_id: str) -> str:
        """The EC2 instance state name (``running``, ``terminated``…)."""
        with self.cond:
            return str(self._ec2().get_instance(instance_id).state)

    def lifecycle_actions(self, instance_id: str | None = None) -> list[LifecycleAction]:
        """Pending lifecycle actions (tokens, hooks, deadlines) for one instance or all."""
        with self.cond:
            return self._engine_or_fail().actions(instance_id)

    def finished_actions(self, instance_id: str | None = None) -> list[LifecycleAction]:
        """Ended lifecycle actions, oldest first, each with ``result`` (CONTINUE/ABANDON) and ``how``
        (``completed`` by CompleteLifecycleAction, or ``timeout`` when the DefaultResult applied)."""
        with self.cond:
            done = list(self._engine_or_fail().finished)
        return [a for a in done if instance_id is None or a.instance_id == instance_id]

    def seconds_left(self, action: LifecycleAction) -> tuple[float, float]:
        """``(scaled, unscaled)`` seconds until ``action``'s DefaultResult applies."""
        scaled = max(0.0, action.deadline - self._clock())
        return scaled, scaled / self.time_factor

    def run_timers(self) -> int:
        """Apply every DefaultResult whose timeout has passed, now; returns how many applied.

        The scheduler thread does this by itself on the real clock; with a ManualClock call it
        after ``clock.advance(…)``.
        """
        return self._engine_or_fail().expire()

    def scaled(self, seconds: float) -> float:
        """AWS seconds → sandbox seconds (``seconds × time_factor``)."""
        return seconds * self.time_factor

    def unscaled(self, seconds: float) -> float:
        """Sandbox seconds → AWS seconds (``seconds / time_factor``)."""
        return seconds / self.time_factor

    # -- operator API (through boto3, so it is logged and modelled like any client) -----------
    def create_launch_template(
        self,
        name: str,
        image_id: str = DEFAULT_IMAGE_ID,
        instance_type: str = "t3.medium",
        user_data: str | bytes | None = None,
        metadata_tags: bool = True,
        tags: dict[str, str] | None = None,
    ) -> str:
        """CreateLaunchTemplate; returns the LaunchTemplateId.

        ``metadata_tags`` sets ``MetadataOptions.InstanceMetadataTags`` (instance tags in IMDS);
        ``HttpTokens`` is always ``required`` (IMDSv2 only). ``tags`` go to the instances launched.
        """
        data: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": instance_type,
            "MetadataOptions": {
                "HttpTokens": "required",
                "HttpEndpoint": "enabled",
                "InstanceMetadataTags": "enabled" if metadata_tags else "disabled",
            },
        }
        if user_data is not None:
            raw = user_data.encode() if isinstance(user_data, str) else user_data
            data["UserData"] = base64.b64encode(raw).decode()
        if tags:
            data["TagSpecifications"] = [
                {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
            ]
        resp = self._operator("ec2").create_launch_template(LaunchTemplateName=name, LaunchTemplateData=data)
        return str(resp["LaunchTemplate"]["LaunchTemplateId"])

    def create_group(
        self,
        name: str,
        launch_template: str,
        desired: int = 1,
        min_size: int = 0,
        max_size: int | None = None,
        hooks: list[Hook] | tuple[Hook, ...] = (),
        tags: dict[str, str] | None = None,
        availability_zones: list[str] | None = None,
    ) -> None:
        """CreateAutoScalingGroup with its hooks (LifecycleHookSpecificationList) and propagated tags.

        ``launch_template`` is a template name (``lt-…`` ids work too). Instances launch at once
        into ``Pending:Wait`` when a launch hook exists, else ``InService``.
        """
        spec = {"LaunchTemplateId" if launch_template.startswith("lt-") else "LaunchTemplateName": launch_template}
        kwargs: dict[str, Any] = {
            "AutoScalingGroupName": name,
            "LaunchTemplate": {**spec, "Version": "$Latest"},
            "MinSize": min_size,
            "MaxSize": max(desired, min_size) if max_size is None else max_size,
            "DesiredCapacity": desired,
            "AvailabilityZones": availability_zones or [self.region_name + "a"],
            "Tags": [
                {
                    "Key": k,
                    "Value": v,
                    "PropagateAtLaunch": True,
                    "ResourceId": name,
                    "ResourceType": "auto-scaling-group",
                }
                for k, v in (tags or {}).items()
            ],
        }
        if hooks:
            kwargs["LifecycleHookSpecificationList"] = [
                {
                    "LifecycleHookName": h.name,
                    "LifecycleTransition": h.lifecycle_transition,
                    "HeartbeatTimeout": h.heartbeat_timeout,
                    "DefaultResult": h.default_result,
                }
                for h in hooks
            ]
        self._operator("autoscaling").create_auto_scaling_group(**kwargs)
        self._attach_role_policy(name, tags or {})

    def _attach_role_policy(self, group: str, tags: dict[str, str]) -> None:
        """A group tagged ``herd:cluster`` + ``herd:role`` gets its role's shipped policy (ami/iam),
        as an instance profile would give it, unless a policy is attached to it already."""
        from herd_sandbox.aws import iam

        role, cluster = tags.get("herd:role"), tags.get("herd:cluster")
        with self.cond:
            if not (role and cluster) or f"group:{group}" in self._policies:
                return
        key = self._kms_key(iam.cluster_key_alias(cluster))  # the cluster's customer-managed key, if any
        doc = iam.shipped_policy(role, region=self.region_name, account=self.account_id, cluster=cluster,
                                 kms_key_arn=key[0] if key else None)
        if doc is not None:
            self.attach_policy(group, doc, group=True)

    def put_hook(self, group: str, hook: Hook) -> None:
        """PutLifecycleHook on an existing group (applies to later transitions only, as on AWS)."""
        self._operator("autoscaling").put_lifecycle_hook(
            AutoScalingGroupName=group,
            LifecycleHookName=hook.name,
            LifecycleTransition=hook.lifecycle_transition,
            HeartbeatTimeout=hook.heartbeat_timeout,
            DefaultResult=hook.default_result,
        )

    def scale(self, group: str, desired: int) -> None:
        """SetDesiredCapacity (HonorCooldown false); raising MaxSize first if needed."""
        asg = self._operator("autoscaling")
        current = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
        if desired > current["MaxSize"] or desired < current["MinSize"]:
            asg.update_auto_scaling_group(
                AutoScalingGroupName=group,
                MaxSize=max(desired, current["MaxSize"]),
                MinSize=min(desired, current["MinSize"]),
            )
        asg.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=desired, HonorCooldown=False)

    def terminate_instance(self, instance_id: str, decrement: bool = True) -> None:
        """TerminateInstanceInAutoScalingGroup: Terminating(:Wait) now; a replacement when not decrementing."""
        self._operator("autoscaling").terminate_instance_in_auto_scaling_group(
            InstanceId=instance_id, ShouldDecrementDesiredCapacity=decrement
        )

    def set_unhealthy(self, instance_id: str) -> None:
        """SetInstanceHealth Unhealthy: the group terminates the instance (hooks apply) and replaces it."""
        self._operator("autoscaling").set_instance_health(InstanceId=instance_id, HealthStatus="Unhealthy")

    def inject_spot_interruption(self, instance_id: str, action: str = "terminate") -> dict[str, str]:
        """Publish ``spot/instance-action`` on the instance's IMDS (time = now + 2 min); returns it."""
        return self.instance(instance_id).imds.set_spot_interruption(action)

    def inject_rebalance(self, instance_id: str) -> dict[str, str]:
        """Publish ``events/recommendations/rebalance`` (``{"noticeTime": …}``); returns it."""
        return self.instance(instance_id).imds.set_rebalance()

    def inject_maintenance_event(self, instance_id: str, code: str = "system-reboot", **kw: Any) -> dict[str, str]:
        """Add a scheduled maintenance event (see :meth:`ImdsServer.add_maintenance_event`)."""
        return self.instance(instance_id).imds.add_maintenance_event(code=code, **kw)

    def inject_imds_fault(self, instance_id: str, fault: Fault) -> None:
        """Make the instance's IMDS delay, fail (status) or drop matching requests."""
        self.instance(instance_id).imds.inject_fault(fault)

    def set_metadata_tags(self, instance_id: str, enabled: bool) -> None:
        """Enable/disable instance tags in the instance's IMDS (404 on ``tags/…`` when disabled)."""
        self.instance(instance_id).imds.metadata_tags = enabled

    def throttle(self, service: str, action: str = "*", rate: float | None = None, burst: int | None = None) -> None:
        """Answer ``service``/``action`` calls with the real throttling error (see :class:`Throttler`)."""
        self.throttler.set(service, action, rate=rate, burst=burst)

    def deny(self, service: str, action: str, caller: str | None = None) -> None:
        """Answer ``service``/``action`` (``"*"``: all) from ``caller`` (an instance id, ``"operator"``;
        None: everyone) with the service's access-denied error, as a missing IAM permission would."""
        self.throttler.deny(service, action, caller)

    @property
    def faults(self) -> Any:
        """The region's injected AWS faults (:class:`herd_sandbox.aws.faults.FaultInjector`)."""
        return self._front.faults

    def clear_throttles(self) -> None:
        """Stop every injected throttling and denial."""
        self.throttler.clear()

    def calls(self, **filters: Any) -> list[Call]:
        """Recorded AWS calls, oldest first.

        Filters as :meth:`CallLog.query`: service, action, caller, instance, since, until, outcome.
        """
        return self.call_log.query(**filters)

    # -- waiting --------------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
        """Block until ``predicate()`` is truthy; returns its value.

        The predicate runs under the region lock and is re-checked whenever the region changes
        (every AWS call, every lifecycle transition) and at least every 50 ms.

        Raises:
            TimeoutError: not true within ``timeout`` seconds (wall clock).
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what} not reached within {timeout} s")
                self.cond.wait(min(left, 0.05))

    def wait_for_state(self, instance_id: str, state: str, timeout: float = 10.0) -> None:
        """Wait until the instance's Auto Scaling lifecycle state is ``state``. Raises TimeoutError."""
        self.wait_for(
            lambda: self.lifecycle_state(instance_id) == state,
            timeout,
            what=f"{instance_id} in {state} (now {self.lifecycle_state(instance_id)})",
        )

    def wait_for_instances(self, group: str, count: int, state: str = "InService", timeout: float = 10.0) -> list[str]:
        """Wait until ``group`` has at least ``count`` instances in ``state``; returns their ids."""
        return self.wait_for(
            lambda: (ids := self.group_instances(group, frozenset({state}))) and len(ids) >= count and ids,
            timeout,
            what=f"{count} instance(s) of {group} in {state}",
        )

    # -- moto access -----------------------------------------------------------------------------
    def _asg(self) -> Any:
        from moto.backends import get_backend

        return get_backend("autoscaling")[self.account_id][self.region_name]

    def _ec2(self) -> Any:
        from moto.backends import get_backend

        return get_backend("ec2")[self.account_id][self.region_name]

    def _engine_or_fail(self) -> LifecycleEngine:
        if self._engine is None:
            raise RuntimeError("region is not running")
        return self._engine

    # -- patches.Owner: called by the patched moto methods, region lock held ---------------------
    def set_desired_capacity(self, group: Any, new_capacity: int | None) -> None:  # noqa: D102
        group.desired_capacity = group.min_size if new_capacity is None else new_capacity
        counted = self.active_instances(group)
        delta = (group.desired_capacity or 0) - len(counted)
        if delta > 0:
            group.replace_autoscaling_group_instances(delta, group.get_propagated_tags())
        elif delta < 0:
            victims = [s for s in counted if not s.protected_from_scale_in][:-delta]
            for state in victims:
                self._engine_or_fail().begin_termination(group, state)
        backend = group.autoscaling_backend
        if group.name in backend.autoscaling_groups:
            backend.update_attached_elbs(group.name)
            backend.update_attached_target_groups(group.name)

    def active_instances(self, group: Any) -> list[Any]:  # noqa: D102
        return [s for s in group.instance_states if s.lifecycle_state in COUNTED_STATES]

    def group_launched(self, group: Any, states: list[Any]) -> None:  # noqa: D102
        for state in states:
            self._engine_or_fail().launched(group, state)

    def instances_launched(self, ec2: Any, instances: list[Any], kwargs: dict[str, Any]) -> None:  # noqa: D102
        tags_enabled = self._template_metadata_tags(ec2, kwargs.get("launch_template"))
        for inst in instances:
            ip = self._allocate_ip()
            nic = inst.nics[0]
            old = nic.private_ip_address
            nic.private_ip_address = ip
            nic.private_ip_addresses = [{"Primary": True, "PrivateIpAddress": ip}]
            if hasattr(nic, "private_dns_name"):
                nic.private_dns_name = inst.private_dns_name
            private_ips = getattr(inst, "_private_ips", None)
            if isinstance(private_ips, set):
                private_ips.discard(old)
                private_ips.add(ip)
            key = "ASIA" + hashlib.sha256(f"{inst.id}/{secrets.token_hex(4)}".encode()).hexdigest()[:16].upper()
            imds = ImdsServer(
                inst.id, ip, self, metadata_tags=tags_enabled, token_time_factor=self.imds_token_time_factor,
                clock=self._clock,
            ).start()
            self._instances[inst.id] = Instance(
                instance_id=inst.id,
                private_ip=ip,
                access_key_id=key,
                secret_access_key=secrets.token_urlsafe(30),
                session_token=secrets.token_urlsafe(60),
                imds=imds,
            )
            self._by_key[key] = inst.id

    def terminate_in_group(self, backend: Any, instance_id: str, decrement: bool) -> Any:  # noqa: D102
        from moto.autoscaling.exceptions import ValidationError
        from moto.autoscaling.models import TerminateInstanceActivity

        state = self._engine_or_fail()._find(instance_id)
        if state is None:
            raise ValidationError(f"Instance Id not found - No managed instance found for instance ID: {instance_id}")
        group = state.auto_scaling_group
        original = group.desired_capacity
        if state.lifecycle_state in COUNTED_STATES:
            if decrement:
                if (group.desired_capacity or 0) - 1 < (group.min_size or 0):
                    raise ValidationError(
                        f"Currently, desiredSize equals minSize ({group.min_size}). Terminating instance without "
                        "replacement will violate group's min size constraint. Either set "
                        "shouldDecrementDesiredCapacity flag to false or lower group's min size."
                    )
                group.desired_capacity -= 1
            self._engine_or_fail().begin_termination(group, state)
            if not decrement:
                group.set_desired_capacity(group.desired_capacity)
        return TerminateInstanceActivity(state.instance, original)

    def health_changed(self, backend: Any, instance_id: str, health: str) -> None:  # noqa: D102
        if health != "Unhealthy":
            return
        state = self._engine_or_fail()._find(instance_id)
        if state is not None and state.lifecycle_state == "InService":
            group = state.auto_scaling_group
            self._engine_or_fail().begin_termination(group, state)
            group.set_desired_capacity(group.desired_capacity)

    def leaving(self, backend: Any, instance_ids: list[str], final_state: str) -> None:  # noqa: D102
        engine = self._engine_or_fail()
        for instance_id in instance_ids:
            if engine._find(instance_id) is not None:
                engine.forget(instance_id, final_state)

    def hook_created(self, hook: Any) -> None:  # noqa: D102
        hook.global_timeout = int(global_timeout(float(hook.heartbeat_timeout)))
        # moto fills in made-up ARNs; AWS omits both unless they were given (we accept neither).
        hook.role_arn = None
        hook.notification_target_arn = None

    # -- MetadataSource: what each IMDS reads -----------------------------------------------------
    def identity(self, instance_id: str) -> Identity:  # noqa: D102
        with self.cond:
            inst = self._ec2().get_instance(instance_id)
            placement = inst.placement
            zone = getattr(placement, "zone", placement)
            launch = inst.launch_time
            return Identity(
                instance_id=inst.id,
                region=self.region_name,
                availability_zone=str(zone),
                private_ip=str(inst.private_ip),
                instance_type=str(inst.instance_type),
                image_id=str(inst.image_id),
                account_id=self.account_id,
                local_hostname=str(inst.private_dns_name),
                mac=str(inst.nics[0].mac_address),
                vpc_id=str(getattr(inst, "vpc_id", "") or ""),
                launch_time=launch if isinstance(launch, str) else launch.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )

    def tags(self, instance_id: str) -> dict[str, str]:  # noqa: D102
        with self.cond:
            return dict(self._ec2().tags.get(instance_id, {}))

    def target_lifecycle_state(self, instance_id: str) -> str | None:  # noqa: D102
        with self.cond:
            return target_lifecycle_state(self._engine_or_fail().lifecycle_state(instance_id))

    def user_data(self, instance_id: str) -> bytes | None:  # noqa: D102
        with self.cond:
            data = self._ec2().get_instance(instance_id).user_data
        if not data:
            return None
        if isinstance(data, list):
            data = data[0]
        text = data if isinstance(data, str) else str(data)
        try:
            return base64.b64decode(text, validate=True)
        except ValueError:
            return text.encode()

    # -- helpers ---------------------------------------------------------------------------------
    def _allocate_ip(self) -> str:
        while True:
            n = self._next_ip
            self._next_ip += 1
            octets = (100 + (n >> 16), (n >> 8) & 255, n & 255)
            if octets[2] not in (0, 255):
                return "127.{}.{}.{}".format(*octets)

    @staticmethod
    def _template_metadata_tags(ec2: Any, spec: dict[str, Any] | None) -> bool:
        if not spec:
            return False
        try:
            if spec.get("LaunchTemplateId"):
                template = ec2.get_launch_template(spec["LaunchTemplateId"])
            else:
                template = ec2.get_launch_template_by_name(spec["LaunchTemplateName"])
            version = template.get_version(spec.get("Version", "$Default"))
        except Exception:  # noqa: BLE001 - moto raises its own error types; default to AWS's "disabled"
            return False
        options = version.data.get("MetadataOptions") or {}
        return str(options.get("InstanceMetadataTags", "disabled")).lower() == "enabled"


_SESSION: Any = None
_SESSION_LOCK = threading.Lock()


def _boto3_session() -> Any:
    """One boto3 session for all sandbox clients: its loader caches the service models."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            import boto3

            _SESSION = boto3.session.Session()
        return _SESSION


def _reset_moto() -> None:
    """Drop every moto backend's state, as moto server's ``/moto-api/reset`` does.

    moto's own reset re-initialises every backend (the EC2 one alone takes ~0.3 s) only to
    discard it; dropping the backends lets them be created lazily on first use instead.
    """
    try:
        from moto.core.base_backend import BackendDict, backend_lock
        from moto.core.model_instances import reset_model_data

        with backend_lock:
            for backends in BackendDict._instances:
                backends.clear()
            BackendDict._instances.clear()
        reset_model_data()
    except (ImportError, AttributeError):  # a moto without these internals: use its public reset
        from moto.moto_api._internal.models import moto_api_backend

        moto_api_backend.reset()
