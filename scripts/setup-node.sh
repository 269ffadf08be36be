#!/usr/bin/env bash
# Install the official Azure IoT Node SDKs the interop tests drive (tests/interop/node), at the
# versions pinned in its package-lock.json, into tests/interop/node/node_modules.
#
# Idempotent: a stamp file records the hash of the lock file; npm only runs when node_modules is
# missing or the lock file changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/tests/interop/node"
STAMP="$DIR/node_modules/.interop-lock.sha256"

want="$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "setup-node: Node SDKs up to date"
    exit 0
fi
echo "setup-node: installing the Node SDKs (npm ci) in $DIR"
(cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error)
echo "$want" > "$STAMP"
