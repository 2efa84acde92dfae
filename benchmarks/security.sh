#!/usr/bin/env bash
# Security features under load, cymqtt beside mosquitto in the same run (broker on CPU 0, load
# on CPU 1; needs taskset, /usr/sbin/mosquitto and a built checkout):
#   connect rate: no passwords, a $7$ (PBKDF2-SHA512, 101 iterations) password file, and an
#   $argon2id$ one (cymqtt only: mosquitto 2.0 cannot read argon2);
#   p2p QoS 1 (100 pairs, 64 B, 32 in flight): no ACL, and an acl_file of 100 rules.
# Usage: benchmarks/security.sh [ROUNDS]   (N=connections, N_SLOW=connections with argon2id,
# D=seconds per throughput run)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}; N=${N:-3000}; N_SLOW=${N_SLOW:-300}; D=${D:-8}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
.venv/bin/cymqtt passwd -c -b "$work/pw7" dev pw
.venv/bin/cymqtt passwd -c -H argon2id -b "$work/pwa" dev pw
python3 - "$work/acl100" <<'PY'
import sys
rules = [f"topic readwrite other/{i}/#" for i in range(94)]
rules += ["topic deny bench/secret", "topic readwrite bench/#", "pattern readwrite dev/%c/#",
          "pattern read users/%u/#", "pattern write up/%c/+/x", "pattern deny bench/%c/never"]
open(sys.argv[1], "w").write("\n".join(rules) + "\n")
PY
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(*[r.get(k) for k in sys.argv[1:]])' "$@"; }
serve() {  # $1 cymqtt|mosquitto, $2 port, $3 extra config line; prints the broker's pid
  if [ "$1" = cymqtt ]; then
    printf 'port = %d\nlog_level = "warning"\nsys_interval = 0\nconnection_messages = false\n%s\n' "$2" "$3" > "$work/c.toml"
    taskset -c 0 .venv/bin/cymqtt -c "$work/c.toml" >/dev/null 2>&1 & echo $!
  else
    printf 'listener %d 127.0.0.1\nallow_anonymous true\nuser %s\nmax_inflight_messages 32\n%s\n' "$2" "$(id -un)" "$3" > "$work/m.conf"
    taskset -c 0 /usr/sbin/mosquitto -c "$work/m.conf" >/dev/null 2>&1 & echo $!
  fi
}
run() {  # $1 label, $2 broker, $3 config line, $4 conn|qos1, $5 connections (conn)
  local p b n=${5:-$N}; p=$(port); b=$(serve "$2" "$p" "$3"); sleep 1.5
  if [ "$4" = conn ]; then
    printf '%-22s connects/s %s (connected %s of %s)\n' "$1" $(taskset -c 1 .venv/bin/cymqtt-bench conn -p "$p" -c "$n" -r 0 -d 1 --quiet -u dev -P pw 2>/dev/null | field connect_rate_per_s connected) "$n"
  else
    printf '%-22s p2p QoS 1 delivered/s %s lost %s\n' "$1" $(taskset -c 1 .venv/bin/cymqtt-bench pubsub -p "$p" --pairs 100 -q 1 -s 64 --inflight 32 -d "$D" --quiet 2>/dev/null | field recv_per_s lost)
  fi
  kill "$b"; wait "$b" 2>/dev/null || true
}
for r in $(seq "$ROUNDS"); do
  echo "-- round $r"
  run cymqtt-no-passwords cymqtt "" conn
  run cymqtt-pbkdf2 cymqtt "password_file = \"$work/pw7\"" conn
  run cymqtt-argon2id cymqtt "password_file = \"$work/pwa\"" conn "$N_SLOW"
  run mosquitto-no-passwords mosquitto "" conn
  run mosquitto-pbkdf2 mosquitto "password_file $work/pw7" conn
  run cymqtt-no-acl cymqtt "" qos1
  run cymqtt-acl-100-rules cymqtt "acl_file = \"$work/acl100\"" qos1
  run mosquitto-no-acl mosquitto "" qos1
  run mosquitto-acl-100-rules mosquitto "acl_file $work/acl100" qos1
done
