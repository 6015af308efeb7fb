"""``herd-agent join``, ``herd-agent plan join`` and ``herd-agent hosts sync``."""

from __future__ import annotations

import click

from herd_agent.cli.common import prepare
from herd_agent.join.sequence import PHASES


@click.command("join")
@click.option("--phase", type=click.Choice(PHASES), default="all", show_default=True,
              help="config: everything up to a queued k3s start (herd-agent-join.service); ready: wait for "
                   "the Node and complete the launch hook (herd-agent-join-ready.service); all: both.")
@click.pass_obj
def join(obj: object, phase: str) -> None:
    """Join this instance to its cluster and complete the launch lifecycle hook.

    \b
    identity (IMDSv2) → control-plane discovery (EC2 tags, VPC, CA checked against the secure
    token) and the founder decision → /etc/hosts → kernel drop-ins → join tokens → etcd (control
    planes, external mode) → k3s config → start k3s → Node Ready → publish the secure tokens
    (founder) → CompleteLifecycleAction CONTINUE.
    Every step is idempotent; a re-run on a joined node changes nothing. A definite failure
    completes the hook with join.failure_result (ABANDON) and exits with the step's code.
    """
    from herd_agent.join.sequence import JoinSequence

    cfg = prepare(obj)
    JoinSequence(obj.root, cfg).run(phase)  # type: ignore[attr-defined]


@click.group("plan")
def plan() -> None:
    """Show what a sequence would change, changing nothing."""


def _plan_leave() -> click.Command:
    from herd_agent.cli.leave_cmd import plan_leave

    return plan_leave


@plan.command("join")
@click.pass_obj
def plan_join(obj: object) -> None:
    """Print the file diffs, commands and API calls a join would make.

    Reads identity, tags and the control-plane list (read-only calls); writes nothing, runs no
    command, and makes no call that changes anything. The token is shown as ***.
    """
    from herd_agent.join.sequence import JoinSequence

    cfg = prepare(obj)
    seq = JoinSequence(obj.root, cfg, plan=True)  # type: ignore[attr-defined]
    seq.run("all")
    click.echo(seq.plan_report(), nl=False)


@click.group("hosts")
def hosts_group() -> None:
    """The managed block of /etc/hosts."""


plan.add_command(_plan_leave(), "leave")


def _plan_releases() -> click.Command:
    from herd_agent.cli.leader_cmd import plan_releases

    return plan_releases


plan.add_command(_plan_releases(), "releases")


@hosts_group.command("sync")
@click.pass_obj
def hosts_sync(obj: object) -> None:
    """Point the control-plane endpoint name at a healthy control plane.

    \b
    Joined nodes keep the recorded control plane while it answers the probe (verified against
    the pinned cluster CA; no EC2 call); otherwise the control planes are looked up by tag and
    probed. Writes only on change.
    """
    from herd_agent.discovery import control_plane
    from herd_agent.discovery.identity import read_identity
    from herd_agent.discovery.imds import ImdsClient
    from herd_agent.host import hosts
    from herd_agent.join.state import load_state
    from herd_agent.join.token import AGENT, SERVER, TokenStore
    from herd_agent.k3s.config import endpoint_name

    cfg = prepare(obj)
    root = obj.root  # type: ignore[attr-defined]
    ident = read_identity(ImdsClient.from_config(cfg), cfg)
    state = load_state(root)
    current = state.endpoint_ip if state and state.instance_id == ident.instance_id else None
    ca = control_plane.pinned_ca(root)
    store = TokenStore(cfg, ident)
    kind = SERVER if ident.is_control_plane else AGENT
    ip = control_plane.healthy_endpoint(ident, cfg, current=current, ca_pem=ca, require_secure=ca is not None,
                                        token=lambda: store.read(kind)).chosen.ip
    name = endpoint_name(cfg, ident)
    changed = hosts.sync(root, {name: ip})
    click.echo(f"{name} -> {ip}" + (" (written)" if changed else " (unchanged)"))
