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
#   AIAAS_KAFKA_JVM_OPTS    other JVM options (default "-XX:+UseG1GC -XX:TieredStopAtLevel=1"). The second one
#                           keeps the JVM to its quick C1 compiler: a fresh broker's just-in-time compiling then
#                           settles in seconds instead of taking a share of the cores for minutes, which on a
#                           small machine shared with services, tests and benchmarks cost them more than C2's
#                           faster code saves (bench/results/2026-11-23-broker-jit-intel-xeon-2-50ghz-2c.md).
#                           For a long-lived broker on its own machine, "-XX:+UseG1GC" restores tiered compiling.
#   AIAAS_KAFKA_PARTITIONS  default partitions of topics created without a count (default 3); the broker
#                           creates no topic by itself (auto.create.topics.enable=false): aiaas creates its own
#
# Opt-in security (off by default; PLAINTEXT on the client port always stays, for tools and tests):
#   AIAAS_KAFKA_SCRAM_USERS "user:password[,user:password ...]" (no "," or '"' in a password): adds a
#                           SASL_PLAINTEXT listener on port + 2 offering SCRAM-SHA-256 and SCRAM-SHA-512
#                           with these users (written at format time; for an already-formatted state dir
#                           they are added or updated with kafka.admin.ConfigCommand after the start)
#   AIAAS_KAFKA_TLS=1       makes a local CA, a broker certificate (127.0.0.1, localhost) and a client
#                           certificate under <state dir>/tls (openssl) and adds an SSL listener on port + 3
#                           that requires a client certificate (mutual TLS), plus, with SCRAM users, a
#                           SASL_SSL listener on port + 4. Clients trust <state dir>/tls/ca.pem; the client
#                           certificate is tls/client.pem with its key tls/client.key.
#   AIAAS_KAFKA_ACLS=1      turns authorization on (needs SCRAM users or TLS): Kafka's StandardAuthorizer with
#                           allow.everyone.if.no.acl.found=false, so an authenticated principal may do only what an
#                           ACL allows (`aiaas acl apply` writes them; docs/security.md). Super users: the SCRAM
#                           users named in AIAAS_KAFKA_SUPER_USERS and User:ANONYMOUS, the principal of the
#                           PLAINTEXT and CONTROLLER listeners, which the node's broker uses to reach its own
#                           controller and itself (both bound to 127.0.0.1). Those two listeners are thus the local
#                           operator's door, never a tenant's: tenants and services connect to the SASL listener.
#   AIAAS_KAFKA_SUPER_USERS "name[,name ...]" SCRAM users who may do anything with AIAAS_KAFKA_ACLS=1 (default admin)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${AIAAS_KAFKA_PORT:-9092}"
controller_port="$((port + 1))"
state="${AIAAS_KAFKA_STATE_DIR:-$here/.state/$port}"
libs="$here/.dist/libs"
pidfile="$state/kafka.pid"
logfile="$state/kafka.log"
scram_users="${AIAAS_KAFKA_SCRAM_USERS:-}"
tls="${AIAAS_KAFKA_TLS:-}"
case "$tls" in 1|true|yes) tls=1 ;; ""|0|false|no) tls="" ;;
  *) echo "kafka.sh: AIAAS_KAFKA_TLS must be 1 or empty, not '$tls'" >&2; exit 2 ;; esac
acls="${AIAAS_KAFKA_ACLS:-}"
case "$acls" in 1|true|yes) acls=1 ;; ""|0|false|no) acls="" ;;
  *) echo "kafka.sh: AIAAS_KAFKA_ACLS must be 1 or empty, not '$acls'" >&2; exit 2 ;; esac
super_users="${AIAAS_KAFKA_SUPER_USERS:-admin}"
tls_dir="$state/tls"
read -ra jvm_opts <<<"${AIAAS_KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:TieredStopAtLevel=1}"
java_cmd=(java "-Xmx${AIAAS_KAFKA_HEAP:-512m}" "${jvm_opts[@]}" -Djava.awt.headless=true
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
  # The default listeners; the opt-in security modes (AIAAS_KAFKA_SCRAM_USERS, AIAAS_KAFKA_TLS) add theirs.
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port"
  local advertised="PLAINTEXT://127.0.0.1:$port"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  local extra=""
  if [ -n "$scram_users" ]; then
    listeners+=",SASL_PLAINTEXT://127.0.0.1:$((port + 2))"; advertised+=",SASL_PLAINTEXT://127.0.0.1:$((port + 2))"
    protocols+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
  fi
  if [ -n "$tls" ]; then
    listeners+=",SSL://127.0.0.1:$((port + 3))"; advertised+=",SSL://127.0.0.1:$((port + 3))"
    protocols+=",SSL:SSL"
    if [ -n "$scram_users" ]; then
      listeners+=",SASL_SSL://127.0.0.1:$((port + 4))"; advertised+=",SASL_SSL://127.0.0.1:$((port + 4))"
      protocols+=",SASL_SSL:SASL_SSL"
    fi
  fi
  if [ -n "$scram_users" ]; then
    extra+="sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512"$'\n'
    local name mechanism login="org.apache.kafka.common.security.scram.ScramLoginModule required;"
    for name in sasl_plaintext ${tls:+sasl_ssl}; do
      for mechanism in scram-sha-256 scram-sha-512; do
        extra+="listener.name.$name.$mechanism.sasl.jaas.config=$login"$'\n'
      done
    done
  fi
  if [ -n "$acls" ]; then
    # Deny by default; the broker's own principal (ANONYMOUS, on the loopback PLAINTEXT and CONTROLLER
    # listeners) must be a super user: the controller authorizes the broker's registration and heartbeats
    # before any ACL is loaded, and the transaction coordinator writes its markers through PLAINTEXT.
    extra+="authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"$'\n'
    extra+="allow.everyone.if.no.acl.found=false"$'\n'
    extra+="super.users=$(super_user_list)"$'\n'
  fi
  if [ -n "$tls" ]; then
    # PEM files straight from openssl (make_tls); the key is unencrypted and readable by its owner only.
    extra+="ssl.keystore.type=PEM"$'\n'"ssl.keystore.location=$tls_dir/broker-keystore.pem"$'\n'
    extra+="ssl.truststore.type=PEM"$'\n'"ssl.truststore.location=$tls_dir/ca.pem"$'\n'
    extra+="listener.name.ssl.ssl.client.auth=required"$'\n'
  fi
  cat >"$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
${extra}log.dirs=$state/data
num.partitions=${AIAAS_KAFKA_PARTITIONS:-3}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
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

scram_user_list() {
  # AIAAS_KAFKA_SCRAM_USERS as "name<TAB>password" lines, after checking its shape.
  local entry name password
  local -a entries
  IFS=',' read -ra entries <<<"$scram_users"
  for entry in "${entries[@]}"; do
    name="${entry%%:*}"; password="${entry#*:}"
    if [ "$name" = "$entry" ] || [ -z "$name" ] || [ -z "$password" ]; then
      echo "kafka.sh: AIAAS_KAFKA_SCRAM_USERS holds user:password pairs separated by commas, not '$entry'" >&2
      exit 2
    fi
    case "$name$password" in *[[:space:]\"=\[\]]*)
      echo "kafka.sh: SCRAM user names and passwords here may not contain spaces, quotes, '=', '[' or ']' ($name)" >&2
      exit 2 ;;
    esac
    printf '%s\t%s\n' "$name" "$password"
  done
}

super_user_list() {
  # super.users for AIAAS_KAFKA_ACLS: User:ANONYMOUS and each AIAAS_KAFKA_SUPER_USERS name, ';'-separated.
  local name list="User:ANONYMOUS"
  local -a names
  IFS=',' read -ra names <<<"$super_users"
  for name in "${names[@]}"; do
    case "$name" in ""|*[!A-Za-z0-9._@-]*)
      echo "kafka.sh: AIAAS_KAFKA_SUPER_USERS holds user names (letters, digits, . _ @ -) separated by commas, not '$name'" >&2
      exit 2 ;;
    esac
    list+=";User:$name"
  done
  printf '%s' "$list"
}

make_tls() {
  # A local CA, a broker certificate for 127.0.0.1/localhost and a client certificate, once per state dir.
  if [ -f "$tls_dir/broker-keystore.pem" ] && [ -f "$tls_dir/client.pem" ]; then return 0; fi
  command -v openssl >/dev/null || { echo "kafka.sh: AIAAS_KAFKA_TLS=1 needs openssl" >&2; exit 1; }
  mkdir -p "$tls_dir" && chmod 700 "$tls_dir"
  (
    set -e
    cd "$tls_dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=aiaas local CA" -keyout ca.key -out ca.pem \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    for who in broker client; do
      openssl req -newkey rsa:2048 -nodes -subj "/CN=aiaas-$who" -keyout "$who.key" -out "$who.csr"
      { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [ "$who" = broker ]; then
          echo "extendedKeyUsage=serverAuth"; echo "subjectAltName=IP:127.0.0.1,DNS:localhost"
        else echo "extendedKeyUsage=clientAuth"; fi; } >"$who.ext"
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -out "$who.pem" \
        -extfile "$who.ext"
    done
    cat broker.key broker.pem >broker-keystore.pem
    chmod 600 ./*.key broker-keystore.pem
  ) >"$state/tls.log" 2>&1 || {
    echo "kafka.sh: making the TLS certificates failed:" >&2; cat "$state/tls.log" >&2; exit 1; }
}

start() {
  fetch
  if running; then echo "kafka already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return 0; fi
  if [ -n "$acls" ] && [ -z "$scram_users" ] && [ -z "$tls" ]; then
    echo "kafka.sh: AIAAS_KAFKA_ACLS=1 needs authenticated clients: set AIAAS_KAFKA_SCRAM_USERS or AIAAS_KAFKA_TLS=1" >&2
    exit 2
  fi
  [ -z "$acls" ] || super_user_list >/dev/null || exit 2  # it said why
  local -a users=() scram_args=()
  local entry name password mechanism list formatted_now=""
  if [ -n "$scram_users" ]; then
    list="$(scram_user_list)" || exit 2  # it said why
    mapfile -t users <<<"$list"
    for entry in "${users[@]}"; do
      IFS=$'\t' read -r name password <<<"$entry"
      scram_args+=(--add-scram "SCRAM-SHA-256=[name=$name,password=$password]"
                   --add-scram "SCRAM-SHA-512=[name=$name,password=$password]")
    done
  fi
  mkdir -p "$state"
  [ -z "$tls" ] || make_tls
  write_config
  if [ ! -f "$state/data/meta.properties" ]; then
    "${java_cmd[@]}" kafka.tools.StorageTool format --standalone --ignore-formatted \
      --cluster-id "$(cluster_id)" -c "$state/server.properties" "${scram_args[@]}" >"$state/format.log" 2>&1 \
      || { cat "$state/format.log" >&2; exit 1; }
    formatted_now=1
  fi
  : >"$logfile"
  # setsid: the broker outlives this script and ignores the terminal's Ctrl-C; `stop` ends it.
  setsid "${java_cmd[@]}" kafka.Kafka "$state/server.properties" </dev/null >"$state/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  wait_ready
  if [ "${#users[@]}" -gt 0 ] && [ -z "$formatted_now" ]; then
    # Formatted earlier (perhaps without these users): add or update them through the running broker.
    : >"$state/scram.log"
    for entry in "${users[@]}"; do
      IFS=$'\t' read -r name password <<<"$entry"
      for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do  # one credential change per request
        java -Xmx256m -Djava.awt.headless=true -cp "$libs/*" kafka.admin.ConfigCommand \
          --bootstrap-server "127.0.0.1:$port" --alter --entity-type users --entity-name "$name" \
          --add-config "$mechanism=[password=$password]" >>"$state/scram.log" 2>&1 || {
          echo "kafka.sh: adding the SCRAM user $name failed ($state/scram.log); stopping the broker:" >&2
          tail -n 20 "$state/scram.log" >&2; stop >&2; exit 1; }
      done
    done
  fi
  if [ -n "$scram_users" ]; then echo "  SASL_PLAINTEXT (SCRAM-SHA-256/512) on 127.0.0.1:$((port + 2))"; fi
  if [ -n "$tls" ]; then
    echo "  SSL (client certificate required) on 127.0.0.1:$((port + 3))"
    echo "  CA $tls_dir/ca.pem, client certificate $tls_dir/client.pem, its key $tls_dir/client.key"
    if [ -n "$scram_users" ]; then echo "  SASL_SSL (SCRAM-SHA-256/512) on 127.0.0.1:$((port + 4))"; fi
  fi
  if [ -n "$acls" ]; then echo "  ACLs enforced (StandardAuthorizer); super users: $(super_user_list | tr ';' ' ')"; fi
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
