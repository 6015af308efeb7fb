"""Who this instance is: IMDSv2 identity plus the cluster and role from its tags.

Tags come from instance metadata (``meta-data/tags/instance``) when instance-metadata tags are
enabled; otherwise from ``ec2:DescribeTags`` filtered on this instance's id. The ASG name is the
``aws:autoscaling:groupName`` tag that Auto Scaling puts on every instance it launches.
``cluster.name`` and ``identity.role`` in the config override the tags.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from herd_agent.config.loader import Config
from herd_agent.discovery.imds import ImdsClient
from herd_agent.errors import ExitCode, HerdError

log = logging.getLogger(__name__)

ASG_TAG = "aws:autoscaling:groupName"
_CLUSTER_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class TagError(HerdError):
    """A tag the agent needs is missing or malformed (exit 65)."""

    exit_code = ExitCode.DATA


@dataclass(frozen=True)
class Identity:
    """This instance.

    Attributes:
        instance_id, region, availability_zone, private_ip, instance_type: from the identity
            document.
        asg_name: the Auto Scaling group (None when not launched by one).
        cluster: cluster name; role: ``control-plane`` or ``node``.
        tags: every instance tag read.
        tags_source: ``imds`` or ``ec2:DescribeTags``.
        local_hostname: IMDS ``meta-data/local-hostname`` ("" when IMDS has none).
        vpc_id: the VPC of the primary interface, IMDS
            ``meta-data/network/interfaces/macs/<mac>/vpc-id`` ("" when IMDS has none); scopes
            control-plane discovery.
    """

    instance_id: str
    region: str
    availability_zone: str
    private_ip: str
    instance_type: str
    asg_name: str | None
    cluster: str
    role: str
    tags: dict[str, str] = field(default_factory=dict, compare=False)
    tags_source: str = "imds"
    local_hostname: str = ""
    vpc_id: str = ""

    @property
    def is_control_plane(self) -> bool:
        """True for control planes."""
        return self.role == "control-plane"


def describe_tags(instance_id: str, region: str) -> dict[str, str]:
    """This instance's tags through ``ec2:DescribeTags`` (paginated).

    Raises:
        AwsError: the call failed (AccessDenied names ``ec2:DescribeTags``).
    """
    from herd_agent import aws

    ec2 = aws.client("ec2", region)
    tags: dict[str, str] = {}
    token = None
    while True:
        kwargs = {"Filters": [{"Name": "resource-id", "Values": [instance_id]}], "MaxResults": 1000}
        if token:
            kwargs["NextToken"] = token
        page = aws.call(ec2, "DescribeTags", **kwargs)
        tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
        token = page.get("NextToken")
        if not token:
            return tags


def role_from_tag(value: str | None, cfg: Config, tag_key: str) -> str:
    """Map the role tag's value to ``control-plane`` or ``node``.

    Raises:
        TagError: missing or not one of the configured values.
    """
    cp, node = cfg.get("identity.control_plane_value"), cfg.get("identity.node_value")
    if value is None:
        raise TagError(
            f"instance tag {tag_key!r} is missing: tag the Auto Scaling group with {tag_key}={cp} or "
            f"{tag_key}={node} (PropagateAtLaunch=true), or set identity.role in the config"
        )
    if value == cp:
        return "control-plane"
    if value == node:
        return "node"
    raise TagError(f"instance tag {tag_key}={value!r} is neither {cp!r} nor {node!r}: fix the tag, or set "
                   "identity.control_plane_value / identity.node_value to the values your tags use")


def read_identity(imds: ImdsClient, cfg: Config) -> Identity:
    """Read identity and tags; apply config overrides.

    Raises:
        ImdsError: IMDS unreachable or the identity document is broken.
        TagError: cluster or role tag missing or malformed (exit 65).
        AwsError: DescribeTags refused (when metadata tags are disabled).
    """
    doc = imds.identity_document()
    try:
        instance_id = doc["instanceId"]
        region = doc["region"]
        az = doc["availabilityZone"]
        private_ip = doc["privateIp"]
    except KeyError as exc:
        raise HerdError(f"IMDS identity document lacks {exc.args[0]}", exit_code=ExitCode.DATA) from None
    tags = imds.tags()
    source = "imds"
    if tags is None:
        log.info("instance metadata tags are disabled; reading tags with ec2:DescribeTags")
        tags = describe_tags(instance_id, region)
        source = "ec2:DescribeTags"
    cluster_key = cfg.get("identity.cluster_tag")
    role_key = cfg.get("identity.role_tag")
    cluster = cfg.get("cluster.name") or tags.get(cluster_key)
    if not cluster:
        raise TagError(
            f"instance tag {cluster_key!r} is missing: tag the Auto Scaling group with {cluster_key}=<cluster name> "
            "(PropagateAtLaunch=true), or set cluster.name in the config"
        )
    if not _CLUSTER_RE.fullmatch(cluster):
        raise TagError(
            f"instance tag {cluster_key}={cluster!r} is not a valid cluster name: use lowercase letters, digits "
            "and '-', 1-63 characters, starting and ending with a letter or digit"
        )
    role = cfg.get("identity.role") or role_from_tag(tags.get(role_key), cfg, role_key)
    return Identity(
        instance_id=instance_id,
        region=region,
        availability_zone=az,
        private_ip=private_ip,
        instance_type=str(doc.get("instanceType", "")),
        asg_name=tags.get(ASG_TAG),
        cluster=cluster,
        role=role,
        tags=tags,
        tags_source=source,
        local_hostname=imds.get("/latest/meta-data/local-hostname", optional=True) or "",
        vpc_id=_vpc_id(imds),
    )


_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_VPC_RE = re.compile(r"vpc-[0-9a-f]{1,32}")


def _vpc_id(imds: ImdsClient) -> str:
    """The primary interface's VPC id from IMDS, validated; "" when IMDS serves none.

    Raises:
        HerdError: IMDS answered with something that is not a MAC or a VPC id (exit 65).
    """
    mac = (imds.get("/latest/meta-data/mac", optional=True) or "").strip().lower()
    if not mac:
        return ""
    if not _MAC_RE.fullmatch(mac):
        raise HerdError("IMDS meta-data/mac is not a MAC address", exit_code=ExitCode.DATA)
    vpc = (imds.get(f"/latest/meta-data/network/interfaces/macs/{mac}/vpc-id", optional=True) or "").strip()
    if vpc and not _VPC_RE.fullmatch(vpc):
        raise HerdError(f"IMDS meta-data/network/interfaces/macs/{mac}/vpc-id is not a VPC id", exit_code=ExitCode.DATA)
    return vpc
