#!/usr/bin/env bash
# Porthole's one entry point for set-up, tests and running.
#
#   ./build.sh test [pytest args]   install what a fresh machine lacks, run the whole test suite
#   ./build.sh run [proxy args]     start the proxy on the host's Docker socket (default rules)
#   ./build.sh deps                 only install system packages and the virtualenv
#
# Everything it installs comes from Debian packages (apt-get) and pinned, hash-checked
# Python packages (pip, into .venv). Nothing is downloaded from anywhere else.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
PYTHON=/usr/bin/python3  # Debian's CPython: the build chain (staticx) needs it, so tests use it too
VENV="$ROOT/.venv"
TEST_PACKAGES=(python3 python3-venv python3-dev docker.io busybox-static util-linux procps)
RUN_PACKAGES=(python3 python3-venv util-linux)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})"
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Create .venv from a pinned, hash-checked requirements file; reinstall when the file changes.
venv_install() {
    local requirements="$1" stamp="$VENV/.installed-$(basename "$1")"
    local want; want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "pip install -r $requirements (hash-checked)"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --require-hashes -r "$requirements"
        echo "$want" > "$stamp"
    fi
}

cmd_deps() {
    apt_install "${TEST_PACKAGES[@]}"
    venv_install requirements-dev.txt
}

cmd_test() {
    cmd_deps
    command -v dockerd >/dev/null || die "dockerd not found after installing docker.io"
    log "running the test suite"
    exec "$VENV/bin/python" -m pytest "$@"
}

cmd_run() {
    apt_install "${RUN_PACKAGES[@]}"
    venv_install requirements.txt
    local socket="${PORTHOLE_SOCKET:-/var/run/docker.sock}"
    local args=("$@")
    [ ${#args[@]} -gt 0 ] || args=(--listen "${PORTHOLE_LISTEN:-tcp://127.0.0.1:2375}" --upstream "unix://$socket")
    if [ "$(id -u)" -ne 0 ]; then
        exec "$VENV/bin/python" "$ROOT/proxy.py" "${args[@]}"
    fi
    # As root: never run the proxy as root. Stage the program where an unprivileged user can
    # read it and run it as uid 65532 with only the Docker socket's group.
    [ -S "$socket" ] || die "no Docker socket at $socket (set PORTHOLE_SOCKET)"
    local gid stage site
    gid="$(stat -c %g "$socket")"
    stage="$(mktemp -d /tmp/porthole-run.XXXXXX)"
    site="$("$VENV/bin/python" -c 'import h11, os; print(os.path.dirname(h11.__file__))')"
    cp proxy.py rules.json "$stage/" && cp -r "$site" "$stage/h11"
    chmod -R a+rX "$stage"
    log "running as uid 65532 with the socket's group $gid (staged in $stage)"
    exec setpriv --reuid=65532 --regid=65532 --clear-groups --groups="$gid" \
        env PYTHONPATH="$stage" PYTHONDONTWRITEBYTECODE=1 "$PYTHON" "$stage/proxy.py" "${args[@]}"
}

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

case "${1:-help}" in
    test) shift; cmd_test "$@" ;;
    run) shift; cmd_run "$@" ;;
    deps) shift; cmd_deps ;;
    help|-h|--help) usage ;;
    *) usage; exit 2 ;;
esac
