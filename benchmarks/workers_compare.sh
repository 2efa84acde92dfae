#!/usr/bin/env bash
# `cymqtt --workers 2` against one process on this machine's two cores: p2p (100 pairs) QoS 0
# and QoS 1 as fast as the publishers go, and fan-out (1 publisher -> 1,000 subscribers at
# QoS 0, at 200 msg/s and as fast as the publisher goes). Nothing pinned: the workers, the NATS server and cymqtt-bench share both cores
# (what a user running --workers here gets). With 2 workers the kernel spreads the
# connections, so about half the pairs cross between workers.
# Usage: benchmarks/workers_compare.sh [ROUNDS]   (D=seconds per run)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}; D=${D:-6}
bench=.venv/bin/cymqtt-bench
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ready() { for _ in $(seq 200); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return; sleep 0.05; done; }
field() { python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); r["p99"]=(r.get("latency_ms") or {}).get("p99"); print(*[r.get(k) for k in sys.argv[1:]])' "$@"; }
# CPU ticks (utime + stime) of the broker: the process and its children (workers, nats-server).
ticks() { for q in "$1" $(pgrep -P "$1"); do cut -d' ' -f14,15 "/proc/$q/stat" 2>/dev/null; done |
          awk '{t += $1 + $2} END {print t}'; }
run() {  # $1 workers, $2 label, rest: cymqtt-bench args
  local w=$1 label=$2; shift 2
  local p; p=$(port)
  .venv/bin/cymqtt --workers "$w" -p "$p" --no-persistence --log-level warning >/dev/null 2>&1 & local pid=$!
  ready "$p"; sleep 1
  local t0 out; t0=$(ticks "$pid")
  out=$($bench pubsub -p "$p" "$@" -d "$D" --quiet 2>/dev/null | field recv_per_s sent_per_s lost p99 received)
  local t1; t1=$(ticks "$pid")
  set -- $out
  printf '%-10s workers %s: delivered/s %s sent/s %s lost %s p99 ms %s broker CPU us/delivery %s\n' \
    "$label" "$w" "$1" "$2" "$3" "$4" \
    "$(awk -v t=$((t1 - t0)) -v n="$5" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for r in $(seq "$ROUNDS"); do
  for w in 1 2; do
    run "$w" "p2p-qos0" --pairs 100 -q 0 -s 64 -r 0
    run "$w" "p2p-qos1" --pairs 100 -q 1 -s 64 -r 0 --inflight 32
    run "$w" "fanout" --pubs 1 --subs 1000 -t fan/x --sub-topic fan/x -q 0 -s 64 -r 200
    run "$w" "fanout-max" --pubs 1 --subs 1000 -t fan/x --sub-topic fan/x -q 0 -s 64 -r 0
  done
done
