"""A k3s stand-in for sandbox instances: what k3s does that the agent can observe.

No k3s binary can run here, so the ``systemctl`` stand-in runs this module for ``k3s.service``
(``server``) and ``k3s-agent.service`` (``agent``). It reads the same files real k3s reads and
fails the way k3s fails:

- config: ``/etc/rancher/k3s/config.yaml`` then ``config.yaml.d/*.yaml`` (lexical; a key ending
  in ``+`` appends to a list), under the instance's root (``HERD_AGENT_ROOT``);
- token: ``token-file`` (or ``token``); the cluster's token is fixed by the first server (a hash in
  the Secret ``kube-system/k3s-sandbox-token``); a different token is refused, as k3s refuses to
  decrypt the bootstrap data;
- ``server:``: the name is resolved through the instance's ``/etc/hosts`` (as the system resolver
  would) and probed (``GET /ping``) until it answers — so a wrong hosts block keeps the node out;
- ``datastore-endpoint``: the etcd must answer ``/version``; the server registers itself under
  ``/registry/herd-sandbox/servers/<node>`` through the v3 gateway;
- node password: like k3s (issue 6054), a per-instance password in ``/etc/rancher/node/password``
  is checked against the Secret ``kube-system/<node>.node-password.k3s``; a reused node name with
  another password is rejected until the old Node (and so its secret) is deleted;
- servers answer ``GET /ping`` with ``pong`` over TLS on ``<node-ip>:6443``;
- the Node is registered with the labels from ``node-label`` (+ role labels on servers), its
  InternalIP ``node-ip``, and Ready; servers write ``/etc/rancher/k3s/k3s.yaml`` and agents
  ``/var/lib/rancher/k3s/agent/kubelet.kubeconfig`` (both the emulator's admin credentials: the
  sandbox does not model node authorization);
- then it prints ``k3s is up and running`` (the stand-in's readiness line) and stays until SIGTERM.
  Stopping leaves the Node object in the API, as stopping real k3s does.

The emulator is reached with the admin kubeconfig in ``HERD_SANDBOX_KUBECONFIG``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import ssl
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import yaml

from herd_agent.host.fsroot import HostRoot

READY_LINE = "k3s is up and running"
TOKEN_SECRET = "k3s-sandbox-token"
PASSWORD_FILE = "/etc/rancher/node/password"
K3S_VERSION = "v1.32.5+k3s1"


def load_k3s_config(root: HostRoot) -> dict[str, Any]:
    """Merge config.yaml and config.yaml.d/*.yaml as k3s does (later files win; ``key+`` appends)."""
    files = []
    if root.exists("/etc/rancher/k3s/config.yaml"):
        files.append(root.path("/etc/rancher/k3s/config.yaml"))
    d = root.path("/etc/rancher/k3s/config.yaml.d")
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml"))
    merged: dict[str, Any] = {}
    for f in files:
        doc = yaml.safe_load(f.read_text()) or {}
        for k, v in doc.items():
            if k.endswith("+"):
                base = k[:-1]
                merged[base] = list(merged.get(base, [])) + (v if isinstance(v, list) else [v])
            else:
                merged[k] = v
    return merged


def resolve(root: HostRoot, host: str) -> str | None:
    """``host`` looked up in the instance's /etc/hosts (first match), or None."""
    for line in root.read_text("/etc/hosts", default="").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and host in fields[1:]:
            return fields[0]
    return None


class Api:
    """Minimal REST calls to the emulated API server with the admin kubeconfig."""

    def __init__(self, kubeconfig: str) -> None:
        doc = yaml.safe_load(Path(kubeconfig).read_text())
        self.kubeconfig_text = Path(kubeconfig).read_text()
        cluster = doc["clusters"][0]["cluster"]
        user = doc["users"][0]["user"]
        self.base = cluster["server"].rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Bearer {user['token']}"
        if "certificate-authority-data" in cluster:
            ca = tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False)  # noqa: SIM115
            ca.write(base64.b64decode(cluster["certificate-authority-data"]))
            ca.close()
            self.session.verify = ca.name

    def get(self, path: str) -> dict[str, Any] | None:
        """GET; None on 404."""
        r = self.session.get(self.base + path, timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return dict(r.json())

    def create(self, path: str, body: dict[str, Any]) -> int:
        """POST; the HTTP status (409 when it exists)."""
        r = self.session.post(self.base + path, json=body, timeout=10)
        if r.status_code not in (200, 201, 409):
            r.raise_for_status()
        return r.status_code

    def patch_status(self, path: str, body: dict[str, Any]) -> None:
        """Merge-patch a status subresource."""
        r = self.session.patch(self.base + path + "/status", data=json.dumps(body), timeout=10,
                               headers={"Content-Type": "application/merge-patch+json"})
        r.raise_for_status()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _secret(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "kube-system"},
            "type": "Opaque", "data": {"hash": base64.b64encode(value.encode()).decode()}}


def _secret_hash(obj: dict[str, Any]) -> str:
    return base64.b64decode(obj["data"]["hash"]).decode()


def node_manifest(name: str, ip: str, labels: dict[str, str], server: bool) -> dict[str, Any]:
    """The Node k3s' kubelet registers: labels, InternalIP, Ready (Kubernetes Node API shape)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    if server:
        all_labels.update({"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/master": "true"})
    all_labels.update(labels)
    conds = [{"type": t, "status": "False", "reason": r, "lastHeartbeatTime": now, "lastTransitionTime": now}
             for t, r in (("MemoryPressure", "KubeletHasSufficientMemory"),
                          ("DiskPressure", "KubeletHasNoDiskPressure"), ("PIDPressure", "KubeletHasSufficientPID"))]
    conds.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                  "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now})
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": all_labels, "annotations": {"k3s.io/node-args": "[]"}},
        "spec": {"providerID": f"k3s://{name}"},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                   "conditions": conds,
                   "nodeInfo": {"kubeletVersion": K3S_VERSION, "kubeProxyVersion": K3S_VERSION,
                                "containerRuntimeVersion": "containerd://1.7.27-k3s1", "operatingSystem": "linux",
                                "architecture": "amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                "kernelVersion": "6.1.0-sandbox", "machineID": "", "systemUUID": "", "bootID": ""}},
    }


class PingServer:
    """``GET /ping`` → ``pong`` over TLS on ``ip:port`` (k3s' supervisor health endpoint)."""

    def __init__(self, ip: str, port: int, workdir: Path) -> None:
        from herd_agent.sandbox.kube.pki import CertificateAuthority

        pair = CertificateAuthority("k3s-sandbox-server-ca").serving(ip)
        cert, key = workdir / "serving.crt", workdir / "serving.key"
        cert.write_bytes(pair.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(pair.key_pem)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                ok = self.path == "/ping"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"pong" if ok else b"not found")

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((ip, port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _probe(url: str, timeout: float = 2.0) -> bool:
    try:
        r = requests.get(url, timeout=timeout, verify=False)  # noqa: S501 - a reachability probe, like k3s' own
    except requests.RequestException:
        return False
    return r.status_code == 200 and r.text.strip() == "pong"


def run(role: str, root: HostRoot, api: Api, *, wait_s: float = 120.0, stop: threading.Event | None = None) -> int:
    """Bring the node up as k3s would; returns an exit code (0 after SIGTERM, 1 on a k3s failure)."""
    import urllib3

    urllib3.disable_warnings()
    stop = stop or threading.Event()
    conf = load_k3s_config(root)
    server = role == "server"
    token_path = conf.get("token-file")
    token = root.read_text(token_path, default="").strip() if token_path else str(conf.get("token", "")).strip()
    if not token:
        print("level=fatal msg=\"--token is required\"", flush=True)
        return 1
    name = conf.get("node-name") or os.uname().nodename
    ip = conf.get("node-ip")
    if not ip:
        print("level=fatal msg=\"node-ip not set (the sandbox has no interface to guess from)\"", flush=True)
        return 1
    deadline = time.monotonic() + wait_s
    founding = server and (conf.get("cluster-init") or conf.get("datastore-endpoint"))
    # The cluster token: the first server fixes it; everyone else must present the same.
    while True:
        existing = api.get(f"/api/v1/namespaces/kube-system/secrets/{TOKEN_SECRET}")
        if existing is None and founding:
            api.create("/api/v1/namespaces/kube-system/secrets", _secret(TOKEN_SECRET, _hash(token)))
            continue
        if existing is not None:
            if _secret_hash(existing) != _hash(token):
                print("level=fatal msg=\"starting kubernetes: bootstrap data already found and encrypted with "
                      "different token\"", flush=True)
                return 1
            break
        if time.monotonic() > deadline or stop.is_set():
            print("level=fatal msg=\"no cluster token found: is the server up?\"", flush=True)
            return 1
        stop.wait(0.2)
    if conf.get("server") and not conf.get("datastore-endpoint"):
        url = urlsplit(str(conf["server"]))
        while True:
            addr = url.hostname if url.hostname and url.hostname[0].isdigit() else resolve(root, url.hostname or "")
            if addr and _probe(f"https://{addr}:{url.port or 6443}/ping"):
                break
            print(f"level=info msg=\"Waiting to connect to server {conf['server']} (resolved: {addr})\"", flush=True)
            if time.monotonic() > deadline or stop.wait(0.5):
                return 1
    if conf.get("datastore-endpoint"):
        endpoint = str(conf["datastore-endpoint"]).rstrip("/")
        while True:
            try:
                if requests.get(endpoint + "/version", timeout=2).ok:
                    key = base64.b64encode(f"/registry/herd-sandbox/servers/{name}".encode()).decode()
                    requests.post(endpoint + "/v3/kv/put", json={"key": key, "value": base64.b64encode(
                        ip.encode()).decode()}, timeout=5).raise_for_status()
                    break
            except requests.RequestException:
                pass
            print(f"level=info msg=\"Waiting for datastore {endpoint}\"", flush=True)
            if time.monotonic() > deadline or stop.wait(0.5):
                return 1
    # Node password (k3s: /etc/rancher/node/password vs the <node>.node-password.k3s secret).
    password = root.read_text(PASSWORD_FILE, default="").strip()
    if not password:
        password = secrets.token_hex(16)
        root.write(PASSWORD_FILE, password + "\n", mode=0o600)
    pw_secret = f"{name}.node-password.k3s"
    existing = api.get(f"/api/v1/namespaces/kube-system/secrets/{pw_secret}")
    if existing is None:
        api.create("/api/v1/namespaces/kube-system/secrets", _secret(pw_secret, _hash(password)))
    elif _secret_hash(existing) != _hash(password):
        print(f"level=fatal msg=\"Node password rejected, duplicate hostname or contents of '{PASSWORD_FILE}' may "
              f"not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag\"",
              flush=True)
        return 1
    ping = PingServer(ip, 6443, Path(tempfile.mkdtemp(prefix="k3s-sandbox-"))) if server else None
    labels = dict(item.split("=", 1) for item in conf.get("node-label") or [] if "=" in item)
    node = node_manifest(name, ip, labels, server)
    if api.create("/api/v1/nodes", node) == 409:
        api.patch_status(f"/api/v1/nodes/{name}", {"status": node["status"]})
    if server:
        root.write("/etc/rancher/k3s/k3s.yaml", api.kubeconfig_text, mode=0o600)
    else:
        root.write("/var/lib/rancher/k3s/agent/kubelet.kubeconfig", api.kubeconfig_text, mode=0o600)
    print(f"level=info msg=\"{READY_LINE}\" node={name} role={role}", flush=True)
    stop.wait()
    if ping:
        ping.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m herd_agent.sandbox.k3s server|agent``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("server", "agent"):
        print("usage: python -m herd_agent.sandbox.k3s server|agent", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    root = HostRoot(os.environ.get("HERD_AGENT_ROOT", "/"))
    api = Api(os.environ["HERD_SANDBOX_KUBECONFIG"])
    return run(args[0], root, api, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
