#!/usr/bin/env bash
# Kustomize controller benchmark: N Kustomizations (default 100; 1000 with
# WEIR_BENCH_KUSTOMIZATIONS=1000), each applying a small app (Deployment, Service, ConfigMap)
# from its own path of one GitRepository, reconciled by one `weir controllers --controllers
# source,kustomize` process. Like Flux's benchmark, each sets `targetNamespace`, `prune` and
# `wait: true`. WEIR_BENCH_DIRS (default N) sets how many app directories the repository has, to
# show how the cost of a reconcile grows with the repository; WEIR_BENCH_OVERLAY=1 gives every
# app a kustomization.yaml (so kustomize builds it) instead of a plain directory.
# WEIR_BENCH_SERVICE_ACCOUNT=1 has every Kustomization apply as a service account of the
# namespace (`serviceAccountName`, bound to the `admin` ClusterRole), as multi-tenant setups do.
# Reports the seconds from creation until all are Ready, the controller's peak RSS, API requests
# per Kustomization, and one steady-state interval with no change upstream (object and status
# writes: must be zero).
# Needs: the harness env (KUBECONFIG, WEIR_GIT_*, WEIR_TOOLS_BIN), WEIR_BIN; run through `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/harness-lib.sh"

n=${WEIR_BENCH_KUSTOMIZATIONS:-100}
dirs=${WEIR_BENCH_DIRS:-$n}
overlay=${WEIR_BENCH_OVERLAY:-0}
service_account=${WEIR_BENCH_SERVICE_ACCOUNT:-0}
((dirs >= n)) || { echo "WEIR_BENCH_DIRS must be at least WEIR_BENCH_KUSTOMIZATIONS" >&2; exit 2; }
concurrency=${WEIR_BENCH_CONCURRENCY:-8}
interval=${WEIR_BENCH_INTERVAL:-30s}
ns="bench-kustomize-$RANDOM"
work=$(mktemp -d)
pid=""
cleanup() {
  # Delete the objects while the controller still runs, so it releases their finalizers (and,
  # with prune on, deletes what they applied).
  kubectl delete kustomizations,gitrepositories --all -n "$ns" --timeout=600s >/dev/null 2>&1 || true
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work" "$WEIR_GIT_ROOT/$ns.git"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
# The controller's CPU seconds so far (user + system).
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / t }' "/proc/$pid/stat"; }
metric() { curl -fsS "http://127.0.0.1:$metrics_port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
count_ready() {
  kubectl get kustomizations -n "$ns" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true
}
wait_for() { # wait_for <what> <command> <target>
  local deadline=$((SECONDS + 3600))
  until [[ "$($2)" -ge "$3" ]]; do
    ((SECONDS < deadline)) || { echo "timed out waiting for $1 ($($2)/$3)" >&2; exit 1; }
    sleep 1
  done
}

# One repository with a directory per app.
repo="$work/repo"
git init -q --initial-branch main "$repo"
for i in $(seq 1 "$dirs"); do
  mkdir -p "$repo/apps/app-$i"
  ((overlay == 0)) || echo "resources: [app.yaml]" >"$repo/apps/app-$i/kustomization.yaml"
  cat >"$repo/apps/app-$i/app.yaml" <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: app-$i}
spec:
  replicas: 0
  selector: {matchLabels: {app: app-$i}}
  template:
    metadata: {labels: {app: app-$i}}
    spec: {containers: [{name: app, image: registry.invalid/app:1.0.0}]}
---
apiVersion: v1
kind: Service
metadata: {name: app-$i}
spec:
  selector: {app: app-$i}
  ports: [{port: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: app-$i}
data: {greeting: hello}
YAML
done
git -C "$repo" add -A
git -C "$repo" -c user.name=bench -c user.email=bench@weir.dev commit -q -m init
git clone -q --bare "$repo" "$WEIR_GIT_ROOT/$ns.git"

kubectl create namespace "$ns" >/dev/null
if ((service_account)); then
  kubectl create serviceaccount deployer -n "$ns" >/dev/null
  kubectl create rolebinding deployer -n "$ns" --clusterrole admin --serviceaccount "$ns:deployer" >/dev/null
fi
metrics_port=$(free_port)
RUST_LOG=warn "$WEIR_BIN" controllers --controllers source,kustomize --namespace "$ns" \
  --storage-path "$work/storage" --storage-addr 127.0.0.1:0 \
  --kustomize-path "$WEIR_TOOLS_BIN/kustomize" --artifact-cache-path "$work/cache" \
  --metrics-addr "127.0.0.1:$metrics_port" --concurrency "$concurrency" >"$work/controller.log" 2>&1 &
pid=$!
until curl -fsS "http://127.0.0.1:$metrics_port/healthz" >/dev/null 2>&1; do sleep 0.2; done
rss_idle=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")

{
  cat <<YAML
apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata: {name: apps, namespace: $ns}
spec:
  url: $WEIR_GIT_HTTP_URL/public/$ns.git
  interval: 1h
  ref: {branch: main}
YAML
  for i in $(seq 1 "$n"); do
    cat <<YAML
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: app-$i, namespace: $ns}
spec:
  sourceRef: {kind: GitRepository, name: apps}
  path: ./apps/app-$i
  interval: $interval
  targetNamespace: $ns
  prune: true
  wait: true
  timeout: 5m
YAML
    ((service_account == 0)) || echo "  serviceAccountName: deployer"
  done
} >"$work/objects.yaml"

t0=$(now)
kubectl create -f "$work/objects.yaml" >/dev/null
wait_for "all $n Kustomizations Ready" count_ready "$n"
t_ready=$(now)
cpu_ready=$(cpu)
requests_ready=$(metric weir_kustomize_api_requests_total)
reconciles_ready=$(metric weir_kustomize_reconciles_total)
writes_ready=$(metric weir_kustomize_object_writes_total)
status_ready=$(metric weir_kustomize_status_writes_total)
builds_ready=$(metric weir_kustomize_builds_total)

# One steady-state interval: every Kustomization reconciles again with nothing changed.
steady_reconciles() { echo $(($(metric weir_kustomize_reconciles_total) - reconciles_ready)); }
wait_for "one more interval of reconciles" steady_reconciles "$n"
requests_steady=$(metric weir_kustomize_api_requests_total)
reconciles_steady=$(metric weir_kustomize_reconciles_total)
cpu_steady=$(cpu)
# Let the round's last reconciles finish their writes, if any, before reading again.
sleep 5
writes_after=$(metric weir_kustomize_object_writes_total)
status_after=$(metric weir_kustomize_status_writes_total)
builds_after=$(metric weir_kustomize_builds_total)
rss_peak=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")

per() { python3 -c "print(f'{$1 / $2:.1f}')"; }
cat <<REPORT
kustomize controller, $n Kustomizations (Deployment scaled to 0 + Service + ConfigMap each; targetNamespace, prune, wait), one GitRepository of $dirs $( ((overlay)) && echo "kustomize overlays" || echo "plain directories"), concurrency $concurrency$( ((service_account)) && echo ", applied as a service account")
  creation → all Ready:                              $(secs "$t0" "$t_ready") s
  reconciles to get there:                           $reconciles_ready ($builds_ready builds)
  API requests per Kustomization to get there:       $(per "$requests_ready" "$n") (events and watches excluded)
  steady-state interval ($interval): reconciles:        $((reconciles_steady - reconciles_ready))
  API requests per no-change reconcile:              $(per "$((requests_steady - requests_ready))" "$((reconciles_steady - reconciles_ready))")
  object writes in the steady-state interval:        $((writes_after - writes_ready)) (must be 0)
  status writes in the steady-state interval:        $((status_after - status_ready)) (must be 0)
  builds in the steady-state interval:               $((builds_after - builds_ready)) (nothing new: 0)
  controller CPU to Ready / in the steady interval:   $cpu_ready s / $(python3 -c "print(f'{$cpu_steady - $cpu_ready:.1f}')") s
  controller RSS idle / peak:                        $((rss_idle / 1024)) MiB / $((rss_peak / 1024)) MiB
REPORT
