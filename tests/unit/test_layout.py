"""The shape the project promises: the harness stays out of the agent (issue 11).

- the agent's wheel holds no ``herd_sandbox`` and ``herd-agent --help`` lists no sandbox;
- no agent module imports the harness or mentions it outside comments;
- the sandbox's checks import nothing from the agent that computes what they check.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "herd_agent"


def agent_modules() -> list[Path]:
    return sorted(AGENT.rglob("*.py"))


@pytest.mark.allow_subprocess
def test_the_agent_wheel_holds_no_sandbox(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                        "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("herd_agent-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("herd_agent/leave/") for n in names)
    assert not [n for n in names if "sandbox" in n.lower()], [n for n in names if "sandbox" in n.lower()][:5]
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    for dep in ("moto", "werkzeug"):  # the harness's servers (cryptography is the agent's own: etcd TLS)
        assert f"Requires-Dist: {dep}" not in text


@pytest.mark.allow_subprocess
def test_herd_agent_help_lists_no_sandbox() -> None:
    r = subprocess.run([sys.executable, "-m", "herd_agent", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "sandbox" not in r.stdout.lower()


def test_no_agent_module_imports_the_harness() -> None:
    offenders = []
    for path in agent_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "herd_sandbox"]
    assert not offenders


def test_the_agent_code_does_not_mention_the_sandbox_outside_comments() -> None:
    """Strings and names only: a comment may point a reader to the harness, code may not know it."""
    offenders = []
    for path in agent_modules():
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        for tok in tokens:
            if tok.type in (tokenize.NAME, tokenize.STRING) and "sandbox" in tok.string.lower():
                if tok.type == tokenize.STRING and tok.string.lstrip("rbuf").startswith(('"""', "'''")):
                    continue  # a docstring is documentation, like a comment
                offenders.append(f"{path.relative_to(REPO)}:{tok.start[0]}: {tok.string[:60]}")
    assert not offenders, offenders[:5]


@pytest.mark.parametrize("module", ["herd_sandbox/verify.py", "herd_sandbox/scenario/checks.py"])
def test_sandbox_checks_use_their_own_code(module: str) -> None:
    """The checks import nothing from the agent (its hosts parser, quorum rendering, etcd client)."""
    tree = ast.parse((REPO / module).read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    imported += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert not [m for m in imported if m.split(".")[0] == "herd_agent"], imported
