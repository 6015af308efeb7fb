"""A k3s stand-in for sandbox instances: what k3s does that the agent can observe.

No k3s binary can run here, so the ``systemctl`` stand-in runs this module for ``k3s.service``
(``server``) and ``k3s-agent.service`` (``agent``). It reads the same files real k3s reads and
fails the way k3s fails:

- config: ``/etc/rancher/k3s/config.yaml`` then ``config.yaml.d/*.yaml`` (lexical; a key ending
  in ``+`` appends to a list), under the instance's root (``HERD_AGENT_ROOT``);
- tokens, as docs.k3s.io/cli/token describes them: ``token-file`` (or ``token``) and, on servers,
  ``agent-token-file``. The first server fixes the server and agent passwords (hashes in the Secret
  ``kube-system/k3s-sandbox-token``) and the cluster's server CA (``k3s-sandbox-server-ca``); a
  different server password is refused, as k3s refuses to decrypt the bootstrap data. A secure
  token (``K10<sha256 of the CA PEM>::<user>:<password>``) makes the joiner fetch ``/cacerts``
  unverified, hash it and compare before sending anything: a mismatch is fatal. ``server:``
  credentials join servers and agents, ``node:`` (agent token) credentials join agents only. A
  running server writes ``server/token`` and ``server/agent-token`` in secure format and the CA to
  ``server/tls/server-ca.crt``; an agent writes the CA it verified to ``agent/server-ca.crt``;
- ``server:``: the name is resolved through the instance's ``/etc/hosts`` (as the system resolver
  would) and probed (``GET /ping``) until it answers — so a wrong hosts block keeps the node out;
- ``datastore-endpoint``: the etcd must answer ``/version``; the server registers itself under
  ``/registry/herd-sandbox/servers/<node>`` through the v3 gateway, with ``datastore-cafile`` and
  ``datastore-certfile``/``-keyfile`` as its TLS CA and client certificate when given (as k3s);
- node password: like k3s (issue 6054), a per-instance password in ``/etc/rancher/node/password``
  is checked against the Secret ``kube-system/<node>.node-password.k3s``; a reused node name with
  another password is rejected until the old Node (and so its secret) is deleted;
- servers answer ``GET /ping`` with ``pong`` and ``GET /cacerts`` with the cluster CA over TLS on
  ``<node-ip>:6443`` (a certificate signed by the cluster's server CA);
- the Node is registered with the labels from ``node-label`` (+ role labels on servers), its
  InternalIP ``node-ip``, and Ready; servers write ``/etc/rancher/k3s/k3s.yaml`` and agents
  ``/var/lib/rancher/k3s/agent/kubelet.kubeconfig`` (both the emulator's admin credentials: the
  sandbox does not model node authorization);
- embedded etcd (a server with ``cluster-init: true``, or with ``server:`` and no
  ``datastore-endpoint``): see :class:`EmbeddedEtcd` — a real etcd member, TLS on peer and client
  URLs with k3s' file names under ``/var/lib/rancher/k3s/server/tls/etcd``, member named
  ``<node>-<8 hex>``; joiners add themselves as a learner and promote; the Node of a server carries
  a finalizer, and any running server removes the member of a Node being deleted (or annotated
  ``etcd.k3s.cattle.io/remove=true``) before releasing it, as k3s' etcd controller does;
- then it prints ``k3s is up and running`` (the stand-in's readiness line) and stays until SIGTERM.
  Stopping leaves the Node object in the API, as stopping real k3s does (embedded etcd stops too).

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
import subprocess
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
from herd_sandbox.verify import EtcdGateway, EtcdGatewayError, GatewayMember, initial_cluster

READY_LINE = "k3s is up and running"
TOKEN_SECRET = "k3s-sandbox-token"
SERVER_CA_SECRET = "k3s-sandbox-server-ca"
SERVER_TOKEN_FILE = "/var/lib/rancher/k3s/server/token"
AGENT_TOKEN_FILE = "/var/lib/rancher/k3s/server/agent-token"
SERVER_CA_FILE = "/var/lib/rancher/k3s/server/tls/server-ca.crt"
AGENT_CA_FILE = "/var/lib/rancher/k3s/agent/server-ca.crt"
PASSWORD_FILE = "/etc/rancher/node/password"
K3S_VERSION = "v1.32.5+k3s1"
ETCD_CA_SECRET = "k3s-sandbox-etcd-ca"
ETCD_TLS_DIR = "/var/lib/rancher/k3s/server/tls/etcd"
ETCD_DATA_DIR = "/var/lib/rancher/k3s/server/db/etcd"
ETCD_NAME_FILE = "/var/lib/rancher/k3s/server/db/etcd/name"
ETCD_LOG = "/var/log/herd-sandbox/k3s-etcd.log"
ETCD_ROLE_LABEL = "node-role.kubernetes.io/etcd"
NODE_NAME_ANNOTATION = "etcd.k3s.cattle.io/node-name"
NODE_ADDRESS_ANNOTATION = "etcd.k3s.cattle.io/node-address"
REMOVE_ANNOTATION = "etcd.k3s.cattle.io/remove"
ETCD_FINALIZER = "wrangler.cattle.io/managed-etcd-controller"
"""Finalizer on a server's Node: released once its etcd member is removed (the stand-in's name)."""


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
        self.patch(path + "/status", body)

    def patch(self, path: str, body: dict[str, Any]) -> int:
        """Merge-patch an object; the HTTP status (404 when gone, 409 on a stale resourceVersion)."""
        r = self.session.patch(self.base + path, data=json.dumps(body), timeout=10,
                               headers={"Content-Type": "application/merge-patch+json"})
        if r.status_code not in (404, 409):
            r.raise_for_status()
        return r.status_code


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _secret(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "kube-system"},
            "type": "Opaque", "data": {"hash": base64.b64encode(value.encode()).decode()}}


def _token_secret(server_hash: str, agent_hash: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": TOKEN_SECRET, "namespace": "kube-system"},
            "type": "Opaque", "data": {"server": base64.b64encode(server_hash.encode()).decode(),
                                       "agent": base64.b64encode(agent_hash.encode()).decode()}}


def _secret_hash(obj: dict[str, Any]) -> str:
    return base64.b64decode(obj["data"]["hash"]).decode()


def node_manifest(name: str, ip: str, labels: dict[str, str], server: bool,
                  etcd_member: str | None = None) -> dict[str, Any]:
    """The Node k3s' kubelet registers: labels, InternalIP, Ready (Kubernetes Node API shape).

    ``etcd_member``: the embedded etcd member name of a server; adds the etcd role label, k3s'
    ``etcd.k3s.cattle.io/node-name``/``node-address`` annotations and the member finalizer.
    """
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    if server:
        all_labels.update({"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/master": "true"})
    annotations = {"k3s.io/node-args": "[]"}
    if etcd_member:
        all_labels[ETCD_ROLE_LABEL] = "true"
        annotations.update({NODE_NAME_ANNOTATION: etcd_member, NODE_ADDRESS_ANNOTATION: ip})
    all_labels.update(labels)
    conds = [{"type": t, "status": "False", "reason": r, "lastHeartbeatTime": now, "lastTransitionTime": now}
             for t, r in (("MemoryPressure", "KubeletHasSufficientMemory"),
                          ("DiskPressure", "KubeletHasNoDiskPressure"), ("PIDPressure", "KubeletHasSufficientPID"))]
    conds.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                  "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now})
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": all_labels, "annotations": annotations,
                     **({"finalizers": [ETCD_FINALIZER]} if etcd_member else {})},
        "spec": {"providerID": f"k3s://{name}"},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                   "conditions": conds,
                   "nodeInfo": {"kubeletVersion": K3S_VERSION, "kubeProxyVersion": K3S_VERSION,
                                "containerRuntimeVersion": "containerd://1.7.27-k3s1", "operatingSystem": "linux",
                                "architecture": "amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                "kernelVersion": "6.1.0-sandbox", "machineID": "", "systemUUID": "", "bootID": ""}},
    }


class PingServer:
    """``GET /ping`` → ``pong`` and ``GET /cacerts`` → the CA PEM, over TLS on ``ip:port`` (k3s'
    supervisor endpoints). The serving certificate is signed by ``ca``; without one, a fresh CA of
    its own (a server of another cluster, or a rogue)."""

    def __init__(self, ip: str, port: int, workdir: Path, ca: ClusterCa | None = None) -> None:
        self.ca = ca or ClusterCa.new("k3s-server-ca")
        self.ca_pem = self.ca.cert_pem
        cert_pem, key_pem = self.ca.issue("k3s", [ip], ["kubernetes", "localhost"])
        cert, key = workdir / "serving.crt", workdir / "serving.key"
        cert.write_bytes(cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(key_pem)
        ca_pem = self.ca_pem

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = {"/ping": b"pong", "/cacerts": ca_pem}.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(body if body is not None else b"not found")

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


def _probe(url: str, timeout: float = 2.0, verify: str | bool = False) -> bool:
    try:
        r = requests.get(url, timeout=timeout, verify=verify)  # noqa: S501 - unverified only before a CA is known
    except requests.RequestException:
        return False
    return r.status_code == 200 and r.text.strip() == "pong"


def _cacerts(addr: str, port: int, timeout: float = 2.0) -> bytes | None:
    """``GET /cacerts`` without verification, as a k3s joiner does before it knows the CA."""
    try:
        r = requests.get(f"https://{addr}:{port}/cacerts", timeout=timeout, verify=False)  # noqa: S501
    except requests.RequestException:
        return None
    return r.content if r.status_code == 200 else None


def parse_token(text: str) -> tuple[str | None, str | None, str]:
    """``(ca_hash, user, password)`` of a k3s token, written from docs.k3s.io/cli/token: secure
    ``K10<hash>::<user>:<password>``, or short ``<password>`` (hash and user None)."""
    value = text.strip()
    ca_hash = None
    if value.startswith("K10") and "::" in value:
        ca_hash, value = value[3:].split("::", 1)
    user, sep, password = value.partition(":")
    if ca_hash is not None and sep:
        return ca_hash, user, password
    return ca_hash, None, value


def secure_token(ca_pem: bytes, user: str, password: str) -> str:
    """The secure format k3s writes: ``K10`` + sha256 hex of the CA PEM + ``::user:password``."""
    return f"K10{hashlib.sha256(ca_pem).hexdigest()}::{user}:{password}"


def server_ca(api: Api, create: bool) -> ClusterCa | None:
    """The cluster's server CA (Secret ``kube-system/k3s-sandbox-server-ca``); the first server makes it."""
    path = f"/api/v1/namespaces/kube-system/secrets/{SERVER_CA_SECRET}"
    for _ in range(2):
        found = api.get(path)
        if found is not None:
            data = {k: base64.b64decode(v) for k, v in found["data"].items()}
            return ClusterCa(data["ca.crt"], data["ca.key"])
        if not create:
            return None
        ca = ClusterCa.new("k3s-server-ca")
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": SERVER_CA_SECRET, "namespace": "kube-system"},
                "data": {"ca.crt": base64.b64encode(ca.cert_pem).decode(),
                         "ca.key": base64.b64encode(ca.key_pem).decode()}}
        if api.create("/api/v1/namespaces/kube-system/secrets", body) != 409:
            return ca
    return None


class ClusterCa:
    """A CA shared by a cluster's servers: the PEM certificate and key (EC P-256, ``cryptography``).

    k3s keeps its CAs in the bootstrap data that joining servers fetch with the token; the
    stand-in keeps the etcd CAs in the Secret ``kube-system/k3s-sandbox-etcd-ca`` instead.
    """

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        self.cert_pem, self.key_pem = cert_pem, key_pem
        self._cert = x509.load_pem_x509_certificate(cert_pem)
        self._key = serialization.load_pem_private_key(key_pem, password=None)

    @classmethod
    def new(cls, common_name: str) -> ClusterCa:
        """A fresh self-signed CA valid for ten days."""
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=10))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cls(cert.public_bytes(serialization.Encoding.PEM), key_pem)

    def issue(self, common_name: str, ips: list[str], names: list[str]) -> tuple[bytes, bytes]:
        """A certificate for server and client use (etcd members are both); ``(cert_pem, key_pem)``."""
        import datetime as dt
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(self._cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=10))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .sign(self._key, hashes.SHA256()))  # type: ignore[arg-type]
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def cluster_cas(api: Api, create: bool) -> tuple[ClusterCa, ClusterCa] | None:
    """The cluster's etcd ``(server CA, peer CA)`` from the API; the first server creates them.

    Returns None when they do not exist yet and ``create`` is False.
    """
    path = f"/api/v1/namespaces/kube-system/secrets/{ETCD_CA_SECRET}"
    for _ in range(2):
        found = api.get(path)
        if found is not None:
            data = {k: base64.b64decode(v) for k, v in found["data"].items()}
            return (ClusterCa(data["server-ca.crt"], data["server-ca.key"]),
                    ClusterCa(data["peer-ca.crt"], data["peer-ca.key"]))
        if not create:
            return None
        server, peer = ClusterCa.new("etcd-server-ca"), ClusterCa.new("etcd-peer-ca")
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": ETCD_CA_SECRET, "namespace": "kube-system"},
                "data": {k: base64.b64encode(v).decode() for k, v in (
                    ("server-ca.crt", server.cert_pem), ("server-ca.key", server.key_pem),
                    ("peer-ca.crt", peer.cert_pem), ("peer-ca.key", peer.key_pem))}}
        if api.create("/api/v1/namespaces/kube-system/secrets", body) != 409:
            return server, peer
    return None


def etcd_binary() -> str | None:
    """The etcd the stand-in runs: ``HERD_SANDBOX_ETCD``, else ``etcd`` on PATH."""
    import shutil

    return os.environ.get("HERD_SANDBOX_ETCD") or shutil.which("etcd")


class EmbeddedEtcd:
    """k3s' embedded etcd member of one server, as a real etcd child process.

    Files under the instance root, with k3s' names: data in ``/var/lib/rancher/k3s/server/db/etcd``
    (member name ``<node>-<8 hex>`` kept in ``…/db/etcd/name``), TLS in
    ``/var/lib/rancher/k3s/server/tls/etcd``: ``server-ca.crt``, ``server-client.crt``/``.key``
    (serving and client certificate), ``peer-ca.crt``, ``peer-server-client.crt``/``.key``. Peer
    and client URLs are ``https://<node-ip>:2380`` / ``:2379``, client certificates required.
    The member listens on the node IP only: sandbox instances share the loopback interface, so
    none of them can have ``127.0.0.1:2379`` to itself. etcd's output goes to
    ``/var/log/herd-sandbox/k3s-etcd.log``.

    Args:
        root: the instance root.
        node: the node name.
        ip: the node IP.
        log: prints one k3s-style log line.
    """

    CLIENT_PORT = 2379
    PEER_PORT = 2380

    def __init__(self, root: HostRoot, node: str, ip: str, log: Any = print) -> None:
        self.root, self.node, self.ip, self.log = root, node, ip, log
        self._removing: set[str] = set()  # members whose removal was sent but not seen to happen yet
        self.proc: subprocess.Popen[bytes] | None = None

    # -- identity and files ----------------------------------------------------------------------
    @property
    def client_url(self) -> str:
        """``https://<ip>:2379``."""
        return f"https://{self.ip}:{self.CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        """``https://<ip>:2380``."""
        return f"https://{self.ip}:{self.PEER_PORT}"

    def member_name(self) -> str:
        """``<node>-<8 hex>``, made once and kept in the name file."""
        name = self.root.read_text(ETCD_NAME_FILE, default="").strip()
        if not name:
            name = f"{self.node}-{secrets.token_hex(4)}"
            self.root.write(ETCD_NAME_FILE, name + "\n", mode=0o600)
        return name

    def has_data(self) -> bool:
        """True when etcd has run here before: its WAL directory exists (k3s ``IsInitialized``:
        ``db/etcd/member/wal``). A first start that failed before etcd wrote its WAL (e.g. the
        peer URLs did not validate) leaves ``member/snap`` only: that is still a join."""
        return self.root.path(f"{ETCD_DATA_DIR}/member/wal").is_dir()

    def write_certs(self, server_ca: ClusterCa, peer_ca: ClusterCa) -> None:
        """Write the CA certificates and this member's certificates (keys 0600)."""
        ips, names = [self.ip, "127.0.0.1"], ["localhost", self.node]
        cert, key = server_ca.issue("etcd-server", ips, names)
        self.root.write(f"{ETCD_TLS_DIR}/server-ca.crt", server_ca.cert_pem.decode(), mode=0o644)
        self.root.write(f"{ETCD_TLS_DIR}/server-client.crt", cert.decode(), mode=0o644)
        self.root.write(f"{ETCD_TLS_DIR}/server-client.key", key.decode(), mode=0o600)
        cert, key = peer_ca.issue("etcd-peer", ips, names)
        self.root.write(f"{ETCD_TLS_DIR}/peer-ca.crt", peer_ca.cert_pem.decode(), mode=0o644)
        self.root.write(f"{ETCD_TLS_DIR}/peer-server-client.crt", cert.decode(), mode=0o644)
        self.root.write(f"{ETCD_TLS_DIR}/peer-server-client.key", key.decode(), mode=0o600)

    def client(self, endpoints: list[str] | None = None) -> EtcdGateway:
        """The sandbox's own etcd gateway client with this server's client certificate."""
        return EtcdGateway(endpoints or [self.client_url], ca=str(self.root.path(f"{ETCD_TLS_DIR}/server-ca.crt")),
                           cert=str(self.root.path(f"{ETCD_TLS_DIR}/server-client.crt")),
                           key=str(self.root.path(f"{ETCD_TLS_DIR}/server-client.key")))

    # -- process ---------------------------------------------------------------------------------
    def _spawn(self, initial_cluster: str | None, state: str | None) -> None:
        binary = etcd_binary()
        if not binary:
            raise RuntimeError("etcd not found (HERD_SANDBOX_ETCD or PATH)")
        tls = self.root.path(ETCD_TLS_DIR)
        args = [binary, "--name", self.member_name(), "--data-dir", str(self.root.path(ETCD_DATA_DIR)),
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--client-cert-auth", "--trusted-ca-file", f"{tls}/server-ca.crt",
                "--cert-file", f"{tls}/server-client.crt", "--key-file", f"{tls}/server-client.key",
                "--peer-client-cert-auth", "--peer-trusted-ca-file", f"{tls}/peer-ca.crt",
                "--peer-cert-file", f"{tls}/peer-server-client.crt", "--peer-key-file", f"{tls}/peer-server-client.key",
                "--logger", "zap", "--log-outputs", "stderr"]
        if initial_cluster and state:
            args += ["--initial-cluster", initial_cluster, "--initial-cluster-state", state,
                     "--initial-cluster-token", "k3s-sandbox"]
        log_path = self.root.path(ETCD_LOG)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        with open(log_path, "ab") as fh:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,  # noqa: S603
                                         env=env, close_fds=True)

    def _wait_serving(self, deadline: float, stop: threading.Event) -> bool:
        client = self.client()
        client.timeout_s = 1.0
        try:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    self.log(f"level=error msg=\"etcd exited with {self.proc.returncode}; see {ETCD_LOG}\"")
                    return False
                try:
                    if client.leader_of(self.client_url):
                        return True
                except EtcdGatewayError:
                    pass
                if time.monotonic() > deadline or stop.wait(0.1):
                    return False
        finally:
            client.close()

    def start(self, join_address: str | None, deadline: float, stop: threading.Event) -> bool:
        """Start the member: restart on existing data, found a cluster (``join_address`` None) or
        join the cluster served at ``join_address`` (learner, then promote). True when serving."""
        if self.has_data():
            self.log("level=info msg=\"Starting etcd for existing cluster member\"")
            self._spawn(None, None)
            return self._wait_serving(deadline, stop)
        if join_address is None:
            self.log("level=info msg=\"Starting etcd for new cluster (cluster-init)\"")
            self._spawn(f"{self.member_name()}={self.peer_url}", "new")
            return self._wait_serving(deadline, stop)
        return self._join(join_address, deadline, stop)

    def _join(self, address: str, deadline: float, stop: threading.Event) -> bool:
        client = self.client([f"https://{address}:{self.CLIENT_PORT}"])
        try:
            while True:
                try:
                    _, members = client.member_list()
                    for m in members:  # a dead member on our address (EC2 reused the IP) goes first
                        if self.peer_url in m.peer_urls and m.name != self.member_name():
                            self.log(f"level=info msg=\"Removing stale etcd member {m.name or m.id} on {self.ip}\"")
                            client.member_remove(m.id)
                    mine = [m for m in client.member_list()[1] if self.peer_url in m.peer_urls]
                    if mine:
                        member, members = mine[0], client.member_list()[1]
                    else:
                        self.log(f"level=info msg=\"Adding etcd learner {self.member_name()} via {address}\"")
                        member, members = client.member_add([self.peer_url], learner=True)
                    break
                except EtcdGatewayError as exc:
                    self.log(f"level=info msg=\"Waiting to join etcd via {address}: {exc}\"")
                    if time.monotonic() > deadline or stop.wait(0.5):
                        return False
            self._spawn(initial_cluster(members, self.member_name(), self.peer_url), "existing")
            if not self._wait_serving(deadline, stop):
                return False
            return self._promote(client, member, deadline, stop)
        finally:
            client.close()

    def _promote(self, client: EtcdGateway, member: GatewayMember, deadline: float, stop: threading.Event) -> bool:
        while True:
            try:
                client.member_promote(member.id)
                self.log(f"level=info msg=\"Promoted etcd learner {self.member_name()} to voter\"")
                return True
            except EtcdGatewayError as exc:
                if exc.not_learner:
                    return True
                self.log(f"level=info msg=\"Waiting to promote etcd learner: {exc}\"")
            if time.monotonic() > deadline or stop.wait(0.3):
                return False

    def stop(self) -> None:
        """SIGTERM etcd, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    @staticmethod
    def _remove_member(client: EtcdGateway, member_id: int, retry_s: float = 5.0) -> None:
        """MemberRemove, retried while etcd answers "unhealthy cluster" (right after a change) or
        no answer came (a loaded machine: the removal may have happened all the same). A "member
        not found" after an unanswered attempt means that attempt took effect."""
        deadline = time.monotonic() + retry_s
        unanswered = False
        while True:
            try:
                client.member_remove(member_id)
                return
            except EtcdGatewayError as exc:
                if exc.member_not_found and unanswered:
                    return
                unanswered = unanswered or exc.status is None
                if ("unhealthy" not in exc.message and exc.status is not None) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    # -- k3s' etcd member controller -------------------------------------------------------------
    def reconcile_nodes(self, api: Api) -> list[str]:
        """Remove the members of server Nodes being deleted (then release their finalizer) or
        annotated ``etcd.k3s.cattle.io/remove=true``; returns the member names removed.

        Every running server does this, as every k3s server runs the controller; removing an
        already removed member is a no-op, and a stale finalizer release (409) is retried later.
        """
        nodes = api.get(f"/api/v1/nodes?labelSelector={ETCD_ROLE_LABEL}%3Dtrue") or {"items": []}
        work = []
        for node in nodes.get("items") or []:
            meta = node["metadata"]
            deleting = meta.get("deletionTimestamp") and ETCD_FINALIZER in (meta.get("finalizers") or [])
            marked = (meta.get("annotations") or {}).get(REMOVE_ANNOTATION) == "true"
            if deleting or marked:
                work.append((node, bool(deleting)))
        removed: list[str] = []
        if not work:
            return removed
        client = self.client()
        try:
            _, members = client.member_list()
            for node, deleting in work:
                meta = node["metadata"]
                member_name = (meta.get("annotations") or {}).get(NODE_NAME_ANNOTATION, "")
                mine = [m for m in members
                        if m.name == member_name or (not member_name and m.name.rsplit("-", 1)[0] == meta["name"])]
                if not mine and member_name in self._removing:  # an earlier unanswered removal took effect
                    self._removing.discard(member_name)
                    removed.append(member_name)
                    self.log(f"level=info msg=\"Removed etcd member {member_name} of node {meta['name']}\"")
                for m in mine:
                    self._removing.add(m.name)
                    try:
                        self._remove_member(client, m.id)
                        self._removing.discard(m.name)
                        removed.append(m.name)
                        self.log(f"level=info msg=\"Removed etcd member {m.name} of node {meta['name']}\"")
                    except EtcdGatewayError as exc:
                        if not exc.member_not_found:
                            raise
                if deleting:
                    rest = [f for f in meta.get("finalizers") or [] if f != ETCD_FINALIZER]
                    api.patch(f"/api/v1/nodes/{meta['name']}",
                              {"metadata": {"finalizers": rest, "resourceVersion": meta["resourceVersion"]}})
        except EtcdGatewayError as exc:
            self.log(f"level=warning msg=\"etcd member controller: {exc}\"")
        finally:
            client.close()
        return removed


def _member_controller(etcd: EmbeddedEtcd, api: Api, stop: threading.Event, interval: float = 0.25) -> None:
    while not stop.wait(interval):
        try:
            etcd.reconcile_nodes(api)
        except (requests.RequestException, OSError) as exc:
            print(f"level=warning msg=\"etcd member controller: {exc}\"", flush=True)


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
    ca_hash, user, token_password = parse_token(token)
    agent_password: str | None = None
    if server and conf.get("agent-token-file"):
        agent_text = root.read_text(str(conf["agent-token-file"]), default="").strip()
        agent_password = parse_token(agent_text)[2] if agent_text else None
    if server and user == "node":
        print("level=fatal msg=\"failed to validate token: an agent token (node:) cannot join a server; "
              "use the server token\"", flush=True)
        return 1
    # Joining through a server: resolve it; with a secure token, check the CA before sending anything.
    addr: str | None = None
    if conf.get("server") and not conf.get("datastore-endpoint"):
        url = urlsplit(str(conf["server"]))
        port = url.port or 6443
        verify: str | bool = False
        while True:
            addr = url.hostname if url.hostname and url.hostname[0].isdigit() else resolve(root, url.hostname or "")
            if addr and ca_hash:
                served = _cacerts(addr, port)
                if served is not None and hashlib.sha256(served).hexdigest() != ca_hash:
                    print(f"level=fatal msg=\"token CA hash does not match the Cluster CA certificate hash "
                          f"(server {addr})\"", flush=True)
                    return 1
                if served is not None:
                    ca_file = Path(tempfile.mkdtemp(prefix="k3s-sandbox-ca-")) / "ca.crt"
                    ca_file.write_bytes(served)
                    verify = str(ca_file)
            if addr and (verify or not ca_hash) and _probe(f"https://{addr}:{port}/ping", verify=verify):
                break
            print(f"level=info msg=\"Waiting to connect to server {conf['server']} (resolved: {addr})\"", flush=True)
            if time.monotonic() > deadline or stop.wait(0.5):
                return 1
    # The cluster's passwords: the first server fixes them; everyone else must present one of them.
    while True:
        existing = api.get(f"/api/v1/namespaces/kube-system/secrets/{TOKEN_SECRET}")
        if existing is None and founding:
            api.create("/api/v1/namespaces/kube-system/secrets",
                       _token_secret(_hash(token_password), _hash(agent_password or token_password)))
            continue
        if existing is not None:
            hashes = {k: base64.b64decode(v).decode() for k, v in existing["data"].items()}
            allowed = [hashes["server"]] if server else [hashes["server"], hashes["agent"]]
            if _hash(token_password) not in allowed:
                print("level=fatal msg=\"starting kubernetes: bootstrap data already found and encrypted with "
                      "different token\"" if server else
                      "level=fatal msg=\"failed to get CA certs: 401 Unauthorized (token rejected)\"", flush=True)
                return 1
            break
        if time.monotonic() > deadline or stop.is_set():
            print("level=fatal msg=\"no cluster token found: is the server up?\"", flush=True)
            return 1
        stop.wait(0.2)
    while (cluster_ca := server_ca(api, create=bool(founding))) is None:
        if time.monotonic() > deadline or stop.wait(0.2):
            print("level=fatal msg=\"no cluster CA found: is the server up?\"", flush=True)
            return 1
    if ca_hash and hashlib.sha256(cluster_ca.cert_pem).hexdigest() != ca_hash:
        print("level=fatal msg=\"token CA hash does not match the Cluster CA certificate hash\"", flush=True)
        return 1
    # Embedded etcd: a server founding with cluster-init, or joining a server without a datastore.
    etcd: EmbeddedEtcd | None = None
    if server and not conf.get("datastore-endpoint") and (conf.get("cluster-init") or conf.get("server")):
        etcd = EmbeddedEtcd(root, name, ip, log=lambda line: print(line, flush=True))
        try:
            if not etcd.has_data():
                while (cas := cluster_cas(api, create=bool(conf.get("cluster-init")))) is None:
                    if time.monotonic() > deadline or stop.wait(0.2):
                        return 1
                etcd.write_certs(*cas)
            if not etcd.start(None if conf.get("cluster-init") else addr, deadline, stop):
                print("level=fatal msg=\"starting etcd: not serving in time\"", flush=True)
                etcd.stop()
                return 1
        except Exception as exc:  # noqa: BLE001 - k3s exits fatally on any etcd start failure
            print(f"level=fatal msg=\"starting etcd: {exc}\"", flush=True)
            etcd.stop()
            return 1
    if conf.get("datastore-endpoint"):
        endpoint = str(conf["datastore-endpoint"]).rstrip("/")
        # Like k3s (kine): datastore-cafile verifies the server, datastore-certfile/-keyfile are the
        # client certificate; files are host paths under the instance root.
        tls: dict[str, Any] = {}
        if conf.get("datastore-cafile"):
            tls["verify"] = str(root.path(str(conf["datastore-cafile"])))
        if conf.get("datastore-certfile") and conf.get("datastore-keyfile"):
            tls["cert"] = (str(root.path(str(conf["datastore-certfile"]))),
                           str(root.path(str(conf["datastore-keyfile"]))))
        while True:
            try:
                if requests.get(endpoint + "/version", timeout=2, **tls).ok:
                    key = base64.b64encode(f"/registry/herd-sandbox/servers/{name}".encode()).decode()
                    requests.post(endpoint + "/v3/kv/put", json={"key": key, "value": base64.b64encode(
                        ip.encode()).decode()}, timeout=5, **tls).raise_for_status()
                    break
            except (requests.RequestException, OSError) as exc:
                print(f"level=info msg=\"datastore {endpoint}: {exc}\"", flush=True)
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
        if etcd:
            etcd.stop()
        return 1
    ping = PingServer(ip, 6443, Path(tempfile.mkdtemp(prefix="k3s-sandbox-")), ca=cluster_ca) if server else None
    labels = dict(item.split("=", 1) for item in conf.get("node-label") or [] if "=" in item)
    node = node_manifest(name, ip, labels, server, etcd_member=etcd.member_name() if etcd else None)
    if api.create("/api/v1/nodes", node) == 409:
        api.patch_status(f"/api/v1/nodes/{name}", {"status": node["status"]})
        if etcd:  # a restart: make sure the etcd metadata is there
            meta = node["metadata"]
            api.patch(f"/api/v1/nodes/{name}", {"metadata": {k: meta[k] for k in ("labels", "annotations",
                                                                                   "finalizers")}})
    if server:
        # What a running k3s server writes: its CA and both tokens in secure format.
        root.write(SERVER_CA_FILE, cluster_ca.cert_pem, mode=0o644)
        root.write(SERVER_TOKEN_FILE, secure_token(cluster_ca.cert_pem, "server", token_password) + "\n", mode=0o600)
        root.write(AGENT_TOKEN_FILE, secure_token(cluster_ca.cert_pem, "node", agent_password or token_password) + "\n",
                   mode=0o600)
        root.write("/etc/rancher/k3s/k3s.yaml", api.kubeconfig_text, mode=0o600)
    else:
        root.write(AGENT_CA_FILE, cluster_ca.cert_pem, mode=0o644)
        root.write("/var/lib/rancher/k3s/agent/kubelet.kubeconfig", api.kubeconfig_text, mode=0o600)
    controller = None
    if etcd:
        controller = threading.Thread(target=_member_controller, args=(etcd, api, stop), daemon=True,
                                      name="etcd-member-controller")
        controller.start()
    print(f"level=info msg=\"{READY_LINE}\" node={name} role={role}", flush=True)
    stop.wait()
    if controller:
        controller.join(5)
    if etcd:
        etcd.stop()
    if ping:
        ping.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m herd_sandbox.k3s server|agent``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("server", "agent"):
        print("usage: python -m herd_sandbox.k3s server|agent", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    root = HostRoot(os.environ.get("HERD_AGENT_ROOT", "/"))
    api = Api(os.environ["HERD_SANDBOX_KUBECONFIG"])
    return run(args[0], root, api, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
