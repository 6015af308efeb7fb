"""``herd-sandbox run [SCENARIO]``: the whole cluster lifecycle on this machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from herd_sandbox.scenario.scenarios import SCENARIOS


@click.command("run")
@click.argument("scenario", type=click.Choice(sorted(SCENARIOS)), default="lifecycle")
@click.option("--short", is_flag=True, help="The shortened variant the test suite runs (fewer instances).")
@click.option("--json", "json_out", is_flag=True,
              help="Print one JSON document (scenario, ok, checks, timeline, machines, state_dir) instead "
                   "of the timeline and table.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to keep every instance's root and logs "
                   "(default: $XDG_STATE_HOME/herd-agent/sandbox-runs/<scenario>-<time>-<pid>).")
@click.option("--stack", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Run on the groups of this CloudFormation template (e.g. ami/cloudformation/cluster.yaml), "
                   "deployed into the region, instead of the sandbox's own (lifecycle and embedded only).")
@click.option("--etcd", "etcd", default=None, help="etcd binary (default: .toolchain/bin/etcd, then PATH).")
@click.option("--kubectl", "kubectl", default=None, help="kubectl binary (default: .toolchain/bin/kubectl, then PATH).")
def run(scenario: str, short: bool, json_out: bool, state_dir: Path | None, stack: Path | None, etcd: str | None,
        kubectl: str | None) -> None:
    """Run a scenario in the local region and check the result.

    \b
    Brings up moto-backed AWS (EC2, Auto Scaling with lifecycle hooks, SSM), one IMDS per
    instance, the emulated Kubernetes API and real etcd; boots the instances of two Auto
    Scaling groups as sandbox instances, each running the real `herd-agent join` and then
    `herd-agent watch`; drives the scenario; checks the end state.

    \b
    Scenarios:
      lifecycle      3 control planes + 3 workers (external etcd); a workload with a PDB
                     (kubectl apply); workers scaled in by 1, out by 2; every control plane
                     replaced, one at a time; a worker spot-interrupted.  (default)
      founding-race  5 control planes boot at once: one founder, one cluster.
      embedded       lifecycle with k3s' embedded etcd.
      leader         3 control planes elect a leader that applies Helm releases (helm 4);
                     kill -9 mid upgrade, recovery, a one-release change, a deposed leader.
      leader-helm3   leader with helm 3.

    \b
    --stack FILE deploys the template into the region (moto's CloudFormation) and runs
    lifecycle/embedded on the groups, launch templates, hooks, KMS key and instance roles it
    made (policies enforced on every instance call); the short variant founds 3 control planes.

    \b
    Exit: 0 every check passed, 1 a step or a check failed, 130 interrupted.
    Every instance's logs stay in the state directory printed at the end (docs/sandbox.md).
    """
    from herd_sandbox.scenario import scenarios
    from herd_sandbox.scenario.runner import render_summary, run_scenario
    from herd_sandbox.scenario.tools import ToolMissing, Tools

    try:
        chosen = scenarios.get(scenario, short, stack)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        tools = Tools.find(etcd, kubectl)
    except ToolMissing as exc:
        raise click.ClickException(str(exc)) from exc
    result = run_scenario(chosen, state_dir=state_dir,
                          out=None if json_out else sys.stdout, tools=tools)
    if json_out:
        click.echo(json.dumps(result.to_json(), indent=1))
    else:
        click.echo(render_summary(result))
    sys.exit(result.exit_code)
