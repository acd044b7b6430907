#!/usr/bin/env bash
# `make bench-flux`: Weir against Flux's own controllers, in one run on this machine.
#
# For every size N (WEIR_BENCH_SIZES, default "100 500 1000") and every engine
# (WEIR_BENCH_ENGINES, default "flux weir"), on a fresh cluster each (a second harness in
# .tools/bench-cluster, beside any dev cluster; its kube-apiserver writes an audit log):
#   * the engine's CRDs are installed: Flux's from the source-controller and kustomize-controller
#     modules (v1.9.5, built from the Go module proxy by tools.sh), Weir's from crds/;
#   * the engine runs out of cluster as cluster-admin, with the same concurrency for every
#     controller (WEIR_BENCH_CONCURRENCY, default 10), Flux's with its client rate limit raised
#     (--kube-api-qps 500 --kube-api-burst 1000) since Weir's client has none;
#   * one GitRepository and N Kustomizations, each applying Flux's flux-benchmark app (a
#     Deployment scaled to 0, a ServiceAccount, a Service and an Ingress) from its own directory,
#     with targetNamespace, prune, wait and timeout 5m, all created at once.
# Reported per run: seconds from creation until the last of the N is first Ready (at most
# WEIR_BENCH_READY_CAP, default 900 s: past it, how many were); the peak of the summed RSS of
# the engine's processes and their children (sampled every 0.25 s); CPU seconds (user + system,
# children included); API requests the engine made (from the audit log; watches count once,
# events included); and one steady-state window of 1.5 intervals (interval 1m for the
# GitRepository and the Kustomizations) with nothing changed upstream: reconciles, write
# requests other than Events, and git fetches and ref listings served.
# The cluster's kube-controller-manager keeps its default client rate limit (20 requests/s per
# controller), as most clusters do; it bounds how fast Deployments created in bulk become
# current, for both engines alike. WEIR_KCM_QPS=N raises it, to measure the engines alone.
# Per run, .tools/bench/requests-<engine>-<n>-{to-ready,steady}.txt count every request seen by
# user agent, verb and resource.
# Figures go to stdout and .tools/bench/bench-flux.txt; they report, never pass or fail on timing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
source e2e/scripts/harness-lib.sh

sizes=${WEIR_BENCH_SIZES:-100 500 1000}
engines=${WEIR_BENCH_ENGINES:-flux weir}
concurrency=${WEIR_BENCH_CONCURRENCY:-10}
# A run that has not made all N Ready after this many seconds is reported as such (how many
# were), and its steady state is measured from there.
ready_cap=${WEIR_BENCH_READY_CAP:-900}
interval=60
state="$root/.tools/bench-cluster"
out="$root/.tools/bench/bench-flux.txt"
mkdir -p "$root/.tools/bench"

make -s tools
bash e2e/harness/tools.sh source-controller kustomize-controller >/dev/null
weir_bin=${WEIR_BIN:-$root/target/release/weir}
if [[ " $engines " == *" weir "* && -z "${WEIR_BIN:-}" ]]; then
  cargo build --release -q -p weir --bin weir
fi
. e2e/harness/versions.env
flux_bin="$root/.tools/bin"
sc_dir="$flux_bin/source-controller-$FLUX_SOURCE_CONTROLLER_VERSION"
kc_dir="$flux_bin/kustomize-controller-$FLUX_KUSTOMIZE_CONTROLLER_VERSION"

pids=()
# The user agents of each engine's requests (a regular expression).
declare -A agent_of=([flux]="^(source|kustomize)-controller/" [weir]="^weir/")
sampler=""
work=""
cluster() { WEIR_CLUSTER_STATE="$state" WEIR_APISERVER_AUDIT=1 bash e2e/harness/cluster.sh "$@"; }
stop_engine() {
  local p
  if [[ -n "$sampler" ]]; then kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=() sampler=""
}
cleanup() {
  stop_engine
  cluster down >/dev/null 2>&1 || true
  if [[ -n "$work" ]]; then rm -rf "$work"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
# Adds the Kustomizations Ready now to the set of those ever Ready ($work/ready) and prints its
# size. Flux sets Ready=Unknown at the start of every reconcile, also one with nothing to do,
# so with N in the hundreds some are always in progress once their interval comes round: the
# time to Ready is the time until the last of them is first Ready.
count_ready() {
  kubectl get kustomizations -n bench \
    -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    awk '$2 == "True" { print $1 }' >>"$work/ready"
  sort -u "$work/ready" | wc -l
}
# Waits until all $1 Kustomizations are Ready, at most $ready_cap seconds; prints how many are.
# An engine process that exits ends the benchmark.
wait_ready() { # n
  local deadline=$((SECONDS + ready_cap)) p ready
  while ready=$(count_ready) && ((ready < $1 && SECONDS < deadline)); do
    for p in "${pids[@]}"; do
      kill -0 "$p" 2>/dev/null && continue
      echo "an engine process exited while waiting for Ready; its logs:" >&2
      tail -n 5 "$work"/*.log >&2
      exit 1
    done
    sleep 1
  done
  echo "$ready"
}
lines() { wc -l <"$1" 2>/dev/null || echo 0; }

# Sums the RSS of the given processes and all their descendants every 0.25 s; on SIGTERM
# writes the peak (KiB) to $1.
start_sampler() { # file pid...
  python3 - "$@" <<'PY' &
import os, signal, sys, time
out, roots = sys.argv[1], {int(p) for p in sys.argv[2:]}
peak = 0
def done(*_):
    open(out, "w").write(str(peak))
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    parent, rss = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            parent[int(d)] = int(fields[1])
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, IndexError, ValueError):
            pass
    def ours(p):
        while p > 1:
            if p in roots:
                return True
            p = parent.get(p, 0)
        return False
    peak = max(peak, sum(v for p, v in rss.items() if ours(p)))
    time.sleep(0.25)
PY
  sampler=$!
}

# CPU seconds (user + system, waited-for children included) of the given processes.
cpu_seconds() {
  local total=0 p f
  for p in "$@"; do
    f=$(cut -d' ' -f14-17 <"/proc/$p/stat" 2>/dev/null | awk '{ print $1 + $2 + $3 + $4 }') || f=0
    total=$((total + ${f:-0}))
  done
  python3 -c "print(f'{$total / $(getconf CLK_TCK):.1f}')"
}

# Requests in lines ($2, $3] of the audit log $1 made by the engine's processes (by user agent:
# $4 is a regular expression; kubectl, kwok and the cluster's own components use other agents):
# "all writes" — all requests, and writes other than Events and dry runs. Every request's
# agent, verb and resource is counted into $5, to see where requests go.
audit_counts() { # log from to agent-regex breakdown-file
  python3 - "$@" <<'PY'
import collections, json, re, sys
log, start, end, agent, breakdown = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), re.compile(sys.argv[4]), sys.argv[5]
total = writes = 0
seen = collections.Counter()
with open(log) as f:
    for i, line in enumerate(f):
        if i < start or i >= end:
            continue
        e = json.loads(line)
        ua = e.get("userAgent", "")
        resource = e.get("objectRef", {}).get("resource", "-")
        dry = "dryRun=" in e.get("requestURI", "")
        seen[(ua.split(" ")[0], e["verb"] + (" (dry run)" if dry else ""), resource)] += 1
        if not agent.search(ua):
            continue
        total += 1
        if e["verb"] in ("create", "update", "patch", "delete") and resource != "events" and not dry:
            writes += 1
with open(breakdown, "w") as out:
    for (ua, verb, resource), n in seen.most_common():
        out.write(f"{n:8} {ua} {verb} {resource}\n")
print(total, writes)
PY
}

git_requests() { # access-log from to -> "fetches listings"
  sed -n "$(($2 + 1)),$3p" "$1" | awk '/git-upload-pack HTTP/ && /POST/ { f++ } /info\/refs/ { l++ } END { print f + 0, l + 0 }'
}

write_repo() { # dir n
  local repo="$1" i
  git init -q --initial-branch main "$repo"
  for i in $(seq 1 "$2"); do
    mkdir -p "$repo/apps/app-$i"
    cat >"$repo/apps/app-$i/app.yaml" <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: app-$i}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app-$i}
spec:
  replicas: 0
  selector: {matchLabels: {app: app-$i}}
  template:
    metadata: {labels: {app: app-$i}}
    spec:
      serviceAccountName: app-$i
      containers: [{name: app, image: registry.invalid/app:1.0.0, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: app-$i}
spec:
  selector: {app: app-$i}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: app-$i}
spec:
  rules:
  - host: app-$i.bench.invalid
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: app-$i, port: {number: 80}}}}
YAML
  done
  git -C "$repo" add -A
  git -C "$repo" -c user.name=bench -c user.email=bench@weir.dev commit -q -m init
}

objects() { # n
  cat <<YAML
apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata: {name: apps, namespace: bench}
spec:
  url: $WEIR_GIT_HTTP_URL/public/bench.git
  interval: ${interval}s
  ref: {branch: main}
YAML
  for i in $(seq 1 "$1"); do
    cat <<YAML
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: app-$i, namespace: bench}
spec:
  sourceRef: {kind: GitRepository, name: apps}
  path: ./apps/app-$i
  interval: ${interval}s
  targetNamespace: bench
  prune: true
  wait: true
  timeout: 5m
YAML
  done
}

start_flux() {
  local storage_port
  storage_port=$(free_port)
  mkdir -p "$work/storage"
  # The harness installs Weir's CRDs when it starts; Flux gets its own in their place.
  kubectl delete -k crds/ --wait >/dev/null
  kubectl apply --server-side -f "$sc_dir/crds/" -f "$kc_dir/crds/" >/dev/null
  kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
  RUNTIME_NAMESPACE=bench "$sc_dir/source-controller" --enable-leader-election=false \
    --watch-all-namespaces=true --concurrent="$concurrency" --log-level=error \
    --storage-path="$work/storage" --storage-addr="127.0.0.1:$storage_port" \
    --storage-adv-addr="127.0.0.1:$storage_port" --metrics-addr="127.0.0.1:$(free_port)" \
    --health-addr="127.0.0.1:$(free_port)" --kube-api-qps=500 --kube-api-burst=1000 \
    >"$work/source-controller.log" 2>&1 &
  pids+=($!)
  kc_metrics=$(free_port)
  RUNTIME_NAMESPACE=bench "$kc_dir/kustomize-controller" --enable-leader-election=false \
    --watch-all-namespaces=true --concurrent="$concurrency" --log-level=error \
    --metrics-addr="127.0.0.1:$kc_metrics" --health-addr="127.0.0.1:$(free_port)" \
    --kube-api-qps=500 --kube-api-burst=1000 >"$work/kustomize-controller.log" 2>&1 &
  pids+=($!)
  until curl -fsS "http://127.0.0.1:$kc_metrics/metrics" >/dev/null 2>&1; do sleep 0.2; done
}

start_weir() {
  weir_metrics=$(free_port)
  kubectl apply --server-side --force-conflicts -k crds/ >/dev/null
  kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
  RUST_LOG=error "$weir_bin" controllers --controllers source,kustomize \
    --concurrency "$concurrency" --storage-path "$work/storage" --storage-addr 127.0.0.1:0 \
    --kustomize-path "$WEIR_TOOLS_BIN/kustomize" --artifact-cache-path "$work/cache" \
    --metrics-addr "127.0.0.1:$weir_metrics" >"$work/weir.log" 2>&1 &
  pids+=($!)
  until curl -fsS "http://127.0.0.1:$weir_metrics/healthz" >/dev/null 2>&1; do sleep 0.2; done
}

# Reconciles of Kustomizations done so far, from the engine's own metrics.
reconciles() {
  if [[ "$1" == flux ]]; then
    curl -fsS "http://127.0.0.1:$kc_metrics/metrics" |
      awk '/^controller_runtime_reconcile_total\{controller="kustomization"/ { s += $2 } END { print s + 0 }'
  else
    curl -fsS "http://127.0.0.1:$weir_metrics/metrics" |
      awk '$1 == "weir_kustomize_reconciles_total" { print $2 }'
  fi
}

run() { # engine n
  local engine="$1" n="$2" t0 t_ready a0 a_ready a_end g0 g_end r_ready cpu_ready cpu_end peak
  work=$(mktemp -d)
  cluster down >/dev/null 2>&1 || true
  cluster up >/dev/null
  eval "$(cluster env)"
  export PATH="$WEIR_TOOLS_BIN:$PATH"
  write_repo "$work/repo" "$n"
  git clone -q --bare "$work/repo" "$WEIR_GIT_ROOT/bench.git"
  kubectl create namespace bench >/dev/null
  objects "$n" >"$work/objects.yaml"
  "start_$engine"
  start_sampler "$work/peak" "${pids[@]}"
  local audit="$state/audit.log" access="$state/nginx-access.log"
  a0=$(lines "$audit") g0=$(lines "$access")
  t0=$(now)
  kubectl create -f "$work/objects.yaml" >/dev/null
  local ready to_ready
  ready=$(wait_ready "$n")
  t_ready=$(now)
  to_ready=$(secs "$t0" "$t_ready")
  # Not all Ready within the cap: the figure is a lower bound.
  ((ready >= n)) || to_ready="> $to_ready ($ready Ready)"
  a_ready=$(lines "$audit") cpu_ready=$(cpu_seconds "${pids[@]}") r_ready=$(reconciles "$engine")
  local ga
  ga=$(lines "$access")
  sleep $((interval * 3 / 2)) # the steady-state window: a fixed span of time is what is measured
  a_end=$(lines "$audit") g_end=$(lines "$access") cpu_end=$(cpu_seconds "${pids[@]}")
  local r_end
  r_end=$(reconciles "$engine")
  kill "$sampler" && wait "$sampler" 2>/dev/null || true
  sampler=""
  peak=$(cat "$work/peak")
  local agents=${agent_of[$engine]} detail="$root/.tools/bench/requests-$engine-$n"
  read -r req_ready _ < <(audit_counts "$audit" "$a0" "$a_ready" "$agents" "$detail-to-ready.txt")
  read -r req_steady writes_steady < <(audit_counts "$audit" "$a_ready" "$a_end" "$agents" "$detail-steady.txt")
  read -r fetches listings < <(git_requests "$access" "$ga" "$g_end")
  printf '| %s | %s | %s | %s MiB | %s | %s | %s | %s | %s | %s | %s fetches, %s ref listings |\n' \
    "$engine" "$n" "$to_ready" "$((peak / 1024))" "$cpu_ready" "$req_ready" \
    "$((r_end - r_ready))" "$req_steady" "$writes_steady" \
    "$(python3 -c "print(f'{$cpu_end - $cpu_ready:.1f}')")" "$fetches" "$listings"
  echo "$engine $n $(secs "$t0" "$t_ready") $peak $cpu_ready $req_ready $((ready >= n))" >>"$raw"
  stop_engine
  cluster down >/dev/null
  rm -rf "$work"
  work=""
}

# weir/flux for every size both engines ran: below 1 means Weir used less (took less time).
ratios() {
  python3 - "$root/.tools/bench/bench-flux.raw" <<'PY'
import sys
runs = {}
for line in open(sys.argv[1]):
    engine, n, *figures, all_ready = line.split()
    runs[(engine, int(n))] = ([float(f) for f in figures], all_ready == "1")
sizes = sorted({n for _, n in runs if ("weir", n) in runs and ("flux", n) in runs})
if sizes:
    print()
    print("| Kustomizations | to Ready weir/flux | peak RSS weir/flux | CPU s weir/flux | API requests weir/flux |")
    print("|---|---|---|---|---|")
for n in sizes:
    (w, w_all), (f, f_all) = runs[("weir", n)], runs[("flux", n)]
    cells = [f"{a / b:.2f}" if b else "-" for a, b in zip(w, f)]
    # Time to Ready of an engine that did not get there is a lower bound, so is the ratio's side.
    if not f_all:
        cells[0] = "< " + cells[0]
    if not w_all:
        cells[0] = "> " + cells[0]
    print(f"| {n} | " + " | ".join(cells) + " |")
PY
}

{
  echo "bench-flux on $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr), $(date -u +%Y-%m-%d);"
  echo "Flux source-controller $FLUX_SOURCE_CONTROLLER_VERSION + kustomize-controller $FLUX_KUSTOMIZE_CONTROLLER_VERSION vs weir $(git rev-parse --short HEAD); concurrency $concurrency; interval ${interval}s; steady window $((interval * 3 / 2)) s"
  echo
  echo "| engine | Kustomizations | creation → all Ready (s) | peak RSS | CPU s to Ready | API requests to Ready | steady: reconciles | steady: API requests | steady: writes (not Events or dry runs) | steady: CPU s | steady: git |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
} | tee "$out"
# Figures of earlier runs of engines and sizes not run now are kept for the ratios (a rerun of
# one engine compares with the other's last run on this machine).
raw="$root/.tools/bench/bench-flux.raw"
touch "$raw"
python3 - "$raw" "$engines" "$sizes" <<'PY'
import sys
raw, engines, sizes = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
keep = [l for l in open(raw) if not (l.split()[0] in engines and l.split()[1] in sizes)]
open(raw, "w").writelines(keep)
PY
for n in $sizes; do
  for engine in $engines; do
    run "$engine" "$n" | tee -a "$out"
  done
done
ratios | tee -a "$out"
