"""``herd-agent leader``: the election loop and the applier, as one long-running service.

Life of the process (``herd-agent-leader.service``, Type=notify, watchdog):

1. Load the config and the release set (a bad one is a config error, exit 78, before any write);
   ask helm its version; start the fencing proxy helm will talk through
   (:mod:`herd_agent.leader.proxy`); ``READY=1``.
2. Candidate: :meth:`LeaderElector.acquire`: a watch on the Lease, a try when the observed record
   expires on our clock (every jittered RetryPeriod while the watch is down).
3. Leader: a renew thread keeps the Lease; the applier runs a pass, then waits
   ``leader.resync_interval_s`` or until a config file changes, and runs the next.
4. Lost (RenewDeadline passed without a renew): the fence already refuses every write; any helm
   child still running is terminated, and the process exits 75 (EX_TEMPFAIL) so systemd restarts
   it as a new candidate — client-go's controllers exit on ``OnStoppedLeading`` the same way.
5. SIGTERM/SIGINT: stop starting work, terminate helm children, release the Lease (clear
   ``holderIdentity``), exit 0.

The watchdog is fed while the main loop turns (a hung API call in the loop starves it, and
systemd restarts us).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from herd_agent.config.loader import Config, config_files, load_config
from herd_agent.errors import ExitCode, HerdError
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.notify import Notifier
from herd_agent.leader import releases as releases_mod
from herd_agent.leader.apply import Applier
from herd_agent.leader.election import LeaderElector
from herd_agent.leader.fence import Deposed, Fence, FencedTransport
from herd_agent.leader.helm import Helm
from herd_agent.leader.proxy import FencingProxy
from herd_agent.leader.secrets import fetch_secret
from herd_agent.leader.status import Reporter

log = logging.getLogger(__name__)


def default_identity() -> str:
    """client-go's ``<hostname>_<uuid>`` shape: unique per process start."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:12]}"


def load_release_set(root: HostRoot, cfg: Config) -> releases_mod.ReleaseSet:
    """The declared release set (``leader.spec`` or ``leader.helmfile`` under the root).

    Raises:
        ConfigError: see :func:`herd_agent.leader.releases.load`.
    """
    helmfile = cfg.get("leader.helmfile")
    path = str(root.path(helmfile)) if helmfile else None
    return releases_mod.load(cfg.get("leader.spec") or {}, path)


def make_helm(root: HostRoot, cfg: Config) -> Helm:
    """helm with its cache/config/data homes under ``leader.work_dir`` and the role's kubeconfig
    (``plan releases`` and ``releases status`` read with it; :class:`LeaderService` points it at its
    fencing proxy instead)."""
    from herd_agent.kube import kubeconfig_path

    work = root.path(cfg.get("leader.work_dir"))
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(work, 0o700)
    env = {"HELM_CACHE_HOME": str(work / "helm-cache"), "HELM_CONFIG_HOME": str(work / "helm-config"),
           "HELM_DATA_HOME": str(work / "helm-data")}
    return Helm(cfg.get("leader.helm"), str(root.path(kubeconfig_path(cfg, control_plane=True))), env)


def terminate_children(grace_s: float = 5.0) -> list[int]:
    """SIGTERM our child processes (helm), SIGKILL those still there after ``grace_s``. Linux /proc."""
    me = os.getpid()

    def children() -> list[int]:
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.append(int(entry.name))
        return out

    pids = children()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while children() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


class LeaderService:
    """The whole service; :meth:`run` returns the exit code.

    Args:
        root: host root.
        cfg: the loaded config.
        identity: holder identity (default :func:`default_identity`).
        once: leave after the first full pass as leader (releasing the Lease); for bootstrap scripts.
        notifier: sd_notify sender.
    """

    def __init__(self, root: HostRoot, cfg: Config, *, identity: str | None = None, once: bool = False,
                 notifier: Notifier | None = None) -> None:
        from herd_agent import kube as kube_mod

        self.root = root
        self.cfg = cfg
        self.identity = identity or cfg.get("leader.identity") or default_identity()
        self.once = once
        self.notifier = notifier or Notifier()
        self.stop = threading.Event()
        self.kick = threading.Event()
        self._beat = time.monotonic()
        # every API write, ours and helm's, is checked against the fence again right before it is sent
        single = kube_mod.load_kubeconfig(root, cfg, control_plane=True)
        self.kube = kube_mod.fenced_client(single, self._fenced)
        self.proxy = FencingProxy(kube_mod.http_client(single, self._fenced), root, cfg.get("leader.work_dir"))
        self.rset = load_release_set(root, cfg)
        self.helm = make_helm(root, cfg)
        self.elector = LeaderElector(self.kube, cfg.get("leader.lease_namespace"), cfg.get("leader.lease_name"),
                                     self.identity, lease_duration_s=cfg.get("leader.lease_duration_s"),
                                     renew_deadline_s=cfg.get("leader.renew_deadline_s"),
                                     retry_period_s=cfg.get("leader.retry_period_s"))
        self.fence = Fence(self.elector.holding, self.elector.epoch, self.elector.remaining_s)
        self.reporter = Reporter(self.kube, self.fence, cfg.get("leader.lease_namespace"),
                                 cfg.get("leader.lease_name"), root, cfg, self.identity)
        self._config_stamp = self._stamp()

    def _fenced(self, inner: Any) -> FencedTransport:
        return FencedTransport(inner, lambda what: self.fence.recheck(what))

    def _stamp(self) -> tuple[tuple[str, float], ...]:
        files = [str(p) for p in config_files(self.root, None)]
        helmfile = self.cfg.get("leader.helmfile")
        if helmfile:
            files.append(str(self.root.path(helmfile)))
        out = []
        for f in files:
            try:
                out.append((f, os.stat(f).st_mtime))
            except OSError:
                out.append((f, -1.0))
        return tuple(out)

    def _reload(self) -> None:
        """Re-read the config and the release set; a bad new config keeps the old one (logged)."""
        try:
            cfg = load_config(self.root, role="control-plane")
            rset = load_release_set(self.root, cfg)
        except HerdError as exc:
            log.error("the changed config is invalid, keeping the previous release set: %s", exc)
            return
        self.cfg, self.rset = cfg, rset

    def _signals(self) -> None:
        def handle(signum: int, frame: Any) -> None:
            log.info("signal %d: stopping", signum)
            self.stop.set()
            self.kick.set()

        def hup(signum: int, frame: Any) -> None:
            self.kick.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handle)
            signal.signal(signal.SIGINT, handle)
            signal.signal(signal.SIGHUP, hup)

    def healthy(self) -> bool:
        """For the watchdog: the election loop ran a round (or the leader loop turned) in the last
        3 x LeaseDuration; a hung API call or a stuck loop stops the keep-alives."""
        last = max(self._beat, self.elector.last_round or 0.0)
        return time.monotonic() - last < 3 * self.elector.lease_duration_s

    def run(self) -> int:
        """Candidate → leader → (lost: exit 75 | stopped: release, exit 0)."""
        self._signals()
        _ = self.helm.major  # fail early (exit 80) when helm is missing
        self.helm.kubeconfig = self.proxy.start()  # helm reaches the API server only through the fence
        self.notifier.ready(f"candidate for lease {self.elector.namespace}/{self.elector.name} as {self.identity}")
        self.notifier.start_watchdog(self.healthy)
        self.reporter.write_metrics(leading=False)
        try:
            while not self.stop.is_set():
                self._beat = time.monotonic()
                if not self.elector.acquire(self.stop):
                    break
                code = self._lead()
                if code is not None:
                    return code
            return ExitCode.OK
        finally:
            self.notifier.stopping()
            self.notifier.stop_watchdog()
            self.proxy.stop()

    def _lead(self) -> int | None:
        epoch = self.elector.epoch()
        # The config may have changed while we were a candidate: lead with what is on disk now,
        # never with what was read at start (that would roll releases back to an old state).
        if self._stamp() != self._config_stamp:
            self._config_stamp = self._stamp()
            self._reload()
        self.notifier.status(f"leader of {self.elector.namespace}/{self.elector.name}, epoch {epoch}")
        log.info("leading as %s, epoch %s", self.identity, epoch)
        renew_stop = threading.Event()
        renewer = threading.Thread(target=self.elector.renew, args=(renew_stop,), name="lease-renew", daemon=True)
        renewer.start()
        work_dir = self.root.path(self.cfg.get("leader.work_dir")) / "values"
        applier = Applier(self.kube, self.helm, self.fence, self.reporter, work_dir,
                          lambda ref: fetch_secret(ref, os.environ.get("AWS_REGION") or None),
                          parallelism=self.cfg.get("leader.parallelism"), attempts=self.cfg.get("leader.attempts"),
                          backoff_max_s=self.cfg.get("leader.backoff_max_s"))
        result: dict[str, Any] = {}

        def work() -> None:
            while not self.stop.is_set() and self.fence.holding():
                try:
                    out = applier.apply(self.rset)
                    result["last"] = out
                    result.pop("error", None)
                    log.info("pass done in %.1f s: %s", out.seconds, out.states)
                except Deposed as exc:
                    log.warning("applier stopped: %s", exc)
                    return
                except Exception as exc:  # e.g. the API refused a read: the next pass retries
                    log.exception("apply pass failed; the next pass retries")
                    result["error"] = exc
                    if self.once:
                        return
                    if self.stop.wait(self.cfg.get("leader.backoff_max_s")):
                        return
                    continue
                if self.once:
                    return
                self._wait_for_change()
                if self._stamp() != self._config_stamp:
                    self._config_stamp = self._stamp()
                    self._reload()

        worker = threading.Thread(target=work, name="applier", daemon=True)
        worker.start()
        while worker.is_alive():
            self._beat = time.monotonic()
            if not self.elector.holding() or not renewer.is_alive():
                applier.stop.set()
                killed = terminate_children()
                log.error("lost the lease (epoch %s); stopped%s; exiting so systemd restarts a candidate", epoch,
                          f", terminated helm {killed}" if killed else "")
                self.reporter.write_metrics(leading=False)
                return int(ExitCode.TEMP_FAIL)
            if self.stop.is_set():
                applier.stop.set()
                killed = terminate_children()
                if killed:
                    log.warning("stopping: terminated helm %s (the next leader recovers the release)", killed)
                worker.join(timeout=10)
                break
            worker.join(timeout=0.5)
        renew_stop.set()
        renewer.join(timeout=self.elector.retry_period_s * 3)
        self.elector.release()
        self.reporter.write_metrics(leading=False)
        if self.once and "error" in result:
            return int(getattr(result["error"], "exit_code", ExitCode.SOFTWARE))
        if self.once:
            out = result.get("last")
            return int(ExitCode.OK if out is not None and out.ok else ExitCode.FAILURE)
        return int(ExitCode.OK) if self.stop.is_set() else None

    def _wait_for_change(self) -> None:
        deadline = time.monotonic() + self.cfg.get("leader.resync_interval_s")
        while time.monotonic() < deadline and not self.stop.is_set() and self.fence.holding():
            if self._stamp() != self._config_stamp:
                return
            if self.kick.wait(1.0):
                self.kick.clear()
                return
