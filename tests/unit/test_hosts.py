"""Golden tests for the managed /etc/hosts block, broken markers included."""

from __future__ import annotations

from pathlib import Path

import pytest

from herd_agent.host import hosts
from herd_agent.host.fsroot import HostRoot

GOLDEN = Path(__file__).parent / "golden" / "hosts"
NAME = "control-plane.blue.internal"
DESIRED = {NAME: "10.0.1.7"}
CASES = sorted(p.stem for p in GOLDEN.glob("*.in"))


def read(p: Path) -> str:
    return p.read_bytes().decode()


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    text = read(GOLDEN / f"{case}.in")
    expected = read(GOLDEN / f"{case}.out")
    out = hosts.render(hosts.change(hosts.parse(text, {NAME}), DESIRED))
    assert out == expected
    # Idempotent: a second pass over the result changes nothing and reports no repair.
    again = hosts.parse(out, {NAME})
    assert again.repairs == []
    assert hosts.render(hosts.change(again, DESIRED)) == out


def test_golden_set_covers_the_broken_shapes() -> None:
    assert {"duplicated-blocks", "begin-without-end", "end-without-begin", "odd-markers",
            "markers-reversed", "no-trailing-newline", "empty", "up-to-date"} <= set(CASES)


def test_bytes_outside_the_block_are_preserved() -> None:
    text = read(GOLDEN / "crlf-and-user-pin.in")
    out = hosts.render(hosts.change(hosts.parse(text, {NAME}), DESIRED))
    assert out.startswith(text)  # CRLF endings and the hand-pinned line kept verbatim


def test_entries_are_sorted_by_name_and_an_empty_mapping_removes_the_block() -> None:
    p = hosts.change(hosts.parse("127.0.0.1 localhost\n"), {"b.internal": "10.0.0.2", "a.internal": "10.0.0.1"})
    out = hosts.render(p)
    assert out.splitlines()[2:4] == ["10.0.0.1\ta.internal", "10.0.0.2\tb.internal"]
    assert hosts.render(hosts.change(hosts.parse(out), {})) == "127.0.0.1 localhost\n"


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError):
        hosts.change(hosts.parse(""), {NAME: "not-an-ip"})
    with pytest.raises(ValueError):
        hosts.change(hosts.parse(""), {"two words": "10.0.0.1"})


def test_sync_writes_only_on_change(tmp_path: Path) -> None:
    root = HostRoot(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (tmp_path / "etc/hosts").chmod(0o644)
    assert hosts.sync(root, DESIRED) is True
    st = (tmp_path / "etc/hosts").stat()
    assert hosts.sync(root, DESIRED) is False
    st2 = (tmp_path / "etc/hosts").stat()
    assert (st.st_ino, st.st_mtime_ns) == (st2.st_ino, st2.st_mtime_ns)
    assert hosts.sync(root, {NAME: "10.0.1.8"}) is True
    assert "10.0.1.8\tcontrol-plane.blue.internal" in (tmp_path / "etc/hosts").read_text()
    assert st2.st_mode & 0o777 == 0o644
