"""IAM: one least-privilege policy per role (ami/iam/), linted with parliament, enforced by the
sandbox region on every call an instance signs, and each statement shown to be needed."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from herd_sandbox.aws import iam
from herd_sandbox.aws.region import Region
from herd_sandbox.kube.sandbox import KubeSandbox
from tests.clusters import SandboxCluster
from tests.ship.conftest import REPO

POLICIES = {"control-plane": REPO / "ami/iam/control-plane.json", "node": REPO / "ami/iam/worker.json"}
EXAMPLE = {"Region": "eu-west-1", "AccountId": "123456789012", "ClusterName": "prod"}


def agent_token_parameter(cluster: str) -> str:
    """The parameter a worker of this agent reads (token.agent_name where it exists, else token.name)."""
    return iam.agent_token_name(cluster)


def rendered(role: str, region: str, account: str, cluster: str) -> dict:
    values = {"AWS::Region": region, "AWS::AccountId": account, "ClusterName": cluster,
              "AgentToken": agent_token_parameter(cluster)}
    return json.loads(iam.render(POLICIES[role].read_text(), values))


# --- lint and the evaluator ------------------------------------------------------------------------
@pytest.mark.allow_subprocess
@pytest.mark.parametrize("role", sorted(POLICIES))
def test_parliament_clean(role: str) -> None:
    parliament = shutil.which("parliament") or str(Path(__import__("sys").executable).with_name("parliament"))
    if not Path(parliament).exists():
        pytest.skip("needs parliament (pip install -e '.[test]')")
    doc = json.dumps(rendered(role, "eu-west-1", "123456789012", "prod"))
    r = subprocess.run([parliament, "--string", doc], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr
    # and it does find problems: a statement that allows everything
    loose = json.loads(doc)
    loose["Statement"].append({"Effect": "Allow", "Action": "ssm:*", "Resource": "*"})
    r = subprocess.run([parliament, "--string", json.dumps(loose)], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() != ""


def test_policies_are_scoped() -> None:
    for role in POLICIES:
        for stmt in rendered(role, "eu-west-1", "123456789012", "prod")["Statement"]:
            actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
            assert not any(a.endswith("*") for a in actions), stmt
            if stmt["Resource"] == "*":  # only actions AWS does not scope by resource
                assert all(a.split(":")[1].startswith("Describe") for a in actions), stmt
    worker = json.dumps(rendered("node", "eu-west-1", "123456789012", "prod"))
    assert "parameter/herd/prod/*" not in worker and "secret:/herd/prod/*" not in worker and "Put" not in worker


def test_evaluator_rules() -> None:
    doc = rendered("node", "eu-west-1", "123456789012", "prod")
    token = f"arn:aws:ssm:eu-west-1:123456789012:parameter/{agent_token_parameter('prod')}"
    assert iam.evaluate([doc], iam.AuthzRequest("ssm:GetParameter", (token,))).allowed
    assert iam.evaluate([doc], iam.AuthzRequest("SSM:getparameter", (token,))).allowed  # actions: any case
    other = "arn:aws:ssm:eu-west-1:123456789012:parameter/herd/prod/server-token"
    assert not iam.evaluate([doc], iam.AuthzRequest("ssm:GetParameter", (other,))).allowed
    group = "arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:u-1:autoScalingGroupName/prod-node"
    ok = {"autoscaling:ResourceTag/herd:cluster": "prod", "autoscaling:ResourceTag/herd:role": "node"}
    complete = "autoscaling:CompleteLifecycleAction"
    assert iam.evaluate([doc], iam.AuthzRequest(complete, (group,), ok)).allowed
    assert not iam.evaluate([doc], iam.AuthzRequest(complete, (group,), {**ok, "autoscaling:ResourceTag/herd:role":
                                                                         "control-plane"})).allowed
    assert not iam.evaluate([doc], iam.AuthzRequest(complete, (group,), {})).allowed  # missing key: no match
    deny = {"Statement": [{"Effect": "Deny", "Action": "ssm:*", "Resource": "*"}]}
    assert not iam.evaluate([doc, deny], iam.AuthzRequest("ssm:GetParameter", (token,))).allowed
    with pytest.raises(iam.PolicyError):
        iam.evaluate([{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*",
                                      "Condition": {"NumericLessThan": {"aws:x": "1"}}}]}],
                     iam.AuthzRequest("ssm:GetParameter"))
    req = iam.request_of("ssm", "GetParametersByPath", {"Path": "/herd/prod/founder"}, region="eu-west-1",
                         account="1", group=lambda n: None, secret_arn=lambda n: None)
    assert req.resources == ("arn:aws:ssm:eu-west-1:1:parameter/herd/prod/founder",)


# --- enforcement in the sandbox ---------------------------------------------------------------------
SCENARIO_CONFIG = ("leave:\n  heartbeat_interval_s: 0.3\n  reserve_s: 5\n  stop_k3s: stop\n")
SECRETS_CONFIG = "token:\n  source: secretsmanager\n"


def join_and_leave(region: Region, kube: KubeSandbox, workdir: Path, toolchain, *, config: str = "",
                   drop: tuple[str, str] | None = None) -> dict[str, object]:
    """A control plane and a worker join with their role's policy attached to their group, then the
    worker leaves on a terminate; returns what happened. ``drop``: (role, Sid) removed from its policy."""
    cluster = SandboxCluster(region, kube, workdir, toolchain, SCENARIO_CONFIG + config)
    try:
        docs = {}
        for role in ("control-plane", "node"):
            doc = rendered(role, region.region_name, region.account_id, cluster.name)
            if drop and drop[0] == role:
                doc = copy.deepcopy(doc)
                doc["Statement"] = [s for s in doc["Statement"] if s["Sid"] != drop[1]]
            docs[role] = doc
            region.attach_policy(f"{cluster.name}-{role}", doc, group=True)
        since = __import__("time").time()
        out: dict[str, object] = {"ok": False}
        ids: list[str] = []

        def denied() -> list[object]:
            return [c for c in region.calls(since=since) if c.caller in ids and
                    c.outcome in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")]

        cp = cluster.group("control-plane", 1)[0]
        ids.append(cp)
        r = cluster.instances[cp].agent("join")
        out["cp_join"], out["cp_err"] = r.returncode, r.stderr[-1500:]
        if r.returncode != 0:
            return {**out, "denied": denied()}
        worker = cluster.group("node", 1, terminate_hook=True)[0]
        ids.append(worker)
        r = cluster.instances[worker].agent("join")
        out["worker_join"], out["worker_err"] = r.returncode, r.stderr[-1500:]
        if r.returncode != 0:
            return {**out, "denied": denied()}
        region.terminate_instance(worker, decrement=True)
        r = cluster.instances[worker].agent("leave", "--reason", "asg-terminate")
        out["worker_leave"], out["leave_err"] = r.returncode, r.stderr[-1500:]
        done = region.calls(action="CompleteLifecycleAction", caller=worker, outcome="ok")
        checked = {c for c, _, _ in region.iam_decisions}
        out.update(denied=denied(), completed=len(done), checked={cp, worker} <= checked)
        out["ok"] = r.returncode == 0 and len(done) == 2 and not out["denied"]
        return out
    finally:
        cluster.close()


@pytest.fixture
def kube_iam():
    with KubeSandbox(time_factor=0.01) as kube:
        yield kube


@pytest.mark.allow_subprocess
@pytest.mark.parametrize("config", ["", SECRETS_CONFIG], ids=["ssm-token", "secretsmanager-token"])
def test_join_and_leave_under_enforced_policies(region: Region, kube_iam: KubeSandbox, tmp_path: Path, toolchain,
                                                config: str) -> None:
    out = join_and_leave(region, kube_iam, tmp_path, toolchain, config=config)
    assert out["ok"] and out["checked"], {k: v for k, v in out.items() if k not in ("cp_err", "worker_err")}


STATEMENTS = [(role, s["Sid"]) for role in sorted(POLICIES)
              for s in json.loads(POLICIES[role].read_text())["Statement"]]


@pytest.mark.allow_subprocess
@pytest.mark.parametrize("role,sid", STATEMENTS, ids=[f"{r}-{s}" for r, s in STATEMENTS])
def test_every_statement_is_needed(region: Region, kube_iam: KubeSandbox, tmp_path: Path, toolchain,
                                   role: str, sid: str) -> None:
    config = SECRETS_CONFIG if sid in ("ClusterSecrets", "AgentTokenSecretOnly") else ""
    out = join_and_leave(region, kube_iam, tmp_path, toolchain, config=config, drop=(role, sid))
    assert not out["ok"], f"the scenario passed without {role} {sid}: the statement is not needed"
    # ... and it failed because IAM refused a call of that role's instance
    assert out["denied"], out


def test_herd_groups_are_enforced_by_default(region: Region) -> None:
    """Every group created with the herd:cluster/herd:role tags (every scenario's) gets its role's
    shipped policy: a worker's credentials cannot write parameters or read the cluster's others."""
    import boto3
    from botocore.exceptions import ClientError

    name = f"enf{__import__('os').getpid() % 1000}"
    region.create_launch_template(f"{name}-lt")
    region.create_group(f"{name}-node", f"{name}-lt", desired=1, tags={"herd:cluster": name, "herd:role": "node"})
    [iid] = region.group_instances(f"{name}-node")
    env = region.env(iid)
    ssm = boto3.client("ssm", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=region.region_name,
                       aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                       aws_session_token=env["AWS_SESSION_TOKEN"])
    for call in (lambda: ssm.put_parameter(Name=f"/herd/{name}/x", Value="v", Type="String"),
                 lambda: ssm.get_parameter(Name=f"/herd/{name}/server-token")):
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["Error"]["Code"] == "AccessDeniedException"
    ec2 = boto3.client("ec2", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=region.region_name,
                       aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                       aws_session_token=env["AWS_SESSION_TOKEN"])
    ec2.describe_instances(InstanceIds=[iid])  # allowed by the worker policy
