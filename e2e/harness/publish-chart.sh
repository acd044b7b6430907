#!/usr/bin/env bash
# Package a Helm chart into the harness chart repository and re-index it.
#
# Usage: e2e/harness/publish-chart.sh <chart-dir> [<chart-dir>...]
# Needs a running harness (make cluster-up): reads WEIR_CHARTS_DIR / WEIR_CHARTS_URL from
# $WEIR_TOOLS_DIR/cluster/env.sh and uses the pinned helm from $WEIR_TOOLS_DIR/bin/current.
# The chart is then installable from $WEIR_CHARTS_URL (index.yaml at its root).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TOOLS_DIR="${WEIR_TOOLS_DIR:-$ROOT/.tools}"
ENV_FILE="$TOOLS_DIR/cluster/env.sh"

die() { echo "publish-chart.sh: ERROR: $*" >&2; exit 1; }
[ $# -ge 1 ] || { echo "usage: $0 <chart-dir> [<chart-dir>...]" >&2; exit 2; }
[ -f "$ENV_FILE" ] || die "harness is not up (no $ENV_FILE); run: make cluster-up"
# shellcheck disable=SC1090
. "$ENV_FILE"
HELM="$WEIR_TOOLS_BIN/helm"
[ -x "$HELM" ] || die "helm not built ($HELM); run: make tools"

for chart in "$@"; do
	[ -f "$chart/Chart.yaml" ] || die "$chart is not a chart directory (no Chart.yaml)"
	"$HELM" package "$chart" --destination "$WEIR_CHARTS_DIR" >/dev/null ||
		die "helm package $chart failed"
done
"$HELM" repo index "$WEIR_CHARTS_DIR" --url "$WEIR_CHARTS_URL" || die "helm repo index failed"
echo "published $* to $WEIR_CHARTS_URL ($WEIR_CHARTS_DIR)"
