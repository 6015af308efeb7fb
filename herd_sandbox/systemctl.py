"""A ``systemctl`` stand-in for sandbox instances: real processes for known units, per host root.

The agent always runs ``systemctl start <unit>`` through its runner. In the sandbox a test puts
a shim named ``systemctl`` first on the runner's PATH (:func:`write_shim`) and sets
``HERD_AGENT_ROOT`` to the instance's root; the shim runs ``python -m herd_sandbox.systemctl``,
which looks the unit up in :data:`UNITS` and starts the real binary with the unit's
``EnvironmentFile`` read from under that root. The agent's code path is the production one.

Supported verbs (subset of systemctl(1), same exit codes):

- ``start UNIT``: start unless running; waits, like ``Type=notify``, until the unit's ready line
  appears in its log (exit 0), the process exits (exit 1, log tail on stderr) or the start
  timeout passes (exit 1). With ``--no-block`` it returns once the process runs, as systemctl
  returns once the job is queued.
- ``stop UNIT``: SIGTERM, wait up to the stop timeout, then SIGKILL; exit 0 when stopped.
- ``restart UNIT``; ``kill [-s SIG | --signal=SIG] UNIT`` (``-s KILL`` for crash tests);
- ``is-active UNIT``: prints ``active``/``inactive``, exits 0/3;
- ``daemon-reload``, ``reset-failed``: accepted, nothing to do;
- ``is-system-running``: the state in ``/run/herd-sandbox/system-state`` (default ``running``);
- ``list-jobs [--no-legend]``: the jobs queued in ``/run/herd-sandbox/jobs`` (one ``UNIT TYPE
  STATE`` per line, e.g. ``shutdown.target start waiting``), printed as systemctl prints them
  (``JOB UNIT TYPE STATE`` columns; with the legend, a header and ``N jobs listed.`` or
  ``No jobs running.``). :meth:`herd_sandbox.instance.SandboxInstance.begin_shutdown` queues them.

State lives under the root: ``/run/herd-sandbox/<unit>.pid`` and ``/var/log/herd-sandbox/<unit>.log``.

Units are generic: unit name → :class:`ExecUnit` in :data:`UNITS`. Other sandbox parts (the k3s
stand-ins) add theirs with :func:`register` in a module named in ``HERD_SANDBOX_UNIT_MODULES``
(comma-separated; imported by :func:`main` before it dispatches). A unit implemented in Python is
an ``ExecUnit`` whose binary is ``sys.executable`` with ``args=("-m", "their.module")``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from herd_agent.host.fsroot import HostRoot
from herd_agent.host.runner import Result, Runner

PID_DIR = "/run/herd-sandbox"
LOG_DIR = "/var/log/herd-sandbox"
EXIT_INACTIVE = 3  # systemctl is-active: "program is not running" (LSB)
EXIT_NO_UNIT = 5  # systemctl: unit not found
SYSTEM_STATE_FILE = "/run/herd-sandbox/system-state"
JOBS_FILE = "/run/herd-sandbox/jobs"
# Host services the agent may restart that the sandbox does not model (restarting them is a no-op).
HOST_UNITS = frozenset({"systemd-logind.service"})


@dataclass(frozen=True)
class ExecUnit:
    """How the stand-in runs one unit.

    Attributes:
        name: unit name, e.g. ``herd-etcd.service``.
        binary: program name looked up on PATH (``binary_env`` may name an override variable).
        env_file: host path of the unit's ``EnvironmentFile`` (KEY=VALUE lines).
        path_vars: variables whose values are host paths, mapped under the root before exec.
        args: fixed arguments.
        ready_line: text whose appearance in the log means "started" (Type=notify's READY=1).
        start_timeout_s, stop_timeout_s: TimeoutStartSec / TimeoutStopSec.
        binary_env: environment variable that may hold the binary's full path.
    """

    name: str
    binary: str
    env_file: str
    path_vars: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    ready_line: str | None = None
    start_timeout_s: float = 90.0
    stop_timeout_s: float = 30.0
    binary_env: str | None = None
    drop_env_prefixes: tuple[str, ...] = field(default=())


UNITS: dict[str, ExecUnit] = {}


def register(unit: ExecUnit) -> None:
    """Make ``unit`` known to the stand-in (replaces one of the same name)."""
    UNITS[unit.name] = unit


register(ExecUnit(
    name="herd-etcd.service",
    binary="etcd",
    env_file="/etc/herd-agent/etcd.env",
    path_vars=("ETCD_DATA_DIR", "ETCD_WAL_DIR", "ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_TRUSTED_CA_FILE",
               "ETCD_PEER_CERT_FILE", "ETCD_PEER_KEY_FILE", "ETCD_PEER_TRUSTED_CA_FILE"),
    ready_line="ready to serve client requests",
    binary_env="HERD_SANDBOX_ETCD",
    drop_env_prefixes=("ETCD_",),
))


# The k3s stand-in (herd_sandbox/k3s.py) for server and agent units; real k3s units read
# the same optional EnvironmentFile=-/etc/systemd/system/<unit>.env.
for _unit, _mode in (("k3s.service", "server"), ("k3s-agent.service", "agent")):
    register(ExecUnit(
        name=_unit,
        binary=sys.executable,
        args=("-m", "herd_sandbox.k3s", _mode),
        env_file=f"/etc/systemd/system/{_unit}.env",
        ready_line="k3s is up and running",
        start_timeout_s=120.0,
        stop_timeout_s=30.0,
    ))


def load_unit_modules(environ: dict[str, str] | None = None) -> list[str]:
    """Import the modules named in ``HERD_SANDBOX_UNIT_MODULES`` (they call :func:`register`)."""
    import importlib

    names = [n.strip() for n in (environ or os.environ).get("HERD_SANDBOX_UNIT_MODULES", "").split(",") if n.strip()]
    for name in names:
        importlib.import_module(name)
    return names


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile reads them (comments, blank lines, quotes)."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has exited


class Systemctl:
    """The stand-in's verbs for one host root.

    Args:
        root: the instance's host root.
        environ: environment to look binaries up in (default ``os.environ``).
    """

    def __init__(self, root: HostRoot, environ: dict[str, str] | None = None) -> None:
        self.root = root
        self.environ = dict(os.environ if environ is None else environ)

    def _unit(self, name: str) -> ExecUnit:
        if name not in UNITS:
            raise KeyError(name)
        return UNITS[name]

    def pid_file(self, unit: str) -> Path:
        """Real path of the unit's pid file."""
        return self.root.path(f"{PID_DIR}/{unit}.pid")

    def log_file(self, unit: str) -> Path:
        """Real path of the unit's log (stdout and stderr)."""
        return self.root.path(f"{LOG_DIR}/{unit}.log")

    def pid(self, unit: str) -> int | None:
        """PID of the unit's running process, or None."""
        try:
            pid = int(self.pid_file(unit).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def is_active(self, unit: str) -> bool:
        """True when the unit's process runs."""
        return self.pid(unit) is not None

    def start(self, unit: str, wait: bool = True) -> tuple[bool, str]:
        """Start the unit; ``(ok, message)``. See the module doc for the readiness wait; with
        ``wait=False`` (``systemctl start --no-block``) return once the process runs."""
        spec = self._unit(unit)
        if self.is_active(unit):
            return True, ""
        env_text = self.root.read_text(spec.env_file, default="")
        unit_env = parse_env_file(env_text)
        for var in spec.path_vars:
            if unit_env.get(var, "").startswith("/"):
                unit_env[var] = str(self.root.path(unit_env[var]))
        binary = (self.environ.get(spec.binary_env) if spec.binary_env else None) or shutil.which(
            spec.binary, path=self.environ.get("PATH"))
        if not binary:
            return False, f"{spec.binary}: not found on PATH"
        env = {k: v for k, v in self.environ.items() if not k.startswith(spec.drop_env_prefixes or ("\0",))}
        env.update(unit_env)
        env["HERD_AGENT_ROOT"] = str(self.root.root)  # stand-ins written in Python find their instance
        log_path = self.log_file(unit)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log_fh:
            proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                [binary, *spec.args], env=env, stdin=subprocess.DEVNULL, stdout=log_fh,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        # whole or not at all: `herd-sandbox instance die` may read it at any moment
        self.root.write(f"{PID_DIR}/{unit}.pid", f"{proc.pid}\n", mode=0o644, only_if_changed=False)
        if spec.ready_line is None or not wait:
            return True, ""
        deadline = time.monotonic() + spec.start_timeout_s
        while time.monotonic() < deadline:
            with open(log_path, "rb") as fh:
                fh.seek(offset)
                if spec.ready_line.encode() in fh.read():
                    return True, ""
            if proc.poll() is not None:
                return False, f"{unit}: process exited {proc.returncode}\n{self._tail(log_path, offset)}"
            time.sleep(0.02)  # polling a log file written by another process
        return False, f"{unit}: not ready after {spec.start_timeout_s:.0f}s\n{self._tail(log_path, offset)}"

    @staticmethod
    def _tail(path: Path, offset: int, lines: int = 15) -> str:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return "\n".join(fh.read().decode("utf-8", "replace").splitlines()[-lines:])

    def kill(self, unit: str, sig: int = signal.SIGTERM, wait_s: float = 0.0) -> bool:
        """Send ``sig`` to the unit's process (group); with ``wait_s``, wait that long for it to end.

        Returns:
            True when the process is gone (or was not running) at return.
        """
        self._unit(unit)
        pid = self.pid(unit)
        if pid is None:
            return True
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)  # waiting for a process that is not our child
        return True

    def stop(self, unit: str) -> bool:
        """SIGTERM, wait the stop timeout, then SIGKILL; True when stopped."""
        spec = self._unit(unit)
        if not self.kill(unit, signal.SIGTERM, spec.stop_timeout_s):
            self.kill(unit, signal.SIGKILL, 10.0)
        stopped = not self.is_active(unit)
        if stopped:
            self.pid_file(unit).unlink(missing_ok=True)
        return stopped


def _signal_of(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        return int(name)
    return int(getattr(signal, name if name.startswith("SIG") else f"SIG{name}"))


def _list_jobs(root: HostRoot, legend: bool, out: Callable[[str], None]) -> int:
    jobs = [line.split()[:3] for line in root.read_text(JOBS_FILE, default="").splitlines() if len(line.split()) >= 3]
    if not jobs:
        if legend:
            out("No jobs running.")
        return 0
    width = max(20, *(len(j[0]) for j in jobs))
    if legend:
        out(f"{'JOB':>3} {'UNIT':<{width}} {'TYPE':<8} STATE")
    for number, (unit, job_type, state) in enumerate(jobs, 1):
        out(f"{number:>3} {unit:<{width}} {job_type:<8} {state}")
    if legend:
        out("")
        out(f"{len(jobs)} jobs listed.")
    return 0


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    """Entry point: ``[--root DIR] VERB [OPTIONS] UNIT``; returns systemctl's exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    root_dir = os.environ.get("HERD_AGENT_ROOT", "/")
    sig = signal.SIGTERM
    no_block = False
    legend = True
    rest: list[str] = []
    it = iter(args)
    for a in it:
        if a == "--root":
            root_dir = next(it)
        elif a.startswith("--root="):
            root_dir = a.split("=", 1)[1]
        elif a in ("-s", "--signal"):
            sig = _signal_of(next(it))
        elif a.startswith("--signal="):
            sig = _signal_of(a.split("=", 1)[1])
        elif a == "--no-block":
            no_block = True
        elif a == "--no-legend":
            legend = False
        elif a in ("--quiet", "-q", "--no-pager"):
            continue
        else:
            rest.append(a)
    if not rest:
        print("usage: systemctl [--root DIR] VERB [UNIT...]", file=sys.stderr)
        return 1
    verb, units = rest[0], rest[1:]
    load_unit_modules()
    ctl = Systemctl(HostRoot(root_dir))
    if verb in ("daemon-reload", "reset-failed"):
        return 0
    if verb == "list-jobs":
        return _list_jobs(ctl.root, legend, out)
    if verb == "is-system-running":
        # The instance's system state (running, stopping, ...) as systemctl prints it; the
        # sandbox sets "stopping" in /run/herd-sandbox/system-state to model a shutdown.
        state = ctl.root.read_text(SYSTEM_STATE_FILE, default="running\n").strip() or "running"
        out(state)
        return 0 if state == "running" else 1
    status = 0
    for unit in units:
        if unit in HOST_UNITS and verb in ("try-restart", "restart", "reload", "try-reload-or-restart"):
            continue  # a host service the sandbox does not model; nothing to restart
        if unit not in UNITS:
            print(f"Unit {unit} not found.", file=sys.stderr)
            return EXIT_NO_UNIT
        if verb in ("enable", "disable"):
            marker = f"/etc/systemd/system/multi-user.target.wants/{unit}"
            if verb == "enable":
                ctl.root.write(marker, f"{unit}\n", mode=0o644)
            else:
                ctl.root.remove(marker)
            continue
        if verb == "try-restart":
            if ctl.is_active(unit):
                ctl.stop(unit)
                ok, msg = ctl.start(unit)
                if not ok:
                    print(f"Job for {unit} failed. {msg}", file=sys.stderr)
                    status = 1
            continue
        if verb == "start":
            ok, msg = ctl.start(unit, wait=not no_block)
        elif verb == "stop":
            ok, msg = ctl.stop(unit), ""
        elif verb == "restart":
            ctl.stop(unit)
            ok, msg = ctl.start(unit, wait=not no_block)
        elif verb == "kill":  # like systemctl: send the signal, do not wait for the process to end
            ctl.kill(unit, sig)
            ok, msg = True, ""
        elif verb == "is-active":
            active = ctl.is_active(unit)
            out("active" if active else "inactive")
            status = status or (0 if active else EXIT_INACTIVE)
            continue
        else:
            print(f"Unknown command verb {verb}.", file=sys.stderr)
            return 1
        if not ok:
            print(f"Job for {unit} failed. {msg}", file=sys.stderr)
            status = 1
    return status


def write_shim(bindir: str | os.PathLike[str], python: str | None = None) -> Path:
    """Write an executable ``systemctl`` into ``bindir`` that runs this stand-in; returns its path.

    Put ``bindir`` first on the PATH the agent's runner uses and set ``HERD_AGENT_ROOT``.
    """
    path = Path(bindir) / "systemctl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec "{python or sys.executable}" -m herd_sandbox.systemctl "$@"\n')
    path.chmod(0o755)
    return path


class SandboxRunner(Runner):
    """The agent's real runner for one sandbox instance: every command gets the instance's
    ``HERD_AGENT_ROOT`` and a PATH that starts with the shim directory, so ``systemctl`` is this
    stand-in acting on that instance's root. ``calls`` records every argv.

    Args:
        root: the instance's host root.
        path: the PATH for its commands (shim dir first, then where ``etcd`` lives).
    """

    def __init__(self, root: HostRoot, path: str, default_timeout: float = 120.0) -> None:
        super().__init__(default_timeout=default_timeout)
        self.env = {"HERD_AGENT_ROOT": str(root.root), "PATH": path}
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, **kwargs: object) -> Result:  # type: ignore[override]
        """:meth:`Runner.run` with the instance's environment merged under ``env``."""
        self.calls.append(list(argv))
        return super().run(argv, env={**self.env, **(env or {})}, **kwargs)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
