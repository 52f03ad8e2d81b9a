#!/usr/bin/env bash
# Local Apache Kafka (KRaft) for development and tests: a single node (combined broker + controller), or a
# cluster of three such nodes.
#
#   infra/kafka/kafka.sh fetch    copy the pinned broker jars from Maven Central (pom.xml) into
#                                 .dist/libs-<version>-<hash of pom.xml> (a new pin gets a new folder; the old
#                                 pin's folders are removed once no running broker uses them)
#   infra/kafka/kafka.sh start    fetch if needed, format once, start, wait until it answers
#   infra/kafka/kafka.sh stop     stop it cleanly (SIGTERM, then wait for the controlled shutdown)
#   infra/kafka/kafka.sh status   exit 0 when it is running
#
# A 3-node cluster (three combined broker + controller nodes on 127.0.0.1, one cluster id, a static controller
# quorum of the three: controller.quorum.voters), for replication and leader failover:
#   infra/kafka/kafka.sh cluster start          fetch if needed, format each node once, start all three, wait
#                                               until each answers; prints the bootstrap list
#   infra/kafka/kafka.sh cluster stop           stop all three (SIGTERM to all at once: a node stopped last,
#                                               alone, would wait in vain for a controller quorum)
#   infra/kafka/kafka.sh cluster status         one line per node; exit 0 when all three run
#   infra/kafka/kafka.sh cluster start|stop N   start (after a stop or kill) or cleanly stop node N (1, 2 or 3)
#   infra/kafka/kafka.sh cluster kill N         kill -9 node N (no controlled shutdown: a crash)
#   infra/kafka/kafka.sh cluster restart N      stop node N and start it again
#   infra/kafka/kafka.sh cluster bootstrap      print the bootstrap list (127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3)
#   infra/kafka/kafka.sh cluster describe [T]   leader, replicas and ISR of every partition (of topic T)
# Node N (1..3) listens on AIAAS_KAFKA_PORT + 5 x (N - 1) (9092, 9097, 9102 by default), its controller on that
# port + 1; state in AIAAS_KAFKA_STATE_DIR (default infra/kafka/.state/cluster-<port>)/node<N>. Topics created
# without a count get default.replication.factor=3; min.insync.replicas=2 (so acks=all survives one node down),
# and the offsets and transaction state topics are replicated 3 times (transaction.state.log.min.isr=2).
# Clients: AIAAS_KAFKA_BOOTSTRAP_SERVERS=<the bootstrap list> AIAAS_KAFKA_REPLICATION_FACTOR=3. The cluster is
# PLAINTEXT only (the opt-in security below is for the single node). tests/faults/cluster.py drives it from
# Python and finds the leader of a partition.
#
# Settings (environment):
#   AIAAS_KAFKA_PORT        client port (default 9092); the controller uses port + 1 (a cluster: see above)
#   AIAAS_KAFKA_STATE_DIR   where data, log and pid live (default infra/kafka/.state/<port>)
#   AIAAS_KAFKA_HEAP        JVM heap (default 512m; 384m per node of a cluster)
#   AIAAS_KAFKA_JAVA        the java to run (default: java on PATH); Kafka 4.4 needs Java 17 or newer
#   AIAAS_KAFKA_JVM_OPTS    other JVM options (default "-XX:+UseG1GC -XX:TieredStopAtLevel=1"). The second one
#                           keeps the JVM to its quick C1 compiler: a fresh broker's just-in-time compiling then
#                           settles in seconds instead of taking a share of the cores for minutes, which on a
#                           small machine shared with services, tests and benchmarks cost them more than C2's
#                           faster code saves (bench/results/2026-11-23-broker-jit-intel-xeon-2-50ghz-2c.md).
#                           For a long-lived broker on its own machine, "-XX:+UseG1GC" restores tiered compiling.
#   AIAAS_KAFKA_PARTITIONS  default partitions of topics created without a count (default 3); the broker
#                           creates no topic by itself (auto.create.topics.enable=false): aiaas creates its own
# Client quotas (`aiaas acl apply --producer-byte-rate …`, docs/security.md) are averaged over 2 windows of 1 s
# (quota.window.num=2; Kafka's default of 11 lets a client send ~10 s worth of its quota before any throttle), so a
# tenant's flood is throttled after about one second's worth.
#
# Opt-in security (off by default; PLAINTEXT on the client port always stays, for tools and tests):
#   AIAAS_KAFKA_SCRAM_USERS "user:password[,user:password ...]" (no "," or '"' in a password): adds a
#                           SASL_PLAINTEXT listener on port + 2 offering SCRAM-SHA-256 and SCRAM-SHA-512
#                           with these users (written at format time; for an already-formatted state dir
#                           they are added or updated with Kafka's ConfigCommand after the start)
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
base_port="${AIAAS_KAFKA_PORT:-9092}"
case "$base_port" in ""|*[!0-9]*) echo "kafka.sh: AIAAS_KAFKA_PORT must be a port number, not '$base_port'" >&2; exit 2 ;; esac
java="${AIAAS_KAFKA_JAVA:-java}"
scram_users="${AIAAS_KAFKA_SCRAM_USERS:-}"
tls="${AIAAS_KAFKA_TLS:-}"
case "$tls" in 1|true|yes) tls=1 ;; ""|0|false|no) tls="" ;;
  *) echo "kafka.sh: AIAAS_KAFKA_TLS must be 1 or empty, not '$tls'" >&2; exit 2 ;; esac
acls="${AIAAS_KAFKA_ACLS:-}"
case "$acls" in 1|true|yes) acls=1 ;; ""|0|false|no) acls="" ;;
  *) echo "kafka.sh: AIAAS_KAFKA_ACLS must be 1 or empty, not '$acls'" >&2; exit 2 ;; esac
super_users="${AIAAS_KAFKA_SUPER_USERS:-admin}"
read -ra jvm_opts <<<"${AIAAS_KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:TieredStopAtLevel=1}"

# The jars of the pinned version live in a folder named after the pin and a hash of pom.xml: changing the pin (or
# anything else in pom.xml) fetches into a new folder, so a broker never runs on a mix of two versions' jars.
kafka_version="$(sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$here/pom.xml" | head -n 1)"
libs="$here/.dist/libs-${kafka_version:-unknown}-$(sha256sum "$here/pom.xml" | cut -c1-12)"

# The node this invocation acts on: the single node, or node N of the cluster (use_node).
cluster=""
node_id=1
nodes=3
cluster_state="${AIAAS_KAFKA_STATE_DIR:-$here/.state/cluster-$base_port}"
heap="${AIAAS_KAFKA_HEAP:-512m}"

use_node() {
  # Point port, state, pid file and log at the single node (no argument) or at node $1 of the cluster.
  if [ -n "${1:-}" ]; then
    node_id="$1"
    port="$((base_port + 5 * (node_id - 1)))"
    state="$cluster_state/node$node_id"
  else
    node_id=1
    port="$base_port"
    state="${AIAAS_KAFKA_STATE_DIR:-$here/.state/$port}"
  fi
  controller_port="$((port + 1))"
  pidfile="$state/kafka.pid"
  logfile="$state/kafka.log"
  tls_dir="$state/tls"
  java_cmd=("$java" "-Xmx$heap" "${jvm_opts[@]}" -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$state/log4j2.properties" -cp "$libs/*")
}

use_node

fetch() {
  if [ -f "$libs/.complete" ]; then prune_old_libs; return 0; fi
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch the broker" >&2; exit 1; }
  command -v "$java" >/dev/null || { echo "kafka.sh: Java 17+ is needed to run the broker" >&2; exit 1; }
  echo "fetching Apache Kafka $kafka_version from Maven Central (pinned in infra/kafka/pom.xml) ..."
  mkdir -p "$here/.dist"
  # Into a folder of this process's own, then renamed: a broker started meanwhile never sees half of the jars,
  # and of two fetches at once the second one's rename fails harmlessly.
  local tmp="$libs.fetching.$$"
  rm -rf "$tmp"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies "-Dkafka.libs=$tmp" || { rm -rf "$tmp"; exit 1; }
  touch "$tmp/.complete"
  mv -T "$tmp" "$libs" 2>/dev/null || rm -rf "$tmp"
  [ -f "$libs/.complete" ] || { echo "kafka.sh: fetching into $libs failed" >&2; exit 1; }
  prune_old_libs
}

prune_old_libs() {
  # Jars of earlier pins (and the unversioned .dist/libs of before): removed unless a running JVM has them on its
  # classpath (a broker started before the pin changed goes on with its own jars until it stops).
  local old processes
  processes="$(ps -eww -o args=)"  # read whole, not piped into grep -q (an early exit would fail the pipe)
  for old in "$here/.dist/libs" "$here/.dist"/libs-*; do
    [ -d "$old" ] && [ "$old" != "$libs" ] || continue
    case "$old" in *.fetching.*) continue ;; esac
    if grep -qF -- "$old/*" <<<"$processes"; then
      echo "kafka.sh: keeping $old: a running broker uses it" >&2
    else
      rm -rf "$old"
    fi
  done
}

check_java() {
  # Kafka 4.x brokers need Java 17+ (their classes are Java 17 bytecode).
  local version
  version="$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')" \
    || true  # no java at all: said below
  case "$version" in
    ""|1.*|9|1[0-6]) echo "kafka.sh: Kafka $kafka_version needs Java 17 or newer; '$java' is ${version:-unknown}" \
                       "(set AIAAS_KAFKA_JAVA)" >&2; exit 1 ;;
  esac
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

cluster_voters() {
  local i list=""
  for i in $(seq 1 "$nodes"); do list+="${list:+,}$i@127.0.0.1:$((base_port + 5 * (i - 1) + 1))"; done
  printf '%s' "$list"
}

cluster_bootstrap() {
  local i list=""
  for i in $(seq 1 "$nodes"); do list+="${list:+,}127.0.0.1:$((base_port + 5 * (i - 1)))"; done
  printf '%s' "$list"
}

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
  local quorum replicas=1 min_isr=1
  if [ -n "$cluster" ]; then
    # A static quorum of the three nodes' controllers; every topic replicated on all three.
    quorum="controller.quorum.voters=$(cluster_voters)"
    replicas=3 min_isr=2
  else
    quorum="controller.quorum.bootstrap.servers=127.0.0.1:$controller_port"
  fi
  cat >"$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=$node_id
$quorum
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
${extra}log.dirs=$state/data
num.partitions=${AIAAS_KAFKA_PARTITIONS:-3}
default.replication.factor=$replicas
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=8388608
quota.window.num=2
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

launch() {
  # Format the current node's state dir the first time (cluster id $1), write its config, start its JVM (no wait).
  local id="$1"
  mkdir -p "$state"
  [ -z "$tls" ] || make_tls
  write_config
  formatted_now=""
  if [ ! -f "$state/data/meta.properties" ]; then
    local -a format_args=(--ignore-formatted --cluster-id "$id" -c "$state/server.properties")
    # The single node is a quorum of its own (--standalone); the cluster's voters are in its config.
    [ -n "$cluster" ] || format_args+=(--standalone)
    "${java_cmd[@]}" kafka.tools.StorageTool format "${format_args[@]}" "${scram_args[@]}" >"$state/format.log" 2>&1 \
      || { cat "$state/format.log" >&2; exit 1; }
    formatted_now=1
  fi
  # The previous run's log stays as kafka.log.1 (after a kill -9, the crash is in it); wait_ready reads this run's.
  if [ -s "$logfile" ]; then mv -f "$logfile" "$logfile.1"; fi
  : >"$logfile"
  # setsid: the broker outlives this script and ignores the terminal's Ctrl-C; `stop` ends it.
  setsid "${java_cmd[@]}" kafka.Kafka "$state/server.properties" </dev/null >"$state/stdout.log" 2>&1 &
  echo $! >"$pidfile"
}

start() {
  fetch
  check_java
  if running; then echo "kafka already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return 0; fi
  if [ -n "$acls" ] && [ -z "$scram_users" ] && [ -z "$tls" ]; then
    echo "kafka.sh: AIAAS_KAFKA_ACLS=1 needs authenticated clients: set AIAAS_KAFKA_SCRAM_USERS or AIAAS_KAFKA_TLS=1" >&2
    exit 2
  fi
  [ -z "$acls" ] || super_user_list >/dev/null || exit 2  # it said why
  local -a users=()
  scram_args=()
  local entry name password mechanism list
  if [ -n "$scram_users" ]; then
    list="$(scram_user_list)" || exit 2  # it said why
    mapfile -t users <<<"$list"
    for entry in "${users[@]}"; do
      IFS=$'\t' read -r name password <<<"$entry"
      scram_args+=(--add-scram "SCRAM-SHA-256=[name=$name,password=$password]"
                   --add-scram "SCRAM-SHA-512=[name=$name,password=$password]")
    done
  fi
  launch "$(cluster_id)"
  wait_ready
  if [ "${#users[@]}" -gt 0 ] && [ -z "$formatted_now" ]; then
    # Formatted earlier (perhaps without these users): add or update them through the running broker.
    : >"$state/scram.log"
    for entry in "${users[@]}"; do
      IFS=$'\t' read -r name password <<<"$entry"
      for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do  # one credential change per request
        "$java" -Xmx256m -Djava.awt.headless=true -cp "$libs/*" org.apache.kafka.tools.ConfigCommand \
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

# -- the 3-node cluster ------------------------------------------------------------------------------------------

cluster_start() {
  # Start the given nodes (all when none is given) that are not running; wait until each answers.
  fetch
  check_java
  if [ -n "$scram_users$tls$acls" ]; then
    echo "kafka.sh: the cluster is PLAINTEXT only; unset AIAAS_KAFKA_SCRAM_USERS, AIAAS_KAFKA_TLS and AIAAS_KAFKA_ACLS" >&2
    exit 2
  fi
  mkdir -p "$cluster_state"
  [ -s "$cluster_state/cluster.id" ] || cluster_id >"$cluster_state/cluster.id"
  local id i; id="$(cat "$cluster_state/cluster.id")"
  scram_args=()
  local -a launched=()
  for i in "$@"; do
    use_node "$i"
    if running; then echo "node $i already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; continue; fi
    if ! (launch "$id"); then
      echo "kafka.sh: node $i did not start; stopping the nodes this command started" >&2
      cluster_stop "${launched[@]}" >&2
      exit 1
    fi
    launched+=("$i")
  done
  # Each node waits for a quorum of controllers: all are launched before any is waited for.
  for i in "${launched[@]}"; do
    use_node "$i"
    if ! (wait_ready | sed "s/^kafka running/node $i running/"; exit "${PIPESTATUS[0]}"); then
      echo "kafka.sh: node $i did not start; stopping the nodes this command started" >&2
      cluster_stop "${launched[@]}" >&2
      exit 1
    fi
  done
  echo "kafka cluster: bootstrap $(cluster_bootstrap) (state $cluster_state)"
}

cluster_stop() {
  # SIGTERM to every given node at once, then wait for each (kill -9 after 30 s).
  local i pid
  local -a pids=()
  for i in "$@"; do
    use_node "$i"
    if running; then pid="$(cat "$pidfile")"; kill -TERM "$pid"; pids+=("$i:$pid"); else rm -f "$pidfile"; fi
  done
  local deadline=$((SECONDS + 30)) entry
  for entry in "${pids[@]}"; do
    i="${entry%%:*}"; pid="${entry#*:}"
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then echo "node $i did not stop in 30 s; killing it" >&2; kill -KILL "$pid"; fi
    use_node "$i"; rm -f "$pidfile"
    echo "node $i stopped (port $port)"
  done
}

cluster_kill() {
  # kill -9: a crash, no controlled shutdown.
  use_node "$1"
  if ! running; then echo "node $1 not running on port $port"; rm -f "$pidfile"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$pidfile"
  echo "node $1 killed (kill -9, port $port)"
}

cluster_status() {
  local i down=0
  for i in $(seq 1 "$nodes"); do
    use_node "$i"
    if running; then echo "node $i running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
    else echo "node $i not running (port $port)"; down=1; fi
  done
  return "$down"
}

cluster_describe() {
  # Leader, replicas and ISR of each partition (of topic $1), from any node that answers.
  "$java" -Xmx256m -XX:TieredStopAtLevel=1 -Djava.awt.headless=true -cp "$libs/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$(cluster_bootstrap)" --describe ${1:+--topic "$1"}
}

cluster_main() {
  cluster=1
  heap="${AIAAS_KAFKA_HEAP:-384m}"
  local command="${1:-}" node="${2:-}"
  local -a all
  mapfile -t all < <(seq 1 "$nodes")
  case "$command:$node" in
    describe:*|*:|*:[1-3]) ;;
    *) echo "kafka.sh: the cluster's nodes are 1, 2 and 3, not '$node'" >&2; exit 2 ;;
  esac
  case "$command" in
    start) if [ -n "$node" ]; then cluster_start "$node"; else cluster_start "${all[@]}"; fi ;;
    stop) if [ -n "$node" ]; then cluster_stop "$node"; else cluster_stop "${all[@]}"; fi ;;
    kill) [ -n "$node" ] || { echo "usage: $0 cluster kill 1|2|3" >&2; exit 2; }; cluster_kill "$node" ;;
    restart) [ -n "$node" ] || { echo "usage: $0 cluster restart 1|2|3" >&2; exit 2; }
      cluster_stop "$node"; cluster_start "$node" ;;
    status) cluster_status ;;
    bootstrap) cluster_bootstrap; echo ;;
    describe) fetch; cluster_describe "${2:-}" ;;
    *) echo "usage: $0 cluster start|stop|status|bootstrap|describe [topic] | cluster start|stop|kill|restart 1|2|3" >&2
       exit 2 ;;
  esac
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) running && echo "kafka running on 127.0.0.1:$port (pid $(cat "$pidfile"))" || { echo "kafka not running on port $port"; exit 1; } ;;
  cluster) shift; cluster_main "$@" ;;
  *) echo "usage: $0 fetch|start|stop|status | $0 cluster ... (see the header)" >&2; exit 2 ;;
esac
