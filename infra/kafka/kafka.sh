#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker + controller) for development and tests.
#
#   infra/kafka/kafka.sh fetch    copy the pinned broker jars from Maven Central (pom.xml)
#   infra/kafka/kafka.sh start    fetch if needed, format once, start, wait until it answers
#   infra/kafka/kafka.sh stop     stop it cleanly (SIGTERM, then wait for the controlled shutdown)
#   infra/kafka/kafka.sh status   exit 0 when it is running
#
# Settings (environment):
#   AIAAS_KAFKA_PORT        client port (default 9092); the controller uses port + 1
#   AIAAS_KAFKA_STATE_DIR   where data, log and pid live (default infra/kafka/.state/<port>)
#   AIAAS_KAFKA_HEAP        JVM heap (default 512m)
#   AIAAS_KAFKA_PARTITIONS  default partitions of auto-created topics (default 3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${AIAAS_KAFKA_PORT:-9092}"
controller_port="$((port + 1))"
state="${AIAAS_KAFKA_STATE_DIR:-$here/.state/$port}"
libs="$here/.dist/libs"
pidfile="$state/kafka.pid"
logfile="$state/kafka.log"
java_cmd=(java "-Xmx${AIAAS_KAFKA_HEAP:-512m}" -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$state/log4j2.properties" -cp "$libs/*")

fetch() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch the broker" >&2; exit 1; }
  command -v java >/dev/null || { echo "kafka.sh: Java 17+ is needed to run the broker" >&2; exit 1; }
  echo "fetching Apache Kafka from Maven Central (pinned in infra/kafka/pom.xml) ..."
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies
  touch "$libs/.complete"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

write_config() {
  mkdir -p "$state/data"
  cat >"$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$state/data
num.partitions=${AIAAS_KAFKA_PARTITIONS:-3}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
message.max.bytes=8388608
PROPS
  cat >"$state/log4j2.properties" <<PROPS
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = $logfile
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
PROPS
}


start() {
  fetch
  if running; then echo "kafka already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return 0; fi
  write_config
  if [ ! -f "$state/data/meta.properties" ]; then
    "${java_cmd[@]}" kafka.tools.StorageTool format --standalone --ignore-formatted \
      --cluster-id "$(cluster_id)" -c "$state/server.properties" >"$state/format.log" 2>&1 \
      || { cat "$state/format.log" >&2; exit 1; }
  fi
  : >"$logfile"
  # setsid: the broker outlives this script and ignores the terminal's Ctrl-C; `stop` ends it.
  setsid "${java_cmd[@]}" kafka.Kafka "$state/server.properties" </dev/null >"$state/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  wait_ready
}

cluster_id() {
  # A KRaft cluster id is 16 random bytes, base64url without padding (22 characters);
  # "+" and "/" become letters so the id never starts with "-" (read as a flag).
  head -c 16 /dev/urandom | base64 | tr '+/' 'AB' | tr -d '=\n'
}

wait_ready() {
  local deadline=$((SECONDS + ${AIAAS_KAFKA_START_TIMEOUT:-90}))
  while [ $SECONDS -lt $deadline ]; do
    if ! running; then
      echo "kafka.sh: the broker exited during start; its log ($logfile):" >&2
      tail -n 40 "$logfile" "$state/stdout.log" >&2 || true
      exit 1
    fi
    if grep -q "Kafka Server started" "$logfile" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "kafka running on 127.0.0.1:$port (pid $(cat "$pidfile"), log $logfile)"
      return 0
    fi
    sleep 0.5
  done
  echo "kafka.sh: the broker did not answer on 127.0.0.1:$port in time; its log ($logfile):" >&2
  tail -n 40 "$logfile" >&2 || true
  exit 1
}

stop() {
  if ! running; then echo "kafka not running on port $port"; rm -f "$pidfile"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then echo "kafka did not stop in 30 s; killing it" >&2; kill -KILL "$pid"; fi
  rm -f "$pidfile"
  echo "kafka stopped (port $port)"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) running && echo "kafka running on 127.0.0.1:$port (pid $(cat "$pidfile"))" || { echo "kafka not running on port $port"; exit 1; } ;;
  *) echo "usage: $0 fetch|start|stop|status" >&2; exit 2 ;;
esac
