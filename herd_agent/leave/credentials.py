"""The leave's Kubernetes credential, beside the step engine.

Control planes use k3s' admin kubeconfig (or ``kube.kubeconfig``). Workers use their own
credential, because a kubelet's cannot evict pods or delete its Node: ``kube.kubeconfig``, or the
herd-agent ServiceAccount's token from SSM (``kube.token_ssm_parameter``) or Secrets Manager
(``kube.token_secret_id``), against ``kube.server`` (default the control-plane endpoint name),
verified against ``kube.ca_file``. The ServiceAccount's rights are ``packaging/rbac/herd-agent.yaml``
(docs/security.md says what they allow).
"""

from __future__ import annotations

from typing import Any

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import HerdError
from herd_agent.host.fsroot import HostRoot


def make_kube_client(root: HostRoot, cfg: Config, ident: Identity) -> Any:
    """The leave's Kubernetes client (lightkube).

    Raises:
        HerdError: a worker with no credential that can evict pods (the message names the keys).
        AwsError: the token could not be read.
    """
    from herd_agent import kube
    from herd_agent.k3s.config import endpoint_name

    if cfg.get("kube.kubeconfig") or ident.is_control_plane:
        return kube.client(root, cfg, control_plane=ident.is_control_plane)
    token = kube.service_account_token(cfg, ident.region)
    if token is None:
        raise HerdError("a worker needs its own Kubernetes credential to evict pods: set kube.kubeconfig, "
                        "kube.token_ssm_parameter or kube.token_secret_id")
    server = cfg.get("kube.server") or f"https://{endpoint_name(cfg, ident)}:{cfg.get('discovery.api_port')}"
    return kube.client(root, cfg, control_plane=False, token=token, server=server)
