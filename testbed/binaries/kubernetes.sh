# The Kubernetes release the tests run, shared by build-kube-apiserver.sh and build-kubernetes-node.sh (sourced after
# cache.sh, never run): one module, kube-apiserver/go.mod, pins k8s.io/kubernetes and every staging module for all the
# commands, so kube-apiserver, kubelet and the rest are always the same release and share one Go build cache.

kubernetes_module="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kube-apiserver"
kubernetes_version="$(require_module_version "$kubernetes_module" k8s.io/kubernetes)"

# kubernetes_build <output> <command>...: build k8s.io/kubernetes/cmd/<command> for each command, into <output> (a
# file for one command, a directory ending in / for several). The version stamp makes /version, `kubelet --version`
# and the node's status report the pinned release instead of v0.0.0-master.
kubernetes_build() {
  local output="$1" major minor ldflags
  shift
  minor="${kubernetes_version#v*.}"
  minor="${minor%%.*}"
  major="${kubernetes_version#v}"
  major="${major%%.*}"
  ldflags="-s -X k8s.io/component-base/version.gitVersion=$kubernetes_version"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  (cd "$kubernetes_module" && go build -trimpath -ldflags="$ldflags" -o "$output" "${@/#/k8s.io/kubernetes/cmd/}") >&2
}
