#!/usr/bin/env bash
# Builds the Kubernetes commands of the e2e node (testbed/node.py): kubelet, kube-controller-manager, kube-scheduler and
# kube-proxy, from the same pinned release and module as kube-apiserver (testbed/binaries/kube-apiserver/go.mod), into
# one directory of the cache outside the repository, and prints that directory's path.
#
#   testbed/binaries/build-kubernetes-node.sh          build if missing (cold: see tests/e2e/README.md)
#   testbed/binaries/build-kubernetes-node.sh --path   print where the directory is or would be; build nothing
#
# Cache: ${ETCDSTORAGE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcdstorage-e2e}/kubernetes-node-<version>/.
# The directory appears there complete or not at all (built in a temporary directory beside it, then renamed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cache.sh"
source "$here/kubernetes.sh"
commands=(kubelet kube-controller-manager kube-scheduler kube-proxy)
entry="$cache/kubernetes-node-$kubernetes_version"

case "${1:-}" in
  --path) echo "$entry"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--path]" >&2; exit 2 ;;
esac

cache_hit "$entry"
require_go "$kubernetes_module" "${commands[*]} $kubernetes_version" "or put those binaries in $entry/"
cache_lock "$entry"
cache_workdir "$entry"

echo "building ${commands[*]} $kubernetes_version into $entry (a cold build takes a long time)" >&2
started=$SECONDS
# One `go build` for all four: the packages they share compile once.
kubernetes_build "$workdir/bin/" "${commands[@]}"
for command in "${commands[@]}"; do
  reported="$("$workdir/bin/$command" --version 2>&1)"
  if [[ "$reported" != "Kubernetes $kubernetes_version" ]]; then
    echo "error: the $command built from k8s.io/kubernetes $kubernetes_version reports '$reported'" >&2
    exit 1
  fi
done
echo "built ${commands[*]} $kubernetes_version in $((SECONDS - started))s" >&2
cache_install "$workdir/bin" "$entry"
