"""A sandbox instance: one simulated EC2 instance on this machine.

Each has its own host root (``--root``), its private 127.x address and IMDS from the local AWS
region, a bin directory of stand-ins placed first on PATH (``systemctl``, which runs real etcd and
the k3s stand-in; ``modprobe``, which writes to the fake /proc), and the environment an agent
process on that instance gets (AWS endpoint and the instance's own credentials, IMDS endpoint,
``HERD_AGENT_ROOT``). The agent itself runs as real processes (``python -m herd_agent``) through
exactly the code paths it uses on EC2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from herd_agent.config.schema import DEFAULT_SYSCTLS
from herd_agent.host.fsroot import HostRoot

BASE_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
INSTANCE_FILE = "instance.json"
"""``<workdir>/instance.json``: ``{"instance_id", "aws_endpoint_url", "aws_region"}`` (no secrets),
written by :meth:`SandboxInstance.prepare` for ``herd-sandbox instance die``."""
AGENT_PID_DIR = "run"
"""``<workdir>/run/agent-<pid>.pid``: one file per agent process :meth:`SandboxInstance.spawn_agent`
started (written atomically)."""
DEAD_MARKER = "dead"
"""``<workdir>/dead``: the instance died (:func:`die_now`); nothing may start on it any more."""


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _root_of(pid: int) -> str | None:
    """The ``HERD_AGENT_ROOT`` in process ``pid``'s environment (real path), or None (no such
    process, a zombie, another user's, or not an instance's process)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"HERD_AGENT_ROOT="):
            return os.path.realpath(entry[len(b"HERD_AGENT_ROOT="):].decode(errors="replace"))
    return None


def _ancestors() -> set[int]:
    """This process and its ancestors: never killed, even when started with an instance's env."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _recorded_pids(workdir: Path, root_dir: Path) -> set[int]:
    """Pids in the instance's pid files: its agents' (:data:`AGENT_PID_DIR`) and the units the
    systemctl stand-in started (``/run/herd-sandbox`` under the root)."""
    from herd_sandbox.systemctl import PID_DIR

    pids = set()
    files = [*(workdir / AGENT_PID_DIR).glob("*.pid"), *HostRoot(root_dir).path(PID_DIR).glob("*.pid")]
    for pid_file in files:
        try:
            pids.add(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def die_now(workdir: Path, settle_s: float = 10.0) -> list[int]:
    """The instance in ``workdir`` dies now, as on a power loss, a kernel panic or EC2's hard stop:
    every process it runs gets SIGKILL (its whole process group), nothing runs a leave, nothing is
    cleaned up, and :data:`DEAD_MARKER` is written so nothing starts on it again.

    "Its processes" are those whose environment names the instance's root in ``HERD_AGENT_ROOT``
    (the agent has it; the systemctl stand-in gives it to every unit, and children inherit it),
    found through the pid files (:data:`AGENT_PID_DIR`, the stand-in's ``/run/herd-sandbox``) and
    a scan of ``/proc``. A pid from a pid file whose process no longer names the root (the pid was
    reused) is left alone. The scan repeats until none is left, for ``settle_s`` seconds at most.
    ``SandboxInstance.die()`` and ``herd-sandbox instance die`` both come here.

    Args:
        workdir: the instance's directory (holds ``root/``).
        settle_s: seconds to keep killing processes that a dying one forked meanwhile.

    Returns:
        The pids killed, in the order killed.

    Raises:
        FileNotFoundError: ``workdir`` has no ``root/`` (not an instance's directory).
    """
    workdir = Path(workdir)
    root_dir = workdir / "root"
    if not root_dir.is_dir():
        raise FileNotFoundError(f"{workdir} is not a sandbox instance's directory (no root/ in it)")
    root = os.path.realpath(root_dir)
    _write_atomic(workdir / DEAD_MARKER, f"{time.time():.3f}\n")
    spare = _ancestors()
    killed: list[int] = []
    deadline = time.monotonic() + settle_s
    while True:
        candidates = _recorded_pids(workdir, root_dir)
        candidates.update(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
        mine = sorted(pid for pid in candidates - spare if _root_of(pid) == root)
        if not mine or time.monotonic() > deadline:
            return killed
        for pid in mine:
            try:
                if os.getpgid(pid) == pid:  # a group leader (started with start_new_session)
                    os.killpg(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            if pid not in killed:
                killed.append(pid)
        time.sleep(0.02)  # let the kernel tear the killed down before the next scan


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
        _write_atomic(self.workdir / INSTANCE_FILE, json.dumps(
            {"instance_id": self.instance_id, "aws_endpoint_url": self._base_env.get("AWS_ENDPOINT_URL"),
             "aws_region": self._base_env.get("AWS_REGION")}) + "\n")
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
        if self.dead or (self.workdir / DEAD_MARKER).exists():
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
        _write_atomic(self.workdir / AGENT_PID_DIR / f"agent-{proc.pid}.pid", f"{proc.pid}\n")
        return proc

    def die(self) -> list[int]:
        """This instance dies now (:func:`die_now`: every process it runs — the units the
        systemctl stand-in started, the agent processes, anything else started with its root —
        gets SIGKILL at once; no leave, no clean-up); later :meth:`spawn_agent` calls refuse.
        Returns the pids killed. (The AWS side — the instance's EC2 state — is the region's
        business: ``herd-sandbox instance die --terminate`` or ``Region.set_unhealthy``.)"""
        self.dead = True
        killed = die_now(self.workdir)
        for proc in self._spawned:
            try:
                proc.wait(timeout=10)  # reap our children
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
