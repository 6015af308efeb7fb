"""Control-plane discovery: EC2 tag filters in the sandbox, the /ping probe, choice and bounded retries."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from herd_agent import aws
from herd_agent.config import load_config
from herd_agent.discovery.control_plane import Candidate, NoControlPlaneError, choose, healthy_endpoint, probe
from herd_agent.discovery.identity import Identity
from herd_agent.errors import ExitCode
from herd_agent.host.fsroot import HostRoot
from herd_sandbox.aws.region import Region


@pytest.fixture
def cfg(tmp_path: Path):
    def make(text: str = ""):
        if text:
            (tmp_path / "etc/herd-agent").mkdir(parents=True, exist_ok=True)
            (tmp_path / "etc/herd-agent/config.yaml").write_text(text)
        return load_config(HostRoot(tmp_path))

    return make


def ident(instance_id: str = "i-0000000000000self", ip: str = "127.0.9.9", az: str = "us-east-1a",
          cluster: str = "blue") -> Identity:
    return Identity(instance_id, "us-east-1", az, ip, "m6i.large", None, cluster, "node")


def test_choose_prefers_same_az_then_ip() -> None:
    cands = [Candidate("127.0.0.5", "i-5", "us-east-1b"), Candidate("127.0.0.9", "i-9", "us-east-1a"),
             Candidate("127.0.0.7", "i-7", "us-east-1a")]
    probed: list[str] = []

    def healthy(c: Candidate) -> bool:
        probed.append(c.ip)
        return c.ip != "127.0.0.7"

    assert choose(cands, healthy, "us-east-1a") == Candidate("127.0.0.9", "i-9", "us-east-1a")
    assert probed == ["127.0.0.7", "127.0.0.9"]
    assert choose(cands, lambda c: c.availability_zone == "us-east-1b", "us-east-1a").ip == "127.0.0.5"
    assert choose(cands, lambda c: False, "us-east-1a") is None


def test_lookup_by_tags_in_the_sandbox(shared_region: Region, unique: str, cfg, monkeypatch) -> None:
    region = shared_region
    region.create_launch_template(f"{unique}-lt")
    region.create_group(f"{unique}-cp", f"{unique}-lt", desired=3,
                        tags={"herd:cluster": unique, "herd:role": "control-plane"})
    region.create_group(f"{unique}-w", f"{unique}-lt", desired=2, tags={"herd:cluster": unique, "herd:role": "node"})
    region.create_group(f"{unique}-other", f"{unique}-lt", desired=1,
                        tags={"herd:cluster": "someone-else", "herd:role": "control-plane"})
    cps = region.group_instances(f"{unique}-cp")
    me = region.group_instances(f"{unique}-w")[0]
    for k, v in region.env(me).items():
        monkeypatch.setenv(k, v)
    aws.reset_clients()
    try:
        chosen = healthy_endpoint(ident(me, region.instance(me).private_ip, cluster=unique), cfg(),
                                  check=lambda c: c.instance_id == cps[2]).chosen
        assert chosen.instance_id == cps[2] and chosen.ip == region.instance(cps[2]).private_ip
        # One round = one DescribeInstances call.
        assert [c.action for c in region.calls(caller=me)] == ["DescribeInstances"]
        # A terminated control plane is not a candidate.
        region.terminate_instance(cps[2])
        region.wait_for(lambda: region.ec2_state(cps[2]) == "terminated", timeout=30, what="terminated")
        chosen = healthy_endpoint(ident(me, region.instance(me).private_ip, cluster=unique), cfg(),
                                  check=lambda c: True).chosen
        assert chosen.instance_id in cps[:2]
    finally:
        aws.reset_clients()


def test_fixed_addresses_skip_ec2(cfg) -> None:
    c = cfg("discovery:\n  addresses: [127.0.0.21, 127.0.0.22]\n")
    assert healthy_endpoint(ident(), c, check=lambda x: x.ip == "127.0.0.22").chosen.ip == "127.0.0.22"


def test_no_control_plane_after_bounded_retries(cfg) -> None:
    c = cfg("discovery:\n  addresses: [127.0.0.21]\n  attempts: 3\n")
    rounds: list[float] = []
    with pytest.raises(NoControlPlaneError) as exc:
        healthy_endpoint(ident(), c, check=lambda x: False, sleep=rounds.append)
    assert len(rounds) == 2  # three rounds, two waits between them
    assert rounds[1] > rounds[0]  # backoff grows
    assert exc.value.exit_code == ExitCode.UNAVAILABLE == 69
    assert "no healthy control plane for cluster 'blue' after 3 rounds" in str(exc.value)
    assert "-@127.0.0.21" in str(exc.value)


@pytest.fixture
def ping_server(tmp_path: Path):
    from herd_sandbox.kube.pki import CertificateAuthority

    pair = CertificateAuthority().serving("127.0.0.31")
    servers = []

    def start(answer: bytes, status: int = 200) -> int:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(status if self.path == "/ping" else 404)
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *a: object) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.31", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        d = tmp_path
        (d / "c.pem").write_bytes(pair.cert_pem)
        (d / "k.pem").write_bytes(pair.key_pem)
        ctx.load_cert_chain(d / "c.pem", d / "k.pem")
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv.server_address[1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_probe_wants_pong_over_tls(ping_server) -> None:
    assert probe("127.0.0.31", ping_server(b"pong"), 2.0) is True
    assert probe("127.0.0.31", ping_server(b"nope"), 2.0) is False
    assert probe("127.0.0.31", ping_server(b"pong", status=503), 2.0) is False
    assert probe("127.0.0.32", 1, 0.5) is False  # nothing listening


def _stubbed_ec2():
    import boto3

    return boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def test_lookup_is_scoped_to_this_instance_vpc_with_a_stubbed_client(cfg) -> None:
    from botocore.stub import Stubber

    from herd_agent.discovery.control_plane import describe_control_planes

    me = Identity("i-0000000000000self", "us-east-1", "us-east-1a", "10.0.0.9", "m6i.large", None, "blue", "node",
                  vpc_id="vpc-0abc")
    ec2 = _stubbed_ec2()
    expected = {"Filters": [{"Name": "tag:herd:cluster", "Values": ["blue"]},
                            {"Name": "tag:herd:role", "Values": ["control-plane"]},
                            {"Name": "instance-state-name", "Values": ["running", "pending"]},
                            {"Name": "vpc-id", "Values": ["vpc-0abc"]}], "MaxResults": 1000}
    answer = {"Reservations": [{"Instances": [
        {"InstanceId": "i-1", "PrivateIpAddress": "10.0.0.1", "VpcId": "vpc-0abc", "State": {"Name": "running"},
         "Placement": {"AvailabilityZone": "us-east-1a"}},
        # Belt and braces: an answer from another VPC is dropped even if the filter were ignored.
        {"InstanceId": "i-2", "PrivateIpAddress": "10.9.0.1", "VpcId": "vpc-0other", "State": {"Name": "running"}},
    ]}]}
    with Stubber(ec2) as stub:
        stub.add_response("describe_instances", answer, expected)
        got = describe_control_planes(me, cfg(), ec2=ec2)
        stub.assert_no_pending_responses()
    assert got == [Candidate("10.0.0.1", "i-1", "us-east-1a")]


def test_current_endpoint_is_kept_without_an_aws_call(cfg) -> None:
    from botocore.stub import Stubber

    ec2 = _stubbed_ec2()
    with Stubber(ec2):  # any call would fail: nothing is queued
        got = healthy_endpoint(ident(), cfg(), current="127.0.0.40", ec2=ec2, check=lambda c: c.ip == "127.0.0.40")
    assert got.chosen.ip == "127.0.0.40"


@pytest.fixture
def k3s_like(tmp_path: Path):
    """Servers like k3s' supervisor (/ping, /cacerts) on 127.0.0.5x:<port>, each with a CA."""
    from herd_sandbox.k3s import ClusterCa, PingServer

    servers: list[PingServer] = []

    def start(ip: str, ca: ClusterCa | None = None) -> PingServer:
        d = tmp_path / ip
        d.mkdir()
        srv = PingServer(ip, 16443, d, ca=ca)
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.close()


def test_secure_token_pins_the_ca_and_refuses_a_rogue(cfg, k3s_like) -> None:
    from herd_agent.discovery.control_plane import CaMismatchError
    from herd_agent.k3s.tokens import ca_hash, parse

    real = k3s_like("127.0.0.51")
    rogue = k3s_like("127.0.0.50")  # sorts first: it is probed first
    good = parse(f"K10{ca_hash(real.ca_pem)}::node:secret")
    c = cfg("discovery:\n  addresses: [127.0.0.50, 127.0.0.51]\n  api_port: 16443\n  attempts: 2\n"
            "  backoff_max_s: 0.1\n")
    got = healthy_endpoint(ident(), c, token=lambda: good, require_secure=True, sleep=lambda s: None)
    assert got.chosen.ip == "127.0.0.51" and got.ca_pem == real.ca_pem
    # The /ping probe verifies TLS against the pinned CA: the rogue fails it, the real one passes.
    assert probe("127.0.0.51", 16443, 2.0, ca_pem=real.ca_pem) is True
    assert probe("127.0.0.50", 16443, 2.0, ca_pem=real.ca_pem) is False
    # Only the rogue answers: a distinct error and exit code, naming what was refused.
    only_rogue = cfg("discovery:\n  addresses: [127.0.0.50]\n  api_port: 16443\n  attempts: 2\n  backoff_max_s: 0.1\n")
    with pytest.raises(CaMismatchError) as exc:
        healthy_endpoint(ident(), only_rogue, token=lambda: good, require_secure=True, sleep=lambda s: None)
    assert exc.value.exit_code == ExitCode.CA_MISMATCH == 82
    assert "127.0.0.50" in str(exc.value) and "does not match the join token" in str(exc.value)
    assert rogue.ca_pem != real.ca_pem


def test_a_joiner_waits_for_the_secure_token(cfg, k3s_like) -> None:
    from herd_agent.k3s.tokens import ca_hash, parse

    real = k3s_like("127.0.0.52")
    reads = iter([None, parse("short-token"), parse(f"K10{ca_hash(real.ca_pem)}::server:pw")])
    c = cfg("discovery:\n  addresses: [127.0.0.52]\n  api_port: 16443\n  attempts: 3\n  backoff_max_s: 0.1\n")
    got = healthy_endpoint(ident(), c, token=lambda: next(reads), require_secure=True, sleep=lambda s: None)
    assert got.chosen.ip == "127.0.0.52" and got.ca_pem == real.ca_pem
    short = cfg("discovery:\n  addresses: [127.0.0.52]\n  api_port: 16443\n  attempts: 2\n  backoff_max_s: 0.1\n")
    with pytest.raises(NoControlPlaneError) as exc:
        healthy_endpoint(ident(), short, token=lambda: parse("short-token"), require_secure=True,
                         sleep=lambda s: None)
    assert exc.value.waiting_for_token and "never published" in str(exc.value)


def test_connect_liveness_keeps_a_listening_current_endpoint(cfg) -> None:
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.53", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    c = cfg(f"discovery:\n  addresses: [127.0.0.54]\n  api_port: {port}\n  attempts: 1\n")
    try:
        got = healthy_endpoint(ident(), c, current="127.0.0.53", liveness="connect")
        assert got.chosen.ip == "127.0.0.53"
        with pytest.raises(NoControlPlaneError):  # the full probe of a TCP-only listener fails
            healthy_endpoint(ident(), c, current="127.0.0.53")
    finally:
        srv.close()
    with pytest.raises(NoControlPlaneError):  # nothing listens now: look up, none healthy
        healthy_endpoint(ident(), c, current="127.0.0.53", liveness="connect")


@pytest.mark.parametrize(("mac", "vpc", "expected"), [
    ("0a:1b:2c:3d:4e:5f", "vpc-0abc123", "vpc-0abc123"),
    (None, None, ""),  # IMDS without the path: discovery is not scoped (tags only)
    ("0a:1b:2c:3d:4e:5f", None, ""),
    ("not a mac\n", "vpc-1", 65),
    ("0a:1b:2c:3d:4e:5f", "vpc-1\n127.0.0.1 evil", 65),
])
def test_vpc_id_from_imds_is_validated(mac, vpc, expected) -> None:
    from herd_agent.discovery.identity import _vpc_id
    from herd_agent.errors import HerdError

    class StrictImds:
        """Answers exactly the two paths discovery's scope reads; anything else fails."""

        def get(self, path: str, *, optional: bool = False) -> str | None:
            assert optional
            if path == "/latest/meta-data/mac":
                return mac
            assert mac and path == f"/latest/meta-data/network/interfaces/macs/{mac.strip().lower()}/vpc-id", path
            return vpc

    if expected == 65:
        with pytest.raises(HerdError) as exc:
            _vpc_id(StrictImds())  # type: ignore[arg-type]
        assert exc.value.exit_code == ExitCode.DATA
    else:
        assert _vpc_id(StrictImds()) == expected  # type: ignore[arg-type]
