"""``KubeSandbox``: the emulated Kubernetes API server with its simulated cluster, as one object.

Usage::

    with KubeSandbox(time_factor=0.01) as kube:
        kube.add_node("node-a")
        kubeconfig = kube.admin_kubeconfig        # for kubectl / lightkube
        kube.set_node_ready("node-a", False)
        pod = kube.get("Pod", "web-1", namespace="default")

See docs/sandbox-kube.md for what is served and what is not.
"""

from __future__ import annotations

import copy
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from herd_sandbox.kube import convert, defaults
from herd_sandbox.kube.auth import Authenticator, Authorizer, Identity, service_account_user
from herd_sandbox.kube.controllers import World
from herd_sandbox.kube.errors import ApiError
from herd_sandbox.kube.pki import CertificateAuthority
from herd_sandbox.kube.resources import Registry, ResourceType
from herd_sandbox.kube.server import ApiServer
from herd_sandbox.kube.store import Obj, Store, now_rfc3339

ADMIN = "admin"
K3S_VERSION = "v1.32.5+k3s1"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


class KubeSandbox:
    """An emulated API server (HTTPS + HTTP on loopback) with a simulated cluster behind it.

    Args:
        workdir: where kubeconfigs and the CA are written (a temporary directory when None,
            removed on :meth:`stop`).
        time_factor: real seconds per simulated second for grace periods (``0.01``: a 30 s pod
            grace period lasts 0.3 s). Pods start at once either way.
        host: loopback address to bind (127.0.0.0/8).
        https_port/http_port: ports to bind (0 picks free ones).
        history: watch events kept for resuming watches (older resourceVersions get 410).
        controllers: run the simulated controllers/scheduler/kubelets (False: a bare store).
        bookmark_interval: seconds between BOOKMARK events on idle watches that allow them.

    Raises:
        ValueError: a non-loopback ``host``.
    """

    def __init__(self, workdir: str | Path | None = None, *, time_factor: float = 1.0, host: str = "127.0.0.1",
                 https_port: int = 0, http_port: int = 0, history: int = 5000, controllers: bool = True,
                 bookmark_interval: float = 1.0) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="herd-kube-"))
        self.registry = Registry()
        self.store = Store(self.registry, history=history, time_factor=time_factor)
        defaults.install(self.store)
        self.authn = Authenticator()
        self.authz = Authorizer(self.store)
        self.ca = CertificateAuthority()
        self._ports = (https_port, http_port)
        self._host = host
        serving = self.ca.serving(host)
        (self.workdir / "pki").mkdir(parents=True, exist_ok=True)
        _write_private(self.workdir / "pki" / "ca.crt", self.ca.cert_pem.decode())
        _write_private(self.workdir / "pki" / "apiserver.crt", serving.cert_pem.decode())
        _write_private(self.workdir / "pki" / "apiserver.key", serving.key_pem.decode())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.workdir / "pki" / "apiserver.crt", self.workdir / "pki" / "apiserver.key")
        context.load_verify_locations(cadata=self.ca.cert_pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL
        self.server = ApiServer(self.store, self.authn, self.authz, host=host, tls=context,
                                bookmark_interval=bookmark_interval)
        self.world = World(self.store) if controllers else None
        self._kubeconfigs: dict[str, Path] = {}
        self._started = False
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.store.create(self._type("v1", "Namespace"), None, {"metadata": {"name": ns}})

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> KubeSandbox:
        """Start serving and the controllers; writes the admin kubeconfig. Returns self."""
        self.server.start(*self._ports)
        if self.world:
            self.world.start()
        self._started = True
        self.add_identity(ADMIN, groups=["system:masters"])
        return self

    def stop(self) -> None:
        """Stop the controllers and the listeners; removes a temporary workdir."""
        if self.world:
            self.world.stop()
        if self._started:
            self.server.stop()
            self._started = False
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KubeSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def time_factor(self) -> float:
        """Real seconds per simulated second for grace periods."""
        return self.store.time_factor

    @time_factor.setter
    def time_factor(self, value: float) -> None:
        self.store.time_factor = value

    @property
    def url(self) -> str:
        """The HTTPS endpoint, ``https://127.0.0.1:<port>``."""
        return self.server.https_url

    @property
    def http_url(self) -> str:
        """The plain-HTTP endpoint (same authentication by bearer token; no client certificates)."""
        return self.server.http_url

    # -- identities ---------------------------------------------------------------------

    def add_identity(self, name: str, groups: list[str] | tuple[str, ...] = (), *, rbac: bool = False,
                     auth: str = "token", scheme: str = "https") -> Path:
        """Register a user and write its kubeconfig (mode 0600); returns the kubeconfig path.

        Args:
            name: user name (for a ServiceAccount use :meth:`service_account_kubeconfig`).
            groups: its groups (``system:masters`` bypasses RBAC).
            rbac: evaluate RBAC for its requests.
            auth: ``"token"`` (bearer token) or ``"cert"`` (client certificate, CN=name, O=groups).
            scheme: ``"https"`` or ``"http"`` (token only) for the kubeconfig's server URL.
        """
        identity = Identity(name, list(groups), enforce_rbac=rbac)
        if auth == "cert":
            pair = self.ca.client(name, list(groups))
            identity.cert_pem, identity.key_pem = pair.cert_pem, pair.key_pem
            self.authn.add(identity)
        elif auth == "token":
            self.authn.add(identity)
            identity.token = self.authn.issue_token(identity)
        else:
            raise ValueError(f"auth must be 'token' or 'cert', not {auth!r}")
        return self._write_kubeconfig(identity, scheme)

    def service_account_kubeconfig(self, namespace: str, name: str, *, rbac: bool = True) -> Path:
        """Create the ServiceAccount if missing, issue it a token and write its kubeconfig (0600)."""
        sa_type = self._type("v1", "ServiceAccount")
        if self.store.find(sa_type, namespace, name) is None:
            self.store.create(sa_type, namespace, {"metadata": {"name": name, "namespace": namespace}})
        user, groups = service_account_user(namespace, name)
        identity = Identity(user, groups, enforce_rbac=rbac)
        self.authn.add(identity)
        identity.token = self.authn.issue_token(identity)
        return self._write_kubeconfig(identity, "https", file_name=f"sa-{namespace}-{name}")

    def identity(self, name: str) -> Identity:
        """The registered identity called ``name`` (its ``token`` / ``cert_pem`` / ``key_pem`` for raw clients).

        Raises:
            KeyError: when unknown.
        """
        identity = self.authn.by_name(name)
        if identity is None:
            raise KeyError(name)
        return identity

    @property
    def faults(self) -> Any:
        """Injected API faults (:class:`herd_sandbox.kube.faults.KubeFaults`): errors or slow answers
        per verb and resource, e.g. ``faults.add(KubeFault("create", "pods", "eviction", status=429))``."""
        return self.server.faults

    @property
    def ca_path(self) -> Path:
        """The CA certificate (PEM) that signs the serving and client certificates."""
        return self.workdir / "pki" / "ca.crt"

    def kubeconfig(self, name: str) -> Path:
        """The kubeconfig path written for an identity. Raises KeyError when unknown."""
        return self._kubeconfigs[name]

    @property
    def admin_kubeconfig(self) -> Path:
        """The kubeconfig of ``admin`` (group system:masters, token auth, HTTPS)."""
        return self._kubeconfigs[ADMIN]

    def _write_kubeconfig(self, identity: Identity, scheme: str, file_name: str | None = None) -> Path:
        server = self.url if scheme == "https" else self.http_url
        user: dict[str, Any] = {}
        if identity.token:
            user["token"] = identity.token
        if identity.cert_pem and identity.key_pem:
            user["client-certificate-data"] = _b64(identity.cert_pem)
            user["client-key-data"] = _b64(identity.key_pem)
        cluster: dict[str, Any] = {"server": server}
        if scheme == "https":
            cluster["certificate-authority-data"] = _b64(self.ca.cert_pem)
        doc = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "sandbox", "cluster": cluster}],
            "users": [{"name": identity.name, "user": user}],
            "contexts": [{"name": identity.name, "context": {"cluster": "sandbox", "user": identity.name}}],
            "current-context": identity.name,
        }
        safe = (file_name or identity.name).replace(":", "-").replace("/", "-")
        path = self.workdir / "kubeconfigs" / f"{safe}.yaml"
        _write_private(path, yaml.safe_dump(doc, sort_keys=False))
        self._kubeconfigs[identity.name] = path
        return path

    # -- objects ------------------------------------------------------------------------

    def _type(self, api_version: str, kind: str) -> ResourceType:
        group = api_version.rpartition("/")[0]
        rtype = self.registry.by_kind(group, kind)
        if rtype is None:
            raise KeyError(f"no served resource of kind {kind!r} in {api_version!r}")
        return rtype

    def resource_type(self, kind: str, api_version: str | None = None) -> ResourceType:
        """The served row for ``kind`` (``api_version`` defaults to the kind's built-in group).

        Raises:
            KeyError: when no such kind is served.
        """
        if api_version is None:
            for row in self.registry.all():
                if row.kind == kind:
                    return row
            raise KeyError(f"no served resource of kind {kind!r}")
        return self._type(api_version, kind)

    def create(self, obj: Obj) -> Obj:
        """Create an object from a manifest (``apiVersion``, ``kind``, ``metadata``); returns a copy.

        Raises:
            ApiError: as the API would answer (409 AlreadyExists, 404 namespace, 422 Invalid).
        """
        rtype = self._type(obj["apiVersion"], obj["kind"])
        namespace = (obj.get("metadata") or {}).get("namespace") or ("default" if rtype.namespaced else None)
        return copy.deepcopy(self.store.create(rtype, namespace, obj))

    def seed(self, *objects: Obj) -> list[Obj]:
        """Create several objects in order; returns the stored copies."""
        return [self.create(o) for o in objects]

    def get(self, kind: str, name: str, namespace: str | None = None, api_version: str | None = None) -> Obj:
        """A copy of one object. Raises ApiError 404 when missing."""
        rtype = self.resource_type(kind, api_version)
        obj = self.store.get(rtype, namespace or ("default" if rtype.namespaced else None), name)
        return convert.from_storage(rtype, obj)

    def find(self, kind: str, name: str, namespace: str | None = None, api_version: str | None = None) -> Obj | None:
        """A copy of one object, or None when missing."""
        try:
            return self.get(kind, name, namespace, api_version)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None, api_version: str | None = None,
             where: Callable[[Obj], bool] | None = None) -> list[Obj]:
        """Copies of the objects of a kind (all namespaces when ``namespace`` is None)."""
        rtype = self.resource_type(kind, api_version)
        items, _ = self.store.list_ref(rtype, namespace)
        served = [convert.from_storage(rtype, o) for o in items]
        return copy.deepcopy([o for o in served if where is None or where(o)])

    def modify(self, kind: str, name: str, change: Callable[[Obj], Obj | None], namespace: str | None = None,
               api_version: str | None = None, status: bool = False) -> Obj | None:
        """Edit an object in place (``change`` edits a private copy); ``status=True`` writes the status
        subresource. Returns the stored copy, or None when missing."""
        rtype = self.resource_type(kind, api_version)
        ns = namespace or ("default" if rtype.namespaced else None)
        result = self.store.modify(rtype, ns, name, change, subresource="status" if status else None)
        return copy.deepcopy(result)

    def delete(self, kind: str, name: str, namespace: str | None = None, api_version: str | None = None,
               grace_period: int | None = None) -> None:
        """Delete as the API would (graceful for pods, finalizers honoured). Raises ApiError 404."""
        rtype = self.resource_type(kind, api_version)
        self.store.delete(rtype, namespace or ("default" if rtype.namespaced else None), name, grace_period)

    def watch_count(self, kind: str, api_version: str | None = None) -> int:
        """How many watches on ``kind`` are open (tests wait for a client to start watching)."""
        return self.store.watcher_count(self.resource_type(kind, api_version).key)

    def wait_for(self, condition: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until ``condition()`` returns a truthy value (re-checked on every store change).

        Returns:
            The truthy value.

        Raises:
            TimeoutError: after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self.store.changed:
            while True:
                value = condition()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met within {timeout} s")
                self.store.changed.wait(min(remaining, 0.05))

    # -- the simulated world ------------------------------------------------------------

    def add_node(self, name: str, *, labels: dict[str, str] | None = None, taints: list[dict[str, Any]] | None = None,
                 ready: bool = True, unschedulable: bool = False, control_plane: bool = False,
                 address: str | None = None) -> Obj:
        """Register a Node as k3s's kubelet would: hostname/os/arch labels, addresses, nodeInfo, conditions.

        Args:
            name: node name.
            labels: extra labels.
            taints: ``spec.taints`` entries (``{"key", "value", "effect"}``).
            ready: initial Ready condition.
            unschedulable: start cordoned.
            control_plane: add the k3s control-plane/master/etcd role labels.
            address: InternalIP (a 10.0.x.y address derived from the name when None).
        """
        all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                      "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
                      "node.kubernetes.io/instance-type": "k3s"}
        if control_plane:
            all_labels.update({"node-role.kubernetes.io/control-plane": "true",
                               "node-role.kubernetes.io/master": "true", "node-role.kubernetes.io/etcd": "true"})
        all_labels.update(labels or {})
        seed = sum(name.encode()) % 250
        spec: dict[str, Any] = {"podCIDR": f"10.42.{seed}.0/24", "providerID": f"k3s://{name}"}
        if taints:
            spec["taints"] = taints
        if unschedulable:
            spec["unschedulable"] = True
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": all_labels,
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                         "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
            "spec": spec,
            "status": {
                "addresses": [{"type": "InternalIP", "address": address or f"10.0.{seed}.{len(name) % 250 + 1}"},
                              {"type": "Hostname", "address": name}],
                "capacity": {"cpu": "2", "memory": "4028180Ki", "pods": "110", "ephemeral-storage": "20134592Ki"},
                "allocatable": {"cpu": "2", "memory": "4028180Ki", "pods": "110", "ephemeral-storage": "19586718405"},
                "conditions": self._node_conditions(ready),
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"kubeletVersion": K3S_VERSION, "kubeProxyVersion": K3S_VERSION,
                             "containerRuntimeVersion": "containerd://1.7.27-k3s1", "operatingSystem": "linux",
                             "architecture": "amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                             "kernelVersion": "6.1.0-sandbox", "machineID": "", "systemUUID": "", "bootID": ""},
            },
        }
        return self.create(node)

    @staticmethod
    def _node_conditions(ready: bool, previous: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        moment = now_rfc3339()
        old = {c.get("type"): c for c in previous or []}
        conds = []
        for ctype, status, reason, message in (
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("Ready", "True" if ready else "Unknown", "KubeletReady" if ready else "NodeStatusUnknown",
             "kubelet is posting ready status" if ready else "Kubelet stopped posting node status."),
        ):
            prev = old.get(ctype)
            transition = prev["lastTransitionTime"] if prev and prev.get("status") == status else moment
            conds.append({"type": ctype, "status": status, "reason": reason, "message": message,
                          "lastHeartbeatTime": moment, "lastTransitionTime": transition})
        return conds

    def set_node_ready(self, name: str, ready: bool) -> Obj:
        """Flip a Node's Ready condition (True, or Unknown as when the kubelet stops posting).

        Raises:
            KeyError: when the node does not exist.
        """
        def change(node: Obj) -> None:
            status = node.setdefault("status", {})
            status["conditions"] = self._node_conditions(ready, status.get("conditions"))

        result = self.modify("Node", name, change, status=True)
        if result is None:
            raise KeyError(f"no node {name!r}")
        return result

    def add_static_pod(self, node: str, name: str, namespace: str = "kube-system", *,
                       image: str = "registry.k8s.io/pause:3.9", labels: dict[str, str] | None = None) -> Obj:
        """Create the mirror pod of a static pod on ``node``, as the kubelet does.

        The pod is named ``<name>-<node>``, annotated ``kubernetes.io/config.mirror`` (and
        ``kubernetes.io/config.source: file``) and owned by the Node (kind Node, controller true).
        """
        node_obj = self.get("Node", node)
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": f"{name}-{node}", "namespace": namespace, "labels": labels or {"component": name},
                "annotations": {"kubernetes.io/config.mirror": node_obj["metadata"]["uid"][:32].replace("-", ""),
                                "kubernetes.io/config.source": "file", "kubernetes.io/config.hash": name},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node,
                                     "uid": node_obj["metadata"]["uid"], "controller": True}],
            },
            "spec": {"nodeName": node, "containers": [{"name": name, "image": image}], "priority": 2000001000,
                     "priorityClassName": "system-node-critical",
                     "tolerations": [{"operator": "Exists", "effect": "NoExecute"}]},
        }
        return self.create(pod)

    def settle(self, timeout: float = 10.0) -> None:
        """Run controller passes until a pass changes nothing (no-op without controllers).

        Raises:
            TimeoutError: when the world keeps changing for ``timeout`` seconds.
        """
        if not self.world:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = self.store.revision
            self.world.reconcile()
            if self.store.revision == before:
                return
        raise TimeoutError("the simulated cluster did not settle")
