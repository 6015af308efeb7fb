"""The emulated API server's request log (what the leader scenario reads to tell which epoch wrote)."""

from __future__ import annotations

from typing import Any

from .conftest import lease_client


def test_writes_are_logged_with_user_status_and_context_reads_are_not(kube_sandbox: Any) -> None:
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import ConfigMap

    kube_sandbox.server.log_context = lambda: {"holder": "cp1-1", "epoch": 3}
    kubeconfig = kube_sandbox.add_identity("leader-cp1", ["system:masters"])
    client = lease_client(kubeconfig)
    client.create(ConfigMap(metadata=ObjectMeta(name="a", namespace="default"), data={"k": "v"}))
    client.get(ConfigMap, "a", namespace="default")
    try:
        client.create(ConfigMap(metadata=ObjectMeta(name="a", namespace="default")))
    except Exception:  # 409 AlreadyExists: logged with its status
        pass
    log = [e for e in kube_sandbox.server.request_log if e["user"] == "leader-cp1"]
    assert [(e["method"], e["path"], e["code"], e["holder"], e["epoch"]) for e in log] == [
        ("POST", "/api/v1/namespaces/default/configmaps", 201, "cp1-1", 3),
        ("POST", "/api/v1/namespaces/default/configmaps", 409, "cp1-1", 3)]
