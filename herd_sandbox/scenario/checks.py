"""The checks every scenario ends with, each a pass/fail with a one-line detail.

They read the end state from the parts themselves — etcd's own member list, the API's Nodes, the
region's lifecycle actions, each instance's /etc/hosts and journals, ``/proc`` — never from what
the scenario believes it did.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from herd_sandbox.scenario.cluster import JOIN_STATE, LEAVE_JOURNAL, Machine, ScenarioCluster

_K3S_MEMBER = re.compile(r"^(?P<node>.+)-[0-9a-f]{8}$")


@dataclass
class Check:
    """One check's verdict.

    Attributes:
        name: what is checked, for the table.
        ok: it passed.
        detail: one line: the evidence, or what is wrong.
        data: machine-readable evidence for ``--json``.
    """

    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A plain dict: ``name``, ``ok``, ``detail``, ``data``."""
        return asdict(self)


def member_node(name: str, embedded: bool) -> str:
    """The node an etcd member belongs to: its name, or k3s' ``<node>-<8 hex>`` without the suffix."""
    match = _K3S_MEMBER.match(name) if embedded else None
    return match.group("node") if match else name


def etcd_client(c: ScenarioCluster, m: Machine) -> Any:
    """The sandbox's own etcd gateway client for ``m``'s member (embedded: with k3s' client certificate;
    external: with the member certificate the agent wrote, over HTTPS)."""
    from herd_sandbox.k3s import EmbeddedEtcd
    from herd_sandbox.verify import EtcdGateway

    if c.etcd_mode == "embedded":
        return EmbeddedEtcd(m.inst.root, m.instance_id, m.ip).client()
    pki = m.inst.root.path("/var/lib/herd-agent/etcd-pki")  # external: TLS with the member's certificate
    if (pki / "member.crt").exists():
        return EtcdGateway([f"https://{m.ip}:2379"], ca=str(pki / "ca.crt"), cert=str(pki / "member.crt"),
                           key=str(pki / "member.key"))
    return EtcdGateway([f"http://{m.ip}:2379"])


def etcd_members(c: ScenarioCluster) -> Check:
    """etcd members = the running control planes, all voters, one cluster (asked of every member)."""
    from herd_sandbox.verify import EtcdGatewayError as EtcdError

    name = "etcd members = running control planes, all voters"
    cps = c.running("control-plane")
    expected = sorted(m.instance_id for m in cps)
    embedded = c.etcd_mode == "embedded"
    clusters: dict[str, int] = {}
    members: list[Any] = []
    problems = []
    refused = 0
    for m in cps:
        client = etcd_client(c, m)
        try:
            cluster_id, mine = client.member_list()
            clusters[m.label] = cluster_id
            members = members or mine
        except EtcdError as exc:
            problems.append(f"{m.label}'s member did not answer: {exc}")
        finally:
            client.close()
        if not embedded and client.cert:  # external over TLS: a client without a certificate is refused
            from herd_sandbox.verify import EtcdGateway

            bare = EtcdGateway(list(client.endpoints), ca=client.ca)
            try:
                bare.member_list()
                problems.append(f"{m.label}'s member answered a client without a certificate")
            except EtcdError:
                refused += 1
            finally:
                bare.close()
    nodes = sorted(member_node(mem.name, embedded) if mem.name else f"(unstarted {mem.id:x})" for mem in members)
    learners = [mem.name for mem in members if mem.is_learner]
    if len(set(clusters.values())) > 1:
        problems.append(f"{len(set(clusters.values()))} different etcd clusters: {clusters}")
    if members and nodes != expected:
        extra = sorted(set(nodes) - set(expected))
        missing = sorted(set(expected) - set(nodes))
        problems.append(f"members {[c.label(n) for n in nodes]}; extra {[c.label(i) for i in extra]}, "
                        f"missing {[c.label(i) for i in missing]}")
    if learners:
        problems.append(f"learners: {learners}")
    if not cps:
        problems.append("no running control plane")
    data = {"members": [mem.to_json() for mem in members], "running_control_planes": expected,
            "cluster_ids": {k: str(v) for k, v in clusters.items()}}
    if problems:
        return Check(name, False, "; ".join(problems), data)
    tls = f"; TLS: {refused} refused a client without a certificate" if refused else ""
    return Check(name, True, f"{len(members)} voters, one cluster: {', '.join(c.label(n) for n in nodes)}{tls}",
                 data)


def nodes_match(c: ScenarioCluster) -> Check:
    """Nodes = the running instances; all Ready, none cordoned or being deleted."""
    name = "Nodes = running instances, all Ready"
    running = sorted(c.in_service())
    found = c.kube.list("Node")
    names = sorted(n["metadata"]["name"] for n in found)
    problems = []
    if names != running:
        extra = [c.label(n) for n in sorted(set(names) - set(running))]
        missing = [c.label(n) for n in sorted(set(running) - set(names))]
        problems.append(f"extra Nodes {extra}, missing Nodes {missing}")
    for n in found:
        label = c.label(n["metadata"]["name"])
        if not any(x.get("type") == "Ready" and x.get("status") == "True" for x in n["status"].get("conditions", [])):
            problems.append(f"{label} not Ready")
        if (n.get("spec") or {}).get("unschedulable"):
            problems.append(f"{label} cordoned")
        if n["metadata"].get("deletionTimestamp"):
            problems.append(f"{label} being deleted")
    data = {"nodes": names, "in_service": running}
    if problems:
        return Check(name, False, "; ".join(problems), data)
    return Check(name, True, f"{len(names)} Nodes, all Ready: {', '.join(c.label(n) for n in names)}", data)


def lifecycle_actions(c: ScenarioCluster) -> Check:
    """Every lifecycle action was completed by CompleteLifecycleAction; none timed out or is pending."""
    name = "every lifecycle action completed, none timed out"
    finished = c.region.finished_actions()
    pending = c.region.lifecycle_actions()
    timed_out = [a for a in finished if a.how != "completed"]
    launched = {m.instance_id for m in c.machines.values()}
    launch_done = {a.instance_id for a in finished if a.transition.endswith("LAUNCHING") and a.how == "completed"}
    never = sorted(launched - launch_done - {a.instance_id for a in pending})
    problems = []
    if timed_out:
        problems.append("timed out: " + ", ".join(f"{c.label(a.instance_id)} {a.hook}" for a in timed_out))
    if pending:
        problems.append("still pending: " + ", ".join(f"{c.label(a.instance_id)} {a.hook}" for a in pending))
    if never:
        problems.append("launch action never completed: " + ", ".join(c.label(i) for i in never))
    results: dict[str, int] = {}
    for a in finished:
        key = f"{'launch' if a.transition.endswith('LAUNCHING') else 'terminate'} {a.result}"
        results[key] = results.get(key, 0) + 1
    data = {"finished": [{"instance": a.instance_id, "hook": a.hook, "result": a.result, "how": a.how}
                         for a in finished], "pending": [a.instance_id for a in pending]}
    summary = ", ".join(f"{n} {k}" for k, n in sorted(results.items()))
    if problems:
        return Check(name, False, "; ".join(problems), data)
    return Check(name, True, f"{len(finished)} completed ({summary})", data)


def iam_enforced(c: ScenarioCluster) -> Check:
    """Every instance's AWS calls were decided by IAM against its role's policy (the region's own
    decisions, :attr:`Region.iam_decisions`), KMS use through SSM/Secrets Manager included, and none
    was refused (the call log's outcomes)."""
    name = "every instance call checked by IAM, none refused"
    ids = set(c.machines)
    checked = {caller for caller, _, _ in c.region.iam_decisions}
    kms = sorted({req.action for caller, req, d in c.region.iam_decisions
                  if caller in ids and req.action.startswith("kms:") and d.allowed})
    refused = [f"{c.label(x.caller)} {x.service}:{x.action}" for x in c.region.calls()
               if x.caller in ids and x.outcome in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")]
    unchecked = sorted(c.label(i) for i in ids - checked)
    calls = sum(1 for x in c.region.calls() if x.caller in ids)
    data = {"refused": refused, "unchecked": unchecked, "kms_actions": kms, "calls": calls}
    if refused or unchecked:
        return Check(name, False, "; ".join(filter(None, [
            f"refused: {', '.join(refused[:5])}" if refused else "",
            f"never checked: {', '.join(unchecked)}" if unchecked else ""])), data)
    return Check(name, True, f"{calls} calls of {len(ids)} instances, KMS through the services: "
                 f"{', '.join(kms) or 'none'}", data)


def pdbs(c: ScenarioCluster) -> Check:
    """No PodDisruptionBudget was violated at any Pod change since it was first met."""
    name = "no PodDisruptionBudget violated"
    tracker = c.pdb
    data = {"violations": [asdict(v) for v in tracker.violations],
            "lowest": {k: {"healthy": h, "desired": d} for k, (h, d) in tracker.lowest.items()},
            "errors": tracker.errors}
    if tracker.errors:
        return Check(name, False, f"tracker errors: {tracker.errors[:3]}", data)
    if tracker.violations:
        v = tracker.violations[0]
        return Check(name, False, f"{len(tracker.violations)} violation(s); first at +{v.t:.1f}s: {v.pdb} "
                                  f"{v.healthy}/{v.desired} healthy after {v.cause}", data)
    if not tracker.lowest:
        return Check(name, True, "no budget in this scenario", data)
    lows = ", ".join(f"{k} never below {h} healthy (needs {d})" for k, (h, d) in sorted(tracker.lowest.items()))
    return Check(name, True, lows, data)


def _hosts_problems(c: ScenarioCluster) -> tuple[list[str], dict[str, Any]]:
    from herd_sandbox.instance import BASE_HOSTS
    from herd_sandbox.verify import hosts_block_problems

    endpoint = f"control-plane.{c.name}.internal"
    cp_ips = {m.ip for m in c.running("control-plane")}
    problems, seen = [], {}
    for m in c.running():
        text = m.inst.root.read_text("/etc/hosts", default="")
        found, seen[m.label] = hosts_block_problems(text, BASE_HOSTS, endpoint, cp_ips)
        problems.extend(f"{m.label}: {p}" for p in found)
    return problems, {"endpoint": endpoint, "entries": seen}


def hosts_valid(c: ScenarioCluster, settle_s: float = 15.0) -> Check:
    """/etc/hosts of every running instance: one well-formed managed block whose endpoint points at
    a running control plane, the lines around it untouched.

    A replaced control plane leaves other instances' blocks pointing at it until their watcher's
    next check (``hosts.refresh_interval_s``), so this waits up to ``settle_s`` seconds for that.
    """
    name = "/etc/hosts valid on every instance"
    deadline = time.monotonic() + settle_s
    while True:
        problems, data = _hosts_problems(c)
        if not problems or time.monotonic() >= deadline:
            break
        time.sleep(0.5)  # the instances' watchers rewrite the files; nothing to wait on but the clock
    if problems:
        return Check(name, False, "; ".join(problems[:4]), data)
    return Check(name, True, f"{len(data['entries'])} instances: {data['endpoint']} → a running control plane",
                 data)


def joins(c: ScenarioCluster) -> Check:
    """Every ``herd-agent join`` exited 0."""
    name = "every join succeeded"
    failed = [m for m in c.machines.values() if m.join_rc not in (0, None) or (m.join_rc is None and m.off_at)]
    running = [m for m in c.machines.values() if m.join_rc is None and not m.off_at]
    times = sorted(m.join_s for m in c.machines.values() if m.join_rc == 0 and m.join_s is not None)
    data = {m.label: {"rc": m.join_rc, "seconds": m.join_s, "founder": m.founder} for m in c.machines.values()}
    if failed or running:
        text = "; ".join([f"{m.label} exit {m.join_rc}: {m.tail('join.log', 1)}" for m in failed]
                         + [f"{m.label} still joining" for m in running])
        return Check(name, False, text, data)
    median = times[len(times) // 2] if times else 0.0
    return Check(name, True, f"{len(times)} joins, median {median:.1f} s, slowest {max(times, default=0):.1f} s",
                 data)


def one_founder(c: ScenarioCluster) -> Check:
    """Exactly one control plane founded the cluster."""
    name = "exactly one founder"
    founders = []
    for m in c.machines.values():
        try:
            if json.loads(m.inst.root.read_text(JOIN_STATE)).get("founder"):
                founders.append(m.label)
        except (OSError, ValueError):
            continue
    ok = len(founders) == 1
    return Check(name, ok, f"founder: {founders[0]}" if ok else f"founders: {founders or 'none'}",
                 {"founders": founders})


def leaves(c: ScenarioCluster) -> Check:
    """Every instance that left finished its leave with no failed step, and stopped k3s and etcd
    itself (nothing but the watcher still ran when the machine was powered off)."""
    name = "every leave finished every step"
    gone = [m for m in c.machines.values() if m.off_at is not None and m.join_rc == 0]
    problems, data = [], {}
    for m in gone:
        try:
            journal = json.loads(m.inst.root.read_text(LEAVE_JOURNAL))
        except (OSError, ValueError):
            problems.append(f"{m.label}: no leave journal")
            continue
        steps = {k: v.get("status") for k, v in (journal.get("steps") or {}).items()}
        data[m.label] = {"reason": journal.get("reason"), "steps": steps, "result": journal.get("result"),
                         "leftovers": m.leftovers}
        bad = {k: s for k, s in steps.items() if s not in ("done", "skipped")}
        if bad:
            detail = "; ".join(f"{k}: {(journal['steps'][k].get('detail') or '')[:120]}" for k in bad)
            problems.append(f"{m.label}: {bad} ({detail})")
        units = [x for x in m.leftovers if x.endswith(".service")]
        if units:
            problems.append(f"{m.label}: still running at power-off: {', '.join(units)}")
    if problems:
        return Check(name, False, "; ".join(problems[:4]), data)
    if not gone:
        return Check(name, True, "no instance left in this scenario", data)
    reasons: dict[str, int] = {}
    for v in data.values():
        reasons[v["reason"]] = reasons.get(v["reason"], 0) + 1
    return Check(name, True, f"{len(gone)} leaves ({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))}), "
                             "k3s and etcd stopped by the agent", data)


def expected_processes(c: ScenarioCluster) -> list[str]:
    """Problems with what runs on the machines now: every running machine has its watcher (when
    enabled), k3s and (external etcd, control planes) etcd, and no join; powered-off machines run nothing."""
    from herd_sandbox.systemctl import Systemctl

    problems = []
    for m in c.running():
        ctl = Systemctl(m.inst.root)
        unit = "k3s.service" if m.is_control_plane else "k3s-agent.service"
        if not ctl.is_active(unit):
            problems.append(f"{m.label}: {unit} not running")
        if m.is_control_plane and c.etcd_mode == "external" and not ctl.is_active("herd-etcd.service"):
            problems.append(f"{m.label}: herd-etcd.service not running")
        if c.watch_enabled and (m.watch is None or m.watch.poll() is not None):
            problems.append(f"{m.label}: herd-agent watch not running")
        if m.join is not None and m.join.poll() is None:
            problems.append(f"{m.label}: a join is still running")
    off = {m.label for m in c.machines.values() if m.off_at is not None}
    for proc in c.processes():
        if proc["instance"] in off:
            problems.append(f"{proc['instance']} (powered off) still runs pid {proc['pid']}: {proc['what'][:80]}")
    return problems


def processes(before_teardown: list[str], after_teardown: list[dict[str, Any]]) -> Check:
    """No process left behind: the expected ones before teardown, none of this run's after it."""
    name = "no process left behind"
    problems = list(before_teardown)
    problems += [f"after teardown: pid {p['pid']} ({p['instance']}): {p['what'][:80]}" for p in after_teardown]
    data = {"before_teardown": before_teardown, "after_teardown": after_teardown}
    if problems:
        return Check(name, False, "; ".join(problems[:4]), data)
    return Check(name, True, "each running instance ran exactly its watcher and units; none remain after exit", data)
