"""The region binds loopback only, starts fast enough, and leaves no port or thread behind."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import psutil
import pytest

from herd_sandbox.aws.region import Region
from herd_sandbox.aws.servers import THREAD_PREFIX

REPO = Path(__file__).resolve().parents[3]


def listening() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def sandbox_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def test_binds_loopback_only_and_stop_leaves_nothing(make_aws_region: Callable[..., Region]) -> None:
    before = listening()
    region = make_aws_region()
    region.create_launch_template("workers-lt")
    region.create_group("workers", "workers-lt", desired=3)
    ec2 = region.client("ec2")
    ec2.describe_instances()  # leaves a keep-alive connection open
    opened = listening() - before
    endpoints = {("127.0.0.1", int(region.endpoint_url.rsplit(":", 1)[1]))}
    endpoints |= {(i.private_ip, int(i.imds_url.rsplit(":", 1)[1])) for i in region.instances()}
    assert endpoints <= opened
    assert all(ipaddress.ip_address(ip).is_loopback for ip, _port in opened)
    assert sandbox_threads()

    region.stop()
    assert not (listening() & endpoints)
    assert all(refused(ip, port) for ip, port in endpoints)
    assert sandbox_threads() == []


def test_only_one_region_per_process(aws_region: Region) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        Region().start()
    assert aws_region.client("sts").get_caller_identity()["Account"] == aws_region.account_id


def test_region_can_restart_with_fresh_state(make_aws_region: Callable[..., Region]) -> None:
    first = make_aws_region()
    first.create_launch_template("workers-lt")
    first.stop()
    with Region() as second:
        assert second.client("ec2").describe_launch_templates()["LaunchTemplates"] == []


def test_start_is_quick(make_aws_region: Callable[..., Region]) -> None:
    started = time.monotonic()
    make_aws_region()
    assert time.monotonic() - started < 10  # a loose sanity bound; bench/aws_region.py measures it


FAILING_TEST = textwrap.dedent(
    """
    import json, os, socket, threading
    from pathlib import Path

    from herd_sandbox.aws.pytest_fixtures import aws_region, make_aws_region  # noqa: F401
    from herd_sandbox.aws.region import Region

    OUT = Path(os.environ["SANDBOX_PROBE_OUT"])

    def test_a_fails_mid_use(aws_region):
        aws_region.create_launch_template("workers-lt")
        aws_region.create_group("workers", "workers-lt", desired=2)
        ports = [["127.0.0.1", int(aws_region.endpoint_url.rsplit(":", 1)[1])]]
        ports += [[i.private_ip, int(i.imds_url.rsplit(":", 1)[1])] for i in aws_region.instances()]
        OUT.write_text(json.dumps({"ports": ports}))
        assert False, "deliberate failure while the region runs"

    def test_b_after_the_failure():
        probe = json.loads(OUT.read_text())
        still_open = []
        for host, port in probe["ports"]:
            try:
                socket.create_connection((host, port), timeout=1).close()
                still_open.append([host, port])
            except ConnectionRefusedError:
                pass
        threads = [t.name for t in threading.enumerate() if t.name.startswith("herd-sandbox-")]
        with Region():  # the one-region-per-process claim was released too
            pass
        probe.update(still_open=still_open, threads=threads)
        OUT.write_text(json.dumps(probe))
    """
)


@pytest.mark.allow_subprocess
def test_a_failing_test_still_stops_the_region(tmp_path: Path) -> None:
    (tmp_path / "test_probe.py").write_text(FAILING_TEST)
    out = tmp_path / "probe.json"
    proc = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_probe.py"],
        cwd=tmp_path,
        env={**_clean_env(), "SANDBOX_PROBE_OUT": str(out), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout + proc.stderr
    probe = json.loads(out.read_text())
    assert len(probe["ports"]) == 3
    assert probe["still_open"] == []
    assert probe["threads"] == []


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTEST_"))}


@pytest.mark.allow_subprocess
def test_cli_serve_prints_endpoints_and_stops_on_signal() -> None:
    # SIGINT and SIGTERM share one handler in the CLI; one process run covers it (a cold start
    # of the interpreter with moto costs seconds).
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "herd_sandbox", "aws", "serve", "--json-only", "--asg", "demo", "--size", "2"],
        cwd=REPO,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        env = info["env"]
        asg = boto3.session.Session().client(
            "autoscaling",
            endpoint_url=info["endpoint_url"],
            region_name=info["region"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        (grp,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["demo"])["AutoScalingGroups"]
        assert {i["InstanceId"] for i in grp["Instances"]} == set(info["instances"])
        assert all(i["LifecycleState"] == "Pending:Wait" for i in grp["Instances"])
        for inst in info["instances"].values():
            assert inst["env"]["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == inst["imds"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    port = int(info["endpoint_url"].rsplit(":", 1)[1])
    assert refused("127.0.0.1", port)


def test_stop_restores_the_moto_ami_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOTO_EC2_LOAD_DEFAULT_AMIS", raising=False)
    with Region():
        assert os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] == "false"
    assert "MOTO_EC2_LOAD_DEFAULT_AMIS" not in os.environ
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "true")
    with Region():
        assert os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] == "true"
    assert os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] == "true"
