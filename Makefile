# Weir's build, test and dev entry points. `make test` is what CI runs (.ci/run).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

CARGO ?= cargo
# Two cores: keep cargo and the Go builds from oversubscribing the machine.
export CARGO_BUILD_JOBS ?= 2
export CARGO_TERM_COLOR ?= never

# The local cluster and services harness: tools, cluster-up, cluster-down, env, cluster-status.
-include e2e/harness/harness.mk

.PHONY: build crds lint fmt unit integration test dev bench bench-flux setup

## setup: install what building and testing need on a fresh machine (idempotent).
setup:
	@bash e2e/scripts/setup.sh

## build: the weir binary.
build: setup
	$(CARGO) build --workspace --bins

## crds: regenerate crds/ from the types in api/.
crds:
	$(CARGO) run -q -p weir --bin crdgen -- crds

## fmt: format the code.
fmt:
	$(CARGO) fmt --all

## lint: formatting and clippy with warnings as errors.
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## unit: tests that need no cluster (includes the CRD drift test).
unit: setup
	$(CARGO) test --workspace --exclude weir-e2e

## integration: tests against the real local cluster and services; starts the harness when it is
## not running and stops what it started.
integration: setup
	@bash e2e/scripts/integration.sh

## test: everything CI checks, least powerful first.
test: lint unit integration

## dev: Weir's main job on a local cluster this starts itself.
dev: setup
	@bash e2e/scripts/dev.sh

## bench: benchmarks that report figures (never timed assertions).
bench: setup
	@bash e2e/scripts/bench.sh

## bench-flux: Weir against Flux's own source- and kustomize-controller on fresh clusters;
## figures to .tools/bench/bench-flux.txt (WEIR_BENCH_SIZES="100 500 1000" by default).
bench-flux: setup
	@bash e2e/scripts/bench-flux.sh
