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
module="$here/kube-apiserver"
version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/ { print $2; exit }' "$module/go.mod")"
if [[ -z "$version" ]]; then
  echo "error: no 'k8s.io/kubernetes vX.Y.Z' requirement in $module/go.mod" >&2
  exit 1
fi
cache="${ETCDSTORAGE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcdstorage-e2e}"
binary="$cache/kube-apiserver-$version"

case "${1:-}" in
  --path) echo "$binary"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--path]" >&2; exit 2 ;;
esac

if [[ -x "$binary" ]]; then
  echo "$binary"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  go_directive="$(awk '$1 == "go" { print $2; exit }' "$module/go.mod")"
  echo "error: 'go' is not on PATH; install Go >= $go_directive to build kube-apiserver $version" \
    "(or put a kube-apiserver $version binary at $binary)" >&2
  exit 1
fi

mkdir -p "$cache"
# One build at a time per cache (parallel test sessions would otherwise each spend the long cold build).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/.build.lock"
  flock 9
  if [[ -x "$binary" ]]; then
    echo "$binary"
    exit 0
  fi
fi

workdir="$(mktemp -d "$cache/.build-kube-apiserver-$version.XXXXXX")"
trap 'rm -rf "$workdir"' EXIT

# The version stamp makes /version and `kubectl version` report the pinned release instead of v0.0.0-master.
minor="${version#v*.}"
minor="${minor%%.*}"
major="${version#v}"
major="${major%%.*}"
ldflags="-s -X k8s.io/component-base/version.gitVersion=$version"
ldflags+=" -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"

echo "building kube-apiserver $version into $binary (a cold build takes a long time)" >&2
started=$SECONDS
(cd "$module" && go build -trimpath -ldflags="$ldflags" -o "$workdir/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver) >&2
chmod 0755 "$workdir/kube-apiserver"
mv -f "$workdir/kube-apiserver" "$binary"
echo "built kube-apiserver $version in $((SECONDS - started))s" >&2
echo "$binary"
