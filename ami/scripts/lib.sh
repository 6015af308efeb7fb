# Shared by the provisioning scripts (sourced). Every artifact is fetched from a URL or taken from
# a local path, and installed only when its SHA-256 matches the one the template was given.
set -euo pipefail
ARTIFACTS=${ARTIFACTS:-/tmp/herd-artifacts}

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# fetch SOURCE SHA256 DEST: copy (local path) or download (https URL) SOURCE to DEST, then check.
fetch() {
  local source=$1 sha=$2 dest=$3
  [[ $sha =~ ^[0-9a-f]{64}$ ]] || die "checksum for $source is not a SHA-256 hex digest: '$sha'"
  case $source in
    https://*) curl -fsSL --retry 5 --proto '=https' -o "$dest" "$source" || die "download failed: $source" ;;
    /*) [ -f "$source" ] || die "artifact not found: $source"; cp "$source" "$dest" ;;
    *) die "artifact must be an https:// URL or an absolute path: $source" ;;
  esac
  echo "$sha  $dest" | sha256sum --check --status - \
    || die "checksum mismatch for $source: want $sha, got $(sha256sum "$dest" | cut -d' ' -f1)"
}
