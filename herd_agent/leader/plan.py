"""``herd-agent plan releases``: what a pass would change, writing nothing.

For each declared release: its desired values hash against the ``herd.io/values-hash`` label of
the deployed revision (the same test the applier uses); for a changed one, ``helm template`` of the
desired state against ``helm get manifest`` of the deployed one, as a unified diff per object.
Reads only: release records and Lease through the API, helm template/get (which only read). Secret
values are resolved (to hash and render them) but the diff is redacted.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd_agent.leader import records
from herd_agent.leader.helm import Helm, UpgradeArgs
from herd_agent.leader.readiness import manifest_objects
from herd_agent.leader.releases import ReleaseSet, SecretRef
from herd_agent.leader.secrets import generated_values, values_files, values_hash
from herd_agent.redact import redact


@dataclass
class PlanLine:
    """One release: ``action`` (install, upgrade, unchanged, uninstall, absent, recover) and the diff."""

    release: str
    action: str
    why: str
    diff: list[str] = field(default_factory=list)


def _index(text: str) -> dict[str, str]:
    import yaml

    out = {}
    for obj in manifest_objects(text):
        meta = obj.get("metadata") or {}
        out[f"{obj['kind']} {meta.get('namespace', '')}/{meta.get('name')}"] = yaml.safe_dump(obj, sort_keys=True)
    return out


def plan(kube: Any, helm: Helm, rset: ReleaseSet, work_dir: Path, resolve: Any) -> list[PlanLine]:
    """The plan for every release, in declared order (see the module docstring)."""
    lines = []
    for rel in rset.releases:
        latest = records.latest(kube, rel.namespace, rel.name)
        if not rel.installed:
            present = latest is not None and latest.status != "uninstalled"
            lines.append(PlanLine(rel.id, "uninstall" if present else "absent", "installed: false"))
            continue
        generated = generated_values(rel, resolve)
        digest = values_hash(rel, generated, lambda p: Path(p).read_bytes())
        if latest is not None and latest.status.startswith("pending-"):
            lines.append(PlanLine(rel.id, "recover", f"revision {latest.revision} is {latest.status}"))
        if latest is not None and latest.status == "deployed" and latest.labels.get(records.HASH_LABEL) == digest:
            lines.append(PlanLine(rel.id, "unchanged", f"revision {latest.revision}, hash {digest[:12]}"))
            continue
        with values_files(rel, generated, work_dir) as files:
            rendered = helm.template(UpgradeArgs(rel.name, rel.namespace, rel.chart, rel.version, files, {},
                                                 rel.wait, rel.timeout_s, rel.atomic, rel.create_namespace))
        deployed = helm.manifest(rel.name, rel.namespace) if latest is not None else ""
        old, new = _index(deployed), _index(rendered)
        diff = []
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                diff += list(difflib.unified_diff((old.get(key) or "").splitlines(), (new.get(key) or "").splitlines(),
                                                  f"deployed {key}", f"desired {key}", lineterm="", n=1))
        action = "install" if latest is None else "upgrade"
        lines.append(PlanLine(rel.id, action, "new release" if latest is None else
                              f"hash differs from revision {latest.revision}", [redact(d) for d in diff]))
    return lines


def render(lines: list[PlanLine], manifests: int) -> str:
    """The plan as text."""
    out = []
    for line in lines:
        out.append(f"{line.action:10} {line.release}: {line.why}")
        out += [f"    {d}" for d in line.diff]
    if manifests:
        out.append(f"apply      {manifests} manifest(s) after the releases (server-side apply)")
    return "\n".join(out) + "\n"


__all__ = ["PlanLine", "SecretRef", "plan", "render"]
