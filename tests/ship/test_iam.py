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
EXAMPLE_KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def agent_token_parameter(cluster: str) -> str:
    """The parameter a worker of this agent reads (token.agent_name where it exists, else token.name)."""
    return iam.agent_token_name(cluster)


def rendered(role: str, region: str, account: str, cluster: str, kms_key_arn: str = EXAMPLE_KEY) -> dict:
    doc = iam.shipped_policy(role, region=region, account=account, cluster=cluster, kms_key_arn=kms_key_arn)
    assert doc is not None
    return doc


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


def test_kms_through_the_services() -> None:
    """The KMS operation SSM / Secrets Manager make for the caller, and the roles' statements on it."""
    cp, worker = (rendered(r, "eu-west-1", "123456789012", "prod") for r in ("control-plane", "node"))
    keys = {EXAMPLE_KEY: (EXAMPLE_KEY, False), "alias/herd/prod": (EXAMPLE_KEY, False),
            "alias/aws/ssm": ("arn:aws:kms:eu-west-1:123456789012:key/managed", True)}

    def kms(service: str, action: str, params: dict, stored: list | None = None) -> iam.AuthzRequest | None:
        return iam.kms_request_of(service, action, params, region="eu-west-1", account="123456789012",
                                  stored_keys=lambda: stored or [], key_arn=keys.get)

    put = kms("ssm", "PutParameter", {"Name": "/herd/prod/token", "Type": "SecureString", "KeyId": "alias/herd/prod"})
    assert put is not None and put.action == "kms:Encrypt" and put.resources == (EXAMPLE_KEY,)
    assert put.context["kms:ViaService"] == "ssm.eu-west-1.amazonaws.com"
    assert iam.evaluate([cp], put).allowed and not iam.evaluate([worker], put).allowed
    # the AWS-managed key (no KeyId) needs no identity permission; a plain String no KMS at all
    assert kms("ssm", "PutParameter", {"Name": "/x", "Type": "SecureString"}) is None
    assert kms("ssm", "PutParameter", {"Name": "/x", "Type": "String", "KeyId": EXAMPLE_KEY}) is None
    get = kms("ssm", "GetParameter", {"Name": "/x", "WithDecryption": True}, [EXAMPLE_KEY])
    assert get is not None and get.action == "kms:Decrypt" and iam.evaluate([worker], get).allowed
    assert kms("ssm", "GetParameter", {"Name": "/x"}, [EXAMPLE_KEY]) is None  # no decryption asked
    secret = kms("secretsmanager", "CreateSecret", {"Name": "/herd/prod/etcd-ca", "SecretString": "{}",
                                                    "KmsKeyId": EXAMPLE_KEY})
    assert secret is not None and secret.action == "kms:GenerateDataKey" and iam.evaluate([cp], secret).allowed
    assert secret.context["kms:ViaService"] == "secretsmanager.eu-west-1.amazonaws.com"
    assert kms("secretsmanager", "PutSecretValue", {"SecretId": "s"}, [EXAMPLE_KEY]).action == "kms:GenerateDataKey"
    # kms:ViaService scopes it: the same key used directly (no service in between) is refused
    direct = iam.AuthzRequest("kms:Decrypt", (EXAMPLE_KEY,), {"kms:CallerAccount": "123456789012"})
    assert not iam.evaluate([cp], direct).allowed and not iam.evaluate([worker], direct).allowed
    other = iam.AuthzRequest("kms:Decrypt", ("arn:aws:kms:eu-west-1:123456789012:key/other",), get.context)
    assert not iam.evaluate([worker], other).allowed
    # a key that does not exist: the call fails whoever makes it
    missing = kms("ssm", "PutParameter", {"Name": "/x", "Type": "SecureString", "KeyId": "alias/nope"})
    assert missing is not None and not iam.evaluate([cp], missing).allowed


def test_a_cluster_on_the_aws_managed_keys_gets_no_kms_statement() -> None:
    doc = iam.shipped_policy("control-plane", region="eu-west-1", account="1", cluster="prod")
    assert doc is not None and not {s["Sid"] for s in doc["Statement"]} & iam.KMS_STATEMENTS
    for role in POLICIES:  # and where there is one, it is scoped to the key and to the two services
        [stmt] = [s for s in rendered(role, "eu-west-1", "123456789012", "prod")["Statement"]
                  if s["Sid"] in iam.KMS_STATEMENTS]
        assert stmt["Resource"] == EXAMPLE_KEY
        assert stmt["Condition"] == {"StringEquals": {"kms:ViaService": [
            "ssm.eu-west-1.amazonaws.com", "secretsmanager.eu-west-1.amazonaws.com"]}}


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
            doc = rendered(role, region.region_name, region.account_id, cluster.name, cluster.kms_key_arn)
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
    if config == SECRETS_CONFIG:  # an existing secret is named by its real ARN (random 6-character suffix)
        reads = [r for _, req, _ in region.iam_decisions if req.action == "secretsmanager:GetSecretValue"
                 for r in req.resources]
        assert reads and any(not r.endswith("-??????") for r in reads), reads


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
