#!/usr/bin/env bash
# Builds runc for the e2e node (testbed/node.py) from the release pinned in testbed/binaries/runc/go.mod, with seccomp
# (pods with `seccompProfile: RuntimeDefault` need it), into one directory of the cache outside the repository, and
# prints that directory's path. Links libseccomp: its headers come from Debian's libseccomp-dev, installed here when
# missing and running as root.
#
#   testbed/binaries/build-runc.sh          build if missing
#   testbed/binaries/build-runc.sh --path   print where the directory is or would be; build nothing
#
# Cache: ${ETCDSTORAGE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcdstorage-e2e}/runc-<version>/.
# The directory appears there complete or not at all (built in a temporary directory beside it, then renamed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cache.sh"
module="$here/runc"
package=github.com/opencontainers/runc
version="$(require_module_version "$module" "$package")"
entry="$cache/runc-$version"

case "${1:-}" in
  --path) echo "$entry"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--path]" >&2; exit 2 ;;
esac

# require_libseccomp: make libseccomp's headers available to cgo, or end the script saying how.
require_libseccomp() {
  pkg-config --exists libseccomp 2>/dev/null && return 0
  if [[ "$EUID" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: runc $version is built with seccomp and needs libseccomp's headers and pkg-config:" \
      "install them (Debian: apt-get install libseccomp-dev pkg-config), then run this again" >&2
    exit 1
  fi
  echo "installing libseccomp-dev (runc's seccomp support links against libseccomp)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends libseccomp-dev pkg-config >&2 ||
    { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends libseccomp-dev pkg-config >&2; }
}

cache_hit "$entry"
require_go "$module" "runc $version" "or put a runc $version binary built with seccomp in $entry/"
cache_lock "$entry"
require_libseccomp
cache_workdir "$entry"

echo "building runc $version (seccomp) into $entry" >&2
started=$SECONDS
mkdir "$workdir/bin"
(cd "$module" && CGO_ENABLED=1 go build -trimpath -tags "seccomp urfave_cli_no_docs" \
  -ldflags="-s -X main.gitCommit=$package@$version" -o "$workdir/bin/runc" "$package") >&2
reported="$("$workdir/bin/runc" --version)"
if [[ "$reported" != "runc version ${version#v}"* || "$reported" != *"libseccomp: "* ]]; then
  echo "error: the runc built from $package $version, with seccomp, reports '$reported'" >&2
  exit 1
fi
echo "built runc $version in $((SECONDS - started))s" >&2
cache_install "$workdir/bin" "$entry"
