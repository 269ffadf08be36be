#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests (issue 15): initdb in a temporary directory, one
# postgres listening on 127.0.0.1 at a free port and on a socket in that directory, run as an
# unprivileged user (postgres refuses to run as root; as root the cluster runs as `nobody`).
#
#   scripts/pg-test-cluster.sh start DIR   creates and starts the cluster in DIR (which must not
#                                          exist), prints its URL: postgres://dps@127.0.0.1:PORT/dps
#                                          The server speaks TLS too, with a certificate for
#                                          localhost and 127.0.0.1 from a CA made for the cluster,
#                                          DIR/ca.pem (what the TLS tests verify it against).
#                                          The role dps_cert may log in only over TLS with a
#                                          client certificate from that CA: DIR/client.pem and
#                                          DIR/client.key (CN=dps_cert).
#   scripts/pg-test-cluster.sh stop DIR    stops it (immediately) and removes DIR
#   scripts/pg-test-cluster.sh halt DIR    stops it (fast shutdown, as for a restart) and keeps DIR
#   scripts/pg-test-cluster.sh resume DIR  starts a halted cluster again, at the same port
#
# The server binaries come from Debian's postgresql package (scripts/install-deps.sh installs
# it); the newest version under /usr/lib/postgresql is used. Authentication is `trust`, on
# loopback only: the cluster holds nothing but test data and lives as long as the test run.
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
if [[ -z "$cmd" || -z "$dir" ]]; then
    echo "usage: $0 start|stop|halt|resume DIR" >&2
    exit 2
fi

bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [[ -z "$bin" || ! -x "$bin/initdb" ]]; then
    echo "pg-test-cluster: no PostgreSQL server under /usr/lib/postgresql (run scripts/install-deps.sh)" >&2
    exit 1
fi

as_owner=()
if [[ "$(id -u)" -eq 0 ]]; then
    as_owner=(runuser -u nobody --)
fi

# Starts the cluster in $1 listening at port $2 and waits until it accepts connections.
run_server() {
    # Enough connections for the parallel tests, each with its own pool.
    "${as_owner[@]}" "$bin/pg_ctl" -D "$1/data" -l "$1/postgres.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $2 -k $1 -c max_connections=400 -c shared_buffers=128MB -c ssl=on -c ssl_cert_file=$1/server.pem -c ssl_key_file=$1/server.key -c ssl_ca_file=$1/ca.pem" start >/dev/null ||
        { cat "$1/postgres.log" >&2; exit 1; }
}

case "$cmd" in
start)
    if [[ -e "$dir" ]]; then
        echo "pg-test-cluster: $dir exists; give a new directory" >&2
        exit 1
    fi
    mkdir -p "$dir"
    if [[ "$(id -u)" -eq 0 ]]; then
        chown nobody:nogroup "$dir"
    fi
    # A free port: bind port 0 and read what the kernel chose.
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "${as_owner[@]}" "$bin/initdb" -D "$dir/data" -U dps -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    echo "$port" >"$dir/port"
    # A CA of the cluster's own and a server certificate it issued (ECDSA P-256, 30 days).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=dps test PostgreSQL CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 30 \
        -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n') \
        -out "$dir/server.pem" 2>/dev/null
    # A client certificate for the role that must present one (CN = the role's name).
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=dps_cert" \
        -keyout "$dir/client.key" -out "$dir/client.csr" 2>/dev/null
    openssl x509 -req -in "$dir/client.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 30 \
        -extfile <(printf 'extendedKeyUsage=clientAuth\n') -out "$dir/client.pem" 2>/dev/null
    chmod 600 "$dir/server.key" "$dir/client.key"
    if [[ "$(id -u)" -eq 0 ]]; then
        chown nobody:nogroup "$dir/server.key" "$dir/server.pem"
    fi
    # dps_cert: TLS and a certificate from the cluster's CA, nothing else (first match wins).
    hba="$dir/data/pg_hba.conf"
    { printf 'hostssl all dps_cert 127.0.0.1/32 cert\nhost all dps_cert 0.0.0.0/0 reject\nlocal all dps_cert reject\n'; cat "$hba"; } >"$hba.new"
    mv "$hba.new" "$hba"
    if [[ "$(id -u)" -eq 0 ]]; then
        chown nobody:nogroup "$hba"
    fi
    run_server "$dir" "$port"
    "$bin/psql" -q -h 127.0.0.1 -p "$port" -U dps -d postgres -c "CREATE DATABASE dps" -c "CREATE ROLE dps_cert LOGIN SUPERUSER" >/dev/null
    echo "postgres://dps@127.0.0.1:$port/dps"
    ;;
halt)
    "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
resume)
    run_server "$dir" "$(cat "$dir/port")"
    ;;
stop)
    if [[ -d "$dir/data" ]]; then
        "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop|halt|resume DIR" >&2
    exit 2
    ;;
esac
