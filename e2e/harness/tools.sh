#!/usr/bin/env bash
# Build the Go tools the e2e harness needs, from the Go module proxy, at the
# versions pinned in e2e/harness/versions.env.
#
# Usage: e2e/harness/tools.sh [tool...]     (tools: etcd kubernetes kwok kustomize helm flux;
#                                           default: all)      -> `make tools`
#                                           (source-controller kustomize-controller: only
#                                           when named, for `make bench-flux`)
#
# Cache layout ($WEIR_TOOLS_DIR, default <repo>/.tools, git-ignored):
#   bin/<tool>-<version>/<binary>   immutable build output, one dir per tool+version
#                                   (kubernetes-<v>/ holds kube-apiserver,
#                                   kube-controller-manager, kube-scheduler, kubectl)
#   bin/current/<binary>            stable symlinks to the pinned versions; this dir
#                                   is what `cluster.sh env` exports as WEIR_TOOLS_BIN
#   src/<tool>-<version>/           generated wrapper Go modules (go.mod/go.sum)
#   logs/<tool>-<version>.log       full output of each build
#   build-times.log                 one line per completed build with its duration
#   cluster/                        state of a running cluster (see cluster.sh)
# A tool is skipped when its bin/<tool>-<version>/ dir has all of its binaries;
# builds go to a temp dir first and are renamed into place only on success.
#
# How each tool is built:
#   * kwok, kustomize, helm (v4): their go.mod has no replace directives, so plain
#     `GOBIN=... go install <pkg>@<version>`.
#   * flux (the official CLI, a test client): cmd/flux embeds manifests/*.yaml, which its
#     release process generates and the module does not ship; the module is copied from the
#     module cache to src/flux-<v>/ and built with one placeholder manifest (install and
#     bootstrap commands, which Weir's tests never run, print it instead of Flux's).
#   * etcd: server/v3's go.mod replaces its sibling modules with ../paths, which
#     `go install pkg@version` refuses; a wrapper module requiring
#     go.etcd.io/etcd/server/v3 (whose root package is etcd's `main`) is built.
#   * kubernetes: k8s.io/kubernetes replaces every k8s.io/<staging> module with
#     ./staging/src/...; the wrapper module replaces each of them (list parsed from
#     that release's own go.mod) with the published v0.<minor>.<patch> tag, and
#     the four binaries are built in one `go build` so they share compile work.
#     Version ldflags make `/version` and `kubectl version` report the pinned tag.
#   * source-controller, kustomize-controller (Flux's own, for `make bench-flux` only; not in
#     the default set): each module replaces its `api` submodule with ./api, which its module
#     zip does not hold; the module is copied to src/<tool>-<v>/, that replace is dropped for
#     the published api module of the same version, and the controller is built from there.
#     Its CRDs (config/crd/bases) are copied next to the binary, into bin/<tool>-<v>/crds/.
#     The proxy does not serve github.com/fluxcd/pkg/artifact v0.18.3, which source-controller
#     v1.9.5 requires; the nearest served patch release, v0.18.0, is used instead.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
. "$HERE/versions.env"

TOOLS_DIR="${WEIR_TOOLS_DIR:-$ROOT/.tools}"
BIN_DIR="$TOOLS_DIR/bin"
CUR_DIR="$BIN_DIR/current"
SRC_DIR="$TOOLS_DIR/src"
LOG_DIR="$TOOLS_DIR/logs"
ALL_TOOLS=(etcd kubernetes kwok kustomize helm flux)
# Built only when named (`make bench-flux`): Flux's controllers, to measure Weir against.
BENCH_TOOLS=(source-controller kustomize-controller)

export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"

die() { echo "tools.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "go is not on PATH (needed to build the harness tools)"
mkdir -p "$BIN_DIR" "$CUR_DIR" "$SRC_DIR" "$LOG_DIR"

# One build at a time per cache dir.
exec 9>"$TOOLS_DIR/.tools.lock"
flock -w 3600 9 || die "timed out waiting for another tools.sh on $TOOLS_DIR"

fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# Path of the go.mod of module $1 at version $2 (downloaded through the proxy).
gomod_of() {
	local json
	json="$(go mod download -json "$1@$2")" || { echo "$json" >&2; return 1; }
	sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
}

# The go directive (and godebug lines) of a go.mod, to reuse in a wrapper module.
gomod_header() {
	grep -E '^(go [0-9]|godebug )' "$1"
}

# --- per-tool recipes: each writes its binaries into the dir given as $1 ---------

binaries_of() {
	case "$1" in
	etcd) echo etcd ;;
	kubernetes) echo kube-apiserver kube-controller-manager kube-scheduler kubectl ;;
	kwok) echo kwok ;;
	kustomize) echo kustomize ;;
	helm) echo helm ;;
	flux) echo flux ;;
	source-controller) echo source-controller ;;
	kustomize-controller) echo kustomize-controller ;;
	*) return 1 ;;
	esac
}

version_of() {
	case "$1" in
	etcd) echo "$ETCD_VERSION" ;;
	kubernetes) echo "$KUBERNETES_VERSION" ;;
	kwok) echo "$KWOK_VERSION" ;;
	kustomize) echo "$KUSTOMIZE_VERSION" ;;
	helm) echo "$HELM_VERSION" ;;
	flux) echo "$FLUX_VERSION" ;;
	source-controller) echo "$FLUX_SOURCE_CONTROLLER_VERSION" ;;
	kustomize-controller) echo "$FLUX_KUSTOMIZE_CONTROLLER_VERSION" ;;
	esac
}

build_etcd() {
	local out="$1" mod=go.etcd.io/etcd/server/v3 v="$ETCD_VERSION" src="$SRC_DIR/etcd-$ETCD_VERSION"
	local gomod
	gomod="$(gomod_of "$mod" "$v")"
	rm -rf "$src" && mkdir -p "$src"
	{
		echo "module weir.invalid/tools/etcd"
		echo
		gomod_header "$gomod"
		echo
		echo "require $mod $v"
		echo
		echo "tool $mod"
	} >"$src/go.mod"
	(cd "$src" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "$out/etcd" "$mod")
}

build_kubernetes() {
	local out="$1" mod=k8s.io/kubernetes v="$KUBERNETES_VERSION" src="$SRC_DIR/kubernetes-$KUBERNETES_VERSION"
	local gomod staging_v major minor staging pkgs=() b
	gomod="$(gomod_of "$mod" "$v")"
	staging_v="v0.${v#v1.}"            # v1.34.4 -> v0.34.4
	major="${v#v}"; major="${major%%.*}"
	minor="${v#v*.}"; minor="${minor%%.*}"
	# Every `k8s.io/x => ./staging/src/k8s.io/x` replace of the release's go.mod.
	staging="$(sed -n 's#^[[:space:]]*\(replace[[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]\{1,\}\)[[:space:]]\{1,\}=>[[:space:]]\{1,\}\./staging/src/.*#\2#p' "$gomod")"
	[ -n "$staging" ] || { echo "no ./staging replace directives found in $gomod" >&2; return 1; }
	echo "staging modules pinned to $staging_v: $(echo $staging)"
	for b in $(binaries_of kubernetes); do pkgs+=("$mod/cmd/$b"); done
	rm -rf "$src" && mkdir -p "$src"
	{
		echo "module weir.invalid/tools/kubernetes"
		echo
		gomod_header "$gomod"
		echo
		echo "require $mod $v"
		echo
		echo "replace ("
		for m in $staging; do echo "	$m => $m $staging_v"; done
		echo ")"
		echo
		echo "tool ("
		for p in "${pkgs[@]}"; do echo "	$p"; done
		echo ")"
	} >"$src/go.mod"
	local date ldflags="-s -w" p
	date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor"
		ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
	done
	(cd "$src" && go mod tidy && go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
}

build_kwok() {
	local out="$1"
	GOBIN="$out" go install -trimpath \
		-ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
		"sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_kustomize() {
	local out="$1"
	GOBIN="$out" go install -trimpath -ldflags "-s -w" \
		"sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
}

build_helm() {
	local out="$1" gomod cg ldflags p mod=helm.sh/helm/v4
	gomod="$(gomod_of "$mod" "$HELM_VERSION")"
	# Helm's Makefile derives the default Capabilities.KubeVersion from client-go (v0.N -> 1.N).
	cg="$(sed -n 's#^[[:space:]]*k8s.io/client-go[[:space:]]\{1,\}v0\.\([0-9]\{1,\}\)\..*#\1#p' "$gomod" | head -n1)"
	ldflags="-s -w -X $mod/internal/version.version=$HELM_VERSION"
	ldflags+=" -X $mod/internal/version.gitTreeState=clean"
	if [ -n "$cg" ]; then
		# The packages Helm 4's Makefile sets them in (an -X for a symbol a release lacks is
		# ignored by the linker).
		for p in pkg/chart/v2/lint/rules pkg/internal/v3/lint/rules pkg/chart/common/util \
			pkg/lint/rules pkg/chart/v2/util; do
			ldflags+=" -X $mod/$p.k8sVersionMajor=1 -X $mod/$p.k8sVersionMinor=$cg"
		done
	fi
	GOBIN="$out" go install -trimpath -ldflags "$ldflags" "$mod/cmd/helm@$HELM_VERSION"
}

build_flux() {
	local out="$1" mod=github.com/fluxcd/flux2/v2 v="$FLUX_VERSION" src="$SRC_DIR/flux-$FLUX_VERSION"
	local dir
	dir="$(go mod download -json "$mod@$v" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
	[ -d "$dir" ] || die "go mod download $mod@$v gave no source directory"
	rm -rf "$src" && cp -R "$dir" "$src" && chmod -R u+w "$src"
	mkdir -p "$src/cmd/flux/manifests"
	printf '# Placeholder: this flux CLI is a test client of Weir, built without Flux install manifests.\n' \
		>"$src/cmd/flux/manifests/placeholder.yaml"
	(cd "$src" && go build -trimpath -ldflags "-s -w -X main.VERSION=${v#v}" -o "$out/flux" ./cmd/flux)
}

# One of Flux's controllers (github.com/fluxcd/<name>, main package at the module root).
build_flux_controller() { # out name version [go mod edit args...]
	local out="$1" name="$2" v="$3" mod="github.com/fluxcd/$2" src="$SRC_DIR/$2-$3" dir
	shift 3
	dir="$(go mod download -json "$mod@$v" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
	[ -d "$dir" ] || die "go mod download $mod@$v gave no source directory"
	rm -rf "$src" && cp -R "$dir" "$src" && chmod -R u+w "$src"
	(
		cd "$src"
		go mod edit -dropreplace="$mod/api" "$@"
		GOFLAGS="$GOFLAGS -mod=mod" go get "$mod/api@$v"
		GOFLAGS="$GOFLAGS -mod=mod" go build -trimpath -ldflags "-s -w" -o "$out/$name" .
	)
	mkdir -p "$out/crds" && cp "$src"/config/crd/bases/*.yaml "$out/crds/"
}

build_source-controller() {
	build_flux_controller "$1" source-controller "$FLUX_SOURCE_CONTROLLER_VERSION" \
		-replace=github.com/fluxcd/pkg/artifact=github.com/fluxcd/pkg/artifact@v0.18.0
}

build_kustomize-controller() {
	build_flux_controller "$1" kustomize-controller "$FLUX_KUSTOMIZE_CONTROLLER_VERSION"
}

# --- driver ------------------------------------------------------------------------

link_current() { # tool version
	local b
	for b in $(binaries_of "$1"); do
		ln -sfn "../$1-$2/$b" "$CUR_DIR/$b"
	done
}

is_built() { # tool version
	local b
	for b in $(binaries_of "$1"); do
		[ -x "$BIN_DIR/$1-$2/$b" ] || return 1
	done
}

FAILED=()
build_one() {
	local t="$1" v dest tmp log start secs rc
	v="$(version_of "$t")"
	dest="$BIN_DIR/$t-$v"
	if is_built "$t" "$v"; then
		link_current "$t" "$v"
		echo "==> $t $v: already built ($dest)"
		return 0
	fi
	log="$LOG_DIR/$t-$v.log"
	tmp="$BIN_DIR/.tmp-$t-$v.$$"
	rm -rf "$tmp" && mkdir -p "$tmp"
	echo "==> $t $v: building $(binaries_of "$t" | tr ' ' ',') (log: $log)"
	start=$(date +%s)
	rc=0
	"build_$t" "$tmp" >"$log" 2>&1 || rc=$?
	secs=$(($(date +%s) - start))
	if [ "$rc" -ne 0 ] || ! is_built_in "$t" "$tmp"; then
		rm -rf "$tmp"
		local why
		why="$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 || true)"
		echo "tools.sh: FAILED to build $t $v after $(fmt_secs "$secs"): ${why:-exit $rc} (full log: $log)" >&2
		FAILED+=("$t")
		return 0
	fi
	rm -rf "$dest" && mv "$tmp" "$dest"
	link_current "$t" "$v"
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $t $v $(fmt_secs "$secs") (${secs}s)" >>"$TOOLS_DIR/build-times.log"
	echo "    $t $v built in $(fmt_secs "$secs")"
}

is_built_in() { # tool dir
	local b
	for b in $(binaries_of "$1"); do [ -x "$2/$b" ] || return 1; done
}

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=("${ALL_TOOLS[@]}")
for t in "${tools[@]}"; do
	binaries_of "$t" >/dev/null || die "unknown tool '$t' (known: ${ALL_TOOLS[*]} ${BENCH_TOOLS[*]})"
done
total_start=$(date +%s)
for t in "${tools[@]}"; do build_one "$t"; done
if [ ${#FAILED[@]} -gt 0 ]; then
	die "could not build: ${FAILED[*]} (see $LOG_DIR/)"
fi
echo "==> tools ready in $CUR_DIR ($(fmt_secs $(($(date +%s) - total_start))) total)"
