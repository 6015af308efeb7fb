"""Logging: a secret pushed through every logger, handler and formatter shows up nowhere."""

from __future__ import annotations

import io
import logging
import logging.handlers
import warnings

import pytest

from herd_agent import logs
from herd_agent.host.runner import Runner
from herd_agent.redact import MASK, redact, register_secret

TOKEN = "K10" + "ab12" * 16 + "::server:s3cr3tpassw0rd"
# A registered secret that matches none of the built-in shapes: only registration can mask it.
SHAPELESS = "opaque-s3cr3tpassw0rd-" + "7f" * 8
SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.sa-token-payload.signature"


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level, factory = list(root.handlers), root.level, logging.getLogRecordFactory()
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    logging.captureWarnings(False)


@pytest.mark.parametrize("token", [TOKEN, SHAPELESS], ids=["k3s-token-shape", "shapeless"])
def test_a_token_reaches_no_logger_or_handler(restore_logging: None, token: str) -> None:
    TOKEN = token  # noqa: N806  (the same body runs for both secrets)
    register_secret(TOKEN)
    register_secret(SA_TOKEN)
    console = io.StringIO()
    sent: list[tuple[str, dict]] = []
    logs.setup_logging("DEBUG", journal=False, stream=console)
    # Every kind of handler a library or a later change might add, with no filter of its own.
    journal = logs.JournalHandler(sender=lambda msg, **f: sent.append((msg, f)))
    journal.setFormatter(logging.Formatter("%(message)s"))
    raw_stream = io.StringIO()
    raw = logging.StreamHandler(raw_stream)
    raw.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s %(detail)s", defaults={"detail": ""}))
    memory = logging.handlers.MemoryHandler(capacity=1000, flushLevel=logging.CRITICAL + 1)
    root = logging.getLogger()
    root.addHandler(journal)
    # Handlers on the root run after the ones on named loggers: put the unfiltered ones first.
    root.handlers.insert(0, memory)
    root.handlers.insert(0, raw)
    logging.captureWarnings(True)

    named = logging.getLogger("herd_agent.join")
    lib = logging.getLogger("botocore.endpoint")
    lib.setLevel(logging.DEBUG)
    lib_raw = io.StringIO()
    lib_handler = logging.StreamHandler(lib_raw)  # a library's own handler, running first of all
    lib.addHandler(lib_handler)
    with logs.step("token"):
        named.info("fetched token %s", TOKEN)
        named.info("dict arg %(tok)s", {"tok": TOKEN})
        named.warning("bare " + TOKEN)
        lib.debug("Authorization: Bearer %s", SA_TOKEN)
        named.info("extra field", extra={"detail": f"value={TOKEN}"})
        logging.info("root logger %s", TOKEN)
        named.info("stack", stack_info=True)
        try:
            raise RuntimeError(f"boom with {TOKEN}")
        except RuntimeError:
            named.exception("failed: %r", TOKEN)
        warnings.warn(f"warning carrying {TOKEN}", stacklevel=1)
    # The runner's own logs and errors go through the same path.
    with pytest.raises(ValueError) as exc:
        Runner().run(["k3s", "agent", "--token", TOKEN])
    named.error("runner said: %s", exc.value)

    lib.removeHandler(lib_handler)
    outputs = [console.getvalue(), raw_stream.getvalue(), lib_raw.getvalue()]
    assert "Bearer ***" in lib_raw.getvalue()
    outputs += [f"{m} {f}" for m, f in sent]
    fmt = logging.Formatter("%(message)s")
    outputs += [fmt.format(r) + str(vars(r)) for r in memory.buffer]
    everything = "\n".join(outputs)
    leaks = [line for line in everything.splitlines() if "s3cr3tpassw0rd" in line]
    assert not leaks, leaks[:3]
    assert "sa-token-payload" not in everything
    assert everything.count(MASK) >= 10
    assert len(memory.buffer) >= 10 and len(sent) == len(memory.buffer)


def test_journal_entries_carry_structured_fields(restore_logging: None) -> None:
    sent: list[tuple[str, dict]] = []
    logs.setup_logging("INFO", journal=True, sender=lambda msg, **f: sent.append((msg, f)))
    logs.set_context(instance_id="i-0abc", cluster="blue")
    try:
        with logs.step("discovery"):
            logging.getLogger("herd_agent.discovery").warning("no control plane yet")
        logging.getLogger("herd_agent").error("outside a step")
    finally:
        logs.set_context(instance_id=None, cluster=None)
    (msg1, f1), (msg2, f2) = sent
    assert msg1 == "no control plane yet"
    assert f1["HERD_STEP"] == "discovery" and f1["HERD_INSTANCE_ID"] == "i-0abc" and f1["HERD_CLUSTER"] == "blue"
    assert f1["PRIORITY"] == "4" and f1["LOGGER"] == "herd_agent.discovery"
    assert "HERD_STEP" not in f2 and f2["PRIORITY"] == "3"


def test_under_systemd_detection() -> None:
    assert logs.under_systemd({"JOURNAL_STREAM": "8:1234"})
    assert logs.under_systemd({"INVOCATION_ID": "abc"})
    assert not logs.under_systemd({"TERM": "xterm"})


def test_console_lines_are_readable(restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup_logging("INFO", journal=False, stream=out)
    with logs.step("hosts"):
        logging.getLogger("x").info("wrote %d entries", 3)
    line = out.getvalue().strip()
    assert line.endswith("INFO    [hosts] wrote 3 entries")


def test_redact_shapes_without_registration() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMII\n-----END RSA PRIVATE KEY-----"
    text = "token K10" + "0f" * 12 + "::node:abc and Bearer abcdefghijkl and " + pem
    out = redact(text)
    assert "K10" not in out and "abcdefghijkl" not in out and "MII" not in out
    assert out.startswith("token *** and Bearer ***")


def test_rate_limited_logger(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rl = logs.RateLimitedLogger(logging.getLogger("poll"), interval=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING)
    assert rl.log(logging.WARNING, "imds", "IMDS unreachable")
    for t in range(1, 60):
        now[0] = float(t)
        assert not rl.log(logging.WARNING, "imds", "IMDS unreachable")
    now[0] = 61.0
    assert rl.log(logging.WARNING, "imds", "IMDS unreachable")
    assert [r.getMessage() for r in caplog.records] == ["IMDS unreachable", "IMDS unreachable (59 similar suppressed)"]
    rl.reset("imds")
    assert rl.log(logging.WARNING, "imds", "again")


@pytest.mark.parametrize("library", ["botocore", "urllib3", "httpx2", "httpcore2"])
def test_http_libraries_do_not_log_each_request(library: str) -> None:
    """lightkube 1.x sends through httpx2, which logs every request at INFO ("HTTP Request: GET
    ..."): the agent's journal would carry a line per API call."""
    stream = io.StringIO()
    logs.setup_logging("DEBUG", journal=False, stream=stream)
    logging.getLogger("herd_agent.test").info("an agent line")
    logging.getLogger(f"{library}._client").info("HTTP Request: GET https://127.0.0.1:6443/api")
    assert "an agent line" in stream.getvalue()
    assert "HTTP Request" not in stream.getvalue()
