"""``herd-sandbox instance …``: faults on a sandbox instance driven by hand (docs/sandbox.md,
"Instance faults").

An instance is a directory (``SandboxInstance(workdir)``: ``root/``, ``bin/``, ``instance.json``,
the agents' logs and pid files); ``herd-sandbox run`` keeps one per instance under
``<state-dir>/instances/<label>-<instance-id>/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from herd_sandbox.cli import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_UNREACHABLE, fail


@click.group()
def instance() -> None:
    """Faults on one sandbox instance (its directory), e.g. "this instance dies now"."""


@instance.command()
@click.argument("workdir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--terminate", "aws_side", flag_value="terminate",
              help="Then EC2 TerminateInstances: the region marks the instance terminated at once "
                   "(its group's lifecycle hooks do not run) and the group replaces it.")
@click.option("--unhealthy", "aws_side", flag_value="unhealthy",
              help="Then Auto Scaling SetInstanceHealth Unhealthy, as the group's health check does when "
                   "EC2 status checks fail: Terminating:Wait, whose hook nobody completes now (its "
                   "DefaultResult applies at the timeout), and a replacement.")
@click.option("--endpoint", metavar="URL", default=None,
              help="The region's endpoint_url (default: the one in WORKDIR/instance.json).")
def die(workdir: Path, aws_side: str | None, endpoint: str | None) -> None:
    """This instance dies now: every process it runs (its agents, the units the systemctl
    stand-in started, their children) gets SIGKILL at once. Nothing runs a leave: no cordon, no
    CompleteLifecycleAction. With --terminate or --unhealthy, the region is then told, as EC2 and
    Auto Scaling would notice a dead machine. Prints ``{"instance_id", "killed", "aws"}``.
    Exit codes: 66 WORKDIR is not an instance's directory, 65 the region refused the call, 69 no
    region answers."""
    from herd_sandbox.instance import INSTANCE_FILE, die_now

    try:
        meta = json.loads((workdir / INSTANCE_FILE).read_text())
        instance_id = str(meta["instance_id"])
    except (OSError, ValueError, KeyError, TypeError):
        fail(EXIT_NOT_FOUND, f"{workdir} is not a sandbox instance's directory (no readable "
                              f"{INSTANCE_FILE}); pass the directory SandboxInstance.prepare() laid out, "
                              "e.g. <state-dir>/instances/<label>-<instance-id>")
    endpoint = endpoint or meta.get("aws_endpoint_url")
    if aws_side and not endpoint:
        fail(EXIT_NOT_FOUND, f"{workdir}/{INSTANCE_FILE} names no region; pass --endpoint URL")
    region = _Region(str(endpoint), str(meta.get("aws_region") or "us-east-1"), instance_id) if aws_side else None
    if region is not None:
        region.check()  # before anything dies: a bad --endpoint or instance changes nothing
    killed = die_now(workdir)
    result: dict[str, Any] = {"instance_id": instance_id, "killed": killed, "aws": None}
    if region is not None:
        result["aws"] = region.mark(str(aws_side), f"the instance's processes are dead ({len(killed)} killed)")
    click.echo(json.dumps(result))


class _Region:
    """The operator's view of the instance's region: is the instance there, and mark it gone."""

    def __init__(self, endpoint: str, region_name: str, instance_id: str) -> None:
        self.endpoint, self.region_name, self.instance_id = endpoint, region_name, instance_id

    def _client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        from herd_sandbox.aws.region import OPERATOR_ACCESS_KEY_ID, OPERATOR_SECRET_ACCESS_KEY

        return boto3.session.Session().client(
            service, endpoint_url=self.endpoint, region_name=self.region_name,
            aws_access_key_id=OPERATOR_ACCESS_KEY_ID, aws_secret_access_key=OPERATOR_SECRET_ACCESS_KEY,
            config=Config(retries={"mode": "standard"}, connect_timeout=5, read_timeout=30))

    def _call(self, what: str, call: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = EXIT_NOT_FOUND if "NotFound" in str(err.get("Code")) else EXIT_BAD_INPUT
            fail(code, f"{what}: the region at {self.endpoint} answered {err.get('Code')}: {err.get('Message')} "
                       "(is --endpoint this instance's region?)")
        except BotoCoreError as exc:
            fail(EXIT_UNREACHABLE, f"{what}: no sandbox region answers at {self.endpoint} ({exc}); "
                                   "start it, or pass the right --endpoint")

    def check(self) -> None:
        """Exit (66/65/69) unless the region knows the instance."""
        self._call(f"nothing killed yet; {self.instance_id}",
                   lambda: self._client("ec2").describe_instances(InstanceIds=[self.instance_id]))

    def mark(self, how: str, done: str) -> str:
        """EC2 TerminateInstances (``terminate``) or SetInstanceHealth Unhealthy (``unhealthy``)."""
        if how == "terminate":
            self._call(done, lambda: self._client("ec2").terminate_instances(InstanceIds=[self.instance_id]))
            return "terminated"
        self._call(done, lambda: self._client("autoscaling").set_instance_health(
            InstanceId=self.instance_id, HealthStatus="Unhealthy"))
        return "unhealthy"
