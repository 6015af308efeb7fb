"""A local AWS region for tests, benchmarks and the quick start (docs/sandbox-aws.md).

moto in server mode (EC2, Auto Scaling, SSM, Secrets Manager, STS) on 127.0.0.1, extended with the
Auto Scaling lifecycle-hook state machine, throttling injection, a call log, per-instance loopback
addresses and one IMDSv2 emulator per instance.
"""

from herd_sandbox.aws.calllog import Call, CallLog
from herd_sandbox.aws.imds import Fault, ImdsServer
from herd_sandbox.aws.lifecycle import LifecycleAction, global_timeout
from herd_sandbox.aws.region import Hook, Instance, Region

__all__ = [
    "Call",
    "CallLog",
    "Fault",
    "Hook",
    "ImdsServer",
    "Instance",
    "LifecycleAction",
    "Region",
    "global_timeout",
]
