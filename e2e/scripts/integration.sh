#!/usr/bin/env bash
# Runs the integration and end-to-end tests against the local harness. Starts the harness when it
# is not running, and stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
source e2e/scripts/harness-lib.sh
trap stop_harness_if_started EXIT
ensure_harness

# The cli suite (e2e/tests/cli) runs the weir binary itself, as a user does.
cargo build -q -p weir --bin weir
export WEIR_BIN="${WEIR_BIN:-$PWD/target/debug/weir}"

# Each test makes its own namespace and repositories, so tests run in parallel; two threads
# match the machine.
cargo test -p weir-e2e -- --test-threads=2
