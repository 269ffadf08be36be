# Starting and stopping the `dps serve` a benchmark runs against; sourced by scripts/bench.sh and
# scripts/bench/postgres.sh, which set DPS (the binary), ADDR (the address it binds and names
# itself by) and WORK (where its log goes) first.

SERVER_PID=""

# start_server DATA_DIR [SERVE FLAGS...]: starts it and waits until it listens on MQTT.
start_server() {
    local dir="$1"
    shift
    "$DPS" serve --data-dir "$dir" --bind "$ADDR" --hostname "$ADDR" --log warn "$@" >"$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    # Up to two minutes: a store holding a million devices takes a while to open.
    for _ in $(seq 1200); do
        if (echo >"/dev/tcp/$ADDR/8883") 2>/dev/null; then return 0; fi
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; return 1; }
        sleep 0.1
    done
    echo "dps serve did not start listening" >&2
    return 1
}

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
