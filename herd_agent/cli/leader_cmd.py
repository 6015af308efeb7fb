"""``herd-agent leader``, ``herd-agent releases status|plan`` and ``herd-agent plan releases``."""

from __future__ import annotations

import json
import os
import sys

import click

from herd_agent.cli.common import prepare


@click.command("leader")
@click.option("--once", is_flag=True, help="Leave after one full pass as leader (release the Lease, exit 0/1).")
@click.option("--identity", default=None, help="Holder identity (default: leader.identity, else <hostname>_<random>).")
@click.pass_obj
def leader(obj: object, once: bool, identity: str | None) -> None:
    """Run the Lease election; as leader, apply the declared Helm releases and manifests.

    \b
    Runs under herd-agent-leader.service (Type=notify, watchdog) on control planes. A client-go
    style coordination.k8s.io/v1 Lease election (15 s / 10 s / 2 s); every helm and API write is
    fenced by the Lease epoch (leaseTransitions). Exit: 0 stopped (Lease released), 75 lost the
    Lease (systemd restarts a candidate), 78 bad config, 80 helm missing. docs/leader.md.
    """
    from herd_agent.leader.service import LeaderService

    cfg = prepare(obj, role="control-plane")
    sys.exit(LeaderService(obj.root, cfg, identity=identity, once=once).run())  # type: ignore[attr-defined]


@click.group("releases")
def releases() -> None:
    """The leader's Helm releases."""


@releases.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.pass_obj
def releases_status(obj: object, as_json: bool) -> None:
    """Who leads (Lease), and each release's state and why (status ConfigMap, release records). Reads only."""
    from herd_agent import kube as kube_mod
    from herd_agent.leader import records
    from herd_agent.leader.service import load_release_set
    from herd_agent.leader.status import read_status

    cfg = prepare(obj)
    kube = kube_mod.client(obj.root, cfg, control_plane=True)  # type: ignore[attr-defined]
    doc = read_status(kube, cfg.get("leader.lease_namespace"), cfg.get("leader.lease_name"))
    for rel in load_release_set(obj.root, cfg).releases:  # type: ignore[attr-defined]
        latest = records.latest(kube, rel.namespace, rel.name)
        entry = doc["releases"].setdefault(rel.id, {})
        entry["helm_status"] = latest.status if latest else "absent"
        entry["revision"] = latest.revision if latest else None
        entry["epoch_label"] = latest.labels.get("herd.io/leader-epoch") if latest else None
    if as_json:
        click.echo(json.dumps(doc, indent=1, sort_keys=True))
        return
    lease = doc["lease"] or {}
    click.echo(f"lease: holder {lease.get('holder') or '(none)'}, transitions {lease.get('transitions')}")
    for rid, e in sorted(doc["releases"].items()):
        epoch = e.get("epoch") or e.get("epoch_label") or "-"
        click.echo(f"{rid:40} {e.get('helm_status', '-'):16} rev {e.get('revision') or '-':>3}  "
                   f"{e.get('state', '-'):10} epoch {epoch}  {e.get('why', '')}")


def _plan(obj: object) -> None:
    from herd_agent import kube as kube_mod
    from herd_agent.leader import plan as plan_mod
    from herd_agent.leader.secrets import fetch_secret
    from herd_agent.leader.service import load_release_set, make_helm

    cfg = prepare(obj)
    root = obj.root  # type: ignore[attr-defined]
    rset = load_release_set(root, cfg)
    kube = kube_mod.client(root, cfg, control_plane=True)
    lines = plan_mod.plan(kube, make_helm(root, cfg), rset, root.path(cfg.get("leader.work_dir")) / "plan",
                          lambda ref: fetch_secret(ref, os.environ.get("AWS_REGION") or None))
    click.echo(plan_mod.render(lines, len(rset.manifests)), nl=False)


@releases.command("plan")
@click.pass_obj
def releases_plan(obj: object) -> None:
    """What the next pass would change (helm template vs the deployed manifest). Writes nothing."""
    _plan(obj)


@click.command("releases")
@click.pass_obj
def plan_releases(obj: object) -> None:
    """What the leader's next pass would change (helm template vs deployed). Writes nothing."""
    _plan(obj)
