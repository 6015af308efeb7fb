"""Applying the release set: in ``needs`` order, independent branches in parallel, idempotent.

One pass (:meth:`Applier.apply`):

1. ``helm repo add --force-update`` for each repository (local helm config only).
2. Recover declared releases stuck in pending-* (:mod:`herd_agent.leader.stuck`).
3. Schedule the DAG: a release starts as soon as every release it ``needs`` is deployed *and
   ready* (:mod:`herd_agent.leader.readiness`), at most ``parallelism`` at once; a release whose
   need failed is ``blocked`` (named in its status), never silently skipped.
4. Per release: ``installed: false`` → uninstall if present. Otherwise the values hash (chart,
   version, values files, inline values, ``set``, secrets; :func:`secrets.values_hash`) is
   compared with the ``herd.io/values-hash`` label of the deployed revision: equal → ``unchanged``
   (no helm write at all); different or absent → ``helm upgrade --install`` with the epoch and
   the hash as release labels. A failure is retried with capped exponential backoff (tenacity);
   "another operation is in progress" triggers stuck recovery first. Only a release with
   ``failurePolicy: reinstall`` is ever uninstalled and installed again, after its retries ran out.
5. The ``manifests`` (server-side apply), once every release is ready.

Every helm and API write passes the fence first; a :class:`~herd_agent.leader.fence.Deposed`
stops the whole pass at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from herd_agent.leader import manifests as manifests_mod
from herd_agent.leader import readiness, records, stuck
from herd_agent.leader.dag import order
from herd_agent.leader.fence import Deposed, Fence
from herd_agent.leader.helm import Helm, HelmError, UpgradeArgs
from herd_agent.leader.releases import Release, ReleaseSet, SecretRef
from herd_agent.leader.secrets import generated_values, values_files, values_hash
from herd_agent.leader.status import Reporter

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """A pass's result: ``states`` per release id (deployed/unchanged/failed/blocked/uninstalled),
    ``changed`` ids that helm wrote, ``recovered`` stuck releases, ``manifests`` applied, seconds."""

    states: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every release reached deployed/unchanged/uninstalled."""
        return all(s in ("deployed", "unchanged", "uninstalled") for s in self.states.values())


@dataclass
class Applier:
    """Applies one :class:`ReleaseSet`.

    Args:
        kube: lightkube client (records, readiness, manifests).
        helm: the helm binary.
        fence: the write guard.
        reporter: status/Event/metrics sink.
        work_dir: private directory for generated values files.
        resolve: ``resolve(SecretRef) -> str`` (reads AWS; see :mod:`herd_agent.leader.secrets`).
        parallelism: releases in flight at once.
        attempts: helm attempts per release per pass.
        backoff_max_s: cap of the backoff between attempts.
        stop: set when the leader stops (no new work starts).
    """

    kube: Any
    helm: Helm
    fence: Fence
    reporter: Reporter
    work_dir: Path
    resolve: Callable[[SecretRef], str]
    parallelism: int = 4
    attempts: int = 3
    backoff_max_s: float = 30.0
    stop: threading.Event = field(default_factory=threading.Event)
    poll_s: float = 1.0
    _in_flight: set[str] = field(default_factory=set)

    # -- the pass ----------------------------------------------------------------------------------

    def apply(self, rset: ReleaseSet) -> Outcome:
        """One full pass over ``rset`` (see the module docstring).

        Raises:
            Deposed: the Lease was lost; nothing more was written.
        """
        started = time.monotonic()
        out = Outcome()
        for repo in rset.repositories:
            if not repo.oci:
                self.helm.repo_add(repo.name, repo.url)
        out.recovered = self.recover_stuck(rset)
        self._schedule(rset, out)
        if rset.manifests:
            if out.ok:
                out.manifests = manifests_mod.apply_all(self.kube, self.fence, rset.manifests)
                self.reporter.set("manifests", "deployed", f"{len(out.manifests)} applied: {', '.join(out.manifests)}")
            else:
                self.reporter.set("manifests", "blocked", "not every release is ready")
        out.seconds = time.monotonic() - started
        self.reporter.apply_seconds = out.seconds
        self.reporter.write_metrics()
        return out

    def recover_stuck(self, rset: ReleaseSet) -> list[str]:
        """Recover every declared release stuck in pending-* that no live epoch owns."""
        done = []
        epoch = self.fence.epoch()
        for rel in rset.releases:
            revs = records.records(self.kube, rel.namespace, rel.name)
            rec = stuck.decide(revs, epoch.transitions if epoch else -1, self._in_flight)
            if rec is None or rec.action == "skip":
                continue

            def report(r: stuck.Recovery) -> None:
                self.reporter.set(r.release, "recovered", r.why, warning=True)

            stuck.recover(self.helm, self.fence, rec, report)
            done.append(rec.release)
        return done

    def _schedule(self, rset: ReleaseSet, out: Outcome) -> None:
        by_id = rset.by_id()
        order(rset.releases)  # validated again: a bad set never half-applies
        pending = [r.id for r in rset.releases]
        for rid in pending:
            out.states[rid] = "pending"
        futures: dict[Future[str], str] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.parallelism), thread_name_prefix="release") as pool:
            while pending or futures:
                for rid in list(pending):
                    rel = by_id[rid]
                    needs = [out.states[n] for n in rel.needs]
                    if any(s in ("failed", "blocked") for s in needs):
                        bad = [n for n in rel.needs if out.states[n] in ("failed", "blocked")]
                        out.states[rid] = "blocked"
                        self.reporter.set(rid, "blocked", f"needs {', '.join(bad)}, which did not become ready",
                                          warning=True)
                        pending.remove(rid)
                    elif all(s in ("deployed", "unchanged", "uninstalled") for s in needs):
                        if self.stop.is_set():
                            continue
                        pending.remove(rid)
                        out.states[rid] = "applying"
                        futures[pool.submit(self._one, rel, out)] = rid
                if not futures:
                    if self.stop.is_set():
                        raise Deposed("stopping: no new release is started")
                    if pending:  # cannot happen with a valid DAG; never spin
                        raise AssertionError(f"releases {pending} can never start")
                    break
                done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                for fut in done:
                    rid = futures.pop(fut)
                    try:
                        out.states[rid] = fut.result()
                    except Deposed:
                        self.stop.set()
                        for other in futures:
                            other.cancel()
                        raise
                    except Exception as exc:  # one release's failure never stops its siblings
                        out.states[rid] = "failed"
                        self.reporter.set(rid, "failed", str(exc), warning=True)
                    if out.states[rid] in ("deployed",):
                        out.changed.append(rid)

    # -- one release -------------------------------------------------------------------------------

    def desired(self, rel: Release) -> tuple[dict[str, Any], str]:
        """The generated values (secrets resolved) and the values hash of ``rel``."""
        generated = generated_values(rel, self.resolve)
        return generated, values_hash(rel, generated, lambda p: Path(p).read_bytes())

    def _one(self, rel: Release, out: Outcome) -> str:
        latest = records.latest(self.kube, rel.namespace, rel.name)
        if not rel.installed:
            if latest is None or latest.status == "uninstalled":
                self.reporter.set(rel.id, "uninstalled", "not installed", event=False)
                return "uninstalled"
            self.fence.check(f"helm uninstall {rel.id}")
            self.helm.uninstall(rel.name, rel.namespace, rel.timeout_s)
            self.reporter.set(rel.id, "uninstalled", "installed: false")
            return "uninstalled"
        generated, digest = self.desired(rel)
        if latest is not None and latest.status == "deployed" and latest.labels.get(records.HASH_LABEL) == digest:
            self.reporter.set(rel.id, "unchanged", f"revision {latest.revision} matches (hash {digest[:12]})",
                              event=False)
            self._wait_ready(rel)
            return "unchanged"
        self.reporter.set(rel.id, "applying", "new" if latest is None else f"hash differs from revision "
                          f"{latest.revision} ({latest.status})", event=False)
        self._in_flight.add(rel.id)
        try:
            self._upgrade_with_retries(rel, generated, digest)
        finally:
            self._in_flight.discard(rel.id)
        self._wait_ready(rel)
        self.reporter.set(rel.id, "deployed", f"hash {digest[:12]}")
        return "deployed"

    def _upgrade(self, rel: Release, generated: dict[str, Any], digest: str) -> None:
        with values_files(rel, generated, self.work_dir) as files:
            epoch = self.fence.check(f"helm upgrade --install {rel.id}")
            args = UpgradeArgs(rel.name, rel.namespace, rel.chart, rel.version, files,
                               {**self.fence.labels(epoch), records.HASH_LABEL: digest}, rel.wait, rel.timeout_s,
                               rel.atomic, rel.create_namespace)
            self.helm.upgrade(args)

    def _upgrade_with_retries(self, rel: Release, generated: dict[str, Any], digest: str) -> None:
        def attempt() -> None:
            try:
                self._upgrade(rel, generated, digest)
            except HelmError as exc:
                log.warning("release %s: helm failed (%s): %s", rel.id, exc.kind, exc)
                if exc.kind == "in-progress":
                    self._in_flight.discard(rel.id)
                    try:
                        self.recover_stuck(ReleaseSet(releases=(rel,)))
                    finally:
                        self._in_flight.add(rel.id)
                raise

        try:
            for round_ in Retrying(stop=stop_after_attempt(max(1, self.attempts)),
                                   wait=wait_exponential(multiplier=1, min=1, max=self.backoff_max_s),
                                   retry=retry_if_exception(lambda e: isinstance(e, HelmError)), reraise=True,
                                   sleep=self._sleep):
                with round_:
                    attempt()
        except HelmError as exc:
            if rel.failure_policy != "reinstall":
                raise
            log.warning("release %s: failurePolicy reinstall after %s", rel.id, exc)
            self.fence.check(f"helm uninstall {rel.id} (failurePolicy reinstall)")
            self.helm.uninstall(rel.name, rel.namespace, rel.timeout_s)
            self._upgrade(rel, generated, digest)

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Deposed("stopping during backoff")

    def _wait_ready(self, rel: Release) -> None:
        """Wait (polling, bounded by the release's timeout) until every object of the release is ready.

        Raises:
            HelmError: not ready in time (kind ``timeout``), with the reasons.
        """
        lookup = readiness.kube_lookup(self.kube)
        manifest = self.helm.manifest(rel.name, rel.namespace)
        deadline = time.monotonic() + rel.timeout_s
        while True:
            ok, reasons = readiness.release_ready(manifest, lookup, rel.namespace)
            if ok:
                return
            if time.monotonic() >= deadline:
                raise HelmError(f"{rel.id} not ready after {rel.timeout_s} s: {'; '.join(reasons[:5])}", "timeout")
            self.reporter.set(rel.id, "waiting", "; ".join(reasons[:3]), event=False)
            if self.stop.wait(self.poll_s):
                raise Deposed("stopping while waiting for readiness")
