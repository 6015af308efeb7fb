"""``herd-agent etcd …``: status, stale-member cleanup, join and leave by hand (docs/etcd.md).

The etcd settings come from the config's ``etcd.*`` keys under ``--root``. Endpoints default to
this host's member: in ``embedded`` mode k3s' ``https://127.0.0.1:2379`` with k3s' etcd client
certificate; in ``external`` mode the client URL on the IP from the identity journal (or
``--ip``), else ``127.0.0.1``, with this member's certificate (TLS, the default) or plain HTTP
(``etcd.insecure_plain_http``, which every command warns about).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any

import click

from herd_agent.config.loader import load_config
from herd_agent.errors import ExitCode
from herd_agent.etcd.client import url_host
from herd_agent.etcd.journal import read_journal
from herd_agent.etcd.membership import Membership
from herd_agent.etcd.settings import EtcdSettings, Identity, transport_of
from herd_agent.logs import setup_logging


class _Ctx:
    def __init__(self, obj: Any, config_file: str | None, endpoints: tuple[str, ...], name: str | None,
                 ip: str | None, region: str | None) -> None:
        self.root = obj.root
        cfg = load_config(self.root, config_file, role="control-plane")
        setup_logging(obj.log_level or cfg.get("log.level"))
        self.settings = EtcdSettings.from_config(cfg, cluster=cfg.get("cluster.name") or "herd")
        journal = read_journal(self.root, self.settings.data_dir)
        self.ip = ip or (url_host(journal.peer_url) if journal else None)
        self.name = name or (journal.name if journal else socket.gethostname())
        self.region = region
        if endpoints:
            self.endpoints = list(endpoints)
        elif self.settings.mode == "embedded":
            self.endpoints = [self.settings.embedded_client_url]
        else:
            self.endpoints = [self.settings.client_url(self.ip or "127.0.0.1")]

    def membership(self) -> Membership:
        if not self.ip:
            raise click.UsageError("--ip is required (no identity journal names this member's IP)")
        return Membership(self.root, self.settings, Identity(self.name, self.ip), ca_store=self.ca_store())

    def oracle(self) -> Any:
        from herd_agent.etcd.gc import Ec2InstanceOracle

        return Ec2InstanceOracle(region=self.region)

    def ca_store(self) -> Any:
        if not self.settings.member_tls:
            return None
        from herd_agent.etcd.pki import SecretsManagerCaStore

        return SecretsManagerCaStore(self.settings.ca_secret, region=self.region)


@click.group()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Main config file (default /etc/herd-agent/config.yaml under --root).")
@click.option("--endpoint", "endpoints", multiple=True, metavar="URL",
              help="etcd client URL to talk to (repeatable); default: this host's member.")
@click.option("--name", default=None, help="This member's name (default: from the identity journal, else hostname).")
@click.option("--ip", default=None, help="This instance's private IP (default: from the identity journal).")
@click.option("--region", default=None, help="AWS region for the EC2 lookups (default: boto3's resolution).")
@click.pass_context
def etcd(ctx: click.Context, config_file: str | None, endpoints: tuple[str, ...], name: str | None,
         ip: str | None, region: str | None) -> None:
    """etcd membership of control planes: status, stale-member cleanup, join, leave.

    \b
    Exit codes: 0 ok, 64 usage, 69 etcd unreachable, 75 refused for quorum or lock (retry later),
    78 bad config, 80 systemctl failed, 81 a bounded wait ran out.
    """
    ctx.obj = _Ctx(ctx.obj, config_file, endpoints, name, ip, region)


@etcd.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@click.option("--no-cloud", is_flag=True, help="Skip the EC2 lookup (no stale candidates).")
@click.pass_obj
def status_cmd(c: _Ctx, as_json: bool, no_cloud: bool) -> None:
    """Members, leader, learners, quorum margin and stale candidates.

    \b
    JSON keys: cluster_id, leader, voters, healthy_voters, quorum, quorum_margin, learners,
    members[] (id, id_hex, name, peer_urls, client_urls, is_learner, started, healthy, leader,
    raft_index, errors, version), stale_candidates[] (id, name, reason, evidence, for_s, ripe),
    transport (how the members talk: TLS with client certificates, or PLAIN HTTP when
    etcd.insecure_plain_http opts out). IDs are decimal strings as on the etcd wire; id_hex is
    what etcdctl prints.
    """
    from herd_agent.etcd.gc import assess, load_seen
    from herd_agent.etcd.status import cluster_status

    client = Membership(c.root, c.settings, Identity(c.name, c.ip or "127.0.0.1")).client(c.endpoints)
    st = cluster_status(client)
    if not no_cloud:
        try:
            instances = c.oracle().describe([m.name for m in st.members if m.name],
                                            [m.peer_host for m in st.members if m.peer_host])
        except Exception as exc:  # noqa: BLE001 - status still prints without cloud truth
            click.echo(f"warning: EC2 lookup failed, no stale candidates shown: {exc}", err=True)
        else:
            journal = read_journal(c.root, c.settings.data_dir)
            now = time.time()
            _, cands = assess(st.members, instances, load_seen(c.root, c.settings.gc_state_file), now,
                              stale_grace_s=c.settings.stale_grace_s,
                              unstarted_grace_s=c.settings.unstarted_grace_s,
                              self_id=journal.member_id if journal else None,
                              silent={m.id for m in st.members if m.started and st.statuses.get(m.id) is None})
            st.stale = [x.to_json(now) for x in cands]
    transport = transport_of(c.settings)
    if as_json:
        click.echo(json.dumps({**st.to_json(), "transport": transport}, indent=2))
    else:
        click.echo(st.to_table())
        click.echo(f"transport: {transport}")


@etcd.command("gc")
@click.option("--dry-run", is_flag=True, help="Decide and report; remove nothing.")
@click.pass_obj
def gc_cmd(c: _Ctx, dry_run: bool) -> None:
    """Remove at most one stale member (cloud truth + quorum proof), under the membership lock.

    \b
    Prints one line per candidate. Exit 0 when nothing was ripe or one member was removed;
    75 when a ripe candidate was refused to protect quorum.
    """
    m = Membership(c.root, c.settings, Identity(c.name, c.ip or "127.0.0.1"), ca_store=c.ca_store())
    result = m.gc(c.endpoints, c.oracle(), dry_run=dry_run)
    now = time.time()
    for cand in result.candidates:
        d = cand.to_json(now)
        click.echo(f"candidate {d['id_hex']} {d['name'] or '(unstarted)'}: {d['reason']}: {d['evidence']} "
                   f"({d['for_s']:.0f}s, {'ripe' if d['ripe'] else 'in grace'})")
    for cand, verdict in result.refused:
        click.echo(f"refused {cand.member.id:x}: {verdict.reason}")
    if result.removed is not None:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} {result.removed.member.id:x} ({result.removed.member.name or 'unstarted'})")
    if not result.candidates:
        click.echo("no stale members")
    if result.refused and result.removed is None:
        sys.exit(ExitCode.TEMP_FAIL)


@etcd.command("join")
@click.option("--peer", "peers", multiple=True, metavar="URL", help="Client URL of an existing member (repeatable).")
@click.option("--found", is_flag=True, help="Start a new cluster with this member alone.")
@click.option("--no-gc", is_flag=True, help="Skip the stale-member pass before joining.")
@click.pass_obj
def join_cmd(c: _Ctx, peers: tuple[str, ...], found: bool, no_gc: bool) -> None:
    """Join the cluster as a learner under the lock, start herd-etcd.service, promote (external mode)."""
    if c.settings.mode != "external":
        raise click.UsageError("etcd.mode is embedded: k3s joins its own etcd")
    m = c.membership()
    if found:
        result = m.found()
    elif not peers:
        raise click.UsageError("give --peer URL of an existing member, or --found to start a new cluster")
    else:
        result = m.join(list(peers), oracle=None if no_gc else c.oracle())
    click.echo(json.dumps({"cluster_id": str(result.cluster_id), "member_id": str(result.member_id),
                           "reused": result.reused, "join_s": round(result.join_s, 3)}))


@etcd.command("leave")
@click.option("--peer", "peers", multiple=True, metavar="URL", help="Client URL of another member (repeatable).")
@click.pass_obj
def leave_cmd(c: _Ctx, peers: tuple[str, ...]) -> None:
    """Remove this member quorum-safely, stop herd-etcd.service and rotate the data dir (external mode).

    Embedded mode leaves through the Node deletion of the leave sequence, not from here.
    """
    if c.settings.mode != "external":
        raise click.UsageError("etcd.mode is embedded: the leave sequence deletes the Node instead")
    m = c.membership()
    result = m.leave(list(peers) or c.endpoints)
    click.echo(json.dumps({"member_id": str(result.member_id), "removed": result.removed,
                           "leadership_to": str(result.leadership_to), "leave_s": round(result.leave_s, 3)}))
