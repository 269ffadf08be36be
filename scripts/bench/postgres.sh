#!/usr/bin/env bash
# The PostgreSQL rounds of BENCHMARKS.md (issue 15 point 6), as one command:
#
#   scripts/bench/postgres.sh ratio [ROUNDS]   one node on SQLite, then on PostgreSQL, alternating,
#                                              a fresh data directory / database each run
#   scripts/bench/postgres.sh large [ROUNDS]   one node on an empty PostgreSQL database, then on
#                                              one holding BENCH_FILL (1,000,000) registrations
#                                              and hub devices (scripts/bench/fill_postgres.py),
#                                              alternating
#
# Every run: a release `dps serve` on 127.0.2.1 (PostgreSQL: the throwaway cluster of
# scripts/pg-test-cluster.sh on the same machine, durable commits, `sslmode=disable` as on a
# loopback), `dps bench register` (MQTT, symmetric-key group) with BENCH_DEVICES (5,000) devices
# after BENCH_WARMUP (1,000), 200 in flight; one line per run: registrations/s and the server's
# CPU seconds. Nothing here asserts a speed; run it on an otherwise idle machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MODE="${1:-ratio}"
ROUNDS="${2:-3}"
DEVICES="${BENCH_DEVICES:-5000}"
WARMUP="${BENCH_WARMUP:-1000}"
FILL="${BENCH_FILL:-1000000}"
ADDR=127.0.2.1
WORK="$(mktemp -d /tmp/dps-pgbench.XXXXXX)"
# The cluster runs as an unprivileged user (scripts/pg-test-cluster.sh), which must reach its directory.
chmod 755 "$WORK"
PG_DIR="$WORK/pg"
# shellcheck source=scripts/bench/server.sh
. "$ROOT/scripts/bench/server.sh"

cleanup() {
    stop_server
    bash scripts/pg-test-cluster.sh stop "$PG_DIR" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release -p dps
DPS="$ROOT/target/release/dps"
URL="$(bash scripts/pg-test-cluster.sh start "$PG_DIR")"
BASE="${URL%/*}"

database() { # name: creates it, prints its URL
    psql "$URL" -qc "CREATE DATABASE $1" >/dev/null
    echo "$BASE/$1?sslmode=disable"
}

run() { # label data_dir [serve flags...]
    local label="$1" dir="$2"
    shift 2
    start_server "$dir" "$@"
    "$DPS" bench register --data-dir "$dir" --devices "$DEVICES" --concurrency 200 --warmup "$WARMUP" \
        --server-pid "$SERVER_PID" --json >"$WORK/run.json"
    stop_server
    python3 - "$label" "$WORK/run.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[2]))
def find(d, k):
    if isinstance(d, dict):
        if k in d:
            return d[k]
        for v in d.values():
            f = find(v, k)
            if f is not None:
                return f
    return None
print(f"{sys.argv[1]:<28} {find(r, 'throughputPerSecond'):>9.0f}/s  server CPU {find(r, 'serverCpuSeconds'):.2f} s  "
      f"errors {find(r, 'errors') or {}}", flush=True)
EOF
}

case "$MODE" in
ratio)
    for round in $(seq "$ROUNDS"); do
        run "round $round SQLite" "$WORK/sqlite-$round"
        run "round $round PostgreSQL" "$WORK/pg-$round" --store "$(database "ratio$round")"
    done
    ;;
large)
    big="$(database big)"
    start_server "$WORK/big" --store "$big"
    "$DPS" bench register --data-dir "$WORK/big" --devices 1 --concurrency 1 --keep --json >/dev/null
    stop_server
    python3 scripts/bench/fill_postgres.py "${big%\?*}" "$FILL"
    for round in $(seq "$ROUNDS"); do
        run "round $round empty" "$WORK/empty-$round" --store "$(database "empty$round")"
        run "round $round with $FILL" "$WORK/big" --store "$big"
    done
    ;;
*)
    echo "usage: $0 ratio|large [ROUNDS]" >&2
    exit 2
    ;;
esac
