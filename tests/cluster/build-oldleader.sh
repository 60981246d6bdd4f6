#!/usr/bin/env bash
# Builds oldleader (a stand-in for an nfs-subdir-external-provisioner pod's leader election, on
# the client-go that provisioner pins) into a cache directory keyed by its sources, its pins and
# the Go that builds it, and prints the binary's path. Same cache root and rules as build.sh.
#   KUBE_PERSIST_CLUSTER_CACHE  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/kube-persist/cluster)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/oldleader"

if ! command -v go >/dev/null 2>&1; then
  echo "build-oldleader.sh: Go is not installed" >&2
  exit 2
fi

key="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" "$0" \
  <(cd "$src" && go version && go env GOFLAGS CGO_ENABLED GOEXPERIMENT GOARCH GOOS) |
  sha256sum | cut -c1-16)"
root="${KUBE_PERSIST_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-persist/cluster}"
out="$root/oldleader-$key"
mkdir -p "$root"

exec 9>"$out.lock"
flock 9
if [ -x "$out/oldleader" ]; then
  echo "$out/oldleader"
  exit 0
fi

echo "build-oldleader.sh: building oldleader (client-go $(cd "$src" && go list -m -f '{{.Version}}' k8s.io/client-go)) into $out; about a minute" >&2
staging="$out.staging.$$"
rm -rf "$staging"
mkdir -p "$staging"
trap 'rm -rf "$staging"' EXIT
(cd "$src" && go build -trimpath -ldflags "-s -w" -o "$staging/oldleader" .)
rm -rf "$out"
mv "$staging" "$out"
trap - EXIT
echo "$out/oldleader"
