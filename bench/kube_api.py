"""How fast the emulated API server answers a 1,000-pod list filtered by node (target: < 200 ms).

Seeds 1,000 pods over 10 nodes, lets the simulated cluster settle, then times
``GET /api/v1/pods?fieldSelector=spec.nodeName=node-3`` (the agent's drain listing) and the
unfiltered list over HTTPS with a kept-alive connection. Prints one JSON object.

Run: ``.venv/bin/python bench/kube_api.py``
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herd_sandbox.kube.sandbox import KubeSandbox  # noqa: E402

PODS, NODES, ROUNDS = 1000, 10, 30


def timed(session: requests.Session, url: str, ca: str, params: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    response = session.get(url, params=params, verify=ca, timeout=30)
    response.raise_for_status()
    count = len(response.json()["items"])
    return (time.perf_counter() - start) * 1000, count


def main() -> None:
    with KubeSandbox(time_factor=0.01) as kube:
        for n in range(NODES):
            kube.add_node(f"node-{n}")
        for i in range(PODS):
            kube.create({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"pod-{i:04d}", "namespace": "default", "labels": {"app": f"a{i % 7}"}},
                         "spec": {"nodeName": f"node-{i % NODES}",
                                  "containers": [{"name": "main", "image": "example/app:1"}]}})
        kube.settle(timeout=120)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {kube.identity('admin').token}"
        url, ca = f"{kube.url}/api/v1/pods", str(kube.ca_path)
        timed(session, url, ca, {})  # warm the connection
        filtered = [timed(session, url, ca, {"fieldSelector": "spec.nodeName=node-3"}) for _ in range(ROUNDS)]
        full = [timed(session, url, ca, {}) for _ in range(ROUNDS // 3)]
    ms = [t for t, _ in filtered]
    print(json.dumps({
        "benchmark": "kube_api_list_pods_field_selector",
        "pods": PODS, "matched": filtered[0][1], "rounds": ROUNDS,
        "median_ms": round(statistics.median(ms), 2), "p95_ms": round(sorted(ms)[int(len(ms) * 0.95) - 1], 2),
        "max_ms": round(max(ms), 2), "target_ms": 200, "ok": statistics.median(ms) < 200 and max(ms) < 200,
        "unfiltered_median_ms": round(statistics.median(t for t, _ in full), 2), "unfiltered_items": full[0][1],
    }))


if __name__ == "__main__":
    main()
