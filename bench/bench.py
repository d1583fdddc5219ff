#!/usr/bin/env python3
"""Porthole side-by-side benchmark. Start it with bench/run.sh (which installs what it needs).

Contenders, interleaved round by round so drift hits all of them alike:
  direct        wrk straight to the daemon's loopback TCP port (or to nginx for the fake upstream)
  haproxy       HAProxy with an equivalent read-only allowlist (haproxy.cfg.in), on the unix socket
  porthole-src  python3 proxy.py with porthole/ beside it (Debian's /usr/bin/python3, the venv's h11),
                uid 65532
  porthole-bin  dist/porthole, uid 65532

Everything listens on 127.0.0.1 or on unix sockets in a private directory; every process started
here is stopped, and the private dockerd and its containers removed, on the way out.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import report  # noqa: E402  (bench/report.py)


def _load_support():
    spec = importlib.util.spec_from_file_location("porthole_tests_support", REPO / "tests" / "lib" / "support.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


support = _load_support()
fu = support.fu  # tests/lib/fake_upstream.py: the test suite's raw HTTP client

PROXY_UID = support.PROXY_UID  # 65532
SOCK_GID = support.DEFAULT_SOCK_GID  # 2375: the private daemon's socket group
SYSTEM_PYTHON = "/usr/bin/python3"
CONTENDERS = ("direct", "haproxy", "porthole-src", "porthole-bin")
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Interrupted(Exception):
    pass


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# configuration

SCENARIOS = [
    # key, title, upstream, method, path, connections, wrk threads, unit, denied
    {"key": "ping-1", "title": "GET /_ping, 1 connection", "upstream": "daemon", "method": "GET",
     "path": "/_ping", "conns": 1, "threads": 1, "unit": "req/s"},
    {"key": "ping-16", "title": "GET /_ping, 16 connections", "upstream": "daemon", "method": "GET",
     "path": "/_ping", "conns": 16, "threads": 2, "unit": "req/s"},
    {"key": "ping-256", "title": "GET /_ping, 256 connections", "upstream": "daemon", "method": "GET",
     "path": "/_ping", "conns": 256, "threads": 2, "unit": "req/s"},
    {"key": "containers", "title": "GET /containers/json?all=1 (real daemon), {conns} connections",
     "upstream": "daemon", "method": "GET", "path": "/containers/json?all=1", "conns": 4,
     "threads": 1, "unit": "req/s"},
    # response filtering (issue: redaction, visible labels): the same reads through porthole's
    # filtering profiles; direct and HAProxy answer them unfiltered, as the baseline
    {"key": "inspect", "title": "GET /containers/{{id}}/json, env redacted (default profile), {conns} connections",
     "upstream": "daemon", "method": "GET", "path": "/containers/bench-00/json", "conns": 4,
     "threads": 1, "unit": "req/s"},
    {"key": "inspect-unfiltered", "title": "GET /containers/{{id}}/json, \"redact\": [] (nothing filtered), {conns} connections",
     "upstream": "daemon", "method": "GET", "path": "/containers/bench-00/json", "conns": 4,
     "threads": 1, "unit": "req/s", "profile": "bench-unfiltered"},
    {"key": "containers-scoped", "title": "GET /containers/json?all=1, visible: half the containers, {conns} connections",
     "upstream": "daemon", "method": "GET", "path": "/containers/json?all=1", "conns": 4,
     "threads": 1, "unit": "req/s", "profile": "bench-scoped"},
    # issue 12: dashboards polling one list (coalesced by porthole), and reads of distinct objects
    {"key": "list-16", "title": "GET /containers/json?all=1 (real daemon), 16 clients polling the same list",
     "upstream": "daemon", "method": "GET", "path": "/containers/json?all=1", "conns": 16,
     "threads": 2, "unit": "req/s"},
    {"key": "inspect-distinct", "title": "GET /containers/{{id}}/json of {distinct} different containers in turn, "
                                         "\"redact\": [], 16 connections",
     "upstream": "daemon", "method": "GET", "path": "/containers/bench-00/json", "conns": 16,
     "threads": 2, "unit": "req/s", "profile": "bench-unfiltered", "rotate": 20},
    {"key": "inspect-distinct-redacted", "title": "GET /containers/{{id}}/json of {distinct} different containers in "
                                                  "turn, env redacted (default profile), 16 connections",
     "upstream": "daemon", "method": "GET", "path": "/containers/bench-00/json", "conns": 16,
     "threads": 2, "unit": "req/s", "rotate": 20},
    {"key": "list-distinct", "title": "GET /containers/json?all=1&limit=N, {distinct} different lists in turn, "
                                      "16 connections",
     "upstream": "daemon", "method": "GET", "path": "/containers/json?all=1&limit=1", "conns": 16,
     "threads": 2, "unit": "req/s", "rotate": 20, "rotate_path": "/containers/json?all=1&limit={n}"},
    {"key": "large", "title": "GET {large_mb} MB JSON (fake upstream: nginx), {conns} connections",
     "upstream": "fake", "method": "GET", "path": "/containers/json?all=1", "conns": 4,
     "threads": 1, "unit": "MB/s"},
    {"key": "deny-post", "title": "POST /containers/create, no body (denied), {conns} connections",
     "upstream": "daemon", "method": "POST", "path": "/containers/create", "conns": 16,
     "threads": 2, "unit": "req/s", "denied": True},
    {"key": "deny-export", "title": "GET /containers/{{id}}/export (denied), {conns} connections",
     "upstream": "daemon", "method": "GET", "path": "/containers/bench-00/export", "conns": 16,
     "threads": 2, "unit": "req/s", "denied": True},
]


# Extra profiles in the staged rules.json, each on a listener of its own.
BENCH_PROFILES = {
    "bench-unfiltered": {"extends": "default", "rules": [], "redact": []},
    "bench-scoped": {"extends": "default", "rules": [], "visible": {"labels": ["porthole.bench.half=1"]}},
}


def parse_args(argv):
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny durations, every scenario and contender once; checks only that numbers came out")
    ap.add_argument("--work", required=True, help="private scratch directory (made by run.sh)")
    ap.add_argument("--out", help="directory for the .md and .json results "
                                  "(default bench/results, or the scratch directory with --smoke)")
    ap.add_argument("--rounds", type=int, default=int(env("BENCH_ROUNDS", "5")))
    ap.add_argument("--duration", type=int, default=int(env("BENCH_DURATION", "5")), help="seconds per wrk run")
    ap.add_argument("--warmup", type=int, default=int(env("BENCH_WARMUP", "1")),
                    help="seconds of unrecorded load per contender before a scenario's rounds (0: none)")
    ap.add_argument("--containers", type=int, default=int(env("BENCH_CONTAINERS", "50")))
    ap.add_argument("--running", type=int, default=int(env("BENCH_RUNNING", "10")),
                    help="how many of the containers run `sleep`")
    ap.add_argument("--watchers", type=int, default=int(env("BENCH_WATCHERS", "1000")))
    ap.add_argument("--idle-conns", type=int, default=int(env("BENCH_IDLE_CONNS", "1000")),
                    help="idle keep-alive connections per proxy for the memory figure (0: skip)")
    ap.add_argument("--events", type=int, default=int(env("BENCH_EVENTS", "20")))
    ap.add_argument("--large-bytes", type=int, default=int(env("BENCH_LARGE_BYTES", str(4_000_000))))
    ap.add_argument("--containers-conns", type=int, default=int(env("BENCH_CONTAINERS_CONNS", "4")))
    ap.add_argument("--scenarios", default=env("BENCH_SCENARIOS", ""),
                    help="comma-separated scenario keys to run (default all, plus events)")
    ap.add_argument("--contenders", default=env("BENCH_CONTENDERS", ",".join(CONTENDERS)))
    ap.add_argument("--haproxy-nbthread", default=env("BENCH_HAPROXY_NBTHREAD", ""),
                    help="HAProxy nbthread (default: HAProxy's own choice, one per CPU)")
    ap.add_argument("--porthole-args", default=env("BENCH_PORTHOLE_ARGS", ""),
                    help="extra porthole arguments (space-separated), e.g. '--log-level warning'")
    ap.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                    help="instead of the benchmark: py-spy porthole-src under one scenario's load (--profile-scenario)")
    ap.add_argument("--profile-scenario", default=env("BENCH_PROFILE_SCENARIO", "ping-16"), metavar="KEY",
                    help="the scenario --profile loads porthole-src with (default: ping-16)")
    ap.add_argument("--cleanup-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--py-spy", default=env("BENCH_PY_SPY", "py-spy"), help="py-spy executable for --profile")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.duration, args.warmup = 1, 1, 0
        args.containers, args.running = min(args.containers, 10), min(args.running, 2)
        args.watchers, args.events = min(args.watchers, 50), min(args.events, 3)
        args.idle_conns = min(args.idle_conns, 50)
    args.contenders = [c for c in args.contenders.split(",") if c]
    for c in args.contenders:
        if c not in CONTENDERS:
            ap.error(f"unknown contender {c!r}")
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    known = {s["key"] for s in SCENARIOS} | {"events", "idle"}
    for s in args.scenarios:
        if s not in known:
            ap.error(f"unknown scenario {s!r} (known: {', '.join(sorted(known))})")
    if args.containers < 1 or args.rounds < 1 or args.duration < 1:
        ap.error("--containers, --rounds and --duration must be at least 1")
    return args


# ------------------------------------------------------------------------------------------------
# processes


class Procs:
    """Every process started here, each in its own session. (If this program is killed before it
    cleans up, run.sh calls `bench.py --cleanup-only`: see fallback_cleanup.)"""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, cmd, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen([str(c) for c in cmd], start_new_session=True, **kw)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the binary's bootloaders, if any are left
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc, timeout=5)


def proc_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def tree_memory(root: int) -> dict:
    """RSS (sum of VmRSS) and PSS (sum of smaps_rollup Pss) of a process and its descendants, kB."""
    rss = pss = 0
    pids = proc_tree(root)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return {"rss_kb": rss, "pss_kb": pss, "processes": len(pids)}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    total = 0
    for pid in proc_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def wait_http_ok(address, path: str, proc: subprocess.Popen | None, what: str, timeout: float = 30.0,
                 log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            status = fu.get(address, path, timeout=2).status
            if status == 200:
                return
            last = f"status {status}"
        except (OSError, fu.ConnectionClosed) as exc:
            last = str(exc)
        time.sleep(0.05)
    tail = ""
    if log_path and log_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    raise RuntimeError(f"{what} did not answer GET {path} ({last}); exit code "
                       f"{proc.poll() if proc else None}\n{tail}")


# ------------------------------------------------------------------------------------------------
# the private daemon


class BenchDockerd(support.Dockerd):
    """tests/lib/support.py's private dockerd, with the same safe flags, plus a loopback TCP listener
    for the direct baseline (wrk only speaks TCP)."""

    def __init__(self, tcp_port: int) -> None:
        super().__init__(extra_args=("--host", f"tcp://127.0.0.1:{tcp_port}", "--tls=false"))
        self.tcp_port = tcp_port

    def set_debug(self, on: bool) -> None:
        """Live-reload the daemon's `debug` option: with it the daemon logs each API call."""
        (self.base / "daemon.json").write_text(json.dumps({"debug": on}) + "\n")
        self.proc.send_signal(signal.SIGHUP)

    def api_calls_logged(self) -> int:
        with open(self.log_path, "rb") as f:
            return sum(1 for line in f if b'msg="Calling ' in line)


def populate(dockerd: BenchDockerd, count: int, running: int) -> str:
    image = support.build_busybox_image(dockerd.url)
    client = dockerd.client()
    try:
        for i in range(count):
            project, service = f"shop{i % 5}", f"svc{i:02d}"
            labels = {
                "com.docker.compose.project": project,
                "com.docker.compose.service": service,
                "com.docker.compose.container-number": "1",
                "com.docker.compose.oneoff": "False",
                "traefik.enable": "true",
                f"traefik.http.routers.{service}.rule": f"Host(`{service}.{project}.example.test`)",
                f"traefik.http.routers.{service}.entrypoints": "websecure",
                f"traefik.http.routers.{service}.tls.certresolver": "le",
                f"traefik.http.services.{service}.loadbalancer.server.port": "8080",
                "org.opencontainers.image.title": f"bench service {i}",
                "porthole.bench": "1",
            }
            if i % 2 == 0:
                labels["porthole.bench.half"] = "1"  # what the bench-scoped profile sees
            support.run_sleeper(client, image, name=f"bench-{i:02d}", start=i < running, labels=labels,
                                environment=[f"SERVICE={service}", "LOG_LEVEL=info", "PORT=8080"])
    finally:
        client.close()
    return image


# ------------------------------------------------------------------------------------------------
# the fake upstream (nginx) and its canned responses

def make_large_json(target_bytes: int) -> bytes:
    """A Docker-like /containers/json answer of at least target_bytes."""
    items, size, i = [], 2, 0
    while size < target_bytes:
        cid = hashlib.sha256(b"c%d" % i).hexdigest()
        item = {
            "Id": cid, "Names": [f"/app-{i:05d}"], "Image": "registry.example.test/team/app:1.2.3",
            "ImageID": "sha256:" + hashlib.sha256(b"i%d" % (i % 7)).hexdigest(),
            "Command": "/entrypoint.sh serve --port 8080", "Created": 1700000000 + i,
            "Ports": [{"PrivatePort": 8080, "Type": "tcp"}],
            "Labels": {"com.docker.compose.project": f"shop{i % 9}",
                       "com.docker.compose.service": f"svc{i}",
                       "traefik.enable": "true",
                       f"traefik.http.routers.svc{i}.rule": f"Host(`svc{i}.example.test`)",
                       f"traefik.http.services.svc{i}.loadbalancer.server.port": "8080"},
            "State": "running", "Status": "Up 3 hours",
            "HostConfig": {"NetworkMode": "none"},
            "NetworkSettings": {"Networks": {"none": {"NetworkID": hashlib.sha256(b"n").hexdigest(),
                                                      "EndpointID": "", "Gateway": "", "IPAddress": ""}}},
            "Mounts": [],
        }
        text = json.dumps(item, separators=(",", ":"))
        items.append(text)
        size += len(text) + 1
        i += 1
    return ("[" + ",".join(items) + "]\n").encode()


NGINX_CONF = """\
# fake Docker API for bench/run.sh: canned answers, fast enough not to be the bottleneck
daemon off;
master_process on;
worker_processes 1;
user nobody nogroup;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path @DIR@/tmp/body;
    proxy_temp_path @DIR@/tmp/proxy;
    fastcgi_temp_path @DIR@/tmp/fastcgi;
    uwsgi_temp_path @DIR@/tmp/uwsgi;
    scgi_temp_path @DIR@/tmp/scgi;
    default_type application/json;
    server {
        listen unix:@DIR@/fake.sock;
        listen 127.0.0.1:@PORT@;
        root @DIR@/www;
        add_header Api-Version 1.41 always;
        location = /_ping { default_type text/plain; return 200 "OK"; }
        location ~ ^(/v[0-9]+\\.[0-9]+)?/containers/json$ { try_files /containers.json =404; }
        location / { return 404 '{"message":"page not found"}\\n'; }
    }
}
"""


def start_nginx(procs: Procs, work: Path, port: int, large_bytes: int):
    d = work / "nginx"
    for sub in ("tmp", "www"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    os.chmod(d / "www", 0o755)
    body = make_large_json(large_bytes)
    (d / "www" / "containers.json").write_bytes(body)
    os.chmod(d / "www" / "containers.json", 0o644)
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.replace("@DIR@", str(d)).replace("@PORT@", str(port)))
    err = open(work / "logs" / "nginx.out", "ab")
    proc = procs.start(["nginx", "-c", conf, "-p", d], stdout=err, stderr=subprocess.STDOUT)
    sock = d / "fake.sock"
    wait_http_ok(("127.0.0.1", port), "/_ping", proc, "nginx", log_path=d / "error.log")
    os.chown(sock, 0, SOCK_GID)  # like the daemon's socket: root:2375, 0660
    os.chmod(sock, 0o660)
    return proc, str(sock), len(body)


# ------------------------------------------------------------------------------------------------
# the proxies


class Contender:
    def __init__(self, name: str, port: int, proc: subprocess.Popen | None, log_path: Path | None,
                 profile_ports: dict | None = None) -> None:
        self.name, self.port, self.proc, self.log_path = name, port, proc, log_path
        self.profile_ports = profile_ports or {}  # porthole: a listener per filtering profile

    def port_for(self, profile: str | None) -> int:
        return self.profile_ports.get(profile, self.port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def truncate_log(self) -> None:
        if self.log_path is not None and self.log_path.exists():
            os.truncate(self.log_path, 0)


class Lab:
    """Everything the scenarios need: daemon, fake upstream and the proxies in front of both."""

    def __init__(self, args, work: Path, procs: Procs) -> None:
        self.args, self.work, self.procs = args, work, procs
        self.logs = work / "logs"
        self.src_dir = work / "src"
        self.bin_path = work / "bin" / "porthole"
        self.haproxy_template = (BENCH / "haproxy.cfg.in").read_text()
        self.upstreams: dict[str, str] = {}
        self.contenders: dict[str, dict[str, Contender]] = {"daemon": {}, "fake": {}}
        self.dockerd: BenchDockerd | None = None
        self.counter = 0

    # -- staging: copies the unprivileged uid can read, wherever the checkout lives --
    def stage(self) -> None:
        import h11

        self.src_dir.mkdir()
        shutil.copy2(REPO / "proxy.py", self.src_dir / "proxy.py")
        shutil.copytree(REPO / "porthole", self.src_dir / "porthole",  # the code proxy.py runs
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        rules = json.loads((REPO / "rules.json").read_text())
        rules["profiles"].update(BENCH_PROFILES)
        (self.src_dir / "rules.json").write_text(json.dumps(rules, indent=1))
        shutil.copytree(Path(h11.__file__).resolve().parent, self.src_dir / "h11",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.bin_path.parent.mkdir()
        shutil.copy2(REPO / "dist" / "porthole", self.bin_path)
        for root, dirs, files in os.walk(self.work):
            if Path(root).is_relative_to(self.logs):
                continue
            os.chmod(root, 0o755)
        for path in self.src_dir.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(self.bin_path, 0o555)

    def porthole_cmd(self, kind: str, port: int, upstream: str, profile_ports: dict) -> list:
        prog = [SYSTEM_PYTHON, self.src_dir / "proxy.py"] if kind == "porthole-src" else [self.bin_path]
        extra = [arg for profile, p in profile_ports.items()
                 for arg in ("--listen", f"tcp://127.0.0.1:{p}?profile={profile}")]
        return (["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", f"--groups={SOCK_GID}"]
                + prog + ["--listen", f"tcp://127.0.0.1:{port}", *extra, "--upstream", f"unix://{upstream}",
                          "--rules", self.src_dir / "rules.json",
                          "--max-connections", "4096", "--max-streams-per-client", "4096",
                          "--max-connections-per-client", "4096"]
                + self.args.porthole_args.split())

    def start_proxy(self, kind: str, upstream_name: str, tag: str = "") -> Contender:
        self.counter += 1
        port = support.free_port()
        upstream = self.upstreams[upstream_name]
        log_path = self.logs / f"{kind}-{upstream_name}{tag}.log"
        out = open(log_path, "ab")  # O_APPEND: truncating between runs keeps it small
        env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
        profile_ports: dict = {}
        if kind == "haproxy":
            nbthread = f"nbthread {self.args.haproxy_nbthread}" if self.args.haproxy_nbthread else ""
            cfg = self.work / f"haproxy-{upstream_name}{tag}.cfg"
            cfg.write_text(self.haproxy_template.replace("@PORT@", str(port))
                           .replace("@UPSTREAM@", upstream).replace("@NBTHREAD@", nbthread))
            os.chmod(cfg, 0o644)
            cmd = ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", f"--groups={SOCK_GID}",
                   "haproxy", "-db", "-f", cfg]
        else:
            profile_ports = {profile: support.free_port() for profile in BENCH_PROFILES}
            cmd = self.porthole_cmd(kind, port, upstream, profile_ports)
            if kind == "porthole-src":
                env["PYTHONPATH"] = str(self.src_dir)
        proc = self.procs.start(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd="/")
        out.close()
        wait_http_ok(("127.0.0.1", port), "/_ping", proc, f"{kind} ({upstream_name})", log_path=log_path)
        return Contender(kind, port, proc, log_path, profile_ports)

    def setup(self) -> None:
        args = self.args
        self.logs.mkdir()
        self.stage()
        log("starting the private dockerd")
        self.dockerd = BenchDockerd(support.free_port())
        self.dockerd.start(self.logs, SOCK_GID)
        (self.work / "dockerd-base").write_text(str(self.dockerd.base))  # for run.sh's fallback cleanup
        self.upstreams["daemon"] = self.dockerd.socket_path
        log(f"building the busybox image and creating {args.containers} containers ({args.running} running)")
        self.image = populate(self.dockerd, args.containers, args.running)
        log("starting nginx (fake upstream)")
        nginx_port = support.free_port()
        self.nginx, self.upstreams["fake"], self.large_size = start_nginx(
            self.procs, self.work, nginx_port, args.large_bytes)
        self.contenders["daemon"]["direct"] = Contender("direct", self.dockerd.tcp_port, None, None)
        self.contenders["fake"]["direct"] = Contender("direct", nginx_port, None, None)
        for kind in args.contenders:
            if kind == "direct":
                continue
            for upstream_name in ("daemon", "fake"):
                log(f"starting {kind} in front of {upstream_name}")
                self.contenders[upstream_name][kind] = self.start_proxy(kind, upstream_name)

    def teardown(self) -> None:
        self.procs.stop_all()
        if self.dockerd is not None:
            log("removing the containers and stopping the private dockerd")
            self.dockerd.stop(remove_containers=True)


# ------------------------------------------------------------------------------------------------
# checks before measuring: each contender answers what it should


def preflight(lab: Lab) -> list[str]:
    problems = []
    n = lab.args.containers
    for kind in lab.args.contenders:
        d = ("127.0.0.1", lab.contenders["daemon"][kind].port)
        f = ("127.0.0.1", lab.contenders["fake"][kind].port)
        r = fu.get(d, "/_ping", timeout=10)
        if (r.status, r.body) != (200, b"OK"):
            problems.append(f"{kind}: GET /_ping -> {r.status} {r.body[:80]!r}")
        r = fu.get(d, "/containers/json?all=1", timeout=10)
        if r.status != 200 or len(r.json()) < n:
            problems.append(f"{kind}: GET /containers/json?all=1 -> {r.status}, {len(r.body)} bytes")
        r = fu.get(f, "/containers/json?all=1", timeout=30)
        if r.status != 200 or len(r.body) != lab.large_size:
            problems.append(f"{kind}: large GET -> {r.status}, {len(r.body)} of {lab.large_size} bytes")
        if kind != "direct":
            for method, path in (("POST", "/containers/create"), ("GET", "/containers/bench-00/export")):
                status = fu.get(d, path, method=method, timeout=10).status
                if status != 403:
                    problems.append(f"{kind}: {method} {path} -> {status} (expected 403)")
    return problems


# ------------------------------------------------------------------------------------------------
# wrk scenarios

WRK_LUA = """\
wrk.method = "@METHOD@"
wrk.path = "@PATH@"
wrk.headers["User-Agent"] = "porthole-bench/1"
wrk.headers["Accept"] = "application/json"
@ROTATE@
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"max":%.1f,"mean":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


# With "rotate": N, each request asks for the next of N containers (bench-00, bench-01, ...), or
# the next of N paths made from "rotate_path" ({i}: 0 to N-1, {n}: 1 to N).
WRK_ROTATE = """\
local paths, turn = {@PATHS@}, 0
request = function()
  turn = turn % #paths + 1
  return wrk.format(nil, paths[turn])
end
"""


def wrk_script(sc: dict, lab: Lab) -> str:
    rotate = ""
    if sc.get("rotate"):
        template = sc.get("rotate_path", "/containers/bench-{i:02d}/json")
        paths = [f'"{template.format(i=i, n=i + 1)}"' for i in range(distinct_targets(sc, lab))]
        rotate = WRK_ROTATE.replace("@PATHS@", ", ".join(paths))
    return WRK_LUA.replace("@METHOD@", sc["method"]).replace("@PATH@", sc["path"]).replace("@ROTATE@", rotate)


def distinct_targets(sc: dict, lab: Lab) -> int:
    return min(sc.get("rotate") or 1, lab.args.containers)


def run_wrk(port: int, script: Path, conns: int, threads: int, duration: int) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "--latency",
           "-s", str(script), f"http://127.0.0.1:{port}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, start_new_session=True)
    for line in r.stdout.splitlines():
        if line.startswith("WRKJSON "):
            out = json.loads(line[len("WRKJSON "):])
            seconds = out["duration_us"] / 1e6
            out["rps"] = out["requests"] / seconds if seconds else 0.0
            out["mbps"] = out["bytes"] / seconds / 1e6 if seconds else 0.0
            return out
    raise RuntimeError(f"wrk printed no result (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")


def scenario_title(sc: dict, lab: Lab) -> str:
    return sc["title"].format(conns=sc["conns"], large_mb=round(lab.large_size / 1e6, 1),
                              distinct=distinct_targets(sc, lab))


def run_scenarios(lab: Lab, results: dict) -> None:
    args = lab.args
    chosen = [sc for sc in SCENARIOS if not args.scenarios or sc["key"] in args.scenarios]
    for sc in chosen:
        if sc["key"] == "containers":
            sc["conns"] = args.containers_conns
            sc["threads"] = min(sc["threads"], sc["conns"])
    denied = [sc for sc in chosen if sc.get("denied")]
    if denied:
        # Prove the counter works before trusting a zero: with debug on, a direct call is logged.
        lab.dockerd.set_debug(True)
        before = lab.dockerd.api_calls_logged()

        def logged() -> bool:
            fu.get(lab.dockerd.socket_path, "/_ping", timeout=10)
            time.sleep(0.1)
            return lab.dockerd.api_calls_logged() > before

        if not support.wait_until(logged, 10, 0.2):
            raise RuntimeError("dockerd's debug log does not record API calls: cannot check denials")
        lab.dockerd.set_debug(False)
        time.sleep(0.3)
    for sc in chosen:
        key = sc["key"]
        script = lab.work / f"wrk-{key}.lua"
        script.write_text(wrk_script(sc, lab))
        contenders = [c for c in args.contenders if not (sc.get("denied") and c == "direct")]
        entry = results["scenarios"][key] = {
            "title": scenario_title(sc, lab), "unit": sc["unit"], "upstream": sc["upstream"],
            "method": sc["method"], "path": sc["path"], "connections": sc["conns"],
            "wrk_threads": sc["threads"], "denied": bool(sc.get("denied")),
            "runs": {c: [] for c in contenders},
        }
        log(f"scenario {key}: {entry['title']} ({args.rounds} x {args.duration}s, contenders {', '.join(contenders)})")
        if sc.get("denied"):
            lab.dockerd.set_debug(True)
            time.sleep(0.5)
        try:
            if args.warmup:
                for c in contenders:
                    run_wrk(lab.contenders[sc["upstream"]][c].port_for(sc.get("profile")), script, sc["conns"],
                            sc["threads"], args.warmup)
                    lab.contenders[sc["upstream"]][c].truncate_log()
            for rnd in range(args.rounds):
                for c in contenders:
                    contender = lab.contenders[sc["upstream"]][c]
                    calls_before = lab.dockerd.api_calls_logged() if sc.get("denied") else None
                    cpu_before = tree_cpu_seconds(contender.pid) if contender.pid else None
                    out = run_wrk(contender.port_for(sc.get("profile")), script, sc["conns"], sc["threads"],
                                  args.duration)
                    if cpu_before is not None:
                        out["proxy_cpu_s"] = round(tree_cpu_seconds(contender.pid) - cpu_before, 3)
                    if calls_before is not None:
                        time.sleep(0.2)
                        out["daemon_calls"] = lab.dockerd.api_calls_logged() - calls_before
                    contender.truncate_log()
                    entry["runs"][c].append(out)
                    value = out["mbps"] if sc["unit"] == "MB/s" else out["rps"]
                    log(f"  round {rnd + 1} {c:13s} {value:10.1f} {sc['unit']:5s} p50 "
                        f"{out['latency_us']['p50']:.0f}us p99 {out['latency_us']['p99']:.0f}us"
                        + (f" daemon calls {out['daemon_calls']}" if "daemon_calls" in out else ""))
        finally:
            if sc.get("denied"):
                lab.dockerd.set_debug(False)
                time.sleep(0.3)


# ------------------------------------------------------------------------------------------------
# memory with many idle keep-alive connections

def run_idle(lab: Lab, results: dict) -> None:
    """Each proxy's RSS before and with N keep-alive connections open, each having been answered
    one GET /_ping and then left idle (dashboards keep their connections open between polls)."""
    n = lab.args.idle_conns
    out = results["idle"] = {"connections": n, "contenders": {}}
    log(f"scenario idle: {n} idle keep-alive connections per proxy")
    for kind in lab.args.contenders:
        if kind == "direct":
            continue
        contender = lab.contenders["daemon"][kind]
        before = tree_memory(contender.pid)
        clients = []
        try:
            for _ in range(n):
                client = fu.HttpClient(("127.0.0.1", contender.port), timeout=10)
                clients.append(client)
                client.request("GET", "/_ping")
                if client.read_response("GET").status != 200:
                    raise RuntimeError(f"{kind}: /_ping failed with {n} connections open")
            time.sleep(1.0)
            with_idle = tree_memory(contender.pid)
        finally:
            for client in clients:
                client.close()
        entry = out["contenders"][kind] = {"before": before, "with_idle": with_idle,
                                            "per_connection_kb": round((with_idle["rss_kb"] - before["rss_kb"]) / n, 1)}
        log(f"  {kind:13s} RSS {before['rss_kb'] / 1024:.1f} MiB -> {with_idle['rss_kb'] / 1024:.1f} MiB "
            f"({entry['per_connection_kb']} kB per connection)")


# ------------------------------------------------------------------------------------------------
# /events fan-out

def read_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"watchers: no answer within {timeout}s (got {buf[:200]!r})")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 1)  # byte by byte: lines are few, and nothing is over-read
            if not chunk:
                raise RuntimeError(f"watchers exited ({proc.poll()}): {proc.stderr.read().decode()[-2000:]}")
            buf += chunk
    return buf.decode().rstrip("\n")


def read_message(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        line = read_line(proc, max(0.1, deadline - time.monotonic()))
        word, _, rest = line.partition(" ")
        if word in ("READY", "ARMED", "DONE", "RESULT"):
            return word, rest


def percentile(sorted_values: list, p: float):
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def create_event(lab: Lab, name: str) -> None:
    body = json.dumps({"Image": lab.image, "Cmd": ["true"], "Labels": {"porthole.bench.event": "1"},
                       "HostConfig": {"NetworkMode": "none"}}).encode()
    r = fu.get(lab.dockerd.socket_path, f"/containers/create?name={name}", method="POST",
               headers=[("Content-Type", "application/json")], body=body, timeout=10)
    if r.status != 201:
        raise RuntimeError(f"creating {name}: {r.status} {r.body[:200]!r}")


def run_events(lab: Lab, results: dict) -> None:
    args = lab.args
    nonce = os.urandom(3).hex()
    out = results["events"] = {"watchers": args.watchers, "events": args.events, "contenders": {}}
    log(f"scenario events: {args.watchers} /events streams per contender, {args.events} events each")
    for kind in args.contenders:
        made: list[str] = []
        contender = None
        watchers = None
        try:
            entry: dict = {}
            if kind == "direct":
                target = f"127.0.0.1:{lab.dockerd.tcp_port}"
            else:
                contender = lab.start_proxy(kind, "daemon", tag="-events")
                target = f"127.0.0.1:{contender.port}"
                time.sleep(0.5)
                entry["idle"] = tree_memory(contender.pid)
            cmd = [sys.executable, BENCH / "watchers.py", "--target", target, "--ref",
                   f"unix://{lab.dockerd.socket_path}", "-n", args.watchers]
            watchers = lab.procs.start(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            word, rest = read_message(watchers, 120)
            if word != "READY":
                raise RuntimeError(f"watchers said {word} {rest}")
            entry["ready"] = json.loads(rest)
            time.sleep(1.0)
            if contender:
                entry["with_watchers"] = tree_memory(contender.pid)
                cpu_before = tree_cpu_seconds(contender.pid)
            for i in range(args.events):
                marker = f"phbev-{nonce}-{kind}-{i}"
                watchers.stdin.write(f"ARM {marker}\n".encode())
                watchers.stdin.flush()
                word, rest = read_message(watchers, 30)
                if word != "ARMED":
                    raise RuntimeError(f"watchers said {word} {rest}")
                create_event(lab, marker)
                made.append(marker)
                word, rest = read_message(watchers, 60)
                if word != "DONE":
                    raise RuntimeError(f"watchers said {word} {rest}")
                time.sleep(0.1)
            if contender:
                entry["after_events"] = tree_memory(contender.pid)
                entry["events_cpu_s"] = round(tree_cpu_seconds(contender.pid) - cpu_before, 3)
            watchers.stdin.write(b"QUIT\n")
            watchers.stdin.flush()
            word, rest = read_message(watchers, 60)
            raw = json.loads(rest)
            delays = sorted(d for ev in raw["events"] for d in ev["delays_us"])
            per_event_max = sorted(max(ev["delays_us"]) for ev in raw["events"] if ev["delays_us"])
            if "events_cpu_s" in entry:
                deliveries = sum(len(ev["delays_us"]) for ev in raw["events"])
                entry["cpu_per_delivery_us"] = round(entry["events_cpu_s"] / max(1, deliveries) * 1e6, 1)
            entry.update({
                "connected": raw["connected"], "dropped": raw["dropped"],
                "missing": sum(ev["missing"] for ev in raw["events"]),
                "events_without_ref": sum(1 for ev in raw["events"] if not ev["ref"]),
                "samples": len(delays),
                "delay_us": {"p50": percentile(delays, 50), "p90": percentile(delays, 90),
                             "p99": percentile(delays, 99), "max": delays[-1] if delays else None},
                "all_reached_us": {"median": round(statistics.median(per_event_max), 1) if per_event_max else None,
                                   "max": per_event_max[-1] if per_event_max else None},
            })
            out["contenders"][kind] = entry
            mem = entry.get("after_events") or {}
            log(f"  {kind:13s} delay p50 {entry['delay_us']['p50']}us p99 {entry['delay_us']['p99']}us, "
                f"all reached (median) {entry['all_reached_us']['median']}us, missing {entry['missing']}"
                + (f", RSS {mem.get('rss_kb', 0) / 1024:.1f} MB PSS {mem.get('pss_kb', 0) / 1024:.1f} MB" if mem else ""))
        finally:
            if watchers is not None:
                lab.procs.stop(watchers, timeout=5)
            if contender is not None:
                lab.procs.stop(contender.proc)
            for name in made:
                fu.get(lab.dockerd.socket_path, f"/containers/{name}?force=1", method="DELETE", timeout=10)


# ------------------------------------------------------------------------------------------------
# profile (optional): where porthole-src spends its time under the 16-connection /_ping load

def run_profile(lab: Lab, seconds: int) -> str:
    pyspy = shutil.which(lab.args.py_spy) or lab.args.py_spy
    if not os.path.exists(pyspy):
        raise RuntimeError("--profile needs py-spy (e.g. python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip "
                           "install py-spy, then BENCH_PY_SPY=/tmp/pyspy/bin/py-spy)")
    sc = next((sc for sc in SCENARIOS if sc["key"] == lab.args.profile_scenario and sc["upstream"] == "daemon"), None)
    if sc is None:
        raise RuntimeError(f"--profile-scenario: no scenario {lab.args.profile_scenario!r} against the daemon")
    contender = lab.contenders["daemon"]["porthole-src"]
    script = lab.work / "wrk-profile.lua"
    script.write_text(wrk_script(sc, lab))
    raw = lab.work / "profile.txt"
    spy = lab.procs.start([pyspy, "record", "--format", "raw", "--rate", "250", "--duration", seconds,
                           "--pid", contender.pid, "--output", raw],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    out = run_wrk(contender.port_for(sc.get("profile")), script, sc["conns"], sc["threads"], max(1, seconds - 2))
    spy.wait(seconds + 30)
    selfs: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";")]
        selfs[frames[-1]] = selfs.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
    lines = [f"porthole-src under {sc['key']} ({scenario_title(sc, lab)}): "
             f"{out['rps']:.0f} req/s while sampled; "
             f"{total} samples", "", "self time (top 20):"]
    for name, n in sorted(selfs.items(), key=lambda kv: -kv[1])[:20]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    lines += ["", "inclusive time (top 30):"]
    for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:30]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# machine description

def first_line(cmd) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (r.stdout + r.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def busy_neighbours() -> list[str]:
    """Other heavy processes on the machine (other test runs, daemons): reported as a caveat."""
    mine = set(proc_tree(os.getpid()))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(r"pytest|dockerd|containerd |wrk |haproxy|proxy\.py|/porthole", cmdline) and "bench" not in cmdline:
            found.append(f"{entry}: {cmdline[:120].strip()}")
    return found


def machine_info() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    import h11

    sha = ""
    if (REPO / "dist" / "porthole.sha256").exists():
        sha = (REPO / "dist" / "porthole.sha256").read_text().split()[0]
    rev = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "proxy.py", "porthole",
                            "rules.json"], capture_output=True, text=True).stdout.strip()
    return {
        "hostname": socket.gethostname(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": first_line([SYSTEM_PYTHON, "--version"]),
        "h11": h11.__version__,
        "haproxy": first_line(["haproxy", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "nginx": first_line(["nginx", "-v"]),
        "dockerd": first_line([support.DOCKERD, "--version"]),
        "porthole": first_line([sys.executable, str(REPO / "proxy.py"), "--version"]) + f" (git {rev}"
                    + (", proxy.py/porthole/rules.json modified" if dirty else "") + ")",
        "porthole_bin_sha256": sha,
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
        "neighbours_start": busy_neighbours(),
    }


# ------------------------------------------------------------------------------------------------

def check_complete(results: dict, args) -> list[str]:
    """Every scenario and contender produced numbers (nothing about speed)."""
    problems = []
    for key, sc in results["scenarios"].items():
        for c, runs in sc["runs"].items():
            if len(runs) != args.rounds:
                problems.append(f"{key}/{c}: {len(runs)} of {args.rounds} runs")
            for run in runs:
                if run["requests"] <= 0:
                    problems.append(f"{key}/{c}: no requests completed")
                if sc["denied"]:
                    if run["errors"]["status"] != run["requests"]:
                        problems.append(f"{key}/{c}: {run['requests'] - run['errors']['status']} answers were not refusals")
                    if run.get("daemon_calls"):
                        problems.append(f"{key}/{c}: the daemon saw {run['daemon_calls']} API calls")
                elif run["errors"]["status"]:
                    problems.append(f"{key}/{c}: {run['errors']['status']} non-2xx answers")
    if "events" in results:
        for c in args.contenders:
            e = results["events"]["contenders"].get(c)
            if not e or not e.get("samples"):
                problems.append(f"events/{c}: no delivery measured")
            elif e["missing"] or e["dropped"] or e["events_without_ref"]:
                problems.append(f"events/{c}: missing {e['missing']}, dropped {e['dropped']}, "
                                f"events without reference {e['events_without_ref']}")
    return problems


def fallback_cleanup(work: Path) -> None:
    """For a bench.py that died without cleaning up: remove the private daemon's containers, stop
    it, end every process whose command line names our scratch or daemon directory, unmount and
    delete. Touches nothing else."""
    markers = [str(work) + "/"]
    base_file = work / "dockerd-base"
    base = Path(base_file.read_text().strip()) if base_file.exists() else None
    if base is not None and base.is_dir():
        markers.append(str(base) + "/")
        sock = base / "docker.sock"
        try:
            r = fu.get(sock, "/containers/json?all=1", timeout=10)
            for c in r.json() if r.status == 200 else []:
                fu.get(sock, f"/containers/{c['Id']}?force=1&v=1", method="DELETE", timeout=30)
        except (OSError, ValueError, fu.ConnectionClosed):
            pass
        try:
            pid = int((base / "dockerd.pid").read_text())
            os.kill(pid, signal.SIGTERM)
            support.wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30)
        except (OSError, ValueError):
            pass
    me = os.getpid()
    leftovers: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if any(m in cmdline for m in markers):
            log(f"leftover process {entry}: {cmdline.replace(chr(0), ' ')[:100]}")
            leftovers.update(proc_tree(int(entry)))  # with children such as nginx's workers
    # SIGTERM first: porthole's bootloaders then remove their extraction directories, nginx its workers.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in leftovers:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        support.wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in leftovers), 5)
    if base is not None and base.is_dir():
        time.sleep(0.5)
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
        for mp in sorted((m for m in mounts if m == str(base) or m.startswith(str(base) + "/")),
                         key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)
        log(f"removed leftover daemon directory {base}")


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    if args.cleanup_only:
        fallback_cleanup(work)
        return 0

    def on_signal(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the first signal starts the cleanup; it runs to the end
        raise Interrupted(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    procs = Procs()
    lab = Lab(args, work, procs)
    started = time.time()
    results: dict = {"machine": machine_info(), "scenarios": {}}
    results["config"] = {
        "smoke": args.smoke, "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
        "containers": args.containers, "running": args.running, "watchers": args.watchers,
        "events": args.events, "contenders": args.contenders, "idle_conns": args.idle_conns,
        "haproxy_nbthread": args.haproxy_nbthread or "auto",
        "porthole_args": ("--max-connections 4096 --max-streams-per-client 4096 "
                          "--max-connections-per-client 4096 " + args.porthole_args),
    }
    problems: list[str] = []
    try:
        lab.setup()
        results["config"]["large_response_bytes"] = lab.large_size
        problems = preflight(lab)
        if problems:
            raise RuntimeError("preflight failed:\n  " + "\n  ".join(problems))
        if args.profile:
            text = run_profile(lab, args.profile)
            m = results["machine"]
            out_dir = Path(args.out) if args.out else BENCH / "results"
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{datetime.date.today().isoformat()}-{socket.gethostname().split('.')[0]}-profile.md"
            path.write_text(
                f"# Where porthole-src spends its time: py-spy, {args.profile_scenario}\n\n"
                f"{datetime.date.today().isoformat()} on `{m['hostname']}` ({m['nproc']} CPUs, {m['cpu_model']}, "
                f"{m['python']}, h11 {m['h11']}, {m['porthole']}); `bench/run.sh --profile {args.profile} --profile-scenario {args.profile_scenario}`. "
                f"py-spy samples Python frames only: time in a system call (send, recv, epoll) counts as "
                f"self time of the Python function that made it. Idle time (waiting in select) is not sampled."
                f"\n\n```\n{text}\n```\n")
            print(text)
            log(f"wrote {path}")
            return 0
        if not args.scenarios or any(s not in ("events", "idle") for s in args.scenarios):
            run_scenarios(lab, results)
        if args.idle_conns and (not args.scenarios or "idle" in args.scenarios):
            run_idle(lab, results)
        if not args.scenarios or "events" in args.scenarios:
            run_events(lab, results)
    except Interrupted as exc:
        log(f"interrupted ({exc}); cleaning up")
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # cleanup runs to the end
        lab.teardown()
    results["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    results["machine"]["neighbours_end"] = busy_neighbours()
    results["elapsed_s"] = round(time.time() - started, 1)
    results["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")

    problems = check_complete(results, args)
    results["problems"] = problems
    markdown = report.render(results)
    out_dir = Path(args.out) if args.out else (work / "results" if args.smoke else BENCH / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.date.today().isoformat()}-{socket.gethostname().split('.')[0]}" + ("-smoke" if args.smoke else "")
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown)
    print(markdown)
    log(f"wrote {out_dir / stem}.md and .json in {results['elapsed_s']}s")
    if problems:
        log("INCOMPLETE:\n  " + "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
