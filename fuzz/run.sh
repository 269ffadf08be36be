#!/usr/bin/env bash
# Fuzzes one target in the background-friendly way this project runs fuzzers: niced, with the
# memory limit, and with CPU time measured (libFuzzer's -max_total_time is wall time; on a shared
# machine CPU time is what counts). Output: logs/<target>.<n>.log (libFuzzer's log, its final
# stats and /usr/bin/time's report).
#
#   fuzz/run.sh <target> [wall-seconds, default 900]
#
# Needs cargo-fuzz and a nightly toolchain (docs/fuzzing.md).
set -euo pipefail

# One function, so that bash has read the whole script before it runs (editing a running script
# is then harmless).
main() {
    cd "$(dirname "${BASH_SOURCE[0]}")"
    local target=${1:?usage: fuzz/run.sh <target> [wall-seconds]}
    local secs=${2:-900} n=1 log rc cpu execs
    local -a dict
    mkdir -p logs "corpus/$target" "artifacts/$target"
    while [[ -e "logs/$target.$n.log" ]]; do n=$((n + 1)); done
    log="logs/$target.$n.log"
    dict=()
    case "$target" in
        mqtt_username | mqtt_topic | sas_token | connection_string | registration_id | rest_path) dict=(-dict=dicts/text.dict) ;;
    esac
    # Build first, so the CPU time measured below is the fuzzer's alone.
    nice -n 19 cargo +nightly fuzz build -s none -a "$target" >"$log.build" 2>&1
    /usr/bin/time -v -o "$log.time" nice -n 19 cargo +nightly fuzz run -s none -a "$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1 || rc=$?
    cat "$log.time" >>"$log" && rm -f "$log.time" "$log.build"
    cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.1f", s / 60}' "$log")
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    echo "$target: exit ${rc:-0}, ${cpu} CPU-minutes, ${execs:-?} executions ($log)"
    exit "${rc:-0}"
}

main "$@"
