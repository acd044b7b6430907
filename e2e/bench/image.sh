#!/usr/bin/env bash
# Image controller benchmark (issue 6): one ImageRepository with WEIR_BENCH_IMAGE_TAGS (10,000)
# tags on the harness's registry. Reports the scan time, policy evaluation time over the shared
# tag list, memory, and the time from a new tag to the automation's pushed commit.
# Runs in-process (the ignored test `bench::bench_ten_thousand_tags` in e2e/tests/image/bench.rs,
# release build) until `weir controllers` runs the image controller; the RSS figures are of that
# test process, so they bound the controller's from above.
# Needs: the harness env (KUBECONFIG, WEIR_*); run through `make bench`.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo test --release -q -p weir-e2e --test image -- --ignored --exact bench::bench_ten_thousand_tags \
  --nocapture 2>/dev/null | grep -E '^(image controller|  )'
