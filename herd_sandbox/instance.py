"""A sandbox instance: one simulated EC2 instance on this machine.

Each has its own host root (``--root``), its private 127.x address and IMDS from the local AWS
region, a bin directory of stand-ins placed first on PATH (``systemctl``, which runs real etcd and
the k3s stand-in; ``modprobe``, which writes to the fake /proc), and the environment an agent
process on that instance gets (AWS endpoint and the instance's own credentials, IMDS endpoint,
``HERD_AGENT_ROOT``). The agent itself runs as real processes (``python -m herd_agent``) through
exactly the code paths it uses on EC2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from herd_agent.config.schema import DEFAULT_SYSCTLS
from herd_agent.host.fsroot import HostRoot

BASE_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def _shim(path: Path, module: str) -> None:
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
    path.chmod(0o755)


class SandboxInstance:
    """One instance's root, shims and environment.

    Args:
        instance_id: the EC2 instance id (from the sandbox region).
        workdir: directory for this instance (root, bin, logs).
        env: base environment (``Region.env(instance_id)`` plus the sandbox's own variables).
        extra_path: directories put after the shims on PATH (e.g. the toolchain's bin).
    """

    def __init__(self, instance_id: str, workdir: Path, env: dict[str, str], extra_path: list[str] | None = None):
        self.instance_id = instance_id
        self.workdir = Path(workdir)
        self.root_dir = self.workdir / "root"
        self.bindir = self.workdir / "bin"
        self.root = HostRoot(self.root_dir)
        self._base_env = dict(env)
        self._extra_path = list(extra_path or [])
        self._spawned: list[subprocess.Popen[bytes]] = []
        self.dead = False

    def prepare(self) -> SandboxInstance:
        """Lay out a fresh host: /etc/hosts, a fake /proc (sysctls at kernel defaults, overlay
        loaded), /etc/herd-agent, and the stand-in shims."""
        self.bindir.mkdir(parents=True, exist_ok=True)
        _shim(self.bindir / "systemctl", "herd_sandbox.systemctl")
        _shim(self.bindir / "modprobe", "herd_sandbox.modprobe")
        # k3s-killall.sh stops k3s and its pods; here: stop the k3s stand-in units.
        killall = self.bindir / "k3s-killall.sh"
        killall.write_text(f'#!/bin/sh\nexec "{self.bindir / "systemctl"}" stop k3s.service k3s-agent.service\n')
        killall.chmod(0o755)
        self.root.makedirs("/etc/herd-agent")
        if not self.root.exists("/etc/hosts"):
            self.root.write("/etc/hosts", BASE_HOSTS, mode=0o644)
        proc = self.root.path("/proc")
        if not proc.exists():
            proc.mkdir(parents=True)
            (proc / "modules").write_text("overlay 151552 0 - Live 0x0000000000000000\n")
            for key in DEFAULT_SYSCTLS:
                if key.startswith("net.bridge."):
                    continue  # appear when br_netfilter is loaded
                p = proc / "sys" / key.replace(".", "/")
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("0\n")
        return self

    def env(self) -> dict[str, str]:
        """Environment of an agent process on this instance."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HERD_", "NOTIFY_SOCKET"))}
        env.update(self._base_env)
        env["HERD_AGENT_ROOT"] = str(self.root_dir)
        env["PATH"] = os.pathsep.join([str(self.bindir), *self._extra_path, env.get("PATH", "/usr/bin:/bin")])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def write_config(self, text: str, name: str | None = None) -> None:
        """Write ``/etc/herd-agent/config.yaml`` (or ``config.d/<name>``) on this instance."""
        path = f"/etc/herd-agent/config.d/{name}" if name else "/etc/herd-agent/config.yaml"
        self.root.write(path, text, mode=0o644)

    def agent(self, *args: str, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``herd-agent ARGS`` on this instance as a real process and wait for it."""
        return subprocess.run(  # noqa: S603 - argv list
            [sys.executable, "-m", "herd_agent", *args], env={**self.env(), **(env or {})}, capture_output=True,
            text=True, timeout=timeout,
        )

    def spawn_agent(self, *args: str, log_name: str = "agent.log",
                    env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``herd-agent ARGS`` in the background, output to ``<workdir>/<log_name>``.

        Args:
            env: extra environment variables for this process.
        """
        if self.dead:
            raise RuntimeError(f"instance {self.instance_id} is dead: nothing runs on it any more")
        log = open(self.workdir / log_name, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv list
                [sys.executable, "-m", "herd_agent", *args], env={**self.env(), **(env or {})}, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()
        self._spawned.append(proc)
        return proc

    def die(self) -> list[int]:
        """This instance dies now, as on a power loss, a kernel panic or EC2's hard stop: every
        process it runs — the units the systemctl stand-in started (etcd, k3s) and the agent
        processes spawned here — gets SIGKILL (its whole process group) at once. Nothing runs a
        leave, nothing is cleaned up; later :meth:`spawn_agent` calls refuse. Returns the pids
        killed. (The AWS side — the instance's EC2 state — is the region's business.)"""
        from herd_sandbox.systemctl import PID_DIR

        self.dead = True
        pids = [p.pid for p in self._spawned if p.poll() is None]
        pid_dir = self.root.path(PID_DIR)
        for pid_file in sorted(pid_dir.glob("*.pid")) if pid_dir.is_dir() else []:
            try:
                pids.append(int(pid_file.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                continue
        killed = []
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)  # started with start_new_session: pid == pgid
                killed.append(pid)
            except ProcessLookupError:
                continue
            except PermissionError:
                continue
        for proc in self._spawned:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return killed

    def begin_shutdown(self, target: str = "poweroff.target") -> None:
        """The machine starts shutting down: ``systemctl is-system-running`` answers ``stopping``
        and ``systemctl list-jobs`` shows a ``start`` job for ``target``, as during a real
        shutdown (systemd(1)). The agent's units are not stopped here; send them SIGTERM."""
        from herd_sandbox.systemctl import JOBS_FILE, SYSTEM_STATE_FILE

        self.root.write(SYSTEM_STATE_FILE, "stopping\n", mode=0o644)
        self.root.write(JOBS_FILE, f"{target} start waiting\n", mode=0o644)

    def systemctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the systemctl stand-in for this instance (e.g. ``stop k3s.service``)."""
        return subprocess.run(  # noqa: S603 - argv list
            [str(self.bindir / "systemctl"), *args], env=self.env(), capture_output=True, text=True, timeout=timeout,
        )

    def stop_units(self) -> None:
        """Stop every unit the stand-in started on this instance (k3s, etcd)."""
        from herd_sandbox.systemctl import PID_DIR

        pid_dir = self.root.path(PID_DIR)
        if not pid_dir.is_dir():
            return
        for pid_file in sorted(pid_dir.glob("*.pid")):
            self.systemctl("stop", pid_file.name[:-4], timeout=120)
