#!/usr/bin/env bash
# Install the herd-agent .deb (its postinst enables the units and starts nothing).
# Env: HERD_AGENT_DEB (default $ARTIFACTS/herd-agent.deb).
. "$(dirname "$0")/lib.sh"
HERD_AGENT_DEB=${HERD_AGENT_DEB:-$ARTIFACTS/herd-agent.deb}
[ -f "$HERD_AGENT_DEB" ] || die "no package at $HERD_AGENT_DEB (build it with packaging/build-deb)"
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -i "$HERD_AGENT_DEB"; then
  apt-get update -qq && apt-get install -y -qq -f   # pull in missing dependencies, then configure
fi
dpkg-query -W -f='${Status}' herd-agent | grep -q "install ok installed" || die "herd-agent did not install"
herd-agent --version
