"""Who this instance is: IMDSv2 identity plus the cluster and role from its tags.

Tags come from instance metadata (``meta-data/tags/instance``) when instance-metadata tags are
enabled; otherwise from ``ec2:DescribeTags`` filtered on this instance's id. The ASG name is the
``aws:autoscaling:groupName`` tag that Auto Scaling puts on every instance it launches.
``cluster.name`` and ``identity.role`` in the config override the tags.

**Validation before use.** What IMDS says about the instance ends up in /etc/hosts, the k3s
config and the Node name, so each field is checked for its documented form first, and a bad one
stops the join with :class:`IdentityError` (exit 65) naming the field, before anything is
written:

- ``instanceId``: ``i-`` and 8 or 17 lowercase hex digits (EC2 resource ids);
- ``privateIp``, ``local-ipv4``: one IPv4 or IPv6 address (:mod:`ipaddress`; any range, since
  VPCs may use any private or public block);
- ``local-hostname``: a DNS name per RFC 1123 (labels of letters, digits and ``-``, at most 63
  characters, 253 in all; no whitespace or line breaks), or empty when IMDS has none;
- ``region``: ``us-east-1``-shaped (``[a-z]{2}(-[a-z0-9]+)+-[0-9]+``); ``availabilityZone``: the
  region followed by a zone letter or a local-zone suffix (``us-east-1a``, ``us-west-2-lax-1a``).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field

from herd_agent.config.loader import Config
from herd_agent.discovery.imds import INSTANCE_ID_RE, ImdsClient
from herd_agent.errors import ExitCode, HerdError

log = logging.getLogger(__name__)

ASG_TAG = "aws:autoscaling:groupName"
_CLUSTER_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_REGION_RE = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-[0-9]+")
_AZ_SUFFIX_RE = re.compile(r"[a-z]|(-[a-z0-9]+)+-?[0-9]*[a-z]")
_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class TagError(HerdError):
    """A tag the agent needs is missing or malformed (exit 65)."""

    exit_code = ExitCode.DATA


class IdentityError(HerdError):
    """An identity field from IMDS has the wrong form (exit 65); ``field`` names it."""

    exit_code = ExitCode.DATA

    def __init__(self, field: str, value: str, expected: str) -> None:
        shown = value if len(value) <= 80 else value[:80] + "..."
        super().__init__(f"IMDS gave a malformed {field}: {shown!r} is not {expected}; refusing to use it. "
                         "Check what answers at imds.endpoint (or AWS_EC2_METADATA_SERVICE_ENDPOINT)")
        self.field = field


def valid_instance_id(value: str, field: str = "instanceId") -> str:
    """``value`` when it is an EC2 instance id (``i-`` + 8 or 17 hex digits).

    Raises:
        IdentityError: any other form.
    """
    return _matching(INSTANCE_ID_RE, value, field, "an EC2 instance id (i- and 8 or 17 lowercase hex digits)")


def _matching(pattern: re.Pattern[str], value: str, field: str, expected: str) -> str:
    if not pattern.fullmatch(value):
        raise IdentityError(field, value, expected)
    return value


def valid_ip(value: str, field: str = "privateIp") -> str:
    """``value`` when it is one IPv4 or IPv6 address.

    Raises:
        IdentityError: anything else (a list, a hostname, trailing text, whitespace).
    """
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise IdentityError(field, value, "one IPv4 or IPv6 address") from None
    if "%" in value:
        raise IdentityError(field, value, "an IP address without a scope (zone) suffix")
    return value


def valid_hostname(value: str, field: str = "local-hostname") -> str:
    """``value`` when it is empty or a DNS name per RFC 1123 (a trailing dot is allowed).

    Raises:
        IdentityError: whitespace, line breaks, empty or over-long labels, other characters.
    """
    name = value[:-1] if value.endswith(".") else value
    if value and (len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in name.split("."))):
        raise IdentityError(field, value, "a DNS name (RFC 1123: letters, digits and '-' in dot-separated "
                                          "labels of 1-63 characters, no whitespace)")
    return value


def valid_region(value: str, field: str = "region") -> str:
    """``value`` when it is shaped like an AWS region name (``eu-west-1``).

    Raises:
        IdentityError: any other form.
    """
    return _matching(_REGION_RE, value, field, "an AWS region name such as us-east-1")


def valid_availability_zone(value: str, region: str, field: str = "availabilityZone") -> str:
    """``value`` when it is ``region`` followed by a zone suffix (``us-east-1a``, ``us-west-2-lax-1a``).

    Raises:
        IdentityError: any other form.
    """
    if not (value.startswith(region) and _AZ_SUFFIX_RE.fullmatch(value[len(region):])):
        raise IdentityError(field, value, f"an availability zone of {region} such as {region}a")
    return value


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
        ImdsError: IMDS unreachable; ImdsBadAnswer: the identity document is broken (exit 65).
        IdentityError: instanceId, privateIp, local-hostname, region or availabilityZone has the
            wrong form (exit 65), checked before any other call.
        TagError: cluster or role tag missing or malformed (exit 65).
        AwsError: DescribeTags refused (when metadata tags are disabled).
    """
    doc = imds.identity_document()
    instance_id = valid_instance_id(doc.instance_id)
    private_ip = valid_ip(doc.private_ip)
    region = valid_region(doc.region)
    az = valid_availability_zone(doc.availability_zone, region)
    local_hostname = valid_hostname(imds.local_hostname() or "")
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
        instance_type=doc.instance_type,
        asg_name=tags.get(ASG_TAG),
        cluster=cluster,
        role=role,
        tags=tags,
        tags_source=source,
        local_hostname=local_hostname,
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
