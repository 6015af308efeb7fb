"""A worker's own Kubernetes credential: a ServiceAccount token read from SSM or Secrets Manager,
the API server verified against kube.ca_file, RBAC enforced by the emulator."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from herd_agent import aws
from herd_agent.config import load_config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import HerdError
from herd_agent.host.fsroot import HostRoot
from herd_agent.leave.sequence import make_kube_client
from herd_agent.redact import redact
from herd_sandbox.aws.region import Region
from herd_sandbox.kube.sandbox import KubeSandbox

RBAC = Path(__file__).resolve().parents[2] / "packaging" / "rbac" / "herd-agent.yaml"
WORKER = Identity("i-0worker00000001", "us-east-1", "us-east-1a", "127.0.0.9", "m6i.large", None, "c", "node")


@pytest.mark.parametrize("store", ["ssm", "secretsmanager"])
def test_service_account_token_from_aws(aws_region: Region, kube_sandbox: KubeSandbox, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, store: str) -> None:
    for doc in yaml.safe_load_all(RBAC.read_text()):
        kube_sandbox.create(doc)
    kube_sandbox.add_node(WORKER.instance_id)
    kube_sandbox.service_account_kubeconfig("kube-system", "herd-agent", rbac=True)
    token = kube_sandbox.identity("system:serviceaccount:kube-system:herd-agent").token
    if store == "ssm":
        aws_region.client("ssm").put_parameter(Name="/herd/c/agent-token", Value=token, Type="SecureString")
        key = "token_ssm_parameter: /herd/c/agent-token"
    else:
        aws_region.client("secretsmanager").create_secret(Name="herd-c-agent-token", SecretString=token)
        key = "token_secret_id: herd-c-agent-token"
    for k, v in aws_region.env().items():
        monkeypatch.setenv(k, v)
    aws.reset_clients()
    root = HostRoot(tmp_path)
    root.makedirs("/var/lib/rancher/k3s/agent")
    shutil.copy(kube_sandbox.ca_path, root.path("/var/lib/rancher/k3s/agent/server-ca.crt"))
    (tmp_path / "etc/herd-agent").mkdir(parents=True)
    (tmp_path / "etc/herd-agent/config.yaml").write_text(f"kube:\n  {key}\n  server: {kube_sandbox.url}\n")
    try:
        cfg = load_config(root, role="node")
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Node, Secret

        client = make_kube_client(root, cfg, WORKER)
        assert client.get(Node, WORKER.instance_id).metadata.name == WORKER.instance_id
        with pytest.raises(ApiError) as exc:  # RBAC is enforced: the role grants no secret reads
            client.get(Secret, "anything", namespace="kube-system")
        assert exc.value.status.code == 403
        assert token not in redact(f"token is {token}")  # registered as a secret the moment it was read
    finally:
        aws.reset_clients()


def test_a_worker_without_a_credential_is_told_what_to_set(tmp_path: Path) -> None:
    cfg = load_config(HostRoot(tmp_path))
    with pytest.raises(HerdError, match="kube.kubeconfig, kube.token_ssm_parameter or kube.token_secret_id"):
        make_kube_client(HostRoot(tmp_path), cfg, WORKER)
