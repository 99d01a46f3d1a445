#!/usr/bin/env bash
# Builds the kube-apiserver that the e2e tests run (testbed/harness.py) from the Kubernetes Go modules pinned in
# testbed/binaries/kube-apiserver/go.mod, into a cache outside the repository, and prints the binary's path.
#
#   testbed/binaries/build-kube-apiserver.sh          build if missing (a cold build takes long, see tests/e2e/README.md)
#   testbed/binaries/build-kube-apiserver.sh --path   print where the binary is or would be; build nothing
#
# Cache: ${ETCDSTORAGE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcdstorage-e2e}/kube-apiserver-<version>.
# The binary appears there complete or not at all (built in a temporary directory beside it, then renamed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cache.sh"
source "$here/kubernetes.sh"
binary="$cache/kube-apiserver-$kubernetes_version"

case "${1:-}" in
  --path) echo "$binary"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--path]" >&2; exit 2 ;;
esac

cache_hit "$binary"
require_go "$kubernetes_module" "kube-apiserver $kubernetes_version" \
  "or put a kube-apiserver $kubernetes_version binary at $binary"
cache_lock "$binary"
cache_workdir "$binary"

echo "building kube-apiserver $kubernetes_version into $binary (a cold build takes a long time)" >&2
started=$SECONDS
kubernetes_build "$workdir/kube-apiserver" kube-apiserver
chmod 0755 "$workdir/kube-apiserver"
echo "built kube-apiserver $kubernetes_version in $((SECONDS - started))s" >&2
cache_install "$workdir/kube-apiserver" "$binary"
