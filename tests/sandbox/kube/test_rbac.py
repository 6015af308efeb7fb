"""RBAC enforcement per identity: Roles, ClusterRoles and bindings evaluated as Kubernetes does."""

from __future__ import annotations

from typing import Any

import pytest

from herd_sandbox.kube.sandbox import KubeSandbox

from .conftest import Api, Kubectl, daemonset, deployment, running_pods

RBAC = "rbac.authorization.k8s.io/v1"

# What a drain-and-leave agent needs, and nothing more.
AGENT_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
    {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"],
     "resourceNames": ["herd-leader"]},
]


def grant(kube: KubeSandbox, name: str, rules: list[dict[str, Any]], subject: dict[str, Any]) -> None:
    kube.seed({"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules},
              {"apiVersion": RBAC, "kind": "ClusterRoleBinding", "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": [subject]})


@pytest.fixture
def agent(kube_sandbox: KubeSandbox) -> Api:
    kube_sandbox.service_account_kubeconfig("kube-system", "herd-agent")
    grant(kube_sandbox, "herd-agent", AGENT_RULES,
          {"kind": "ServiceAccount", "name": "herd-agent", "namespace": "kube-system"})
    return Api(kube_sandbox, kube_sandbox.identity("system:serviceaccount:kube-system:herd-agent").token)


def test_allowed_verbs_pass_and_others_are_403_with_the_real_message(kube_sandbox: KubeSandbox, agent: Api) -> None:
    kube_sandbox.add_node("node-a")
    assert agent.get("/api/v1/nodes").status_code == 200
    assert agent.patch("/api/v1/nodes/node-a", {"spec": {"unschedulable": True}}).status_code == 200
    assert agent.get("/api/v1/pods", params={"fieldSelector": "spec.nodeName=node-a"}).status_code == 200
    assert agent.get("/api").status_code == 200  # discovery is open to every authenticated user

    denied = agent.delete("/api/v1/namespaces/default/pods/x")
    assert denied.status_code == 403
    body = denied.json()
    assert body["reason"] == "Forbidden"
    assert body["message"] == ('pods "x" is forbidden: User "system:serviceaccount:kube-system:herd-agent" cannot '
                               'delete resource "pods" in API group "" in the namespace "default"')
    assert body["details"] == {"name": "x", "group": "", "kind": "pods"}
    assert agent.get("/api/v1/namespaces/kube-system/secrets").status_code == 403
    assert agent.post("/api/v1/namespaces/default/pods/x/status", {}).status_code == 403  # authz comes first


def test_resource_names_limit_the_rule(kube_sandbox: KubeSandbox, agent: Api) -> None:
    for name in ("herd-leader", "other"):
        kube_sandbox.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                             "metadata": {"name": name, "namespace": "kube-system"}, "spec": {}})
    base = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
    assert agent.get(f"{base}/herd-leader").status_code == 200
    other = agent.get(f"{base}/other")
    assert other.status_code == 403
    assert 'cannot get resource "leases" in API group "coordination.k8s.io"' in other.json()["message"]
    assert agent.get(base).status_code == 403  # list has no name: resourceNames never match it


def test_eviction_needs_the_subresource_rule(kube_sandbox: KubeSandbox) -> None:
    path = kube_sandbox.service_account_kubeconfig("default", "weak")
    assert path.exists()
    grant(kube_sandbox, "weak", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}],
          {"kind": "ServiceAccount", "name": "weak", "namespace": "default"})
    weak = Api(kube_sandbox, kube_sandbox.identity("system:serviceaccount:default:weak").token)
    denied = weak.post("/api/v1/namespaces/default/pods/p/eviction",
                       {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p"}})
    assert denied.status_code == 403
    assert 'cannot create resource "pods/eviction"' in denied.json()["message"]

    grant(kube_sandbox, "weak-evict", [{"apiGroups": [""], "resources": ["*/eviction"], "verbs": ["create"]}],
          {"kind": "Group", "name": "system:serviceaccounts:default"})
    allowed = weak.post("/api/v1/namespaces/default/pods/p/eviction",
                        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p"}})
    assert allowed.status_code == 404  # authorized; the pod just does not exist


def test_role_binding_grants_only_in_its_namespace(kube_sandbox: KubeSandbox) -> None:
    kube_sandbox.add_identity("dev", ["developers"], rbac=True)
    kube_sandbox.seed(
        {"apiVersion": RBAC, "kind": "Role", "metadata": {"name": "cm-reader", "namespace": "kube-public"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]},
        {"apiVersion": RBAC, "kind": "RoleBinding", "metadata": {"name": "dev", "namespace": "kube-public"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
         "subjects": [{"kind": "User", "name": "dev"}]})
    dev = Api(kube_sandbox, kube_sandbox.identity("dev").token)
    assert dev.get("/api/v1/namespaces/kube-public/configmaps").status_code == 200
    assert dev.get("/api/v1/namespaces/default/configmaps").status_code == 403
    assert dev.get("/api/v1/configmaps").status_code == 403  # all namespaces needs a cluster-wide grant


def test_identities_without_enforcement_are_unrestricted(kube_sandbox: KubeSandbox) -> None:
    kube_sandbox.add_identity("tester")
    assert Api(kube_sandbox, kube_sandbox.identity("tester").token).get("/api/v1/secrets").status_code == 200


@pytest.mark.allow_subprocess
def test_kubectl_drain_works_with_exactly_the_agent_rules(kube_sandbox: KubeSandbox, toolchain: Any) -> None:
    kube_sandbox.add_node("node-a")
    kube_sandbox.add_node("node-b")
    kube_sandbox.seed(daemonset("agent"), deployment("web", 2))
    kube_sandbox.wait_for(lambda: len(running_pods(kube_sandbox)) == 4)
    kubeconfig = kube_sandbox.service_account_kubeconfig("kube-system", "herd-agent")
    grant(kube_sandbox, "herd-agent", AGENT_RULES,
          {"kind": "ServiceAccount", "name": "herd-agent", "namespace": "kube-system"})
    kubectl = Kubectl(toolchain.kubectl, kubeconfig)

    kubectl.run("drain", "node-a", "--ignore-daemonsets", "--timeout=20s")

    kube_sandbox.wait_for(lambda: all(p["spec"]["nodeName"] == "node-b" for p in running_pods(
        kube_sandbox, lambda p: p["metadata"]["name"].startswith("web-"))))
    kubectl.run("delete", "node", "node-a")
    assert kube_sandbox.find("Node", "node-a") is None

    # minimal: without the DaemonSet rule kubectl cannot tell DaemonSet pods apart and fails
    kube_sandbox.modify("ClusterRole", "herd-agent", lambda r: {**r, "rules": AGENT_RULES[:3]})
    failed = kubectl.run("drain", "node-b", "--ignore-daemonsets", "--timeout=5s", check=False)
    assert failed.returncode != 0
    assert 'cannot get resource "daemonsets" in API group "apps"' in failed.stderr


@pytest.mark.allow_subprocess
@pytest.mark.parametrize("version", ["1.32", "1.37"])
def test_kubectl_auth_can_i_answers_from_rbac(kube_sandbox: KubeSandbox, toolchain: Any, version: str) -> None:
    kubeconfig = kube_sandbox.service_account_kubeconfig("kube-system", "herd-agent")
    grant(kube_sandbox, "herd-agent", AGENT_RULES,
          {"kind": "ServiceAccount", "name": "herd-agent", "namespace": "kube-system"})
    kubectl = Kubectl(toolchain.kubectl if version == "1.32" else toolchain.kubectl_new, kubeconfig)

    def can_i(*args: str) -> str:
        return kubectl.run("auth", "can-i", *args, check=False).stdout.strip()

    assert can_i("create", "pods", "--subresource=eviction", "-n", "default") == "yes"
    assert can_i("patch", "nodes") == "yes"
    assert can_i("delete", "pods", "-n", "default") == "no"
    assert can_i("update", "leases/herd-leader", "-n", "kube-system") == "yes"
    assert can_i("update", "leases/other", "-n", "kube-system") == "no"
