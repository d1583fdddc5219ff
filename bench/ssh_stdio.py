"""The start-up cost of `porthole --stdio` as an SSH forced command (issue 21, item 1).

The docker CLI opens one SSH session per connection and porthole --stdio starts once per
session, so its start-up is paid by every command. Measured, interleaved round by round:

- `docker -H ssh://... version` (the CLI's wall time and its CPU: the CLI and its ssh) with the
  key's forced command being porthole-src (proxy.py), porthole-bin (dist/porthole) or direct
  (`docker system dial-stdio`, what the CLI would run without a forced command), and the
  server side's CPU (the forced command's, from wait4), and SSH sessions per command;
- the bare start of `porthole --stdio` (stdin /dev/null: start, no request, exit) and one
  `GET /_ping` through it (stdin a file), without sshd: wall and CPU (user + system).

    sudo .venv/bin/python bench/ssh_stdio.py [--rounds 20] [--out bench/results/DATE-ssh-stdio]

Needs root (sshd, a test user, a private dockerd), Debian's openssh-server and docker.io.
Prints a Markdown table; with --out also writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lib"))

import support  # noqa: E402
from sshd import SshTestbed  # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv, **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the child and its children, result)."""
    cpu, wall = children_cpu(), time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, **kw)
    return time.perf_counter() - wall, children_cpu() - cpu, r


# The forced command's wrapper: runs it, then appends its CPU (wait4's rusage, in microseconds;
# sh's `times` counts 10 ms ticks) to a log. Its own start is not counted.
CPU_WRAPPER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp("/bin/sh", ["sh", "-c", sys.argv[2]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "a") as f:
    f.write("%.6f\\n" % (usage.ru_utime + usage.ru_stime))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def server_cpu(log: Path, before: int) -> tuple[float, int]:
    """The forced commands' CPU since line `before` of their log, and how many ran."""
    lines = log.read_text().splitlines()[before:] if log.exists() else []
    return sum(float(line) for line in lines), len(lines)


def median_ms(values) -> float:
    return round(statistics.median(values) * 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", help="write OUT.md and OUT.json")
    args = parser.parse_args()
    dockerd = support.Dockerd().start(support.short_tmpdir("ph-bench-d-"), support.DEFAULT_SOCK_GID)
    bed = SshTestbed(groups=[dockerd.sock_gid])
    try:
        return run(args, dockerd, bed)
    finally:
        bed.stop()
        dockerd.stop()


def run(args, dockerd, bed) -> int:
    logs = support.short_tmpdir("ph-bench-ssh-", 0o777)
    binary = REPO / "dist" / "porthole"
    commands = {"direct": "DOCKER_HOST=%s %s system dial-stdio" % (dockerd.url, support.DOCKER_CLI),
                "porthole-src": "proxy.py --stdio --profile docker-cli --upstream " + dockerd.url}
    if binary.exists():
        staged = bed.proxy_dir / "porthole-bin"
        staged.write_bytes(binary.read_bytes())
        os.chmod(staged, 0o755)
        commands["porthole-bin"] = "%s --stdio --profile docker-cli --upstream %s" % (staged, dockerd.url)
    # An installed copy has its bytecode compiled (python3 -m compileall, as the owner): the SSH
    # user cannot write __pycache__, and compiling the sources at every session costs more than
    # the rest of the start. The "no .pyc" row below shows that cost.
    bare = support.short_tmpdir("ph-bench-nopyc-")
    stage = support.stage_proxy(REPO / "proxy.py", bare)
    (bare / "rules.json").write_bytes((REPO / "rules.json").read_bytes())
    os.chmod(bare / "rules.json", 0o644)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([bed.proxy_argv[0], "-m", "compileall", "-q", str(bed.proxy_dir)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    wrapper = bed.proxy_dir / "cpu.py"
    wrapper.write_text(CPU_WRAPPER)
    os.chmod(wrapper, 0o644)
    for name, command in commands.items():
        if command.startswith("proxy.py"):
            command = " ".join(shlex.quote(a) for a in bed.proxy_argv) + command[len("proxy.py"):]
        bed.add_key(name, "/usr/bin/python3 %s %s %s" % (wrapper, logs / (name + ".cpu"), shlex.quote(command)))
    results: dict = {name: {"wall": [], "client_cpu": [], "server_cpu": [], "sessions": []} for name in commands}
    for _ in range(args.rounds):
        for name in commands:
            log = logs / (name + ".cpu")
            before = len(log.read_text().splitlines()) if log.exists() else 0
            env = bed.env({"DOCKER_HOST": bed.url(name)})
            wall, cpu, r = timed([support.DOCKER_CLI, "version", "--format", "{{.Server.Version}}"], env=env)
            if r.returncode != 0:
                raise SystemExit("%s: docker version failed: %s" % (name, r.stderr.decode()))
            time.sleep(0.2)  # the session's CPU line lands after the CLI has its answer
            server, sessions = server_cpu(log, before)
            for key, value in (("wall", wall), ("client_cpu", cpu), ("server_cpu", server), ("sessions", sessions)):
                results[name][key].append(value)
    request = support.short_tmpdir("ph-bench-req-") / "ping.http"
    request.write_bytes(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
    starts: dict = {}
    programs = {"porthole-src": [*bed.proxy_argv], "porthole-src, no .pyc": stage}
    if binary.exists():
        programs["porthole-bin"] = [str(bed.proxy_dir / "porthole-bin")]
    for name, program in programs.items():
        for what, stdin in (("start", os.devnull), ("one /_ping", str(request))):
            walls, cpus = [], []
            for _ in range(args.rounds):
                with open(stdin, "rb") as f:
                    wall, cpu, r = timed(["env", "-u", "PYTHONDONTWRITEBYTECODE", "setpriv", "--reuid=65532", "--regid=65532",
                                          "--groups=%d" % dockerd.sock_gid, *program, "--stdio",
                                          "--upstream", dockerd.url], stdin=f)
                assert r.returncode == 0 and r.stderr == b"", r.stderr
                walls.append(wall)
                cpus.append(cpu)
            starts["%s, %s" % (name, what)] = {"wall_ms": median_ms(walls), "cpu_ms": median_ms(cpus)}
    table = ["| `docker version` over ssh:// | wall (ms) | CLI + ssh CPU (ms) | forced command CPU (ms) | SSH sessions |",
             "| --- | ---: | ---: | ---: | ---: |"]
    summary = {}
    for name, r in results.items():
        summary[name] = {"wall_ms": median_ms(r["wall"]), "client_cpu_ms": median_ms(r["client_cpu"]),
                         "server_cpu_ms": median_ms(r["server_cpu"]), "sessions": statistics.median(r["sessions"])}
        s = summary[name]
        table.append("| %s | %s | %s | %s | %g |" % (name, s["wall_ms"], s["client_cpu_ms"], s["server_cpu_ms"],
                                                     s["sessions"]))
    table += ["", "| `porthole --stdio` alone (no sshd) | wall (ms) | CPU (ms) |", "| --- | ---: | ---: |"]
    table += ["| %s | %s | %s |" % (name, v["wall_ms"], v["cpu_ms"]) for name, v in starts.items()]
    text = "\n".join(table)
    print(text)
    if args.out:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        meta = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "rounds": args.rounds,
                "docker_cli": subprocess.run([support.DOCKER_CLI, "--version"], capture_output=True,
                                             text=True).stdout.strip(), "nproc": os.cpu_count()}
        Path(args.out + ".json").write_text(json.dumps({"meta": meta, "over_ssh": summary, "alone": starts,
                                                        "raw": results}, indent=1))
        Path(args.out + ".md").write_text("# porthole --stdio start-up, %s (commit %s, %s rounds, %s, %s CPUs)\n\n%s\n"
                                          % (meta["date"], commit, args.rounds, meta["docker_cli"], meta["nproc"], text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
