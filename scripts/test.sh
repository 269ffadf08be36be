#!/usr/bin/env bash
# The whole test suite, in one command: ./scripts/test.sh
#
#   1. system dependencies          scripts/install-deps.sh
#   2. formatting                   cargo fmt --all -- --check
#   3. lints                        cargo clippy --workspace --all-targets --all-features -- -D warnings
#                                   (and once without features: the default build must stay clean)
#   4. build (target/debug/dps)     cargo build --workspace --all-features
#   5. PostgreSQL                   scripts/pg-test-cluster.sh: a throwaway cluster for the run
#                                   (DPS_TEST_POSTGRES=its URL; stopped and removed at exit)
#   6. Rust tests                   cargo nextest run --workspace --all-features
#                                   + cargo test --doc --workspace --all-features
#                                   (plain `cargo test --workspace --all-features` when nextest is absent)
#   7. Python env                   scripts/setup-python.sh (.venv with the pinned Azure SDKs)
#                                   scripts/setup-node.sh (the pinned Node SDKs, tests/interop/node)
#   8. interop tests                pytest -q tests/interop (official Azure SDKs vs target/debug/dps)
#
# --all-features turns on the `tpm` feature (TPM attestation through libtss2; the tests run a
# swtpm per test), so target/debug/dps has `dps tpm` and `--tpm` for the interop tests too.
#
# Fails fast on the first failing step. Extra arguments are passed to pytest
# (e.g. ./scripts/test.sh -k service -x).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECONDS=0
section() {
    printf '\n==== [%3ds] %s ====\n' "$SECONDS" "$*"
}
PG_DIR=""
on_exit() {
    local rc=$?
    if [[ -n "$PG_DIR" ]]; then
        bash "$ROOT/scripts/pg-test-cluster.sh" stop "$PG_DIR" || true
    fi
    if [[ $rc -ne 0 ]]; then
        printf "\n==== FAILED (exit %d) after %ds: %s ====\n" "$rc" "$SECONDS" "${CURRENT_STEP:-}" >&2
    fi
}
trap on_exit EXIT

step() {
    CURRENT_STEP="$*"
    section "$*"
}

step "install system dependencies"
bash scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all features)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo clippy (default features)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build"
cargo build --workspace --all-features

step "PostgreSQL test cluster"
PG_DIR="$(mktemp -u "${TMPDIR:-/tmp}/dps-pg.XXXXXX")"
DPS_TEST_POSTGRES="$(bash scripts/pg-test-cluster.sh start "$PG_DIR")"
export DPS_TEST_POSTGRES
# The CA of the cluster's TLS certificate (the TLS tests verify the server against it).
export DPS_TEST_POSTGRES_CA="$PG_DIR/ca.pem"
echo "PostgreSQL at $DPS_TEST_POSTGRES"

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-features --no-tests=warn
    step "Rust doc tests"
    cargo test --doc --workspace --all-features
else
    cargo test --workspace --all-features
fi

step "Python environment"
bash scripts/setup-python.sh

step "Node environment"
bash scripts/setup-node.sh

step "interop tests (official Azure SDKs)"
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$ROOT/$target_dir"
export DPS_BIN="${DPS_BIN:-$target_dir/debug/dps}"
"$ROOT/.venv/bin/python" -m pytest -q tests/interop "$@"

CURRENT_STEP=""
section "all tests passed"
