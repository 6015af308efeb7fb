"""The systemd units pass the real `systemd-analyze verify` and keep their ordering promises."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.allow_subprocess,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (apt: systemd)"),
]

UNITS = Path(__file__).resolve().parents[2] / "units"
ALL = sorted(p.name for p in UNITS.glob("*.service"))


def staged(tmp_path: Path, names: list[str]) -> list[Path]:
    """Copies whose ExecStart points at an executable stand-in (verify checks it exists)."""
    shim = tmp_path / "bin" / "herd-agent"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\nexit 0\n")
    shim.chmod(0o755)
    out = []
    for name in names:
        p = tmp_path / name
        text = (UNITS / name).read_text()
        for binary in ("/usr/bin/herd-agent", "/usr/local/bin/etcd"):
            text = text.replace(binary, str(shim))
        p.write_text(text)
        out.append(p)
    return out


def parse(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment, method-assign]
    cp.read_string((UNITS / name).read_text())
    return cp


def test_units_exist() -> None:
    assert {"herd-agent-join.service", "herd-agent-join-ready.service"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_systemd_analyze_verify_is_clean(tmp_path: Path, name: str) -> None:
    r = subprocess.run(["systemd-analyze", "verify", *map(str, staged(tmp_path, ALL))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr  # no unknown keys, no warnings


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nType=oneshot\nExecStart=/nonexistent/herd-agent join\n")
    r = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0


def test_join_unit_ordering() -> None:
    unit = (UNITS / "herd-agent-join.service").read_text()
    cp = parse("herd-agent-join.service")
    assert cp["Service"]["Type"] == "oneshot"
    for line in ("Wants=network-online.target", "After=network-online.target", "After=cloud-final.service",
                 "Before=k3s.service k3s-agent.service"):
        assert line in unit.splitlines()
        # Every ordering line carries its reason in a comment right above its group of directives.
        lines = unit.splitlines()
        i = lines.index(line) - 1
        while lines[i] and not lines[i].startswith("#"):
            i -= 1
        assert lines[i].startswith("#"), line
    ready = (UNITS / "herd-agent-join-ready.service").read_text().splitlines()
    assert "After=k3s.service k3s-agent.service" in ready
    assert "Requires=herd-agent-join.service" in ready
