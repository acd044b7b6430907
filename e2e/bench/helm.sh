#!/usr/bin/env bash
# Helm controller benchmark: N HelmReleases (default 100; 1000 with WEIR_BENCH_HELMRELEASES=1000)
# of one small chart written here (Flux's benchmark app: a Deployment scaled to 0, a
# ServiceAccount and a Service), published to the harness chart repository under a name of its
# own, and released by one `weir controllers --controllers source,helm` process, which runs the
# real Helm 4 as a child process per action. Like Flux's benchmark (fluxcd/flux-benchmark,
# flux-hr-bench): one namespace, one HelmRepository, every HelmRelease with its own `chart.spec`
# (so its own HelmChart) and `targetNamespace` set to that namespace, `interval: 1h`.
# Reports the seconds from creation until all are Ready, the peak memory of Weir and the Helm
# processes it runs together (sampled every 0.2 s over the process tree) and of Weir alone, their
# CPU seconds, the Helm processes run, one steady-state round (every HelmRelease asked to
# reconcile with nothing changed: Helm processes must be zero), and the deletion of all (one
# uninstall each).
# Needs: the harness env (KUBECONFIG, WEIR_CHARTS_*, WEIR_TOOLS_BIN), WEIR_BIN; run through
# `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/harness-lib.sh"

n=${WEIR_BENCH_HELMRELEASES:-100}
concurrency=${WEIR_BENCH_CONCURRENCY:-8}
helm="$WEIR_TOOLS_BIN/helm"
ns="bench-helm-$RANDOM"
chart="bench-app-$RANDOM$RANDOM"
version=1.0.0
work=$(mktemp -d)
pid=""
sampler=""
cleanup() {
  local status=$?
  # Delete the releases while the controller still runs, so it uninstalls them and releases the
  # finalizers (of the HelmReleases, then of the HelmCharts it made and the HelmRepository).
  kubectl delete helmreleases --all -n "$ns" --timeout=1800s >/dev/null 2>&1 || true
  kubectl delete helmcharts,helmrepositories --all -n "$ns" --timeout=300s >/dev/null 2>&1 || true
  [[ -n "$sampler" ]] && kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null || true
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  if ((status != 0)) && [[ -f "$work/controller.log" ]]; then
    echo "last lines of the controller's log:" >&2
    tail -n 40 "$work/controller.log" >&2
  fi
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  publish rm -f "$WEIR_CHARTS_DIR/$chart-$version.tgz" || true
  rm -rf "$work"
}
trap cleanup EXIT

# Runs a command on the chart directory, then re-indexes it, holding the lock the e2e tests'
# publisher (e2e/src/charts.rs) holds: `helm repo index` rewrites index.yaml from the packages
# it finds, so two indexers at once could each drop the other's chart.
publish() {
  (
    flock 9
    "$@"
    HELM_CONFIG_HOME="$work/helm/config" HELM_CACHE_HOME="$work/helm/cache" HELM_DATA_HOME="$work/helm/data" \
      "$helm" repo index "$WEIR_CHARTS_DIR" --url "$WEIR_CHARTS_URL"
  ) 9>"$WEIR_CHARTS_DIR.publish.lock"
}
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
# CPU seconds so far of the controller alone (user + system) and of the Helm processes it ran
# and waited for (children's user + system).
cpu_self() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / t }' "/proc/$pid/stat"; }
cpu_children() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.1f", ($16 + $17) / t }' "/proc/$pid/stat"; }
metric() { curl -fsS "http://127.0.0.1:$metrics_port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
# The sampler's peaks so far: total RSS and PSS (KiB), the controller's RSS (KiB), most Helm
# processes at once.
peaks() { cat "$work/peaks"; }
count_ready() {
  kubectl get helmreleases -n "$ns" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true
}
count_handled() {
  kubectl get helmreleases -n "$ns" -o jsonpath='{range .items[*]}{.status.lastHandledReconcileAt}{"\n"}{end}' | grep -c "^$1\$" || true
}
count_gone() { echo $((n - $(kubectl get helmreleases -n "$ns" -o name | wc -l))); }
wait_for() { # wait_for <what> <command> <target>
  local deadline=$((SECONDS + 3600))
  until [[ "$($2)" -ge "$3" ]]; do
    ((SECONDS < deadline)) || { echo "timed out waiting for $1 ($($2)/$3)" >&2; exit 1; }
    sleep 1
  done
}

# The chart: Flux's benchmark app without the Ingress (the harness has no ingress class).
mkdir -p "$work/$chart/templates"
cat >"$work/$chart/Chart.yaml" <<YAML
apiVersion: v2
name: $chart
version: $version
description: Weir's helm controller benchmark app
YAML
echo "image: registry.invalid/app:1.0.0" >"$work/$chart/values.yaml"
cat >"$work/$chart/templates/app.yaml" <<'YAML'
apiVersion: v1
kind: ServiceAccount
metadata: {name: {{ .Release.Name }}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: {{ .Release.Name }}}
spec:
  replicas: 0
  selector: {matchLabels: {app: {{ .Release.Name }}}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}}}
    spec:
      serviceAccountName: {{ .Release.Name }}
      containers: [{name: app, image: {{ .Values.image | quote }}}]
---
apiVersion: v1
kind: Service
metadata: {name: {{ .Release.Name }}}
spec:
  selector: {app: {{ .Release.Name }}}
  ports: [{port: 80}]
YAML
publish "$helm" package "$work/$chart" --destination "$WEIR_CHARTS_DIR" >/dev/null

# Peak memory of the controller's process tree: the controller plus every Helm it runs (and what
# Helm starts), found by parent pid in /proc, summed every 0.2 s. RSS counts the pages Helm
# processes share (their binary) once per process; PSS divides them among the sharers.
cat >"$work/sample.py" <<'PY'
import os, sys, time
root, out = int(sys.argv[1]), sys.argv[2]
def memory(p):  # (RSS, PSS) in KiB
    with open(f"/proc/{p}/smaps_rollup") as f:
        fields = dict(line.split()[:2] for line in f if line.startswith(("Rss:", "Pss:")))
    return int(fields["Rss:"]), int(fields["Pss:"])
peaks = [0, 0, 0, 0]  # total RSS, total PSS, the controller's RSS, most processes under it
while os.path.exists(f"/proc/{root}"):
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(d))
    tree, i = [root], 0
    while i < len(tree):
        tree += children.get(tree[i], [])
        i += 1
    try:
        root_rss, root_pss = memory(root)
    except OSError:
        break
    seen = [root_rss, root_pss, root_rss, len(tree) - 1]
    for p in tree[1:]:
        try:
            rss, pss = memory(p)
        except OSError:
            continue
        seen[0] += rss
        seen[1] += pss
    if any(s > p for s, p in zip(seen, peaks)):
        peaks = [max(s, p) for s, p in zip(seen, peaks)]
        with open(out + ".new", "w") as f:
            f.write(" ".join(map(str, peaks)) + "\n")
        os.replace(out + ".new", out)
    time.sleep(0.2)
PY

kubectl create namespace "$ns" >/dev/null
metrics_port=$(free_port)
RUST_LOG=warn "$WEIR_BIN" controllers --controllers source,helm --namespace "$ns" \
  --storage-path "$work/storage" --storage-addr "127.0.0.1:$(free_port)" \
  --helm-path "$helm" --chart-cache-path "$work/charts" \
  --metrics-addr "127.0.0.1:$metrics_port" --concurrency "$concurrency" >"$work/controller.log" 2>&1 &
pid=$!
until curl -fsS "http://127.0.0.1:$metrics_port/healthz" >/dev/null 2>&1; do sleep 0.2; done
rss_idle=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
echo "0 0 0 0" >"$work/peaks"
python3 "$work/sample.py" "$pid" "$work/peaks" &
sampler=$!

{
  cat <<YAML
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata: {name: charts, namespace: $ns}
spec:
  url: $WEIR_CHARTS_URL
  interval: 1h
YAML
  for i in $(seq 1 "$n"); do
    cat <<YAML
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata: {name: app-$i, namespace: $ns}
spec:
  interval: 1h
  targetNamespace: $ns
  chart:
    spec:
      chart: $chart
      version: $version
      sourceRef: {kind: HelmRepository, name: charts}
YAML
  done
} >"$work/objects.yaml"

t0=$(now)
kubectl create -f "$work/objects.yaml" >/dev/null
wait_for "all $n HelmReleases Ready" count_ready "$n"
t_ready=$(now)
cpu_self_ready=$(cpu_self)
cpu_children_ready=$(cpu_children)
helm_ready=$(metric weir_helm_processes_total)
reconciles_ready=$(metric weir_helm_reconciles_total)
read -r peak_total peak_pss peak_weir most_helm < <(peaks)

# One steady-state round: every HelmRelease asked to reconcile, nothing changed.
token="bench-$(date +%s)"
t1=$(now)
kubectl annotate helmreleases --all -n "$ns" "reconcile.fluxcd.io/requestedAt=$token" --overwrite >/dev/null
wait_for "all $n reconcile requests handled" "count_handled $token" "$n"
t_steady=$(now)
# Let the round's last reconciles finish, if any are still running, before reading again.
sleep 5
helm_steady=$(metric weir_helm_processes_total)
reconciles_steady=$(metric weir_helm_reconciles_total)
cpu_steady=$(python3 -c "print(f'{$(cpu_self) + $(cpu_children) - $cpu_self_ready - $cpu_children_ready:.1f}')")
rss_hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
read -r peak_total_steady peak_pss_steady _ _ < <(peaks)

# Deleting every HelmRelease uninstalls its release.
t2=$(now)
kubectl delete helmreleases --all -n "$ns" --wait=false >/dev/null
wait_for "all $n HelmReleases deleted" count_gone "$n"
t_deleted=$(now)
helm_deleted=$(metric weir_helm_processes_total)
read -r peak_total_all peak_pss_all _ _ < <(peaks)
warnings=$(grep -cE ' (WARN|ERROR) ' "$work/controller.log" || true)

mib() { echo $(($1 / 1024)); }
cat <<REPORT
helm controller, $n HelmReleases (chart: Deployment scaled to 0 + ServiceAccount + Service; one HelmRepository, a HelmChart each, targetNamespace), concurrency $concurrency
  creation → all Ready:                              $(secs "$t0" "$t_ready") s
  helm processes to get there:                       $helm_ready (reconciles: $reconciles_ready)
  CPU to Ready, weir / helm processes:               $cpu_self_ready s / $cpu_children_ready s
  peak memory to Ready, weir + helm (sampled):       RSS $(mib "$peak_total") MiB, PSS $(mib "$peak_pss") MiB (most helm processes at once: $most_helm)
  peak RSS to Ready, weir alone (sampled):           $(mib "$peak_weir") MiB
  steady-state round (requestedAt on all $n):        $(secs "$t1" "$t_steady") s, $((reconciles_steady - reconciles_ready)) reconciles, $cpu_steady CPU s
  helm processes in the steady-state round:          $((helm_steady - helm_ready)) (must be 0)
  peak to the end of the round, weir + helm:         RSS $(mib "$peak_total_steady") MiB, PSS $(mib "$peak_pss_steady") MiB; weir alone (VmHWM): $(mib "$rss_hwm") MiB
  delete all → all gone (uninstalls):                $(secs "$t2" "$t_deleted") s, $((helm_deleted - helm_steady)) helm processes, peak weir + helm RSS $(mib "$peak_total_all") MiB, PSS $(mib "$peak_pss_all") MiB
  weir RSS idle:                                     $(mib "$rss_idle") MiB
  warnings and errors in the controller's log:       $warnings
REPORT
