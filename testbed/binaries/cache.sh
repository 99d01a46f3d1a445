# The binary cache of the tests, shared by the build-*.sh scripts here (sourced, never run): where an entry lives, one
# build of an entry at a time, and an entry that appears complete or not at all (built in a temporary directory beside
# it, then renamed). An entry is one binary or one directory of binaries from the same module.
#
# Cache: ${ETCDSTORAGE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcdstorage-e2e}/<name>-<version>.

cache="${ETCDSTORAGE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcdstorage-e2e}"

# module_version <go.mod> <module>: the version <go.mod> requires of <module> (first mention), or nothing.
module_version() {
  awk -v module="$2" '
    { for (i = 1; i < NF; i++) if ($i == module && $(i + 1) ~ /^v[0-9]/) { print $(i + 1); exit } }
  ' "$1"
}

# require_module_version <module dir> <module>: print that version, or fail saying which go.mod lacks it.
require_module_version() {
  local version
  version="$(module_version "$1/go.mod" "$2")"
  if [[ -z "$version" ]]; then
    echo "error: no '$2 vX.Y.Z' requirement in $1/go.mod" >&2
    exit 1
  fi
  echo "$version"
}

# cache_hit <entry>: when the entry is already built, print its path and end the script.
cache_hit() {
  if [[ -x "$1" ]]; then
    echo "$1"
    exit 0
  fi
}

# require_go <module dir> <what> <otherwise>: end the script saying which Go to install (or what to do instead)
# unless `go` is on PATH.
require_go() {
  command -v go >/dev/null 2>&1 && return 0
  local go_directive
  go_directive="$(awk '$1 == "go" { print $2; exit }' "$1/go.mod")"
  echo "error: 'go' is not on PATH; install Go >= $go_directive to build $2 ($3)" >&2
  exit 1
}

# cache_lock <entry>: hold a lock of this entry until the script ends, so parallel test sessions do not each spend the
# same long cold build; then end the script if the session that held the lock built the entry meanwhile. The lock is
# per entry, so a short build does not queue behind a long one.
cache_lock() {
  mkdir -p "$cache"
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>"$cache/.build-$(basename "$1").lock"
  flock 9
  cache_hit "$1"
}

# cache_workdir <entry>: set `workdir` to a fresh directory beside the entry (the same file system, so the final
# rename is atomic), removed when the script ends.
cache_workdir() {
  workdir="$(mktemp -d "$cache/.build-$(basename "$1").XXXXXX")"
  trap 'rm -rf "$workdir"' EXIT
}

# cache_install <built> <entry>: put a complete binary or directory in place in one rename, and print its path.
cache_install() {
  mv -fT "$1" "$2"
  echo "$2"
}
