"""``herd-agent watch``, ``herd-agent leave`` and ``herd-agent plan leave``."""

from __future__ import annotations

import sys

import click

from herd_agent.cli.common import prepare

REASONS = ("manual", "asg-terminate", "spot-terminate", "shutdown", "rebalance", "maintenance")


@click.command("watch")
@click.pass_obj
def watch(obj: object) -> None:
    """Watch IMDS for termination and leave the cluster when it comes (herd-agent.service).

    \b
    Polls the ASG target lifecycle state, spot instance-action, rebalance recommendations and
    scheduled events every watch.poll_interval_s; sends READY=1 after the first good poll and
    WATCHDOG=1 while healthy; keeps /etc/hosts on a healthy control plane. On SIGTERM it leaves
    only when the machine is shutting down, never on a plain service restart.
    """
    from herd_agent.watch import Watcher

    cfg = prepare(obj)
    watcher = Watcher(obj.root, cfg)  # type: ignore[attr-defined]
    watcher.install_signal_handlers()
    sys.exit(watcher.run())


@click.command("leave")
@click.option("--reason", type=click.Choice(REASONS), default="manual", show_default=True,
              help="Why this instance leaves (recorded in the journal, Events and metrics).")
@click.option("--resume", is_flag=True, help="Only resume a journaled unfinished leave.")
@click.option("--no-complete-hook", is_flag=True, help="Drain and remove, but leave the lifecycle action alone.")
@click.pass_obj
def leave(obj: object, reason: str, resume: bool, no_complete_hook: bool) -> None:
    """Cordon, drain, leave etcd (control planes), delete the Node, stop k3s, complete the hook.

    \b
    Journaled in /var/lib/herd-agent/leave.json: after a crash or reboot the next run resumes at
    the first unfinished step. Only one leave runs at a time (exit 75 when one is running).
    """
    from herd_agent.leave.sequence import LeaveRequest, LeaveSequence

    cfg = prepare(obj)
    request = None if resume else LeaveRequest(reason, None, not no_complete_hook)
    journal = LeaveSequence(obj.root, cfg).run(request)  # type: ignore[attr-defined]
    for name, state in journal.steps.items():
        click.echo(f"{name:<14} {state.status:<8} {state.detail}")
    if any(s.status == "failed" for s in journal.steps.values()):
        sys.exit(1)


@click.command("leave")
@click.pass_obj
def plan_leave(obj: object) -> None:
    """Print what a leave would do now: pods to evict, PDB headroom, blockers, expected time.

    Reads the Node's pods and PodDisruptionBudgets; changes nothing.
    """
    from herd_agent.discovery.identity import read_identity
    from herd_agent.discovery.imds import ImdsClient
    from herd_agent.k3s.names import node_name
    from herd_agent.leave.plan import plan_text
    from herd_agent.leave.sequence import LeaveSequence, make_kube_client

    cfg = prepare(obj)
    imds = ImdsClient.from_config(cfg)
    ident = read_identity(imds, cfg)
    kube = make_kube_client(obj.root, cfg, ident)  # type: ignore[attr-defined]
    node = node_name(cfg.get("k3s.node_name"), ident)
    steps = LeaveSequence(obj.root, cfg, imds=imds, kube_factory=lambda _i: kube).plan(ident)  # type: ignore[attr-defined]
    click.echo(plan_text(kube, node, cfg, control_plane=ident.is_control_plane, steps=steps), nl=False)
