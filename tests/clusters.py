"""A small test helper: a cluster of sandbox instances in a region, joined by the real agent.

Workers hold what a real worker holds: the herd-agent ServiceAccount's token (shipped RBAC,
``packaging/rbac/herd-agent.yaml``, enforced by the emulator) read from SSM, and the API's CA —
never the emulator's admin kubeconfig. The cluster has a customer-managed KMS key (alias
``alias/herd/<name>``) that the agents write their tokens with (``kms.key_id``) and the
ServiceAccount token is stored under, so the roles' KMS statements are exercised. Every instance runs the agent with
``HERD_AGENT_TIME_FACTOR`` set to the region's time factor (:mod:`herd_agent.failpoints`), so the
agent's default heartbeat cadence meets the region's scaled hook timeouts.
"""

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
from herd_sandbox.scenario.cluster import create_cluster_key, publish_agent_token

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
        self.name = f"c{next(_n)}-{os.getpid() % 1000}"
        self.kms_key_arn = create_cluster_key(region, self.name)  # before the groups: their policies name it
        self.config = BASE_CONFIG + f"kms:\n  key_id: {self.kms_key_arn}\n" + config
        self.region.create_launch_template(f"{self.name}-lt")
        self.instances: dict[str, SandboxInstance] = {}
        self.watchers: dict[str, subprocess.Popen[bytes]] = {}
        self._token_parameter: str | None = None

    def agent_token_parameter(self) -> str:
        """The herd-agent ServiceAccount token's parameter, published once (:func:`publish_agent_token`)."""
        if self._token_parameter is None:
            self._token_parameter = publish_agent_token(self.kube, self.region.client("ssm"), self.name,
                                                        self.kms_key_arn)
        return self._token_parameter

    def group(self, role: str, size: int, *, terminate_hook: bool = False, heartbeat_timeout: int = 3600) -> list[str]:
        group = f"{self.name}-{role}"
        # 7200 s, the most AWS allows: room for a join on a loaded machine (72 s at time factor 0.01,
        # 720 s in the join tests' region).
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
                "HERD_AGENT_TIME_FACTOR": str(self.region.time_factor),
            }).prepare()
            config = self.config
            if role == "node":  # a worker's own credential: the ServiceAccount token, the shipped RBAC
                inst.root.makedirs("/etc/herd-agent/pki")
                shutil.copy(self.kube.ca_path, inst.root.path("/etc/herd-agent/pki/kube-ca.crt"))
                config += (f"kube:\n  token_ssm_parameter: {self.agent_token_parameter()}\n"
                           f"  server: {self.kube.url}\n  ca_file: /etc/herd-agent/pki/kube-ca.crt\n")
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
