"""The release DAG: ``needs`` → ordered groups (pure, no I/O).

helmfile builds the same layers from ``needs: [[namespace/]name]`` and installs each layer
concurrently; we also keep the edges, so the applier can start a release as soon as *its own*
needs are ready rather than waiting for a whole layer (a hung release then holds up only what
needs it; NVIDIA/nvcf #1981 shows a hung release silently skipping the next layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from herd_agent.errors import ConfigError


class _HasNeeds(Protocol):
    @property
    def id(self) -> str: ...

    needs: tuple[str, ...]


def order(releases: Sequence[_HasNeeds]) -> list[list[str]]:
    """Group release ids by depth: group 0 needs nothing, group k needs only groups < k.

    Args:
        releases: objects with ``id`` (``namespace/name``) and ``needs`` (ids), in declared order.
    Returns:
        Groups of ids, each in declared order.
    Raises:
        ConfigError: a need names no declared release, or needs form a cycle (the cycle is named).
    """
    ids = [r.id for r in releases]
    known = set(ids)
    needs = {r.id: tuple(dict.fromkeys(r.needs)) for r in releases}
    problems = [f"leader releases: {rid} needs {n}, which is not declared (declare it, or fix the name)"
                for rid in ids for n in needs[rid] if n not in known]
    problems += [f"leader releases: {rid} needs itself" for rid in ids if rid in needs[rid]]
    if problems:
        raise ConfigError(problems)
    depth: dict[str, int] = {}
    remaining = list(ids)
    groups: list[list[str]] = []
    while remaining:
        ready = [rid for rid in remaining if all(n in depth for n in needs[rid])]
        if not ready:
            raise ConfigError([f"leader releases: needs form a cycle: {' -> '.join(find_cycle(needs, remaining))}"])
        for rid in ready:
            depth[rid] = len(groups)
        groups.append(ready)
        remaining = [rid for rid in remaining if rid not in depth]
    return groups


def find_cycle(needs: dict[str, tuple[str, ...]], among: Iterable[str]) -> list[str]:
    """One cycle among ``among`` as ``[a, b, ..., a]`` (each needs the next)."""
    among = list(among)
    pool = set(among)
    node = among[0]
    path: list[str] = []
    while node not in path:
        path.append(node)
        node = next(n for n in needs[node] if n in pool)
    return path[path.index(node):] + [node]


def dependents(releases: Sequence[_HasNeeds]) -> dict[str, list[str]]:
    """Reverse edges: for each id, the ids that need it (declared order)."""
    out: dict[str, list[str]] = {r.id: [] for r in releases}
    for r in releases:
        for n in r.needs:
            out.setdefault(n, []).append(r.id)
    return out
