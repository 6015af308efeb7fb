"""``herd-sandbox aws …``: run the local AWS region by hand."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import click

from herd_sandbox.cli import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_UNREACHABLE, fail


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


ENDPOINT = click.option("--endpoint", required=True, metavar="URL",
                        help="The running region's endpoint_url (from `herd-sandbox aws serve`'s JSON line).")

def control(endpoint: str, method: str, route: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call one control route of a running region (:mod:`herd_sandbox.aws.control`) and return
    its JSON answer; the one client of those routes for every command here.

    Args:
        endpoint: the region's ``endpoint_url``.
        method: HTTP method.
        route: the route under the control prefix, e.g. ``"faults"``, ``"imds/i-0abc/identity"``.
        doc: the JSON body, if any.

    Raises:
        click.exceptions.Exit: after printing the error, with :data:`~herd_sandbox.cli.EXIT_UNREACHABLE`,
            ``EXIT_NOT_FOUND`` (404: no such instance) or ``EXIT_BAD_INPUT`` (any other refusal).
    """
    import requests

    from herd_sandbox.aws.control import CONTROL_PREFIX

    url = endpoint.rstrip("/") + CONTROL_PREFIX + route
    try:
        resp = requests.request(method, url, json=doc, timeout=30)
    except requests.RequestException as exc:
        fail(EXIT_UNREACHABLE, f"no sandbox region answers at --endpoint {endpoint} ({exc.__class__.__name__}); "
                                "start one with `herd-sandbox aws serve` and pass its endpoint_url")
    try:
        answer = resp.json()
    except ValueError:
        answer = {"error": resp.text[:200]}
    if resp.status_code == 404:
        fail(EXIT_NOT_FOUND, answer.get("error", f"{url}: not found"))
    if resp.status_code >= 400:
        fail(EXIT_BAD_INPUT, answer.get("error", f"{url}: HTTP {resp.status_code}"))
    return dict(answer)


@aws.command()
@ENDPOINT
@click.option("--clear", is_flag=True, help="Remove every injected fault instead.")
@click.argument("specs", nargs=-1, metavar="[SPEC]...")
def fault(endpoint: str, clear: bool, specs: tuple[str, ...]) -> None:
    """Inject AWS faults into a running region, e.g. ``autoscaling:CompleteLifecycleAction=5xx*3``
    or ``autoscaling:CompleteLifecycleAction=access-denied*2@i-0abc`` (SPEC:
    service:Action=5xx|access-denied[*COUNT][@caller]); prints the active rules as JSON."""
    from dataclasses import asdict

    from herd_sandbox.aws.faults import AwsFault

    try:
        rules = [AwsFault.parse(spec) for spec in specs]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SPEC") from None
    answer = control(endpoint, "DELETE", "faults") if clear else None
    for rule in rules:
        answer = control(endpoint, "POST", "faults", asdict(rule))
    if answer is None:
        answer = control(endpoint, "GET", "faults")
    click.echo(json.dumps(answer["rules"]))


@aws.group()
def imds() -> None:
    """IMDS faults on a running region's instances: token revocation and expiry, identity overrides
    (docs/sandbox-aws.md, "IMDS faults from a shell"). Exit codes: 65 the region refused the input,
    66 no such instance, 69 no region at --endpoint, 2 a malformed command line."""


INSTANCE = click.argument("instance_id", metavar="INSTANCE_ID")


@imds.command("revoke-tokens")
@ENDPOINT
@INSTANCE
@click.option("--after", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="SECONDS",
              help="Expire the tokens this many AWS seconds from now (scaled by the region's clock factor) "
                   "instead of now.")
def revoke_tokens(endpoint: str, instance_id: str, after: float) -> None:
    """Every IMDS token the instance was given so far answers 401 from now on (or after
    --after SECONDS), as after its TTL ran out or IMDS restarted; a new token works. Prints
    ``{"instance_id", "revoked"}`` (how many live tokens were cut short)."""
    click.echo(json.dumps(control(endpoint, "POST", f"imds/{instance_id}/revoke-tokens", {"after": after})))


@imds.command("token-ttl")
@ENDPOINT
@INSTANCE
@click.argument("seconds", type=click.FloatRange(min=0, min_open=True), required=False)
@click.option("--clear", is_flag=True, help="Tokens live their asked-for TTL again.")
def token_ttl(endpoint: str, instance_id: str, seconds: float | None, clear: bool) -> None:
    """Tokens the instance gets from now on expire after at most SECONDS (AWS seconds, scaled by
    the region's clock factor), whatever TTL it asked for: expiry comes early. Prints
    ``{"instance_id", "max_ttl"}``."""
    if (seconds is None) == (not clear):
        raise click.UsageError("give SECONDS (a cap on new tokens' lifetime) or --clear, not both or neither")
    click.echo(json.dumps(control(endpoint, "PUT", f"imds/{instance_id}/token-ttl", {"max_ttl": seconds})))


@imds.command()
@ENDPOINT
@INSTANCE
@click.option("--clear", is_flag=True, help="Drop every override first (alone: serve the real identity again).")
@click.argument("fields", nargs=-1, metavar="[FIELD=VALUE]...")
def override(endpoint: str, instance_id: str, clear: bool, fields: tuple[str, ...]) -> None:
    """Replace what the instance's IMDS says about it — FIELD is instance_id, private_ip,
    local_hostname, region or availability_zone (``-`` works for ``_``) — in the identity document
    and the matching meta-data paths, served verbatim (``$'a\\nb'`` puts a newline in). Set it
    before the agent boots. Without FIELD=VALUE and --clear, prints the overrides in force.
    Prints ``{"instance_id", "overrides"}``."""
    doc: dict[str, str] = {}
    for item in fields:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not FIELD=VALUE, e.g. private_ip=10.0.0.7", param_hint="FIELD=VALUE")
        doc[key.replace("-", "_")] = value
    route = f"imds/{instance_id}/identity"
    answer = control(endpoint, "DELETE", route) if clear else None
    if doc or answer is None:
        answer = control(endpoint, "PUT", route, doc) if doc else control(endpoint, "GET", route)
    click.echo(json.dumps(answer))
