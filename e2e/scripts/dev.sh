#!/usr/bin/env bash
# `make dev`: Weir's main job on a local cluster it starts itself. Starts the harness (API server
# with a kwok node, git server, registry), pushes a sample app to the git server, points a
# GitRepository and a Kustomization at it, and runs `weir controllers` in the foreground.
# Ctrl-C stops Weir; the harness keeps running for kubectl until `make cluster-down`.
set -euo pipefail
cd "$(dirname "$0")/../.."
source e2e/scripts/harness-lib.sh
ensure_harness

cargo build -q -p weir --bin weir
weir="$PWD/target/debug/weir"

# The sample app: a namespace, a Deployment, a Service and a ConfigMap.
sample="$WEIR_GIT_ROOT/weir-sample.git"
if [[ ! -d "$sample" ]]; then
  work=$(mktemp -d)
  git init -q --initial-branch main "$work"
  mkdir -p "$work/deploy"
  cat >"$work/deploy/app.yaml" <<'YAML'
apiVersion: v1
kind: Namespace
metadata:
  name: weir-sample
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: podinfo
  namespace: weir-sample
data:
  greeting: hello from git
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: podinfo
  namespace: weir-sample
spec:
  replicas: 2
  selector:
    matchLabels: { app: podinfo }
  template:
    metadata:
      labels: { app: podinfo }
    spec:
      containers:
        - name: podinfo
          image: ghcr.io/stefanprodan/podinfo:6.5.0
          ports: [{ containerPort: 9898 }]
---
apiVersion: v1
kind: Service
metadata:
  name: podinfo
  namespace: weir-sample
spec:
  selector: { app: podinfo }
  ports: [{ port: 80, targetPort: 9898 }]
YAML
  git -C "$work" add -A
  git -C "$work" -c user.name=weir -c user.email=dev@weir.dev commit -q -m "Sample app"
  git clone -q --bare "$work" "$sample"
  rm -rf "$work"
fi

kubectl create namespace weir-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata:
  name: weir-sample
  namespace: weir-system
spec:
  url: $WEIR_GIT_HTTP_URL/public/weir-sample.git
  interval: 1m
  ref:
    branch: main
YAML
controllers=$("$weir" controllers --help | sed -n '/--controllers/,/--namespace/p')
if grep -q kustomize <<<"$controllers"; then
  kubectl apply -f - >/dev/null <<'YAML'
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: weir-sample
  namespace: weir-system
spec:
  interval: 5m
  sourceRef:
    kind: GitRepository
    name: weir-sample
  path: ./deploy
  prune: true
  wait: true
YAML
  synced="the sample app synced into namespace weir-sample"
else
  synced="the sample repository fetched into an artifact (this build has no Kustomization controller yet, so nothing is applied)"
fi

storage_port=$(free_port)
metrics_port=$(free_port)
cat <<MSG

Weir is starting against the local cluster: $synced.
In another shell:
  eval "\$(make -s env)"; export PATH="\$WEIR_TOOLS_BIN:\$PATH"
  kubectl get gitrepositories,kustomizations -A      # Ready, Status, Revision (-o wide)
  kubectl get all -n weir-sample                       # what the Kustomization applied
  kubectl get events -n weir-system                    # NewArtifact, apply summaries
  git clone $WEIR_GIT_HTTP_URL/public/weir-sample.git  # push a change and watch it arrive
  curl -s http://127.0.0.1:$metrics_port/metrics
Ctrl-C stops Weir; \`make cluster-down\` stops the cluster.

MSG
exec "$weir" controllers --storage-path .tools/dev/artifacts --storage-addr "127.0.0.1:$storage_port" \
  --metrics-addr "127.0.0.1:$metrics_port"
