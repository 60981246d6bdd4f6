#!/usr/bin/env bash
# Runs every fuzz target (or those named after the time) for SECONDS each, from the corpus that
# seed-corpora.sh fills with the fixtures. A crash or a broken invariant stops with a non-zero
# exit and leaves the input in fuzz/artifacts/<target>/; `cargo +nightly fuzz run -s none
# --codegen-units 16 TARGET fuzz/artifacts/TARGET/crash-...` replays it.
#
#   fuzz/run.sh 30                 # every target for 30 s (what CI does)
#   fuzz/run.sh 3600 admission     # one target for an hour
#
# FUZZ_TARGET_DIR moves the build (default fuzz/target); CI keeps it under ~/.cache.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(admission manifest policy quantity path_plan)
fi

./seed-corpora.sh
# The committed lock file is the one used.
cargo +nightly fetch --locked --quiet
# No sanitizer: the crate forbids unsafe code, and the targets check panics and invariants;
# without AddressSanitizer the build is smaller and the runs several times faster. 16 codegen
# units instead of cargo-fuzz's 1 build in parallel on 2 cores.
build=(--sanitizer none --codegen-units 16 --target-dir "${FUZZ_TARGET_DIR:-target}")
cargo +nightly fuzz build "${build[@]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  options=(-max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048)
  if [ -f "dictionaries/$target.dict" ]; then options+=(-dict="dictionaries/$target.dict"); fi
  if ! cargo +nightly fuzz run "${build[@]}" "$target" "corpus/$target" -- "${options[@]}" \
    >"$log" 2>&1; then
    grep -v -E '^#[0-9]+' "$log" | tail -n 60 >&2
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  echo "fuzz: $target: $(grep -E '^Done' "$log" | tail -n 1)"
done
