"""The agent-owned k3s config drop-in: ``/etc/rancher/k3s/config.yaml.d/50-herd-agent.yaml``.

k3s reads ``/etc/rancher/k3s/config.yaml`` then ``config.yaml.d/*.yaml`` in lexical order; keys
mirror its command-line flags (k3s "Configuration File" docs). The agent writes only its own file
and leaves the user's alone. Rendering is pure (:func:`render`); :func:`write` puts it on disk
(mode 0600) only when it changed.

Keys the agent owns: ``node-name`` (the instance id by default: EC2 reuses IPs and hostnames, and
a reused name trips k3s' node-password check), ``node-ip``, ``node-label`` (zone, instance type),
``kubelet-arg`` (graceful node shutdown), ``token-file``, ``server`` (the /etc/hosts endpoint name,
except for the founder), ``tls-san`` (servers), ``cluster-init`` (founder, embedded etcd) and
``datastore-endpoint`` (external etcd; with TLS also ``datastore-cafile``/``-certfile``/``-keyfile``,
the member's certificate from ``herd_agent.etcd.pki``), ``agent-token-file`` (servers: the agent token k3s hands
to agents). ``k3s.extra`` adds user options: names are checked against k3s' flags, owned keys are
refused, options whose value is a credential (``token``, ``agent-token``, ``vpn-auth``, the etcd-s3
keys) are refused without echoing the value, and list values of owned list keys are appended.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import ConfigError
from herd_agent.host.fsroot import HostRoot
from herd_agent.k3s.names import node_name
from herd_agent.k3s.tokens import AGENT_TOKEN_FILE, TOKEN_FILE

CONFIG_FILE = "/etc/rancher/k3s/config.yaml.d/50-herd-agent.yaml"

OWNED = {"node-name", "node-ip", "token", "token-file", "agent-token", "agent-token-file", "server", "cluster-init",
         "datastore-endpoint", "datastore-cafile", "datastore-certfile", "datastore-keyfile"}
# Options whose value is itself a credential: refused in ``k3s.extra`` (the config file is read by
# people and tools; a secret belongs in a 0600 file named by the matching ``*-file`` option), and
# their value is never echoed in the error.
SECRET_OPTIONS = {
    "token": "herd-agent manages the join tokens itself (token.server_name, token.agent_name)",
    "agent-token": "herd-agent manages the join tokens itself (token.server_name, token.agent_name)",
    "vpn-auth": "write it to a 0600 file and name that file with vpn-auth-file",
    "etcd-s3-access-key": "use the instance role, or etcd-s3-config-secret",
    "etcd-s3-secret-key": "use the instance role, or etcd-s3-config-secret",
    "etcd-s3-session-token": "use the instance role, or etcd-s3-config-secret",
}
OWNED_LISTS = {"node-label", "kubelet-arg", "tls-san"}

# k3s options valid on both `k3s server` and `k3s agent`.
COMMON_OPTIONS = {
    "node-name", "node-ip", "node-external-ip", "node-internal-dns", "node-external-dns", "node-label",
    "node-taint", "kubelet-arg", "kube-proxy-arg", "server", "token", "token-file", "data-dir",
    "private-registry", "system-default-registry", "selinux", "lb-server-port", "protect-kernel-defaults",
    "resolv-conf", "container-runtime-endpoint", "default-runtime", "snapshotter", "pause-image",
    "flannel-iface", "flannel-conf", "flannel-cni-conf-dir", "with-node-id", "image-credential-provider-bin-dir",
    "image-credential-provider-config", "rootless", "prefer-bundled-bin", "vpn-auth", "vpn-auth-file",
    "airgap-extra-registry", "debug", "v", "vmodule", "log", "alsologtostderr", "disable-default-registry-endpoint",
    "nonroot-devices", "enable-pprof",
}
# k3s options valid on `k3s server` only.
SERVER_OPTIONS = {
    "cluster-init", "cluster-reset", "cluster-reset-restore-path", "datastore-endpoint", "datastore-cafile",
    "datastore-certfile", "datastore-keyfile", "tls-san", "tls-san-security", "bind-address", "advertise-address",
    "advertise-port", "https-listen-port", "supervisor-port", "apiserver-port", "cluster-cidr", "service-cidr",
    "service-node-port-range", "cluster-dns", "cluster-domain", "flannel-backend", "flannel-ipv6-masq",
    "flannel-external-ip", "egress-selector-mode", "servicelb-namespace", "write-kubeconfig",
    "write-kubeconfig-mode", "write-kubeconfig-group", "agent-token", "agent-token-file", "disable",
    "disable-scheduler", "disable-cloud-controller", "disable-kube-proxy", "disable-network-policy",
    "disable-helm-controller", "disable-apiserver", "disable-controller-manager", "disable-etcd",
    "embedded-registry", "secrets-encryption", "secrets-encryption-provider", "etcd-expose-metrics",
    "etcd-disable-snapshots", "etcd-snapshot-name", "etcd-snapshot-schedule-cron", "etcd-snapshot-retention",
    "etcd-snapshot-dir", "etcd-snapshot-compress", "etcd-s3", "etcd-s3-bucket", "etcd-s3-region",
    "etcd-s3-endpoint", "etcd-s3-folder", "etcd-s3-access-key", "etcd-s3-secret-key",
    "etcd-s3-session-token", "etcd-s3-config-secret", "etcd-arg", "kube-apiserver-arg", "kube-scheduler-arg",
    "kube-controller-manager-arg", "kube-cloud-controller-manager-arg", "default-local-storage-path",
    "supervisor-metrics", "helm-job-image",
}


def endpoint_name(cfg: Config, ident: Identity) -> str:
    """The control-plane endpoint name kept in /etc/hosts (``hosts.endpoint_name`` filled in)."""
    return cfg.expand("hosts.endpoint_name", cluster=ident.cluster)


_SECRETISH = ("token", "pass", "secret", "auth", "key", "cred")


def shown(key: str, value: Any) -> str:
    """``value`` as an error may echo it: ``***`` for any token-like key (even a misspelt one, or
    one close to a credential option) or any value that looks like a k3s secure token."""
    secretish = any(word in key.lower() for word in _SECRETISH) or \
        difflib.get_close_matches(key, list(SECRET_OPTIONS), n=1, cutoff=0.7) or \
        (isinstance(value, str) and value.startswith("K10"))
    return "***" if secretish else repr(value)


def validate_extra(extra: dict[str, Any], server: bool) -> list[str]:
    """Problems with ``k3s.extra`` for this role, one ``k3s.extra.KEY: problem (got VALUE)`` line each."""
    problems = []
    allowed = COMMON_OPTIONS | (SERVER_OPTIONS if server else set())
    for key, value in extra.items():
        base = key[:-1] if key.endswith("+") else key
        path = f"k3s.extra.{key}"
        if base in SECRET_OPTIONS:
            problems.append(f"{path}: a credential, refused in the config: {SECRET_OPTIONS[base]} (got ***)")
        elif base in OWNED:
            problems.append(f"{path}: herd-agent sets this itself; remove it (got {shown(base, value)})")
        elif base in SERVER_OPTIONS and not server:
            problems.append(f"{path}: a k3s server option, and this instance is a worker node "
                            f"(got {shown(base, value)})")
        elif base not in allowed:
            near = difflib.get_close_matches(base, sorted(COMMON_OPTIONS | SERVER_OPTIONS), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            problems.append(f"{path}: not a k3s option{hint} (got {shown(base, value)})")
        elif not isinstance(value, (str, bool, int, list)) or (
            isinstance(value, list) and not all(isinstance(v, str) for v in value)
        ):
            problems.append(f"{path}: must be a string, number, boolean or list of strings (got {shown(base, value)})")
    return problems


def render(
    cfg: Config,
    ident: Identity,
    *,
    founder: bool,
    datastore_endpoint: str | None = None,
) -> dict[str, Any]:
    """The k3s config mapping for this instance. Pure.

    Args:
        founder: this control plane founds the cluster (no ``server:``; ``cluster-init`` in
            embedded-etcd mode).
        datastore_endpoint: external-etcd mode: the local member's client URL.

    Raises:
        ConfigError: ``k3s.extra`` has problems (exit 78).
    """
    server = ident.is_control_plane
    extra = dict(cfg.get("k3s.extra"))
    problems = validate_extra(extra, server)
    if problems:
        raise ConfigError(problems)
    name = endpoint_name(cfg, ident)
    out: dict[str, Any] = {"node-name": node_name(cfg.get("k3s.node_name"), ident)}
    out["node-ip"] = ident.private_ip
    out["token-file"] = TOKEN_FILE
    if server:
        out["agent-token-file"] = AGENT_TOKEN_FILE
    labels = [f"topology.kubernetes.io/zone={ident.availability_zone}",
              f"topology.kubernetes.io/region={ident.region}"]
    if ident.instance_type:
        labels.append(f"node.kubernetes.io/instance-type={ident.instance_type}")
    out["node-label"] = labels
    out["kubelet-arg"] = [
        f"shutdown-grace-period={cfg.get('kernel.shutdown_grace_period_s')}s",
        f"shutdown-grace-period-critical-pods={cfg.get('kernel.shutdown_grace_period_critical_pods_s')}s",
    ]
    if not (server and founder):
        out["server"] = f"https://{name}:{cfg.get('discovery.api_port')}"
    if server:
        out["tls-san"] = [name]
        if cfg.get("etcd.mode") == "embedded":
            if founder:
                out["cluster-init"] = True
        elif datastore_endpoint:
            out["datastore-endpoint"] = datastore_endpoint
            out.pop("server", None)  # with an external datastore, servers share state through etcd
            if datastore_endpoint.startswith("https://"):  # external etcd with TLS: k3s presents the member cert
                from herd_agent.etcd.settings import PKI_DIR

                out.update({"datastore-cafile": f"{PKI_DIR}/ca.crt", "datastore-certfile": f"{PKI_DIR}/member.crt",
                            "datastore-keyfile": f"{PKI_DIR}/member.key"})
    for key, value in extra.items():
        base = key[:-1] if key.endswith("+") else key
        if base in OWNED_LISTS:
            out[base] = list(out.get(base, [])) + (value if isinstance(value, list) else [value])
        else:
            out[key] = value
    return out


def to_yaml(config: dict[str, Any]) -> str:
    """The file text: a header comment and the mapping, keys sorted."""
    return "# Written by herd-agent (k3s config step); your own files in config.yaml.d are left alone.\n" + \
        yaml.safe_dump(config, sort_keys=True, default_flow_style=False)


def write(root: HostRoot, config: dict[str, Any]) -> bool:
    """Write the drop-in (mode 0600); True when it changed."""
    return root.write(CONFIG_FILE, to_yaml(config), mode=0o600)
