#!/usr/bin/env bash
# A single-node Apache Kafka 4 broker (KRaft, combined broker+controller, 127.0.0.1 only) for
# development, the demo and the tests. No Docker: jars come from Maven Central via kafka/pom.xml.
#   scripts/kafka.sh fetch|start|stop|status|logs [N]
# Environment: STREAM_APP_KAFKA_BOOTSTRAP (default 127.0.0.1:9092; the controller uses port+1),
#              STREAM_APP_KAFKA_DIR (data + logs, default <repo>/kafka/run), KAFKA_HEAP (default 512m),
#              KAFKA_SASL_PORT + KAFKA_SASL_USERS="user:password ..." (optional: a SASL_PLAINTEXT/PLAIN listener too,
#              for testing the clients' SASL settings; the PLAINTEXT listener stays).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lib="$repo/kafka/lib"
run="${STREAM_APP_KAFKA_DIR:-$repo/kafka/run}"
bootstrap="${STREAM_APP_KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
host="${bootstrap%:*}"
port="${bootstrap##*:}"
cport=$((port + 1))
heap="${KAFKA_HEAP:-512m}"
pidfile="$run/kafka.pid"
log="$run/logs/server.log"

say() { echo "kafka: $*"; }

running_pid() {
  [[ -f "$pidfile" ]] || return 1
  local pid; pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

fetch() {
  # kafka/lib is rebuilt whenever kafka/pom.xml changed since the last fetch (its sha256 is kept in lib/.pom.sha256).
  local want; want=$(sha256sum "$repo/kafka/pom.xml" | cut -d' ' -f1)
  if compgen -G "$lib/kafka_2.13-*.jar" >/dev/null && [[ "$(cat "$lib/.pom.sha256" 2>/dev/null)" == "$want" ]]; then
    return 0
  fi
  say "fetching broker jars from Maven Central into kafka/lib"
  rm -rf "$lib.new"
  mvn -q -B -f "$repo/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$lib.new"
  echo "$want" >"$lib.new/.pom.sha256"
  rm -rf "$lib" && mv "$lib.new" "$lib"
}

write_config() {
  mkdir -p "$run/data" "$run/logs"
  local listeners="PLAINTEXT://$host:$port,CONTROLLER://$host:$cport" advertised="PLAINTEXT://$host:$port"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT" sasl=""
  if [[ -n "${KAFKA_SASL_PORT:-}" ]]; then
    listeners+=",SASL_PLAINTEXT://$host:$KAFKA_SASL_PORT"
    advertised+=",SASL_PLAINTEXT://$host:$KAFKA_SASL_PORT"
    protocols+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
    local users="" pair
    for pair in ${KAFKA_SASL_USERS:?KAFKA_SASL_PORT needs KAFKA_SASL_USERS=\"user:password ...\"}; do
      users+=" user_${pair%%:*}=\"${pair#*:}\""
    done
    sasl="sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$users;"
  fi
  cat >"$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$host:$cport
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
$sasl
log.dirs=$run/data
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
PROPS
}

format_storage() {
  [[ -f "$run/data/meta.properties" ]] && return 0
  local id; id=$(java -cp "$lib/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  java -cp "$lib/*" -Dlog4j2.configurationFile="$repo/kafka/log4j2.properties" -Dkafka.logs.dir="$run/logs" \
    kafka.tools.StorageTool format -t "$id" -c "$run/server.properties" >"$run/logs/format.log" 2>&1 \
    || { cat "$run/logs/format.log"; say "storage format failed"; exit 1; }
}

start() {
  if pid=$(running_pid); then say "already running (pid $pid) on $bootstrap"; return 0; fi
  if port_open; then say "something else already listens on $bootstrap; not starting"; exit 1; fi
  fetch
  write_config
  format_storage
  local t0=$SECONDS
  : >"$log"
  setsid nohup java -Xms128m -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$repo/kafka/log4j2.properties" -Dkafka.logs.dir="$run/logs" \
    -cp "$lib/*" kafka.Kafka "$run/server.properties" >>"$run/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 600); do
    if ! running_pid >/dev/null; then
      say "broker died during start; last lines of its log:"; tail -n 40 "$log" "$run/logs/stdout.log" || true
      rm -f "$pidfile"; exit 1
    fi
    if port_open; then say "started (pid $(cat "$pidfile")) on $bootstrap in $((SECONDS - t0))s; logs in $run/logs"; return 0; fi
    sleep 0.1
  done
  say "broker did not accept connections within 60s; last lines of its log:"; tail -n 40 "$log" || true
  stop; exit 1
}

stop() {
  local pid
  if ! pid=$(running_pid); then say "not running"; rm -f "$pidfile"; return 0; fi
  kill -TERM "$pid"
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then say "did not stop in 30s; killing"; kill -KILL "$pid"; fi
  rm -f "$pidfile"
  say "stopped"
}

status() {
  if pid=$(running_pid); then say "running (pid $pid) on $bootstrap"; else say "not running"; return 3; fi
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  logs)
    n="${2:-100}"
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "usage: $0 logs [N]  (N: number of lines, got '$n')" >&2; exit 2; }
    if [[ ! -s "$log" ]]; then say "no broker log yet at $log"; exit 0; fi
    tail -n "$n" "$log" ;;
  *) echo "usage: $0 fetch|start|stop|status|logs [N]" >&2; exit 2 ;;
esac
