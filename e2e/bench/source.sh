#!/usr/bin/env bash
# Source controller benchmark (issue 4): N GitRepositories (default 1000), each its own bare
# repository on the harness's git server, reconciled by one `weir controllers --controllers
# source` process. Reports the seconds from creation until all are Ready, the controller's peak
# RSS, and one steady-state round (every object asked to reconcile with nothing changed upstream:
# the number of clones must be zero).
# Needs: the harness env (KUBECONFIG, WEIR_GIT_*), WEIR_BIN; run through `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/harness-lib.sh"

n=${WEIR_BENCH_SOURCE_REPOS:-1000}
concurrency=${WEIR_BENCH_CONCURRENCY:-8}
ns="bench-source-$RANDOM"
work=$(mktemp -d)
pid=""
cleanup() {
  # Delete the objects while the controller still runs, so it releases their finalizers.
  kubectl delete gitrepositories --all -n "$ns" --timeout=300s >/dev/null 2>&1 || true
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work" "$WEIR_GIT_ROOT"/"$ns"-*.git
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
metric() { curl -fsS "http://127.0.0.1:$metrics_port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
count_ready() {
  kubectl get gitrepositories -n "$ns" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true
}
count_handled() {
  kubectl get gitrepositories -n "$ns" -o jsonpath='{range .items[*]}{.status.lastHandledReconcileAt}{"\n"}{end}' | grep -c "^$1\$" || true
}
wait_for() { # wait_for <what> <command> <target>
  local deadline=$((SECONDS + 1800))
  until [[ "$($2)" -ge "$3" ]]; do
    ((SECONDS < deadline)) || { echo "timed out waiting for $1 ($($2)/$3)" >&2; exit 1; }
    sleep 1
  done
}

# One template repository, copied: the server serves each copy as its own repository.
template="$work/template"
git init -q --initial-branch main "$template"
mkdir -p "$template/deploy"
for f in deployment service configmap; do printf 'kind: %s\nmetadata:\n  name: app\n' "$f" >"$template/deploy/$f.yaml"; done
git -C "$template" add -A
git -C "$template" -c user.name=bench -c user.email=bench@weir.dev commit -q -m init
git clone -q --bare "$template" "$work/template.git"
for i in $(seq 1 "$n"); do cp -r "$work/template.git" "$WEIR_GIT_ROOT/$ns-$i.git"; done

kubectl create namespace "$ns" >/dev/null
metrics_port=$(free_port)
RUST_LOG=warn "$WEIR_BIN" controllers --controllers source --namespace "$ns" \
  --storage-path "$work/storage" --storage-addr 127.0.0.1:0 \
  --metrics-addr "127.0.0.1:$metrics_port" --concurrency "$concurrency" >"$work/controller.log" 2>&1 &
pid=$!
until curl -fsS "http://127.0.0.1:$metrics_port/healthz" >/dev/null 2>&1; do sleep 0.2; done
rss_idle=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")

for i in $(seq 1 "$n"); do
  cat <<YAML
---
apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata:
  name: repo-$i
  namespace: $ns
spec:
  url: $WEIR_GIT_HTTP_URL/public/$ns-$i.git
  interval: 1h
  ref:
    branch: main
YAML
done >"$work/objects.yaml"

t0=$(now)
kubectl create -f "$work/objects.yaml" >/dev/null
t_created=$(now)
wait_for "all $n GitRepositories Ready" count_ready "$n"
t_ready=$(now)
fetches_ready=$(metric weir_source_fetches_total)
checks_ready=$(metric weir_source_remote_checks_total)

token="bench-$(date +%s)"
t1=$(now)
kubectl annotate gitrepositories --all -n "$ns" "reconcile.fluxcd.io/requestedAt=$token" --overwrite >/dev/null
wait_for "all $n reconcile requests handled" "count_handled $token" "$n"
t_steady=$(now)
fetches_steady=$(metric weir_source_fetches_total)
checks_steady=$(metric weir_source_remote_checks_total)
rss_peak=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")

cat <<REPORT
source controller, $n GitRepositories (one bare repo each, HTTP), concurrency $concurrency
  create (kubectl create of $n objects):       $(secs "$t0" "$t_created") s
  creation → all Ready:                        $(secs "$t0" "$t_ready") s
  clones to get there:                         $fetches_ready (remote checks: $checks_ready)
  steady-state round (requestedAt on all $n):  $(secs "$t1" "$t_steady") s
  clones in the steady-state round:            $((fetches_steady - fetches_ready)) (must be 0)
  remote checks in the steady-state round:     $((checks_steady - checks_ready))
  controller RSS idle / peak:                  $((rss_idle / 1024)) MiB / $((rss_peak / 1024)) MiB
REPORT
