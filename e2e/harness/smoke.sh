#!/usr/bin/env bash
# Smoke-test a running harness (make cluster-up): every check of the harness contract,
# printing one line per check. Exit non-zero on the first failure.   -> `make harness-smoke`
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TOOLS_DIR="${WEIR_TOOLS_DIR:-$ROOT/.tools}"
ENV_FILE="$TOOLS_DIR/cluster/env.sh"
[ -f "$ENV_FILE" ] || { echo "smoke.sh: harness is not up (no $ENV_FILE); run: make cluster-up" >&2; exit 1; }
# shellcheck disable=SC1090
. "$ENV_FILE"
export PATH="$WEIR_TOOLS_BIN:$PATH"
. "$HERE/versions.env"

WORK="$(mktemp -d)"
NS="weir-smoke-$$"
cleanup() {
	kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
	rm -rf "$WORK" "$WEIR_GIT_ROOT/smoke-$$.git"
	rm -f "$WEIR_CHARTS_DIR"/smoke-$$-*.tgz
	if compgen -G "$WEIR_CHARTS_DIR/*.tgz" >/dev/null || [ -f "$WEIR_CHARTS_DIR/index.yaml" ]; then
		helm repo index "$WEIR_CHARTS_DIR" --url "$WEIR_CHARTS_URL" >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT

ok() { echo "ok   $*"; }
fail() { echo "FAIL $*" >&2; exit 1; }
check() { # description cmd...
	local d="$1"; shift
	if "$@" >"$WORK/out" 2>&1; then ok "$d"; else cat "$WORK/out" >&2; fail "$d"; fi
}
check_fails() { # description cmd... (must fail)
	local d="$1"; shift
	if "$@" >"$WORK/out" 2>&1; then fail "$d (unexpectedly succeeded)"; else ok "$d"; fi
}

# --- Kubernetes -------------------------------------------------------------------
check "node Ready" kubectl wait --for=condition=Ready node --all --timeout=30s
sv="$(kubectl version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -n1)"
[ "$sv" = "$KUBERNETES_VERSION" ] && ok "server version $sv" || fail "server version '$sv' != $KUBERNETES_VERSION"
check "namespace $NS" kubectl create namespace "$NS"
check "default ServiceAccount in $NS" \
	bash -c "for i in \$(seq 50); do kubectl -n $NS get sa default && exit 0; sleep 0.2; done; exit 1"
check "service account token" kubectl -n "$NS" create token default --duration=10m
check "deployment created" kubectl -n "$NS" create deployment smoke --image=registry.invalid/smoke:1 --replicas=2
check "deployment Available (kwok)" kubectl -n "$NS" wait --for=condition=Available deployment/smoke --timeout=60s
check "RBAC denies an unbound ServiceAccount" \
	bash -c "[ \"\$(kubectl auth can-i list secrets --as=system:serviceaccount:$NS:default)\" = no ]"

# --- git --------------------------------------------------------------------------
repo="smoke-$$"
git init -q --bare -b main "$WEIR_GIT_ROOT/$repo.git"
git init -q -b main "$WORK/src"
echo hello >"$WORK/src/README"
git -C "$WORK/src" add README
git -C "$WORK/src" -c user.name=smoke -c user.email=smoke@example.invalid commit -qm init
hostport="${WEIR_GIT_HTTP_URL#http://}"
export GIT_TERMINAL_PROMPT=0
check "git push over HTTP anonymous (/public)" git -C "$WORK/src" push -q "$WEIR_GIT_HTTP_URL/public/$repo.git" main
check "git clone over HTTP anonymous (/public)" git clone -q "$WEIR_GIT_HTTP_URL/public/$repo.git" "$WORK/c-public"
check "git clone over HTTP basic auth (/private)" \
	git clone -q "http://$WEIR_GIT_HTTP_USER:$WEIR_GIT_HTTP_PASSWORD@$hostport/private/$repo.git" "$WORK/c-private"
check "git push over HTTP basic auth (/private)" \
	git -C "$WORK/src" push -q "http://$WEIR_GIT_HTTP_USER:$WEIR_GIT_HTTP_PASSWORD@$hostport/private/$repo.git" main:basic
check_fails "git clone /private with a wrong password fails" \
	git clone -q "http://$WEIR_GIT_HTTP_USER:wrong@$hostport/private/$repo.git" "$WORK/c-bad"
check_fails "git clone /private without credentials fails" git clone -q "$WEIR_GIT_HTTP_URL/private/$repo.git" "$WORK/c-bad2"
check "git clone with bearer token (/token)" \
	git -c http.extraHeader="Authorization: Bearer $WEIR_GIT_HTTP_TOKEN" clone -q "$WEIR_GIT_HTTP_URL/token/$repo.git" "$WORK/c-token"
check_fails "git clone /token with a wrong token fails" \
	git -c http.extraHeader="Authorization: Bearer wrong" clone -q "$WEIR_GIT_HTTP_URL/token/$repo.git" "$WORK/c-bad3"
ssh_cmd="ssh -i $WEIR_GIT_SSH_IDENTITY -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$WEIR_GIT_SSH_KNOWN_HOSTS"
check "git clone over SSH (StrictHostKeyChecking=yes)" \
	env GIT_SSH_COMMAND="$ssh_cmd" git clone -q "$WEIR_GIT_SSH_URL$WEIR_GIT_ROOT/$repo.git" "$WORK/c-ssh"
check "git push over SSH" env GIT_SSH_COMMAND="$ssh_cmd" git -C "$WORK/src" push -q "$WEIR_GIT_SSH_URL$WEIR_GIT_ROOT/$repo.git" main:ssh
ssh-keygen -q -t ed25519 -N "" -f "$WORK/other_host_key"
sshport="${WEIR_GIT_SSH_URL##*:}"
echo "[127.0.0.1]:$sshport $(cut -d' ' -f1,2 "$WORK/other_host_key.pub")" >"$WORK/bad_known_hosts"
check_fails "git clone over SSH with a wrong host key fails" \
	env GIT_SSH_COMMAND="ssh -i $WEIR_GIT_SSH_IDENTITY -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$WORK/bad_known_hosts" \
	git clone -q "$WEIR_GIT_SSH_URL$WEIR_GIT_ROOT/$repo.git" "$WORK/c-ssh-bad"

# --- OCI registries -----------------------------------------------------------------
code() { curl -sS -o /dev/null -w '%{http_code}' "$@"; }
check "registry catalog (no auth)" curl -fsS "http://$WEIR_REGISTRY/v2/_catalog"
[ "$(code "http://$WEIR_REGISTRY_AUTH/v2/_catalog")" = 401 ] && ok "auth registry: 401 without credentials" || fail "auth registry without credentials is not 401"
[ "$(code -u "$WEIR_REGISTRY_USER:wrong" "http://$WEIR_REGISTRY_AUTH/v2/_catalog")" = 401 ] && ok "auth registry: 401 with a wrong password" || fail "auth registry with a wrong password is not 401"
[ "$(code -u "$WEIR_REGISTRY_USER:$WEIR_REGISTRY_PASSWORD" "http://$WEIR_REGISTRY_AUTH/v2/_catalog")" = 200 ] && ok "auth registry: 200 with credentials" || fail "auth registry with credentials is not 200"

# --- Helm: chart repo + OCI charts --------------------------------------------------
export HELM_CONFIG_HOME="$WORK/helm/config" HELM_CACHE_HOME="$WORK/helm/cache" HELM_DATA_HOME="$WORK/helm/data"
check "helm create" helm create "$WORK/smoke-$$-chart"
check "publish-chart.sh" "$HERE/publish-chart.sh" "$WORK/smoke-$$-chart"
check "chart index served" bash -c "curl -fsS $WEIR_CHARTS_URL/index.yaml | grep -q 'smoke-$$-chart'"
check "helm repo add" helm repo add smoke "$WEIR_CHARTS_URL"
mkdir -p "$WORK/pulled"
check "helm pull from chart repo" helm pull "smoke/smoke-$$-chart" -d "$WORK/pulled"
check "helm push to OCI registry (no auth)" helm push "$WORK/pulled/"*.tgz "oci://$WEIR_REGISTRY/charts" --plain-http
check_fails "helm push to auth registry without login fails" \
	helm push "$WORK/pulled/"*.tgz "oci://$WEIR_REGISTRY_AUTH/charts" --plain-http
check "helm registry login" helm registry login "$WEIR_REGISTRY_AUTH" --insecure \
	-u "$WEIR_REGISTRY_USER" -p "$WEIR_REGISTRY_PASSWORD"
check "helm push to auth registry" helm push "$WORK/pulled/"*.tgz "oci://$WEIR_REGISTRY_AUTH/charts" --plain-http
check "helm install from the chart repo becomes ready (kwok)" \
	helm install smoke "smoke/smoke-$$-chart" -n "$NS" --wait --timeout 90s
check "kustomize build" bash -c "mkdir -p $WORK/k && printf 'resources: []\nnamespace: x\n' > $WORK/k/kustomization.yaml && kustomize build $WORK/k"
echo "all harness smoke checks passed"
