"""Release values, secrets included, rendered at apply time into 0600 files.

A release's inline ``values`` mappings, its ``set`` pairs and its ``secrets`` references are merged
(in that order, after any ``valuesFiles``) into one generated values file per apply, written 0600
in a 0700 directory (``leader.work_dir``, under the host root) and removed afterwards. Secret
values are read from SSM Parameter Store (``GetParameter`` with decryption) or Secrets Manager
(``GetSecretValue``, optionally one ``key`` of its JSON), registered with
:mod:`herd_agent.redact` at once, and so never appear on argv (the runner refuses them there),
in logs, or in Events. ``set`` and ``secrets`` names are dotted paths (``a.b.c``), as helm's
``--set-string``; list indexes are not supported.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from herd_agent.errors import ExitCode, HerdError
from herd_agent.leader.releases import Release, SecretRef
from herd_agent.redact import register_secret


def fetch_secret(ref: SecretRef, region: str | None) -> str:
    """The value ``ref`` points at (registered with the redactor before it is returned).

    Raises:
        AwsError: the read failed (AccessDenied names the action).
        HerdError: ``key`` given but the secret is not a JSON object holding it (exit 65).
    """
    from herd_agent import aws

    if ref.ssm:
        value = aws.call(aws.client("ssm", region), "GetParameter", Name=ref.ssm,
                         WithDecryption=True)["Parameter"]["Value"]
    else:
        value = aws.call(aws.client("secretsmanager", region), "GetSecretValue",
                         SecretId=ref.secrets_manager)["SecretString"]
        register_secret(value)
        if ref.key:
            try:
                value = json.loads(value)[ref.key]
            except (ValueError, KeyError, TypeError):
                raise HerdError(f"secret {ref.secrets_manager}: not a JSON object with key {ref.key!r} "
                                f"(needed for values key {ref.name})", exit_code=ExitCode.DATA) from None
    value = str(value)
    register_secret(value)
    return value


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted`` = ``a.b.c`` (mappings created on the way;
    ``\\.`` escapes a dot inside a key, as helm's --set)."""
    parts = [p.replace("\0", ".") for p in dotted.replace("\\.", "\0").split(".")]
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """helm's values merge: mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else copy.deepcopy(v)
    return out


def generated_values(rel: Release, resolve: Callable[[SecretRef], str]) -> dict[str, Any]:
    """The merged inline values + ``set`` + resolved ``secrets`` of ``rel`` (file values excluded)."""
    merged: dict[str, Any] = {}
    for v in rel.values:
        if isinstance(v, dict):
            merged = deep_merge(merged, v)
    for name, value in rel.set:
        set_path(merged, name, value)
    for ref in rel.secrets:
        set_path(merged, ref.name, resolve(ref))
    return merged


def values_hash(rel: Release, generated: dict[str, Any], read: Callable[[str], bytes]) -> str:
    """sha256 (40 hex, a valid label value) over chart, version, the values files' bytes in order,
    the generated values, and for a local chart every file of it: what decides "changed"."""
    h = hashlib.sha256()
    h.update(f"{rel.chart}\0{rel.version or ''}\0".encode())
    for v in rel.values:
        if isinstance(v, str):
            h.update(b"file\0" + read(v))
    for path in rel.values_files:
        h.update(b"file\0" + read(path))
    h.update(json.dumps(generated, sort_keys=True, default=str).encode())
    if rel.local_chart and Path(rel.chart).is_dir():
        for f in sorted(Path(rel.chart).rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(rel.chart)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:40]


@contextlib.contextmanager
def values_files(rel: Release, generated: dict[str, Any], work_dir: Path) -> Iterator[tuple[str, ...]]:
    """The ``--values`` files for ``rel`` in helm's order: file entries of ``values``, then
    ``valuesFiles``, then one generated 0600 file (removed on exit, even on error)."""
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(work_dir, 0o700)
    files = [v for v in rel.values if isinstance(v, str)] + list(rel.values_files)
    path = None
    try:
        if generated:
            fd, path = tempfile.mkstemp(prefix=f"{rel.namespace}-{rel.name}-", suffix=".yaml", dir=work_dir)
            with os.fdopen(fd, "w") as fh:  # mkstemp creates it 0600
                yaml.safe_dump(generated, fh, sort_keys=True)
            files.append(path)
        yield tuple(files)
    finally:
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
