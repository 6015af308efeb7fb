"""``herd-sandbox aws imds …`` (issue 12's IMDS fault primitives) as real processes against a real
``herd-sandbox aws serve`` process: token revocation and early expiry, identity overrides served
on the identity paths and refused by ``herd-agent join`` (exit 65 naming the field), and each bad
input's exit code. Plus the region's one clock factor over IMDS tokens and the agent's env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from herd_sandbox.aws.lifecycle import ManualClock
from herd_sandbox.aws.region import Region

pytestmark = pytest.mark.allow_subprocess

REPO = Path(__file__).resolve().parents[3]
TIME_FACTOR = 0.01


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTEST_", "HERD_"))}


def sandbox(*args: str) -> subprocess.CompletedProcess[str]:
    """``herd-sandbox ARGS`` as its own process."""
    return subprocess.run([sys.executable, "-m", "herd_sandbox", *args], cwd=REPO, env=_clean_env(),  # noqa: S603
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, Any]]:
    """A region run by ``herd-sandbox aws serve`` (its own process), one instance; its JSON line."""
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "herd_sandbox", "aws", "serve", "--json-only", "--asg", "demo", "--size", "1",
         "--time-factor", str(TIME_FACTOR)],
        cwd=REPO, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        (iid,) = info["instances"]
        yield {**info, "iid": iid, "imds": info["instances"][iid]["imds"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def token(imds: str, ttl: int = 21600) -> str:
    resp = requests.put(f"{imds}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)},
                        timeout=10)
    assert resp.status_code == 200
    return resp.text


def get(imds: str, tok: str, path: str = "meta-data/instance-id") -> requests.Response:
    return requests.get(f"{imds}/latest/{path}", headers={"X-aws-ec2-metadata-token": tok}, timeout=10)


def await_status(imds: str, tok: str, status: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (code := get(imds, tok).status_code) != status:
        assert time.monotonic() < deadline, f"still HTTP {code}, not {status}, after {timeout} s"
        time.sleep(0.05)  # a token expiring on another process's clock


def ok(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_revoke_tokens_now_then_a_new_token_works(served: dict[str, Any]) -> None:
    ep, iid, imds = served["endpoint_url"], served["iid"], served["imds"]
    old = token(imds)
    assert get(imds, old).text == iid
    out = ok(sandbox("aws", "imds", "revoke-tokens", "--endpoint", ep, iid))
    assert out["instance_id"] == iid and out["revoked"] >= 1
    assert get(imds, old).status_code == 401
    fresh = token(imds)
    assert get(imds, fresh).text == iid


def test_revoke_tokens_after_and_token_ttl_cap_run_on_the_region_clock(served: dict[str, Any]) -> None:
    ep, iid, imds = served["endpoint_url"], served["iid"], served["imds"]
    old = token(imds)
    # 6 h of AWS time from now is 216 s here: the token still works now...
    ok(sandbox("aws", "imds", "revoke-tokens", "--endpoint", ep, iid, "--after", str(6 * 3600)))
    assert get(imds, old).status_code == 200
    # ...and a second revocation 100 AWS seconds out (1 s here) ends it.
    ok(sandbox("aws", "imds", "revoke-tokens", "--endpoint", ep, iid, "--after", "100"))
    await_status(imds, old, 401)
    assert ok(sandbox("aws", "imds", "token-ttl", "--endpoint", ep, iid, "1"))["max_ttl"] == 1.0
    short = token(imds, ttl=21600)  # asked for 6 h, lives 1 AWS second (10 ms)
    await_status(imds, short, 401)
    assert ok(sandbox("aws", "imds", "token-ttl", "--endpoint", ep, iid, "--clear"))["max_ttl"] is None
    assert get(imds, token(imds)).status_code == 200


def test_override_is_served_on_the_identity_paths_and_cleared(served: dict[str, Any]) -> None:
    ep, iid, imds = served["endpoint_url"], served["iid"], served["imds"]
    real_ip = served["instances"][iid]["private_ip"]
    out = ok(sandbox("aws", "imds", "override", "--endpoint", ep, iid, "private_ip=127.0.77.50 evil.example.com",
                     "local-hostname=ip-10-0-0-1\nevil", "availability_zone=eu-west-1a"))
    assert out["overrides"] == {"private_ip": "127.0.77.50 evil.example.com",
                                "local_hostname": "ip-10-0-0-1\nevil", "availability_zone": "eu-west-1a"}
    tok = token(imds)
    doc = get(imds, tok, "dynamic/instance-identity/document").json()
    assert (doc["privateIp"], doc["availabilityZone"], doc["instanceId"]) == (
        "127.0.77.50 evil.example.com", "eu-west-1a", iid)
    assert get(imds, tok, "meta-data/local-ipv4").text == "127.0.77.50 evil.example.com"
    assert get(imds, tok, "meta-data/local-hostname").text == "ip-10-0-0-1\nevil"
    assert get(imds, tok, "meta-data/placement/availability-zone").text == "eu-west-1a"
    assert ok(sandbox("aws", "imds", "override", "--endpoint", ep, iid))["overrides"] == out["overrides"]
    assert ok(sandbox("aws", "imds", "override", "--endpoint", ep, iid, "--clear"))["overrides"] == {}
    assert get(imds, tok, "meta-data/local-ipv4").text == real_ip


def test_join_with_an_overridden_identity_exits_65_naming_the_field(served: dict[str, Any], tmp_path: Path) -> None:
    from herd_sandbox.instance import SandboxInstance

    ep, iid = served["endpoint_url"], served["iid"]
    ok(sandbox("aws", "imds", "override", "--endpoint", ep, iid, "private_ip=127.0.77.50 evil.example.com"))
    try:
        inst = SandboxInstance(iid, tmp_path / iid, served["instances"][iid]["env"]).prepare()
        inst.write_config("cluster:\n  name: demo\nidentity:\n  role: control-plane\ndiscovery:\n  attempts: 1\n")
        r = inst.agent("join", timeout=120)
        assert r.returncode == 65, r.stderr[-2000:]
        assert "malformed privateIp" in r.stderr
        assert not inst.root.exists("/etc/rancher/k3s/config.yaml")
    finally:
        ok(sandbox("aws", "imds", "override", "--endpoint", ep, iid, "--clear"))


@pytest.mark.parametrize(("args", "code", "shown"), [
    (["override", "{iid}", "mac=02:00:00:00:00:01"], 65, "unknown identity fields: mac; known: instance_id"),
    (["override", "i-0000000000000dead", "private_ip=10.0.0.7"], 66, "unknown instance 'i-0000000000000dead'"),
    (["revoke-tokens", "i-0000000000000dead"], 66, "unknown instance 'i-0000000000000dead'"),
    (["override", "{iid}", "private_ip"], 2, "'private_ip' is not FIELD=VALUE, e.g. private_ip=10.0.0.7"),
    (["token-ttl", "{iid}"], 2, "give SECONDS"),
    (["revoke-tokens", "{iid}", "--after", "-1"], 2, "--after"),
])
def test_bad_input_is_named_with_its_exit_code(served: dict[str, Any], args: list[str], code: int,
                                               shown: str) -> None:
    ep, iid = served["endpoint_url"], served["iid"]
    argv = [a.format(iid=iid) for a in args]
    r = sandbox("aws", "imds", argv[0], "--endpoint", ep, *argv[1:])
    assert r.returncode == code, r.stderr
    assert shown in r.stderr
    assert ok(sandbox("aws", "imds", "override", "--endpoint", ep, iid))["overrides"] == {}  # nothing half-set


def test_no_region_at_the_endpoint_exits_69() -> None:
    r = sandbox("aws", "imds", "revoke-tokens", "--endpoint", "http://127.0.0.1:9", "i-0abc")
    assert r.returncode == 69 and "no sandbox region answers at --endpoint http://127.0.0.1:9" in r.stderr


def test_one_clock_factor_covers_imds_tokens_and_the_agent(make_aws_region: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 12: the region's time factor is the one clock: a token's TTL runs on it by default,
    and each instance's env hands it to the agent (HERD_AGENT_TIME_FACTOR) for its heartbeat
    cadence and hook deadline."""
    from herd_agent import failpoints

    clock = ManualClock()
    region: Region = make_aws_region(time_factor=TIME_FACTOR, clock=clock)
    region.create_launch_template("clock-lt")
    region.create_group("clock", "clock-lt", desired=1)
    (iid,) = region.group_instances("clock")
    imds = region.instance(iid).imds_url
    tok = token(imds, ttl=100)  # 100 AWS seconds = 1 s of this region's clock
    clock.advance(0.9)
    assert get(imds, tok).status_code == 200
    clock.advance(0.2)
    assert get(imds, tok).status_code == 401
    env = region.env(iid)
    assert float(env[failpoints.TIME_FACTOR_ENV]) == TIME_FACTOR
    monkeypatch.setenv(failpoints.TIME_FACTOR_ENV, env[failpoints.TIME_FACTOR_ENV])
    assert failpoints.scaled(3600) == pytest.approx(region.scaled(3600))
