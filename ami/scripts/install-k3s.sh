#!/usr/bin/env bash
# Install k3s (binary, the server and agent units, k3s-killall.sh), enabled for neither role:
# herd-agent's join writes the configuration and starts the right unit at boot.
# Env: K3S_VERSION (e.g. v1.32.5+k3s1), K3S_SHA256 (of the k3s binary, from the release's
# sha256sum-amd64.txt), K3S_SOURCE (default: the GitHub release URL; an absolute path for a local copy).
. "$(dirname "$0")/lib.sh"
: "${K3S_VERSION:?K3S_VERSION is required}" "${K3S_SHA256:?K3S_SHA256 is required}"
K3S_SOURCE=${K3S_SOURCE:-https://github.com/k3s-io/k3s/releases/download/${K3S_VERSION//+/%2B}/k3s}

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fetch "$K3S_SOURCE" "$K3S_SHA256" "$tmp/k3s"
install -m 0755 "$tmp/k3s" /usr/local/bin/k3s
for tool in kubectl crictl ctr; do ln -sf k3s "/usr/local/bin/$tool"; done
echo "$K3S_VERSION" > /usr/local/share/k3s-version

# The units as k3s' installer writes them (docs.k3s.io/installation), one per role.
for role in server agent; do
  unit=k3s.service; [ "$role" = agent ] && unit=k3s-agent.service
  cat > "/etc/systemd/system/$unit" <<UNIT
[Unit]
Description=Lightweight Kubernetes ($role)
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s $role

[Install]
WantedBy=multi-user.target
UNIT
  chmod 0644 "/etc/systemd/system/$unit"
done

# k3s-killall.sh: stop k3s, then what KillMode=process leaves running (containerd shims and their
# pods), unmount what k3s mounted and delete its network links (the leave's leave.stop_k3s: killall).
cat > /usr/local/bin/k3s-killall.sh <<'KILLALL'
#!/bin/sh
[ "$(id -u)" -eq 0 ] || exec sudo "$0" "$@"
for unit in k3s.service k3s-agent.service; do systemctl stop "$unit" 2>/dev/null || true; done
for pid in $(pgrep -f 'containerd-shim' || true); do kill -9 "$pid" 2>/dev/null || true; done
for dir in /run/k3s /var/lib/kubelet/pods /var/lib/kubelet/plugins /run/netns/cni-; do
  awk -v p="$dir" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r | xargs -r -n1 umount -f 2>/dev/null || true
done
for link in flannel.1 flannel-v6.1 cni0 kube-ipvs0 flannel-wg; do ip link delete "$link" 2>/dev/null || true; done
rm -rf /var/lib/cni/
KILLALL
chmod 0755 /usr/local/bin/k3s-killall.sh
echo "install-k3s: k3s $K3S_VERSION installed, units k3s.service and k3s-agent.service not enabled"
