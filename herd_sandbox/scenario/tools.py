"""Where the real binaries a scenario runs come from, and the kubectl wrapper.

The scenario runs real etcd (for ``herd-etcd.service`` and k3s' embedded etcd) and the real
kubectl. ``scripts/setup`` installs both into ``.toolchain/bin`` of the checkout
(``scripts/toolchain.py``); an explicit path, an environment variable or ``PATH`` also work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The checkout this package runs from (``.toolchain/bin`` lives here after ``scripts/setup``)."""


class ToolMissing(RuntimeError):
    """A binary the scenario needs was not found; the message says how to install it."""


def _toolchain_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HERD_TOOLCHAIN_DIR"):
        dirs.append(Path(os.environ["HERD_TOOLCHAIN_DIR"]) / "bin")
    dirs.append(REPO / ".toolchain" / "bin")
    return dirs


def find_tool(name: str, explicit: str | None = None, env_var: str | None = None) -> Path:
    """The path of binary ``name``: ``explicit``, then ``$env_var``, then ``.toolchain/bin``, then PATH.

    Raises:
        ToolMissing: nowhere to be found.
    """
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    if env_var and os.environ.get(env_var):
        candidates.append(Path(os.environ[env_var]))
    candidates += [d / name for d in _toolchain_dirs()]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolMissing(f"{name} not found: run ./scripts/setup (installs it into .toolchain/bin) "
                      f"or pass its path")


@dataclass(frozen=True)
class Tools:
    """The binaries of one run: ``etcd`` and ``kubectl`` (absolute paths)."""

    etcd: Path
    kubectl: Path

    @classmethod
    def find(cls, etcd: str | None = None, kubectl: str | None = None) -> Tools:
        """Locate both (see :func:`find_tool`). Raises ToolMissing."""
        return cls(etcd=find_tool("etcd", etcd, "HERD_SANDBOX_ETCD"), kubectl=find_tool("kubectl", kubectl))


class Kubectl:
    """The real kubectl against the emulated API server.

    Args:
        binary: kubectl's path.
        kubeconfig: the admin kubeconfig of the emulated API server.
    """

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``kubectl ARGS``; the completed process (never raises on a non-zero exit)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env["KUBECONFIG"] = str(self.kubeconfig)
        return subprocess.run(  # noqa: S603 - argv list
            [str(self.binary), *args], env=env, capture_output=True, text=True, timeout=timeout)
