"""The sandbox ``systemctl`` stand-in: real processes per host root, systemctl's exit codes."""

from __future__ import annotations

import os
import subprocess

import pytest

from herd_agent.host.fsroot import HostRoot
from herd_sandbox import systemctl as sc
from tests.etcd.harness import free_port

UNIT = "herd-etcd.service"


def test_parse_env_file():
    text = "# comment\n\nETCD_NAME=a\nETCD_X=\"quoted value\"\n; other\nbroken line\nETCD_Y='1'\n"
    assert sc.parse_env_file(text) == {"ETCD_NAME": "a", "ETCD_X": "quoted value", "ETCD_Y": "1"}


def test_unknown_unit_and_inactive(tmp_path):
    out: list[str] = []
    assert sc.main(["--root", str(tmp_path), "is-active", UNIT], out=out.append) == sc.EXIT_INACTIVE
    assert out == ["inactive"]
    assert sc.main(["--root", str(tmp_path), "start", "nope.service"]) == sc.EXIT_NO_UNIT
    assert sc.main(["--root", str(tmp_path), "stop", UNIT]) == 0  # stopping a stopped unit is fine
    assert sc.main(["--root", str(tmp_path), "daemon-reload"]) == 0


def _env(root: HostRoot, ip: str, state: str = "new") -> None:
    cport, pport = free_port(), free_port()
    root.write("/etc/herd-agent/etcd.env", "\n".join([
        "ETCD_NAME=a", "ETCD_DATA_DIR=/var/lib/etcd",
        f"ETCD_LISTEN_CLIENT_URLS=http://{ip}:{cport}", f"ETCD_ADVERTISE_CLIENT_URLS=http://{ip}:{cport}",
        f"ETCD_LISTEN_PEER_URLS=http://{ip}:{pport}", f"ETCD_INITIAL_ADVERTISE_PEER_URLS=http://{ip}:{pport}",
        f"ETCD_INITIAL_CLUSTER=a=http://{ip}:{pport}", f"ETCD_INITIAL_CLUSTER_STATE={state}",
    ]) + "\n", mode=0o640)


@pytest.mark.allow_subprocess
def test_shim_starts_kills_and_stops_real_etcd(tmp_path, toolchain):
    root = HostRoot(tmp_path / "root")
    _env(root, "127.0.9.2")
    shim = sc.write_shim(tmp_path / "bin")
    env = {**os.environ, "HERD_AGENT_ROOT": str(root.root), "PATH": f"{shim.parent}:{toolchain.bindir}:/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemctl", *args], env=env, capture_output=True, text=True, timeout=60)

    assert run("start", UNIT).returncode == 0
    ctl = sc.Systemctl(root, env)
    pid = ctl.pid(UNIT)
    assert pid and root.path("/var/lib/etcd/member").is_dir()  # the data dir was mapped under the root
    assert run("is-active", UNIT).stdout.strip() == "active"
    assert run("start", UNIT).returncode == 0 and ctl.pid(UNIT) == pid  # already running: no second process
    assert run("kill", "-s", "KILL", UNIT).returncode == 0
    assert run("is-active", UNIT).returncode == sc.EXIT_INACTIVE
    assert run("start", UNIT).returncode == 0 and ctl.pid(UNIT) != pid  # restarts on the same data
    assert run("stop", UNIT).returncode == 0
    assert not ctl.is_active(UNIT)


@pytest.mark.allow_subprocess
def test_start_failure_reports_the_log_tail(tmp_path, toolchain):
    root = HostRoot(tmp_path / "root")
    _env(root, "127.0.9.3", state="bogus")
    ctl = sc.Systemctl(root, {"PATH": f"{toolchain.bindir}:/usr/bin:/bin"})
    ok, msg = ctl.start(UNIT)
    assert not ok and "process exited" in msg and "bogus" in msg


@pytest.mark.allow_subprocess
def test_units_registered_by_other_modules(tmp_path, monkeypatch):
    monkeypatch.setenv("HERD_SANDBOX_UNIT_MODULES", "tests.etcd.sandbox_units")
    root = ["--root", str(tmp_path)]
    try:
        assert sc.main([*root, "start", "sleeper.service"]) == 0
        assert sc.main([*root, "is-active", "sleeper.service"], out=lambda _: None) == 0
        assert sc.main([*root, "stop", "sleeper.service"]) == 0
        assert sc.main([*root, "is-active", "sleeper.service"], out=lambda _: None) == sc.EXIT_INACTIVE
    finally:
        sc.Systemctl(HostRoot(tmp_path)).kill("sleeper.service", 9)
