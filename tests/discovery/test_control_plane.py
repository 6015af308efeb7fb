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
