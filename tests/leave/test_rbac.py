"""The shipped RBAC (packaging/rbac/herd-agent.yaml) is enough for the leave, and minimal: the
emulated API server enforces it for the agent's ServiceAccount."""

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
from herd_agent.leave.sequence import LeaveSequence
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


def leave_steps(kube: KubeSandbox, tmp_path: Path, deadline_s: float = 8) -> list[str]:
    """Run cordon, drain (with a spent budget, so pods get deleted) and the Node deletion as the
    agent's ServiceAccount; return the problems (403s) met."""
    client = Client(config=KubeConfig.from_file(str(kube.service_account_kubeconfig("kube-system", "herd-agent"))))
    (tmp_path / "etc/herd-agent").mkdir(parents=True, exist_ok=True)
    cfg = load_config(HostRoot(tmp_path))
    seq = LeaveSequence(HostRoot(tmp_path), cfg, kube_factory=lambda _i: client)
    seq.ident = Identity(NODE, "us-east-1", "us-east-1a", "127.0.0.9", "m6i.large", None, "c", "node")
    import time

    journal = jr.LeaveJournal(reason="manual", deadline=time.time() + deadline_s)  # drain budget: minus 5 s reserve
    problems: list[str] = []
    for name, step in (("cordon", seq._cordon), ("drain", lambda: seq._drain(journal)),
                       ("delete-node", seq._delete_node)):
        try:
            step()
        except ApiError as exc:
            problems.append(f"{name}: {exc.status.code} {exc.status.message}")
    problems += [f"drain: {p}: {o['detail']}" for p, o in journal.pods.items() if "403" in o["detail"]]
    return problems


def test_the_shipped_role_is_enough(kube_sandbox: KubeSandbox, tmp_path: Path) -> None:
    install(kube_sandbox)
    world(kube_sandbox)
    assert leave_steps(kube_sandbox, tmp_path, deadline_s=60) == []
    assert kube_sandbox.find("Node", NODE) is None
    assert kube_sandbox.find("Secret", f"{NODE}.node-password.k3s", namespace="kube-system") is None
    assert any(e.get("reason") == "HerdDrained" for e in kube_sandbox.list("Event"))


@pytest.mark.parametrize("drop", rules_to_drop(), ids=lambda d: f"{d[0]}-{d[1]}-{d[2]}")
def test_every_permission_is_needed(kube_sandbox_factory: Any, tmp_path: Path, drop: tuple[str, int, str]) -> None:
    kube = kube_sandbox_factory()
    install(kube, drop)
    world(kube)
    problems = leave_steps(kube, tmp_path)
    events_made = any(e.get("reason") == "HerdDrained" for e in kube.list("Event"))
    secret_left = kube.find("Secret", f"{NODE}.node-password.k3s", namespace="kube-system") is not None
    assert problems or not events_made or secret_left, f"nothing needed {drop}"
