"""The node_exporter textfile parses with prometheus_client's own parser; webhooks carry the secret
header, never over plain http unless the config says so, never to a redirect; the webhook URL is
a credential: masked in logs and in ``config check``."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from herd_agent.config import load_config
from herd_agent.host.fsroot import HostRoot
from herd_agent.leave import report
from herd_agent.redact import redact


def test_textfile_is_valid_exposition_format(tmp_path: Path) -> None:
    root = HostRoot(tmp_path)
    cfg = load_config(root)
    report._state.clear()
    report.write_metrics(root, cfg, {"watcher_healthy": True, "watcher_last_poll": 1795280000.5})
    report.write_metrics(root, cfg, {"leave_duration_seconds": 12.25, "pods_evicted": 18, "pods_blocked": 2,
                                     "termination_reason": 'spot "terminate"\\n'})
    path = tmp_path / "var/lib/node_exporter/textfile_collector/herd_agent.prom"
    assert path.stat().st_mode & 0o777 == 0o644
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    samples = {s.name: s for f in families.values() for s in f.samples}
    assert samples["herd_agent_leave_pods_evicted"].value == 18
    assert samples["herd_agent_leave_duration_seconds"].value == 12.25
    assert samples["herd_agent_watcher_healthy"].value == 1  # kept from the earlier write
    assert samples["herd_agent_watcher_last_poll_timestamp_seconds"].value == 1795280000.5
    assert samples["herd_agent_last_termination_reason"].labels == {"reason": 'spot "terminate"\\n'}
    assert all(f.type == "gauge" for f in families.values())


class Receiver:
    """A loopback webhook receiver answering ``status`` (and ``location`` for redirects)."""

    def __init__(self, status: int = 204, location: str | None = None) -> None:
        self.got: list[tuple[str, dict, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((self.path, json.loads(body), self.headers.get("X-Herd-Secret")))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture(autouse=True)
def _fresh_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from herd_agent.logs import RateLimitedLogger

    monkeypatch.setattr(report, "_limited", RateLimitedLogger(report.log, interval=60))


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def config(tmp_path: Path, url: str, extra: str = "") -> object:
    (tmp_path / "etc/herd-agent").mkdir(parents=True, exist_ok=True)
    (tmp_path / "etc/herd-agent/config.yaml").write_text(
        f"notify:\n  webhook_url: {url}\n  webhook_secret: s3cret-hook\n{extra}")
    return load_config(HostRoot(tmp_path))


def test_webhook_posts_json_with_the_secret_header(tmp_path: Path, receivers: list[Receiver]) -> None:
    r = Receiver()
    receivers.append(r)
    cfg = config(tmp_path, f"{r.url}/hook", "  webhook_allow_plain_http: true\n")
    assert report.webhook(cfg, {"event": "HerdDrained", "node": "i-1"})
    assert r.got == [("/hook", {"event": "HerdDrained", "node": "i-1"}, "s3cret-hook")]


def test_plain_http_webhook_is_refused_unless_allowed_in_plain_words(tmp_path: Path, receivers: list[Receiver],
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    r = Receiver()
    receivers.append(r)
    cfg = config(tmp_path, f"{r.url}/T000/B000/XXXXsecretpath")
    with caplog.at_level(logging.WARNING):
        assert not report.webhook(cfg, {"event": "HerdDrained"})
    assert r.got == []
    assert "notify.webhook_allow_plain_http" in caplog.text
    assert "XXXXsecretpath" not in caplog.text


def test_webhook_redirects_are_not_followed(tmp_path: Path, receivers: list[Receiver],
                                            caplog: pytest.LogCaptureFixture) -> None:
    elsewhere = Receiver()
    hop = Receiver(status=307, location=f"{elsewhere.url}/stolen")
    receivers += [elsewhere, hop]
    cfg = config(tmp_path, f"{hop.url}/hooks/T0/B0/redirsecret", "  webhook_allow_plain_http: true\n")
    with caplog.at_level(logging.WARNING):
        assert not report.webhook(cfg, {"event": "HerdDrained"})
    assert len(hop.got) == 1 and elsewhere.got == []  # the secret header never reached the other address
    assert "redirect" in caplog.text


def test_a_failing_webhook_logs_no_url(tmp_path: Path, receivers: list[Receiver],
                                       caplog: pytest.LogCaptureFixture) -> None:
    r = Receiver(status=500)
    receivers.append(r)
    url = f"{r.url}/services/T0/B0/failsecretvalue"
    cfg = config(tmp_path, url, "  webhook_allow_plain_http: true\n")
    with caplog.at_level(logging.WARNING):
        assert not report.webhook(cfg, {"event": "HerdDrained"})
    assert r.got and "webhook failed" in caplog.text
    assert "failsecretvalue" not in caplog.text and url not in caplog.text
    # Registered with the redactor, so the agent's log formatter masks it in any library's line too.
    assert "failsecretvalue" not in redact(f"POST {r.url}/services/T0/B0/failsecretvalue HTTP/1.1")


def test_config_check_masks_the_webhook_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from herd_agent.cli import main

    config(tmp_path, "https://hooks.example.invalid/services/T0/B0/checksecret")
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(tmp_path), "config", "check"])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    assert "webhook_url: '***'" in out or "webhook_url: ***" in out
    assert "checksecret" not in out + err and "hooks.example.invalid" not in out + err
