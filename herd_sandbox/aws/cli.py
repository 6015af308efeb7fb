"""``herd-sandbox aws …``: run the local AWS region by hand."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import click


@click.group()
def aws() -> None:
    """The local AWS region: moto + lifecycle hooks + per-instance IMDSv2 (docs/sandbox-aws.md)."""


@aws.command()
@click.option("--region", "region_name", default="us-east-1", show_default=True, help="AWS region name.")
@click.option("--port", default=0, type=int, help="TCP port on 127.0.0.1 (0 = a free one).")
@click.option(
    "--time-factor",
    default=1.0,
    type=float,
    show_default=True,
    help="Sandbox seconds per AWS second for lifecycle-hook timeouts (0.01: 3600 s → 36 s).",
)
@click.option("--asg", "asg_name", default=None, help="Pre-create a demo group with this name.")
@click.option("--size", default=2, type=int, show_default=True, help="Desired capacity of the --asg group.")
@click.option(
    "--hooks/--no-hooks", default=True, show_default=True, help="Give the --asg group launch/terminate hooks."
)
@click.option("--json-only", is_flag=True, help="Print only the JSON endpoints line (for scripts).")
@click.option("--fault", "faults", multiple=True, metavar="SPEC",
              help="Inject a fault from the start: service:Action=5xx|access-denied[*COUNT][@caller] "
                   "(docs/sandbox-aws.md). Repeatable.")
def serve(
    region_name: str, port: int, time_factor: float, asg_name: str | None, size: int, hooks: bool, json_only: bool,
    faults: tuple[str, ...] = (),
) -> None:
    """Start the region, print its endpoints as one JSON line, run until SIGINT/SIGTERM."""
    from herd_sandbox.aws.faults import AwsFault
    from herd_sandbox.aws.region import Hook, Region

    try:
        rules = [AwsFault.parse(spec) for spec in faults]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from None
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    region = Region(region_name=region_name, time_factor=time_factor, port=port)
    try:
        region.start()
        for rule in rules:
            region.faults.add(rule)
        if asg_name:
            region.create_launch_template(f"{asg_name}-template", user_data="#!/bin/sh\n")
            region.create_group(
                asg_name,
                f"{asg_name}-template",
                desired=size,
                max_size=max(size, 1) * 2,
                hooks=[Hook("launch", "launching", 600, "ABANDON"), Hook("terminate", "terminating", 600, "CONTINUE")]
                if hooks
                else [],
                tags={"Cluster": asg_name},
            )
        info = {
            "endpoint_url": region.endpoint_url,
            "region": region_name,
            "time_factor": time_factor,
            "env": region.env(),
            "instances": {
                i.instance_id: {"private_ip": i.private_ip, "imds": i.imds_url, "env": region.env(i.instance_id)}
                for i in region.instances()
            },
        }
        click.echo(json.dumps(info), nl=True)
        if not json_only:
            click.echo(
                f"AWS endpoint {region.endpoint_url} (region {region_name}); "
                "export the env above and use boto3 or the aws CLI. Ctrl-C stops.",
                err=True,
            )
        stop.wait()
    finally:
        region.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@aws.command()
@click.option("--endpoint", required=True, help="The running region's endpoint_url (from `serve`'s JSON line).")
@click.option("--clear", is_flag=True, help="Remove every injected fault instead.")
@click.argument("specs", nargs=-1, metavar="[SPEC]...")
def fault(endpoint: str, clear: bool, specs: tuple[str, ...]) -> None:
    """Inject AWS faults into a running region, e.g. ``autoscaling:CompleteLifecycleAction=5xx*3``
    or ``autoscaling:CompleteLifecycleAction=access-denied*2@i-0abc`` (SPEC:
    service:Action=5xx|access-denied[*COUNT][@caller]); prints the active rules as JSON."""
    from dataclasses import asdict

    import requests

    from herd_sandbox.aws.faults import CONTROL_PATH, AwsFault

    url = endpoint.rstrip("/") + CONTROL_PATH
    try:
        rules = [AwsFault.parse(spec) for spec in specs]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SPEC") from None
    if clear:
        resp = requests.delete(url, timeout=10)
    for rule in rules:
        resp = requests.post(url, json=asdict(rule), timeout=10)
        resp.raise_for_status()
    if not clear and not rules:
        resp = requests.get(url, timeout=10)
    resp.raise_for_status()
    click.echo(json.dumps(resp.json()["rules"]))
