#!/usr/bin/env bash
# `make bench`: runs every benchmark in e2e/bench/ against the local harness with a release
# build of weir, and prints the figures. Benchmarks report; they never pass or fail on timing.
set -euo pipefail
cd "$(dirname "$0")/../.."
source e2e/scripts/harness-lib.sh
trap stop_harness_if_started EXIT
ensure_harness

cargo build --release -q -p weir --bin weir
export WEIR_BIN="$PWD/target/release/weir"
mkdir -p .tools/bench
for bench in e2e/bench/*.sh; do
  echo "== $(basename "$bench" .sh)"
  bash "$bench" | tee ".tools/bench/$(basename "$bench" .sh).txt"
done
