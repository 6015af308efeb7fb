"""A loopback lab for etcd membership tests: instances as (host root, 127.0.x.y, EC2 instance in
moto), the agent's real code path (runner → ``systemctl`` shim → real etcd), and helpers to
observe the cluster.

etcd timing in tests: ``ETCD_HEARTBEAT_INTERVAL=20`` ms and ``ETCD_ELECTION_TIMEOUT=200`` ms
(production defaults 100/1000) so elections and catch-up take milliseconds; etcd's own 5 s
"connected for the health interval" rule for reconfiguration cannot be shortened and is what
the client's retries wait out.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd_agent.etcd.client import EtcdClient, Member, TlsFiles
from herd_agent.etcd.errors import EtcdError
from herd_agent.etcd.gc import Ec2InstanceOracle
from herd_agent.etcd.membership import Membership
from herd_agent.etcd.pki import SecretsManagerCaStore
from herd_agent.etcd.settings import EtcdSettings, Identity
from herd_agent.etcd.status import ClusterStatus, cluster_status
from herd_agent.host.fsroot import HostRoot
from herd_sandbox.systemctl import SandboxRunner, Systemctl, write_shim

_NETS = itertools.count(10)
TEST_ETCD_ENV = {"ETCD_HEARTBEAT_INTERVAL": "20", "ETCD_ELECTION_TIMEOUT": "200"}


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition", interval: float = 0.05) -> Any:
    """Poll ``cond`` until it returns a truthy value; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the condition may fail while things settle
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_exc})")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Instance:
    """One simulated control-plane instance."""

    name: str
    ip: str
    root: HostRoot
    runner: SandboxRunner
    membership: Membership
    alive: bool = True

    @property
    def client_url(self) -> str:
        return self.membership.client_url

    def systemctl(self) -> Systemctl:
        return Systemctl(self.root, {"PATH": self.runner.env["PATH"]})


@dataclass
class Lab:
    """A set of instances on loopback sharing one pair of etcd ports and one moto EC2.

    With ``settings.member_tls`` (the production default) the members run TLS with client
    certificates; the cluster CA lives in moto's Secrets Manager under ``settings.ca_secret``.
    ``oracle_factory`` / ``ca_store_factory`` replace the default AWS clients (e.g. a sandbox
    region's), and :meth:`adopt` gives an instance launched elsewhere (an Auto Scaling group) a
    host root and a member.
    """

    base: Path
    toolchain_bin: Path
    ec2: Any
    subnet: str
    settings: EtcdSettings
    clock: list[float] = field(default_factory=lambda: [time.time()])
    instances: list[Instance] = field(default_factory=list)
    runner_env: dict[str, str] = field(default_factory=dict)
    net: int = field(default_factory=lambda: next(_NETS))
    oracle_factory: Callable[[], Any] | None = None
    ca_store_factory: Callable[[], Any] | None = None
    _hosts: itertools.count = field(default_factory=lambda: itertools.count(2))

    def __post_init__(self) -> None:
        self.bindir = self.base / "bin"
        write_shim(self.bindir, sys.executable)
        self.path = f"{self.bindir}:{self.toolchain_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"

    def now(self) -> float:
        """The injected clock (tests move it forward past grace periods)."""
        return self.clock[0]

    def advance(self, seconds: float) -> None:
        self.clock[0] += seconds

    def oracle(self) -> Any:
        if self.oracle_factory is not None:
            return self.oracle_factory()
        import boto3

        return Ec2InstanceOracle(region="us-east-1", client=self.ec2,
                                 autoscaling=boto3.client("autoscaling", region_name="us-east-1"))

    def ca_store(self) -> Any:
        if not self.settings.member_tls:
            return None
        if self.ca_store_factory is not None:
            return self.ca_store_factory()
        import boto3

        return SecretsManagerCaStore(self.settings.ca_secret, client=boto3.client("secretsmanager",
                                                                                  region_name="us-east-1"))

    def tls(self) -> TlsFiles | None:
        """Client TLS files for observing the cluster: any instance's member certificate."""
        if not self.settings.member_tls:
            return None
        for inst in self.instances:
            files = self.settings.tls_files(inst.root)
            if files and files.cert and Path(files.cert).exists():
                return files
        return None

    def next_ip(self) -> str:
        return f"127.0.{self.net}.{next(self._hosts)}"

    def launch(self, ip: str | None = None, settings: EtcdSettings | None = None) -> Instance:
        """Run an EC2 instance at ``ip`` (fresh when None) and give it a host root."""
        subnet = self.subnet
        if ip is None:
            ip = self.next_ip()
        else:
            # moto 5 answers 500 when a terminated instance's address is handed out again in the
            # same subnet; a fresh VPC with the same CIDR gives the new instance that address.
            vpc = self.ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
            subnet = self.ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/16")["Subnet"]["SubnetId"]
        res = self.ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=subnet,
                                     PrivateIpAddress=ip)
        return self.adopt(res["Instances"][0]["InstanceId"], ip, settings)

    def adopt(self, name: str, ip: str, settings: EtcdSettings | None = None) -> Instance:
        """Give the instance ``name`` at ``ip`` (already running in the cloud) a root and a member."""
        root = HostRoot(self.base / name)
        root.makedirs("/etc")
        runner = SandboxRunner(root, self.path)
        runner.env.update(self.runner_env)
        m = Membership(root, settings or self.settings, Identity(name, ip), runner=runner, clock=self.now,
                       ca_store=self.ca_store())
        inst = Instance(name, ip, root, runner, m)
        self.instances.append(inst)
        return inst

    def terminate(self, inst: Instance) -> None:
        self.ec2.terminate_instances(InstanceIds=[inst.name])
        inst.alive = False

    def kill9(self, inst: Instance) -> None:
        assert inst.systemctl().kill(self.settings.unit, signal.SIGKILL, wait_s=10)

    def live(self) -> list[Instance]:
        return [i for i in self.instances if i.alive]

    def endpoints(self, exclude: Instance | None = None) -> list[str]:
        return [i.client_url for i in self.live() if i is not exclude and i.systemctl().is_active(self.settings.unit)]

    def client(self, exclude: Instance | None = None) -> EtcdClient:
        return EtcdClient(self.endpoints(exclude) or [i.client_url for i in self.live()], tls=self.tls(), retry_s=10)

    def members(self) -> list[Member]:
        return self.client().member_list()[1]

    def status(self) -> ClusterStatus:
        return cluster_status(self.client(), timeout_s=1.0)

    def found(self) -> Instance:
        inst = self.launch()
        inst.membership.found()
        return inst

    def join(self, oracle: bool = True, ip: str | None = None) -> Instance:
        inst = self.launch(ip=ip)
        inst.membership.join(self.endpoints(exclude=inst), oracle=self.oracle() if oracle else None)
        return inst

    def three(self) -> tuple[Instance, Instance, Instance]:
        """Found a cluster and join two more: three healthy voters."""
        a = self.found()
        return a, self.join(), self.join()

    def cleanup(self) -> None:
        for inst in self.instances:
            try:
                inst.systemctl().kill(self.settings.unit, signal.SIGKILL, wait_s=5)
            except Exception:  # noqa: BLE001, S110 - best effort teardown
                pass


def healthy_voters_equal(lab: Lab, expected: list[Instance]) -> bool:
    """True when the cluster's members are exactly ``expected``, all voters, all healthy."""
    try:
        st = lab.status()
    except EtcdError:
        return False
    names = sorted(m.name for m in st.members)
    return (names == sorted(i.name for i in expected) and not st.learners
            and len(st.healthy) == len(expected))
