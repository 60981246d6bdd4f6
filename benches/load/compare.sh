#!/usr/bin/env bash
# compare.sh: kube-persist against a minimal reference webhook (and, with -O, against an earlier
# kube-persist binary), side by side in one run.
#
# usage: benches/load/compare.sh [-r REF_DIR] [-O OLD_BIN] [-n REPS] [-d SECONDS] [-w SECONDS]
#                                [-p POINTS] [-o OUTDIR] [-B]
#   -r REF_DIR   the reference server's crate: the least a correct webhook can do, kept outside
#                this repository, in the team's bench kit (default: ../shared/bench/baseline,
#                relative to the repository root); built with CARGO_TARGET_DIR=$REF_TARGET_DIR
#                (default /tmp/ref). Only this script needs it; the tests never do.
#   -O OLD_BIN   an earlier kube-persist release binary to measure in the same run (label
#                `old`), e.g. one built from the previous commit
#   -n REPS      repetitions of the whole matrix (default 3; medians are reported)
#   -d SECONDS   measured duration of each point (default 5; passed to load.sh -d)
#   -w SECONDS   warm-up before each point (default 1; load.sh -w)
#   -p POINTS    comma-separated subset of the matrix (default: all), names as below
#   -o OUTDIR    where raw rows (results.tsv), server logs and the table (table.md) go
#                (default: /tmp/kp-compare-YYYYmmddTHHMMSS)
#   -B           do not build; use the existing binaries
# env: SERVER_CPU (default 0) and LOAD_CPU (default 1): cores for the servers and the load
#      generator; THREADS (default 1): tokio workers of both servers (reference: --threads,
#      kube-persist: TOKIO_WORKER_THREADS); CERT_DIR (default /tmp/kp-bench-certs);
#      KP_PORT/REF_PORT/KP_ADMIN_PORT (default 18443/18444/18080), OLD_PORT/OLD_ADMIN_PORT
#      (18445/18081); CARGO_TARGET_DIR for
#      kube-persist (default: the repository's target/). load.sh's BENCH_* variables pass through.
#
# Matrix (each point: the servers back to back, the order rotating between repetitions; every point uses load.sh with the server's pid, so CPU per review,
# p50/p99 and peak RSS (VmHWM, reset before each point) are measured):
#   prom-h1-c16   a-prometheus.json (5 KB)     HTTP/1.1 keep-alive, 16 connections
#   prom-h1-c64   a-prometheus.json            HTTP/1.1 keep-alive, 64 connections
#   prom-h2-c16   a-prometheus.json            HTTP/2, 1 connection x 16 streams
#   sts-h1-c16    b-sts-small.json (7 KB)      HTTP/1.1 keep-alive, 16 connections
#   sts-h1-c64    b-sts-small.json             HTTP/1.1 keep-alive, 64 connections
#   sts1m-h1-c16  c-sts-1mb.json (1.1 MB)      HTTP/1.1 keep-alive, 16 connections
#   prom-conn-c16 a-prometheus.json            new TCP + full TLS 1.3 handshake per request
#                                              (connload -k), 16 in flight
# Both servers use the ECDSA P-256 certificate from gen-certs.sh. kube-persist writes its audit
# log to OUTDIR/kp-audit.log (truncated before every point). The table (table.py) gives, per
# point, each server's medians and the medians of the back-to-back ratios of one repetition.
#
# Talks to 127.0.0.1 only. Bounded: REPS <= 10, SECONDS <= 60 (load.sh caps its own retries and
# quiet waits). Both servers are stopped on exit (trap), by pid.
#
# Needs: h2load (Debian nghttp2-client), curl, python3, taskset, cargo, openssl.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
REF_DIR="$repo/../shared/bench/baseline"
REPS=3 DUR=5 WARM=1 POINTS="" OUTDIR="" BUILD=1 OLD_BIN=""
while getopts "r:O:n:d:w:p:o:Bh" o; do
  case "$o" in
    r) REF_DIR=$OPTARG ;; O) OLD_BIN=$OPTARG ;; n) REPS=$OPTARG ;; d) DUR=$OPTARG ;; w) WARM=$OPTARG ;;
    p) POINTS=$OPTARG ;; o) OUTDIR=$OPTARG ;; B) BUILD=0 ;;
    *) sed -n '2,44p' "$0"; exit 2 ;;
  esac
done
[[ "$REPS" =~ ^[0-9]+$ ]] && (( REPS >= 1 && REPS <= 10 )) || { echo "-n must be 1..10" >&2; exit 2; }
[[ "$DUR" =~ ^[0-9]+$ ]] && (( DUR >= 1 && DUR <= 60 )) || { echo "-d must be 1..60" >&2; exit 2; }
[[ "$WARM" =~ ^[0-9]+$ ]] && (( WARM <= 10 )) || { echo "-w must be 0..10" >&2; exit 2; }

SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1} THREADS=${THREADS:-1}
CERT_DIR=${CERT_DIR:-/tmp/kp-bench-certs}
KP_PORT=${KP_PORT:-18443} REF_PORT=${REF_PORT:-18444} KP_ADMIN_PORT=${KP_ADMIN_PORT:-18080}
OLD_PORT=${OLD_PORT:-18445} OLD_ADMIN_PORT=${OLD_ADMIN_PORT:-18081}
REF_TARGET_DIR=${REF_TARGET_DIR:-/tmp/ref}
KP_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
OUTDIR=${OUTDIR:-/tmp/kp-compare-$(date +%Y%m%dT%H%M%S)}
mkdir -p "$OUTDIR"
TSV="$OUTDIR/results.tsv"
AUDIT="$OUTDIR/kp-audit.log" OLD_AUDIT="$OUTDIR/old-audit.log"

PROM="$repo/tests/fixtures/reviews/a-prometheus.json"
STS="$repo/tests/fixtures/bench/b-sts-small.json"
STS1M="$repo/tests/fixtures/bench/c-sts-1mb.json"
# name | fixture | load.sh options
MATRIX=(
  "prom-h1-c16|$PROM|-p h1 -c 16"
  "prom-h1-c64|$PROM|-p h1 -c 64"
  "prom-h2-c16|$PROM|-p h2 -c 16 -C 1"
  "sts-h1-c16|$STS|-p h1 -c 16"
  "sts-h1-c64|$STS|-p h1 -c 64"
  "sts1m-h1-c16|$STS1M|-p h1 -c 16"
  "prom-conn-c16|$PROM|-t connload -k -p h1 -c 16"
)
if [[ -n "$POINTS" ]]; then
  selected=()
  IFS=, read -r -a want <<<"$POINTS"
  for w in "${want[@]}"; do
    found=0
    for m in "${MATRIX[@]}"; do [[ "${m%%|*}" == "$w" ]] && { selected+=("$m"); found=1; }; done
    (( found )) || { echo "unknown point $w" >&2; exit 2; }
  done
  MATRIX=("${selected[@]}")
fi

if (( BUILD )); then
  echo "== building the reference ($REF_DIR -> $REF_TARGET_DIR)"
  CARGO_TARGET_DIR="$REF_TARGET_DIR" cargo build --release --manifest-path "$REF_DIR/Cargo.toml"
  echo "== building kube-persist ($repo -> $KP_TARGET_DIR)"
  (cd "$repo" && CARGO_TARGET_DIR="$KP_TARGET_DIR" cargo build --release --bin kube-persist)
fi
REF_BIN="$REF_TARGET_DIR/release/baseline"
KP_BIN="$KP_TARGET_DIR/release/kube-persist"
export CONNLOAD_BIN="$REF_TARGET_DIR/release/connload"
for b in "$REF_BIN" "$KP_BIN" "$CONNLOAD_BIN" ${OLD_BIN:+"$OLD_BIN"}; do [[ -x "$b" ]] || { echo "missing $b (build first)" >&2; exit 2; }; done
CERT_DIR="$CERT_DIR" "$here/gen-certs.sh" >/dev/null
CA="$CERT_DIR/ca.crt" CRT="$CERT_DIR/server-ec.crt" KEY="$CERT_DIR/server-ec.key"

KP_PID="" REF_PID="" OLD_PID=""
stop() {
  for p in $KP_PID $REF_PID $OLD_PID; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
}
trap stop EXIT
trap 'exit 130' INT TERM

wait_ready() {  # $1 = port, $2 = pid: one 200 answer within 10 s
  local i
  for i in $(seq 1 50); do
    kill -0 "$2" 2>/dev/null || { echo "server on port $1 exited; see $OUTDIR/*.log" >&2; exit 1; }
    if curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$CA" \
        -H 'content-type: application/json' --data-binary @"$PROM" \
        "https://127.0.0.1:$1/mutate" 2>/dev/null | grep -q '^200$'; then
      return 0
    fi
    sleep 0.2
  done
  echo "server on port $1 did not answer within 10 s" >&2; exit 1
}

: >"$AUDIT"
TOKIO_WORKER_THREADS=$THREADS taskset -c "$SERVER_CPU" "$KP_BIN" serve \
  --listen "127.0.0.1:$KP_PORT" --admin-listen "127.0.0.1:$KP_ADMIN_PORT" \
  --tls-cert "$CRT" --tls-key "$KEY" --audit-log "$AUDIT" >"$OUTDIR/kube-persist.log" 2>&1 &
KP_PID=$!
SERVERS=(kp ref)
if [[ -n "$OLD_BIN" ]]; then
  : >"$OLD_AUDIT"
  TOKIO_WORKER_THREADS=$THREADS taskset -c "$SERVER_CPU" "$OLD_BIN" serve \
    --listen "127.0.0.1:$OLD_PORT" --admin-listen "127.0.0.1:$OLD_ADMIN_PORT" \
    --tls-cert "$CRT" --tls-key "$KEY" --audit-log "$OLD_AUDIT" >"$OUTDIR/old.log" 2>&1 &
  OLD_PID=$!
  SERVERS=(kp old ref)
fi
TOKIO_WORKER_THREADS=$THREADS taskset -c "$SERVER_CPU" "$REF_BIN" \
  --cert "$CRT" --key "$KEY" --listen "127.0.0.1:$REF_PORT" --threads "$THREADS" \
  >"$OUTDIR/reference.log" 2>&1 &
REF_PID=$!
wait_ready "$KP_PORT" "$KP_PID"
wait_ready "$REF_PORT" "$REF_PID"
[[ -z "$OLD_PID" ]] || wait_ready "$OLD_PORT" "$OLD_PID"
threads_of() { for t in /proc/"$1"/task/*; do cat "$t/comm"; done | sort | uniq -c | awk '{printf "%s%sx%s", sep, $1, $2; sep=", "} END {print ""}'; }
{
  echo "date: $(date -u +%FT%TZ)"
  echo "machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
  echo "kube-persist: $KP_BIN ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet 2>/dev/null || echo '+dirty')), pid $KP_PID, threads: $(threads_of "$KP_PID")"
  [[ -z "$OLD_PID" ]] || echo "old: $OLD_BIN, pid $OLD_PID, threads: $(threads_of "$OLD_PID")"
  echo "reference: $REF_BIN, pid $REF_PID, threads: $(threads_of "$REF_PID")"
  echo "servers on CPU $SERVER_CPU, load generator on CPU $LOAD_CPU, $THREADS tokio worker(s) each; ${REPS}x ${DUR}s per point"
} | tee "$OUTDIR/setup.txt"

for rep in $(seq 1 "$REPS"); do
  for m in "${MATRIX[@]}"; do
    IFS='|' read -r name fix opts <<<"$m"
    # Rotate the order, so no server always runs right after another.
    n=${#SERVERS[@]} order=()
    for i in $(seq 0 $((n - 1))); do order+=("${SERVERS[$(((i + rep - 1) % n))]}"); done
    for srv in "${order[@]}"; do
      case $srv in
        kp) port=$KP_PORT pid=$KP_PID; : >"$AUDIT" ;;
        old) port=$OLD_PORT pid=$OLD_PID; : >"$OLD_AUDIT" ;;
        ref) port=$REF_PORT pid=$REF_PID ;;
      esac
      echo "== rep $rep/$REPS  $name  $srv"
      # shellcheck disable=SC2086
      "$here/load.sh" -u "https://127.0.0.1:$port/mutate" -f "$fix" $opts -d "$DUR" -w "$WARM" \
        -P "$pid" -L "$LOAD_CPU" -a "$CA" -o "$TSV" -l "$srv|$name|$rep"
    done
  done
done

"$here/table.py" "$TSV" | tee "$OUTDIR/table.md"
echo "raw rows: $TSV; setup: $OUTDIR/setup.txt; table: $OUTDIR/table.md"
