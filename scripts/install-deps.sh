#!/usr/bin/env bash
# Install the system packages the build and the test suite need on a fresh Debian
# machine. Only missing things are installed (apt-get runs at most once, and not at
# all when everything is present), so this is quick and idempotent.
#
# Current needs:
#   - a C toolchain and pkg-config (crates that build C code, e.g. rusqlite bundled, ring)
#   - python3 with a working `venv` module (tests/interop runs in <repo>/.venv)
#   - the TPM 2.0 stack for the `tpm` cargo feature and its tests: libtss2-dev (ESAPI, MU,
#     TCTI loader; tss-esapi links it through pkg-config), the swtpm TCTI, swtpm + swtpm-tools
#     (a software TPM per test) and tpm2-tools (for poking at a TPM by hand)
#   - Node.js and npm for the interop tests with the official Node SDKs (tests/interop/node)
#   - Chromium (Debian's `chromium`) for the web portal's end-to-end tests, which drive it
#     headless with playwright-core (tests/interop/test_portal.py)
#   - the PostgreSQL server (`dps serve --store postgres://…`, issue 15): the tests run a
#     throwaway cluster of their own (scripts/pg-test-cluster.sh), no system service needed,
#     with TLS certificates made by the openssl command
set -euo pipefail

missing=()

command -v cc >/dev/null 2>&1 || missing+=(build-essential)
# jemalloc (the `dps` binary's allocator, decision 0025) is built with make.
command -v make >/dev/null 2>&1 || missing+=(make)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
else
    # `python3 -m venv` needs ensurepip, which Debian ships separately (python3-venv /
    # python3.X-venv); without it `import ensurepip` fails.
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        missing+=(python3-venv "python${pyver}-venv")
    fi
fi

if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists tss2-esys tss2-tctildr tss2-mu tss2-sys; then
    missing+=(libtss2-dev)
fi
# The swtpm TCTI is loaded at run time by name (libtss2-tcti-swtpm.so.0), so check the library.
if ! ldconfig -p 2>/dev/null | grep -q 'libtss2-tcti-swtpm\.so\.0'; then
    missing+=(libtss2-tcti-swtpm0)
fi
command -v swtpm >/dev/null 2>&1 || missing+=(swtpm)
command -v swtpm_setup >/dev/null 2>&1 || missing+=(swtpm-tools)
command -v tpm2_createek >/dev/null 2>&1 || missing+=(tpm2-tools)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# The test cluster's TLS certificates are made with the openssl command (scripts/pg-test-cluster.sh).
command -v openssl >/dev/null 2>&1 || missing+=(openssl)

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all system dependencies present"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: missing ${missing[*]} and apt-get is not available; install them manually" >&2
    exit 1
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# python3.X-venv may not exist under that name on every release; fall back to the rest.
if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    filtered=()
    for p in "${missing[@]}"; do [[ "$p" == python3.*-venv ]] || filtered+=("$p"); done
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${filtered[@]}"
fi
echo "install-deps: done"
