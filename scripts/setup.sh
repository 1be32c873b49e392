#!/usr/bin/env bash
# Prepares a fresh clone: Rust crates, a virtual environment with the Python dependencies, and
# the oplog extension built in release mode. Idempotent; `make` runs it before anything else.
#
#   OPLOG_PYTHON   the interpreter to build the venv from (default: python3)
#   OPLOG_SKIP_APT set to 1 to never call apt-get (the packages must then already be there)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv="$root/.venv"
python=${OPLOG_PYTHON:-python3}

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root for: $*"; return 1; fi
}

apt_install() {
    [ "${OPLOG_SKIP_APT:-0}" = 1 ] && return 0
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# --- Rust toolchain ---------------------------------------------------------------------------
# The crates (PyO3 and the test dependencies) come from crates.io, pinned by Cargo.lock.
if ! command -v cargo >/dev/null; then
    log "no Rust toolchain: install one with rustup (cargo and rustc $(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml) or newer)"
    exit 1
fi

# --- PostgreSQL server for the test suite ---------------------------------------------------
apt_install postgresql-15

# --- Python ---------------------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    "$python" -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Python dependencies"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
    echo "$want" > "$stamp"
fi

# --- The extension --------------------------------------------------------------------------
log "building oplog._core (release)"
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" "$venv/bin/maturin" develop --release --quiet
