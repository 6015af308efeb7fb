#!/usr/bin/env bash
# Bake Helm charts (.tgz) for the leader's offline bootstrap into /usr/local/share/herd-agent/charts,
# with a SHA256SUMS beside them. Env: CHARTS_DIR (default $ARTIFACTS/charts; may be empty).
. "$(dirname "$0")/lib.sh"
CHARTS_DIR=${CHARTS_DIR:-$ARTIFACTS/charts}
dest=/usr/local/share/herd-agent/charts
install -d -m 0755 "$dest"
shopt -s nullglob
charts=("$CHARTS_DIR"/*.tgz)
for chart in "${charts[@]}"; do
  tar -tzf "$chart" | grep -q '/Chart.yaml$' || die "$chart is not a Helm chart archive (no Chart.yaml)"
  install -m 0644 "$chart" "$dest/"
done
(cd "$dest" && if compgen -G '*.tgz' >/dev/null; then sha256sum -- *.tgz; fi > SHA256SUMS)
echo "install-charts: ${#charts[@]} chart(s) in $dest"
