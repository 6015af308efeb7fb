"""Kernel drop-ins against a fake /proc under the root; commands scripted with FakeRunner."""

from __future__ import annotations

from pathlib import Path

import pytest

from herd_agent.config import load_config
from herd_agent.config.schema import DEFAULT_SYSCTLS
from herd_agent.host import kernel
from herd_agent.host import runner as runner_mod
from herd_agent.host.fsroot import HostRoot
from tests.fakes import FakeRunner


def fake_proc(root: Path, *, with_bridge: bool) -> None:
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/modules").write_text("overlay 151552 0 - Live 0x0000000000000000\n")
    for key in DEFAULT_SYSCTLS:
        if key.startswith("net.bridge.") and not with_bridge:
            continue
        p = root / kernel.sysctl_proc_path(key).lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("0\n")


def load_bridge(root: Path) -> None:
    """What `modprobe br_netfilter` does to /proc: the module appears and its sysctls with it."""
    with (root / "proc/modules").open("a") as f:
        f.write("br_netfilter 32768 0 - Live 0x0\n")
    for key in DEFAULT_SYSCTLS:
        if key.startswith("net.bridge."):
            p = root / kernel.sysctl_proc_path(key).lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("0\n")


@pytest.fixture
def fake_runner():
    fake = FakeRunner()
    previous = runner_mod.set_runner(fake)
    yield fake
    runner_mod.set_runner(previous)


def test_first_apply_writes_loads_and_verifies(tmp_path: Path, fake_runner: FakeRunner) -> None:
    fake_proc(tmp_path, with_bridge=False)
    root = HostRoot(tmp_path)
    cfg = load_config(root)
    fake_runner.expect(["systemctl", "daemon-reload"])
    fake_runner.expect(["systemctl", "try-restart", "systemd-logind.service"])
    fake_runner.expect(["modprobe", "br_netfilter"], effect=lambda: load_bridge(tmp_path))
    report = kernel.apply(root, cfg)
    fake_runner.assert_done()
    assert report.ok, (report.drift, report.missing)
    assert report.loaded == ["br_netfilter"]
    assert sorted(report.written) == sorted(kernel.render_files(cfg))
    for key, value in DEFAULT_SYSCTLS.items():
        assert (tmp_path / kernel.sysctl_proc_path(key).lstrip("/")).read_text().strip() == value
    conf = (tmp_path / "etc/sysctl.d/90-herd-agent.conf").read_text()
    assert "net.ipv4.ip_forward = 1\n" in conf and "net.bridge.bridge-nf-call-iptables = 1\n" in conf
    assert (tmp_path / "etc/modules-load.d/herd-agent.conf").read_text().splitlines()[1:] == ["br_netfilter", "overlay"]
    unit = (tmp_path / "etc/systemd/system/k3s.service.d/90-herd-agent.conf").read_text()
    assert "ExecStartPre=-/usr/bin/herd-agent hosts sync" in unit and "LimitNOFILE=1048576" in unit
    assert (tmp_path / "etc/systemd/system/k3s-agent.service.d/90-herd-agent.conf").read_text() == unit
    assert "InhibitDelayMaxSec=300" in (tmp_path / "etc/systemd/logind.conf.d/90-herd-agent.conf").read_text()
    assert (tmp_path / "etc/sysctl.d/90-herd-agent.conf").stat().st_mode & 0o777 == 0o644


def test_second_apply_changes_nothing_and_runs_nothing(tmp_path: Path, fake_runner: FakeRunner) -> None:
    fake_proc(tmp_path, with_bridge=True)
    (tmp_path / "proc/modules").write_text("overlay 1 0 - Live 0x0\nbr_netfilter 1 0 - Live 0x0\n")
    root = HostRoot(tmp_path)
    cfg = load_config(root)
    fake_runner.expect(["systemctl", "daemon-reload"]).expect(["systemctl", "try-restart", "systemd-logind.service"])
    kernel.apply(root, cfg)
    fake_runner.assert_done()
    # Nothing planned now: any command would fail the test.
    report = kernel.apply(root, cfg)
    assert report.written == [] and report.loaded == [] and report.ok


def test_drift_and_missing_are_reported(tmp_path: Path, fake_runner: FakeRunner) -> None:
    fake_proc(tmp_path, with_bridge=True)
    (tmp_path / "proc/modules").write_text("overlay 1 0 - Live 0x0\nbr_netfilter 1 0 - Live 0x0\n")
    # A "kernel" that drops this write: the value never holds.
    stuck = tmp_path / kernel.sysctl_proc_path("vm.overcommit_memory").lstrip("/")
    stuck.unlink()
    stuck.symlink_to("/dev/null")
    (tmp_path / "etc/herd-agent").mkdir(parents=True)
    (tmp_path / "etc/herd-agent/config.yaml").write_text(
        "kernel:\n  sysctls:\n    net.netfilter.nf_conntrack_max: 131072\n    kernel.panic: ''\n")
    root = HostRoot(tmp_path)
    cfg = load_config(root)
    fake_runner.expect(["systemctl", "daemon-reload"]).expect(["systemctl", "try-restart", "systemd-logind.service"])
    report = kernel.apply(root, cfg)
    assert report.drift == {"vm.overcommit_memory": ("1", "")}
    assert report.missing == ["net.netfilter.nf_conntrack_max"]
    assert not report.ok
    conf = (tmp_path / "etc/sysctl.d/90-herd-agent.conf").read_text()
    assert "kernel.panic " not in conf  # switched off with ''
    assert "net.netfilter.nf_conntrack_max = 131072" in conf
    assert (tmp_path / "proc/sys/kernel/panic").read_text() == "0\n"  # left alone


def test_cli_kernel_apply_exit_codes(
    tmp_path: Path, fake_runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    from herd_agent.cli import main

    fake_proc(tmp_path, with_bridge=True)
    (tmp_path / "proc/modules").write_text("overlay 1 0 - Live 0x0\nbr_netfilter 1 0 - Live 0x0\n")
    fake_runner.expect(["systemctl", "daemon-reload"]).expect(["systemctl", "try-restart", "systemd-logind.service"])
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(tmp_path), "kernel", "apply"])
    assert exc.value.code == 0
    assert "kernel settings hold" in capsys.readouterr().out
    (tmp_path / "proc/sys/net/ipv4/ip_forward").unlink()
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(tmp_path), "kernel", "apply"])
    assert exc.value.code == 71
    assert "sysctl net.ipv4.ip_forward: no /proc/sys entry" in capsys.readouterr().err
