"""Kubernetes clients (lightkube), built in one place from a kubeconfig under the host root.

lightkube is imported inside the functions, so the watcher pays for it only when it talks to the
API. Which kubeconfig: ``kube.kubeconfig`` when set; on control planes k3s' admin kubeconfig
(``/etc/rancher/k3s/k3s.yaml``); on workers, for reads of their own Node, the kubelet's
(``/var/lib/rancher/k3s/agent/kubelet.kubeconfig``), which the Node authorizer allows.
TLS is verified unless ``kube.insecure_skip_tls_verify`` says otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.errors import ExitCode, HerdError
from herd_agent.host.fsroot import HostRoot

K3S_ADMIN_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
K3S_KUBELET_KUBECONFIG = "/var/lib/rancher/k3s/agent/kubelet.kubeconfig"


def kubeconfig_path(cfg: Config, *, control_plane: bool) -> str:
    """Host path of the kubeconfig to use for this role."""
    return cfg.get("kube.kubeconfig") or (K3S_ADMIN_KUBECONFIG if control_plane else K3S_KUBELET_KUBECONFIG)


def service_account_token(cfg: Config, region: str) -> str | None:
    """The agent's ServiceAccount token from SSM (``kube.token_ssm_parameter``) or Secrets Manager
    (``kube.token_secret_id``), registered with the redactor; None when neither is configured.

    Raises:
        AwsError: the read failed (AccessDenied names the action).
    """
    from herd_agent import aws
    from herd_agent.redact import register_secret

    if cfg.get("kube.token_ssm_parameter"):
        value = aws.call(aws.client("ssm", region), "GetParameter", Name=cfg.get("kube.token_ssm_parameter"),
                         WithDecryption=True)["Parameter"]["Value"]
    elif cfg.get("kube.token_secret_id"):
        value = aws.call(aws.client("secretsmanager", region), "GetSecretValue",
                         SecretId=cfg.get("kube.token_secret_id"))["SecretString"]
    else:
        return None
    register_secret(value)
    return str(value).strip()


def token_client(root: HostRoot, cfg: Config, token: str, server: str, timeout_s: float = 10.0) -> Any:
    """A ``lightkube.Client`` authenticating with a bearer ``token`` to ``server``, verifying the
    server certificate against ``kube.ca_file`` (unless ``kube.insecure_skip_tls_verify``)."""
    from lightkube import Client, KubeConfig
    from lightkube.config.models import Cluster, User

    insecure = bool(cfg.get("kube.insecure_skip_tls_verify"))
    ca = None if insecure else str(root.path(cfg.get("kube.ca_file")))
    config = KubeConfig.from_one(cluster=Cluster(server=server, certificate_auth=ca, insecure=insecure),
                                 user=User(token=token))
    return Client(config=config, timeout=timeout_s, trust_env=False)


def load_kubeconfig(root: HostRoot, cfg: Config, *, control_plane: bool) -> Any:
    """The role's kubeconfig (:func:`kubeconfig_path`) as a lightkube ``SingleConfig`` (current
    context), insecure only when ``kube.insecure_skip_tls_verify`` says so.

    Raises:
        HerdError: the kubeconfig does not exist (yet) (exit 66).
    """
    from lightkube import KubeConfig

    path = root.path(kubeconfig_path(cfg, control_plane=control_plane))
    if not path.exists():
        raise HerdError(f"kubeconfig {kubeconfig_path(cfg, control_plane=control_plane)} does not exist",
                        exit_code=ExitCode.NO_INPUT)
    single = KubeConfig.from_file(str(path)).get()
    if cfg.get("kube.insecure_skip_tls_verify"):
        import msgspec

        single = single._replace(cluster=msgspec.structs.replace(single.cluster, insecure=True))
    return single


def transport(single: Any, wrap: Callable[[Any], Any]) -> Any:
    """``wrap(inner)`` around an ``httpx2.HTTPTransport`` that speaks the kubeconfig's TLS (its CA,
    its client certificate), for a client that must see each request before it is sent (the
    leader's fence: :class:`herd_agent.leader.fence.FencedTransport`). httpx ignores ``verify``
    when a transport is given, so the TLS settings go on the inner transport here."""
    import httpx2
    from lightkube.config.client_adapter import verify_cluster

    verify = verify_cluster(single.cluster, single.user, single.abs_file, trust_env=False)
    return wrap(httpx2.HTTPTransport(verify=verify))


def http_client(single: Any, wrap_transport: Callable[[Any], Any], timeout: Any = None) -> Any:
    """An ``httpx2.Client`` for raw API requests with the kubeconfig ``single``'s base URL,
    credentials and TLS, sending through ``wrap_transport(inner)`` (see :func:`transport`).

    Args:
        single: a lightkube ``SingleConfig`` (:func:`load_kubeconfig`).
        timeout: an ``httpx2.Timeout``; None waits for ever on a read (watches), as client-go does
            without ``--request-timeout``, with a 10 s connect timeout.
    """
    import httpx2
    from lightkube.config.client_adapter import Client, ConnectionParams

    timeout = timeout if timeout is not None else httpx2.Timeout(None, connect=10.0)
    return Client(single, ConnectionParams(timeout=timeout, trust_env=False,
                                           transport=transport(single, wrap_transport)))


def fenced_client(single: Any, wrap_transport: Callable[[Any], Any], timeout_s: float = 10.0) -> Any:
    """A ``lightkube.Client`` for the kubeconfig ``single`` (:func:`load_kubeconfig`) that sends
    through ``wrap_transport(inner)`` (see :func:`transport`): the leader's API client, whose
    every write the fence sees right before it is sent."""
    from lightkube import Client

    return Client(config=single, timeout=timeout_s, trust_env=False, transport=transport(single, wrap_transport))


def client(root: HostRoot, cfg: Config, *, control_plane: bool, timeout_s: float = 10.0,
           token: str | None = None, server: str | None = None) -> Any:
    """A ``lightkube.Client``: with ``token`` (a ServiceAccount token) against ``server``, else from
    the role's kubeconfig (:func:`load_kubeconfig`).

    Raises:
        HerdError: the kubeconfig does not exist (yet) (exit 66).
    """
    from lightkube import Client

    if token is not None and server is not None:
        return token_client(root, cfg, token, server, timeout_s)
    return Client(config=load_kubeconfig(root, cfg, control_plane=control_plane), timeout=timeout_s,
                  trust_env=False)


def node_ready(node: Any) -> bool:
    """True when the Node's ``Ready`` condition is ``True`` (Kubernetes node status docs)."""
    for cond in (node.status.conditions or []) if node.status else []:
        if cond.type == "Ready":
            return cond.status == "True"
    return False


def wait_node_ready(
    make_client: Callable[[], Any],
    name: str,
    timeout_s: float,
    *,
    progress: Callable[[str], None] | None = None,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Wait until Node ``name`` is Ready, polling every ``poll_s`` seconds for at most ``timeout_s``.

    ``make_client`` is called until it succeeds (the kubeconfig appears once k3s has started).
    ``progress`` gets a one-line status each round (the join shows it in systemd ``STATUS=``).

    Raises:
        HerdError: not Ready within ``timeout_s`` (exit 81), with the last thing seen.
    """
    import threading

    from lightkube.resources.core_v1 import Node

    deadline = clock() + timeout_s
    started = clock()
    last = "no kubeconfig yet"
    kube = None
    pause = threading.Event()
    while True:
        try:
            if kube is None:
                kube = make_client()
            node = kube.get(Node, name)
            if node_ready(node):
                return
            last = "Node registered, not Ready"
        except HerdError as exc:
            last = str(exc)
        except Exception as exc:  # API not up yet, 404 before registration, TLS not ready
            status = getattr(getattr(exc, "status", None), "code", None)
            last = "Node not registered yet" if status == 404 else f"API not answering ({type(exc).__name__})"
        if progress:
            progress(f"waiting for Node {name} to be Ready ({clock() - started:.0f}s): {last}")
        if clock() >= deadline:
            raise HerdError(f"Node {name} not Ready after {timeout_s:.0f}s: {last}", exit_code=ExitCode.TIMEOUT)
        pause.wait(poll_s)
