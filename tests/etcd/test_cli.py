"""``herd-agent etcd status|gc|join|leave`` in-process against a real cluster and moto EC2."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from herd_agent.cli import cli
from herd_agent.host import runner as runner_mod
from tests.etcd.harness import healthy_voters_equal, wait_for

pytestmark = pytest.mark.allow_subprocess


@pytest.fixture
def lab(fast_lab):
    return fast_lab  # the agent's guards alone (see conftest.fast_lab)


@pytest.fixture(autouse=True)
def _restore_root_logger():
    # The CLI installs its own root handler (setup_logging) on the CliRunner's stderr.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _config(inst, lab, mode="external"):
    s = lab.settings
    plain = mode == "external" and not s.member_tls
    inst.root.write("/etc/herd-agent/config.yaml",
                    f"etcd:\n  mode: {mode}\n  insecure_plain_http: {str(plain).lower()}\n"
                    f"  ca_secret: {s.ca_secret}\n"
                    f"  client_port: {s.client_port}\n  peer_port: {s.peer_port}\n", mode=0o644)


def _run(inst, *args):
    return CliRunner().invoke(cli, ["--root", str(inst.root.root), "etcd", "--region", "us-east-1", *args],
                              catch_exceptions=False)


def test_status_json_and_table_show_stale_candidates(lab):
    a, b, c = lab.three()
    lab.kill9(c)
    lab.terminate(c)
    _config(a, lab)
    res = _run(a, "status", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["voters"] == 3 and doc["healthy_voters"] == 2 and doc["quorum_margin"] == 0
    assert doc["learners"] == [] and doc["leader"] != "0"
    assert {m["name"]: m["healthy"] for m in doc["members"]} == {a.name: True, b.name: True, c.name: False}
    [stale] = doc["stale_candidates"]
    assert stale["name"] == c.name and stale["reason"] == "gone" and not stale["ripe"]
    table = _run(a, "status").stdout
    assert "margin 0" in table and c.name in table and "DOWN" in table and "stale candidates" in table


def test_gc_dry_run_reports_and_keeps_members(lab):
    a, b, c = lab.three()
    lab.kill9(c)
    lab.terminate(c)
    _config(a, lab)
    res = _run(a, "--endpoint", a.client_url, "gc", "--dry-run")
    assert res.exit_code == 0, res.output
    assert f"{c.name}: gone: instance {c.name}" in res.output and "in grace" in res.output
    assert len(lab.client(exclude=c).member_list()[1]) == 3


def test_join_and_leave_commands_use_the_process_runner(lab):
    a = lab.found()
    b = lab.launch()
    _config(b, lab)
    previous = runner_mod.set_runner(b.runner)  # the CLI uses the process-wide runner
    try:
        res = _run(b, "--ip", b.ip, "--name", b.name, "join", "--peer", a.client_url)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["reused"] is False
        wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="b joined")
        res = _run(b, "leave", "--peer", a.client_url)  # name and IP now come from the journal
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["removed"] is True
    finally:
        runner_mod.set_runner(previous)
    b.alive = False
    wait_for(lambda: healthy_voters_equal(lab, [a]), what="b left")


def test_embedded_mode_refuses_join(lab, tmp_path):
    inst = lab.launch()
    _config(inst, lab, mode="embedded")
    res = CliRunner().invoke(cli, ["--root", str(inst.root.root), "etcd", "--ip", inst.ip, "join", "--found"])
    assert res.exit_code != 0 and "embedded" in res.output


def test_etcd_group_is_registered_and_lazy():
    out = subprocess.run(  # a fresh interpreter: importing the CLI must not import boto3
        [sys.executable, "-c", "import sys, herd_agent.etcd.cli, herd_agent.etcd.gc; print('boto3' in sys.modules)"],
        capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert "stale" in CliRunner().invoke(cli, ["etcd", "--help"]).output


def test_two_join_processes_at_once(lab):
    """Two agent processes (the real CLI, separate interpreters) race for the lock and both join."""
    a = lab.found()
    procs = []
    joiners = [lab.launch(), lab.launch()]
    for inst in joiners:
        _config(inst, lab)
        env = {**os.environ, **inst.runner.env}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "herd_agent", "--root", str(inst.root.root), "etcd", "--ip", inst.ip,
             "--name", inst.name, "join", "--peer", a.client_url, "--no-gc"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    wait_for(lambda: healthy_voters_equal(lab, [a, *joiners]), what="both processes joined")
    assert any("is held by" in err for _, err in outputs)  # one of them waited for the other


def test_status_says_the_members_talk_tls(lab):
    a = lab.found()
    _config(a, lab)
    doc = json.loads(_run(a, "status", "--json", "--no-cloud").stdout)
    assert doc["transport"] == "TLS with client-certificate authentication on client and peer URLs"
    assert "transport: TLS with client-certificate" in _run(a, "status", "--no-cloud").stdout


def test_plain_http_opt_out_is_shown_and_warned(plain_lab, monkeypatch, caplog):
    from herd_agent.etcd import settings as settings_mod

    lab = plain_lab
    a = lab.found()
    _config(a, lab)
    monkeypatch.setattr(settings_mod, "_warned", False)  # once per process: this test's process start
    with caplog.at_level(logging.WARNING, logger="herd_agent.etcd.settings"):
        res = _run(a, "status", "--no-cloud")
    assert res.exit_code == 0, res.output
    assert "transport: PLAIN HTTP: unencrypted and unauthenticated" in res.stdout
    assert any("UNENCRYPTED AND UNAUTHENTICATED" in r.getMessage() for r in caplog.records) or \
        "UNENCRYPTED AND UNAUTHENTICATED" in res.stderr
    check = CliRunner().invoke(cli, ["--root", str(a.root.root), "config", "check"], catch_exceptions=False)
    assert check.exit_code == 0, check.output
    assert "# etcd transport: PLAIN HTTP: unencrypted and unauthenticated" in check.stdout
    assert "unencrypted and unauthenticated" in check.stderr
