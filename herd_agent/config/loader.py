"""Load, merge and validate the configuration against :data:`~herd_agent.config.schema.SCHEMA`.

Files: ``/etc/herd-agent/config.yaml`` (under the host root), then
``/etc/herd-agent/config.d/*.yaml`` in lexical order. Mappings deep-merge; lists and scalars
replace. Every problem found is reported, one line each, as ``key.path: problem (got VALUE)``;
YAML syntax errors as ``FILE:LINE:COLUMN: problem``. Any problem raises
:class:`~herd_agent.errors.ConfigError` (exit code 78, EX_CONFIG).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from herd_agent.config.schema import SCHEMA, Option, Schema
from herd_agent.errors import ConfigError
from herd_agent.host.fsroot import HostRoot
from herd_agent.redact import MASK

MAIN_FILE = "/etc/herd-agent/config.yaml"
DROPIN_DIR = "/etc/herd-agent/config.d"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (a key may appear once per mapping)", key_node.start_mark
            )
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass
class Config:
    """The effective configuration: defaults merged with every file, validated.

    Attributes:
        data: nested mapping of every key in the schema.
        sources: files read, in merge order.
        role: the role the config was validated for (None when unknown).
    """

    data: dict[str, Any]
    sources: list[str] = field(default_factory=list)
    role: str | None = None

    def get(self, path: str) -> Any:
        """Value of a dotted key, e.g. ``cfg.get("watch.poll_interval_s")``.

        Raises:
            KeyError: the key is not in the schema.
        """
        node: Any = self.data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(path)
            node = node[part]
        return node

    def expand(self, path: str, **values: str) -> str:
        """A string key with its ``{cluster}``-style placeholders filled in from ``values``."""
        return str(self.get(path)).format(**values)

    def masked(self, schema: Schema = SCHEMA) -> dict[str, Any]:
        """A deep copy with every secret key replaced by ``***`` (for printing and logs)."""
        out = copy.deepcopy(self.data)
        for opt in schema.options:
            if opt.secret and _get(out, opt.path) is not None:
                _set(out, opt.path, MASK)
        return out

    def to_yaml(self) -> str:
        """The masked effective config as YAML, sections in schema order."""
        masked = self.masked()
        ordered = {s: masked[s] for s in SCHEMA.sections() if s in masked}
        return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False)


def defaults(schema: Schema = SCHEMA) -> dict[str, Any]:
    """Nested mapping of every option's default."""
    out: dict[str, Any] = {}
    for opt in schema.options:
        _set(out, opt.path, copy.deepcopy(opt.default))
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge ``over`` onto ``base``: mappings merge key by key, lists and scalars replace.

    Returns a new mapping; neither input is changed.
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_files(root: HostRoot, file: str | None = None) -> list[Path]:
    """The files to read, in merge order: the main file (if it exists) then its drop-ins.

    Args:
        file: an explicit main file (a local path, not under the root); its drop-ins are in
            ``config.d/`` beside it. None means ``/etc/herd-agent/config.yaml`` under the root.
    """
    main = Path(file) if file else root.path(MAIN_FILE)
    dropins = main.parent / "config.d"
    files = [main] if main.exists() else []
    if dropins.is_dir():
        files.extend(sorted(p for p in dropins.iterdir() if p.suffix == ".yaml" and p.is_file()))
    return files


def parse_file(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Parse one YAML file into a mapping; returns (mapping, problems). Empty file = {}."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return {}, [f"{path}: cannot read: {exc.strerror}"]
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        return {}, [f"{where}: YAML syntax error: {problem}"]
    except yaml.YAMLError as exc:
        return {}, [f"{path}: YAML error: {exc}"]
    if doc is None:
        return {}, []
    if not isinstance(doc, dict):
        return {}, [f"{path}: the top level must be a mapping of sections (got {type(doc).__name__})"]
    return doc, []


def load_config(
    root: HostRoot | None = None,
    file: str | None = None,
    *,
    role: str | None = None,
    schema: Schema = SCHEMA,
) -> Config:
    """Read, merge and validate the configuration.

    Args:
        root: host root the default files are read under (default ``/``).
        file: explicit main file (see :func:`config_files`).
        role: the instance's role (``control-plane`` or ``node``) when known; the config's own
            ``identity.role`` wins. Role requirements are checked only when a role is known.

    Raises:
        ConfigError: one line per problem found, across all files.
    """
    root = root or HostRoot("/")
    files = config_files(root, file)
    merged: dict[str, Any] = {}
    problems: list[str] = []
    for path in files:
        doc, errs = parse_file(path)
        problems.extend(errs)
        merged = deep_merge(merged, doc)
    if problems:
        raise ConfigError(problems)
    problems = validate(merged, schema)
    data = deep_merge(defaults(schema), merged)
    effective_role = data.get("identity", {}).get("role") or role
    if not problems:
        problems = check_rules(data, merged, effective_role, schema)
    if problems:
        raise ConfigError(problems)
    return Config(data=data, sources=[str(p) for p in files], role=effective_role)


def validate(tree: dict[str, Any], schema: Schema = SCHEMA) -> list[str]:
    """Problems with a merged (not yet defaulted) tree: unknown keys, types, ranges, choices."""
    options = schema.by_path()
    problems: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if not isinstance(key, str):
                problems.append(f"{prefix or '(top)'}: keys must be strings (got {_show(key)})")
                continue
            if path in options:
                problems.extend(check_value(options[path], value))
                continue
            if isinstance(value, dict) and any(p.startswith(path + ".") for p in options):
                walk(value, path + ".")
                continue
            problems.append(f"{path}: unknown key{_suggest(path, options)}")

    walk(tree, "")
    return problems


def check_value(opt: Option, value: Any) -> list[str]:
    """Problems with one value against its option (empty when valid)."""
    shown = MASK if opt.secret else _show(value)
    p = opt.path
    if value is None:
        return [] if opt.nullable else [f"{p}: must be set to a {opt.type} (got null)"]
    t = opt.type
    if t == "bool":
        if not isinstance(value, bool):
            return [f"{p}: must be true or false (got {shown})"]
    elif t in ("int", "float"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if t == "float":
            ok = ok or (isinstance(value, float) and math.isfinite(value))
        if not ok:
            return [f"{p}: must be {'an integer' if t == 'int' else 'a number'} (got {shown})"]
        if opt.min is not None and value < opt.min or opt.max is not None and value > opt.max:
            return [f"{p}: must be between {_num(opt.min)} and {_num(opt.max)} (got {shown})"]
    elif t == "str":
        if not isinstance(value, str):
            return [f"{p}: must be a string (got {shown})"]
        if opt.choices and value not in opt.choices:
            return [f"{p}: must be one of {', '.join(map(str, opt.choices))}{_suggest_value(value, opt)} (got {shown})"]
        if opt.regex and not opt.regex.fullmatch(value):
            return [f"{p}: must match {opt.pattern} (got {shown})"]
    elif t == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return [f"{p}: must be a list of strings (got {shown})"]
        if opt.regex:
            bad = [v for v in value if not opt.regex.fullmatch(v)]
            if bad:
                return [f"{p}: every item must match {opt.pattern} (got {_show(bad[0])})"]
    elif t.startswith("map["):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return [f"{p}: must be a mapping with string keys (got {shown})"]
        if t == "map[str,str]":
            bad = [k for k, v in value.items() if not isinstance(v, (str, int)) or isinstance(v, bool)]
            if bad:
                return [f"{p}.{bad[0]}: must be a string or integer (got {_show(value[bad[0]])})"]
    else:  # pragma: no cover - schema bug
        raise AssertionError(f"unknown option type {t} for {p}")
    return []


def check_rules(data: dict[str, Any], given: dict[str, Any], role: str | None, schema: Schema) -> list[str]:
    """Cross-key problems: mutually exclusive keys set together, keys a role requires left unset."""
    problems: list[str] = []
    for rule in schema.exclusives:
        set_keys = [k for k in rule.keys if _is_set(_get(given, k))]
        if len(set_keys) > 1:
            shown = ", ".join(f"{k}={_show(_get(given, k))}" for k in set_keys)
            problems.append(f"{set_keys[1]}: cannot be set together with {set_keys[0]}: {rule.why} (got {shown})")
    for dep in schema.requires:
        if _get(data, dep.key) == dep.value and _get(data, dep.needs) != dep.needs_value:
            problems.append(f"{dep.needs}: must be {_show(dep.needs_value)} when {dep.key} is {_show(dep.value)}: "
                            f"{dep.why} (got {_show(_get(data, dep.needs))})")
    for req in schema.role_requirements:
        if role == req.role and not any(_is_set(_get(data, k)) for k in req.any_of):
            first = req.any_of[0]
            others = ", ".join(req.any_of[1:])
            problems.append(
                f"{first}: required for role {role} ({req.why}); set it or one of {others} (got null)"
            )
    return problems


def _is_set(value: Any) -> bool:
    return value is not None and value != [] and value != {}


def _get(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _num(v: float | None) -> str:
    if v is None:
        return "any"
    return str(int(v)) if float(v).is_integer() else str(v)


def _suggest(path: str, options: dict[str, Option]) -> str:
    import difflib  # only on a bad key: the resident watcher loads the config too

    candidates = list(options) + sorted({p.split(".", 1)[0] for p in options})
    match = difflib.get_close_matches(path, candidates, n=1, cutoff=0.6)
    if not match:
        # Same section, similar last word (e.g. watch.poll_intervall → watch.poll_interval_s).
        head, _, tail = path.rpartition(".")
        siblings = {p.rsplit(".", 1)[1]: p for p in options if p.rpartition(".")[0] == head}
        near = difflib.get_close_matches(tail, list(siblings), n=1, cutoff=0.5)
        match = [siblings[near[0]]] if near else []
    return f"; did you mean {match[0]}?" if match else ""


def _suggest_value(value: str, opt: Option) -> str:
    import difflib

    match = difflib.get_close_matches(value, [str(c) for c in opt.choices or ()], n=1, cutoff=0.5)
    return f"; did you mean {match[0]}?" if match else ""
