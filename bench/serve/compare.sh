#!/bin/sh
# activator serve on the bench unit, measured against the peers of ../shared/bench in the same run.
#
#   bench/serve/compare.sh [compare.sh options...]      (as root, from anywhere)
#
# Starts `activator serve` on bench/serve/units (127.0.0.1:47400, the shared echo handler as a
# fresh dynamic user per connection), runs ../shared/bench/compare.sh with `-s activator=47400`
# and the options given (default: -n 1000 -r 1 -c "1 8 64" -p ref-sandbox), prints its table,
# then stops activator (by PID) and checks that it left no lease behind. activator's log goes to
# $BENCH_DIR/activator.log.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
CHECKOUT=$(cd "$HERE/../.." && pwd)
SHARED=${SHARED_BENCH:-$CHECKOUT/../shared/bench}
BENCH_DIR=${BENCH_DIR:-/opt/activator-bench}
export BENCH_DIR
mkdir -p "$BENCH_DIR"
[ $# -gt 0 ] || set -- -n 1000 -r 1 -c "1 8 64" -p ref-sandbox
# The handler must exist before the first connection: compare.sh builds it, so build first.
bash "$SHARED/compare.sh" -n 1 -r 1 -c 1 -p ref-bare >/dev/null
"$CHECKOUT/.venv/bin/python" -m activator serve --config "$HERE/activator.toml" \
	2>"$BENCH_DIR/activator.log" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID' EXIT
i=0
until grep -q '"event": "ready"' "$BENCH_DIR/activator.log"; do
	i=$((i + 1)); [ $i -lt 300 ] || { echo "activator did not start:" >&2; cat "$BENCH_DIR/activator.log" >&2; exit 1; }
	sleep 0.1
done
bash "$SHARED/compare.sh" "$@" -s activator=47400
kill -TERM $PID; wait $PID; trap - EXIT
echo "activator: $(grep -c '"event": "invocation"' "$BENCH_DIR/activator.log") invocations, leases left: $(ls /run/activator/uid 2>/dev/null | wc -l)"
