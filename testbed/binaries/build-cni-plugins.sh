#!/usr/bin/env bash
# Builds the CNI plugins of the e2e node (testbed/node.py): bridge, loopback, ptp, host-local and portmap, from the
# release pinned in testbed/binaries/cni-plugins/go.mod, into one directory of the cache outside the repository (the
# node's CNI bin directory), and prints that directory's path. Static (no cgo), as the release builds them.
#
#   testbed/binaries/build-cni-plugins.sh          build if missing
#   testbed/binaries/build-cni-plugins.sh --path   print where the directory is or would be; build nothing
#
# Cache: ${ETCDSTORAGE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcdstorage-e2e}/cni-plugins-<version>/.
# The directory appears there complete or not at all (built in a temporary directory beside it, then renamed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cache.sh"
module="$here/cni-plugins"
package=github.com/containernetworking/plugins
plugins=(main/bridge main/loopback main/ptp ipam/host-local meta/portmap)
version="$(require_module_version "$module" "$package")"
entry="$cache/cni-plugins-$version"

case "${1:-}" in
  --path) echo "$entry"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--path]" >&2; exit 2 ;;
esac

cache_hit "$entry"
require_go "$module" "the CNI plugins $version" "or put bridge, loopback, ptp, host-local and portmap in $entry/"
cache_lock "$entry"
cache_workdir "$entry"

echo "building the CNI plugins ${plugins[*]##*/} $version into $entry" >&2
started=$SECONDS
(cd "$module" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -X $package/pkg/utils/buildversion.BuildVersion=$version" \
  -o "$workdir/bin/" "${plugins[@]/#/$package/plugins/}") >&2
reported="$("$workdir/bin/loopback" 2>&1 || true)"
if [[ "$reported" != *" $version"* ]]; then
  echo "error: the loopback plugin built from $package $version reports '$reported'" >&2
  exit 1
fi
echo "built the CNI plugins $version in $((SECONDS - started))s" >&2
cache_install "$workdir/bin" "$entry"
