# Local cluster + services harness (e2e/harness/). Included by the root Makefile;
# standalone: make -f e2e/harness/harness.mk <target>
#   make tools           build the pinned Go tools into .tools/ ($WEIR_TOOLS_DIR)
#   make cluster-up      start etcd, kube-*, kwok, git (HTTP+SSH), registries, chart repo
#   make cluster-down    stop them and delete their state
#   make cluster-status  health of each component (exit 0 if all up)
#   make harness-smoke   check every part of a running harness (e2e/harness/smoke.sh)
#   eval "$(make -s env)"  export KUBECONFIG, WEIR_* (see e2e/harness/cluster.sh)

WEIR_HARNESS_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: tools cluster-up cluster-down cluster-status env harness-smoke

tools:
	@$(WEIR_HARNESS_DIR)/tools.sh

cluster-up:
	@$(WEIR_HARNESS_DIR)/cluster.sh up

cluster-down:
	@$(WEIR_HARNESS_DIR)/cluster.sh down

cluster-status:
	@$(WEIR_HARNESS_DIR)/cluster.sh status

env:
	@$(WEIR_HARNESS_DIR)/cluster.sh env

harness-smoke:
	@$(WEIR_HARNESS_DIR)/smoke.sh
