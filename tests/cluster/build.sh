#!/usr/bin/env bash
# Builds the real control-plane components pinned in go.mod (kube-apiserver,
# kube-controller-manager, kubectl, etcd, the Prometheus Operator, helm) from source through the
# Go module proxy, with the operator's CRDs, into a cache directory keyed by the pins, and prints that directory.
#
# The cache lives outside target/ so `cargo clean` keeps it; a second run with the same go.mod,
# go.sum, Go version and this script finds the binaries and builds nothing.
#   KUBE_PERSIST_CLUSTER_CACHE  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/kube-persist/cluster)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: Go is not installed (needed to build the control plane; Go 1.26 or newer)" >&2
  exit 2
fi

# The Kubernetes version the components report, taken from the pin so the two cannot drift.
k8s_version="$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="${k8s_version#v1.}"
minor="${minor%%.*}"

# Everything that changes the binaries: the pins, this script, and the Go that builds them (as
# the module directory resolves it, toolchain switches included).
key="$(cat "$here/go.mod" "$here/go.sum" "$0" \
  <(cd "$here" && go version && go env GOFLAGS CGO_ENABLED GOEXPERIMENT GOARCH GOOS) |
  sha256sum | cut -c1-16)"
root="${KUBE_PERSIST_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-persist/cluster}"
bin="$root/$key/bin"
binaries=(etcd kube-apiserver kube-controller-manager kubectl operator helm)
mkdir -p "$root"

# One build per key at a time: a second run waits here, then finds the binaries.
exec 9>"$root/$key.lock"
flock 9

complete=true
for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || complete=false; done
[ -d "$bin/crds" ] || complete=false
if $complete; then
  echo "$bin"
  exit 0
fi

echo "build.sh: building the control plane ($k8s_version) into $bin; cold (modules downloaded too), about 8 minutes on 2 cores" >&2
rm -rf "$root/$key"/staging.*   # left by a build that was killed
staging="$root/$key/staging.$$"
mkdir -p "$staging"
trap 'rm -rf "$staging"' EXIT

cd "$here"
pkg=k8s.io/component-base/version
k8s_ldflags="-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
start=$SECONDS
go build -trimpath -ldflags "$k8s_ldflags" -o "$staging/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl
go build -trimpath -ldflags "-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3
go build -trimpath -ldflags "-s -w" -o "$staging/operator" github.com/prometheus-operator/prometheus-operator/cmd/operator
go build -trimpath -ldflags "-s -w" -o "$staging/helm" helm.sh/helm/v3/cmd/helm
# The operator's own CRDs at the pinned version (the harness applies those that
# tests/fixtures/crds does not carry: ServiceMonitor, PodMonitor, PrometheusRule, ...).
mkdir -p "$staging/crds"
cp "$(go list -m -f '{{.Dir}}' github.com/prometheus-operator/prometheus-operator)"/example/prometheus-operator-crd/*.yaml "$staging/crds/"
echo "build.sh: built in $((SECONDS - start)) s" >&2

for b in "${binaries[@]}"; do [ -x "$staging/$b" ] || { echo "build.sh: $b was not built" >&2; exit 1; }; done
rm -rf "$bin"
mv "$staging" "$bin"
trap - EXIT
echo "$bin"
