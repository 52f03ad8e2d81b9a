#!/usr/bin/env bash
# The main job end to end: local Kafka; the vision, text, recsys and llm models built into the
# registry; each service as its own process; jobs published with the CLI, results streamed
# back, a summary per service, one job of each kind shown, and one job's full trace; an LLM
# answer streamed as it is generated, a batch of questions, a cancelled answer and its trace;
# then a training job: a trainer fine-tunes vision, the new version is promoted, and the running
# vision service switches to it (hot reload) — with the training job's trace; and a fine-tuning job: a LoRA
# adapter for the LLM, and one held-out request answered by the base and by the adapter.
# Stops everything it started, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

export AIAAS_HOME="${AIAAS_HOME:-.aiaas/demo}"
port="${AIAAS_KAFKA_PORT:-9092}"
export AIAAS_KAFKA_PORT="$port" AIAAS_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
jobs="${DEMO_JOBS:-300}"
aiaas=.venv/bin/aiaas
logs="$AIAAS_HOME/logs"
models=(vision text recsys llm)
mkdir -p "$logs"

started_kafka=no
declare -A service_pid=()
cleanup() {
  status=$?
  for model in "${!service_pid[@]}"; do
    pid="${service_pid[$model]}"
    if kill -0 "$pid" 2>/dev/null; then
      echo "== stopping the $model service (SIGTERM: drain, commit, leave the group)"
      kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    fi
  done
  if [ "$started_kafka" = yes ]; then echo "== stopping Kafka"; infra/kafka/kafka.sh stop; fi
  if [ $status -ne 0 ]; then
    echo "demo FAILED (exit $status); service logs in $logs/" >&2
    for model in "${models[@]}"; do [ -f "$logs/$model.log" ] && tail -n 15 "$logs/$model.log" >&2; done
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_service() {  # start `aiaas serve|trainer $2` (log $logs/$3.log) and wait for its "ready:" line
  local command=$1 model=$2 name=${3:-$2}
  "$aiaas" "$command" "$model" >"$logs/$name.log" 2>&1 &
  service_pid[$name]=$!
  for _ in $(seq 1 240); do
    grep -q " ready: " "$logs/$name.log" && return 0
    kill -0 "${service_pid[$name]}" 2>/dev/null || { echo "the $name service exited" >&2; return 1; }
    sleep 0.5
  done
  echo "the $name service did not become ready in 120 s" >&2; return 1
}

echo "== Kafka (KRaft, single node) on 127.0.0.1:$port"
infra/kafka/kafka.sh status >/dev/null 2>&1 || started_kafka=yes
infra/kafka/kafka.sh start

for model in "${models[@]}"; do
  echo "== building the $model model into the registry ($AIAAS_HOME/registry)"
  "$aiaas" models build "$model"
done

for model in "${models[@]}"; do
  echo "== starting the $model service (log: $logs/$model.log)"
  start_service serve "$model"
done

echo
echo "######## vision: digit images → label"
echo "== $jobs held-out digits at once (a burst: throughput)"
"$aiaas" submit vision --digits-sample "$jobs" --wait --quiet | tee "$logs/summary-vision.txt"
echo "== 100 more at 50 jobs/s (light load: latency)"
"$aiaas" submit vision --digits-sample 100 --rate 50 --wait --quiet | tee "$logs/summary-vision-paced.txt"

echo
echo "######## text: embeddings, similarity, topic classification"
echo "== one job of each task"
"$aiaas" submit text --embed "Kafka moves the jobs" "ONNX Runtime runs the model" \
  --similarity "The match went to extra time." "They won the game after extra time." \
  --classify "The central bank left interest rates unchanged." --wait | sed '/^summary/,$d'
echo "== 108 held-out labelled sentences at once (classify)"
"$aiaas" submit text --text-sample 108 --wait --quiet | tee "$logs/summary-text.txt"

echo
echo "######## recsys: recommendations from matrix factorisation"
echo "== one job of each task"
"$aiaas" submit recsys --recommend 7 --k 5 --wait | sed '/^summary/,$d'
"$aiaas" submit recsys --recommend 999999 --k 5 --wait | sed '/^summary/,$d'
"$aiaas" submit recsys --similar-items 3 --k 5 --wait | sed '/^summary/,$d'
echo "== $jobs held-out users at once (recommend, hit = a held-out item in the top 10)"
"$aiaas" submit recsys --users-sample "$jobs" --wait --quiet | tee "$logs/summary-recsys.txt"

job_id="$(awk '/example job id/ {print $4}' "$logs/summary-vision-paced.txt")"
echo
echo "== the trace of job $job_id (client → service → batch inference → result → client)"
"$aiaas" trace "$job_id"

echo
echo "######## llm: SmolLM2-135M-Instruct, tokens streamed back over Kafka"
echo "== aiaas submit llm --chat \"What is the capital of France?\" --stream"
"$aiaas" submit llm --chat "What is the capital of France?" --stream
echo "== the 12 shipped questions at once (they share the running batch: continuous batching)"
"$aiaas" submit llm --questions-sample 12 --wait --quiet | tee "$logs/summary-llm.txt"
echo "== a long answer, streamed, and cancelled after 3 s (what Ctrl-C does)"
timeout -s INT 3 "$aiaas" submit llm --chat "Write a long story about a dragon and a knight." --max-tokens 400 \
  --stream | tee "$logs/llm-cancelled.txt" || true
llm_id="$(sed -n 's/.*\[cancelled \(.*\)\]/\1/p' "$logs/llm-cancelled.txt")"
if [ -n "$llm_id" ]; then
  sleep 1
  echo "== the trace of LLM job $llm_id (GenAI attributes, the first token, every chunk sent)"
  "$aiaas" trace "$llm_id"
fi

echo
echo "######## training: a vision training job, promotion, hot reload"
echo "== starting the vision trainer (log: $logs/vision-trainer.log)"
start_service trainer vision vision-trainer
echo "== aiaas train vision --epochs 6 --learning-rate 0.0005 --base-version production --follow"
"$aiaas" train vision --epochs 6 --learning-rate 0.0005 --base-version production --follow | tee "$logs/training.txt"
"$aiaas" models list
echo "== 100 digits after the training job: the service now answers with the new version"
"$aiaas" submit vision --digits-sample 100 --wait --quiet | grep -E "results|accuracy|model versions"
train_id="$(awk '/^training job/ {print $3}' "$logs/training.txt")"
echo "== the trace of training job $train_id (client → trainer → registry → announcement → service reload)"
"$aiaas" trace "$train_id" | grep -v "status=running"

echo
echo "######## fine-tuning: a LoRA adapter for the LLM, trained from a Kafka job"
echo "== starting the llm trainer (log: $logs/llm-trainer.log)"
start_service trainer llm llm-trainer
echo "== aiaas train llm --set max_steps=12 --follow (the built-in set: a sentence about a person → JSON)"
"$aiaas" train llm --set max_steps=12 --follow | tee "$logs/fine-tuning.txt"
adapter="$(sed -n 's/^succeeded: llm v\([0-9]*\).*/\1/p' "$logs/fine-tuning.txt")"
question=$'Extract the person as JSON with the keys name, age, city and job.\n\nOur new neighbour Ida is a chef, 41 years old, from Ghent.'
echo "== a held-out request to the base model (production)"
"$aiaas" submit llm --chat "$question" --max-tokens 60 --wait | sed '/^summary/,$d'
echo "== the same request to the adapter (--version v$adapter): the shape it learned"
"$aiaas" submit llm --chat "$question" --max-tokens 60 --version "v$adapter" --wait | sed '/^summary/,$d'
