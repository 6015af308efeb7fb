"""The example stack (ami/cloudformation/cluster.yaml): cfn-lint clean, deployed into the sandbox
region with moto's CloudFormation with the resources it promises (hooks before the first launch,
IMDSv2, user data, its KMS key or the one given, the roles' policies = ami/iam). The lifecycle
scenario on its groups, every instance call checked against the policies of the roles the stack
made: tests/sandbox/scenario/test_scenarios.py::test_lifecycle_short_on_the_stack."""

from __future__ import annotations

import ast
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from botocore.exceptions import ClientError

from herd_sandbox.aws import iam
from herd_sandbox.aws.region import Region
from herd_sandbox.scenario.cluster import cloud_init_write_files, deploy_stack
from tests.ship.conftest import REPO
from tests.ship.test_iam import rendered

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


def test_stack_deploys_with_hooks_imdsv2_user_data_key_and_the_shipped_policies(region: Region) -> None:
    """The stack's resources as made in the sandbox region; the lifecycle on its groups is
    tests/sandbox/scenario/test_scenarios.py::test_lifecycle_short_on_the_stack."""
    cluster = f"stack{next(_n)}-{os.getpid() % 1000}"
    out = deploy_stack(region, TEMPLATE, cluster, control_planes=1, workers=1, launch_timeout=7200,
                       terminate_timeout=7200)
    cp_group, node_group = out["ControlPlaneGroupName"], out["WorkerGroupName"]
    asg, ec2 = region.client("autoscaling"), region.client("ec2")
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
        [iid] = region.group_instances(group)
        assert region.lifecycle_state(iid) == "Pending:Wait"  # the hooks existed before the first launch
        # cloud-init's write_files gives the agent the stack's settings (a worker: its kube credential)
        files = {path: yaml.safe_load(text) for path, text, _ in cloud_init_write_files(region.user_data(iid))}
        stack_cfg = files["/etc/herd-agent/config.d/10-stack.yaml"]
        if group == cp_group:
            assert stack_cfg == {"kms": {"key_id": out["KmsKeyArn"]}}
        else:
            assert stack_cfg == {"kube": {"token_ssm_parameter": f"/herd/{cluster}/agent-sa-token"}}
    # The stack made a customer-managed key with the cluster's alias.
    kms = region.client("kms")
    meta = kms.describe_key(KeyId=iam.cluster_key_alias(cluster))["KeyMetadata"]
    assert meta["Arn"] == out["KmsKeyArn"] and meta["KeyManager"] == "CUSTOMER"
    # The roles carry exactly the policies of ami/iam/, the key's statements on that key.
    iam_client = region.client("iam")
    for role, arn in (("control-plane", out["ControlPlaneRoleArn"]), ("node", out["WorkerRoleArn"])):
        name = arn.rsplit("/", 1)[1]
        policy = iam_client.get_role_policy(
            RoleName=name, PolicyName=iam_client.list_role_policies(RoleName=name)["PolicyNames"][0])
        doc = policy["PolicyDocument"]
        if isinstance(doc, str):  # moto answers a stack-made inline policy as Python's repr of the dict
            doc = json.loads(doc) if doc.startswith('{"') else ast.literal_eval(doc)
        assert doc == rendered(role, region.region_name, region.account_id, cluster, out["KmsKeyArn"])


def test_stack_takes_an_existing_key(region: Region) -> None:
    cluster = f"stack{next(_n)}-{os.getpid() % 1000}"
    key = region.client("kms").create_key(Description="mine")["KeyMetadata"]["Arn"]
    out = deploy_stack(region, TEMPLATE, cluster, control_planes=1, workers=0, kms_key_arn=key)
    assert out["KmsKeyArn"] == key
    with pytest.raises(ClientError) as err:  # no key of its own
        region.client("kms").describe_key(KeyId=iam.cluster_key_alias(cluster))
    assert err.value.response["Error"]["Code"] == "NotFoundException"
