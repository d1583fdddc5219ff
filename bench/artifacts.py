#!/usr/bin/env python3
"""Measure Porthole's shipped artifacts: sizes, start-up time, idle memory, healthcheck cost.

    .venv/bin/python bench/artifacts.py [--image TAG] [--docker-host URL] [--runs N] [--json PATH]

Run as root. Without --docker-host it starts its own private dockerd (tests/lib/support.Dockerd,
the test suite's safe flags) and builds the image into it with `./build.sh image`; with
--docker-host it uses that daemon (unix:// URL) and builds the image only if TAG is missing.
dist/porthole is rebuilt first if it is older than its inputs.

Every proxy runs as uid 65532 with only the daemon socket's group, listening on 127.0.0.1 or on
a unix socket; containers run with --network none. Prints a Markdown report, then the JSON.

Figures:
- ready: from just before exec to the first `GET /_ping` answered 200 through the proxy
  (connect is retried every 2 ms), median of N runs. For the image: from `docker start` of a
  created container to the first answered ping on its unix listener.
- floor: `--version` of the same program: bootloaders + archive extraction + interpreter start,
  no sockets; `python3 -c pass` is the bare interpreter.
- idle memory: 1 s after ready, VmRSS summed over the proxy's whole process tree (staticx
  bootloader -> PyInstaller bootloader -> python), and PSS (/proc/PID/smaps_rollup), which
  does not double-count shared pages; in the image also the cgroup's memory figure.
- healthcheck CPU: user+sys from os.wait4 (includes the waited-for bootloader children) of one
  `--healthcheck --listen tcp://...` against a running proxy, median of N.
- image designs: the shipped image (the one-folder bundle, dist/porthole-root) against the
  previous design, dist/porthole (onefile + staticx) in a scratch image with a VOLUME /tmp, built
  here from the same build: sizes uncompressed and compressed (gzip -6 of each layer, as a
  registry stores them), start to first answer, idle memory, healthcheck CPU in the container.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("porthole_test_support", REPO / "tests" / "lib" / "support.py")
support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(support)

PYTHON = "/usr/bin/python3"  # Debian's CPython, what the binary is frozen from
BINARY = REPO / "dist" / "porthole"
BUNDLE = REPO / "dist" / "porthole-root"
# The program's source: proxy.py and the porthole/ package it runs (build.sh's SOURCES).
SOURCES = ("proxy.py", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "porthole").rglob("*.py")))
BUILD_INPUTS = (*SOURCES, "rules.json", "build.sh", "requirements-build.txt",
                "patches/staticx-forward-signals.patch")
BUILD_VENV = Path(os.environ.get("PORTHOLE_BUILD_VENV") or REPO / ".venv-build")  # as build.sh
TARGETS = {"image_bytes": 22_000_000, "ready_s": 0.5, "image_ready_s": 0.15, "idle_mib": 30.0}
HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "none"]
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def log(msg: str) -> None:
    print("# " + msg, file=sys.stderr, flush=True)


def summary(values: list) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


# --------------------------------------------------------------------------------------------
# preparing


def ensure_binary() -> None:
    for output, command in ((BINARY, []), (BUNDLE, ["bundle"])):
        built = output.stat().st_mtime if output.exists() else 0
        if not all(built > (REPO / n).stat().st_mtime for n in BUILD_INPUTS):
            log("%s is stale: ./build.sh %s" % (output, " ".join(command)))
            subprocess.run(["./build.sh", *command], cwd=REPO, check=True)


def stage_sources(checkout: Path, sources, src: Path) -> None:
    """checkout's sources and rules.json, and this interpreter's h11, into src; h11 precompiled
    like an installed package, and porthole/ as a checkout that has run once has it (its
    __pycache__); proxy.py, run as a script, is compiled at every start."""
    for name in (*sources, "rules.json"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(checkout / name, src / name)
    spec = importlib.util.find_spec("h11")
    if spec is None:
        sys.exit("h11 not importable: run with .venv/bin/python")
    support._copy_tree_readable(Path(spec.origin).parent, src / "h11")
    for package in ("h11", "porthole"):
        subprocess.run([PYTHON, "-m", "compileall", "-q", str(src / package)], check=True)


def stage_files() -> Path:
    """A 0755 directory uid 65532 can read: porthole, src/{proxy.py,porthole/,rules.json,h11/}, tmp/ (1777)."""
    stage = support.short_tmpdir("ph-bench-", 0o755)
    shutil.copy2(BINARY, stage / "porthole")
    os.chmod(stage / "porthole", 0o555)
    src = stage / "src"
    src.mkdir(mode=0o755)
    stage_sources(REPO, SOURCES, src)
    for root, dirs, files in os.walk(src):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    (stage / "tmp").mkdir()
    os.chmod(stage / "tmp", 0o1777)
    shutil.copytree(BUNDLE, stage / "bundle", symlinks=True)
    return stage


# --------------------------------------------------------------------------------------------
# measuring processes


def ping(address, timeout: float = 2.0) -> bool:
    """True when GET /_ping through `address` ((host, port) or unix path) answers 200."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(address)
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except OSError:
            return False
    return data.startswith(b"HTTP/1.1 200")


def wait_ping(address, started: float, proc=None, timeout: float = 30.0) -> float:
    while True:
        if ping(address, 2.0):
            return time.perf_counter() - started
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("proxy exited with %s before answering" % proc.returncode)
        if time.perf_counter() - started > timeout:
            raise RuntimeError("no answer on %s within %ss" % (address, timeout))
        time.sleep(0.002)


def children_map() -> dict:
    kids: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int) -> list:
    kids, out, todo = children_map(), [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(sorted(kids.get(pid, [])))
    return out


def proc_memory(pid: int) -> dict:
    info = {"pid": pid}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Name", "VmRSS", "RssAnon", "RssFile"):
                    info[key] = value.strip()
        info["exe"] = os.readlink("/proc/%d/exe" % pid)
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            info["cmdline"] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        pass
    rollup = "/proc/%d/smaps_rollup" % pid
    if os.path.exists(rollup):
        with open(rollup) as f:
            for line in f:
                if line.startswith("Pss:"):
                    info["Pss"] = line.split(":", 1)[1].strip()
    return info


def kb(value) -> int:
    return int(value.split()[0]) if value else 0


def tree_memory(root: int) -> dict:
    procs = [proc_memory(p) for p in process_tree(root)]
    out = {"rss_kib": sum(kb(p.get("VmRSS")) for p in procs), "processes": procs}
    if all("Pss" in p for p in procs):
        out["pss_kib"] = sum(kb(p.get("Pss")) for p in procs)
    return out


def du_kib(path: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total // 1024


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(10)
    return proc.returncode


def timed_run(argv: list, env: dict) -> tuple:
    """(wall s, user+sys s, exit status) of one command; os.wait4 includes waited-for children."""
    started = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    return wall, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)


class Variant:
    """How to run one kind of proxy: the frozen binary or python3 proxy.py."""

    def __init__(self, name: str, argv: list, env: dict):
        self.name, self.argv, self.env = name, argv, env

    def command(self, *args) -> list:
        return self.argv + list(args)


def measure_host(variant: Variant, prefix: list, upstream: str, runs: int, stage: Path) -> dict:
    log("%s: start to ready x%d" % (variant.name, runs))
    ready, memory, extracted = [], None, None
    for i in range(runs):
        port = support.free_port()
        cmd = prefix + variant.command("--listen", "tcp://127.0.0.1:%d" % port, "--upstream", upstream)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=variant.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            ready.append(wait_ping(("127.0.0.1", port), started, proc))
            if i == 0:
                time.sleep(1.0)
                memory = tree_memory(proc.pid)
                if variant.name == "binary":
                    extracted = du_kib(stage / "tmp")
        finally:
            rc = stop(proc)
        if rc != 0:
            raise RuntimeError("%s exited %s on SIGTERM" % (variant.name, rc))
    version = [timed_run(prefix + variant.command("--version"), variant.env) for _ in range(runs)]

    # the healthcheck against a running proxy of the same kind
    port = support.free_port()
    proc = subprocess.Popen(prefix + variant.command("--listen", "tcp://127.0.0.1:%d" % port, "--upstream", upstream),
                            env=variant.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ping(("127.0.0.1", port), time.perf_counter(), proc)
        health = [timed_run(prefix + variant.command("--healthcheck", "--listen", "tcp://127.0.0.1:%d" % port),
                            variant.env) for _ in range(runs)]
    finally:
        stop(proc)
    if any(rc for _, _, rc in version + health):
        raise RuntimeError("%s: --version or --healthcheck failed" % variant.name)
    out = {
        "ready_s": summary(ready),
        "version_wall_s": summary([w for w, _, _ in version]),
        "version_cpu_s": summary([c for _, c, _ in version]),
        "healthcheck_wall_s": summary([w for w, _, _ in health]),
        "healthcheck_cpu_s": summary([c for _, c, _ in health]),
        "idle": memory,
    }
    if extracted is not None:
        out["extracted_kib"] = extracted
    return out


# --------------------------------------------------------------------------------------------
# the image


def docker(url: str, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
    return support.docker_cli(url, *args, check=check, timeout=timeout)


def cgroup_dir(pid: int, controller: str):
    """(version, directory) of `pid`'s cgroup for a v1 controller, or the v2 unified one."""
    try:
        lines = open("/proc/%d/cgroup" % pid).read().splitlines()
    except OSError:
        return None, None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            d = Path("/sys/fs/cgroup/%s%s" % (controller, path))
            if d.is_dir():
                return "v1", d
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            for mount in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
                d = Path(mount + path)
                if (d / "cgroup.controllers").exists() or (d / "memory.current").exists():
                    return "v2", d
    return None, None


def read_stat(path: Path) -> dict:
    out = {}
    if path.exists():
        for row in path.read_text().splitlines():
            k, _, v = row.partition(" ")
            out[k] = int(v)
    return out


def cgroup_memory(pid: int) -> dict:
    """The container's memory cgroup: v2 memory.current (anon/file), or v1 usage_in_bytes (rss/cache)."""
    version, d = cgroup_dir(pid, "memory")
    if version == "v2" and (d / "memory.current").exists():
        stat = read_stat(d / "memory.stat")
        return {"cgroup": "v2 memory.current", "current_bytes": int((d / "memory.current").read_text()),
                "anon_bytes": stat.get("anon"), "file_bytes": stat.get("file")}
    if version == "v1" and (d / "memory.usage_in_bytes").exists():
        stat = read_stat(d / "memory.stat")
        return {"cgroup": "v1 memory.usage_in_bytes", "current_bytes": int((d / "memory.usage_in_bytes").read_text()),
                "anon_bytes": stat.get("total_rss", stat.get("rss")),
                "file_bytes": stat.get("total_cache", stat.get("cache"))}
    return {}


def cgroup_cpu_s(pid: int):
    """CPU seconds used so far by `pid`'s cgroup (all its processes, docker exec ones included)."""
    version, d = cgroup_dir(pid, "cpuacct")
    if version == "v1" and (d / "cpuacct.usage").exists():
        return int((d / "cpuacct.usage").read_text()) / 1e9
    version, d = cgroup_dir(pid, "memory")  # v2: cpu.stat sits in the same unified directory
    if version == "v2" and (d / "cpu.stat").exists():
        return read_stat(d / "cpu.stat")["usage_usec"] / 1e6
    return None


def compressed_size(url: str, image: str) -> int:
    """Bytes of the image's layers compressed with gzip -6, as a registry stores and sends them."""
    import gzip
    import io
    import tarfile

    saved = subprocess.run([support.DOCKER_CLI, "save", image], env=support.docker_env(url),
                           capture_output=True, timeout=120, check=True).stdout
    total = 0
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        for member in outer.getmembers():
            if member.isfile() and (member.name.endswith("layer.tar") or member.name.startswith("blobs/")):
                data = outer.extractfile(member).read()
                try:
                    tarfile.open(fileobj=io.BytesIO(data)).close()
                except tarfile.ReadError:
                    continue  # config or manifest
                total += len(gzip.compress(data, 6, mtime=0))
    return total


ONEFILE_DOCKERFILE = """FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 run/ /run/
VOLUME ["/tmp"]
ENV TMPDIR=/tmp
USER 65532:65532
ENTRYPOINT ["/porthole"]
"""


def build_onefile_image(url: str, tag: str) -> None:
    """The previous image design from this build's dist/porthole: onefile + staticx, unpacking
    into a VOLUME /tmp at every start."""
    context = support.short_tmpdir("ph-bench-img-")
    try:
        (context / "rootfs" / "tmp").mkdir(parents=True)
        (context / "run" / "porthole").mkdir(parents=True)
        shutil.copy2(BINARY, context / "rootfs" / "porthole")
        os.chmod(context / "rootfs" / "porthole", 0o555)
        shutil.copy2(REPO / "rules.json", context / "rootfs" / "rules.json")
        os.chmod(context / "rootfs" / "tmp", 0o1777)
        (context / "Dockerfile").write_text(ONEFILE_DOCKERFILE)
        support.docker_cli(url, "build", "-q", "--network", "none", "-t", tag, str(context), check=True,
                           timeout=300, extra_env={"DOCKER_BUILDKIT": "0"})
    finally:
        shutil.rmtree(context, ignore_errors=True)


def measure_image(url: str, image: str, runs: int) -> dict:
    socket_path = url[len("unix://"):]
    gid = os.stat(socket_path).st_gid
    size = int(docker(url, "image", "inspect", "-f", "{{.Size}}", image).stdout.strip())
    out: dict = {"tag": image, "bytes": size, "compressed_bytes": compressed_size(url, image)}
    log("image: docker start to ready x%d" % runs)
    ready, start_cli = [], []
    for i in range(runs):
        ldir = support.short_tmpdir("ph-bench-ctr-", 0o777)
        # no health check runs during the measurement (the first would come after an hour)
        cid = docker(url, "create", *HARDENED, "-v", "%s:/var/run/docker.sock" % socket_path,
                     "--group-add", str(gid), "-v", "%s:/run/porthole" % ldir,
                     "--health-interval", "1h", "--health-start-period", "0s",
                     image, "--listen", "unix:///run/porthole/docker.sock?mode=0666").stdout.strip()
        try:
            started = time.perf_counter()
            docker(url, "start", cid)
            start_cli.append(time.perf_counter() - started)
            ready.append(wait_ping(str(ldir / "docker.sock"), started))
            if i == 0:
                time.sleep(1.0)
                init = json.loads(docker(url, "inspect", cid).stdout)[0]["State"]["Pid"]
                out["docker_top"] = docker(url, "top", cid, "-eo", "pid,ppid,rss,args").stdout.strip().splitlines()
                out["idle"] = tree_memory(init)
                out["cgroup"] = cgroup_memory(init)
                # the image's HEALTHCHECK command, run the way dockerd runs it (docker exec);
                # its CPU is the container cgroup's CPU delta (the idle proxy adds ~nothing)
                walls, cpus = [], []
                for _ in range(runs):
                    before = cgroup_cpu_s(init)
                    t0 = time.perf_counter()
                    r = docker(url, "exec", cid, "/porthole", "--healthcheck", "--listen",
                               "unix:///run/porthole/docker.sock", check=False)
                    walls.append(time.perf_counter() - t0)
                    after = cgroup_cpu_s(init)
                    if r.returncode != 0:
                        raise RuntimeError("healthcheck in the container failed: %s" % r.stderr)
                    if before is not None and after is not None:
                        cpus.append(after - before)
                out["healthcheck_exec_wall_s"] = summary(walls)
                out["healthcheck_cpu_s"] = summary(cpus) if cpus else None
            t0 = time.perf_counter()
            docker(url, "stop", cid)
            state = json.loads(docker(url, "inspect", cid).stdout)[0]["State"]
            if i == 0:
                out["docker_stop_s"] = time.perf_counter() - t0
                out["exit_code"] = state["ExitCode"]
        finally:
            docker(url, "rm", "-f", "-v", cid, check=False)
            shutil.rmtree(ldir, ignore_errors=True)
    out["ready_s"] = summary(ready)
    out["docker_start_cli_s"] = summary(start_cli)
    return out


# --------------------------------------------------------------------------------------------
# where the start-up time goes: rebuild the layers separately


def decompose(runs: int) -> dict:
    """Freeze proxy.py and porthole/ again like build.sh does (same PyInstaller flags and
    excludes), then time `--version` of: the PyInstaller onefile alone (dynamic, zlib archive),
    staticx over it with its default xz-compressed archive (= dist/porthole), and staticx
    --no-compress."""
    import re

    venv = BUILD_VENV / "bin"
    if not (venv / "pyinstaller").exists():
        return {"skipped": "no %s" % BUILD_VENV}
    text = (REPO / "build.sh").read_text()
    excludes = re.search(r"^EXCLUDES=\((.*?)\)", text, re.S | re.M).group(1).split()
    work = Path(tempfile.mkdtemp(prefix="ph-bench-sx-"))
    try:
        for name in (*SOURCES, "rules.json"):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
        env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", PYTHONHASHSEED="0",
                   PYINSTALLER_CONFIG_DIR=str(work / "pyi-config"))
        cmd = [str(venv / "pyinstaller"), "--onefile", "--noconfirm", "--clean", "--log-level", "WARN", "--strip",
               "--name", "porthole", "--add-data", "rules.json:.", "--workpath", str(work / "build"),
               "--distpath", str(work / "dist"), "--specpath", str(work)]
        for module in excludes:
            cmd += ["--exclude-module", module]
        log("decomposition: PyInstaller onefile, staticx xz and staticx --no-compress")
        subprocess.run(cmd + ["proxy.py"], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
        variants = {"pyinstaller onefile only (dynamic)": work / "dist" / "porthole"}
        for label, compress in (("staticx, xz archive (as built)", True), ("staticx --no-compress", False)):
            out = work / ("sx-%s" % compress)
            subprocess.run([str(venv / "python"), "-c",
                            "import sys, staticx.api; staticx.api.generate(sys.argv[1], sys.argv[2], strip=True, "
                            "compress=sys.argv[3] == 'True')", str(variants["pyinstaller onefile only (dynamic)"]),
                            str(out), str(compress)], check=True, env=env)
            variants[label] = out
        tmp = work / "tmp"
        tmp.mkdir()
        result = {}
        for label, exe in variants.items():
            os.chmod(exe, 0o755)
            timings = [timed_run([str(exe), "--version"], dict(ENV, TMPDIR=str(tmp))) for _ in range(runs)]
            result[label] = {"bytes": exe.stat().st_size, "version_wall_s": summary([w for w, _, _ in timings]),
                             "version_cpu_s": summary([c for _, c, _ in timings])}
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# report


def mib(kib) -> str:
    return "-" if kib is None else "%.1f MiB" % (kib / 1024)


def ms(value) -> str:
    return "-" if value is None else "%.0f ms" % (value * 1000)


def report(r: dict) -> str:
    b, s, img = r["host"]["binary"], r["host"]["source"], r.get("image")
    rows = [
        ("size", "%.2f MB (%d B)" % (r["binary"]["bytes"] / 1e6, r["binary"]["bytes"]),
         "%d B of source (proxy.py, porthole/)" % r["source_bytes"],
         "%.2f MB (%d B)" % (img["bytes"] / 1e6, img["bytes"]) if img else "-", "image <= 22 MB",
         verdict(img and img["bytes"] <= TARGETS["image_bytes"])),
        ("start to first answered /_ping (median)", ms(b["ready_s"]["median"]), ms(s["ready_s"]["median"]),
         ms(img["ready_s"]["median"]) + " (from `docker start`; the CLI returns after %s)"
         % ms(img["docker_start_cli_s"]["median"]) if img else "-", "<= 0.5 s (image: 150 ms)",
         verdict(b["ready_s"]["median"] <= TARGETS["ready_s"]
                 and (not img or img["ready_s"]["median"] <= TARGETS["image_ready_s"]))),
        ("floor: --version wall (median)", ms(b["version_wall_s"]["median"]), ms(s["version_wall_s"]["median"]),
         "-", "", ""),
        ("floor: --version CPU user+sys (median)", ms(b["version_cpu_s"]["median"]),
         ms(s["version_cpu_s"]["median"]), "-", "", ""),
        ("idle RSS, whole process tree", mib(b["idle"]["rss_kib"]), mib(s["idle"]["rss_kib"]),
         mib(img["idle"]["rss_kib"]) if img else "-", "<= 30 MB",
         verdict(b["idle"]["rss_kib"] / 1024 <= TARGETS["idle_mib"])),
        ("idle PSS, whole process tree", mib(b["idle"].get("pss_kib")), mib(s["idle"].get("pss_kib")),
         mib(img["idle"].get("pss_kib")) if img else "-", "<= 30 MB",
         verdict(b["idle"].get("pss_kib", 1e12) / 1024 <= TARGETS["idle_mib"])),
        ("cgroup memory (anon / file)", "-", "-",
         "%s (%s / %s)" % (mib(img["cgroup"]["current_bytes"] / 1024), mib((img["cgroup"]["anon_bytes"] or 0) / 1024),
                           mib((img["cgroup"]["file_bytes"] or 0) / 1024))
         if img and img.get("cgroup") else "-", "", ""),
        ("--healthcheck CPU user+sys (median)", ms(b["healthcheck_cpu_s"]["median"]),
         ms(s["healthcheck_cpu_s"]["median"]),
         (ms(img["healthcheck_cpu_s"]["median"]) + " (cgroup CPU delta)")
         if img and img.get("healthcheck_cpu_s") else "-",
         "", ""),
        ("--healthcheck wall (median)", ms(b["healthcheck_wall_s"]["median"]), ms(s["healthcheck_wall_s"]["median"]),
         (ms(img["healthcheck_exec_wall_s"]["median"]) + " (`docker exec`)") if img else "-", "", ""),
        ("`docker stop` (exit code)", "-", "-",
         "%s (%s)" % (ms(img["docker_stop_s"]), img["exit_code"]) if img else "-", "", ""),
    ]
    lines = ["| figure | dist/porthole (host) | python3 proxy.py (host) | image | target | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += ["| %s |" % " | ".join(row) for row in rows]
    if r.get("decomposition") and "skipped" not in r["decomposition"]:
        lines += ["", "Start-up decomposition (`--version`, median of %d; same PyInstaller flags as build.sh):" % (
            next(iter(r["decomposition"].values()))["version_cpu_s"]["runs"]), "",
            "| variant | size | --version wall | --version CPU |", "| --- | --- | --- | --- |"]
        for label, v in r["decomposition"].items():
            lines.append("| %s | %.2f MB | %s | %s |" % (label, v["bytes"] / 1e6, ms(v["version_wall_s"]["median"]),
                                                       ms(v["version_cpu_s"]["median"])))
    load = r.get("loadavg")
    if load and max(load["start"][0], load["end"][0]) > (r.get("cpus") or 1):
        lines += ["", "NOTE: the machine was busy (load average %.1f at start, %.1f at end, %s CPUs): wall times "
                  "are inflated; the CPU (user+sys) figures are the steadier ones." % (
                      load["start"][0], load["end"][0], r.get("cpus"))]
    lines += ["", "Process trees at idle (host binary / image):"]
    for label, mem in (("host", b["idle"]), ("image", img["idle"] if img else None)):
        if not mem:
            continue
        for p in mem["processes"]:
            lines.append("- %s pid %s %s: VmRSS %s (anon %s, file %s), Pss %s -- %s" % (
                label, p["pid"], p.get("exe", "?"), p.get("VmRSS"), p.get("RssAnon"), p.get("RssFile"),
                p.get("Pss", "-"), p.get("cmdline", "")))
    bundle = r["host"].get("bundle")
    if bundle:
        lines += ["", "dist/porthole-root/porthole (the image's one-folder program) on the host: ready %s, "
                  "--version CPU %s, --healthcheck CPU %s, idle RSS %s (%d process)." % (
                      ms(bundle["ready_s"]["median"]), ms(bundle["version_cpu_s"]["median"]),
                      ms(bundle["healthcheck_cpu_s"]["median"]), mib(bundle["idle"]["rss_kib"]),
                      len(bundle["idle"]["processes"]))]
    lines += ["", "What dominates:"] + ["- " + n for n in notes(r)]
    designs = [(label, r[key]) for label, key in (("one-folder bundle + loader/libs (shipped)", "image"),
                                                  ("onefile + staticx, VOLUME /tmp (previous)", "image_onefile"))
               if r.get(key)]
    if designs:
        lines += ["", "Image designs (same build, same daemon):", "",
                  "| figure | " + " | ".join(label for label, _ in designs) + " |",
                  "| --- |" + " --- |" * len(designs)]
        figures = (
            ("uncompressed size", lambda i: "%.2f MB" % (i["bytes"] / 1e6)),
            ("compressed size (gzip -6 layers)", lambda i: "%.2f MB" % (i["compressed_bytes"] / 1e6)),
            ("start to first answer (median)", lambda i: ms(i["ready_s"]["median"])),
            ("processes", lambda i: str(len(i["idle"]["processes"]))),
            ("idle RSS (process tree)", lambda i: mib(i["idle"]["rss_kib"])),
            ("idle PSS (process tree)", lambda i: mib(i["idle"].get("pss_kib"))),
            ("cgroup memory", lambda i: mib(i["cgroup"]["current_bytes"] / 1024) if i.get("cgroup") else "-"),
            ("--healthcheck CPU (cgroup delta, median)",
             lambda i: ms(i["healthcheck_cpu_s"]["median"]) if i.get("healthcheck_cpu_s") else "-"),
            ("--healthcheck wall (`docker exec`)", lambda i: ms(i["healthcheck_exec_wall_s"]["median"])),
        )
        for name, fmt in figures:
            lines.append("| %s | %s |" % (name, " | ".join(fmt(i) for _, i in designs)))
    return "\n".join(lines)


def verdict(ok) -> str:
    return "n/a" if ok is None else ("ok" if ok else "MISSED")


def notes(r: dict) -> list:
    b, s, img, floor = r["host"]["binary"], r["host"]["source"], r.get("image"), r["python_floor_s"]
    out = []
    ready, version = b["ready_s"]["median"], b["version_wall_s"]["median"]
    out.append("start: dist/porthole needs %s to answer; its --version alone (no sockets, no rules) takes %s, "
               "so the launch is nearly all of it: the staticx "
               "bootloader unpacking its archive (libc, ld.so, the PyInstaller executable) into $TMPDIR, the "
               "PyInstaller bootloader unpacking the onefile archive (libpython, extension modules, base_library.zip; "
               "%s on disk) and starting a second process, then interpreter start. From source, python3 proxy.py "
               "answers in %s (--version %s, bare `python3 -c pass` %s), so about %s of the binary's start is the "
               "two extractions and extra processes." % (
                   ms(ready), ms(version), mib(b.get("extracted_kib")),
                   ms(s["ready_s"]["median"]),
                   ms(s["version_wall_s"]["median"]), ms(floor), ms(version - s["version_wall_s"]["median"])))
    d = r.get("decomposition") or {}
    if "staticx --no-compress" in d:
        keys = ("pyinstaller onefile only (dynamic)", "staticx, xz archive (as built)", "staticx --no-compress")
        only, xz, raw = (d[k]["version_cpu_s"]["median"] for k in keys)
        out.append("decomposition (CPU): the PyInstaller onefile alone needs %s for --version (zlib extraction + "
                   "interpreter); staticx's xz-compressed archive adds %s on top, staticx --no-compress only %s. "
                   "xz decompression is the largest single cost of every start and every healthcheck; "
                   "--no-compress trades it for %.1f MB more binary (%.2f MB; the host binary, the image no longer carries it)." % (
                       ms(only), ms(xz - only), ms(raw - only),
                       (d["staticx --no-compress"]["bytes"] - d["staticx, xz archive (as built)"]["bytes"]) / 1e6,
                       d["staticx --no-compress"]["bytes"] / 1e6))
    procs = b["idle"]["processes"]
    if procs:
        biggest = max(procs, key=lambda p: kb(p.get("Pss") or p.get("VmRSS")))
        out.append("memory: the python process (pid %s, the PyInstaller child) carries most of it: Pss %s of %s "
                   "(anon %s: interpreter heap, modules; file: libpython and extension modules mapped from the "
                   "extracted files); the staticx and PyInstaller parents only wait for their child and forward "
                   "signals. VmRSS summed over the tree double-counts pages the processes share, PSS does not. "
                   "From source the tree is one python process (Pss %s)." % (
                       biggest["pid"], biggest.get("Pss", biggest.get("VmRSS")), mib(b["idle"].get("pss_kib")),
                       biggest.get("RssAnon"), mib(s["idle"].get("pss_kib"))))
    if img and img.get("cgroup"):
        out.append("image memory: the cgroup figure also counts page cache (file %s: with the onefile design, "
                   "the files the bootloaders extracted into /tmp), which the kernel can reclaim; anon %s is the "
                   "working set." % (mib((img["cgroup"]["file_bytes"] or 0) / 1024),
                                     mib((img["cgroup"]["anon_bytes"] or 0) / 1024)))
    out.append("healthcheck: each run of the onefile binary pays the full start cost again (both extractions + "
               "interpreter) for one request: %s CPU, vs %s from source; the request itself is ~1 ms. The image "
               "runs the one-folder program, which unpacks nothing." % (
                   ms(b["healthcheck_cpu_s"]["median"]), ms(s["healthcheck_cpu_s"]["median"])))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=None, help="image tag (default porthole-bench/porthole:latest)")
    ap.add_argument("--docker-host", default=None, help="unix:// URL of a daemon to use instead of a private one")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--image-runs", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument("--no-onefile-image", action="store_true",
                    help="skip building and measuring the previous image design (onefile + staticx)")
    ap.add_argument("--no-decompose", action="store_true",
                    help="skip rebuilding PyInstaller-only and staticx --no-compress variants (~20 s)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the proxies run as uid 65532 via setpriv, dockerd needs root)")
    ensure_binary()
    dockerd = None
    url = args.docker_host
    image = args.image or "porthole-bench/porthole:latest"
    workdir = Path(tempfile.mkdtemp(prefix="ph-bench-d-"))
    try:
        if url is None:
            log("starting a private dockerd")
            dockerd = support.Dockerd().start(workdir, support.DEFAULT_SOCK_GID)
            url = dockerd.url
        if not url.startswith("unix://"):
            sys.exit("--docker-host must be a unix:// URL (the proxies and the container mount the socket)")
        gid = os.stat(url[len("unix://"):]).st_gid
        stage = stage_files()
        prefix = ["/usr/bin/setpriv", "--reuid=65532", "--regid=65532", "--groups=%d" % gid]
        binary = Variant("binary", [str(stage / "porthole")], dict(ENV, TMPDIR=str(stage / "tmp")))
        bundle = Variant("bundle", [str(stage / "bundle" / "porthole")], dict(ENV))
        source = Variant("source",
                         [PYTHON, str(stage / "src" / "proxy.py"), "--rules", str(stage / "src" / "rules.json")],
                         dict(ENV, PYTHONPATH=str(stage / "src"), PYTHONDONTWRITEBYTECODE="1"))
        load_start = os.getloadavg()
        floor = [timed_run(prefix + [PYTHON, "-c", "pass"], ENV)[0] for _ in range(args.runs)]
        results = {
            "binary": {"path": str(BINARY), "bytes": BINARY.stat().st_size,
                       "sha256": hashlib.sha256(BINARY.read_bytes()).hexdigest()},
            "source_bytes": sum((REPO / name).stat().st_size for name in SOURCES),
            "python_floor_s": statistics.median(floor),
            "host": {"binary": measure_host(binary, prefix, url, args.runs, stage),
                     "bundle": measure_host(bundle, prefix, url, args.runs, stage),
                     "source": measure_host(source, prefix, url, args.runs, stage)},
            "cpus": os.cpu_count(),
            "loadavg": {"start": load_start},
        }
        present = docker(url, "image", "inspect", image, check=False).returncode == 0
        if dockerd is not None or not present:
            log("./build.sh image -> %s" % image)
            subprocess.run(["./build.sh", "image"], cwd=REPO, check=True,
                           env=support.docker_env(url, {"PORTHOLE_IMAGE": image}))
        results["image"] = measure_image(url, image, args.image_runs)
        if not args.no_onefile_image:
            onefile = image.rsplit(":", 1)[0] + "-onefile:latest"
            log("the previous design for comparison -> %s" % onefile)
            build_onefile_image(url, onefile)
            results["image_onefile"] = measure_image(url, onefile, args.image_runs)
        if not args.no_decompose:
            results["decomposition"] = decompose(args.runs)
        results["loadavg"]["end"] = os.getloadavg()
    finally:
        if dockerd is not None:
            dockerd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(results))
    print()
    print("```json")
    print(json.dumps(results, indent=2))
    print("```")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
