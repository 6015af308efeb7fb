"""Who founds a new cluster: one atomic conditional write, keyed by cluster and incarnation.

Two founders would mean two clusters and lost data, so the decision is an SSM ``PutParameter``
with ``Overwrite=False`` on ``<founder.parameter>/<incarnation>``: exactly one writer succeeds
(the others get ``ParameterAlreadyExists``). The record holds the founder's instance id and IP.

The incarnation keeps a recreated cluster of the same name from being blocked by an old record:
by default it is the id in the control-plane Auto Scaling group's ARN
(``arn:aws:autoscaling:…:autoScalingGroup:<id>:autoScalingGroupName/<name>``), which is new every
time the group is created, even under the same name. All control planes of a cluster must then be
in one group; with several, set ``founder.incarnation_tag`` to a tag they share (e.g.
``aws:cloudformation:stack-id``). See docs/join.md.
"""

from __future__ import annotations

import json
import logging
import time

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import ExitCode, HerdError

log = logging.getLogger(__name__)


def incarnation(cfg: Config, ident: Identity) -> str:
    """The cluster incarnation id (see module docstring).

    Raises:
        HerdError: no incarnation tag and no Auto Scaling group (exit 65).
        AwsError: DescribeAutoScalingGroups refused or failed.
    """
    tag = cfg.get("founder.incarnation_tag")
    if tag:
        value = ident.tags.get(tag)
        if not value:
            raise HerdError(f"founder.incarnation_tag {tag!r} is not on this instance: tag it, or unset the key",
                            exit_code=ExitCode.DATA)
        return value.rsplit("/", 1)[-1] if value.startswith("arn:") else value
    if not ident.asg_name:
        raise HerdError("this control plane was not launched by an Auto Scaling group, so the cluster incarnation "
                        "is unknown: set founder.incarnation_tag", exit_code=ExitCode.DATA)
    from herd_agent import aws

    groups = aws.call(aws.client("autoscaling", ident.region), "DescribeAutoScalingGroups",
                      AutoScalingGroupNames=[ident.asg_name])["AutoScalingGroups"]
    if not groups:
        raise HerdError(f"Auto Scaling group {ident.asg_name!r} not found", exit_code=ExitCode.DATA)
    arn = groups[0]["AutoScalingGroupARN"]
    return arn.split(":autoScalingGroup:", 1)[1].split(":", 1)[0]


def record_name(cfg: Config, ident: Identity, incarnation_id: str) -> str:
    """``/herd/<cluster>/founder/<incarnation>``."""
    return f"{cfg.expand('founder.parameter', cluster=ident.cluster).rstrip('/')}/{incarnation_id}"


def claim(cfg: Config, ident: Identity, incarnation_id: str) -> bool:
    """Try to become the founder; True for exactly one caller per cluster incarnation.

    Raises:
        AwsError: the write was refused or failed for another reason than "already exists".
    """
    from herd_agent import aws

    name = record_name(cfg, ident, incarnation_id)
    value = json.dumps({"instance_id": ident.instance_id, "ip": ident.private_ip, "time": int(time.time())})
    ssm = aws.client("ssm", ident.region)
    try:
        aws.call(ssm, "PutParameter", Name=name, Value=value, Type="String", Overwrite=False,
                 Description=f"founder of cluster {ident.cluster} (herd-agent)")
    except aws.AwsError as exc:
        if exc.code != "ParameterAlreadyExists":
            raise
        log.info("founder record %s exists: another control plane founded this cluster", name)
        return False
    log.info("founder record %s written: this instance founds cluster %s", name, ident.cluster)
    return True


def founder_of(cfg: Config, ident: Identity, incarnation_id: str) -> dict[str, object] | None:
    """The founder record, or None when there is none."""
    from herd_agent import aws

    try:
        value = aws.call(aws.client("ssm", ident.region), "GetParameter",
                         Name=record_name(cfg, ident, incarnation_id))["Parameter"]["Value"]
    except aws.AwsError as exc:
        if exc.code == "ParameterNotFound":
            return None
        raise
    return dict(json.loads(value))
