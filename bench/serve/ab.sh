#!/bin/bash
# A/B of two activator trees at one concurrency, interleaved, with ref-sandbox in the same run.
#
#   bench/serve/ab.sh TREE_A TREE_B [CONNS=1500] [ROUNDS=2] [CONC=8]      (as root)
#
# Each tree (a checkout, or a copy with one change) serves bench/serve/activator.toml in turn,
# with the venv of this checkout; per round it prints conn/s, p50, p99, machine busy and the
# activator's CPU per connection (ms, from /proc/PID/stat), then ref-sandbox's conn/s and p99.
# Needs the programs built by ../shared/bench/compare.sh in $BENCH_DIR (run.py --keep does it).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
PY=$HERE/../../.venv/bin/python
A=$1; B=$2; N=${3:-1500}; R=${4:-2}; C=${5:-8}
BIN=${BENCH_DIR:-/opt/activator-bench}/bin
LOG=$(mktemp -d)
start() { (cd "$1" && exec "$PY" -m activator serve --config bench/serve/activator.toml 2>"$LOG/$2.log" >/dev/null) & echo $!; }
"$BIN/refserver" -p 47602 -u -n -P -- "$BIN/handler" </dev/null >/dev/null 2>&1 &
REF=$!
trap 'kill $REF 2>/dev/null; rm -rf "$LOG"' EXIT
for _ in $(seq "$R"); do
	for t in A B; do
		tree=$A; [ $t = B ] && tree=$B
		pid=$(start "$tree" $t)
		for _ in $(seq 100); do grep -q '"event": "ready"' "$LOG/$t.log" 2>/dev/null && break; sleep 0.1; done
		"$BIN/loadclient" -p 47400 -n 300 -c "$C" -t 60 -L warmup >/dev/null
		before=$(awk '{print $14+$15}' /proc/$pid/stat)
		line=$("$BIN/loadclient" -p 47400 -n "$N" -c "$C" -t 300 -L $t | tr ' ' '\n' | grep -E '^(cps|p50_ms|p99_ms|machine_busy_pct)=' | tr '\n' ' ')
		after=$(awk '{print $14+$15}' /proc/$pid/stat)
		echo "$t $line cpu_ms_per_conn=$(awk -v a="$before" -v b="$after" -v n="$N" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", (b-a)*1000/hz/n}')"
		kill $pid; wait $pid 2>/dev/null
	done
	echo "ref-sandbox $("$BIN/loadclient" -p 47602 -n "$N" -c "$C" -t 300 -L ref | tr ' ' '\n' | grep -E '^(cps|p99_ms)=' | tr '\n' ' ')"
done
