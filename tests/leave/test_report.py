"""The node_exporter textfile parses with prometheus_client's own parser; webhooks carry the secret header."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from herd_agent.config import load_config
from herd_agent.host.fsroot import HostRoot
from herd_agent.leave import report


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


def test_webhook_posts_json_with_the_secret_header(tmp_path: Path) -> None:
    got: list[tuple[dict, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((json.loads(body), self.headers.get("X-Herd-Secret")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        (tmp_path / "etc/herd-agent").mkdir(parents=True)
        (tmp_path / "etc/herd-agent/config.yaml").write_text(
            f"notify:\n  webhook_url: http://127.0.0.1:{srv.server_address[1]}/hook\n  webhook_secret: s3cret-hook\n")
        cfg = load_config(HostRoot(tmp_path))
        report.webhook(cfg, {"event": "HerdDrained", "node": "i-1"})
    finally:
        srv.shutdown()
        srv.server_close()
    assert got == [({"event": "HerdDrained", "node": "i-1"}, "s3cret-hook")]
