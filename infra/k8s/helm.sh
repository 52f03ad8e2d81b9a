#!/usr/bin/env bash
# Helm for the aiaas chart (infra/k8s/aiaas), built from source through the Go module proxy: no binary download
# from anywhere else, the same version on every machine.
#
#   infra/k8s/helm.sh fetch              build helm (pinned below) once into the cache; print the binary's path
#   infra/k8s/helm.sh lint [ARGS...]     helm lint --strict of the chart (ARGS: e.g. -f my-values.yaml)
#   infra/k8s/helm.sh template [ARGS...] render the chart (release name `aiaas`) to stdout
#   infra/k8s/helm.sh [HELM ARGS...]     any other helm command (install, upgrade, ...), fetching first
#
# Settings (environment):
#   AIAAS_HELM_CACHE   where the binary is kept (default ~/.cache/aiaas/helm, outside the repository); the
#                      binary lands in <cache>/<version>/helm
#   AIAAS_HELM         a helm binary to use instead of building one (must be v4)
#
# Needs Go (helm v4.3.2 asks for 1.26; an older go fetches that toolchain through the module proxy by itself;
# `go` on PATH or /usr/local/go/bin). The first build takes minutes on 2 cores (the
# module downloads go to Go's own cache); later calls find the binary at once.
set -euo pipefail

HELM_VERSION=v4.3.2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHART="$HERE/aiaas"
CACHE="${AIAAS_HELM_CACHE:-${HOME:-/tmp}/.cache/aiaas/helm}"
BIN_DIR="$CACHE/$HELM_VERSION"

find_go() {
    if command -v go >/dev/null 2>&1; then command -v go
    elif [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go
    else echo "helm.sh: Go is needed to build helm $HELM_VERSION (https://go.dev/doc/install)" >&2; return 1
    fi
}

# `go install pkg@version` builds the module as released (its own go.sum), in module mode whatever directory it
# runs in. It is built into a temporary folder and moved into place, under a lock, so that two test runs
# building at once never see half a binary.
fetch() {
    if [ -n "${AIAAS_HELM:-}" ]; then echo "$AIAAS_HELM"; return; fi
    if [ -x "$BIN_DIR/helm" ]; then echo "$BIN_DIR/helm"; return; fi
    local go; go="$(find_go)"
    mkdir -p "$BIN_DIR"
    exec 9>"$BIN_DIR/.lock"
    if command -v flock >/dev/null 2>&1; then flock 9; fi
    if [ ! -x "$BIN_DIR/helm" ]; then
        local tmp; tmp="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
        echo "helm.sh: building helm $HELM_VERSION from the Go module proxy into $BIN_DIR (minutes, once)" >&2
        local started=$SECONDS
        (cd "$tmp" && GOBIN="$tmp" GOWORK=off "$go" install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION") >&2 \
            || { rm -rf "$tmp"; echo "helm.sh: building helm $HELM_VERSION failed" >&2; return 1; }
        mv "$tmp/helm" "$BIN_DIR/helm"
        rm -rf "$tmp"
        echo "helm.sh: built in $((SECONDS - started)) s" >&2
    fi
    echo "$BIN_DIR/helm"
}

main() {
    local cmd="${1:-}"
    case "$cmd" in
        fetch) fetch ;;
        lint) shift; helm="$(fetch)"; exec "$helm" lint --strict "$CHART" "$@" ;;
        template) shift; helm="$(fetch)"; exec "$helm" template aiaas "$CHART" "$@" ;;
        ""|-h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' ;;
        *) helm="$(fetch)"; exec "$helm" "$@" ;;
    esac
}

main "$@"
