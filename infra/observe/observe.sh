#!/usr/bin/env bash
# Local tracing and metrics backends for development and tests: Jaeger v2 (OTLP in, query API out, traces in
# memory) and Prometheus (scrapes every aiaas process that announces itself with a target file).
#
#   infra/observe/observe.sh fetch [--background]  Prometheus: Debian's package (apt-get download, extracted into the
#                                                 cache, nothing installed system-wide); Jaeger: built from source
#                                                 with Go at the version pinned in infra/observe/jaeger/go.mod (some
#                                                 minutes the first time). --background returns at once; its output
#                                                 goes to <cache>/fetch.log
#   infra/observe/observe.sh wait-fetched [timeout_s [jaeger|prometheus]]
#                                                 wait (default 900 s) until the backends (or one) are fetched; exit 1
#                                                 with the fetch's log when it failed or none is running, exit 3
#                                                 when it still runs at the timeout
#   infra/observe/observe.sh start [jaeger|prometheus]  fetch if needed, start both (or one), wait until they answer
#   infra/observe/observe.sh stop [jaeger|prometheus]   stop both (or one)
#   infra/observe/observe.sh status               exit 0 when both run
#   infra/observe/observe.sh up                   what `make observe` runs: the local broker (infra/kafka/kafka.sh),
#                                                 both backends and the vision service exporting its spans to Jaeger
#                                                 (building a vision model first when the registry has none), then
#                                                 prints what to try
#   infra/observe/observe.sh down                 `make observe-stop`: stops what `up` started (the broker only if
#                                                 `up` started it)
#
# Settings (environment):
#   AIAAS_OBSERVE_CACHE          where the fetched backends live (default ~/.cache/aiaas/observe: outside the
#                                repository, so another clone reuses them)
#   AIAAS_OBSERVE_STATE_DIR      configs, data, logs and pid files (default infra/observe/.state)
#   AIAAS_OBSERVE_HOST           address both listen on (default 127.0.0.1)
#   AIAAS_OBSERVE_JAEGER_OTLP_PORT        OTLP over HTTP (default 4318): OTEL_EXPORTER_OTLP_ENDPOINT=http://host:port
#   AIAAS_OBSERVE_JAEGER_OTLP_GRPC_PORT   OTLP over gRPC (default 4317)
#   AIAAS_OBSERVE_JAEGER_UI_PORT          Jaeger's query API, and its UI in a build that has one (default 16686;
#                                         built from source it has none: docs/observe.md)
#   AIAAS_OBSERVE_JAEGER_QUERY_GRPC_PORT  Jaeger's query gRPC API (default 16685)
#   AIAAS_OBSERVE_PROMETHEUS_PORT         Prometheus UI and API (default 9090)
#   AIAAS_OBSERVE_TARGETS_DIR    the folder of file_sd target files Prometheus watches (default
#                                <AIAAS_HOME>/metrics/targets, AIAAS_HOME default .aiaas in the repository; a relative
#                                AIAAS_HOME is taken from the current directory, as a service started there takes it)
#   AIAAS_OBSERVE_PROMETHEUS_VERSION  Debian package version (default 2.42.0+ds-5+deb12u1, bookworm's)
#   AIAAS_OBSERVE_START_TIMEOUT  seconds to wait for a backend to answer (default 60)
# `up` also reads AIAAS_KAFKA_PORT (default 9092, see infra/kafka/kafka.sh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${AIAAS_OBSERVE_CACHE:-$HOME/.cache/aiaas/observe}"
state="${AIAAS_OBSERVE_STATE_DIR:-$here/.state}"
host="${AIAAS_OBSERVE_HOST:-127.0.0.1}"
otlp_port="${AIAAS_OBSERVE_JAEGER_OTLP_PORT:-4318}"
otlp_grpc_port="${AIAAS_OBSERVE_JAEGER_OTLP_GRPC_PORT:-4317}"
ui_port="${AIAAS_OBSERVE_JAEGER_UI_PORT:-16686}"
query_grpc_port="${AIAAS_OBSERVE_JAEGER_QUERY_GRPC_PORT:-16685}"
prometheus_port="${AIAAS_OBSERVE_PROMETHEUS_PORT:-9090}"
start_timeout="${AIAAS_OBSERVE_START_TIMEOUT:-60}"
home="${AIAAS_HOME:-$repo/.aiaas}"
case "$home" in /*) ;; *) home="$PWD/$home" ;; esac
targets="${AIAAS_OBSERVE_TARGETS_DIR:-$home/metrics/targets}"
case "$targets" in /*) ;; *) targets="$PWD/$targets" ;; esac

# The pins: Jaeger's version is the one infra/observe/jaeger/go.mod requires (go.sum holds the hashes of it and
# of everything it needs); Prometheus's is a Debian package version.
jaeger_version="$(awk '$1 == "github.com/jaegertracing/jaeger" {print $2}' "$here/jaeger/go.mod")"
prometheus_version="${AIAAS_OBSERVE_PROMETHEUS_VERSION:-2.42.0+ds-5+deb12u1}"
jaeger_bin="$cache/jaeger-$jaeger_version"
prometheus_root="$cache/prometheus-$prometheus_version"
prometheus_bin="$prometheus_root/usr/bin/prometheus"
fetch_status="$cache/fetch.status"
fetch_log="$cache/fetch.log"

die() { echo "observe.sh: $*" >&2; exit 1; }
binary() { if [ "$1" = jaeger ]; then echo "$jaeger_bin"; else echo "$prometheus_bin"; fi; }
fetched() { [ -x "$jaeger_bin" ] && [ -x "$prometheus_bin" ]; }

fetch_prometheus() {
  if [ -x "$prometheus_bin" ]; then return 0; fi
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || die "fetching Prometheus needs apt-get and dpkg-deb (Debian or Ubuntu); or put a prometheus binary at $prometheus_bin"
  echo "fetching Prometheus $prometheus_version (Debian package, extracted into $prometheus_root) ..."
  local tmp; tmp="$(mktemp -d)"
  # The package's classic web UI links its JavaScript and fonts from these packages (relative links into
  # /usr/share/javascript): extracted into the same root, the links resolve and the UI works.
  local ui_packages=(fonts-glyphicons-halflings libjs-bootstrap4 libjs-eonasdan-bootstrap-datetimepicker libjs-jquery
                     libjs-jquery-hotkeys libjs-moment libjs-moment-timezone libjs-mustache libjs-popper.js
                     libjs-rickshaw libjs-d3)
  if ! (cd "$tmp" && apt-get download "prometheus=$prometheus_version" "${ui_packages[@]}") >"$tmp/apt.log" 2>&1; then
    cat "$tmp/apt.log" >&2; rm -rf "$tmp"
    die "apt-get download failed. If it cannot find the packages, run 'apt-get update'. If the version is gone from
the archive, set AIAAS_OBSERVE_PROMETHEUS_VERSION to the one 'apt-cache policy prometheus' offers."
  fi
  rm -rf "$prometheus_root.tmp"
  local deb
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$prometheus_root.tmp"; done
  rm -rf "$tmp" "$prometheus_root"
  mv "$prometheus_root.tmp" "$prometheus_root"  # all or nothing: a half-extracted tree never looks fetched
  "$prometheus_bin" --version 2>&1 | head -n 1
}

fetch_jaeger() {
  if [ -x "$jaeger_bin" ]; then return 0; fi
  [ -n "$jaeger_version" ] || die "no github.com/jaegertracing/jaeger requirement in $here/jaeger/go.mod"
  command -v go >/dev/null || die "building Jaeger needs Go 1.24+ (https://go.dev/dl); or put a jaeger binary at $jaeger_bin"
  # `go install github.com/jaegertracing/jaeger/cmd/jaeger@version` is refused (Jaeger's go.mod has replace
  # directives), so the small module in infra/observe/jaeger names it as a tool and pins it; Go's caches
  # (GOCACHE, GOMODCACHE) make a second build quick.
  echo "building Jaeger $jaeger_version from source into $jaeger_bin (some minutes the first time) ..."
  local started=$SECONDS
  # -buildvcs=false: the binary needs no stamp of this repository's git state (which go may fail to read).
  (cd "$here/jaeger" && go build -buildvcs=false -o "$jaeger_bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger) \
    || { rm -f "$jaeger_bin.tmp"; die "building Jaeger failed (output above)"; }
  mv "$jaeger_bin.tmp" "$jaeger_bin"
  echo "built Jaeger $jaeger_version in $((SECONDS - started)) s"
}

fetch() {  # fetch [NAMES]: both backends, or the ones named
  mkdir -p "$cache"
  # One fetch at a time per cache (a background one and `start` may overlap): the second waits, then finds it done.
  exec 9>"$cache/.fetch.lock"
  flock 9
  echo "running $$" >"$fetch_status"
  trap 'rc=$?; if [ $rc -eq 0 ]; then echo ok >"$fetch_status"; else echo "failed $rc" >"$fetch_status"; fi' EXIT
  local name
  for name in ${1:-prometheus jaeger}; do "fetch_$name"; done
}

fetch_background() {
  mkdir -p "$cache"
  if fetched; then echo "observe backends already fetched ($cache)"; return 0; fi
  # A fetch holds the lock while it runs: then there is nothing to start (and its log is left alone).
  if ! flock -n "$cache/.fetch.lock" true; then
    echo "a fetch of the observe backends is already running (log $fetch_log)"; return 0
  fi
  # Written before the fetch starts, so its own word ("running", then "ok" or "failed") always comes after this one.
  echo "started $$" >"$fetch_status"
  # setsid: the build goes on when the caller (make, a terminal) goes; wait-fetched reports how it ended.
  setsid "$0" fetch </dev/null >"$fetch_log" 2>&1 &
  echo "fetching the observe backends in the background (log $fetch_log; wait with: $0 wait-fetched)"
}

wait_fetched() {  # wait_fetched TIMEOUT [NAME]: both backends, or the one named
  local timeout="${1:-900}" status pid which
  [[ "$timeout" =~ ^[0-9]+$ ]] || die "wait-fetched takes a timeout in whole seconds, not '$timeout'"
  which="$(components "${2:-}")"
  have() { local name; for name in $which; do [ -x "$(binary "$name")" ] || return 1; done; }
  local deadline=$((SECONDS + timeout))
  while ! have; do
    status="$(cat "$fetch_status" 2>/dev/null || true)"
    case "$status" in
      failed*)
        echo "observe.sh: fetching the observe backends failed ($status); its log ($fetch_log):" >&2
        tail -n 60 "$fetch_log" >&2 2>/dev/null || true
        exit 1 ;;
      started*|running*)
        pid="${status#* }"
        if ! kill -0 "$pid" 2>/dev/null && ! have; then
          # It may have just finished: read its final word once more before calling it lost.
          sleep 1; status="$(cat "$fetch_status" 2>/dev/null || true)"
          case "$status" in ok) continue ;; failed*) continue ;; esac
          have && break
          echo "observe.sh: the fetch (pid $pid) ended without finishing; its log ($fetch_log):" >&2
          tail -n 60 "$fetch_log" >&2 2>/dev/null || true
          exit 1
        fi ;;
      *)
        die "the observe backends are not fetched and no fetch is running: run '$0 fetch'" ;;
    esac
    if [ $SECONDS -ge "$deadline" ]; then
      echo "observe.sh: the observe backends were not fetched within $timeout s; the fetch goes on (log $fetch_log)" >&2
      exit 3
    fi
    sleep 2
  done
  for name in $which; do echo "$name fetched: $(binary "$name")"; done
}

pid_of() { cat "$state/$1.pid" 2>/dev/null || true; }
running() { local pid; pid="$(pid_of "$1")"; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

launch() {  # launch NAME COMMAND...: in its own session (it outlives this script), log and pid under the state dir
  local name=$1; shift
  : >"$state/$name.log"
  setsid "$@" </dev/null >"$state/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
}

ports_free() {  # ports_free NAME SETTING=PORT ...: exit 1 naming the setting when something listens on a port already
  local name=$1 pair; shift
  for pair in "$@"; do
    if (exec 3<>"/dev/tcp/$host/${pair#*=}") 2>/dev/null; then
      die "$name cannot start: a port is in use: ${pair%%=*}=${pair#*=} (another $name? set ${pair%%=*})"
    fi
  done
}

wait_answers() {  # wait_answers NAME URL PORT_SETTING: until URL answers 200; else the log, a stop and exit 1
  local name=$1 url=$2 setting=$3 deadline=$((SECONDS + start_timeout))
  while [ $SECONDS -lt $deadline ]; do
    if ! running "$name"; then
      if grep -q "address already in use" "$state/$name.log"; then
        echo "observe.sh: $name could not listen: a port is in use (set $setting, or stop what uses it); its log:" >&2
      else
        echo "observe.sh: $name exited during start; its log ($state/$name.log):" >&2
      fi
      tail -n 30 "$state/$name.log" >&2
      rm -f "$state/$name.pid"
      exit 1
    fi
    # Answered, and still running a moment later: not another instance answering while this one failed to bind.
    if curl -sf -o /dev/null --max-time 2 "$url" && sleep 0.5 && running "$name"; then return 0; fi
    sleep 0.3
  done
  echo "observe.sh: $name did not answer on $url within $start_timeout s; its log ($state/$name.log):" >&2
  tail -n 30 "$state/$name.log" >&2
  stop_one "$name" >&2
  exit 1
}

start_jaeger() {
  if running jaeger; then echo "jaeger already running (pid $(pid_of jaeger)): query API http://$host:$ui_port"; return 0; fi
  ports_free jaeger AIAAS_OBSERVE_JAEGER_OTLP_PORT="$otlp_port" AIAAS_OBSERVE_JAEGER_OTLP_GRPC_PORT="$otlp_grpc_port" \
    AIAAS_OBSERVE_JAEGER_UI_PORT="$ui_port" AIAAS_OBSERVE_JAEGER_QUERY_GRPC_PORT="$query_grpc_port"
  # jaeger.yaml reads its addresses from these.
  AIAAS_OBSERVE_HOST="$host" AIAAS_OBSERVE_JAEGER_OTLP_PORT="$otlp_port" \
    AIAAS_OBSERVE_JAEGER_OTLP_GRPC_PORT="$otlp_grpc_port" AIAAS_OBSERVE_JAEGER_UI_PORT="$ui_port" \
    AIAAS_OBSERVE_JAEGER_QUERY_GRPC_PORT="$query_grpc_port" \
    launch jaeger "$jaeger_bin" --config "$here/jaeger.yaml"
  wait_answers jaeger "http://$host:$ui_port/api/services" \
    "AIAAS_OBSERVE_JAEGER_UI_PORT ($ui_port), AIAAS_OBSERVE_JAEGER_QUERY_GRPC_PORT ($query_grpc_port), AIAAS_OBSERVE_JAEGER_OTLP_PORT ($otlp_port) or AIAAS_OBSERVE_JAEGER_OTLP_GRPC_PORT ($otlp_grpc_port)"
  # The query API can answer a moment before the OTLP receiver listens.
  local deadline=$((SECONDS + start_timeout))
  until (exec 3<>"/dev/tcp/$host/$otlp_port") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { stop_one jaeger >&2; die "jaeger's OTLP receiver did not listen on $host:$otlp_port"; }
    sleep 0.2
  done
  echo "jaeger $jaeger_version running (pid $(pid_of jaeger)): OTLP http://$host:$otlp_port (gRPC $otlp_grpc_port)," \
    "query API http://$host:$ui_port, log $state/jaeger.log"
}

write_prometheus_config() {
  cat >"$state/prometheus.yml" <<YAML
# Written by infra/observe/observe.sh start (edits are overwritten).
global:
  # A local development setup: one-second scrapes so a burst of jobs shows on a graph as it happens. A deployment
  # would scrape every 15-60 s. The timeout may not exceed the interval.
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s

scrape_configs:
  # Every aiaas process (service, trainer) writes its own target file here when it starts and removes it when it
  # stops: [{"targets": ["127.0.0.1:PORT"], "labels": {"aiaas_model": ..., "aiaas_role": ..., "aiaas_instance": ...}}].
  # Prometheus watches the folder, so a new process is scraped within a second and a stopped one goes away.
  - job_name: aiaas
    file_sd_configs:
      - files: ["$targets/*.json"]
        refresh_interval: 1s
YAML
}

start_prometheus() {
  if running prometheus; then
    echo "prometheus already running (pid $(pid_of prometheus)): http://$host:$prometheus_port"; return 0
  fi
  ports_free prometheus AIAAS_OBSERVE_PROMETHEUS_PORT="$prometheus_port"
  mkdir -p "$targets" "$state/prometheus-data"
  write_prometheus_config
  # Every path points into the extracted package or the state dir (the binary's defaults are /etc and /var/lib).
  launch prometheus "$prometheus_bin" --config.file="$state/prometheus.yml" \
    --storage.tsdb.path="$state/prometheus-data" --storage.tsdb.retention.time=2d \
    --web.listen-address="$host:$prometheus_port" \
    --web.local-assets="$prometheus_root/usr/share/prometheus/web/" \
    --web.console.templates="$prometheus_root/etc/prometheus/consoles" \
    --web.console.libraries="$prometheus_root/etc/prometheus/console_libraries"
  wait_answers prometheus "http://$host:$prometheus_port/-/ready" "AIAAS_OBSERVE_PROMETHEUS_PORT ($prometheus_port)"
  echo "prometheus $prometheus_version running (pid $(pid_of prometheus)): http://$host:$prometheus_port," \
    "targets from $targets/*.json, log $state/prometheus.log"
}

stop_one() {
  local name=$1 pid
  if ! running "$name"; then echo "$name not running"; rm -f "$state/$name.pid"; return 0; fi
  pid="$(pid_of "$name")"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then echo "$name did not stop in 15 s; killing it" >&2; kill -KILL "$pid"; fi
  rm -f "$state/$name.pid"
  echo "$name stopped"
}

components() {  # the backends a command acts on: the one named, or both
  case "${1:-}" in
    "") echo "jaeger prometheus" ;;
    jaeger|prometheus) echo "$1" ;;
    *) echo "observe.sh: '$1' is no backend: jaeger or prometheus" >&2; exit 2 ;;
  esac
}

start() {
  local which; which="$(components "${1:-}")"
  command -v curl >/dev/null || die "curl is needed to see when the backends answer"
  local name missing=""
  for name in $which; do [ -x "$(binary "$name")" ] || missing+=" $name"; done
  [ -z "$missing" ] || (fetch "$missing")  # a subshell: fetch's lock and exit trap (its status) end with it
  mkdir -p "$state"
  for name in $which; do "start_$name"; done
}

stop() {
  local which; which="$(components "${1:-}")"
  for name in $which; do stop_one "$name"; done
}

status() {
  local rc=0
  if running jaeger; then echo "jaeger running (pid $(pid_of jaeger)): query API http://$host:$ui_port, OTLP http://$host:$otlp_port"
  else echo "jaeger not running"; rc=1; fi
  if running prometheus; then echo "prometheus running (pid $(pid_of prometheus)): http://$host:$prometheus_port"
  else echo "prometheus not running"; rc=1; fi
  if running vision; then echo "vision service (observe.sh up) running (pid $(pid_of vision))"; fi
  return $rc
}

up() {
  local kafka_port="${AIAAS_KAFKA_PORT:-9092}" aiaas="$repo/.venv/bin/aiaas"
  [ -x "$aiaas" ] || die "no $aiaas: run 'make install' first"
  mkdir -p "$state"
  if ! "$repo/infra/kafka/kafka.sh" status >/dev/null 2>&1; then
    "$repo/infra/kafka/kafka.sh" start
    touch "$state/started-kafka"  # `down` stops only a broker that `up` started
  else
    "$repo/infra/kafka/kafka.sh" status
  fi
  start
  local -a env=(AIAAS_HOME="$home" AIAAS_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$kafka_port")
  if running vision; then
    echo "vision service already running (pid $(pid_of vision))"
  else
    # As infra/demo.sh does, but only when the registry has no production version yet (a build trains a few seconds).
    if ! env "${env[@]}" "$aiaas" models show vision >/dev/null 2>&1; then
      echo "building the vision model into $home/registry ..."
      env "${env[@]}" "$aiaas" models build vision
    fi
    (cd "$repo" && launch vision env "${env[@]}" OTEL_EXPORTER_OTLP_ENDPOINT="http://$host:$otlp_port" \
      "$aiaas" serve vision)
    local deadline=$((SECONDS + 120))
    until grep -q " ready: " "$state/vision.log"; do
      running vision || { tail -n 30 "$state/vision.log" >&2; die "the vision service exited during start"; }
      [ $SECONDS -lt $deadline ] || { tail -n 30 "$state/vision.log" >&2; stop_one vision >&2
                                      die "the vision service did not become ready in 120 s"; }
      sleep 0.5
    done
    echo "vision service running (pid $(pid_of vision)), spans to Jaeger, log $state/vision.log"
  fi
  local cli=".venv/bin/aiaas" shown_home="$home"
  [ "$home" != "$repo/.aiaas" ] || shown_home=".aiaas"  # the commands below run in the repository
  local prefix="AIAAS_HOME=$shown_home OTEL_EXPORTER_OTLP_ENDPOINT=http://$host:$otlp_port"
  [ "$kafka_port" = 9092 ] || prefix+=" AIAAS_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$kafka_port"
  cat <<EOF

Running: Kafka on 127.0.0.1:$kafka_port, Jaeger, Prometheus and the vision service. Next:
  publish jobs (the CLI's spans go to Jaeger too):
    $prefix $cli submit vision --digits-sample 200 --rate 20 --wait --quiet
  a job's trace, read from Jaeger (the job id is in the submit's output):
    AIAAS_HOME=$shown_home $cli trace <job id> --jaeger http://$host:$ui_port
  traces:   http://$host:$ui_port/api/traces?service=aiaas-cli&limit=20  (Jaeger's query API, JSON; one job's trace:
            /api/traces/<trace id>. Built from source, Jaeger serves a placeholder page where its UI would be:
            docs/observe.md says why and where to get the UI)
  metrics:  http://$host:$prometheus_port/classic/targets  and e.g. http://$host:$prometheus_port/classic/graph?g0.expr=up
            (Debian's Prometheus has the classic UI only; the HTTP API is the same: /api/v1/query?query=up)
EOF
  if "$aiaas" top --help >/dev/null 2>&1; then echo "  live view: AIAAS_HOME=$shown_home $cli top"; fi
  echo "  stop:     make observe-stop"
}

down() {
  stop_one vision
  stop
  if [ -f "$state/started-kafka" ]; then
    "$repo/infra/kafka/kafka.sh" stop
    rm -f "$state/started-kafka"
  fi
}

# In braces with its exit: bash reads the whole block before it runs it, so a background fetch (minutes) is not
# thrown off when this file changes meanwhile (a pull, an edit): bash reads a script as it goes.
{
case "${1:-}" in
  fetch)
    case "${2:-}" in
      "") fetch ;;
      --background) fetch_background ;;
      *) echo "usage: $0 fetch [--background]" >&2; exit 2 ;;
    esac ;;
  wait-fetched) wait_fetched "${2:-900}" "${3:-}" ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  status) status ;;
  up) up ;;
  down) down ;;
  *) echo "usage: $0 fetch [--background]|wait-fetched [timeout_s [name]]|start|stop [jaeger|prometheus]|status|up|down" >&2
     exit 2 ;;
esac
exit
}
