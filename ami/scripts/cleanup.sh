#!/usr/bin/env bash
# Image hygiene, last: nothing of the build instance may reach the instances launched from the
# image (amazon-eks-ami does the same before its validate.sh).
. "$(dirname "$0")/lib.sh"
rm -f /etc/ssh/ssh_host_*                     # each instance makes its own host keys
truncate -s 0 /etc/machine-id                 # empty: systemd makes a new id at first boot
rm -f /var/lib/dbus/machine-id
if command -v cloud-init >/dev/null; then cloud-init clean --logs --seed; fi
rm -rf /var/lib/cloud/instances /var/lib/cloud/instance /var/lib/cloud/data /var/lib/cloud/sem
rm -f /etc/hostname
rm -rf /var/lib/herd-agent/* /run/herd-agent             # no join state: every instance joins afresh
rm -rf /var/lib/rancher /etc/rancher /var/lib/etcd      # no k3s or etcd state from a test start
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /var/log/journal/*
for f in /var/log/wtmp /var/log/btmp /var/log/lastlog; do [ -e "$f" ] && truncate -s 0 "$f"; done
rm -rf /root/.bash_history /home/*/.bash_history /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
apt-get clean
rm -rf /var/lib/apt/lists/* /var/tmp/*
# /tmp: everything but these scripts (validate.sh runs next; the template removes them last).
find /tmp -mindepth 1 -maxdepth 1 ! -name herd-scripts -exec rm -rf {} +
echo "cleanup: done"
