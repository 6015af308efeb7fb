#!/usr/bin/env bash
# Install etcd and etcdctl into /usr/local/bin for etcd.mode: external (herd-etcd.service runs it).
# Env: ETCD_VERSION (e.g. v3.5.21), ETCD_SHA256 (of etcd-<version>-linux-<arch>.tar.gz),
# ETCD_SOURCE (default: the GitHub release URL; an absolute path for a local copy).
. "$(dirname "$0")/lib.sh"
: "${ETCD_VERSION:?ETCD_VERSION is required}" "${ETCD_SHA256:?ETCD_SHA256 is required}"
arch=$(dpkg --print-architecture)
ETCD_SOURCE=${ETCD_SOURCE:-https://github.com/etcd-io/etcd/releases/download/$ETCD_VERSION/etcd-$ETCD_VERSION-linux-$arch.tar.gz}

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fetch "$ETCD_SOURCE" "$ETCD_SHA256" "$tmp/etcd.tar.gz"
tar -C "$tmp" -xzf "$tmp/etcd.tar.gz"
for bin in etcd etcdctl; do
  found=$(find "$tmp" -type f -name "$bin" | head -n1)
  [ -n "$found" ] || die "$bin not in $ETCD_SOURCE"
  install -m 0755 "$found" "/usr/local/bin/$bin"
done
echo "install-etcd: etcd $ETCD_VERSION installed (herd-etcd.service starts it; not enabled)"
