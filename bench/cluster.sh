#!/usr/bin/env bash
# Cluster-mode cost figures for BENCHMARKS.md "Cluster mode" (release build, nats-server on
# PATH). Runs on loopback, one after the other:
#   1. single-process banditd under `banditd-loadgen grpc --rate RATE` for SECS seconds;
#   2. nats-server + replica A (trainer candidate) + replica B (--no-trainer), the same load
#      spread over both; CPU of each process from /proc/PID/stat, stream bytes and messages
#      from NATS's monitoring endpoint, snapshot size and publish-to-serve lag from B's
#      /metrics;
#   3. trainer throughput: replicas without trainers store N rewards, then a trainer
#      candidate starts and the time until it has joined all N is measured.
# Usage: bench/cluster.sh [RATE] [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-1000}"
SECS="${2:-20}"
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
export RUST_LOG=warn

cpu() { # utime+stime of PID in seconds
    awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat"
}
wait_port() { for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v s="$2" 'index($0, s" ")==1 {print $2}'; }
load() { "$BIN/banditd-loadgen" grpc --target "$1" --rate "$RATE" --duration "${SECS}s" --workers 32 --quiet --json; }
"$BIN/banditd" --print-default-config > "$WORK/base.toml"

echo "== single process, $RATE decisions/s for $SECS s"
"$BIN/banditd" --config "$WORK/base.toml" --data-dir "$WORK/single" --grpc-addr 127.0.0.1:17050 --metrics-addr 127.0.0.1:17090 &
S=$!; wait_port 17050; sleep 2
c0=$(cpu $S); load http://127.0.0.1:17050 > "$WORK/single.json"; c1=$(cpu $S)
n=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["decisions"])' "$WORK/single.json")
echo "decisions $n  server CPU $(python3 -c "print(f'{($c1-$c0)/$n*1e6:.0f}')") µs per decision (with its reward and training)"
kill $S; wait $S 2>/dev/null || true

echo "== cluster: nats-server + replica A (trainer) + replica B (serving only)"
nats-server -js -a 127.0.0.1 -p 17222 -m 17822 -sd "$WORK/js" > "$WORK/nats.log" 2>&1 &
N=$!; wait_port 17222
cp "$WORK/base.toml" "$WORK/cluster.toml"
printf '\n[cluster]\nurl = "nats://127.0.0.1:17222"\n' >> "$WORK/cluster.toml"
"$BIN/banditd" --config "$WORK/cluster.toml" --data-dir "$WORK/a" --grpc-addr 127.0.0.1:17051 --metrics-addr 127.0.0.1:17091 &
A=$!; wait_port 17051; sleep 1
"$BIN/banditd" --config "$WORK/cluster.toml" --no-trainer --data-dir "$WORK/b" --grpc-addr 127.0.0.1:17052 --metrics-addr 127.0.0.1:17092 &
B=$!; wait_port 17052; sleep 2
a0=$(cpu $A); b0=$(cpu $B); n0=$(cpu $N)
load http://127.0.0.1:17051,http://127.0.0.1:17052 > "$WORK/cluster.json"
sleep 6  # the last snapshot published and loaded
a1=$(cpu $A); b1=$(cpu $B); n1=$(cpu $N)
curl -s "http://127.0.0.1:17822/jsz?streams=true" > "$WORK/jsz.json"
python3 - "$WORK/cluster.json" "$WORK/jsz.json" "$a0" "$a1" "$b0" "$b1" "$n0" "$n1" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1])); jsz = json.load(open(sys.argv[2]))
a0, a1, b0, b1, n0, n1 = map(float, sys.argv[3:9])
n = rep["decisions"]
state = [s for a in jsz["account_details"] for s in a["stream_detail"] if s["name"] == "BANDITD"][0]["state"]
events = state["messages"]
print(f"decisions {n}, regret normalized {rep['normalized_regret']:.1f}, errors {rep.get('errors')}")
print(f"replica B (serving only): {(b1-b0)/(n/2)*1e6:.0f} µs CPU per decision it served (with its reward)")
print(f"replica A (serving + trainer): {(a1-a0)/(n/2)*1e6:.0f} µs CPU per decision it served, trainer included")
print(f"nats-server: {(n1-n0)/events*1e6:.0f} µs CPU per stored event ({events} events: decisions, rewards)")
print(f"stream bytes per event: {state['bytes']/events:.0f}")
PY
echo "snapshot bytes: $(metric 17091 'banditd_cluster_snapshot_bytes{model="wheel"}')"
for q in 0.5 0.99; do echo "lag p$q (B): $(metric 17092 "banditd_cluster_snapshot_lag_seconds{model=\"wheel\",quantile=\"$q\"}") s"; done
kill $A $B; wait $A $B 2>/dev/null || true

echo "== trainer throughput: $((RATE * SECS / 2)) rewards stored without a trainer, then one starts"
kill $N; wait $N 2>/dev/null || true
# A fresh NATS store: the trainer reads exactly these rewards from the start of the stream.
nats-server -js -a 127.0.0.1 -p 17223 -sd "$WORK/js2" > "$WORK/nats2.log" 2>&1 &
N=$!; wait_port 17223
sed 's/17222/17223/' "$WORK/cluster.toml" > "$WORK/cluster2.toml"
"$BIN/banditd" --config "$WORK/cluster2.toml" --no-trainer --data-dir "$WORK/c" --grpc-addr 127.0.0.1:17053 --metrics-addr 127.0.0.1:17093 &
C=$!; wait_port 17053; sleep 2
want=$((RATE * SECS / 2))
"$BIN/banditd-loadgen" grpc --target http://127.0.0.1:17053 --rate "$RATE" --rounds "$want" --workers 32 --quiet > /dev/null
"$BIN/banditd" --config "$WORK/cluster2.toml" --data-dir "$WORK/d" --grpc-addr 127.0.0.1:17054 --metrics-addr 127.0.0.1:17094 &
D=$!; wait_port 17054
t0=$(date +%s.%N)
while :; do
    got=$(metric 17094 'banditd_cluster_examples_joined_total{model="wheel",how="reward"}')
    [ "${got:-0}" -ge "$want" ] 2>/dev/null && break
    sleep 0.1
done
t1=$(date +%s.%N)
python3 -c "print(f'trainer read and joined {$want} stored rewards in {$t1-$t0:.2f} s (process start included) = {$want/($t1-$t0):.0f} examples/s')"
kill $C $D $N; wait 2>/dev/null || true
