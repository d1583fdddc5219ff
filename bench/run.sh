#!/usr/bin/env bash
# Porthole's side-by-side benchmark: direct vs HAProxy vs porthole (source) vs porthole (binary).
#
#   bench/run.sh                 full run (about 22 min on 2 CPUs): bench/results/<date>-<host>.md + .json
#   bench/run.sh --smoke         every scenario and contender once, tiny durations (about 1 min);
#                                fails only if a scenario produced no numbers or a check broke
#   bench/run.sh --help          options: --rounds, --duration, --scenarios, --contenders, --profile, ...
#
# Needs root (it starts its own private dockerd). Installs Debian's wrk, haproxy and nginx-light
# if missing (without starting their services), the test dependencies (./build.sh deps) and
# dist/porthole (./build.sh) if it is missing or older than its inputs. Everything listens on
# 127.0.0.1 or on unix sockets in a private directory, and is stopped and removed on exit.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
cd "$ROOT"
VENV_PY="$ROOT/.venv/bin/python"
PACKAGES=(wrk haproxy nginx-light)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench/run.sh: %s\n' "$*" >&2; exit 1; }

for arg in "$@"; do
    case "$arg" in -h|--help) exec python3 "$BENCH/bench.py" --help ;; esac
done
[ "$(id -u)" -eq 0 ] || die "must run as root: it starts a private dockerd (and runs the proxies as uid 65532)"

WORK=""
PY_PID=""
POLICY_RC=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
        kill -TERM "$PY_PID" 2>/dev/null || true
        wait "$PY_PID" 2>/dev/null || true
    fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        # Normally a no-op: bench.py cleans up after itself. This catches a bench.py that was killed.
        "$VENV_PY" "$BENCH/bench.py" --work "$WORK" --cleanup-only || true
        rm -rf "$WORK"
    fi
    [ -z "$POLICY_RC" ] || rm -f "$POLICY_RC"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---- what the benchmark needs ------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # Don't let the packages start system-wide nginx/haproxy services (port 80 and such).
        POLICY_RC=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$POLICY_RC"
        chmod 0755 "$POLICY_RC"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$POLICY_RC" ] || { rm -f "$POLICY_RC"; POLICY_RC=""; }
fi
log "checking the test dependencies (./build.sh deps)"
./build.sh deps

# build.sh's rule (is_fresh): newer than the source (proxy.py, porthole/'s modules) and the build inputs
fresh=1
[ -x dist/porthole ] || fresh=0
for input in proxy.py $(find porthole -name '*.py') rules.json requirements-build.txt build.sh \
             patches/staticx-forward-signals.patch; do
    [ "$fresh" -eq 1 ] && [ dist/porthole -nt "$input" ] || fresh=0
done
if [ "$fresh" -eq 0 ]; then
    log "building dist/porthole (./build.sh)"
    ./build.sh
fi

# 1000 event streams through a proxy take about 2000 descriptors in it.
hard="$(ulimit -Hn)"
[ "$hard" = unlimited ] && hard=65536
[ "$hard" -gt 65536 ] && hard=65536
ulimit -n "$hard"
[ "$(ulimit -n)" -ge 4096 ] || die "open-files limit $(ulimit -n) is too low (need 4096 or more)"

WORK="$(mktemp -d /tmp/phb.XXXXXX)"
chmod 0755 "$WORK"

# In the background so that a signal reaches the trap at once; bench.py ends cleanly on SIGTERM.
"$VENV_PY" "$BENCH/bench.py" --work "$WORK" "$@" &
PY_PID=$!
set +e
wait "$PY_PID"
status=$?
set -e
PY_PID=""
exit "$status"
