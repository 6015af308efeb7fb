"""HostRoot: paths under the root, atomic writes with explicit modes, no-op when unchanged, bind mounts."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from herd_agent.errors import HostWriteError
from herd_agent.host.fsroot import HostRoot


def test_paths_map_under_the_root_and_cannot_escape(tmp_path: Path) -> None:
    root = HostRoot(tmp_path)
    assert root.path("/etc/hosts") == tmp_path / "etc" / "hosts"
    assert root.path("/") == tmp_path
    for bad in ("etc/hosts", "/etc/../../x", "/../x"):
        with pytest.raises(ValueError):
            root.path(bad)


def test_write_is_atomic_with_explicit_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    root = HostRoot(tmp_path)
    old = os.umask(0)
    try:
        assert root.write("/etc/rancher/k3s/token", "K10abc", mode=0o600) is True
    finally:
        os.umask(old)
    target = tmp_path / "etc/rancher/k3s/token"
    assert target.read_text() == "K10abc"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["token"]


def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    root = HostRoot(tmp_path)
    root.write("/etc/x.conf", "a=1\n", mode=0o644)
    st = (tmp_path / "etc/x.conf").stat()
    assert root.write("/etc/x.conf", "a=1\n", mode=0o644) is False
    st2 = (tmp_path / "etc/x.conf").stat()
    assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    # A mode change alone is a change.
    assert root.write("/etc/x.conf", "a=1\n", mode=0o640) is True
    assert (tmp_path / "etc/x.conf").stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_replacing_keeps_the_owner(tmp_path: Path) -> None:
    root = HostRoot(tmp_path)
    root.write("/etc/owned", "1", mode=0o644)
    os.chown(tmp_path / "etc/owned", 4321, 4322)
    root.write("/etc/owned", "2", mode=0o644)
    st = (tmp_path / "etc/owned").stat()
    assert (st.st_uid, st.st_gid) == (4321, 4322)


def test_rename_refused_falls_back_to_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = HostRoot(tmp_path)
    root.write("/etc/hosts", "127.0.0.1 localhost\n# a longer old tail that must be cut away\n", mode=0o644)
    inode = (tmp_path / "etc/hosts").stat().st_ino

    def busy(src: str, dst: str) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(os, "replace", busy)
    assert root.write("/etc/hosts", "127.0.0.1 localhost\n", mode=0o644) is True
    assert (tmp_path / "etc/hosts").read_text() == "127.0.0.1 localhost\n"
    assert (tmp_path / "etc/hosts").stat().st_ino == inode
    assert [p.name for p in (tmp_path / "etc").iterdir()] == ["hosts"]


def test_unwritable_target_raises_a_typed_error(tmp_path: Path) -> None:
    root = HostRoot(tmp_path)
    (tmp_path / "etc").write_text("not a directory")
    with pytest.raises(HostWriteError) as exc:
        root.write("/etc/hosts", "x", mode=0o644)
    assert "/etc/hosts" in str(exc.value)
    assert exc.value.exit_code == 73


def test_read_and_remove(tmp_path: Path) -> None:
    root = HostRoot(tmp_path)
    assert root.read_text("/nope", default="") == ""
    with pytest.raises(FileNotFoundError):
        root.read_text("/nope")
    root.write("/a/b", b"\x00\x01", mode=0o600)
    assert root.read_bytes("/a/b") == b"\x00\x01"
    assert root.remove("/a/b") is True
    assert root.remove("/a/b") is False


@pytest.mark.allow_subprocess
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_real_bind_mounted_file(tmp_path: Path) -> None:
    """A bind-mounted /etc/hosts (as in containers): rename answers EBUSY, the in-place path writes it."""
    host_file = tmp_path / "outside-hosts"
    host_file.write_text("old content that is longer than the new one\n")
    target = tmp_path / "root" / "etc" / "hosts"
    target.parent.mkdir(parents=True)
    target.write_text("placeholder\n")
    script = (
        "import sys; from herd_agent.host.fsroot import HostRoot; "
        f"print(HostRoot({str(tmp_path / 'root')!r}).write('/etc/hosts', 'new\\n', mode=0o644))"
    )
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()}")
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'mount --bind "{host_file}" "{target}" && exec "{sys.executable}" -c "$0"',
         script],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"
    # The bind mount's source (the "real" file) now holds the new content.
    assert host_file.read_text() == "new\n"
