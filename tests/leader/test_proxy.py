"""The fencing proxy between helm and the API server: the real helm 3 and 4 through it, a refused
write that changes nothing, and a leader frozen while its helm child goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from herd_agent.host.fsroot import HostRoot
from herd_agent.leader.election import LeaderElector
from herd_agent.leader.fence import Deposed, FencedTransport
from herd_agent.leader.proxy import FencingProxy

from .conftest import CHARTS, RENEWERS_STOP, agent_env, helm_env, lease_client
from .test_apply_helm import release_secrets

pytestmark = pytest.mark.allow_subprocess

BLUE = {"herd.io/test-pool": "blue"}


class Gate:
    """A fence the test opens and closes: ``recheck`` raises :class:`Deposed` while closed."""

    def __init__(self) -> None:
        self.open = True
        self.checked: list[str] = []

    def recheck(self, what: str) -> None:
        self.checked.append(what)
        if not self.open:
            raise Deposed(f"not the leader any more: refused {what}")


def start_proxy(kube_sandbox: Any, tmp_path: Path, gate: Gate) -> FencingProxy:
    from lightkube import KubeConfig

    from herd_agent.kube import http_client

    single = KubeConfig.from_file(str(kube_sandbox.admin_kubeconfig)).get()
    proxy = FencingProxy(http_client(single, lambda inner: FencedTransport(inner, gate.recheck)),
                         HostRoot(tmp_path / "root"), "/var/lib/herd-agent/leader")
    proxy.start()
    return proxy


def helm(binary: Path, kubeconfig: Path, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args, "--kubeconfig", str(kubeconfig)],  # noqa: S603
                          capture_output=True, text=True, timeout=180,
                          env={**helm_env(work), "PATH": os.environ.get("PATH", "")})


def shop_statuses(kube_sandbox: Any) -> list[str]:
    """The status of each of ``apps/shop``'s helm records, oldest revision first."""
    return [r["metadata"]["labels"]["status"] for r in release_secrets(kube_sandbox, "apps", "shop")]


def test_helm_installs_and_waits_through_the_proxy_and_a_refused_write_changes_nothing(
        kube_sandbox: Any, helm_binary: Path, tmp_path: Path) -> None:
    kube_sandbox.add_node("node-a")
    gate = Gate()
    proxy = start_proxy(kube_sandbox, tmp_path, gate)
    try:
        kubeconfig = proxy.root.path(proxy.kubeconfig)
        assert oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
        doc = yaml.safe_load(kubeconfig.read_text())
        assert doc["clusters"][0]["cluster"]["server"] == f"https://127.0.0.1:{proxy.port}"
        assert kube_sandbox.admin_kubeconfig.read_text() not in kubeconfig.read_text()

        wait = ["--wait"] if "3" in helm_binary.name else ["--wait=watcher"]  # helm 4 waits on watches
        out = helm(helm_binary, kubeconfig, tmp_path, "upgrade", "--install", "shop", str(CHARTS / "shop"),
                   "--namespace", "apps", "--create-namespace", *wait, "--timeout", "60s")
        assert out.returncode == 0, out.stderr[-2000:]
        assert shop_statuses(kube_sandbox) == ["deployed"]
        assert any(w.startswith("POST ") for w in gate.checked)  # helm's writes went through the fence
        assert kube_sandbox.find("Deployment", "shop", "apps") is not None

        gate.open = False
        writes_before = len(kube_sandbox.server.request_log)
        out = helm(helm_binary, kubeconfig, tmp_path, "upgrade", "shop", str(CHARTS / "shop"),
                   "--namespace", "apps", "--set", "message=late")
        assert out.returncode != 0
        assert "not the leader any more" in out.stderr, out.stderr[-2000:]
        assert kube_sandbox.server.request_log[writes_before:] == []  # nothing reached the API server
        assert shop_statuses(kube_sandbox) == ["deployed"]
        assert proxy.refused >= 1

        reads = helm(helm_binary, kubeconfig, tmp_path, "status", "shop", "--namespace", "apps", "-o", "json")
        assert reads.returncode == 0 and '"deployed"' in reads.stdout  # reads still pass

        ca = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["certificate-authority-data"]
        import base64
        import ssl

        context = ssl.create_default_context(cadata=base64.b64decode(ca).decode())
        with httpx2.Client(verify=context, trust_env=False) as raw:
            assert raw.get(f"https://127.0.0.1:{proxy.port}/api/v1/namespaces").status_code == 401
            stolen = raw.get(f"https://127.0.0.1:{proxy.port}/api/v1/namespaces",
                             headers={"Authorization": "Bearer not-the-token"})
            assert stolen.status_code == 401 and stolen.json()["kind"] == "Status"
    finally:
        proxy.stop()
    assert not kubeconfig.exists()
    assert list(kubeconfig.parent.iterdir()) == []  # the proxy's key was never left on disk


def unread_bytes(pid: int) -> bool:
    """True when a socket of ``pid`` holds bytes (or connections) it has not read: a frozen
    process's receive queues (``/proc/<pid>/net/tcp``: ``rx_queue``; on a listening socket, the
    accept queue)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inodes and int(cols[4].split(":")[1], 16) > 0:
                return True
    return False


def test_a_leader_frozen_mid_helm_wait_wakes_and_nothing_its_helm_sends_is_written(
        kube_sandbox: Any, helm_binary: Path, tmp_path: Path) -> None:
    """SIGSTOP the leader process only (its helm child runs on) while helm waits for a release;
    another candidate takes the Lease; then the release becomes ready, so helm goes on to write
    the release record. None of what helm sends after the takeover reaches the API server, and
    the woken leader exits 75."""
    kube_sandbox.add_node("node-a")
    root = tmp_path / "root"
    (root / "etc/herd-agent").mkdir(parents=True)
    identity = kube_sandbox.add_identity("leader-a", ["system:masters"])
    (root / "etc/herd-agent/kubeconfig").write_text(Path(identity).read_text())
    release = {"name": "shop", "namespace": "apps", "chart": str(CHARTS / "shop"), "wait": True, "timeout": 300,
               "values": [{"nodeSelector": BLUE}]}  # no blue node yet: helm waits
    (root / "etc/herd-agent/config.yaml").write_text(yaml.safe_dump({
        "kube": {"kubeconfig": "/etc/herd-agent/kubeconfig"},
        "leader": {"helm": str(helm_binary), "spec": {"releases": [release]}}}))
    log_file = (tmp_path / "leader.log").open("w")
    leader = subprocess.Popen([sys.executable, "-m", "herd_agent", "--root", str(root), "leader",  # noqa: S603
                               "--identity", "a"], stdout=log_file, stderr=subprocess.STDOUT,
                              env=agent_env())
    try:
        kube_sandbox.wait_for(lambda: shop_statuses(kube_sandbox) == ["pending-install"], timeout=120)
        os.kill(leader.pid, signal.SIGSTOP)  # the leader only: its helm child goes on waiting
        other = LeaderElector(lease_client(kube_sandbox.admin_kubeconfig), "kube-system", "herd-agent-leader", "b")
        assert other.acquire(threading.Event())
        t_new = time.time()
        threading.Thread(target=other.renew, args=(RENEWERS_STOP,), daemon=True).start()

        def blue(node: dict[str, Any]) -> None:
            node["metadata"].setdefault("labels", {}).update(BLUE)

        kube_sandbox.modify("Node", "node-a", blue)  # shop can run now: helm's wait ends, helm writes
        # Either helm's write landed (no fence between helm and the API) or what helm sends
        # waits, unread, at the frozen leader.
        kube_sandbox.wait_for(lambda: shop_statuses(kube_sandbox)[-1]
                              != "pending-install" or unread_bytes(leader.pid), timeout=120)
        os.kill(leader.pid, signal.SIGCONT)
        assert leader.wait(timeout=60) == 75
    finally:
        if leader.poll() is None:
            os.kill(leader.pid, signal.SIGCONT)
            leader.kill()
            leader.wait()
        log_file.close()
    late = [e for e in kube_sandbox.server.request_log if e["user"] == "leader-a" and e["t"] > t_new
            and e["code"] and e["code"] < 300]
    assert late == [], (tmp_path / "leader.log").read_text()[-3000:]
    assert shop_statuses(kube_sandbox) == ["pending-install"]
