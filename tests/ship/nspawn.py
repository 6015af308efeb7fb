"""A Debian root booted under ``systemd-nspawn --boot``: real systemd as PID 1, the host's network.

Commands run inside with ``nsenter`` into PID 1's namespaces (``--register=no`` leaves no machined
registration for ``machinectl``/``systemd-run -M``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil


class Machine:
    """One booted root.

    Args:
        root: the root directory.
        log: where nspawn's console output goes.
        binds: host directories bind-mounted read-only at the same path (``--bind-ro``).
    """

    def __init__(self, root: Path, log: Path, binds: list[str] | None = None) -> None:
        self.root, self.log, self.binds = root, log, list(binds or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None

    def boot(self, timeout: float = 120) -> None:
        """Start nspawn and wait until PID 1 (systemd) answers ``systemctl``."""
        argv = ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "-D", str(self.root), "--boot",
                *(f"--bind-ro={b}" for b in self.binds)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid1 = wait_for(self._find_pid1, timeout, "systemd as PID 1 in the container")
        wait_for(lambda: self.run("systemctl", "is-system-running", check=False).stdout.strip() not in ("", "offline"),
                 timeout, "systemd answering in the container")

    def _find_pid1(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            console = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"nspawn exited {self.proc.returncode}:\n{console}")
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                status = Path(f"/proc/{child.pid}/status").read_text()
                nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
                if nspid and nspid[-1] == "1" and len(nspid) > 1:
                    return child.pid
        except (psutil.Error, FileNotFoundError):
            return None
        return None

    def run(self, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all of PID 1's namespaces)."""
        assert self.pid1 is not None
        r = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", *argv],  # noqa: S603
                           capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"{argv} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        return r

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        """``journalctl`` inside the container (no pager)."""
        return self.run("journalctl", "--no-pager", "-o", "short-precise", *args, check=False).stdout

    def wait_stopped(self, timeout: float) -> int:
        """Wait for nspawn to exit (the machine powered off); returns its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Stop a machine that is still running (test cleanup)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def wait_for(probe: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll ``probe`` until it returns something truthy (returned); AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)  # polling a condition another process changes
