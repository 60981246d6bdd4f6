#!/usr/bin/env bash
# The real-control-plane tier. Builds (or reuses) the pinned components with build.sh and the
# release binary, then runs the scenarios of tests/cluster/scenarios.rs on one cluster on
# 127.0.0.1. Arguments select scenarios by name: `tests/cluster/run.sh story outage`.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v go >/dev/null 2>&1; then
  echo "run.sh: Go is not installed; the cluster tier builds Kubernetes, etcd and the" \
    "Prometheus Operator from source and needs Go 1.26 or newer" >&2
  exit 2
fi
bin="$(tests/cluster/build.sh)"
oldleader="$(tests/cluster/build-oldleader.sh)"
cargo build --release --locked --bin kube-persist
KUBE_PERSIST_CLUSTER_BIN="$bin" KUBE_PERSIST_OLDLEADER="$oldleader" \
  KUBE_PERSIST_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/kube-persist" \
  cargo test --locked --features cluster-tests --test cluster -- "$@"
