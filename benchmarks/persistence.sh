#!/usr/bin/env bash
# Persistence under load, cymqtt beside mosquitto in the same run (broker on CPU 0, load on
# CPU 1; needs taskset, /usr/sbin/mosquitto and a built checkout). Each broker gets a fresh
# data directory.
#   p2p QoS 1, 100 pairs, 64 B, 32 in flight, 3.1.1:
#     clean sessions: cymqtt persistence off / on (nothing should touch the disk);
#     persistent subscribers (clean session 0): cymqtt store_sync normal / full, mosquitto with
#     `persistence true` (its default 30-minute autosave: not durable between snapshots);
#     cymqtt's commits, rows written and acknowledgements held, from its SIGUSR1 report;
#   restart with 100,000 retained messages (64 B): time from start to serving, and a new
#     `ret/#` subscriber gets them all; store bytes per retained message;
#   store bytes per queued message: 50,000 QoS 1 messages queued for an offline session.
# Usage: benchmarks/persistence.sh [ROUNDS]   (D=seconds per throughput run)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}; D=${D:-8}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
bench=.venv/bin/cymqtt-bench
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); r["p99"]=(r.get("latency_ms") or {}).get("p99"); print(*[r.get(k) for k in sys.argv[1:]])' "$@"; }
ready() { for _ in $(seq 100); do python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return; sleep 0.05; done; }
serve() {  # $1 cymqtt|mosquitto, $2 port, $3 data dir, $4 extra config line; prints the pid
  mkdir -p "$3"
  if [ "$1" = cymqtt ]; then
    printf 'port = %d\nlog_level = "info"\nsys_interval = 0\nconnection_messages = false\ndata_dir = "%s"\nmax_queued = 100000\n%s\n' "$2" "$3" "$4" > "$3/c.toml"
    taskset -c 0 .venv/bin/cymqtt -c "$3/c.toml" 2>"$3/log" >/dev/null & echo $!
  else
    printf 'listener %d 127.0.0.1\nallow_anonymous true\nuser %s\nmax_inflight_messages 32\nmax_queued_messages 100000\npersistence_location %s/\n%s\n' "$2" "$(id -un)" "$3" "$4" > "$3/m.conf"
    taskset -c 0 /usr/sbin/mosquitto -c "$3/m.conf" >/dev/null 2>&1 & echo $!
  fi
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }
qos1() {  # $1 label, $2 broker, $3 config line, $4 extra bench flags
  local p b dir; p=$(port); dir="$work/$1-$RANDOM"; b=$(serve "$2" "$p" "$dir" "$3"); ready "$p"
  printf '%-28s p2p QoS 1 delivered/s %s lost %s p99 ms %s\n' "$1" $(taskset -c 1 $bench pubsub -p "$p" --pairs 100 -q 1 -s 64 --inflight 32 -d "$D" --quiet $4 2>/dev/null | field recv_per_s lost p99)
  if [ "$2" = cymqtt ]; then
    kill -USR1 "$b"; sleep 0.3; { grep -o 'store .*commits.*' "$dir/log" || true; } | tail -1 | sed 's/^/    /'
  fi
  stop "$b"
}
retained() {  # cymqtt only: fill, restart, time the restart and the delivery
  local p b dir t0 t1; p=$(port); dir="$work/ret-$RANDOM"; b=$(serve cymqtt "$p" "$dir" ""); ready "$p"
  taskset -c 1 $bench retained -p "$p" -n 100000 --store-qos 1 --sub 'ret/7/+/x:0' --quiet >/dev/null 2>&1
  stop "$b"
  local bytes; bytes=$(stat -c %s "$dir/cymqtt.db")
  t0=$(date +%s.%N); b=$(serve cymqtt "$p" "$dir" ""); ready "$p"; t1=$(date +%s.%N)
  printf 'restart with 100,000 retained: serving after %.2f s (%s)\n' "$(echo "$t1 - $t0" | bc)" "$({ grep -o 'restored.*' "$dir/log" || true; } | head -1)"
  printf '    store %s bytes = %s bytes per retained message\n' "$bytes" $((bytes / 100000))
  printf '    after the restart: %s\n' "$(taskset -c 1 $bench retained -p "$p" --no-store -n 100000 --sub 'ret/#:0' --sub 'ret/#:1' --quiet 2>/dev/null | tail -1)"
  stop "$b"
}
queued() {  # cymqtt only: bytes per message queued for an offline persistent session
  local p b dir before after; p=$(port); dir="$work/q-$RANDOM"; b=$(serve cymqtt "$p" "$dir" ""); ready "$p"
  .venv/bin/python - "$p" <<'PY'
import sys, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="offline", clean_session=False)
c.connect("127.0.0.1", int(sys.argv[1])); c.loop_start()
import time; c.subscribe("q/#", 1); time.sleep(0.5); c.disconnect(); c.loop_stop()
PY
  stop "$b"; before=$(stat -c %s "$dir/cymqtt.db")
  b=$(serve cymqtt "$p" "$dir" ""); ready "$p"
  taskset -c 1 $bench pub -p "$p" -q 1 -s 64 -n 50000 -t q/x --inflight 32 --quiet >/dev/null 2>&1
  stop "$b"; after=$(stat -c %s "$dir/cymqtt.db")
  printf 'queued: 50,000 QoS 1 messages (64 B) for an offline session: %s bytes each\n' $(( (after - before) / 50000 ))
}
for r in $(seq "$ROUNDS"); do
  echo "-- round $r"
  qos1 cymqtt-clean-persistence-off cymqtt "persistence = false" ""
  qos1 cymqtt-clean-persistence-on cymqtt "" ""
  qos1 mosquitto-clean mosquitto "persistence true" ""
  qos1 cymqtt-persistent-normal cymqtt "" --persistent-subs
  qos1 cymqtt-persistent-full cymqtt 'store_sync = "full"' --persistent-subs
  qos1 mosquitto-persistent mosquitto "persistence true" --persistent-subs
done
retained
queued
