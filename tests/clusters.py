"""A small test helper: a cluster of sandbox instances in a region, joined by the real agent."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from herd_sandbox.aws.region import Hook, Region
from herd_sandbox.instance import SandboxInstance
from herd_sandbox.kube.sandbox import KubeSandbox

_n = itertools.count()

BASE_CONFIG = """\
discovery:
  attempts: 40
  backoff_max_s: 1
  health_timeout_s: 1
join:
  ready_timeout_s: 60
watch:
  poll_interval_s: 0.2
etcd:
  mode: external
  insecure_plain_http: true
"""


class SandboxCluster:
    """Groups of sandbox instances joined to one cluster, with helpers to run the agent on them.

    Args:
        region: a started sandbox region (shared across tests is fine: names are unique).
        kube: a started emulated API server (one per cluster).
        workdir: where instance roots go.
        toolchain: the test toolchain (real etcd).
        config: extra YAML appended to every instance's config.
    """

    def __init__(self, region: Region, kube: KubeSandbox, workdir: Path, toolchain: Any, config: str = "") -> None:
        self.region, self.kube, self.workdir, self.toolchain = region, kube, workdir, toolchain
        self.config = BASE_CONFIG + config
        self.name = f"c{next(_n)}-{os.getpid() % 1000}"
        self.region.create_launch_template(f"{self.name}-lt")
        self.instances: dict[str, SandboxInstance] = {}
        self.watchers: dict[str, subprocess.Popen[bytes]] = {}

    def group(self, role: str, size: int, *, terminate_hook: bool = False, heartbeat_timeout: int = 3600) -> list[str]:
        group = f"{self.name}-{role}"
        # 7200 s (the most AWS allows) is 72 s at time factor 0.01: room for a join on a loaded machine.
        hooks = [Hook("launch", "launching", heartbeat_timeout=7200, default_result="ABANDON")]
        if terminate_hook:
            hooks.append(Hook("terminate", "terminating", heartbeat_timeout=heartbeat_timeout,
                              default_result="CONTINUE"))
        self.region.create_group(group, f"{self.name}-lt", desired=size, max_size=size + 5, hooks=hooks,
                                 tags={"herd:cluster": self.name, "herd:role": role})
        ids = self.region.group_instances(group)
        for iid in ids:
            inst = SandboxInstance(iid, self.workdir / iid, {
                **self.region.env(iid),
                "HERD_SANDBOX_KUBECONFIG": str(self.kube.admin_kubeconfig),
                "HERD_SANDBOX_ETCD": str(self.toolchain.etcd),
            }).prepare()
            config = self.config
            if role == "node":  # a worker's own credential to evict pods (sandbox: the emulator's admin)
                shutil.copy(self.kube.admin_kubeconfig, inst.root.path("/etc/herd-agent/kubeconfig"))
                config += "kube:\n  kubeconfig: /etc/herd-agent/kubeconfig\n"
            inst.write_config(config)
            self.instances[iid] = inst
        return ids

    def join(self, iid: str) -> None:
        r = self.instances[iid].agent("join")
        assert r.returncode == 0, f"join on {iid} failed ({r.returncode}):\n{r.stderr[-3000:]}"

    def watch(self, iid: str, log_name: str = "watch.log", **env: str) -> subprocess.Popen[bytes]:
        proc = self.instances[iid].spawn_agent("watch", log_name=log_name, env=env)
        self.watchers[f"{iid}/{log_name}"] = proc
        return proc

    def log(self, iid: str, name: str = "watch.log") -> str:
        return (self.instances[iid].workdir / name).read_text(errors="replace")

    def close(self) -> None:
        for proc in self.watchers.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        for inst in self.instances.values():
            inst.stop_units()
