"""The one subprocess runner: argv only, timeouts, typed errors, secrets kept out of argv and logs."""

from __future__ import annotations

import logging
import sys

import pytest

from herd_agent.errors import CommandError
from herd_agent.host import runner as runner_mod
from herd_agent.host.runner import Runner
from herd_agent.redact import register_secret
from tests.fakes import FakeRunner


def test_refuses_a_shell_string() -> None:
    with pytest.raises(TypeError, match="never a shell string"):
        Runner().run("echo hi")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Runner().run(["echo", 3])  # type: ignore[list-item]


def test_refuses_a_secret_in_argv() -> None:
    register_secret("K10deadbeefdeadbeefdeadbeef::server:hunter2")
    with pytest.raises(ValueError, match="secret is in argv") as exc:
        Runner().run(["k3s", "--token", "K10deadbeefdeadbeefdeadbeef::server:hunter2"])
    assert "hunter2" not in str(exc.value)


@pytest.mark.allow_subprocess
def test_captures_output_and_duration() -> None:
    r = Runner().run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"], timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "out\n", "err\n")
    assert r.duration_s >= 0


@pytest.mark.allow_subprocess
def test_non_zero_exit_is_a_typed_error_with_a_redacted_stderr_tail(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("sekrit-token-value")
    code = (
        "import sys\n"
        "for i in range(30): print('line', i, file=sys.stderr)\n"
        "print('token was sekrit-' + 'token-value', file=sys.stderr); sys.exit(3)"
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CommandError) as exc:
        Runner().run([sys.executable, "-c", code], timeout=30)
    err = exc.value
    assert err.returncode == 3 and not err.timed_out
    assert err.stderr_tail.splitlines()[-1] == "token was ***"
    assert len(err.stderr_tail.splitlines()) == runner_mod.STDERR_TAIL_LINES
    assert "sekrit-token-value" not in str(err)
    assert "sekrit-token-value" not in caplog.text
    # check=False returns the result instead.
    r = Runner().run([sys.executable, "-c", "import sys; sys.exit(4)"], timeout=30, check=False)
    assert r.returncode == 4


@pytest.mark.allow_subprocess
def test_timeout_kills_and_raises() -> None:
    with pytest.raises(CommandError) as exc:
        Runner().run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert exc.value.timed_out and exc.value.returncode is None


@pytest.mark.allow_subprocess
def test_missing_program() -> None:
    with pytest.raises(CommandError) as exc:
        Runner().run(["/nonexistent/k3s-killall.sh"], timeout=5)
    assert exc.value.returncode == 127


@pytest.mark.allow_subprocess
def test_secret_goes_on_stdin_and_env() -> None:
    register_secret("stdin-secret-1234")
    r = Runner().run([sys.executable, "-c", "import os,sys; print(sys.stdin.read(), os.environ['X_TOK'])"],
                     input="stdin-secret-1234", env={"X_TOK": "env-val"}, timeout=30)
    assert r.stdout.strip() == "stdin-secret-1234 env-val"


def test_fake_runner_fails_loudly_on_unplanned_commands() -> None:
    fake = FakeRunner().expect(["systemctl", "start", "k3s"])
    previous = runner_mod.set_runner(fake)
    try:
        runner_mod.run(["systemctl", "start", "k3s"])
        with pytest.raises(AssertionError, match="nothing more was planned"):
            runner_mod.run(["systemctl", "stop", "k3s"])
    finally:
        runner_mod.set_runner(previous)
    fake.assert_done()
    fake2 = FakeRunner().expect(["a"])
    with pytest.raises(AssertionError, match="planned next"):
        fake2.run(["b"])
