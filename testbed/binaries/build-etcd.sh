#!/usr/bin/env bash
# Builds the etcd server the tests run (testbed/etcd.py) for one etcd minor version, from the
# go.etcd.io/etcd/server/v3 release pinned in testbed/binaries/etcd-v<minor>/go.mod, into a cache outside the repository,
# and prints the binary's path. The binary is etcd's own command (etcdmain.Main): `etcd --version`,
# `etcd grpc-proxy start ...` and every server flag behave as in the release.
#
#   testbed/binaries/build-etcd.sh 3.6          build etcd 3.6 if missing (progress on stderr, the path on stdout)
#   testbed/binaries/build-etcd.sh 3.5 --path   print where the etcd 3.5 binary is or would be; build nothing
#
# Cache: ${ETCDSTORAGE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcdstorage-e2e}/etcd-<version>.
# The binary appears there complete or not at all (built in a temporary directory beside it, then renamed).
set -euo pipefail

usage() { echo "usage: $0 3.5|3.6 [--path]" >&2; exit 2; }

minor="" path_only=""
for arg in "$@"; do
  case "$arg" in
    --path) path_only=1 ;;
    3.5 | 3.6) [[ -z "$minor" ]] || usage; minor="$arg" ;;
    *) usage ;;
  esac
done
[[ -n "$minor" ]] || usage

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cache.sh"
module="$here/etcd-v$minor"
server=go.etcd.io/etcd/server/v3
if [[ ! -f "$module/go.mod" ]]; then
  echo "error: $module/go.mod is missing" >&2
  exit 1
fi
version="$(require_module_version "$module" "$server")"
if [[ "$version" != "v$minor".* ]]; then
  echo "error: $module/go.mod pins $server $version, which is not etcd $minor" >&2
  exit 1
fi
binary="$cache/etcd-$version"

if [[ -n "$path_only" ]]; then
  echo "$binary"
  exit 0
fi

cache_hit "$binary"
require_go "$module" "etcd $version" "or put an etcd $version binary at $binary"
cache_lock "$binary"
cache_workdir "$binary"

# etcd's version is a constant of go.etcd.io/etcd/api/v3/version, so `etcd --version` and the status RPC report the
# pinned release by themselves. The only thing etcd's own build stamps is the Git SHA, which the module proxy does not
# record; name the module version instead of leaving "Not provided (use ./build instead of go build)".
ldflags="-s -X go.etcd.io/etcd/api/v3/version.GitSHA=$server@$version"

echo "building etcd $version into $binary" >&2
started=$SECONDS
(cd "$module" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$workdir/etcd" .) >&2
chmod 0755 "$workdir/etcd"
reported="$("$workdir/etcd" --version 2>&1 | awk '$1 == "etcd" && $2 == "Version:" { print $3; exit }')"
if [[ "v$reported" != "$version" ]]; then
  echo "error: the etcd built from $server $version reports version '${reported:-?}'" >&2
  exit 1
fi
echo "built etcd $version in $((SECONDS - started))s" >&2
cache_install "$workdir/etcd" "$binary"
