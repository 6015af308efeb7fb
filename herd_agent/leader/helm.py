"""The real ``helm`` binary, through :mod:`herd_agent.host.runner` (argv lists, timeouts, redaction).

Helm 3 and Helm 4 differ (FIELD-NOTES "Leader mode"; ``helm upgrade --help`` of 3.17 and 4.x):

======================  ==========================  ==================================================
what                    Helm 3                      Helm 4
======================  ==========================  ==================================================
roll back on failure    ``--atomic``                ``--rollback-on-failure``
wait for readiness      ``--wait`` (legacy checks)  ``--wait=watcher`` (kstatus); omitted = hookOnly
release labels          ``--labels k=v`` (>= 3.13)  ``--labels k=v``
======================  ==========================  ==================================================

Both exit 1 on any error; there is no distinct code for "another operation is in progress", so
:func:`classify` reads stderr. ``helm list`` hides pending releases unless ``-a``.
Secrets never reach argv: values go in 0600 files (:mod:`herd_agent.leader.secrets`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from herd_agent.errors import CommandError, ExitCode, HerdError
from herd_agent.host import runner

PENDING = ("pending-install", "pending-upgrade", "pending-rollback")
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


class HelmError(HerdError):
    """A helm command failed; ``kind`` is what :func:`classify` made of its stderr."""

    exit_code = ExitCode.COMMAND

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def classify(stderr: str) -> str:
    """What a failed helm run means, from its stderr (helm has one exit code for every error).

    Returns:
        ``in-progress`` (another operation is in progress: a pending-* release), ``not-found``,
        ``timeout`` (a wait ran out), ``conflict`` (an object changed under helm / exists and is
        not ours), ``unreachable`` (API down), or ``failed``.
    """
    text = stderr.lower()
    if "another operation (install/upgrade/rollback) is in progress" in text:
        return "in-progress"
    if "release: not found" in text or "not found" in text and "release" in text:
        return "not-found"
    if "context deadline exceeded" in text or "timed out waiting" in text or "timeout" in text:
        return "timeout"
    if "the object has been modified" in text or "exists and cannot be imported" in text or "conflict" in text:
        return "conflict"
    if "connection refused" in text or "no such host" in text or "kubernetes cluster unreachable" in text:
        return "unreachable"
    return "failed"


def parse_version(text: str) -> tuple[int, int, int]:
    """``v3.17.2+gcc0bbbd`` → ``(3, 17, 2)``.

    Raises:
        HerdError: not a helm version (exit 65).
    """
    m = _VERSION.search(text or "")
    if not m:
        raise HerdError(f"helm version: cannot read a version from {text[:80]!r}", exit_code=ExitCode.DATA)
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@dataclass(frozen=True)
class UpgradeArgs:
    """What one ``helm upgrade --install`` needs (values already rendered into files)."""

    name: str
    namespace: str
    chart: str
    version: str | None
    values_files: tuple[str, ...]
    labels: dict[str, str]
    wait: bool
    timeout_s: int
    atomic: bool
    create_namespace: bool


def upgrade_argv(args: UpgradeArgs, major: int) -> list[str]:
    """The argv (after the global flags) of ``helm upgrade --install`` for helm ``major`` 3 or 4."""
    argv = ["upgrade", "--install", args.name, args.chart, "--namespace", args.namespace]
    if args.version and not args.chart.startswith("/"):
        argv += ["--version", args.version]
    for path in args.values_files:
        argv += ["--values", path]
    if args.labels:
        argv += ["--labels", ",".join(f"{k}={v}" for k, v in sorted(args.labels.items()))]
    if args.create_namespace:
        argv.append("--create-namespace")
    argv += ["--timeout", f"{args.timeout_s}s"]
    argv += wait_flags(args.wait or args.atomic, major)
    if args.atomic:
        argv.append("--atomic" if major < 4 else "--rollback-on-failure")
    return argv


def wait_flags(wait: bool, major: int) -> list[str]:
    """Helm 3: ``--wait`` or nothing. Helm 4: ``--wait=watcher`` (kstatus) or nothing (hookOnly)."""
    if not wait:
        return []
    return ["--wait"] if major < 4 else ["--wait=watcher"]


class Helm:
    """A helm binary bound to one kubeconfig.

    Args:
        binary: path or name of ``helm``.
        kubeconfig: kubeconfig path (on the host, already resolved under the root).
        env: extra environment (``HELM_CACHE_HOME`` & co. so helm writes under /var/lib/herd-agent).
        major: helm's major version; None: asked with ``helm version`` on first use.
    """

    def __init__(self, binary: str, kubeconfig: str | None, env: dict[str, str] | None = None,
                 major: int | None = None) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.env = dict(env or {})
        self._major = major

    @property
    def major(self) -> int:
        """3 or 4 (``helm version --template {{.Version}}``)."""
        if self._major is None:
            out = runner.run([self.binary, "version", "--template", "{{.Version}}"], timeout=30, env=self.env)
            self._major = parse_version(out.stdout)[0]
            if self._major not in (3, 4):
                raise HerdError(f"helm {out.stdout.strip()}: only helm 3 and 4 are supported",
                                exit_code=ExitCode.CONFIG)
        return self._major

    def _argv(self, *args: str) -> list[str]:
        glob = ["--kubeconfig", self.kubeconfig] if self.kubeconfig else []
        return [self.binary, *args, *glob]

    def run(self, *args: str, timeout: float = 120) -> str:
        """Run ``helm args...``; stdout on success.

        Raises:
            HelmError: non-zero exit or timeout, ``kind`` from :func:`classify`.
        """
        try:
            return runner.run(self._argv(*args), timeout=timeout, env=self.env).stdout
        except CommandError as exc:
            kind = "timeout" if exc.timed_out else classify(exc.stderr_tail)
            raise HelmError(f"helm {args[0]} failed ({kind}): {exc.stderr_tail or exc}", kind) from None

    # -- reads -------------------------------------------------------------------------------------

    def status(self, name: str, namespace: str) -> dict[str, Any] | None:
        """``helm status -o json`` (``info.status`` ∈ deployed, failed, pending-*, ...); None when absent."""
        try:
            return json.loads(self.run("status", name, "--namespace", namespace, "-o", "json", timeout=60))
        except HelmError as exc:
            if exc.kind == "not-found":
                return None
            raise

    def list_all(self) -> list[dict[str, Any]]:
        """``helm list -a -A -o json``: every release in every state (pending ones included)."""
        out = self.run("list", "-a", "-A", "--max", "0", "-o", "json", timeout=60)
        return json.loads(out or "[]") or []

    def manifest(self, name: str, namespace: str) -> str:
        """``helm get manifest``: the rendered objects of the current revision."""
        return self.run("get", "manifest", name, "--namespace", namespace, timeout=60)

    def template(self, args: UpgradeArgs) -> str:
        """``helm template`` of what an upgrade would render (no cluster writes; reads for lookup)."""
        argv = ["template", args.name, args.chart, "--namespace", args.namespace]
        if args.version and not args.chart.startswith("/"):
            argv += ["--version", args.version]
        for path in args.values_files:
            argv += ["--values", path]
        return self.run(*argv, timeout=120)

    # -- writes (callers fence them) -----------------------------------------------------------------

    def upgrade(self, args: UpgradeArgs) -> str:
        """``helm upgrade --install`` with this helm's flags."""
        return self.run(*upgrade_argv(args, self.major), timeout=args.timeout_s + 60)

    def rollback(self, name: str, namespace: str, revision: int, timeout_s: int = 300) -> str:
        """``helm rollback NAME REVISION`` (no wait: recovery must not hang on what the chart runs)."""
        return self.run("rollback", name, str(revision), "--namespace", namespace, "--timeout", f"{timeout_s}s",
                        timeout=timeout_s + 60)

    def uninstall(self, name: str, namespace: str, timeout_s: int = 300) -> str:
        """``helm uninstall``."""
        return self.run("uninstall", name, "--namespace", namespace, "--timeout", f"{timeout_s}s",
                        timeout=timeout_s + 60)

    def repo_add(self, name: str, url: str) -> str:
        """``helm repo add --force-update`` (idempotent)."""
        return self.run("repo", "add", name, url, "--force-update", timeout=120)
