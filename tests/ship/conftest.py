"""Fixtures of the ship tests: the .deb (built once per session) and a fresh Debian 12 root.

The root is made once per session with mmdebstrap (minbase + systemd + python3, from the Debian
mirror apt uses here) and kept as a tarball; each test module unpacks its own copy and installs
the .deb with dpkg, as an image build does. Tools: dpkg-dev, lintian, mmdebstrap,
systemd-container (scripts/setup installs them); the root-making tests need root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_DEB = REPO / "packaging" / "build-deb"
SUITE = "bookworm"
# The mirror apt uses on this machine (scripts/setup's apt sources); override for another network.
MIRROR = os.environ.get("HERD_SHIP_MIRROR", "http://deb.debian.org/debian")
ROOT_PACKAGES = "systemd,python3"
APT_OF = {"dpkg-deb": "dpkg-dev", "lintian": "lintian", "mmdebstrap": "mmdebstrap",
          "systemd-nspawn": "systemd-container", "nsenter": "util-linux", "packer": "packer"}


def need(*tools: str) -> None:
    """Skip (with the apt package to install) when a tool is missing."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install {APT_OF.get(tool, tool)}; scripts/setup does it)")


def need_root() -> None:
    """Skip when not root: mmdebstrap --mode=root, chroot and systemd-nspawn need it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mmdebstrap --mode=root, chroot, systemd-nspawn); CI runs as root")


def run(argv: list[str], timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    """Run a command, text output captured; on failure the assertion shows its output."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # noqa: S603
    if check:
        assert r.returncode == 0, f"{argv} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, built once per session with packaging/build-deb."""
    need("dpkg-deb")
    out = tmp_path_factory.mktemp("deb")
    env = {**os.environ, "PIP": str(Path(sys.executable).with_name("pip"))}
    r = run([str(BUILD_DEB), str(out)], timeout=900, env=env)
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == out, r.stdout
    return path


@pytest.fixture(scope="session")
def base_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh Debian 12 root as a tarball, made once per session (about 20-80 s).

    ``HERD_SHIP_BASE_TARBALL`` names a tarball to reuse instead (made by the same command).
    """
    given = os.environ.get("HERD_SHIP_BASE_TARBALL")
    if given:
        return Path(given)
    need_root()
    need("mmdebstrap")
    out = tmp_path_factory.mktemp("base") / f"debian-{SUITE}.tar"
    run(["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={ROOT_PACKAGES}", SUITE, str(out), MIRROR],
        timeout=900)
    return out


def make_root(tarball: Path, deb: Path, dest: Path, toolchain_etcd: Path | None = None) -> Path:
    """Unpack the base root into ``dest`` and install the .deb with dpkg inside it (chroot).

    ``toolchain_etcd``: also put a real etcd at /usr/local/bin/etcd, as the AMI provisioning does.
    """
    need_root()
    dest.mkdir(parents=True)
    run(["tar", "-C", str(dest), "-xf", str(tarball)], timeout=300)
    shutil.copy(deb, dest / "tmp" / deb.name)
    run(["chroot", str(dest), "dpkg", "-i", f"/tmp/{deb.name}"], timeout=300)
    (dest / "tmp" / deb.name).unlink()
    if toolchain_etcd is not None:
        shutil.copy(toolchain_etcd, dest / "usr/local/bin/etcd")
        (dest / "usr/local/bin/etcd").chmod(0o755)
    return dest


@pytest.fixture(scope="module")
def baked_root(base_tarball: Path, deb: Path, tmp_path_factory: pytest.TempPathFactory, toolchain) -> Path:
    """A Debian 12 root with the .deb installed (one per test module); tests only read it."""
    return make_root(base_tarball, deb, tmp_path_factory.mktemp("baked") / "root", toolchain.etcd)
