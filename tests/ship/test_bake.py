"""The bake test: the .deb installed into a fresh Debian 12 root, checked there, then booted under
systemd-nspawn with real systemd as PID 1 against the sandbox region on the host's loopback.

The booted root is a worker of a sandbox cluster whose control plane runs on the host (the
sandbox's k3s stand-in and real etcd). Inside the root only the installed package runs, from its
installed units; a k3s-agent stand-in unit (the sandbox's ``herd_sandbox.k3s``, bind-mounted
read-only from this checkout, since no k3s binary runs here) registers the Node as k3s would. The
instance's AWS endpoint, credentials and IMDS address come from the sandbox region through
systemd's ``DefaultEnvironment`` (on EC2 they come from the instance profile and 169.254.169.254).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from herd_sandbox.aws.imds import Fault
from herd_sandbox.aws.region import Region
from herd_sandbox.kube.sandbox import KubeSandbox
from tests.clusters import SandboxCluster
from tests.ship.conftest import REPO, make_root, need, need_root, run
from tests.ship.nspawn import Machine, wait_for
from tests.units.test_units import EXPOSURE

pytestmark = pytest.mark.allow_subprocess

UNITS = sorted(p.name for p in (REPO / "units").glob("*.service"))
FIGURES: dict[str, object] = {}  # what this module measured; printed at the end, read by bench/ship.py


def chroot(root: Path, *argv: str, check: bool = True):
    return run(["chroot", str(root), *argv], timeout=300, check=check)


# --- checks inside the installed root ----------------------------------------------------------------
def test_version_and_config_check(baked_root: Path) -> None:
    version = chroot(baked_root, "herd-agent", "--version").stdout
    assert version.strip() == "herd-agent, version " + __import__("herd_agent").__version__
    check = chroot(baked_root, "herd-agent", "config", "check")
    assert "# sources: /etc/herd-agent/config.yaml" in check.stdout
    # The venv really is the system python's, and the sandbox is not importable in it.
    probe = chroot(baked_root, "/opt/herd-agent/bin/python3", "-c",
                   "import sys, importlib.util as u; print(sys.base_prefix, u.find_spec('herd_sandbox'),"
                   " u.find_spec('pip'))").stdout.split()
    assert probe == ["/usr", "None", "None"]
    # Everything the agent imports, lazy imports inside functions included, is in the package's venv
    # (a dependency missing from pyproject/the lock would fail only on the instance, later).
    names = sorted({alias.name.split(".")[0] if isinstance(node, ast.Import) else (node.module or "").split(".")[0]
                    for path in (REPO / "herd_agent").rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0)
                    for alias in node.names} - {"", "__future__"})
    missing = chroot(baked_root, "/opt/herd-agent/bin/python3", "-c",
                     "import importlib.util as u, sys; print([n for n in sys.argv[1:] if u.find_spec(n) is None])",
                     *names).stdout.strip()
    assert missing == "[]", f"imported by herd_agent but not in the package: {missing}"


def test_systemd_analyze_verify_every_installed_unit(baked_root: Path) -> None:
    paths = [f"/lib/systemd/system/{u}" for u in UNITS]
    for unit in paths:
        r = chroot(baked_root, "systemd-analyze", "verify", "--man=no", unit, check=False)
        assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", f"{unit}:\n{r.stderr}"


def test_security_exposure_inside_the_root(baked_root: Path) -> None:
    for unit in UNITS:
        out = chroot(baked_root, "systemd-analyze", "security", "--offline=yes", "--no-pager",
                     f"/lib/systemd/system/{unit}").stdout
        figure = float(next(line for line in out.splitlines() if "Overall exposure" in line).split(":")[1].split()[0])
        FIGURES[f"exposure {unit}"] = figure
        assert figure <= EXPOSURE[unit], (unit, figure)


def test_units_enabled_nothing_started(baked_root: Path) -> None:
    wants = baked_root / "etc/systemd/system/multi-user.target.wants"
    enabled = sorted(p.name for p in wants.iterdir() if p.name.startswith("herd-"))
    assert enabled == sorted({"herd-agent-join-ready.service", "herd-agent-join.service", "herd-agent.service",
                              *(["herd-agent-leader.service"] if "herd-agent-leader.service" in UNITS else [])})
    assert (baked_root / "var/lib/herd-agent").stat().st_mode & 0o777 == 0o700


def test_sizes(deb: Path, baked_root: Path) -> None:
    FIGURES[".deb size (MiB)"] = round(deb.stat().st_size / 2**20, 1)
    size = chroot(baked_root, "dpkg-query", "-W", "-f=${Installed-Size}", "herd-agent").stdout
    FIGURES["installed size (MiB)"] = round(int(size) / 1024, 1)


def test_purge_removes_state_and_reinstall_works(base_tarball: Path, deb: Path, tmp_path: Path) -> None:
    root = make_root(base_tarball, deb, tmp_path / "root")
    (root / "var/lib/herd-agent/join.json").write_text("{}")
    (root / "etc/herd-agent/config.d/50-site.yaml").write_text("cluster:\n  name: prod\n")
    shutil.copy(deb, root / "tmp" / deb.name)
    chroot(root, "dpkg", "-i", f"/tmp/{deb.name}")  # the upgrade path of the maintainer scripts
    assert (root / "var/lib/herd-agent/join.json").exists()
    chroot(root, "dpkg", "--purge", "herd-agent")
    assert not (root / "var/lib/herd-agent").exists()
    assert not (root / "opt/herd-agent").exists() and not (root / "usr/bin/herd-agent").exists()
    assert not list((root / "etc/systemd/system/multi-user.target.wants").glob("herd-*"))
    assert (root / "etc/herd-agent/config.d/50-site.yaml").exists()  # the admin's file is theirs


# --- the boot --------------------------------------------------------------------------------------------
BOOT_CONFIG = "leave:\n  heartbeat_interval_s: 0.3\n  reserve_s: 5\n  stop_k3s: stop\n"
INSTANCE_CONFIG = """\
# The bake test's worker: the emulator's credential for the leave, and no module loading
# (a container cannot load kernel modules).
kube:
  kubeconfig: /etc/herd-agent/kubeconfig
kernel:
  modules: []
"""
K3S_STANDIN = """\
# k3s-agent stand-in for the bake test: the sandbox's k3s model (herd_sandbox.k3s), which registers
# this Node with the sandbox Kubernetes API as k3s would. No k3s binary can run here.
[Unit]
Description=k3s agent (sandbox stand-in)
After=network-online.target

[Service]
Type=exec
Environment=HERD_AGENT_ROOT=/
ExecStart={python} -m herd_sandbox.k3s agent
KillMode=mixed
TimeoutStopSec=60s
"""


@pytest.fixture(scope="module")
def kube_module():
    with KubeSandbox(time_factor=0.01) as kube:
        yield kube


@pytest.fixture(scope="module")
def booted(base_tarball: Path, deb: Path, region: Region, kube_module: KubeSandbox, toolchain,
           tmp_path_factory: pytest.TempPathFactory):
    """A sandbox control plane on the host and the booted root as a worker of its cluster."""
    need_root()
    need("systemd-nspawn", "nsenter")
    work = tmp_path_factory.mktemp("boot")
    cluster = SandboxCluster(region, kube_module, work / "host", toolchain, BOOT_CONFIG)
    cp = cluster.group("control-plane", 1)[0]
    cluster.join(cp)
    iid = cluster.group("node", 1, terminate_hook=True)[0]
    root = make_root(base_tarball, deb, work / "root")
    (root / "etc/herd-agent/config.d/50-sandbox.yaml").write_text(cluster.config)
    (root / "etc/herd-agent/config.d/60-instance.yaml").write_text(INSTANCE_CONFIG)
    kubeconfig = root / "etc/herd-agent/kubeconfig"
    shutil.copy(kube_module.admin_kubeconfig, kubeconfig)
    kubeconfig.chmod(0o600)
    (root / "etc/herd-sandbox").mkdir()
    shutil.copy(kube_module.admin_kubeconfig, root / "etc/herd-sandbox/admin.kubeconfig")
    env = {**region.env(iid), "HERD_SANDBOX_KUBECONFIG": "/etc/herd-sandbox/admin.kubeconfig",
           "PYTHONUNBUFFERED": "1"}
    (root / "etc/systemd/system.conf.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/system.conf.d/50-herd-sandbox.conf").write_text(
        "[Manager]\nDefaultEnvironment=" + " ".join(f'"{k}={v}"' for k, v in sorted(env.items())) + "\n")
    (root / "etc/systemd/system/k3s-agent.service").write_text(K3S_STANDIN.format(python=sys.executable))
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)  # keep the journal after poweroff
    binds = sorted({str(REPO), sys.prefix, sys.base_prefix})
    machine = Machine(root, work / "console.log", binds)
    started = time.monotonic()
    machine.boot()
    try:
        joined = wait_for(lambda: region.lifecycle_state(iid) in ("InService", "Abandon", "Terminating", "Terminated")
                          and region.lifecycle_state(iid), 240, "the launch hook to complete")
        FIGURES["boot-to-joined (s)"] = round(time.monotonic() - started, 1)
        yield {"machine": machine, "iid": iid, "cluster": cluster, "root": root, "kube": kube_module,
               "region": region, "joined": joined}
    finally:
        machine.kill()
        cluster.close()
        print("\nship figures:", json.dumps(FIGURES), file=sys.stderr)
        if os.environ.get("HERD_SHIP_FIGURES"):
            Path(os.environ["HERD_SHIP_FIGURES"]).write_text(json.dumps(FIGURES, indent=1) + "\n")


def test_boot_runs_the_join_phases(booted) -> None:
    m, iid = booted["machine"], booted["iid"]
    assert booted["joined"] == "InService", m.journal("-u", "herd-agent-join*")
    for unit in ("herd-agent-join.service", "herd-agent-join-ready.service"):
        # The ready phase completes the hook, then exits: wait for the exit.
        wait_for(lambda u=unit: m.show(u, "ActiveState")["ActiveState"] in ("active", "failed"), 60, f"{unit} done")
        props = m.show(unit, "ActiveState", "SubState", "Result")
        assert props == {"ActiveState": "active", "SubState": "exited", "Result": "success"}, (unit, props)
    node = booted["kube"].get("Node", iid)
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    assert m.show("k3s-agent.service", "ActiveState")["ActiveState"] == "active"
    # The join ran the k3s start after its config phase and before its ready phase (unit ordering).
    order = [m.show(u, "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"]
             for u in ("herd-agent-join.service", "k3s-agent.service", "herd-agent-join-ready.service")]
    assert [int(x) for x in order] == sorted(int(x) for x in order)


def test_watcher_ready_and_watchdog_fed(booted) -> None:
    m = booted["machine"]
    wait_for(lambda: m.show("herd-agent.service", "ActiveState")["ActiveState"] == "active", 60, "watcher active")
    props = m.show("herd-agent.service", "Type", "StatusText", "WatchdogUSec", "WatchdogTimestampMonotonic",
                   "NRestarts")
    assert props["Type"] == "notify" and props["StatusText"].startswith("watching ")  # READY=1 was sent
    assert props["WatchdogUSec"] == "30s" and props["NRestarts"] == "0"
    first = int(props["WatchdogTimestampMonotonic"])
    wait_for(lambda: int(m.show("herd-agent.service", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
             > first, 45, "a WATCHDOG=1 keep-alive")


def test_restart_does_not_leave(booted) -> None:
    m, iid = booted["machine"], booted["iid"]
    pid = m.show("herd-agent.service", "MainPID")["MainPID"]
    m.run("systemctl", "restart", "herd-agent.service")
    props = m.show("herd-agent.service", "ActiveState", "MainPID")
    assert props["ActiveState"] == "active" and props["MainPID"] != pid
    assert "not draining" in m.journal("-u", "herd-agent.service")
    node = booted["kube"].get("Node", iid)
    assert not node["spec"].get("unschedulable")
    assert not (booted["root"] / "var/lib/herd-agent/leave.json").exists()
    assert booted["region"].lifecycle_state(iid) == "InService"


def test_leader_unit_skipped_on_a_worker_then_ready_under_real_systemd(booted, toolchain) -> None:
    """herd-agent-leader.service: on this worker real systemd skipped it at boot (its condition,
    k3s' admin kubeconfig, which only servers have); given that file and helm (what a control plane
    of the AMI has), ``systemctl start`` returns once the leader sent READY=1 (Type=notify), it
    takes the Lease in the API, feeds the watchdog, and a stop releases the Lease."""
    m, root, kube = booted["machine"], booted["root"], booted["kube"]
    props = m.show("herd-agent-leader.service", "ActiveState", "ConditionResult", "UnitFileState")
    assert props == {"ActiveState": "inactive", "ConditionResult": "no", "UnitFileState": "enabled"}, props
    k3s_yaml = root / "etc/rancher/k3s/k3s.yaml"
    k3s_yaml.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(kube.admin_kubeconfig, k3s_yaml)
    k3s_yaml.chmod(0o600)
    shutil.copy(toolchain.bindir / "helm", root / "usr/local/bin/helm")  # the AMI's install-helm.sh puts it there
    try:
        m.run("systemctl", "start", "herd-agent-leader.service", timeout=120)  # returns after READY=1
        props = m.show("herd-agent-leader.service", "Type", "ActiveState", "SubState", "NRestarts", "WatchdogUSec",
                       "WatchdogTimestampMonotonic")
        assert (props["Type"], props["ActiveState"], props["SubState"], props["NRestarts"], props["WatchdogUSec"]) \
            == ("notify", "active", "running", "0", "1min"), (props, m.journal("-u", "herd-agent-leader.service"))
        lease = wait_for(lambda: (kube.find("Lease", "herd-agent-leader", namespace="kube-system",
                                            api_version="coordination.k8s.io/v1") or {}).get("spec", {})
                         .get("holderIdentity"), 60, "the leader to hold the Lease")
        assert lease
        first = int(props["WatchdogTimestampMonotonic"])
        wait_for(lambda: int(m.show("herd-agent-leader.service", "WatchdogTimestampMonotonic")
                             ["WatchdogTimestampMonotonic"]) > first, 75, "a WATCHDOG=1 keep-alive")
        m.run("systemctl", "stop", "herd-agent-leader.service", timeout=90)
        after = kube.find("Lease", "herd-agent-leader", namespace="kube-system", api_version="coordination.k8s.io/v1")
        assert not after["spec"].get("holderIdentity"), after  # released on SIGTERM
        assert m.show("herd-agent-leader.service", "Result")["Result"] == "success"
    finally:
        k3s_yaml.unlink(missing_ok=True)


def test_poweroff_leaves_before_the_machine_stops(booted) -> None:
    m, iid, region, kube, root = booted["machine"], booted["iid"], booted["region"], booted["kube"], booted["root"]
    # Auto Scaling moves the instance to Terminating:Wait; its IMDS does not show it yet (404 on
    # target-lifecycle-state), so only the shutdown can start the leave.
    region.inject_imds_fault(iid, Fault(path="/latest/meta-data/autoscaling/target-lifecycle-state", status=404))
    region.terminate_instance(iid, decrement=True)
    assert region.lifecycle_state(iid) == "Terminating:Wait"
    started = time.monotonic()
    m.run("systemctl", "poweroff", "--no-block")
    assert m.wait_stopped(timeout=300) == 0
    FIGURES["poweroff with leave (s)"] = round(time.monotonic() - started, 1)
    journal = json.loads((root / "var/lib/herd-agent/leave.json").read_text())
    assert journal["reason"] == "shutdown" and journal["finished_at"], journal
    for step in ("cordon", "drain", "delete-node", "stop-k3s", "complete-hook"):
        assert journal["steps"][step]["status"] == "done", (step, journal["steps"][step])
    assert kube.find("Node", iid) is None
    assert region.calls(action="CompleteLifecycleAction", caller=iid, outcome="ok")
    assert region.lifecycle_state(iid) in (None, "Terminating:Proceed", "Terminated")
    # Real systemd ordered it: the watcher's stop (the leave) finished before k3s-agent stopped.
    log = run(["journalctl", "--no-pager", "-o", "short-unix", "-D", str(root / "var/log/journal"),
               "-u", "herd-agent.service", "-u", "k3s-agent.service"], check=False).stdout
    assert "shutting down: leaving the cluster" in log or "machine is shutting down" in log, log[-3000:]
