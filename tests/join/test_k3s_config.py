"""The k3s config drop-in: rendered per role and mode; user extras validated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from herd_agent.config import load_config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import ConfigError
from herd_agent.host.fsroot import HostRoot
from herd_agent.k3s import config as k3s_config


def cfg(tmp_path: Path, text: str = ""):
    if text:
        (tmp_path / "etc/herd-agent").mkdir(parents=True, exist_ok=True)
        (tmp_path / "etc/herd-agent/config.yaml").write_text(text)
    return load_config(HostRoot(tmp_path))


CP = Identity("i-0aaa", "us-east-1", "us-east-1b", "127.0.1.5", "m6i.large", "blue-cp", "blue", "control-plane")
NODE = Identity("i-0bbb", "us-east-1", "us-east-1c", "127.0.1.6", "c7g.xlarge", "blue-w", "blue", "node")


def test_embedded_founder(tmp_path: Path) -> None:
    out = k3s_config.render(cfg(tmp_path, "etcd:\n  mode: embedded\n"), CP, founder=True)
    assert out["cluster-init"] is True
    assert "server" not in out
    assert out["tls-san"] == ["control-plane.blue.internal"]
    assert out["node-name"] == "i-0aaa" and out["node-ip"] == "127.0.1.5"
    assert out["token-file"] == "/var/lib/herd-agent/token" and "token" not in out
    assert "topology.kubernetes.io/zone=us-east-1b" in out["node-label"]
    assert "node.kubernetes.io/instance-type=m6i.large" in out["node-label"]
    assert out["kubelet-arg"] == ["shutdown-grace-period=240s", "shutdown-grace-period-critical-pods=60s"]


def test_embedded_joiner_and_worker(tmp_path: Path) -> None:
    c = cfg(tmp_path, "etcd:\n  mode: embedded\n")
    joiner = k3s_config.render(c, CP, founder=False)
    assert joiner["server"] == "https://control-plane.blue.internal:6443" and "cluster-init" not in joiner
    worker = k3s_config.render(c, NODE, founder=False)
    assert worker["server"] == "https://control-plane.blue.internal:6443"
    assert "tls-san" not in worker and "cluster-init" not in worker and "datastore-endpoint" not in worker


def test_external_etcd(tmp_path: Path) -> None:
    c = cfg(tmp_path, "etcd:\n  mode: external\n  insecure_plain_http: true\n")
    out = k3s_config.render(c, CP, founder=False, datastore_endpoint="http://127.0.1.5:2379")
    assert out["datastore-endpoint"] == "http://127.0.1.5:2379"
    assert "server" not in out and "cluster-init" not in out


def test_extras_are_merged_and_validated(tmp_path: Path) -> None:
    c = cfg(tmp_path, "k3s:\n  extra:\n    disable: [traefik]\n    node-label: [team=data]\n"
                      "    kubelet-arg+: max-pods=200\n")
    out = k3s_config.render(c, CP, founder=False)
    assert out["disable"] == ["traefik"]
    assert out["node-label"][-1] == "team=data" and len(out["node-label"]) == 4
    assert out["kubelet-arg"][-1] == "max-pods=200"
    bad = cfg(tmp_path, "k3s:\n  extra:\n    token: abc\n    disabel: [x]\n    cluster-cidr: 10.42.0.0/16\n")
    with pytest.raises(ConfigError) as exc:
        k3s_config.render(bad, NODE, founder=False)
    assert exc.value.problems == [
        "k3s.extra.token: a credential, refused in the config: herd-agent manages the join tokens itself "
        "(token.server_name, token.agent_name) (got ***)",
        "k3s.extra.disabel: not a k3s option; did you mean disable? (got ['x'])",
        "k3s.extra.cluster-cidr: a k3s server option, and this instance is a worker node (got '10.42.0.0/16')",
    ]


def test_write_is_0600_and_idempotent(tmp_path: Path) -> None:
    root = HostRoot(tmp_path)
    conf = k3s_config.render(cfg(tmp_path), NODE, founder=False)
    assert k3s_config.write(root, conf) is True
    assert k3s_config.write(root, conf) is False
    p = tmp_path / "etc/rancher/k3s/config.yaml.d/50-herd-agent.yaml"
    assert p.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(p.read_text()) == conf


@pytest.mark.parametrize("key", ["agent-token", "vpn-auth", "token", "etcd-s3-secret-key", "vpn-auht", "agent-tokn"])
def test_token_like_extras_are_refused_and_never_echoed(tmp_path: Path, key: str) -> None:
    secret = "K10deadbeef::node:s3cr3t-value-xyz"
    c = cfg(tmp_path, f"k3s:\n  extra:\n    {key}: {secret}\n")
    with pytest.raises(ConfigError) as exc:
        k3s_config.render(c, CP, founder=False)
    text = "\n".join(exc.value.problems)
    assert f"k3s.extra.{key}" in text and "(got ***)" in text
    assert "s3cr3t" not in text


def test_servers_get_the_agent_token_file_workers_do_not(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    assert k3s_config.render(c, CP, founder=True)["agent-token-file"] == "/var/lib/herd-agent/agent-token"
    assert "agent-token-file" not in k3s_config.render(c, NODE, founder=False)
