#!/usr/bin/env bash
# The benchmark runs behind BENCHMARKS.md, as one command: ./scripts/bench.sh [OUT_DIR]
#
# Builds the release binary, then for each scenario starts a fresh `dps serve` on 127.0.0.41
# with its own data directory, runs `dps bench ... --json` against it (with the `tls` ceiling
# measured in the same run), and stops it. Results: one JSON file per scenario in OUT_DIR
# (default ./bench-results) and a Markdown table on stdout (scripts/bench_table.py).
#
# Environment:
#   BENCH_DEVICES   devices per throughput scenario (default 20000)
#   BENCH_HOLD      connections in the hold scenario (default 19000: this machine's open-file
#                   hard limit is 20000; raise it with `ulimit -Hn` as a privileged root first)
#   BENCH_1M_DIR    a data directory already holding ~1,000,000 registrations (made with
#                   `dps bench register --devices 1000000 --keep`); when set, `register` is also
#                   run against a copy of it, for the "large store" comparison
#   BENCH_ONLY      space-separated scenario names to run (default: all)
#
# Nothing here asserts a speed; it measures. Run it on an otherwise idle machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-$ROOT/bench-results}"
mkdir -p "$OUT"
DEVICES="${BENCH_DEVICES:-20000}"
HOLD="${BENCH_HOLD:-19000}"
ADDR=127.0.0.41
WORK="$(mktemp -d /tmp/dps-bench.XXXXXX)"
# shellcheck source=scripts/bench/server.sh
. "$ROOT/scripts/bench/server.sh"
trap 'stop_server; rm -rf "$WORK"' EXIT

cargo build --release -p dps
DPS="$ROOT/target/release/dps"

wanted() { [[ -z "${BENCH_ONLY:-}" || " $BENCH_ONLY " == *" $1 "* ]]; }

# scenario NAME DATA_DIR "SERVE FLAGS" BENCH ARGS...
scenario() {
    local name="$1" dir="$2" flags="$3"
    shift 3
    wanted "$name" || return 0
    echo "== $name: dps bench $*" >&2
    # shellcheck disable=SC2086 # flags is a word list
    start_server "$dir" $flags
    # An untimed warm-up on the same server (page cache, allocator, TLS tables).
    "$DPS" bench register --data-dir "$dir" --devices 500 --concurrency 50 >/dev/null 2>&1 || true
    # --keep: the data directory is thrown away anyway, so skip the (slow, one-by-one) cleanup.
    "$DPS" bench "$@" --data-dir "$dir" --server-pid "$SERVER_PID" --keep --json >"$OUT/$name.json"
    stop_server
}

fresh() { local d="$WORK/$1"; rm -rf "$d"; mkdir -p "$d"; echo "$d"; }

C=(--concurrency 200 --devices "$DEVICES")
scenario tls "$(fresh tls)" "" tls "${C[@]}"
scenario register-mqtt "$(fresh r1)" "" register "${C[@]}" --ceiling
scenario register-https "$(fresh r2)" "" register "${C[@]}" --transport https --ceiling
scenario register-mqtt-immediate "$(fresh r3)" "--immediate-assignment" register "${C[@]}" --ceiling
scenario register-x509 "$(fresh r4)" "" register "${C[@]}" --attestation x509 --ceiling
scenario cycle "$(fresh c1)" "" cycle "${C[@]}" --ceiling
# Latency under a steady load below saturation, with up to 1,000 devices in flight.
scenario register-rate-1000 "$(fresh p1)" "" register --devices "$DEVICES" --concurrency 1000 --rate 1000 --ceiling
# 1,000 devices in flight at all times (closed loop): latency is bound by 1000 / throughput.
scenario register-concurrency-1000 "$(fresh p2)" "" register --devices "$DEVICES" --concurrency 1000 --ceiling
scenario hold "$(fresh h1)" "" hold --devices "$HOLD" --concurrency 200 --source-addresses 2 --duration 20
if [[ -n "${BENCH_1M_DIR:-}" ]]; then
    big="$(fresh big)"
    cp -a "$BENCH_1M_DIR/." "$big/"
    scenario register-mqtt-1m "$big" "" register "${C[@]}" --ceiling
fi

python3 "$ROOT/scripts/bench_table.py" "$OUT"
