#!/usr/bin/env bash
# Create <repo>/.venv (if missing) and install the pinned interop test
# requirements (tests/interop/requirements.txt) into it.
#
# Idempotent: a stamp file inside the venv records the hash of the
# requirements file; pip only runs when the venv is new, the requirements
# changed, or a required module cannot be imported.
#
# Honours PIP_FIND_LINKS (e.g. a local wheel cache at /opt/wheels) and the
# usual pip environment variables. Set PYTHON to choose the interpreter.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQ="$ROOT/tests/interop/requirements.txt"
STAMP="$VENV/.interop-requirements.sha256"
PYTHON="${PYTHON:-python3}"

if [[ -z "${PIP_FIND_LINKS:-}" && -d /opt/wheels ]] && compgen -G "/opt/wheels/*" >/dev/null; then
    export PIP_FIND_LINKS=/opt/wheels
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    echo "setup-python: creating virtualenv $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"

imports_ok() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import azure.iot.device, azure.iot.deviceprovisioning, azure.iot.hub, cryptography, pytest, requests  # noqa: F401
PY
}

if [[ "$want" == "$have" ]] && imports_ok; then
    echo "setup-python: $VENV is up to date"
    exit 0
fi

echo "setup-python: installing $REQ"
"$VENV/bin/python" -m pip install --quiet --requirement "$REQ"
imports_ok || { echo "setup-python: packages installed but imports fail" >&2; exit 1; }
echo "$want" >"$STAMP"
echo "setup-python: done"
