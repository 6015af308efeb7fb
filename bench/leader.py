"""Leader mode figures, on the emulated API server with the real helm and real agent processes.

- ``leader_failover_s``: two real ``python -m herd_agent leader`` processes (each with its own API
  identity, the agent's default Lease timings 15 s / 10 s / 2 s); once the first leads and has
  applied the release set, its whole process group is killed -9; the figure is the time from the
  kill to the first successful non-Lease write of the other process, read from the API server's
  request log (every write there carries its user).
- ``releases_bootstrap_ratio``: the five test charts (tests/charts: CRD ← operator ← app, plus
  two independent ones) applied by the leader's DAG applier (parallelism 4, readiness checks
  included, helm through the fencing proxy) over the same charts applied one after another by a plain
  ``helm upgrade --install --wait`` loop in needs order, each on a fresh API server, same run.

Prints one JSON object. Run: ``.venv/bin/python bench/leader.py [--runs N] [--helm 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from herd_sandbox.kube.sandbox import KubeSandbox  # noqa: E402

CHARTS = REPO / "tests" / "charts"


def release_set() -> dict[str, Any]:
    """The five test charts with their needs."""
    return {"releases": [
        {"name": "widgets-crd", "namespace": "platform", "chart": str(CHARTS / "widgets-crd")},
        {"name": "widget-operator", "namespace": "platform", "chart": str(CHARTS / "widget-operator"),
         "needs": ["widgets-crd"]},
        {"name": "shop", "namespace": "apps", "chart": str(CHARTS / "shop"), "needs": ["platform/widget-operator"]},
        {"name": "metrics", "namespace": "monitoring", "chart": str(CHARTS / "metrics")},
        {"name": "argo-cd-crds", "namespace": "argocd", "chart": str(CHARTS / "argo-cd-crds")},
    ]}


def helm_env(work: Path) -> dict[str, str]:
    return {"HELM_CACHE_HOME": str(work / "cache"), "HELM_CONFIG_HOME": str(work / "config"),
            "HELM_DATA_HOME": str(work / "data"), "HOME": str(work), "PATH": os.environ.get("PATH", "/usr/bin")}


def dag_apply(helm: Path, work: Path) -> float:
    """Seconds the leader's applier takes for the release set on a fresh API server."""
    from lightkube import Client, KubeConfig

    from herd_agent.config.loader import load_config
    from herd_agent.host.fsroot import HostRoot
    from herd_agent.kube import http_client
    from herd_agent.leader.apply import Applier
    from herd_agent.leader.election import LeaderElector
    from herd_agent.leader.fence import Fence, FencedTransport
    from herd_agent.leader.helm import Helm
    from herd_agent.leader.proxy import FencingProxy
    from herd_agent.leader.releases import parse
    from herd_agent.leader.status import Reporter

    with KubeSandbox(time_factor=0.01) as kube:
        kube.add_node("node-a")
        client = Client(config=KubeConfig.from_file(str(kube.admin_kubeconfig)), trust_env=False)
        elector = LeaderElector(client, "kube-system", "bench", "bench")
        assert elector.try_acquire_or_renew()
        fence = Fence(elector.holding, elector.epoch, elector.remaining_s)
        root = HostRoot(work / "root")
        root.path("/").mkdir(parents=True, exist_ok=True)
        reporter = Reporter(client, fence, "kube-system", "bench", root, load_config(root), "bench")
        # helm through the fencing proxy, as `herd-agent leader` runs it
        single = KubeConfig.from_file(str(kube.admin_kubeconfig)).get()
        proxy = FencingProxy(http_client(single, lambda inner: FencedTransport(inner, fence.recheck)), root,
                             "/var/lib/herd-agent/leader")
        h = Helm(str(helm), proxy.start(), helm_env(work / "helm-dag"))
        _ = h.major
        applier = Applier(client, h, fence, reporter, work / "values", lambda ref: "", poll_s=0.2)
        rset = parse(release_set())
        renew = threading_renew(elector)
        try:
            out = applier.apply(rset)
        finally:
            renew()
            proxy.stop()
        assert out.ok, out.states
        return out.seconds


def threading_renew(elector: Any) -> Any:
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=elector.renew, args=(stop,), daemon=True)
    thread.start()

    def done() -> None:
        stop.set()
        thread.join()
    return done


def loop_apply(helm: Path, work: Path) -> float:
    """Seconds a plain ``helm upgrade --install --wait`` loop takes for the same set, in needs order."""
    major = int(subprocess.run([str(helm), "version", "--template", "{{.Version}}"], capture_output=True,  # noqa: S603
                               text=True, check=True).stdout.strip().lstrip("v").split(".")[0])
    wait = ["--wait"] if major < 4 else ["--wait=watcher"]
    with KubeSandbox(time_factor=0.01) as kube:
        kube.add_node("node-a")
        started = time.monotonic()
        for rel in release_set()["releases"]:
            subprocess.run([str(helm), "upgrade", "--install", rel["name"], rel["chart"], "--namespace",  # noqa: S603
                            rel["namespace"], "--create-namespace", *wait, "--timeout", "300s",
                            "--kubeconfig", str(kube.admin_kubeconfig)],
                           env=helm_env(work / "helm-loop"), check=True, capture_output=True)
        return time.monotonic() - started


def failover(helm: Path, work: Path) -> float:
    """Kill -9 of the leader → the other's first successful non-Lease write, seconds."""
    with KubeSandbox(time_factor=0.01) as kube:
        kube.add_node("node-a")
        procs = {}
        spec = {"releases": [release_set()["releases"][3]]}
        for name in ("a", "b"):
            root = work / f"root-{name}"
            (root / "etc" / "herd-agent").mkdir(parents=True, exist_ok=True)
            kc = kube.add_identity(f"leader-{name}", ["system:masters"])
            (root / "etc" / "herd-agent" / "kubeconfig").write_text(Path(kc).read_text())
            (root / "etc" / "herd-agent" / "config.yaml").write_text(yaml.safe_dump({
                "kube": {"kubeconfig": "/etc/herd-agent/kubeconfig"},
                "leader": {"helm": str(helm), "spec": spec}}))
            log = open(work / f"leader-{name}.log", "ab")  # noqa: SIM115
            procs[name] = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "herd_agent", "--root", str(root), "leader", "--identity", name],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HERD_", "NOTIFY"))})
        try:
            deadline = time.monotonic() + 120
            holder = None
            while time.monotonic() < deadline:
                lease = kube.find("Lease", "herd-agent-leader", "kube-system")
                holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
                secrets = kube.list("Secret", "monitoring", where=lambda s: s.get("type") == "helm.sh/release.v1")
                if holder and any(s["metadata"]["labels"]["status"] == "deployed" for s in secrets):
                    break
                time.sleep(0.1)
            else:
                raise SystemExit("no leader applied the release in 120 s")
            other = "b" if holder == "a" else "a"
            os.killpg(procs[holder].pid, signal.SIGKILL)
            t_kill = time.time()
            while time.time() - t_kill < 60:
                for e in list(kube.server.request_log):
                    if e["t"] > t_kill and e["user"] == f"leader-{other}" and e["code"] and e["code"] < 300 \
                            and "/leases/" not in e["path"]:
                        return e["t"] - t_kill
                time.sleep(0.05)
            raise SystemExit("the other candidate never wrote after the kill")
        finally:
            for p in procs.values():
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--helm", type=int, default=4, choices=(3, 4))
    args = ap.parse_args()
    helm = REPO / ".toolchain" / "bin" / f"helm{args.helm}"
    ratios, dags, loops, fails = [], [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="herd-bench-leader-") as tmp:
            work = Path(tmp)
            dag_s = dag_apply(helm, work)
            loop_s = loop_apply(helm, work)
            dags.append(dag_s)
            loops.append(loop_s)
            ratios.append(dag_s / loop_s)
            fails.append(failover(helm, work))
    print(json.dumps({"helm": args.helm, "releases_bootstrap_ratio": summary(ratios), "dag_apply_s": summary(dags),
                      "helm_loop_s": summary(loops), "leader_failover_s": summary(fails), "rounds": args.runs},
                     indent=1))


if __name__ == "__main__":
    main()
