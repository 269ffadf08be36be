#!/usr/bin/env bash
# Sums the clean runs (exit status 0) in logs/ per target: CPU-minutes (user + system, from
# /usr/bin/time), executions (libFuzzer's final stats), and the corpus as it is now (files, bytes).
#
#   fuzz/stats.sh [target...]      (default: every target with a corpus directory)
set -euo pipefail

main() {
    cd "$(dirname "${BASH_SOURCE[0]}")"
    local targets=("$@") t
    if [[ ${#targets[@]} -eq 0 ]]; then
        mapfile -t targets < <(ls corpus)
    fi
    printf '%-20s %5s %9s %14s %7s %9s\n' target runs cpu-min executions files bytes
    for t in "${targets[@]}"; do
        awk -v t="$t" -v files="$(find "corpus/$t" -type f | wc -l)" \
            -v bytes="$(find "corpus/$t" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')" '
            FNR == 1 { cpu = 0; execs = 0 }
            /User time|System time/ { split($0, a, ": "); cpu += a[2] }
            /stat::number_of_executed_units/ { execs = $2 }
            /Exit status: 0/ { runs++; total += cpu; totalx += execs }
            END { printf "%-20s %5d %9.1f %14d %7d %9d\n", t, runs, total / 60, totalx, files, bytes }
        ' /dev/null $(ls logs/"$t".*.log 2>/dev/null)
    done
}

main "$@"
