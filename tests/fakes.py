"""Fakes that fail loudly when called unexpectedly (EKS nodeadm style)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from herd_agent.errors import CommandError
from herd_agent.host.runner import Result, Runner


@dataclass
class Expected:
    argv: list[str]
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    effect: Callable[[], None] | None = None


@dataclass
class FakeRunner(Runner):
    """A runner that plays back expected commands in order and refuses anything else.

    ``expect(["systemctl", "start", "k3s"])`` plans one call; a call that does not match the next
    planned one raises AssertionError naming both. ``calls`` records what ran (with stdin).
    """

    planned: list[Expected] = field(default_factory=list)
    calls: list[tuple[list[str], str | None]] = field(default_factory=list)
    default_timeout: float = 60.0

    def expect(self, argv: Sequence[str], returncode: int = 0, stdout: str = "", stderr: str = "",
               effect: Callable[[], None] | None = None) -> FakeRunner:
        self.planned.append(Expected(list(argv), returncode, stdout, stderr, effect))
        return self

    def run(self, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None,
            env: object = None, cwd: str | None = None, check: bool = True) -> Result:
        argv = list(argv)
        if not self.planned:
            raise AssertionError(f"unexpected command {argv!r}: nothing more was planned")
        nxt = self.planned.pop(0)
        if nxt.argv != argv:
            raise AssertionError(f"unexpected command {argv!r}; planned next: {nxt.argv!r}")
        self.calls.append((argv, input))
        if nxt.effect:
            nxt.effect()
        if nxt.returncode and check:
            raise CommandError(argv, nxt.returncode, nxt.stderr)
        return Result(argv, nxt.returncode, nxt.stdout, nxt.stderr, 0.0)

    def assert_done(self) -> None:
        if self.planned:
            raise AssertionError(f"planned commands never ran: {[p.argv for p in self.planned]!r}")


@dataclass
class FakeImds:
    """A strict fake IMDS, used as :class:`ImdsClient`'s transport: it answers only the paths it
    was told about and fails the test (AssertionError) on any other request, like FakeRunner.

    ``answer(path, body)`` plans a 200 (``dict``/``list`` bodies are JSON-encoded, ``str`` UTF-8);
    ``missing(path)`` plans a 404; ``status`` plans any other code. The token is checked on every
    GET (401 after :meth:`revoke`), and answers over the client's size bound raise
    :class:`BodyTooLarge` as the real transport does. ``requests`` records ``(method, path)``.
    """

    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    token_body: bytes | None = None
    _tokens: list[str] = field(default_factory=list)

    def answer(self, path: str, body: object, status: int = 200) -> FakeImds:
        import json

        if isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode()
        else:
            raw = json.dumps(body).encode()
        self.answers[path] = (status, raw)
        return self

    def missing(self, path: str) -> FakeImds:
        return self.answer(path, b"", status=404)

    def revoke(self) -> None:
        """Every token issued so far answers 401 from now on."""
        self._tokens.clear()

    def client(self, **kw: object):
        from herd_agent.discovery.imds import ImdsClient

        return ImdsClient("http://169.254.169.254", transport=self, **{"attempts": 1, **kw})  # type: ignore[arg-type]

    def __call__(self, method: str, path: str, headers: dict[str, str], limit: int) -> tuple[int, bytes]:
        from herd_agent.discovery.imds import TOKEN_HEADER, TOKEN_PATH, BodyTooLarge

        self.requests.append((method, path))
        if method == "PUT" and path == TOKEN_PATH:
            body = self.token_body if self.token_body is not None else f"token-{len(self.requests)}".encode()
            if len(body) > limit:
                raise BodyTooLarge(len(body))
            self._tokens.append(body.decode("ascii", "replace").strip())
            return 200, body
        if method != "GET" or path not in self.answers:
            raise AssertionError(f"unexpected IMDS request {method} {path}: not planned "
                                 f"(planned: {sorted(self.answers)})")
        if headers.get(TOKEN_HEADER) not in self._tokens:
            return 401, b""
        status, body = self.answers[path]
        if len(body) > limit:
            raise BodyTooLarge(len(body))
        return status, body

    def gets(self, path: str) -> int:
        """How many GETs of ``path`` were made."""
        return self.requests.count(("GET", path))
