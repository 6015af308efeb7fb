"""Kernel and systemd drop-ins for k3s: write, apply, read back.

Files (all under the host root, mode 0644, written only when changed):

- ``/etc/sysctl.d/90-herd-agent.conf``: ``kernel.sysctls`` (forwarding, bridge netfilter,
  inotify limits, … — see the schema defaults, from k3s' and Kubernetes' host requirements);
- ``/etc/modules-load.d/herd-agent.conf``: ``kernel.modules`` (``br_netfilter``, ``overlay``);
- ``/etc/systemd/system/k3s.service.d/90-herd-agent.conf`` and the same for ``k3s-agent.service``:
  limits, and an ``ExecStartPre`` that refreshes /etc/hosts before every k3s start (as the seed
  scripts did, but through ``herd-agent hosts sync``);
- ``/etc/systemd/logind.conf.d/90-herd-agent.conf``: ``InhibitDelayMaxSec`` so kubelet's graceful
  node shutdown (its ``shutdownGracePeriod``, set in the k3s config) gets the time it asks for.

Applying: modules not yet loaded (per ``/proc/modules``) are loaded with ``modprobe`` through the
runner; each sysctl is written to ``/proc/sys/<key with dots as slashes>`` as systemd-sysctl does,
then every value is read back and any drift reported. A sysctl whose ``/proc/sys`` file does not
exist (a module missing) is reported, not fatal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from herd_agent.config.loader import Config
from herd_agent.host import runner as runner_mod
from herd_agent.host.fsroot import HostRoot
from herd_agent.k3s.names import UNITS

log = logging.getLogger(__name__)

SYSCTL_FILE = "/etc/sysctl.d/90-herd-agent.conf"
MODULES_FILE = "/etc/modules-load.d/herd-agent.conf"
K3S_UNITS = UNITS
LOGIND_DROPIN = "/etc/systemd/logind.conf.d/90-herd-agent.conf"
HEADER = "# Written by herd-agent (kernel step); changes here are overwritten.\n"
HERD_AGENT_BIN = "/usr/bin/herd-agent"


def k3s_dropin_path(unit: str) -> str:
    """Host path of our drop-in for a k3s unit, e.g. ``/etc/systemd/system/k3s.service.d/90-herd-agent.conf``."""
    return f"/etc/systemd/system/{unit}.d/90-herd-agent.conf"


def sysctl_proc_path(key: str) -> str:
    """``net.ipv4.ip_forward`` → ``/proc/sys/net/ipv4/ip_forward`` (sysctl.d(5) key syntax)."""
    return "/proc/sys/" + key.replace(".", "/")


def render_files(cfg: Config, herd_agent_bin: str = HERD_AGENT_BIN) -> dict[str, str]:
    """Every drop-in's host path → content. Pure.

    A sysctl set to the empty string in the config is left out (how a default is switched off).
    """
    sysctls = {k: str(v) for k, v in cfg.get("kernel.sysctls").items() if str(v) != ""}
    files = {
        SYSCTL_FILE: HEADER + "".join(f"{k} = {v}\n" for k, v in sorted(sysctls.items())),
        MODULES_FILE: HEADER + "".join(f"{m}\n" for m in cfg.get("kernel.modules")),
        LOGIND_DROPIN: HEADER + f"[Login]\nInhibitDelayMaxSec={cfg.get('kernel.inhibit_delay_max_s')}\n",
    }
    unit = (
        HEADER
        + "[Service]\n"
        + "LimitNOFILE=1048576\nLimitNPROC=infinity\nLimitCORE=infinity\nTasksMax=infinity\n"
        + "# Point the control-plane endpoint in /etc/hosts at a healthy control plane before k3s starts;\n"
        + "# '-': a failed refresh must not keep k3s down (the last good block stays).\n"
        + f"ExecStartPre=-{herd_agent_bin} hosts sync\n"
    )
    for name in K3S_UNITS:
        files[k3s_dropin_path(name)] = unit
    return files


@dataclass
class KernelReport:
    """What :func:`apply` did and found.

    Attributes:
        written: host paths rewritten (empty on a second run).
        loaded: modules loaded with modprobe.
        drift: sysctl key → (wanted, read back) for values that do not hold.
        missing: sysctl keys with no /proc/sys file.
    """

    written: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    drift: dict[str, tuple[str, str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    would_set: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing drifted and nothing is missing."""
        return not self.drift and not self.missing


def _norm(value: str) -> str:
    return " ".join(value.split())


def loaded_modules(root: HostRoot) -> set[str]:
    """Names in ``/proc/modules`` under the root (empty when the file is absent)."""
    text = root.read_text("/proc/modules", default="")
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def apply(
    root: HostRoot,
    cfg: Config,
    *,
    herd_agent_bin: str = HERD_AGENT_BIN,
    timeout_s: float = 30,
    dry_run: bool = False,
    run: Callable[..., object] | None = None,
) -> KernelReport:
    """Write the drop-ins, load the modules, apply and verify the sysctls.

    Args:
        root: host root (tests use a fake ``/proc`` under it).
        cfg: effective config (``kernel.*``).
        timeout_s: per-command timeout for modprobe / systemctl, seconds.
        dry_run: write no /proc value; list them in ``report.would_set`` (plan mode; pair it with
            a recording root and runner).
        run: ``run(argv, timeout=…)``; default the process-wide runner.

    Returns:
        A :class:`KernelReport`; drift is reported, not raised (the caller decides).

    Raises:
        HostWriteError: a drop-in could not be written.
        CommandError: modprobe or ``systemctl daemon-reload`` failed.
    """
    report = KernelReport()
    for path, content in render_files(cfg, herd_agent_bin).items():
        if root.write(path, content, mode=0o644):
            report.written.append(path)
    run = run or runner_mod.get_runner().run
    if any(p.startswith("/etc/systemd/system/") for p in report.written):
        run(["systemctl", "daemon-reload"], timeout=timeout_s)
    if LOGIND_DROPIN in report.written:
        # logind reads InhibitDelayMaxSec at start; a restart is safe and keeps sessions.
        run(["systemctl", "try-restart", "systemd-logind.service"], timeout=timeout_s)
    have = loaded_modules(root)
    for module in cfg.get("kernel.modules"):
        if module not in have:
            run(["modprobe", module], timeout=timeout_s)
            report.loaded.append(module)
    for key, value in sorted(cfg.get("kernel.sysctls").items()):
        want = str(value)
        if want == "":
            continue
        proc = root.path(sysctl_proc_path(key))
        try:
            current = proc.read_text()
        except FileNotFoundError:
            report.missing.append(key)
            continue
        if _norm(current) != _norm(want) and dry_run:
            report.would_set[key] = want
            continue
        if _norm(current) != _norm(want):
            try:
                fd = os.open(proc, os.O_WRONLY)
                try:
                    os.write(fd, want.encode() + b"\n")
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("sysctl %s: cannot write %r: %s", key, want, exc.strerror)
        got = proc.read_text()
        if _norm(got) != _norm(want):
            report.drift[key] = (want, _norm(got))
    for key, (want, got) in report.drift.items():
        log.warning("sysctl drift: %s wanted %s, reads %s", key, want, got)
    for key in report.missing:
        log.warning("sysctl %s: no %s (is its module loaded?)", key, sysctl_proc_path(key))
    return report
