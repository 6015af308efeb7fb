"""The shipped RBAC (packaging/rbac/herd-agent.yaml) is enough for the leave and for ``plan leave``,
and minimal: the emulated API server enforces it for the agent's ServiceAccount. It grants no
Secret rights: k3s' node controller drops the node-password Secret when the Node goes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, Client, KubeConfig

from herd_agent.config import load_config
from herd_agent.discovery.identity import Identity
from herd_agent.host.fsroot import HostRoot
from herd_agent.leave import journal as jr
from herd_agent.leave.plan import plan_text
from herd_agent.leave.sequence import LeaveSequence
from herd_agent.leave.steps import Cordon, DeleteNode, Drain
from herd_sandbox.kube.sandbox import KubeSandbox

RBAC = Path(__file__).resolve().parents[2] / "packaging" / "rbac" / "herd-agent.yaml"
DOCS = list(yaml.safe_load_all(RBAC.read_text()))
NODE = "i-0leaving0000000"


def rules_to_drop() -> list[tuple[str, int, str]]:
    """(kind/name, rule index, verb) for every single permission the files grant."""
    out = []
    for doc in DOCS:
        if doc["kind"] in ("ClusterRole", "Role"):
            for i, rule in enumerate(doc["rules"]):
                for verb in rule["verbs"]:
                    out.append((f"{doc['kind']}/{doc['metadata']['name']}", i, verb))
    return out


def install(kube: KubeSandbox, drop: tuple[str, int, str] | None = None) -> None:
    for doc in DOCS:
        doc = copy.deepcopy(doc)
        if drop and f"{doc['kind']}/{doc['metadata']['name']}" == drop[0]:
            doc["rules"][drop[1]]["verbs"].remove(drop[2])
        kube.create(doc)


def world(kube: KubeSandbox) -> None:
    kube.add_node(NODE)
    kube.seed({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "w", "image": "w"}]}}}},
              {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "done", "namespace": "default"},
               "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "c"}], "restartPolicy": "Never"}})
    kube.wait_for(lambda: len([p for p in kube.list("Pod") if p["spec"].get("nodeName") == NODE]) == 3)
    kube.modify("Pod", "done", lambda p: p["status"].update(phase="Succeeded"), namespace="default", status=True)
    kube.add_node("other")
    kube.seed({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": f"{NODE}.node-password.k3s", "namespace": "kube-system"}, "data": {}})


def sa_client(kube: KubeSandbox) -> Client:
    return Client(config=KubeConfig.from_file(str(kube.service_account_kubeconfig("kube-system", "herd-agent"))))


def leave_steps(kube: KubeSandbox, tmp_path: Path, deadline_s: float = 8) -> list[str]:
    """Run ``plan leave``, then cordon, drain (with a spent budget, so pods get deleted) and the Node
    deletion as the agent's ServiceAccount; return the problems (403s) met."""
    import time

    client = sa_client(kube)
    (tmp_path / "etc/herd-agent").mkdir(parents=True, exist_ok=True)
    cfg = load_config(HostRoot(tmp_path))
    ident = Identity(NODE, "us-east-1", "us-east-1a", "127.0.0.9", "m6i.large", None, "c", "node")
    journal = jr.LeaveJournal(reason="manual", deadline=time.time() + deadline_s)  # drain budget: minus 5 s reserve
    ctx = LeaveSequence(HostRoot(tmp_path), cfg, kube_factory=lambda _i: client).context(ident, journal)
    problems: list[str] = []
    try:
        plan_text(client, NODE, cfg, control_plane=False)
    except ApiError as exc:
        problems.append(f"plan: {exc.status.code} {exc.status.message}")
    for step in (Cordon(), Drain(), DeleteNode()):
        try:
            step.run(ctx)
        except ApiError as exc:
            problems.append(f"{step.name}: {exc.status.code} {exc.status.message}")
    problems += [f"drain: {p}: {o['detail']}" for p, o in journal.pods.items() if "403" in o["detail"]]
    return problems


def test_the_shipped_role_is_enough(kube_sandbox: KubeSandbox, tmp_path: Path) -> None:
    install(kube_sandbox)
    world(kube_sandbox)
    assert leave_steps(kube_sandbox, tmp_path, deadline_s=60) == []
    assert kube_sandbox.find("Node", NODE) is None
    # k3s' node controller (emulated) drops the node-password Secret with the Node.
    kube_sandbox.wait_for(lambda: kube_sandbox.find("Secret", f"{NODE}.node-password.k3s",
                                                    namespace="kube-system") is None)
    assert any(e.get("reason") in ("HerdDrained", "HerdDrainIncomplete") for e in kube_sandbox.list("Event"))


def test_the_shipped_role_cannot_delete_or_read_secrets(kube_sandbox: KubeSandbox) -> None:
    """Deleting the Node drops k3s' node-password Secret: the agent needs no Secret rights, and a
    worker's credential cannot delete kube-system Secrets (k3s-serving, another node's password)."""
    from lightkube.resources.core_v1 import Secret

    install(kube_sandbox)
    world(kube_sandbox)
    kube_sandbox.seed({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                       "metadata": {"name": "k3s-serving", "namespace": "kube-system"}, "data": {}})
    client = sa_client(kube_sandbox)
    for name in ("k3s-serving", f"{NODE}.node-password.k3s"):
        with pytest.raises(ApiError) as exc:
            client.delete(Secret, name, namespace="kube-system")
        assert exc.value.status.code == 403, name
        with pytest.raises(ApiError) as exc:
            client.get(Secret, name, namespace="kube-system")
        assert exc.value.status.code == 403, name
    assert kube_sandbox.find("Secret", "k3s-serving", namespace="kube-system") is not None


@pytest.mark.parametrize("drop", rules_to_drop(), ids=lambda d: f"{d[0]}-{d[1]}-{d[2]}")
def test_every_permission_is_needed(kube_sandbox_factory: Any, tmp_path: Path, drop: tuple[str, int, str]) -> None:
    kube = kube_sandbox_factory()
    install(kube, drop)
    world(kube)
    problems = leave_steps(kube, tmp_path)
    events_made = any(e.get("reason") in ("HerdDrained", "HerdDrainIncomplete") for e in kube.list("Event"))
    assert problems or not events_made, f"nothing needed {drop}"
