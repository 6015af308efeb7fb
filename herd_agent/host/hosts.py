"""The managed block of /etc/hosts: pure parse → change → render, then one careful write.

The block sits between two marker lines. Everything outside it is the user's and is kept byte for
byte. Inside, one ``IP<TAB>NAME`` line per managed name, sorted by name. The functions are pure
and idempotent: ``render(change(parse(t), m)) == t`` whenever ``t`` already holds mapping ``m``,
and then nothing is written.

Broken markers are repaired, never guessed wide:

- several blocks: their entries are merged into one block at the first block's place;
- a begin marker with no end: the block is the begin line plus the entry lines right after it
  that name only managed names (an old block's body), up to the first other line;
- an end marker with no begin: likewise, backwards from the end line;
- a marker line with odd spacing or case is recognised (``#begin herd-agent hosts block``).

The write goes through :class:`~herd_agent.host.fsroot.HostRoot`, which rewrites a bind-mounted
/etc/hosts in place when rename is refused.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field

from herd_agent.host.fsroot import HostRoot

log = logging.getLogger(__name__)

HOSTS_PATH = "/etc/hosts"
BEGIN = "# BEGIN herd-agent managed block: do not edit, herd-agent rewrites it"
END = "# END herd-agent managed block"
_BEGIN_RE = re.compile(r"^\s*#\s*begin\s+herd-agent\b", re.I)
_END_RE = re.compile(r"^\s*#\s*end\s+herd-agent\b", re.I)


@dataclass
class HostsFile:
    """/etc/hosts split around the managed block.

    Attributes:
        before: user lines before the block, with their line endings, verbatim.
        entries: the block's mapping, name → IP (str).
        after: user lines after the block, verbatim.
        had_block: a block (or a broken piece of one) was found.
        repairs: what was repaired, for the log.
    """

    before: list[str] = field(default_factory=list)
    entries: dict[str, str] = field(default_factory=dict)
    after: list[str] = field(default_factory=list)
    had_block: bool = False
    repairs: list[str] = field(default_factory=list)


def _entry(line: str) -> tuple[str, list[str]] | None:
    body = line.split("#", 1)[0].split()
    if len(body) < 2:
        return None
    try:
        ipaddress.ip_address(body[0])
    except ValueError:
        return None
    return body[0], body[1:]


def parse(text: str, managed_names: set[str] | None = None) -> HostsFile:
    """Split hosts-file text into user lines and the managed block.

    Args:
        text: the whole file.
        managed_names: names the agent owns; used only to find the edge of a block whose marker
            is missing. None means "the names found inside well-formed blocks".

    Returns:
        A :class:`HostsFile`; never raises on odd input.
    """
    lines = text.splitlines(keepends=True)
    is_begin = [bool(_BEGIN_RE.match(ln)) for ln in lines]
    is_end = [bool(_END_RE.match(ln)) for ln in lines]
    in_block = [False] * len(lines)
    out = HostsFile()
    pairs: list[tuple[int, int]] = []
    i = 0
    open_at: int | None = None
    orphans_begin: list[int] = []
    orphans_end: list[int] = []
    while i < len(lines):
        if is_begin[i]:
            if open_at is not None:
                orphans_begin.append(open_at)
            open_at = i
        elif is_end[i]:
            if open_at is None:
                orphans_end.append(i)
            else:
                pairs.append((open_at, i))
                open_at = None
        i += 1
    if open_at is not None:
        orphans_begin.append(open_at)

    names = set(managed_names or ())
    for b, e in pairs:
        for j in range(b, e + 1):
            in_block[j] = True
            parsed = _entry(lines[j]) if b < j < e else None
            if parsed:
                ip, hostnames = parsed
                for name in hostnames:
                    out.entries.setdefault(name, ip)
                    names.add(name)
    if len(pairs) > 1:
        out.repairs.append(f"merged {len(pairs)} managed blocks into one")

    def owned(line: str) -> bool:
        parsed = _entry(line)
        return bool(parsed) and all(n in names for n in parsed[1])  # type: ignore[index]

    for b in orphans_begin:
        in_block[b] = True
        j = b + 1
        while j < len(lines) and not in_block[j] and not is_end[j] and not is_begin[j] and owned(lines[j]):
            in_block[j] = True
            j += 1
        out.repairs.append(f"begin marker on line {b + 1} had no end marker")
    for e in orphans_end:
        in_block[e] = True
        j = e - 1
        while j >= 0 and not in_block[j] and not is_begin[j] and not is_end[j] and owned(lines[j]):
            in_block[j] = True
            j -= 1
        out.repairs.append(f"end marker on line {e + 1} had no begin marker")

    first = next((k for k, v in enumerate(in_block) if v), None)
    out.had_block = first is not None
    for k, line in enumerate(lines):
        if in_block[k]:
            continue
        (out.before if first is None or k < first else out.after).append(line)
    return out


def change(hosts: HostsFile, desired: dict[str, str]) -> HostsFile:
    """The same file with the block holding exactly ``desired`` (name → IP); inputs untouched.

    Raises:
        ValueError: an IP that is not an IP address, or a name with whitespace or '#'.
    """
    for name, ip in desired.items():
        ipaddress.ip_address(ip)
        if not name or any(c.isspace() for c in name) or "#" in name:
            raise ValueError(f"invalid host name for /etc/hosts: {name!r}")
    return HostsFile(list(hosts.before), dict(desired), list(hosts.after), hosts.had_block, list(hosts.repairs))


def render(hosts: HostsFile) -> str:
    """The file text: user lines, then the block (omitted when empty), then the rest."""
    before = list(hosts.before)
    if before and not before[-1].endswith("\n"):
        before[-1] += "\n"
    block: list[str] = []
    if hosts.entries:
        block = [BEGIN + "\n"]
        block += [f"{ip}\t{name}\n" for name, ip in sorted(hosts.entries.items())]
        block.append(END + "\n")
    return "".join(before + block + hosts.after)


def sync(root: HostRoot, desired: dict[str, str], managed_names: set[str] | None = None) -> bool:
    """Make the managed block of ``/etc/hosts`` under ``root`` hold ``desired``; write only on change.

    Args:
        desired: managed name → IP. An empty mapping removes the block.
        managed_names: names the agent owns (default: the keys of ``desired``).

    Returns:
        True when the file was written.

    Raises:
        ValueError: bad name or IP in ``desired``.
        HostWriteError: the file could not be written.
    """
    current = root.read_text(HOSTS_PATH, default="")
    parsed = parse(current, managed_names if managed_names is not None else set(desired))
    for repair in parsed.repairs:
        log.warning("/etc/hosts: %s; repaired", repair)
    text = render(change(parsed, desired))
    if text == current:
        return False
    mode = root.path(HOSTS_PATH).stat().st_mode & 0o7777 if root.exists(HOSTS_PATH) else 0o644
    root.write(HOSTS_PATH, text, mode=mode)
    log.info("/etc/hosts: managed block now %s", ", ".join(f"{n}={ip}" for n, ip in sorted(desired.items())) or "empty")
    return True
