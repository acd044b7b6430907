#!/usr/bin/env bash
# Runs the integration and end-to-end tests against the local harness. Starts the harness when it
# is not running, and stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/../.."

started=0
if ! make -s cluster-status >/dev/null 2>&1; then
  make -s tools
  make -s cluster-up
  started=1
fi
stop() { if ((started)); then make -s cluster-down; fi; }
trap stop EXIT

eval "$(make -s env)"
# Each test makes its own namespace and repositories, so tests run in parallel; two threads
# match the machine.
cargo test -p weir-e2e -- --test-threads=2
