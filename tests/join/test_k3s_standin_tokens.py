"""The sandbox's k3s stand-in checks join tokens as k3s does (docs.k3s.io/cli/token), so the
agent's token handling is tested against k3s' rules, not against itself."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from herd_agent.host.fsroot import HostRoot
from herd_sandbox.k3s import Api, PingServer, parse_token, run, secure_token
from herd_sandbox.kube.sandbox import KubeSandbox


def host(tmp_path: Path, conf: str, token: str) -> HostRoot:
    root = HostRoot(tmp_path / "root")
    root.write("/etc/rancher/k3s/config.yaml", conf, mode=0o600)
    root.write("/var/lib/herd-agent/token", token + "\n", mode=0o600)
    root.write("/etc/hosts", "127.0.0.1 localhost\n", mode=0o644)
    return root


def test_token_formats() -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    tok = secure_token(ca, "node", "pw")
    assert tok == f"K10{hashlib.sha256(ca).hexdigest()}::node:pw"
    assert parse_token(tok) == (hashlib.sha256(ca).hexdigest(), "node", "pw")
    assert parse_token("just-a-password") == (None, None, "just-a-password")


def test_an_agent_token_cannot_join_a_server(kube_sandbox: KubeSandbox, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = host(tmp_path, "token-file: /var/lib/herd-agent/token\nnode-ip: 127.0.0.71\n"
                          "server: https://127.0.0.72:6443\n", "K10" + "0" * 64 + "::node:pw")
    assert run("server", root, Api(str(kube_sandbox.admin_kubeconfig)), wait_s=5) == 1
    assert "an agent token (node:) cannot join a server" in capsys.readouterr().out


def test_a_secure_token_refuses_a_server_with_another_ca(kube_sandbox: KubeSandbox, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ours").mkdir()
    (tmp_path / "rogue").mkdir()
    ours = PingServer("127.0.0.73", 6443, tmp_path / "ours")
    ours.close()
    rogue = PingServer("127.0.0.74", 6443, tmp_path / "rogue")
    try:
        root = host(tmp_path, "token-file: /var/lib/herd-agent/token\nnode-ip: 127.0.0.75\n"
                              "server: https://control-plane.x.internal:6443\n",
                    secure_token(ours.ca_pem, "node", "pw"))
        root.write("/etc/hosts", "127.0.0.74 control-plane.x.internal\n", mode=0o644)
        stop = threading.Event()
        assert run("agent", root, Api(str(kube_sandbox.admin_kubeconfig)), wait_s=10, stop=stop) == 1
    finally:
        rogue.close()
    out = capsys.readouterr().out
    assert "token CA hash does not match the Cluster CA certificate hash" in out
    assert not root.exists("/var/lib/rancher/k3s/agent/kubelet.kubeconfig")
