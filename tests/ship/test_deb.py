"""The .deb: its fields, its contents, lintian, the hash lock it is built from."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.ship.conftest import REPO, need, run

pytestmark = pytest.mark.allow_subprocess

LOCK = REPO / "packaging" / "requirements.lock"


def contents(deb: Path) -> dict[str, str]:
    """Path (without the leading ./) -> the ``dpkg-deb -c`` line."""
    out = run(["dpkg-deb", "-c", str(deb)]).stdout
    return {line.split(" ./", 1)[1].split(" -> ")[0].rstrip("/"): line for line in out.splitlines() if " ./" in line}


def test_name_fields_and_python_dependency(deb: Path) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    assert deb.name == f"herd-agent_{version}_{arch}.deb"
    fields = run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture", "Depends"]).stdout
    assert f"Version: {version}" in fields and f"Architecture: {arch}" in fields
    depends = fields.split("Depends:", 1)[1]
    assert "python3 (>= 3.11), python3 (<< 3.12)" in depends
    assert "libsystemd0" in depends  # from dpkg-shlibdeps over the compiled modules


def test_members_are_xz(deb: Path) -> None:
    members = run(["ar", "t", str(deb)]).stdout.split()
    assert members == ["debian-binary", "control.tar.xz", "data.tar.xz"]


def test_contents(deb: Path) -> None:
    files = contents(deb)
    assert "-> /opt/herd-agent/bin/herd-agent" in files["usr/bin/herd-agent"]
    units = sorted(p.name for p in (REPO / "units").glob("*.service"))
    for unit in units:
        assert f"lib/systemd/system/{unit}" in files
    assert "etc/herd-agent/config.yaml" in files and files["etc/herd-agent/config.d"].startswith("d")
    for doc in ("copyright", "changelog.gz", "README.md", "join.md", "leave.md", "configuration.md"):
        assert f"usr/share/doc/herd-agent/{doc}" in files, doc
    for manifest in (REPO / "packaging" / "rbac").glob("*.yaml"):
        assert f"usr/share/herd-agent/rbac/{manifest.name}" in files
    assert "usr/share/man/man1/herd-agent.1.gz" in files
    site = [p for p in files if p.startswith("opt/herd-agent/lib/python3.11/site-packages/")]
    tops = {p.split("/")[5] for p in site if p.count("/") >= 5}
    assert "herd_agent" in tops and "boto3" in tops and "systemd" in tops
    for forbidden in ("pip", "setuptools", "herd_sandbox", "_distutils_hack", "pkg_resources"):
        assert forbidden not in tops, f"{forbidden} is in the venv"
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc")]
    assert "-> /usr/bin/python3" in files["opt/herd-agent/bin/python3"]  # the system interpreter
    assert sorted(p for p in files if p.startswith("opt/herd-agent/bin/")) == [
        "opt/herd-agent/bin/herd-agent", "opt/herd-agent/bin/python", "opt/herd-agent/bin/python3",
        "opt/herd-agent/bin/python3.11"]


def test_conffile_and_maintainer_scripts(deb: Path, tmp_path: Path) -> None:
    run(["dpkg-deb", "-e", str(deb), str(tmp_path)])
    assert (tmp_path / "conffiles").read_text().split() == ["/etc/herd-agent/config.yaml"]
    postinst = (tmp_path / "postinst").read_text()
    enabled = postinst.split('ENABLE_UNITS="', 1)[1].split('"', 1)[0].split()
    assert "herd-agent.service" in enabled and "herd-etcd.service" not in enabled
    assert "/run/systemd/system" in postinst  # nothing started in a chroot or image build


def test_venv_is_relocated_and_built_for_the_system_python(deb: Path, tmp_path: Path) -> None:
    run(["dpkg-deb", "-x", str(deb), str(tmp_path)])
    venv = tmp_path / "opt" / "herd-agent"
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg and "version = 3.11" in cfg and str(tmp_path) not in cfg
    assert (venv / "bin" / "herd-agent").read_text().startswith("#!/opt/herd-agent/bin/python\n")
    sos = list(venv.rglob("*.so"))
    assert sos
    for so in sos:  # nothing linked against the pyenv interpreter on PATH (RUNPATH /root/.pyenv/...)
        dyn = run(["readelf", "-d", str(so)]).stdout
        assert "RPATH" not in dyn and "RUNPATH" not in dyn, f"{so}: {dyn}"
        assert "pyenv" not in so.read_bytes().decode("latin-1"), so


def test_lintian_clean(deb: Path) -> None:
    need("lintian")
    r = subprocess.run(["lintian", "--fail-on", "error,warning", "--info", "--display-info", str(deb)],
                       capture_output=True, text=True, timeout=600)
    tags = [line for line in r.stdout.splitlines() if re.match(r"^[EWI]: ", line)]
    assert r.returncode == 0, "\n".join(tags)
    assert not [t for t in tags if t.startswith(("E:", "W:"))], tags
    assert not [t for t in tags if "unused-override" in t or "mismatched-override" in t], tags


def test_lock_pins_every_dependency_by_hash() -> None:
    text = LOCK.read_text()
    reqs = re.findall(r"^([A-Za-z0-9_.-]+)==([^ \\]+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.M)
    pinned = {name.lower().replace("_", "-") for name, _, _ in reqs}
    assert len(reqs) == len(re.findall(r"^[A-Za-z0-9_.-]+==", text, re.M)), "a requirement without a hash"
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in declared:
        name = re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is a dependency but not in {LOCK.name}"
    assert not {"pip", "setuptools"} & pinned
