#!/usr/bin/env bash
# Install helm into /usr/local/bin (the leader's offline chart bootstrap).
# Env: HELM_VERSION (e.g. v3.17.3), HELM_SHA256 (of helm-<version>-linux-<arch>.tar.gz),
# HELM_SOURCE (default: get.helm.sh; an absolute path for a local copy).
. "$(dirname "$0")/lib.sh"
: "${HELM_VERSION:?HELM_VERSION is required}" "${HELM_SHA256:?HELM_SHA256 is required}"
arch=$(dpkg --print-architecture)
HELM_SOURCE=${HELM_SOURCE:-https://get.helm.sh/helm-$HELM_VERSION-linux-$arch.tar.gz}

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fetch "$HELM_SOURCE" "$HELM_SHA256" "$tmp/helm.tar.gz"
tar -C "$tmp" -xzf "$tmp/helm.tar.gz"
found=$(find "$tmp" -type f -name helm | head -n1)
[ -n "$found" ] || die "helm not in $HELM_SOURCE"
install -m 0755 "$found" /usr/local/bin/helm
echo "install-helm: helm $HELM_VERSION installed"
