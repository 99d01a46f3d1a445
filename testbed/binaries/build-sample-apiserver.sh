#!/usr/bin/env bash
# Builds the Kubernetes sample-apiserver (k8s.io/sample-apiserver, the Wardle API: Flunders and Fischers) that the
# node's e2e scenario runs on an EtcdStorage (tests/e2e/test_node_sample_apiserver.py), from the release pinned in
# testbed/binaries/sample-apiserver/go.mod (the staging release of kube-apiserver's k8s.io/kubernetes), into the cache
# outside the repository, and prints the binary's path. Static (no cgo): it runs in an image of that one file.
#
#   testbed/binaries/build-sample-apiserver.sh          build if missing
#   testbed/binaries/build-sample-apiserver.sh --path   print where the binary is or would be; build nothing
#
# Cache: ${ETCDSTORAGE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcdstorage-e2e}/sample-apiserver-<version>.
# The binary appears there complete or not at all (built in a temporary directory beside it, then renamed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cache.sh"
source "$here/kubernetes.sh"
module="$here/sample-apiserver"
package=k8s.io/sample-apiserver
version="$(require_module_version "$module" "$package")"
binary="$cache/sample-apiserver-$version"

case "${1:-}" in
  --path) echo "$binary"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--path]" >&2; exit 2 ;;
esac

# The staging modules are released as v0.<minor>.<patch> with k8s.io/kubernetes v1.<minor>.<patch>: a sample-apiserver
# of another release would be a different API server from the one the tests run it beside.
if [[ "$version" != "v0.${kubernetes_version#v1.}" ]]; then
  echo "error: $module/go.mod requires $package $version, but kube-apiserver is $kubernetes_version" \
    "(expected $package v0.${kubernetes_version#v1.})" >&2
  exit 1
fi

cache_hit "$binary"
require_go "$module" "the sample-apiserver $version" "or put a static sample-apiserver $version binary at $binary"
cache_lock "$binary"
cache_workdir "$binary"

echo "building the sample-apiserver $version into $binary" >&2
started=$SECONDS
(cd "$module" && CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$workdir/sample-apiserver" "$package") >&2
# It has no --version: its help naming the etcd flags the scenario sets is the check that this is the right command.
if ! "$workdir/sample-apiserver" --help 2>&1 | grep -q -- '--etcd-compaction-interval'; then
  echo "error: the binary built from $package $version does not offer --etcd-compaction-interval" >&2
  exit 1
fi
chmod 0755 "$workdir/sample-apiserver"
echo "built the sample-apiserver $version in $((SECONDS - started))s" >&2
cache_install "$workdir/sample-apiserver" "$binary"
