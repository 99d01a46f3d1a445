#!/usr/bin/env bash
# Builds containerd, ctr and containerd-shim-runc-v2 for the e2e node (testbed/node.py) from the containerd release
# pinned in testbed/binaries/containerd/go.mod, into one directory of the cache outside the repository, and prints that
# directory's path. Static (no cgo): the btrfs snapshotter, which needs cgo, is left out; the node uses overlayfs.
#
#   testbed/binaries/build-containerd.sh          build if missing
#   testbed/binaries/build-containerd.sh --path   print where the directory is or would be; build nothing
#
# Cache: ${ETCDSTORAGE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcdstorage-e2e}/containerd-<version>/.
# The directory appears there complete or not at all (built in a temporary directory beside it, then renamed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cache.sh"
module="$here/containerd"
package=github.com/containerd/containerd/v2
version="$(require_module_version "$module" "$package")"
entry="$cache/containerd-$version"

case "${1:-}" in
  --path) echo "$entry"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--path]" >&2; exit 2 ;;
esac

cache_hit "$entry"
require_go "$module" "containerd $version" "or put containerd, ctr and containerd-shim-runc-v2 in $entry/"
cache_lock "$entry"
cache_workdir "$entry"

# As containerd's Makefile stamps a release (the module proxy records no Git revision, so name the module instead).
ldflags="-s -X $package/version.Version=$version -X $package/version.Revision=$package@$version"
ldflags+=" -X $package/version.Package=$package"

echo "building containerd, ctr and containerd-shim-runc-v2 $version into $entry" >&2
started=$SECONDS
(cd "$module" && CGO_ENABLED=0 go build -trimpath -tags urfave_cli_no_docs -ldflags="$ldflags" -o "$workdir/bin/" \
  "$package/cmd/containerd" "$package/cmd/ctr" "$package/cmd/containerd-shim-runc-v2") >&2
reported="$("$workdir/bin/containerd" --version)"
if [[ "$reported" != "containerd $package $version "* ]]; then
  echo "error: the containerd built from $package $version reports '$reported'" >&2
  exit 1
fi
echo "built containerd, ctr and containerd-shim-runc-v2 $version in $((SECONDS - started))s" >&2
cache_install "$workdir/bin" "$entry"
