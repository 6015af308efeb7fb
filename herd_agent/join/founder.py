"""Who founds a new cluster: founder claims keyed by an epoch number, taken over when stale.

Two founders would mean two clusters and lost data. A claim is the SSM parameter
``<founder.parameter>/<epoch>`` (``/herd/<cluster>/founder/1``, ``/2``, …), holding the claimant's
instance id, IP and time as JSON. Epochs only grow.

**Claiming** (only by a control plane that found no healthy control plane):

1. Read the latest claim (``GetParametersByPath`` on the prefix; the highest integer name wins).
2. None, or the latest is **stale** → ``PutParameter <prefix>/<latest+1>`` with ``Overwrite=False``:
   SSM creates a name atomically, so exactly one claimant gets each epoch; the others get
   ``ParameterAlreadyExists`` and wait for that founder as joiners.
3. The latest is live → no claim: wait for its founder as a joiner.

A claim is **stale** when (checked in this order, each from AWS, never guessed):

- its founder released it (``"released": true``: the founder's join failed, it stopped k3s and
  wrote so before completing its launch hook with ABANDON);
- ``ec2:DescribeInstances`` says its instance is ``shutting-down``, ``terminated``, ``stopping``
  or ``stopped``. "Not found" decides nothing: EC2 is eventually consistent and may not know a
  just-launched instance yet (AWS, "Eventual consistency" in the EC2 API reference), while a
  terminated one stays listed as ``terminated`` for about an hour; an instance unknown for longer
  falls to the age rule below;
- ``autoscaling:DescribeAutoScalingInstances`` gives it a ``Terminat*`` lifecycle state
  (``Terminating``, ``Terminating:Wait``, ``Terminating:Proceed``, ``Terminated``: an ABANDONed
  launch goes there) or health ``UNHEALTHY``;
- it is older than ``max(founder.stale_after_s, join.ready_timeout_s + 60)`` seconds (the cluster
  never came up: a claimant only looks at claims when no control plane answers). A live founder
  gives up on its own Ready wait first, so it is not overtaken while still trying.

**Fencing**: a founder checks, before it publishes the cluster's secure tokens, that its epoch is
still the latest (:meth:`FounderClaims.still_current`); a superseded founder stops (exit 83).
A recreated cluster of the same name takes over its predecessor's claim (its founder is gone).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import ExitCode, HerdError

log = logging.getLogger(__name__)

GONE_EC2_STATES = ("shutting-down", "terminated", "stopping", "stopped")


class SupersededError(HerdError):
    """This founder's epoch was taken over by a later one (exit 83)."""

    exit_code = ExitCode.SUPERSEDED


@dataclass(frozen=True)
class Claim:
    """One founder claim: ``epoch`` and who made it when (``time``: Unix seconds)."""

    epoch: int
    instance_id: str
    ip: str
    time: float
    released: bool = False

    def to_json(self) -> str:  # noqa: D102
        return json.dumps({k: v for k, v in asdict(self).items() if k != "epoch"})


class FounderClaims:
    """The founder claims of one cluster.

    Args:
        cfg: effective config (``founder.*``, ``join.ready_timeout_s``).
        ident: this instance.
        ssm, ec2, autoscaling: boto3 clients (tests: Stubber-wrapped); default ``aws.client``.
        clock: Unix time source, seconds.
    """

    def __init__(self, cfg: Config, ident: Identity, *, ssm: Any = None, ec2: Any = None, autoscaling: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        from herd_agent import aws

        self.cfg, self.ident, self.clock = cfg, ident, clock
        self.ssm = ssm or aws.client("ssm", ident.region)
        self._ec2, self._asg = ec2, autoscaling
        self.prefix = cfg.expand("founder.parameter", cluster=ident.cluster).rstrip("/")

    def record_name(self, epoch: int) -> str:
        """``<founder.parameter>/<epoch>``."""
        return f"{self.prefix}/{epoch}"

    def founder_of(self) -> Claim | None:
        """The latest claim (the highest epoch), or None when there is none.

        Raises:
            AwsError: GetParametersByPath refused or failed.
        """
        from herd_agent import aws

        latest: Claim | None = None
        kwargs: dict[str, Any] = {"Path": self.prefix, "Recursive": False, "MaxResults": 10}
        while True:
            page = aws.call(self.ssm, "GetParametersByPath", **kwargs)
            for p in page.get("Parameters", []):
                leaf = str(p.get("Name", "")).rsplit("/", 1)[-1]
                if not leaf.isdigit():
                    continue  # e.g. a record of the older incarnation scheme: never a live claim
                epoch = int(leaf)
                if latest is not None and epoch <= latest.epoch:
                    continue
                try:
                    doc = json.loads(p["Value"])
                    latest = Claim(epoch, str(doc["instance_id"]), str(doc.get("ip", "")), float(doc["time"]),
                                   bool(doc.get("released", False)))
                except (KeyError, TypeError, ValueError):
                    latest = Claim(epoch, "", "", 0.0)  # unreadable: judged by age alone (age 0 → stale)
            token = page.get("NextToken")
            if not token:
                return latest
            kwargs["NextToken"] = token

    def stale(self, claim: Claim) -> str | None:
        """Why ``claim`` is stale (the module docstring's rules), or None while it is live.

        Raises:
            AwsError: a lookup was refused (AccessDenied names the action).
        """
        from herd_agent import aws

        if claim.released:
            return "released by its founder"
        if claim.instance_id:
            ec2 = self._ec2 or aws.client("ec2", self.ident.region)
            try:
                page = aws.call(ec2, "DescribeInstances", InstanceIds=[claim.instance_id])
                found = [i for r in page.get("Reservations", []) for i in r.get("Instances", [])]
            except aws.AwsError as exc:
                if exc.code not in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                    raise
                found = []
            state = found[0].get("State", {}).get("Name") if found else None
            if state in GONE_EC2_STATES:
                return f"its instance {claim.instance_id} is {state}"
            asg = self._asg or aws.client("autoscaling", self.ident.region)
            listed = aws.call(asg, "DescribeAutoScalingInstances",
                              InstanceIds=[claim.instance_id]).get("AutoScalingInstances", [])
            for inst in listed:
                lifecycle = str(inst.get("LifecycleState", ""))
                if lifecycle.startswith("Terminat") or inst.get("HealthStatus", "").upper() == "UNHEALTHY":
                    return f"its instance {claim.instance_id} is {lifecycle or 'unhealthy'} in its Auto Scaling group"
        limit = max(float(self.cfg.get("founder.stale_after_s")), float(self.cfg.get("join.ready_timeout_s")) + 60)
        age = self.clock() - claim.time
        if age > limit:
            return f"made {int(age)} s ago and the cluster never came up (limit {int(limit)} s)"
        return None

    def claim(self) -> Claim | None:
        """Try to found: our claim when this instance holds the latest epoch, else None.

        Raises:
            AwsError: a read or the write failed for another reason than "already exists".
        """
        from herd_agent import aws

        latest = self.founder_of()
        if latest is not None and latest.instance_id == self.ident.instance_id and not latest.released:
            log.info("founder claim %s is ours already (a resumed join)", self.record_name(latest.epoch))
            return latest
        if latest is not None:
            why = self.stale(latest)
            if why is None:
                log.info("founder claim %s by %s is live: waiting for that founder",
                         self.record_name(latest.epoch), latest.instance_id)
                return None
            log.warning("founder claim %s by %s is stale (%s): claiming the next epoch",
                        self.record_name(latest.epoch), latest.instance_id or "?", why)
        mine = Claim((latest.epoch if latest else 0) + 1, self.ident.instance_id, self.ident.private_ip, self.clock())
        name = self.record_name(mine.epoch)
        try:
            aws.call(self.ssm, "PutParameter", Name=name, Value=mine.to_json(), Type="String", Overwrite=False,
                     Description=f"founder claim of cluster {self.ident.cluster}, epoch {mine.epoch} (herd-agent)")
        except aws.AwsError as exc:
            if exc.code != "ParameterAlreadyExists":
                raise
            log.info("founder claim %s was taken by another control plane", name)
            return None
        log.info("founder claim %s written: this instance founds cluster %s", name, self.ident.cluster)
        return mine

    def still_current(self, epoch: int) -> None:
        """Fencing: raise unless ``epoch`` is still the latest claim and ours.

        Raises:
            SupersededError: a later epoch exists, or the claim is not ours (exit 83).
        """
        latest = self.founder_of()
        if latest is None or latest.epoch != epoch or latest.instance_id != self.ident.instance_id:
            raise SupersededError(
                f"founder claim epoch {epoch} of cluster {self.ident.cluster} was taken over "
                f"(latest: {latest.epoch if latest else 'none'} by {latest.instance_id if latest else '-'}): "
                "this instance stops founding")

    def release(self, epoch: int) -> None:
        """Mark our claim released (our join failed and k3s is stopped): the next claimant need not wait."""
        from herd_agent import aws

        claim = Claim(epoch, self.ident.instance_id, self.ident.private_ip, self.clock(), released=True)
        aws.call(self.ssm, "PutParameter", Name=self.record_name(epoch), Value=claim.to_json(), Type="String",
                 Overwrite=True)
        log.warning("founder claim %s released", self.record_name(epoch))
