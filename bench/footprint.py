#!/usr/bin/env python3
"""Measure what an idle porthole costs, two versions side by side (issue "(3 of 5)", items 1-3).

    sudo .venv/bin/python bench/footprint.py --before OLD_CHECKOUT [--after NEW_CHECKOUT]
        [--runs 15] [--idle-minutes 5] [--wakeup-seconds 60] [--json PATH] [--md PATH]

OLD_CHECKOUT is another checkout of porthole (e.g. `git worktree add --detach /tmp/before <commit>`);
--after defaults to this one. Each side's dist/porthole and dist/porthole-root are built with its
own build.sh when missing or older than their inputs (PORTHOLE_BUILD_VENV is passed on), and its
image with its own `./build.sh image`, into a private dockerd (tests/lib/support.Dockerd, the test
suite's safe flags) that this script starts and stops. Every proxy runs as uid 65532 with only
the daemon socket's group; containers run hardened with --network none. Run as root. Nothing is
asserted: it prints a Markdown report (figures side by side, as after/before ratios) and the JSON.

Figures, before and after interleaved run by run:
- probe CPU: user+sys (os.wait4) of one `--healthcheck --listen tcp://...` against a running proxy
  of the same kind: from source (python3 proxy.py, the package precompiled), the host binary
  (dist/porthole, onefile + staticx) and the image's one-folder program on the host. In the
  image: the container cgroup's CPU delta around `docker exec CONTAINER /porthole --healthcheck`
  (as the HEALTHCHECK runs it: the listener from PID 1), which includes runc's work in the
  container (its init, the seccomp filter it loads); the same delta around `docker exec` of
  busybox's `true` in a busybox container with the same flags is that floor, reported alone.
- idle image: both images' containers started side by side with their own HEALTHCHECK and no
  override; once both are healthy, their cgroups' CPU over --idle-minutes, extrapolated to an
  hour; the health probes dockerd ran meanwhile (its exec_die events); the proxy's (PID 1's)
  wake-ups (voluntary context switches: each is one wait of its loop that slept) and its memory
  at the end (VmRSS, PSS, the cgroup's).
- wake-ups per idle minute without probes: a proxy from source per side with the default
  settings (the shipped rules, watched by default), nothing connecting, over --wakeup-seconds:
  voluntary context switches, and epoll_wait calls counted by `strace -c` at the same time
  (the loop's waits; strace is skipped when missing), with its memory at the end.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


support = _load("porthole_test_support", REPO / "tests" / "lib" / "support.py")
artifacts = _load("porthole_bench_artifacts", REPO / "bench" / "artifacts.py")  # its measuring helpers

PYTHON = artifacts.PYTHON
ENV = artifacts.ENV
HARDENED = artifacts.HARDENED
SIDES = ("before", "after")


def log(msg: str) -> None:
    print("# " + msg, file=sys.stderr, flush=True)


def summary(values: list) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


# --------------------------------------------------------------------------------------------
# the two sides


class Side:
    """One checkout: its sources staged for uid 65532, its binary, bundle and image."""

    def __init__(self, name: str, checkout: Path, stage: Path) -> None:
        self.name, self.checkout, self.stage = name, checkout, stage
        self.commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip() or "unknown"
        self.image = "porthole-bench/%s:latest" % name

    def sources(self) -> list:
        return ["proxy.py", *sorted(p.relative_to(self.checkout).as_posix()
                                    for p in (self.checkout / "porthole").rglob("*.py"))]

    def build(self) -> None:
        inputs = [*self.sources(), "rules.json", "build.sh"]
        for output, command in (("dist/porthole", []), ("dist/porthole-root", ["bundle"])):
            path = self.checkout / output
            built = path.stat().st_mtime if path.exists() else 0
            if not all(built > (self.checkout / name).stat().st_mtime for name in inputs):
                log("%s: ./build.sh %s" % (self.name, " ".join(command)))
                subprocess.run(["./build.sh", *command], cwd=self.checkout, check=True)

    def stage_files(self) -> None:
        """stage/src (proxy.py, porthole/ precompiled, rules.json, h11), stage/porthole, stage/bundle."""
        artifacts.stage_sources(self.checkout, self.sources(), self.stage / "src")
        shutil.copy2(self.checkout / "dist" / "porthole", self.stage / "porthole")
        shutil.copytree(self.checkout / "dist" / "porthole-root", self.stage / "bundle", symlinks=True)
        (self.stage / "tmp").mkdir()
        for root, dirs, files in os.walk(self.stage):
            os.chmod(root, 0o755)
            for f in files:
                path = os.path.join(root, f)
                os.chmod(path, 0o555 if os.access(path, os.X_OK) else 0o644)
        os.chmod(self.stage / "tmp", 0o1777)

    def variants(self) -> dict:
        """How to run its program on the host, per kind: (argv, environment, the proxy's own
        arguments: the rules beside proxy.py; a probe gets none of them)."""
        src = self.stage / "src"
        return {
            "source": ([PYTHON, str(src / "proxy.py")], dict(ENV, PYTHONPATH=str(src), PYTHONDONTWRITEBYTECODE="1"),
                       ["--rules", str(src / "rules.json")]),
            "binary": ([str(self.stage / "porthole")], dict(ENV, TMPDIR=str(self.stage / "tmp")), []),
            "bundle": ([str(self.stage / "bundle" / "porthole")], dict(ENV), []),
        }


# --------------------------------------------------------------------------------------------
# probes


def probe_cpu_host(sides: list, prefix: list, upstream: str, runs: int) -> dict:
    """Per kind and side: the CPU of one --healthcheck against a running proxy of that kind."""
    out: dict = {}
    for kind in ("source", "binary", "bundle"):
        procs, ports = {}, {}
        try:
            for side in sides:
                argv, env, own = side.variants()[kind]
                ports[side.name] = support.free_port()
                procs[side.name] = subprocess.Popen(
                    prefix + argv + own + ["--listen", "tcp://127.0.0.1:%d" % ports[side.name], "--upstream", upstream],
                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True)
            for side in sides:
                artifacts.wait_ping(("127.0.0.1", ports[side.name]), time.perf_counter(), procs[side.name])
            log("probe CPU, %s: %d runs per side, interleaved" % (kind, runs))
            cpu: dict = {side.name: [] for side in sides}
            for _ in range(runs):
                for side in sides:
                    argv, env, _ = side.variants()[kind]
                    _, used, rc = artifacts.timed_run(
                        prefix + argv + ["--healthcheck", "--listen", "tcp://127.0.0.1:%d" % ports[side.name]], env)
                    if rc != 0:
                        raise RuntimeError("%s %s: --healthcheck exited %s" % (side.name, kind, rc))
                    cpu[side.name].append(used)
            out[kind] = {name: summary(values) for name, values in cpu.items()}
        finally:
            for proc in procs.values():
                artifacts.stop(proc)
    return out


def docker(url: str, *args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return support.docker_cli(url, *args, check=check, timeout=timeout)


def container_pid(url: str, cid: str) -> int:
    return json.loads(docker(url, "inspect", cid).stdout)[0]["State"]["Pid"]


def exec_cpu(url: str, cid: str, pid: int, *command: str) -> float:
    """The container cgroup's CPU delta around one `docker exec` (seconds)."""
    before = artifacts.cgroup_cpu_s(pid)
    r = docker(url, "exec", cid, *command, check=False)
    after = artifacts.cgroup_cpu_s(pid)
    if r.returncode != 0:
        raise RuntimeError("docker exec %s: exit %s: %s" % (" ".join(command), r.returncode, r.stderr))
    return after - before


def probe_cpu_image(url: str, sides: list, socket_path: str, gid: int, runs: int) -> dict:
    """`docker exec C /porthole --healthcheck` in each side's container (its HEALTHCHECK off), and
    the floor: `docker exec` of busybox's true in a busybox container run the same way."""
    mount = ["-v", "%s:/var/run/docker.sock" % socket_path, "--group-add", str(gid)]
    busybox = support.build_busybox_image(url, "porthole-bench/busybox:latest")
    started = {}
    try:
        for side in sides:
            started[side.name] = docker(url, "run", "-d", *HARDENED, *mount, "--no-healthcheck", side.image).stdout.strip()
        started["floor"] = docker(url, "run", "-d", *HARDENED, "--user", "65532:65532", busybox,
                                  "sleep", "3600").stdout.strip()
        pids = {name: container_pid(url, cid) for name, cid in started.items()}
        for side in sides:
            deadline = time.monotonic() + 30
            while docker(url, "exec", started[side.name], "/porthole", "--healthcheck", check=False).returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError("%s: the container never became healthy" % side.name)
                time.sleep(0.5)
        log("probe CPU, image: %d runs per side, interleaved (docker exec)" % runs)
        cpu: dict = {name: [] for name in started}
        for _ in range(runs):
            for side in sides:
                cpu[side.name].append(exec_cpu(url, started[side.name], pids[side.name], "/porthole", "--healthcheck"))
            cpu["floor"].append(exec_cpu(url, started["floor"], pids["floor"], "/bin/true"))
        return {name: summary(values) for name, values in cpu.items()}
    finally:
        for cid in started.values():
            docker(url, "rm", "-f", "-v", cid, check=False)
        docker(url, "rmi", "-f", busybox, check=False)


# --------------------------------------------------------------------------------------------
# idle


def wakeups(pid: int) -> int:
    """Voluntary context switches of all of pid's threads so far: each is a wait that slept."""
    total = 0
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, task)) as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    return total


def health_runs(url: str, cid: str, since: float, until: float) -> int:
    r = docker(url, "events", "--since", "%.3f" % since, "--until", "%.3f" % until, "--filter", "container=" + cid,
               "--filter", "event=exec_die", "--format", "{{.Action}}", check=False, timeout=60)
    return sum(1 for line in r.stdout.splitlines() if line.strip())


def idle_image(url: str, sides: list, socket_path: str, gid: int, minutes: float) -> dict:
    """Both images side by side with their own HEALTHCHECK: CPU per hour, probes, wake-ups, memory.
    Beside them, the floor: a busybox container run the same way whose HEALTHCHECK, on the after
    image's schedule, runs busybox's `true`: what dockerd's exec of a probe costs in a container."""
    mount = ["-v", "%s:/var/run/docker.sock" % socket_path, "--group-add", str(gid)]
    busybox = support.build_busybox_image(url, "porthole-bench/busybox:latest")
    started = {}
    try:
        for side in sides:
            started[side.name] = docker(url, "run", "-d", *HARDENED, *mount, side.image).stdout.strip()
        schedule = json.loads(docker(url, "inspect", "-f", "{{json .Config.Healthcheck}}", sides[-1].image).stdout)
        started["floor"] = docker(
            url, "run", "-d", *HARDENED, "--user", "65532:65532", "--health-cmd", "/bin/true",
            "--health-interval", "%dns" % schedule["Interval"], "--health-timeout", "%dns" % schedule["Timeout"],
            "--health-start-period", "%dns" % schedule.get("StartPeriod", 0), "--health-retries", str(schedule["Retries"]),
            busybox, "sleep", "3600").stdout.strip()
        t0 = time.monotonic()
        log("idle image: waiting until the containers are healthy (their own schedules)")
        healthy_after = {}
        while len(healthy_after) < len(started):
            for name, cid in started.items():
                state = json.loads(docker(url, "inspect", cid).stdout)[0]["State"]
                if not state["Running"]:
                    raise RuntimeError("%s: the container stopped: %s" % (name, state))
                if (state.get("Health") or {}).get("Status") == "healthy" and name not in healthy_after:
                    healthy_after[name] = time.monotonic() - t0
            if time.monotonic() - t0 > 120:
                raise RuntimeError("not healthy within 120 s: %s" % healthy_after)
            time.sleep(0.25)
        time.sleep(2)
        pids = {name: container_pid(url, cid) for name, cid in started.items()}
        log("idle image: measuring for %.1f minutes" % minutes)
        since = time.time()
        cpu0 = {name: artifacts.cgroup_cpu_s(pid) for name, pid in pids.items()}
        own0 = {name: _proc_cpu_s(pid) for name, pid in pids.items()}
        wake0 = {name: wakeups(pid) for name, pid in pids.items()}
        t_start = time.monotonic()
        time.sleep(minutes * 60)
        elapsed = time.monotonic() - t_start
        cpu1 = {name: artifacts.cgroup_cpu_s(pid) for name, pid in pids.items()}
        own1 = {name: _proc_cpu_s(pid) for name, pid in pids.items()}
        wake1 = {name: wakeups(pid) for name, pid in pids.items()}
        until = time.time()
        out = {}
        for name, pid in pids.items():
            probes = health_runs(url, started[name], since, until)
            out[name] = {
                "healthy_after_s": healthy_after[name],
                "window_s": elapsed,
                "cgroup_cpu_s": cpu1[name] - cpu0[name],
                "cpu_s_per_hour": (cpu1[name] - cpu0[name]) * 3600 / elapsed,
                "proxy_cpu_s_per_hour": (own1[name] - own0[name]) * 3600 / elapsed,  # PID 1 alone
                "probes": probes,
                "cpu_per_probe_s": (cpu1[name] - cpu0[name] - (own1[name] - own0[name])) / probes if probes else None,
                "wakeups_per_minute": (wake1[name] - wake0[name]) * 60 / elapsed,
                "probes_per_hour": probes * 3600 / elapsed,
                "memory": artifacts.tree_memory(pid),
                "cgroup_memory": artifacts.cgroup_memory(pid),
                "health": json.loads(docker(url, "inspect", "-f", "{{json .Config.Healthcheck}}",
                                            started[name]).stdout),
            }
        return out
    finally:
        for cid in started.values():
            docker(url, "rm", "-f", "-v", cid, check=False)
        docker(url, "rmi", "-f", busybox, check=False)


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds pid's threads ran so far (schedstat: nanoseconds, not clock ticks)."""
    total = 0
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/schedstat" % (pid, task)) as f:
            total += int(f.read().split()[0])
    return total / 1e9


def idle_host(sides: list, prefix: list, upstream: str, seconds: float) -> dict:
    """A proxy from source per side, default settings, nothing connecting: wake-ups per minute,
    then (a window of its own: tracing adds context switches) its epoll_wait calls."""
    procs, tracers, out = {}, {}, {}
    strace = shutil.which("strace")
    try:
        for side in sides:
            argv, env, own = side.variants()["source"]
            port = support.free_port()
            procs[side.name] = subprocess.Popen(
                prefix + argv + own + ["--listen", "tcp://127.0.0.1:%d" % port, "--upstream", upstream],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            artifacts.wait_ping(("127.0.0.1", port), time.perf_counter(), procs[side.name])
        time.sleep(5)  # the answer's upstream connection, kept for reuse for 30 s, is part of idle
        log("idle proxies from source: counting wake-ups for %.0f s" % seconds)
        wake0 = {name: wakeups(proc.pid) for name, proc in procs.items()}
        cpu0 = {name: _proc_cpu_s(proc.pid) for name, proc in procs.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        wake1 = {name: wakeups(proc.pid) for name, proc in procs.items()}
        cpu1 = {name: _proc_cpu_s(proc.pid) for name, proc in procs.items()}
        calls, traced = {}, None
        if strace:
            log("idle proxies from source: counting epoll_wait calls (strace -c) for %.0f s" % seconds)
            for name, proc in procs.items():
                tracers[name] = subprocess.Popen([strace, "-c", "-f", "-e", "trace=epoll_wait", "-p", str(proc.pid)],
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            t1 = time.monotonic()
            time.sleep(seconds)
            traced = time.monotonic() - t1
            for name, tracer in tracers.items():
                tracer.send_signal(signal.SIGINT)
                report = tracer.communicate(timeout=30)[1]
                calls[name] = next((int(line.split()[3]) for line in report.splitlines()
                                    if line.strip().endswith("epoll_wait")), 0)
        for name, proc in procs.items():
            out[name] = {
                "window_s": elapsed,
                "wakeups_per_minute": (wake1[name] - wake0[name]) * 60 / elapsed,
                "cpu_s_per_hour": (cpu1[name] - cpu0[name]) * 3600 / elapsed,
                "epoll_waits_per_minute": calls[name] * 60 / traced if name in calls else None,
                "memory": artifacts.tree_memory(proc.pid),
            }
    finally:
        for tracer in tracers.values():
            if tracer.poll() is None:
                tracer.kill()
        for proc in procs.values():
            artifacts.stop(proc)
    return out


# --------------------------------------------------------------------------------------------
# report


def ms(seconds) -> str:
    return "-" if seconds is None else "%.1f ms" % (seconds * 1000)


def mib(kib) -> str:
    return "-" if kib is None else "%.1f MiB" % (kib / 1024)


def ratio(after, before) -> str:
    return "-" if not before or after is None else "%.2f" % (after / before)


def report(r: dict) -> str:
    b, a = r["sides"]["before"], r["sides"]["after"]
    rows = []

    def row(name, before, after, fmt, target=""):
        rows.append("| %s | %s | %s | %s | %s |" % (name, fmt(before), fmt(after), ratio(after, before), target))

    for kind, label in (("source", "python3 proxy.py"), ("binary", "dist/porthole (onefile + staticx)"),
                        ("bundle", "the image's program, on the host")):
        p = r["probe_host"][kind]
        row("probe CPU, %s (median)" % label, p["before"]["median"], p["after"]["median"], ms,
            "<= 25 ms" if kind != "binary" else "")
    pi = r["probe_image"]
    row("probe CPU in the image, `docker exec` (cgroup, median)", pi["before"]["median"], pi["after"]["median"], ms,
        "<= 25 ms")
    row("... less the exec floor (busybox `true`: %s)" % ms(pi["floor"]["median"]),
        pi["before"]["median"] - pi["floor"]["median"], pi["after"]["median"] - pi["floor"]["median"], ms, "")
    ib, ia = r["idle_image"]["before"], r["idle_image"]["after"]
    row("idle image, CPU per hour, probes included", ib["cpu_s_per_hour"], ia["cpu_s_per_hour"],
        lambda v: "%.2f s" % v, "<= 3 s")
    row("... of which the proxy itself (PID 1)", ib["proxy_cpu_s_per_hour"], ia["proxy_cpu_s_per_hour"],
        lambda v: "%.2f s" % v, "")
    row("health probes in the window (%.1f min)" % (ia["window_s"] / 60), ib["probes"], ia["probes"], str, "")
    floor = r["idle_image"]["floor"]
    row("CPU per probe in the window (cgroup less PID 1)", ib["cpu_per_probe_s"], ia["cpu_per_probe_s"], ms, "")
    row("... less the exec floor (a busybox `true` HEALTHCHECK on the same schedule: %s)" % ms(floor["cpu_per_probe_s"]),
        ib["cpu_per_probe_s"] - floor["cpu_per_probe_s"], ia["cpu_per_probe_s"] - floor["cpu_per_probe_s"], ms, "")
    row("idle image, CPU per hour less the exec floor of its probes",
        ib["cpu_s_per_hour"] - ib["probes_per_hour"] * floor["cpu_per_probe_s"],
        ia["cpu_s_per_hour"] - ia["probes_per_hour"] * floor["cpu_per_probe_s"], lambda v: "%.2f s" % v, "")
    row("healthy after start (this engine)", ib["healthy_after_s"], ia["healthy_after_s"],
        lambda v: "%.1f s" % v, "")
    row("image: proxy wake-ups per minute, probes included", ib["wakeups_per_minute"], ia["wakeups_per_minute"],
        lambda v: "%.1f" % v, "")
    hb, ha = r["idle_host"]["before"], r["idle_host"]["after"]
    row("idle proxy (source, no probes): wake-ups per minute", hb["wakeups_per_minute"], ha["wakeups_per_minute"],
        lambda v: "%.1f" % v, "")
    row("... epoll_wait calls per minute (strace)", hb["epoll_waits_per_minute"], ha["epoll_waits_per_minute"],
        lambda v: "-" if v is None else "%.1f" % v, "")
    row("... its CPU per hour", hb["cpu_s_per_hour"], ha["cpu_s_per_hour"], lambda v: "%.3f s" % v, "")
    row("idle memory, image PID 1 RSS", ib["memory"]["rss_kib"], ia["memory"]["rss_kib"], mib, "no growth")
    row("idle memory, image PID 1 PSS", ib["memory"].get("pss_kib"), ia["memory"].get("pss_kib"), mib, "no growth")
    row("idle memory, image cgroup", (ib["cgroup_memory"].get("current_bytes") or 0) / 1024,
        (ia["cgroup_memory"].get("current_bytes") or 0) / 1024, mib, "")
    row("idle memory, proxy from source RSS", hb["memory"]["rss_kib"], ha["memory"]["rss_kib"], mib, "no growth")
    lines = ["Footprint, %s, on %s (%s CPUs, load %.1f at start, %.1f at end); before %s, after %s." % (
        r["date"], r["host"], r["cpus"], r["loadavg"]["start"][0], r["loadavg"]["end"][0],
        b["commit"], a["commit"]), "",
        "| figure | before | after | after/before | target |", "| --- | --- | --- | --- | --- |", *rows, "",
        "Health-check schedules (as the engine shows them): before %s; after %s." % (
            json.dumps(ib["health"]), json.dumps(ia["health"]))]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="the checkout to compare against")
    ap.add_argument("--after", default=REPO, type=Path, help="default: this checkout")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--idle-minutes", type=float, default=5.0)
    ap.add_argument("--wakeup-seconds", type=float, default=60.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the proxies run as uid 65532 via setpriv, dockerd needs root)")
    work = Path(tempfile.mkdtemp(prefix="ph-fp-"))
    os.chmod(work, 0o755)
    sides = []
    for name, checkout in zip(SIDES, (args.before, args.after)):
        stage = work / name
        stage.mkdir(mode=0o755)
        sides.append(Side(name, checkout.resolve(), stage))
    for side in sides:
        side.build()
        side.stage_files()
    dockerd = None
    results: dict = {"date": datetime.date.today().isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
                     "loadavg": {"start": os.getloadavg()},
                     "sides": {side.name: {"checkout": str(side.checkout), "commit": side.commit} for side in sides}}
    try:
        log("starting a private dockerd")
        dockerd = support.Dockerd().start(work / "d", support.DEFAULT_SOCK_GID)
        url, socket_path = dockerd.url, dockerd.socket_path
        gid = os.stat(socket_path).st_gid
        results["engine"] = docker(url, "version", "--format", "{{.Server.Version}}").stdout.strip()
        for side in sides:
            log("%s: ./build.sh image -> %s" % (side.name, side.image))
            subprocess.run(["./build.sh", "image"], cwd=side.checkout, check=True,
                           env=dict(support.docker_env(url, {"PORTHOLE_IMAGE": side.image}),
                                    **{k: v for k, v in os.environ.items() if k == "PORTHOLE_BUILD_VENV"}))
        prefix = ["/usr/bin/setpriv", "--reuid=65532", "--regid=65532", "--groups=%d" % gid]
        results["probe_host"] = probe_cpu_host(sides, prefix, url, args.runs)
        results["probe_image"] = probe_cpu_image(url, sides, socket_path, gid, args.runs)
        results["idle_host"] = idle_host(sides, prefix, url, args.wakeup_seconds)
        results["idle_image"] = idle_image(url, sides, socket_path, gid, args.idle_minutes)
        results["loadavg"]["end"] = os.getloadavg()
    finally:
        if dockerd is not None:
            dockerd.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = report(results)
    print(text)
    print()
    print("```json")
    print(json.dumps(results, indent=2))
    print("```")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
