#!/usr/bin/env bash
# Fail the bake when the image is not what the instances need (after cleanup.sh).
set -uo pipefail
failed=0
fail() { echo "validate: $*" >&2; failed=1; }
compgen -G '/etc/ssh/ssh_host_*' >/dev/null && fail "SSH host keys left in /etc/ssh"
[ -s /etc/machine-id ] && fail "/etc/machine-id is not empty"
[ -e /var/lib/dbus/machine-id ] && fail "/var/lib/dbus/machine-id exists"
[ -e /etc/hostname ] && fail "/etc/hostname exists"
compgen -G '/var/lib/cloud/instances/*' >/dev/null && fail "cloud-init instance state left"
[ -e /var/lib/cloud/instance ] && fail "cloud-init instance link left"
[ -n "$(find /var/log -type f -size +0c 2>/dev/null)" ] && fail "non-empty logs: $(find /var/log -type f -size +0c | head -3)"
[ -e /tmp/herd-artifacts ] && fail "build artifacts left in /tmp"
compgen -G '/var/lib/herd-agent/*' >/dev/null && fail "herd-agent join state left"
[ -x /usr/local/bin/k3s ] || fail "k3s is not installed"
for unit in k3s.service k3s-agent.service; do
  [ -f "/etc/systemd/system/$unit" ] || fail "$unit missing"
  systemctl is-enabled --quiet "$unit" 2>/dev/null && fail "$unit is enabled (herd-agent starts it)"
done
[ -x /usr/local/bin/etcd ] || fail "etcd is not installed"
[ -x /usr/local/bin/helm ] || fail "helm is not installed"
for unit in herd-agent-join.service herd-agent-join-ready.service herd-agent.service; do
  systemctl is-enabled --quiet "$unit" || fail "$unit is not enabled"
done
herd-agent config check >/dev/null || fail "herd-agent config check fails"
[ "$failed" -eq 0 ] && echo "validate: image ok"
exit "$failed"
