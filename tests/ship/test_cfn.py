"""The example stack (ami/cloudformation/cluster.yaml): cfn-lint clean, deployed into the sandbox
region with moto's CloudFormation, and a lifecycle run on the groups it created, every instance
call checked against the policies of the roles the stack made."""

from __future__ import annotations

import ast
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from herd_sandbox.aws.region import Region
from herd_sandbox.instance import SandboxInstance
from herd_sandbox.kube.sandbox import KubeSandbox
from tests.clusters import BASE_CONFIG
from tests.ship.conftest import REPO
from tests.ship.test_iam import agent_token_parameter, rendered

pytestmark = pytest.mark.allow_subprocess

TEMPLATE = REPO / "ami/cloudformation/cluster.yaml"
_n = itertools.count()


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("cfn-lint")
    if not exe.exists():
        pytest.skip("needs cfn-lint (pip install -e '.[test]')")
    return subprocess.run([str(exe), str(path)], capture_output=True, text=True, timeout=300)


def test_cfn_lint_clean(tmp_path: Path) -> None:
    r = cfn_lint(TEMPLATE)
    assert r.returncode == 0, r.stdout + r.stderr
    broken = tmp_path / "broken.yaml"  # and it catches a hook without its transition
    hook_line = "          LifecycleTransition: autoscaling:EC2_INSTANCE_LAUNCHING\n"
    broken.write_text(TEMPLATE.read_text().replace(hook_line, "", 1))
    assert cfn_lint(broken).returncode != 0


def operator(region: Region, service: str):
    env = region.env()
    return boto3.client(service, endpoint_url=env["AWS_ENDPOINT_URL"], region_name=region.region_name,
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def deploy(region: Region, cluster: str) -> dict[str, str]:
    ec2, cfn = operator(region, "ec2"), operator(region, "cloudformation")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    sg = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
    params = {"ClusterName": cluster, "ImageId": "ami-12345678", "SubnetIds": subnet, "SecurityGroupIds": sg,
              "ControlPlaneCount": "1", "WorkerMin": "0", "WorkerDesired": "1",
              # the token a worker of this agent version reads (token.agent_name once it exists)
              "AgentTokenParameter": agent_token_parameter(cluster),
              # 7200 s (AWS' maximum) is 72 s at the region's time factor 0.01: room for a join here.
              "LaunchHeartbeatTimeout": "7200", "TerminateHeartbeatTimeout": "7200"}
    cfn.create_stack(StackName=f"{cluster}-stack", TemplateBody=TEMPLATE.read_text(), Capabilities=["CAPABILITY_IAM"],
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()])
    stack = cfn.describe_stacks(StackName=f"{cluster}-stack")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def instance(region: Region, kube: KubeSandbox, toolchain, workdir: Path, iid: str, role: str) -> SandboxInstance:
    inst = SandboxInstance(iid, workdir / iid, {
        **region.env(iid), "HERD_SANDBOX_KUBECONFIG": str(kube.admin_kubeconfig),
        "HERD_SANDBOX_ETCD": str(toolchain.etcd)}).prepare()
    config = BASE_CONFIG + "leave:\n  heartbeat_interval_s: 0.3\n  reserve_s: 5\n  stop_k3s: stop\n"
    if role == "node":
        shutil.copy(kube.admin_kubeconfig, inst.root.path("/etc/herd-agent/kubeconfig"))
        config += "kube:\n  kubeconfig: /etc/herd-agent/kubeconfig\n"
    inst.write_config(config)
    return inst


def test_stack_deploys_and_the_lifecycle_runs_on_its_groups(region: Region, toolchain, tmp_path: Path) -> None:
    cluster = f"stack{next(_n)}-{os.getpid() % 1000}"
    out = deploy(region, cluster)
    cp_group, node_group = out["ControlPlaneGroupName"], out["WorkerGroupName"]
    asg, ec2 = operator(region, "autoscaling"), operator(region, "ec2")
    for group in (cp_group, node_group):
        hooks = {h["LifecycleTransition"]: h for h in asg.describe_lifecycle_hooks(AutoScalingGroupName=group)
                 ["LifecycleHooks"]}
        assert hooks["autoscaling:EC2_INSTANCE_LAUNCHING"]["DefaultResult"] == "ABANDON"
        assert hooks["autoscaling:EC2_INSTANCE_TERMINATING"]["DefaultResult"] == "CONTINUE"
        assert all(h["HeartbeatTimeout"] == 7200 for h in hooks.values())
        spec = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]["LaunchTemplate"]
        data = ec2.describe_launch_template_versions(LaunchTemplateId=spec["LaunchTemplateId"])[
            "LaunchTemplateVersions"][0]["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert data["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
        assert "IamInstanceProfile" in data
    # The roles carry exactly the policies of ami/iam/.
    iam = operator(region, "iam")
    for role, arn in (("control-plane", out["ControlPlaneRoleArn"]), ("node", out["WorkerRoleArn"])):
        name = arn.rsplit("/", 1)[1]
        policy = iam.get_role_policy(RoleName=name, PolicyName=iam.list_role_policies(RoleName=name)["PolicyNames"][0])
        doc = policy["PolicyDocument"]
        if isinstance(doc, str):  # moto answers a stack-made inline policy as Python's repr of the dict
            doc = json.loads(doc) if doc.startswith('{"') else ast.literal_eval(doc)
        assert doc == rendered(role, region.region_name, region.account_id, cluster)

    [cp] = region.group_instances(cp_group)
    [worker] = region.group_instances(node_group)
    assert region.lifecycle_state(cp) == region.lifecycle_state(worker) == "Pending:Wait"
    with KubeSandbox(time_factor=0.01) as kube:
        insts = {cp: instance(region, kube, toolchain, tmp_path, cp, "control-plane"),
                 worker: instance(region, kube, toolchain, tmp_path, worker, "node")}
        try:
            for iid in (cp, worker):
                r = insts[iid].agent("join")
                assert r.returncode == 0, r.stderr[-3000:]
                assert region.lifecycle_state(iid) == "InService"
            # Scale-in by replacement: the worker leaves, the group launches a new one, which joins.
            region.terminate_instance(worker, decrement=False)
            r = insts[worker].agent("leave", "--reason", "asg-terminate")
            assert r.returncode == 0, r.stderr[-3000:]
            assert kube.find("Node", worker) is None
            assert region.lifecycle_state(worker) in (None, "Terminating:Proceed", "Terminated")
            [new] = [i for i in region.group_instances(node_group) if i != worker]
            insts[new] = instance(region, kube, toolchain, tmp_path, new, "node")
            r = insts[new].agent("join")
            assert r.returncode == 0, r.stderr[-3000:]
            assert region.lifecycle_state(new) == "InService"
        finally:
            for inst in insts.values():
                inst.stop_units()
    # Every call the instances made was checked against their stack role's policy, none refused.
    checked = {caller for caller, _, _ in region.iam_decisions}
    assert {cp, worker, new} <= checked
    refused = [c for c in region.calls() if c.caller in (cp, worker, new)
               and c.outcome in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")]
    assert refused == []
