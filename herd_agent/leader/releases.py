"""The declared release list, with helmfile's field names (helmfile.readthedocs.io, "Configuration").

Accepted (a mapping, from ``leader.spec`` in the agent config or a plain-YAML ``helmfile.yaml``
named by ``leader.helmfile``)::

    repositories: [{name, url, oci?}]
    releases:
      - name: web                    # required, DNS-1123 label
        namespace: apps              # default "default"
        chart: repo/web | oci://registry/charts/web | /usr/share/herd-agent/charts/web   # required
        version: 1.2.3               # chart version (not for local paths)
        values: [{...inline mapping...}, "relative/or/absolute/file.yaml"]
        valuesFiles: [file.yaml]     # herd-agent's plain list of files (merged after ``values``)
        set: [{name: a.b, value: x}] # --set-string equivalents
        secrets: [{name: a.b, ssm: /param} | {name: a.b, secretsManager: id, key?: json-key}]
        needs: [other, ns/other]     # [namespace/]name of releases that must be deployed and ready first
        wait: true                   # default true
        timeout: 300                 # seconds, default 300
        createNamespace: true        # default true
        installed: true              # false uninstalls
        atomic: false                # roll back a failed upgrade (helm 3 --atomic, helm 4 --rollback-on-failure)
        failurePolicy: retry         # retry (capped backoff) | reinstall (uninstall then install; destroys data)
    manifests: [{...Kubernetes object...}]    # applied after the releases (server-side apply)

Not supported, and refused with a config error naming the key: Go templates (``{{ }}`` anywhere,
``.gotmpl`` files), ``environments``, ``helmDefaults``, ``bases``, ``helmfiles``, ``hooks`` and any
other helmfile key not listed above. Everything else in a release is refused too, so a typo never
silently does nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from herd_agent.errors import ConfigError

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?")
_UNSUPPORTED_TOP = ("environments", "helmDefaults", "bases", "helmfiles", "hooks", "templates", "missingFileHandler",
                    "commonLabels", "apiVersions", "kubeVersion", "lockFilePath")
_RELEASE_KEYS = {"name", "namespace", "chart", "version", "values", "valuesFiles", "set", "secrets", "needs", "wait",
                 "timeout", "createNamespace", "installed", "atomic", "failurePolicy"}


@dataclass(frozen=True)
class SecretRef:
    """A value taken from AWS at apply time: ``name`` is the dotted values key; ``ssm`` a
    Parameter Store name, or ``secrets_manager`` a secret id (``key``: a field of its JSON)."""

    name: str
    ssm: str | None = None
    secrets_manager: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Release:
    """One release; fields as in the module docstring (``id`` is ``namespace/name``)."""

    name: str
    namespace: str
    chart: str
    version: str | None = None
    values: tuple[Any, ...] = ()
    values_files: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    secrets: tuple[SecretRef, ...] = ()
    needs: tuple[str, ...] = ()
    wait: bool = True
    timeout_s: int = 300
    create_namespace: bool = True
    installed: bool = True
    atomic: bool = False
    failure_policy: str = "retry"

    @property
    def id(self) -> str:
        """``namespace/name``, the key ``needs`` refers to."""
        return f"{self.namespace}/{self.name}"

    @property
    def local_chart(self) -> bool:
        """The chart is a path on this machine (baked into the AMI for offline bootstrap)."""
        return self.chart.startswith(("/", "./", "../"))


@dataclass(frozen=True)
class Repository:
    """A chart repository ``name`` at ``url`` (``oci``: a registry, nothing to add)."""

    name: str
    url: str
    oci: bool = False


@dataclass(frozen=True)
class ReleaseSet:
    """The whole declaration: repositories, releases (in file order) and manifests."""

    repositories: tuple[Repository, ...] = ()
    releases: tuple[Release, ...] = ()
    manifests: tuple[dict[str, Any], ...] = field(default=())

    def by_id(self) -> dict[str, Release]:
        """Releases keyed by ``namespace/name``."""
        return {r.id: r for r in self.releases}


def _templated(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, dict):
        return any(_templated(k) or _templated(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_templated(v) for v in value)
    return False


def _bool(where: str, value: Any, default: bool, problems: list[str]) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        problems.append(f"{where}: must be true or false (got {value!r})")
        return default
    return value


def parse(doc: Any, *, source: str = "leader.spec", base_dir: Path | None = None) -> ReleaseSet:
    """Validate ``doc`` and build the :class:`ReleaseSet`.

    Args:
        doc: the mapping (``repositories``, ``releases``, ``manifests``).
        source: how problems name the input (``leader.spec`` or the helmfile path).
        base_dir: relative ``values``/``valuesFiles`` paths and ``./`` charts resolve against it.

    Raises:
        ConfigError: one line per problem, e.g. ``leader.spec.releases[2].needs: unknown release
            apps/db (declare it, or fix the name)``.
    """
    problems: list[str] = []
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError([f"{source}: must be a mapping with repositories, releases, manifests "
                           f"(got {type(doc).__name__})"])
    for key in doc:
        if key in _UNSUPPORTED_TOP:
            problems.append(f"{source}.{key}: helmfile's {key} is not supported by herd-agent; "
                            "write the resulting plain values into each release")
        elif key not in ("repositories", "releases", "manifests"):
            problems.append(f"{source}.{key}: unknown key (allowed: repositories, releases, manifests)")
    if _templated(doc):
        problems.append(f"{source}: Go templates ({{{{ ... }}}}) are not supported; render them before, "
                        "or write plain values")
    repos = []
    for i, item in enumerate(doc.get("repositories") or []):
        where = f"{source}.repositories[{i}]"
        if not isinstance(item, dict) or not item.get("name") or not item.get("url"):
            problems.append(f"{where}: needs name and url")
            continue
        repos.append(Repository(str(item["name"]), str(item["url"]), bool(item.get("oci", False))))
    releases: list[Release] = []
    for i, item in enumerate(doc.get("releases") or []):
        rel = _release(item, f"{source}.releases[{i}]", base_dir, problems)
        if rel is not None:
            releases.append(rel)
    seen: set[str] = set()
    for i, rel in enumerate(releases):
        if rel.id in seen:
            problems.append(f"{source}.releases[{i}]: release {rel.id} is declared twice")
        seen.add(rel.id)
    manifests = []
    for i, item in enumerate(doc.get("manifests") or []):
        where = f"{source}.manifests[{i}]"
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not item.get("apiVersion") or not item.get("kind") \
                or not isinstance(meta, dict) or not meta.get("name"):
            problems.append(f"{where}: must be a Kubernetes object with apiVersion, kind and metadata.name")
            continue
        manifests.append(item)
    if problems:
        raise ConfigError(problems)
    result = ReleaseSet(tuple(repos), tuple(releases), tuple(manifests))
    from herd_agent.leader.dag import order  # unknown needs and cycles are config errors too

    order(result.releases)
    return result


def _release(item: Any, where: str, base_dir: Path | None, problems: list[str]) -> Release | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    for key in item:
        if key not in _RELEASE_KEYS:
            problems.append(f"{where}.{key}: unknown or unsupported release key "
                            f"(allowed: {', '.join(sorted(_RELEASE_KEYS))})")
    name, chart = item.get("name"), item.get("chart")
    namespace = item.get("namespace") or "default"
    if not isinstance(name, str) or not _DNS_LABEL.fullmatch(name):
        problems.append(f"{where}.name: must be a DNS-1123 label of at most 53 characters (got {name!r})")
        return None
    if not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace):
        problems.append(f"{where}.namespace: must be a DNS-1123 label (got {namespace!r})")
        return None
    if not isinstance(chart, str) or not chart:
        problems.append(f"{where}.chart: required: repo/chart, oci://..., or a local path")
        return None
    if base_dir is not None and chart.startswith(("./", "../")):
        chart = str((base_dir / chart).resolve())
    values: list[Any] = []
    for j, v in enumerate(item.get("values") or []):
        if isinstance(v, dict):
            values.append(v)
        elif isinstance(v, str):
            if v.endswith(".gotmpl"):
                problems.append(f"{where}.values[{j}]: .gotmpl files are not supported (Go templates)")
            if base_dir is None and not v.startswith("/"):
                problems.append(f"{where}.values[{j}]: a values file in the agent config must be an absolute path "
                                f"(got {v!r})")
            values.append(str(base_dir / v) if base_dir and not v.startswith("/") else v)
        else:
            problems.append(f"{where}.values[{j}]: must be a mapping or a file path")
    files = []
    for j, v in enumerate(item.get("valuesFiles") or []):
        if not isinstance(v, str):
            problems.append(f"{where}.valuesFiles[{j}]: must be a file path")
            continue
        if base_dir is None and not v.startswith("/"):
            problems.append(f"{where}.valuesFiles[{j}]: must be an absolute path in the agent config (got {v!r})")
        files.append(str(base_dir / v) if base_dir and not v.startswith("/") else v)
    sets = []
    for j, s in enumerate(item.get("set") or []):
        if not isinstance(s, dict) or "name" not in s or "value" not in s:
            problems.append(f"{where}.set[{j}]: must be {{name: a.b, value: x}}")
            continue
        sets.append((str(s["name"]), str(s["value"])))
    secrets = []
    for j, s in enumerate(item.get("secrets") or []):
        if not isinstance(s, dict) or not s.get("name") or (bool(s.get("ssm")) == bool(s.get("secretsManager"))):
            problems.append(f"{where}.secrets[{j}]: must be {{name: a.b, ssm: /param}} or "
                            "{name: a.b, secretsManager: id, key: field}")
            continue
        secrets.append(SecretRef(str(s["name"]), s.get("ssm"), s.get("secretsManager"), s.get("key")))
    needs = []
    for j, n in enumerate(item.get("needs") or []):
        if not isinstance(n, str) or n.count("/") > 1:
            problems.append(f"{where}.needs[{j}]: must be [namespace/]name (got {n!r})")
            continue
        needs.append(n if "/" in n else f"{namespace}/{n}")
    timeout = item.get("timeout", 300)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 86400:
        problems.append(f"{where}.timeout: must be whole seconds between 1 and 86400 (got {timeout!r})")
        timeout = 300
    policy = item.get("failurePolicy", "retry")
    if policy not in ("retry", "reinstall"):
        problems.append(f"{where}.failurePolicy: must be retry or reinstall (got {policy!r})")
    version = item.get("version")
    return Release(
        name=name, namespace=namespace, chart=chart, version=None if version is None else str(version),
        values=tuple(values), values_files=tuple(files), set=tuple(sets), secrets=tuple(secrets),
        needs=tuple(needs), wait=_bool(f"{where}.wait", item.get("wait"), True, problems), timeout_s=timeout,
        create_namespace=_bool(f"{where}.createNamespace", item.get("createNamespace"), True, problems),
        installed=_bool(f"{where}.installed", item.get("installed"), True, problems),
        atomic=_bool(f"{where}.atomic", item.get("atomic"), False, problems), failure_policy=str(policy),
    )


def load(spec: dict[str, Any] | None, helmfile: str | None, read: Any = None) -> ReleaseSet:
    """The release set from the config: ``leader.spec`` or the plain-YAML file ``leader.helmfile``.

    Args:
        spec: the ``leader.spec`` mapping (may be empty).
        helmfile: path of a helmfile.yaml (plain YAML only), or None.
        read: ``read(path) -> str`` (default: open the file).

    Raises:
        ConfigError: both given, the file unreadable or not plain YAML, or any problem of :func:`parse`.
    """
    if helmfile and spec:
        raise ConfigError(["leader.helmfile: set either leader.spec or leader.helmfile, not both"])
    if not helmfile:
        return parse(spec or {})
    if helmfile.endswith(".gotmpl"):
        raise ConfigError([f"leader.helmfile: {helmfile}: .gotmpl helmfiles (Go templates) are not supported"])
    try:
        text = read(helmfile) if read else Path(helmfile).read_text()
    except OSError as exc:
        raise ConfigError([f"leader.helmfile: cannot read {helmfile}: {exc.strerror}"]) from None
    if "{{" in text:
        raise ConfigError([f"leader.helmfile: {helmfile} uses Go templates ({{{{ ... }}}}), which herd-agent "
                           "does not render; write plain YAML"])
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError([f"leader.helmfile: {helmfile}: not valid YAML: {exc}"]) from None
    if len(docs) != 1:
        raise ConfigError([f"leader.helmfile: {helmfile}: must hold exactly one YAML document (got {len(docs)}); "
                           "multi-part helmfiles (---) are not supported"])
    return parse(docs[0], source=helmfile, base_dir=Path(helmfile).parent)
