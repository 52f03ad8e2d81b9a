#!/usr/bin/env bash
# The main job end to end: local Kafka, the vision model built into the registry, the vision
# service as its own process, 300 jobs published with the CLI, results streamed back, a
# summary, and one job's full trace. Stops everything it started, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

export AIAAS_HOME="${AIAAS_HOME:-.aiaas/demo}"
port="${AIAAS_KAFKA_PORT:-9092}"
export AIAAS_KAFKA_PORT="$port" AIAAS_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
jobs="${DEMO_JOBS:-300}"
aiaas=.venv/bin/aiaas
logs="$AIAAS_HOME/logs"
mkdir -p "$logs"

started_kafka=no
service_pid=""
cleanup() {
  status=$?
  if [ -n "$service_pid" ] && kill -0 "$service_pid" 2>/dev/null; then
    echo "== stopping the vision service (SIGTERM: drain, commit, leave the group)"
    kill -TERM "$service_pid"; wait "$service_pid" 2>/dev/null || true
  fi
  if [ "$started_kafka" = yes ]; then echo "== stopping Kafka"; infra/kafka/kafka.sh stop; fi
  if [ $status -ne 0 ]; then echo "demo FAILED (exit $status); service log: $logs/vision.log" >&2; tail -n 30 "$logs/vision.log" >&2 || true; fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== Kafka (KRaft, single node) on 127.0.0.1:$port"
infra/kafka/kafka.sh status >/dev/null 2>&1 || started_kafka=yes
infra/kafka/kafka.sh start

echo "== building the vision model into the registry ($AIAAS_HOME/registry)"
"$aiaas" models build vision

echo "== starting the vision service (log: $logs/vision.log)"
.venv/bin/python -m aiaas.vision >"$logs/vision.log" 2>&1 &
service_pid=$!
for _ in $(seq 1 120); do
  grep -q "service ready" "$logs/vision.log" && break
  kill -0 "$service_pid" 2>/dev/null || { echo "the vision service exited" >&2; exit 1; }
  sleep 0.5
done
grep -q "service ready" "$logs/vision.log" || { echo "the vision service did not become ready in 60 s" >&2; exit 1; }

echo "== publishing $jobs held-out digits at once (a burst: throughput) and streaming their results back"
"$aiaas" submit vision --digits-sample "$jobs" --wait --quiet | tee "$logs/summary.txt"

echo "== publishing 100 more at 50 jobs/s (light load: latency)"
"$aiaas" submit vision --digits-sample 100 --rate 50 --wait --quiet | tee "$logs/summary-paced.txt"
job_id="$(awk '/example job id/ {print $4}' "$logs/summary-paced.txt")"

echo "== the trace of job $job_id (client → service → batch inference → result → client)"
"$aiaas" trace "$job_id"
