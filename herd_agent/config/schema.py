"""The one schema of the agent's configuration.

Every key has a type, a default, an allowed range or set, and one line of documentation. The
loader validates against it, ``config check`` prints it merged, and ``docs/configuration.md`` is
generated from it (``python -m herd_agent.config.docs``; a test fails when the two drift).

Values of string keys may use the placeholder ``{cluster}`` (the cluster name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ROLES = ("control-plane", "node")

# Defaults from k3s' and Kubernetes' documented host requirements (k3s "Requirements";
# kubeadm "container runtimes" prerequisites: br_netfilter, overlay, forwarding).
DEFAULT_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "fs.inotify.max_user_instances": "8192",
    "fs.inotify.max_user_watches": "524288",
    "vm.overcommit_memory": "1",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
}
DEFAULT_MODULES = ["br_netfilter", "overlay"]


@dataclass(frozen=True)
class Option:
    """One configuration key.

    Attributes:
        path: dotted key, e.g. ``watch.poll_interval_s``.
        type: one of ``str``, ``int``, ``float``, ``bool``, ``list[str]``, ``map[str,str]``,
            ``map[str,any]``.
        default: value when unset; None means "unset" (allowed only when ``nullable``).
        doc: one line for people.
        choices: allowed values, when the key is an enumeration.
        min, max: inclusive numeric range (units are in the key's suffix: ``_s`` seconds).
        pattern: regular expression a string (or each list item) must match in full.
        nullable: None is a valid value.
        secret: masked as ``***`` whenever the config is printed or logged.
    """

    path: str
    type: str
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    nullable: bool = False
    secret: bool = False

    @property
    def regex(self) -> re.Pattern[str] | None:
        """The compiled ``pattern`` (None when there is none)."""
        return re.compile(self.pattern) if self.pattern else None


@dataclass(frozen=True)
class RoleRequirement:
    """For instances of ``role``, at least one of ``any_of`` must be set; ``why`` says what needs it."""

    role: str
    any_of: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Requires:
    """When ``key`` equals ``value``, ``needs`` must equal ``needs_value``; ``why`` says why."""

    key: str
    value: Any
    needs: str
    needs_value: Any
    why: str


@dataclass(frozen=True)
class Exclusive:
    """At most one of ``keys`` may be set (to a non-default value); ``why`` says why."""

    keys: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Schema:
    """The whole schema: options plus cross-key rules."""

    options: tuple[Option, ...]
    role_requirements: tuple[RoleRequirement, ...] = field(default=())
    exclusives: tuple[Exclusive, ...] = field(default=())
    requires: tuple[Requires, ...] = field(default=())

    def by_path(self) -> dict[str, Option]:
        """Options keyed by their dotted path."""
        return {o.path: o for o in self.options}

    def sections(self) -> list[str]:
        """Top-level section names in schema order."""
        seen: list[str] = []
        for o in self.options:
            head = o.path.split(".", 1)[0]
            if head not in seen:
                seen.append(head)
        return seen


_NAME = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_TAG_KEY = r"[A-Za-z0-9+\-=._:@]{1,128}"  # instance-metadata tag keys may not contain '/'
_SSM_NAME = r"/?[A-Za-z0-9_.\-/{}]{1,1011}"
_URL = r"https?://[^\s]+"
_IP = r"(\d{1,3}\.){3}\d{1,3}"

Opt = Option

SCHEMA = Schema(
    options=(
        # cluster / identity
        Opt("cluster.name", "str", None, "Cluster name; unset means the instance's cluster tag decides.",
          pattern=_NAME, nullable=True),
        Opt("identity.role", "str", None, "Role override; unset means the instance's role tag decides.",
          choices=ROLES, nullable=True),
        Opt("identity.cluster_tag", "str", "herd:cluster", "EC2 tag key that names the cluster (seed layout: Cluster).",
          pattern=_TAG_KEY),
        Opt("identity.role_tag", "str", "herd:role", "EC2 tag key that names the role (seed layout: Role).",
          pattern=_TAG_KEY),
        Opt("identity.control_plane_value", "str", "control-plane", "Role tag value meaning a control plane."),
        Opt("identity.node_value", "str", "node", "Role tag value meaning a worker node."),
        # instance metadata
        Opt("imds.endpoint", "str", "http://169.254.169.254",
          "IMDS base URL; AWS_EC2_METADATA_SERVICE_ENDPOINT overrides it.", pattern=_URL),
        Opt("imds.token_ttl_s", "int", 21600, "IMDSv2 session token lifetime in seconds.", min=60, max=21600),
        Opt("imds.timeout_s", "float", 2.0, "Timeout of one IMDS request, seconds.", min=0.1, max=60),
        Opt("imds.attempts", "int", 5, "Attempts per IMDS request on 5xx or timeout (backoff between).", min=1, max=50),
        # discovery
        Opt("discovery.addresses", "list[str]", [], "Fixed control-plane IPs; replaces the EC2 tag lookup.",
          pattern=_IP),
        Opt("discovery.instance_ids", "list[str]", [], "Fixed control-plane instance ids; replaces the tag lookup.",
          pattern=r"i-[0-9a-f]{8,17}"),
        Opt("discovery.api_port", "int", 6443, "k3s API port probed by the health check.", min=1, max=65535),
        Opt("discovery.health_timeout_s", "float", 2.0, "Timeout of one control-plane health probe, seconds.",
          min=0.1, max=60),
        Opt("discovery.attempts", "int", 10, "Discovery rounds before giving up with 'no control plane'.",
          min=1, max=1000),
        Opt("discovery.backoff_max_s", "float", 30.0, "Longest wait between discovery rounds, seconds.",
          min=0.1, max=600),
        # /etc/hosts
        Opt("hosts.endpoint_name", "str", "control-plane.{cluster}.internal",
          "Name of the control-plane endpoint kept in /etc/hosts and in the k3s tls-san."),
        Opt("hosts.refresh_interval_s", "int", 30, "How often the watcher re-checks the endpoint, seconds.",
          min=5, max=3600),
        # kernel
        Opt("kernel.sysctls", "map[str,str]", DEFAULT_SYSCTLS, "sysctl values written to /etc/sysctl.d and applied."),
        Opt("kernel.modules", "list[str]", DEFAULT_MODULES, "Kernel modules written to /etc/modules-load.d and loaded.",
          pattern=r"[A-Za-z0-9_\-]+"),
        Opt("kernel.inhibit_delay_max_s", "int", 300, "logind InhibitDelayMaxSec, so kubelet can finish a shutdown.",
          min=0, max=3600),
        Opt("kernel.shutdown_grace_period_s", "int", 240, "kubelet shutdownGracePeriod, seconds.", min=0, max=3600),
        Opt("kernel.shutdown_grace_period_critical_pods_s", "int", 60,
          "kubelet shutdownGracePeriodCriticalPods, seconds (part of the grace period).", min=0, max=3600),
        # join token
        Opt("token.source", "str", "ssm", "Where the k3s join token lives.", choices=("ssm", "secretsmanager")),
        Opt("token.name", "str", "/herd/{cluster}/token",
            "SSM parameter name or Secrets Manager secret id of the k3s SERVER token (control planes only "
            "read it; it amounts to cluster admin). token.server_name, when set, takes its place.",
            pattern=_SSM_NAME),
        Opt("token.server_name", "str", None,
            "SSM parameter / Secrets Manager id of the k3s server token; unset: token.name.",
            nullable=True, pattern=_SSM_NAME),
        Opt("token.agent_name", "str", "/herd/{cluster}/k3s-agent-token",
            "SSM parameter / Secrets Manager id of the k3s AGENT token: the only token workers read.",
            pattern=_SSM_NAME),
        # encryption of what the agent writes
        Opt("kms.key_id", "str", None,
            "KMS key (key id, key ARN, alias/NAME or alias ARN) the agent encrypts the SecureString "
            "parameters and secrets it writes with (join tokens, etcd CA); unset: the AWS-managed aws/ssm "
            "and aws/secretsmanager keys. The roles need kms:Encrypt/GenerateDataKey/Decrypt on it (ami/iam).",
            nullable=True, pattern=r"[A-Za-z0-9:/_\-]{1,2048}"),
        # founder decision
        Opt("founder.parameter", "str", "/herd/{cluster}/founder",
            "SSM parameter prefix of the founder claims; the epoch number is appended (docs/join.md).",
            pattern=_SSM_NAME),
        Opt("founder.incarnation_tag", "str", None,
            "Deprecated and ignored: founder claims are epochs now, and a recreated cluster takes over the "
            "stale claim of its predecessor (docs/join.md).", nullable=True, pattern=_TAG_KEY),
        Opt("founder.stale_after_s", "int", 1800,
            "A founder claim whose cluster never came up is stale after this long, seconds (must exceed "
            "join.ready_timeout_s: a live founder gives up first).", min=120, max=86400),
        # etcd
        Opt("etcd.mode", "str", "embedded", "embedded: k3s' own etcd (TLS); external: agent-run stacked etcd.",
            choices=("embedded", "external")),
        Opt("etcd.insecure_plain_http", "bool", False,
            "External mode only: turn OFF etcd TLS; the stacked members then talk plain HTTP, "
            "unencrypted and unauthenticated (anyone reaching port 2379 reads and writes the datastore). "
            "Logged as a warning by every join and etcd command."),
        Opt("etcd.ca_secret", "str", "/herd/{cluster}/etcd-ca",
            "External mode with TLS: Secrets Manager secret holding the etcd cluster CA (created by the "
            "founder; only control planes may read it).", pattern=r"[A-Za-z0-9/_+=.@\-{}]{1,512}"),
        Opt("etcd.cert_lifetime_days", "int", 365,
            "External mode with TLS: lifetime of a member certificate, days; renewed with a third left.",
            min=1, max=3650),
        Opt("etcd.client_port", "int", 2379, "etcd client port.", min=1, max=65535),
        Opt("etcd.peer_port", "int", 2380, "etcd peer port.", min=1, max=65535),
        Opt("etcd.data_dir", "str", "/var/lib/etcd", "etcd data directory (external mode).", pattern=r"/.*"),
        Opt("etcd.stale_grace_s", "int", 300, "A member whose instance is gone this long is stale, seconds.",
          min=30, max=86400),
        Opt("etcd.gc_interval_s", "int", 300,
            "How often a control plane's watcher runs the stale-member pass (external mode), seconds.",
            min=30, max=86400),
        Opt("etcd.unstarted_grace_s", "int", 600, "A member added but never started this long is stale, seconds.",
          min=60, max=86400),
        # k3s
        Opt("k3s.node_name", "str", "instance-id", "Node name scheme; instance ids survive EC2's reuse of IPs.",
          choices=("instance-id", "hostname")),
        Opt("k3s.extra", "map[str,any]", {}, "Extra k3s config keys (flags without dashes), merged into our file."),
        # join
        Opt("join.ready_timeout_s", "int", 600, "Longest wait for the Node to turn Ready, seconds.", min=10, max=7200),
        Opt("join.launch_hook_name", "str", None,
            "Name of the group's launch lifecycle hook; unset: looked up with DescribeLifecycleHooks "
            "(one more AWS call per join).", nullable=True, pattern=r"[A-Za-z0-9\-_/]{1,255}"),
        Opt("join.failure_result", "str", "ABANDON", "Launch-hook result when the join definitely fails.",
          choices=("ABANDON", "CONTINUE")),
        # Kubernetes credentials
        Opt("kube.kubeconfig", "str", None, "Kubeconfig the agent uses (control planes default to k3s' admin one).",
          nullable=True, pattern=r"/.*"),
        Opt("kube.token_ssm_parameter", "str", None, "SSM SecureString holding a ServiceAccount token for the agent.",
          nullable=True, pattern=_SSM_NAME),
        Opt("kube.token_secret_id", "str", None, "Secrets Manager secret holding a ServiceAccount token for the agent.",
          nullable=True),
        Opt("kube.server", "str", None,
            "API URL used with a ServiceAccount token; unset: https://<hosts.endpoint_name>:<discovery.api_port>.",
            nullable=True, pattern=_URL),
        Opt("kube.ca_file", "str", "/var/lib/rancher/k3s/agent/server-ca.crt",
            "CA that signs the API server certificate, used with a ServiceAccount token.", pattern=r"/.*"),
        Opt("kube.insecure_skip_tls_verify", "bool", False,
          "Turn OFF TLS certificate checks for the Kubernetes API. Never do this outside a lab."),
        # watcher
        Opt("watch.poll_interval_s", "float", 1.0, "IMDS poll interval, seconds.", min=0.2, max=60),
        Opt("watch.on_rebalance", "str", "ignore", "Reaction to a rebalance recommendation.",
          choices=("ignore", "cordon", "leave")),
        Opt("watch.on_maintenance", "str", "cordon", "Reaction to a scheduled maintenance event.",
          choices=("ignore", "cordon", "leave")),
        # leave
        Opt("leave.delete_emptydir_data", "bool", True, "Evict pods with emptyDir volumes (their data is lost)."),
        Opt("leave.evict_unmanaged", "bool", True, "Evict pods no controller will recreate."),
        Opt("leave.eviction_parallelism", "int", 8, "Evictions in flight at once.", min=1, max=64),
        Opt("leave.delete_after_budget", "bool", True, "When the drain budget is spent, delete the pods left."),
        Opt("leave.reserve_s", "int", 30, "Time kept back from the drain for the steps after it, seconds.",
          min=5, max=600),
        Opt("leave.stop_timeout_s", "int", 900, "The unit's stop timeout (TimeoutStopSec), seconds.", min=30, max=7200),
        Opt("leave.stop_k3s", "str", "killall", "How k3s stops: killall also stops its pods; stop leaves them.",
          choices=("killall", "stop", "none")),
        Opt("leave.deadline_s", "int", None,
            "Upper bound on one leave, seconds; the earliest of this and the AWS deadlines wins.",
            nullable=True, min=10, max=172800),
        Opt("leave.heartbeat_interval_s", "float", None,
            "Lifecycle-hook heartbeat interval, seconds; unset: max(30, heartbeat timeout / 3), "
            "at most half the timeout.", nullable=True, min=0.1, max=3600),
        Opt("leave.failure_result", "str", "CONTINUE", "Terminate-hook result when a leave step failed.",
          choices=("CONTINUE", "ABANDON")),
        # signals
        Opt("notify.webhook_url", "str", None,
            "POST a JSON event here on each leave phase; a credential (masked), https unless "
            "notify.webhook_allow_plain_http; redirects are not followed.", nullable=True, pattern=_URL, secret=True),
        Opt("notify.webhook_allow_plain_http", "bool", False,
            "Send the webhook over plain, unencrypted http:// (its URL and secret header readable on the wire)."),
        Opt("notify.webhook_secret", "str", None, "Value of the webhook's secret header.", nullable=True, secret=True),
        Opt("notify.webhook_secret_header", "str", "X-Herd-Secret", "Header that carries the webhook secret."),
        Opt("metrics.textfile_dir", "str", "/var/lib/node_exporter/textfile_collector",
          "Directory of node_exporter's textfile collector.", pattern=r"/.*"),
        Opt("log.level", "str", "INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
        # leader mode (docs/leader.md): Lease election, Helm releases, GitOps hand-off
        Opt("leader.lease_name", "str", "herd-agent-leader", "Name of the coordination.k8s.io/v1 Lease.",
            pattern=_NAME),
        Opt("leader.lease_namespace", "str", "kube-system", "Namespace of the Lease, status ConfigMap and Events.",
            pattern=_NAME),
        Opt("leader.lease_duration_s", "float", 15.0,
            "LeaseDuration (client-go): a candidate takes over after this long without a change.", min=1, max=600),
        Opt("leader.renew_deadline_s", "float", 10.0,
            "RenewDeadline (client-go): the leader stops writing this long after its last renew.", min=1, max=600),
        Opt("leader.retry_period_s", "float", 2.0, "RetryPeriod (client-go): between acquire/renew tries (jitter 1.2).",
            min=1, max=600),
        Opt("leader.identity", "str", None,
            "Holder identity; unset: <hostname>_<random>, new at every start (so each term has its own epoch).",
            nullable=True, pattern=r"[A-Za-z0-9._:-]{1,128}"),
        Opt("leader.helm", "str", "helm", "The helm binary (3 or 4; the version is asked at start)."),
        Opt("leader.spec", "map[str,any]", {},
            "Desired state, helmfile field names: repositories, releases, manifests (docs/leader.md)."),
        Opt("leader.helmfile", "str", None,
            "Path of a plain-YAML helmfile.yaml (no Go templates, no environments); instead of leader.spec.",
            nullable=True, pattern=r"/.*"),
        Opt("leader.parallelism", "int", 4, "Releases applied at once (independent branches of the needs DAG).",
            min=1, max=32),
        Opt("leader.attempts", "int", 3, "helm attempts per release per pass (capped exponential backoff between).",
            min=1, max=20),
        Opt("leader.backoff_max_s", "float", 30.0, "Longest wait between two attempts of one release, seconds.",
            min=1, max=3600),
        Opt("leader.resync_interval_s", "int", 300,
            "A leader re-applies this often (a changed config file starts a pass at once), seconds.", min=5, max=86400),
        Opt("leader.work_dir", "str", "/var/lib/herd-agent/leader",
            "Private directory (0700) for helm's cache/config and generated 0600 values files.", pattern=r"/.*"),
    ),
    role_requirements=(
        RoleRequirement(
            "node",
            ("kube.kubeconfig", "kube.token_ssm_parameter", "kube.token_secret_id"),
            "a worker's kubelet credentials cannot evict pods; give the agent its own",
        ),
    ),
    requires=(),
    exclusives=(
        Exclusive(("discovery.addresses", "discovery.instance_ids"), "name the control planes one way"),
        Exclusive(("kube.kubeconfig", "kube.token_ssm_parameter", "kube.token_secret_id"),
                  "the agent uses exactly one Kubernetes credential"),
    ),
)
