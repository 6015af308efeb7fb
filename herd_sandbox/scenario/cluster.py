"""The local region with its machines: what a scenario runs against.

:class:`ScenarioCluster` starts the sandbox AWS region (moto + lifecycle hooks + one IMDS per
instance) and the emulated Kubernetes API, creates the control-plane and worker Auto Scaling
groups, and plays **EC2** for them: every instance a group launches is booted as a
:class:`~herd_sandbox.instance.SandboxInstance` (own root, address, IMDS, ``systemctl``
stand-in) that runs the real ``herd-agent join`` and then the long-running ``herd-agent watch``,
as the AMI's units would; every instance that reaches ``Terminated`` is powered off (its watcher
gets SIGTERM, as at an EC2 shutdown, then whatever still runs on it is stopped).

The groups come from one place, :meth:`ScenarioCluster.create_groups`: made by the sandbox
(a launch template and two groups with hooks, tagged ``herd:cluster``/``herd:role``, each role's
shipped policy attached), or, with ``stack``, by deploying a CloudFormation template (the example
stack, ``ami/cloudformation/cluster.yaml``) into the region with moto's CloudFormation: its
groups, launch templates, lifecycle hooks, KMS key and instance profiles are used as made, the
instances' calls checked against the policies of the roles the stack created, and each
instance's cloud-config user data applied as cloud-init's ``write_files`` would at boot.

Either way the cluster has a customer-managed KMS key (alias ``alias/herd/<cluster>``) that the
agents write their tokens and etcd CA with (``kms.key_id``), and the herd-agent ServiceAccount's
token is stored under it (:func:`publish_agent_token`), as docs/security.md tells an operator to.

Monitors feed the :class:`~herd_sandbox.scenario.timeline.Timeline`: Auto Scaling state
changes and lifecycle actions (:class:`AwsMonitor`), Node changes and the agent's Kubernetes
Events (:class:`KubeMonitor`), and every PodDisruptionBudget's healthy count at every Pod change
(:class:`PdbTracker`).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd_sandbox.scenario.timeline import Timeline
from herd_sandbox.scenario.tools import Kubectl, Tools

CONTROL_PLANE = "control-plane"
WORKER = "node"
WORKER_KUBECONFIG = "/etc/herd-agent/kubeconfig"
JOIN_STATE = "/var/lib/herd-agent/join.json"
LEAVE_JOURNAL = "/var/lib/herd-agent/leave.json"
LAUNCH_HOOK = "herd-launch"
TERMINATE_HOOK = "herd-terminate"


RBAC_FILE = Path(__file__).resolve().parents[2] / "packaging" / "rbac" / "herd-agent.yaml"
AGENT_TOKEN_PARAMETER = "/herd/{cluster}/agent-sa-token"
"""Where the workers' ServiceAccount token lives: under the cluster's prefix, which the shipped worker
IAM policy (``ServiceAccountToken``, enforced in the sandbox) lets workers read."""
WORKER_KUBE_CA = "/etc/herd-agent/pki/kube-ca.crt"


def create_cluster_key(region: Any, cluster: str) -> str:
    """CreateKey (symmetric, default key policy: IAM policies decide) + CreateAlias
    ``alias/herd/<cluster>``, as an operator would for a cluster; returns the key ARN."""
    from herd_sandbox.aws.iam import cluster_key_alias

    kms = region.client("kms")
    arn = str(kms.create_key(Description=f"herd-agent cluster {cluster}")["KeyMetadata"]["Arn"])
    kms.create_alias(AliasName=cluster_key_alias(cluster), TargetKeyId=arn)
    return arn


def publish_agent_token(kube: Any, ssm: Any, cluster: str, kms_key_id: str | None = None) -> str:
    """Apply ``packaging/rbac/herd-agent.yaml`` (objects not there yet) and store the herd-agent
    ServiceAccount's token as the SSM SecureString :data:`AGENT_TOKEN_PARAMETER` (under
    ``kms_key_id`` when given, else the AWS-managed key), as docs/security.md tells an operator to;
    returns the parameter name. The one owner of this set-up: scenarios and tests/clusters.py.

    Raises:
        FileNotFoundError: this checkout has no packaging/rbac/herd-agent.yaml.
    """
    import yaml

    for doc in yaml.safe_load_all(RBAC_FILE.read_text()):
        meta = doc["metadata"]
        if kube.find(doc["kind"], meta["name"], namespace=meta.get("namespace")) is None:
            kube.create(doc)
    kube.service_account_kubeconfig("kube-system", "herd-agent", rbac=True)
    token = kube.identity("system:serviceaccount:kube-system:herd-agent").token
    name = AGENT_TOKEN_PARAMETER.format(cluster=cluster)
    ssm.put_parameter(Name=name, Value=token, Type="SecureString", Overwrite=True,
                      **({"KeyId": kms_key_id} if kms_key_id else {}))
    return name


def cloud_init_write_files(user_data: bytes | None) -> list[tuple[str, str, int]]:
    """The files cloud-init's ``write_files`` module writes for this user data: ``(path, content,
    mode)``; [] when it is not ``#cloud-config``. Fields modelled (cloud-init docs, "Write
    Files"): ``path``, ``content``, ``permissions`` (octal string, default 0644).

    Raises:
        ValueError: an entry uses ``encoding``, ``append``, ``owner`` or ``defer`` (not modelled).
    """
    import yaml

    if not user_data or not user_data.startswith(b"#cloud-config"):
        return []
    out = []
    for entry in (yaml.safe_load(user_data) or {}).get("write_files") or []:
        extra = set(entry) - {"path", "content", "permissions"}
        if extra:
            raise ValueError(f"write_files entry {entry.get('path')}: {sorted(extra)} not modelled by the sandbox")
        out.append((str(entry["path"]), str(entry.get("content", "")), int(str(entry.get("permissions", "0644")), 8)))
    return out


def agent_config(etcd_mode: str, worker: bool, kube_server: str | None = None, cluster: str = "",
                 kms_key_id: str | None = None) -> str:
    """The ``/etc/herd-agent/config.yaml`` every sandbox instance gets (YAML text).

    Shorter retry and poll intervals than production so a run fits in minutes; the same code
    paths. Workers need a Kubernetes credential of their own to evict pods: with ``kube_server``
    the herd-agent ServiceAccount's token from SSM under the shipped RBAC, as a real worker has;
    without it (no packaging/rbac in this checkout) a copy of the emulator's admin kubeconfig.
    ``kms_key_id``: the cluster's key the agent writes with (None when the stack's user data says it).
    """
    text = (
        "discovery:\n  attempts: 60\n  backoff_max_s: 1\n  health_timeout_s: 1\n"
        "join:\n  ready_timeout_s: 120\n"
        "watch:\n  poll_interval_s: 0.5\n"
        "hosts:\n  refresh_interval_s: 5\n"
        f"etcd:\n  mode: {etcd_mode}\n"  # external mode: TLS with client certificates, the default
        "leave:\n  deadline_s: 120\n  reserve_s: 5\n"
    )
    if kms_key_id:
        text += f"kms:\n  key_id: {kms_key_id}\n"
    if worker and kube_server:
        text += (f"kube:\n  token_ssm_parameter: {AGENT_TOKEN_PARAMETER.format(cluster=cluster)}\n"
                 f"  server: {kube_server}\n"
                 f"  ca_file: {WORKER_KUBE_CA}\n")
    elif worker:
        text += f"kube:\n  kubeconfig: {WORKER_KUBECONFIG}\n"
    return text


@dataclass
class Machine:
    """One simulated EC2 instance and what runs on it.

    Attributes:
        instance_id: the EC2 instance id.
        label: short name for people (``cp1``, ``w4``), in launch order per role.
        role: ``control-plane`` or ``node``.
        ip: its private 127.x.y.z address.
        inst: its sandbox instance (root, env, shims).
        join: the ``herd-agent join`` process while it runs.
        watch: the ``herd-agent watch`` process.
        join_rc: the join's exit code (None until it ended).
        join_s: wall-clock seconds the join took.
        founder: the join founded the cluster (from its join.json).
        booted_at, joined_at, off_at: timeline seconds of those moments (None before); ``off_at``
            is set once the machine is fully off.
        powering_off: the shutdown has begun.
        leftovers: what still ran when the machine was powered off (unit names, ``watch``).
    """

    instance_id: str
    label: str
    role: str
    ip: str
    inst: Any
    join: subprocess.Popen[bytes] | None = None
    watch: subprocess.Popen[bytes] | None = None
    join_rc: int | None = None
    join_s: float | None = None
    founder: bool = False
    booted_at: float | None = None
    joined_at: float | None = None
    off_at: float | None = None
    powering_off: bool = False
    leftovers: list[str] = field(default_factory=list)

    @property
    def is_control_plane(self) -> bool:
        """True for a control plane."""
        return self.role == CONTROL_PLANE

    def tail(self, log_name: str, lines: int = 6) -> str:
        """The last ``lines`` lines of one of its logs (``join.log``, ``watch.log``)."""
        path = self.inst.workdir / log_name
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class PdbViolation:
    """A moment a PodDisruptionBudget had fewer healthy pods than it requires.

    Attributes:
        t: timeline seconds.
        pdb: ``namespace/name``.
        healthy, desired: the healthy matching pods then, and the budget's desiredHealthy.
        cause: the change that brought it below (``DELETED pod default/web-… on i-…``).
    """

    t: float
    pdb: str
    healthy: int
    desired: int
    cause: str


class PdbTracker:
    """Evaluates every PodDisruptionBudget at every Pod change, in the API's own order.

    It runs as a store listener (under the store lock, on each committed change), so no dip is
    missed between two samples. A budget counts once it was first met (so a workload starting
    up is not a violation); from then on a change that leaves fewer healthy pods (Ready, not
    being deleted) than ``desiredHealthy`` is recorded as a :class:`PdbViolation`.
    """

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._pdbs: dict[tuple[str, str], dict[str, Any]] = {}
        self._met: dict[tuple[str, str], bool] = {}
        self.violations: list[PdbViolation] = []
        self.lowest: dict[str, tuple[int, int]] = {}  # pdb → (lowest healthy seen once met, desired)
        self.errors: list[str] = []

    @staticmethod
    def _healthy(pod: dict[str, Any]) -> bool:
        if pod["metadata"].get("deletionTimestamp"):
            return False
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (pod.get("status") or {}).get("conditions") or [])

    @staticmethod
    def _desired(pdb: dict[str, Any], matching: int) -> int:
        status = pdb.get("status") or {}
        if status.get("desiredHealthy"):
            return int(status["desiredHealthy"])
        spec = pdb.get("spec") or {}
        value = spec.get("minAvailable")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.endswith("%"):
            return -(-int(value[:-1]) * matching // 100)
        unavailable = spec.get("maxUnavailable")
        if isinstance(unavailable, int):
            return max(0, matching - unavailable)
        return 0

    def on_event(self, kind: str, etype: str, obj: dict[str, Any]) -> None:
        """Feed one change: ``kind`` ``Pod`` or ``PodDisruptionBudget``, ``etype`` ADDED/MODIFIED/DELETED."""
        from herd_sandbox.kube.selectors import match_label_selector

        try:
            meta = obj["metadata"]
            key = (meta.get("namespace") or "", meta["name"])
            table = self._pods if kind == "Pod" else self._pdbs
            if etype == "DELETED":
                table.pop(key, None)
            else:
                table[key] = obj
            for pkey, pdb in list(self._pdbs.items()):
                if pkey[0] != key[0]:
                    continue
                selector = (pdb.get("spec") or {}).get("selector") or {}
                matching = [p for (ns, _), p in self._pods.items()
                            if ns == pkey[0] and match_label_selector(selector, p["metadata"].get("labels") or {})]
                healthy = sum(1 for p in matching if self._healthy(p))
                desired = self._desired(pdb, len(matching))
                name = f"{pkey[0]}/{pkey[1]}"
                if desired <= 0:
                    continue
                if healthy >= desired:
                    self._met[pkey] = True
                elif self._met.get(pkey):
                    self._met[pkey] = False
                    node = ((obj.get("spec") or {}).get("nodeName") or "") if kind == "Pod" else ""
                    self.violations.append(PdbViolation(round(self._now(), 2), name, healthy, desired,
                                                        f"{etype} {kind.lower()} {key[0]}/{key[1]} on {node or '?'}"))
                if pkey in self._met:  # met once: from here on its lowest count matters
                    low = self.lowest.get(name)
                    if low is None or healthy < low[0]:
                        self.lowest[name] = (healthy, desired)
        except Exception as exc:  # noqa: BLE001 - a listener must never break the API server
            self.errors.append(repr(exc))


class ScenarioCluster:
    """Region + Kubernetes API + groups + machines, for one scenario run.

    Args:
        state_dir: where everything of the run is kept (instances, logs, kubeconfigs).
        timeline: where events go.
        tools: real etcd and kubectl.
        etcd_mode: ``external`` (herd-etcd.service run by the agent) or ``embedded`` (k3s').
        name: the cluster name (EC2 tag ``herd:cluster``; also the group name prefix).
        watch: start ``herd-agent watch`` on every joined instance.
        max_parallel_boots: instances booting (running their join) at once.
        throttle_seed: seed of the region's throttling decisions (reproducible benchmarks).
        extra_config: per role, YAML written to ``/etc/herd-agent/config.d/50-extra.yaml`` of
            instances booted from then on (the dict may be changed while the cluster runs).
        stack: a CloudFormation template (``ami/cloudformation/cluster.yaml``) whose groups
            :meth:`create_groups` deploys instead of making its own; None: the sandbox's own.
    """

    def __init__(self, state_dir: Path, timeline: Timeline, tools: Tools, *, etcd_mode: str = "external",
                 name: str = "sandbox", watch: bool = True, max_parallel_boots: int = 64,
                 throttle_seed: int | None = None, extra_config: dict[str, str] | None = None,
                 stack: Path | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.timeline = timeline
        self.tools = tools
        self.etcd_mode = etcd_mode
        self.name = name
        self.watch_enabled = watch
        self.throttle_seed = throttle_seed
        self.extra_config = dict(extra_config or {})
        self.region: Any = None
        self.worker_kube_server: str | None = None  # set by start() when workers use the ServiceAccount
        self.kube: Any = None
        self.kubectl: Kubectl | None = None
        self.machines: dict[str, Machine] = {}
        self.stack = Path(stack) if stack else None
        self.kms_key_arn: str | None = None
        # role → group name; filled by create_groups (the monitors ignore instances until then)
        self.groups: dict[str, str] = {}
        self._counters = {CONTROL_PLANE: 0, WORKER: 0}
        self._mu = threading.RLock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_parallel_boots, thread_name_prefix="boot")
        self._boots: list[concurrent.futures.Future[None]] = []
        self._closing = threading.Event()
        self.aws_monitor: AwsMonitor | None = None
        self.kube_monitor: KubeMonitor | None = None
        self.pdb = PdbTracker(timeline.now)

    # -- bring-up and teardown -------------------------------------------------------------------
    def start(self) -> ScenarioCluster:
        """Start the region, the Kubernetes API and the monitors; returns self."""
        from herd_sandbox.aws.region import Region
        from herd_sandbox.kube.sandbox import KubeSandbox

        (self.state_dir / "instances").mkdir(parents=True, exist_ok=True)
        self.region = Region(time_factor=1.0, throttle_seed=self.throttle_seed).start()
        self.kube = KubeSandbox(self.state_dir / "kube", time_factor=0.01).start()
        self.kubectl = Kubectl(self.tools.kubectl, self.kube.admin_kubeconfig)
        self.timeline.add("aws", f"region {self.region.region_name} at {self.region.endpoint_url} (moto + hooks)",
                          kind="aws")
        self.timeline.add("kube", f"Kubernetes API (emulated) at {self.kube.url}", kind="kube")
        if self.stack is None:  # a stack brings its own key (create_groups)
            self.kms_key_arn = create_cluster_key(self.region, self.name)
            self.worker_kube_server = self._install_agent_rbac()
        self.kube_monitor = KubeMonitor(self)
        self.kube_monitor.start()
        self.aws_monitor = AwsMonitor(self)
        self.aws_monitor.start()
        return self

    def _install_agent_rbac(self) -> str | None:
        """:func:`publish_agent_token` under the cluster's key; the API URL workers use, or None
        when this checkout has no RBAC file (workers then get the admin kubeconfig)."""
        if not RBAC_FILE.exists():
            return None
        publish_agent_token(self.kube, self.region.client("ssm"), self.name, self.kms_key_arn)
        self.timeline.add("kube", "workers use the herd-agent ServiceAccount (packaging/rbac) with its token in SSM",
                          kind="kube")
        return str(self.kube.url)

    def stop(self) -> None:
        """Kill every agent process (SIGKILL: the sandbox is switched off, not shut down), stop
        every unit on every machine, then the monitors, the API and the region. Idempotent."""
        with self._mu:  # agent processes are started under this lock after checking _closing
            self._closing.set()
            machines = list(self.machines.values())
        if self.aws_monitor:
            self.aws_monitor.stop()
        for future in self._boots:
            future.cancel()
        for m in machines:
            for proc in (m.join, m.watch):
                _kill_group(proc, signal.SIGKILL)
        self._pool.shutdown(wait=True, cancel_futures=True)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(_stop_units_quietly, [m.inst for m in machines]))
        for m in machines:
            for proc in (m.join, m.watch):
                _reap(proc)
        if self.kube_monitor:
            self.kube_monitor.stop()
        if self.kube is not None:
            self.kube.stop()
            self.kube = None
        if self.region is not None:
            self.region.stop()
            self.region = None

    # -- groups ---------------------------------------------------------------------------------
    def create_groups(self, control_planes: int, workers: int) -> None:
        """Create the launch template and both groups (each with a launch and a terminate hook),
        or deploy :attr:`stack` with these sizes.

        The groups launch their instances at once; the AWS monitor boots them as they appear. A
        group of size 0 is created too (it can be scaled out later).
        """
        from herd_sandbox.aws.region import Hook

        if self.stack is not None:
            self._deploy_stack(control_planes, workers)
            return
        groups = {CONTROL_PLANE: f"{self.name}-control-plane", WORKER: f"{self.name}-workers"}
        template = f"{self.name}-lt"
        self.region.create_launch_template(template)
        hooks = [Hook(LAUNCH_HOOK, "launching", heartbeat_timeout=600, default_result="ABANDON"),
                 Hook(TERMINATE_HOOK, "terminating", heartbeat_timeout=300, default_result="CONTINUE")]
        for role, size in ((CONTROL_PLANE, control_planes), (WORKER, workers)):
            self.region.create_group(groups[role], template, desired=size, min_size=0, max_size=size + 10,
                                     hooks=hooks, tags={"herd:cluster": self.name, "herd:role": role})
            self.timeline.add("aws", f"group {groups[role]} created: desired {size}", kind="aws")
        self.groups = groups

    def _deploy_stack(self, control_planes: int, workers: int) -> None:
        """CreateStack of :attr:`stack` (the hooks' timeouts those of the sandbox's own groups), then
        the operator's step after it: the ServiceAccount token under the stack's key. Instances
        boot once that is done (the monitors learn the groups last)."""
        outputs = deploy_stack(self.region, self.stack, self.name, control_planes=control_planes, workers=workers,
                               launch_timeout=600, terminate_timeout=300)
        self.kms_key_arn = outputs["KmsKeyArn"]
        self.timeline.add("aws", f"stack {self.name}-stack ({self.stack.name}) created: groups "
                          f"{outputs['ControlPlaneGroupName']} ({control_planes}), {outputs['WorkerGroupName']} "
                          f"({workers}), key {self.kms_key_arn}", kind="aws")
        self.worker_kube_server = self._install_agent_rbac()
        self.groups = {CONTROL_PLANE: outputs["ControlPlaneGroupName"], WORKER: outputs["WorkerGroupName"]}

    def group_of(self, instance_id: str) -> str | None:
        """The role whose group holds ``instance_id`` now, or None."""
        for role, group in list(self.groups.items()):
            if instance_id in self.region.group_instances(group):
                return role
        return None

    def in_service(self, role: str | None = None) -> list[str]:
        """Instance ids in ``InService`` (of one role, or both), in launch order."""
        roles = [role] if role else [CONTROL_PLANE, WORKER]
        out: list[str] = []
        for r in roles:
            if r in self.groups:
                out += self.region.group_instances(self.groups[r], frozenset({"InService"}))
        return out

    def running(self, role: str | None = None) -> list[Machine]:
        """Machines that are in service and joined (of one role, or both), in launch order."""
        ids = set(self.in_service(role))
        with self._mu:
            return [m for m in self.machines.values() if m.instance_id in ids and not m.powering_off]

    def label(self, instance_id: str) -> str:
        """The machine's short label, or the id itself when unknown."""
        with self._mu:
            m = self.machines.get(instance_id)
        return m.label if m else instance_id

    # -- machines -------------------------------------------------------------------------------
    def _instance_env(self, instance_id: str) -> dict[str, str]:
        return {**self.region.env(instance_id), "HERD_SANDBOX_KUBECONFIG": str(self.kube.admin_kubeconfig),
                "HERD_SANDBOX_ETCD": str(self.tools.etcd)}

    def boot(self, instance_id: str, role: str) -> Machine | None:
        """EC2 starts ``instance_id``: lay out its host and run join, then watch, in the background.

        Returns the new :class:`Machine` (None when it is already known or the run is closing).
        """
        from herd_sandbox.instance import SandboxInstance

        with self._mu:
            if instance_id in self.machines or self._closing.is_set():
                return None
            self._counters[role] += 1
            label = f"{'cp' if role == CONTROL_PLANE else 'w'}{self._counters[role]}"
            inst = SandboxInstance(instance_id, self.state_dir / "instances" / f"{label}-{instance_id}",
                                   self._instance_env(instance_id), extra_path=[str(self.tools.etcd.parent)])
            machine = Machine(instance_id, label, role, self.region.instance(instance_id).private_ip, inst)
            self.machines[instance_id] = machine
            self._boots.append(self._pool.submit(self._boot, machine))
        return machine

    def _boot(self, m: Machine) -> None:
        worker = m.role == WORKER
        m.inst.prepare()
        server = self.worker_kube_server
        if worker and server:
            m.inst.root.write(WORKER_KUBE_CA, Path(self.kube.ca_path).read_text(), mode=0o644)
        elif worker:
            m.inst.root.write(WORKER_KUBECONFIG, Path(self.kube.admin_kubeconfig).read_text(), mode=0o600)
        m.inst.write_config(agent_config(self.etcd_mode, worker, server, cluster=self.name,
                                         kms_key_id=None if self.stack else self.kms_key_arn))
        for path, content, mode in cloud_init_write_files(self.region.user_data(m.instance_id)):
            m.inst.root.write(path, content, mode=mode)  # cloud-init's write_files, before the agent's units
        if self.extra_config.get(m.role):
            m.inst.write_config(self.extra_config[m.role], name="50-extra.yaml")
        m.booted_at = self.timeline.now()
        self.timeline.add(m.label, f"booted ({m.role}, {m.ip}): herd-agent join", instance_id=m.instance_id)
        started = time.monotonic()
        with self._mu:
            if self._closing.is_set():
                return
            m.join = m.inst.spawn_agent("join", log_name="join.log")
        rc = m.join.wait()
        m.join_rc, m.join_s = rc, time.monotonic() - started
        if self._closing.is_set() or m.powering_off:
            return
        if rc != 0:
            self.timeline.error(f"join failed (exit {rc}) after {m.join_s:.1f} s: "
                                f"{m.tail('join.log', 1) or 'no output'}", m.label, m.instance_id)
            return
        try:
            state = json.loads(m.inst.root.read_text(JOIN_STATE))
            m.founder = bool(state.get("founder"))
        except (OSError, ValueError):
            pass
        m.joined_at = self.timeline.now()
        self.timeline.add(m.label, f"joined{' (founder)' if m.founder else ''} in {m.join_s:.1f} s",
                          instance_id=m.instance_id)
        if self.watch_enabled:
            with self._mu:
                if self._closing.is_set() or m.powering_off:
                    return
                m.watch = m.inst.spawn_agent("watch", log_name="watch.log")
            self.timeline.add(m.label, f"herd-agent watch running (pid {m.watch.pid})", instance_id=m.instance_id)

    def power_off(self, instance_id: str, why: str, delay_s: float = 1.0) -> None:
        """The instance is gone (EC2 terminated it): shut it down, as EC2's ACPI shutdown does.

        After ``delay_s`` (EC2 does not shut a terminated instance down in the same instant), the
        system state becomes ``stopping`` (what ``systemctl is-system-running`` answers during a
        shutdown) and the watcher gets SIGTERM, as systemd sends it, and 10 s to exit; a join still
        running is killed; then every unit still running is stopped. What still ran at that point
        is kept in :attr:`Machine.leftovers` (the leave should have stopped k3s and etcd).
        """
        from herd_sandbox.systemctl import PID_DIR, SYSTEM_STATE_FILE, Systemctl

        with self._mu:
            m = self.machines.get(instance_id)
            if m is None or m.powering_off:
                return
            m.powering_off = True
        if delay_s and not self._closing.is_set():
            self._closing.wait(delay_s)
        m.inst.root.write(SYSTEM_STATE_FILE, "stopping\n", mode=0o644)
        if m.join is not None and m.join.poll() is None:
            m.leftovers.append("join")
            _kill_group(m.join, signal.SIGKILL)
        if m.watch is not None and m.watch.poll() is None:
            _kill_group(m.watch, signal.SIGTERM)
            try:
                m.watch.wait(10)
            except subprocess.TimeoutExpired:
                m.leftovers.append("watch (did not exit on SIGTERM)")
                _kill_group(m.watch, signal.SIGKILL)
        ctl = Systemctl(m.inst.root)
        pid_dir = m.inst.root.path(PID_DIR)
        units = sorted(p.name[:-4] for p in pid_dir.glob("*.pid")) if pid_dir.is_dir() else []
        m.leftovers += [u for u in units if ctl.is_active(u)]
        _stop_units_quietly(m.inst)
        for proc in (m.join, m.watch):
            _reap(proc)
        m.off_at = self.timeline.now()
        note = f"; still running then: {', '.join(m.leftovers)}" if m.leftovers else ""
        self.timeline.add(m.label, f"powered off ({why}){note}", instance_id=instance_id)

    def wait_boots(self, timeout: float) -> None:
        """Wait until every boot started so far has finished (joined or failed). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            with self._mu:
                pending = [f for f in self._boots if not f.done()]
            if not pending:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(pending)} instance(s) still joining after {timeout:.0f} s")
            concurrent.futures.wait(pending, timeout=left)

    # -- what runs where ----------------------------------------------------------------------------
    def processes(self) -> list[dict[str, Any]]:
        """Processes of this run still alive: ``{"pid", "what", "instance"}``.

        Found by scanning ``/proc`` for processes whose environment carries an instance root of
        this run's state directory (``HERD_AGENT_ROOT``, which every agent process, unit and
        stand-in of an instance inherits). This process and its ancestors are never listed.
        """
        marker = str(self.state_dir.resolve()) + os.sep
        found = []
        skip = _ancestors()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in skip:
                continue
            try:
                environ = (entry / "environ").read_bytes()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[-1].split()[0] == "Z":
                continue
            root = ""
            for item in environ.split(b"\0"):
                if item.startswith(b"HERD_AGENT_ROOT="):
                    root = item.split(b"=", 1)[1].decode(errors="replace")
            if root.startswith(marker):
                owner = next((m.label for m in self.machines.values() if str(m.inst.root_dir) == root), "?")
                found.append({"pid": int(entry.name), "what": cmdline.strip()[:160], "instance": owner})
        return found


def deploy_stack(region: Any, template: Path, cluster: str, *, control_planes: int, workers: int,
                 launch_timeout: int = 900, terminate_timeout: int = 900,
                 kms_key_arn: str = "") -> dict[str, str]:
    """CreateStack ``<cluster>-stack`` from ``template`` (the example stack's parameters) with the
    operator's credentials, in the region's first subnet and security group; returns its Outputs.

    Args:
        control_planes, workers: ControlPlaneCount and WorkerDesired (WorkerMin 0, WorkerMax +10).
        launch_timeout, terminate_timeout: the hooks' HeartbeatTimeout, AWS seconds.
        kms_key_arn: an existing key for the stack to take; "" makes the stack create one.

    Raises:
        RuntimeError: the stack did not reach CREATE_COMPLETE (its status reason says why).
    """
    from herd_sandbox.aws.iam import agent_token_name

    ec2, cfn = region.client("ec2"), region.client("cloudformation")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    sg = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
    params = {"ClusterName": cluster, "ImageId": "ami-12345678", "SubnetIds": subnet, "SecurityGroupIds": sg,
              "ControlPlaneCount": str(control_planes), "WorkerMin": "0", "WorkerMax": str(workers + 10),
              "WorkerDesired": str(workers), "AgentTokenParameter": agent_token_name(cluster),
              "KmsKeyArn": kms_key_arn, "LaunchHeartbeatTimeout": str(launch_timeout),
              "TerminateHeartbeatTimeout": str(terminate_timeout)}
    name = f"{cluster}-stack"
    cfn.create_stack(StackName=name, TemplateBody=Path(template).read_text(), Capabilities=["CAPABILITY_IAM"],
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()])
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        raise RuntimeError(f"stack {name}: {stack['StackStatus']} {stack.get('StackStatusReason', '')}")
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


class AwsMonitor:
    """Follows the region: boots launched instances, powers off terminated ones, and writes the
    Auto Scaling side of the timeline (lifecycle states, how each lifecycle action ended).

    It wakes on every change of the region (every AWS call, every transition) and at least every
    0.2 s.
    """

    def __init__(self, cluster: ScenarioCluster) -> None:
        self.c = cluster
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aws-monitor", daemon=True)
        self.states: dict[str, str | None] = {}
        self.roles: dict[str, str] = {}
        self._finished_seen = 0
        self.errors: list[str] = []

    def start(self) -> None:
        """Start following."""
        self._thread.start()

    def stop(self) -> None:
        """Stop following (waits for the thread)."""
        self._stop.set()
        self._thread.join(10)

    def _snapshot(self) -> tuple[dict[str, str | None], dict[str, str], int]:
        region = self.c.region
        with region.cond:
            roles = {}
            for role, group in list(self.c.groups.items()):
                for iid in region.group_instances(group):
                    roles[iid] = role
            states = {i.instance_id: region.lifecycle_state(i.instance_id) for i in region.instances()}
            finished = len(region.finished_actions())
        return states, roles, finished

    def _run(self) -> None:
        region = self.c.region
        while not self._stop.is_set():
            try:
                states, roles, finished = self._snapshot()
                self._apply(states, roles, finished)
                with region.cond:
                    if (states, finished) == (self.states, self._finished_seen):
                        region.cond.wait(0.2)
            except Exception as exc:  # noqa: BLE001 - keep following; report at the end
                if self._stop.is_set():
                    return
                self.errors.append(repr(exc))
                self._stop.wait(0.2)

    def _apply(self, states: dict[str, str | None], roles: dict[str, str], finished: int) -> None:
        c = self.c
        for iid, role in roles.items():
            self.roles.setdefault(iid, role)
            if iid not in c.machines and states.get(iid) not in ("Terminated", None):
                c.boot(iid, role)  # its group became known after it launched (a stack's)
        for iid, state in states.items():
            if state == self.states.get(iid):
                continue
            self.states[iid] = state
            role = self.roles.get(iid)
            if role is None:
                continue
            if iid not in c.machines and state not in ("Terminated", None):
                c.boot(iid, role)
            if state in ("Pending:Wait", "InService", "Terminating:Wait", "Terminated"):
                c.timeline.add(c.label(iid), f"ASG: {state}", instance_id=iid, kind="aws")
            if state == "Terminated":
                threading.Thread(target=c.power_off, args=(iid, "EC2 terminated it"), daemon=True,
                                 name=f"off-{iid}").start()
        if finished != self._finished_seen:
            for action in c.region.finished_actions()[self._finished_seen:finished]:
                kind = "launch" if action.transition.endswith("LAUNCHING") else "terminate"
                how = "completed" if action.how == "completed" else "TIMED OUT, DefaultResult"
                text = f"ASG: {kind} hook {how} {action.result}"
                if action.how == "completed":
                    c.timeline.add(c.label(action.instance_id), text, instance_id=action.instance_id, kind="aws")
                else:
                    c.timeline.error(text, c.label(action.instance_id), action.instance_id)
            self._finished_seen = finished


class KubeMonitor:
    """Follows the emulated API: Node changes and the agent's own Events into the timeline, and
    every Pod/PDB change into the :class:`PdbTracker` (as a store listener, in commit order)."""

    def __init__(self, cluster: ScenarioCluster) -> None:
        self.c = cluster
        self._queue: list[tuple[str, str, dict[str, Any], dict[str, Any] | None]] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="kube-monitor", daemon=True)
        kube = cluster.kube
        self._kinds = {kube.resource_type(k).key: k for k in ("Node", "Event", "Pod", "PodDisruptionBudget")}

    def start(self) -> None:
        """Register the listener and start the timeline thread."""
        self.c.kube.store.add_listener(self._listen)
        self._thread.start()

    def stop(self) -> None:
        """Stop the timeline thread (the listener stays inert once stopped)."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(5)

    def _listen(self, event: Any) -> None:
        kind = self._kinds.get(event.key)
        if kind is None or self._stop:
            return
        if kind in ("Pod", "PodDisruptionBudget"):
            self.c.pdb.on_event(kind, event.type, event.obj)
            return
        with self._cv:
            self._queue.append((kind, event.type, event.obj, event.old))
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._cv.wait()
                if self._stop and not self._queue:
                    return
                batch, self._queue = self._queue, []
            for kind, etype, obj, old in batch:
                try:
                    self._describe(kind, etype, obj, old)
                except Exception as exc:  # noqa: BLE001 - a timeline line is not worth a crash
                    self.c.timeline.error(f"kube monitor: {exc!r}", "kube")

    def _describe(self, kind: str, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        c = self.c
        if kind == "Event":
            source = (obj.get("source") or {}).get("component") or obj.get("reportingComponent") \
                or obj.get("reportingController")
            if etype != "ADDED" or source != "herd-agent":
                return
            involved = obj.get("involvedObject") or obj.get("regarding") or {}
            node = involved.get("name", "")
            text = obj.get("message") or obj.get("note") or ""
            c.timeline.add(c.label(node), f"agent: {obj.get('reason')}: {text}", instance_id=node, kind="kube")
            return
        name = obj["metadata"]["name"]
        label = c.label(name)

        def say(text: str) -> None:
            c.timeline.add(label, f"Node {text}", instance_id=name, kind="kube")

        if etype == "ADDED":
            say("registered" + (" and Ready" if _ready(obj) else ""))
            return
        if etype == "DELETED":
            say("deleted")
            return
        if old is None:
            return
        if _ready(obj) != _ready(old):
            say("Ready" if _ready(obj) else "NotReady")
        was = bool((old.get("spec") or {}).get("unschedulable"))
        now = bool((obj.get("spec") or {}).get("unschedulable"))
        if now != was:
            say("cordoned" if now else "uncordoned")
        if obj["metadata"].get("deletionTimestamp") and not old["metadata"].get("deletionTimestamp"):
            fin = obj["metadata"].get("finalizers") or []
            say("being deleted" + (f" (waiting for finalizer {', '.join(fin)})" if fin else ""))


def _ancestors() -> set[int]:
    """This process and every process above it."""
    pids, pid = set(), os.getpid()
    while pid > 0 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def _kill_group(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Signal a process started in its own session, and its group."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _reap(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGKILL)
        proc.wait(5)


def _stop_units_quietly(inst: Any) -> None:
    """Stop every unit the systemctl stand-in started on ``inst`` (k3s, etcd), ignoring errors."""
    try:
        inst.stop_units()
    except Exception:  # noqa: BLE001 - teardown goes on; leftovers show up in the process check
        pass

