#!/usr/bin/env python3
"""What filtering one container inspect costs, two versions side by side (issue 20, item 4).

    .venv/bin/python bench/filtering.py --before OLD_CHECKOUT [--after NEW_CHECKOUT]
        [--rounds 7] [--count 3000] [--instructions] [--profile] [--json PATH]

OLD_CHECKOUT is another checkout of porthole (e.g. `git worktree add --detach /tmp/before main`);
--after defaults to this one. No daemon, no sockets: each measurement is a child process that
imports one checkout's porthole/core and times, in CPU time (time.process_time) over --count
answers, the work the relay does for one `GET /containers/{id}/json` answer: plan the filter
(plan_response_filter), build the transform, and run the daemon's head and 5 KB body through a
ResponseRewriter to the head and body sent to the client. Cases (CASES):
- default: a profile without "redact" (env, log-options, volume-options, ...), every answer new;
- default, same answer again: the same profile, the same answer every time;
- everything: every redaction (commands and host-paths too), every answer new;
- none: `"redact": []`, which relays the answer untouched (the plan alone).
The answer is INSPECT below: a running container's inspect as dockerd 27 writes it (compact JSON
and a newline), with 12 environment variables, a healthcheck, labels, two mounts and a network;
"new" answers differ in State.Pid. Rounds interleave the versions and cases; the median of each
is reported, with ratios.
--instructions adds instructions per answer (valgrind's callgrind: each child run twice, for 200
and 600 answers, the difference over 400), which unlike CPU time is repeatable on a busy machine.
Nothing is asserted. --profile adds a cProfile of --after's default case.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# case: (redact, answers). "new": every answer differs (its State.Pid), as when containers change
# between polls; "again": the same answer every time, as a dashboard polling unchanged containers
# gets it (porthole keeps a filtered answer for the next request that gets the same bytes).
CASES = {"default": (None, "new"), "default, same answer again": (None, "again"), "everything": ("all", "new"),
         "none": ([], "new")}

_ID = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa99887766554433221100"
INSPECT = {
    "Id": _ID, "Created": "2026-12-06T18:01:02.123456789Z", "Path": "/usr/local/bin/docker-entrypoint.sh",
    "Args": ["postgres", "-c", "shared_buffers=256MB", "-c", "max_connections=200"],
    "State": {"Status": "running", "Running": True, "Paused": False, "Restarting": False, "OOMKilled": False,
              "Dead": False, "Pid": 41234, "ExitCode": 0, "Error": "", "StartedAt": "2026-12-06T18:01:03.5Z",
              "FinishedAt": "0001-01-01T00:00:00Z",
              "Health": {"Status": "healthy", "FailingStreak": 0, "Log": [
                  {"Start": "2026-12-06T18:20:00.1Z", "End": "2026-12-06T18:20:00.2Z", "ExitCode": 0,
                   "Output": "/var/run/postgresql:5432 - accepting connections\n"}]}},
    "Image": "sha256:" + "ab" * 32, "ResolvConfPath": f"/var/lib/docker/containers/{_ID}/resolv.conf",
    "HostnamePath": f"/var/lib/docker/containers/{_ID}/hostname",
    "HostsPath": f"/var/lib/docker/containers/{_ID}/hosts",
    "LogPath": f"/var/lib/docker/containers/{_ID}/{_ID}-json.log",
    "Name": "/db", "RestartCount": 0, "Driver": "overlay2", "Platform": "linux", "MountLabel": "",
    "ProcessLabel": "", "AppArmorProfile": "docker-default", "ExecIDs": None,
    "HostConfig": {"Binds": ["/srv/db/conf:/etc/postgresql/conf.d:ro"], "ContainerIDFile": "",
                   "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
                   "NetworkMode": "bridge", "PortBindings": {"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "5432"}]},
                   "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0}, "AutoRemove": False,
                   "VolumeDriver": "", "VolumesFrom": None, "ConsoleSize": [0, 0], "CapAdd": None, "CapDrop": None,
                   "CgroupnsMode": "private", "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": None,
                   "GroupAdd": None, "IpcMode": "private", "Cgroup": "", "Links": None, "OomScoreAdj": 0,
                   "PidMode": "", "Privileged": False, "PublishAllPorts": False, "ReadonlyRootfs": False,
                   "SecurityOpt": None, "UTSMode": "", "UsernsMode": "", "ShmSize": 67108864, "Runtime": "runc",
                   "Isolation": "", "CpuShares": 0, "Memory": 0, "NanoCpus": 0, "CgroupParent": "",
                   "BlkioWeight": 0, "BlkioWeightDevice": [], "BlkioDeviceReadBps": [], "BlkioDeviceWriteBps": [],
                   "BlkioDeviceReadIOps": [], "BlkioDeviceWriteIOps": [], "CpuPeriod": 0, "CpuQuota": 0,
                   "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "",
                   "Devices": [], "DeviceCgroupRules": None, "DeviceRequests": None, "MemoryReservation": 0,
                   "MemorySwap": 0, "MemorySwappiness": None, "OomKillDisable": None, "PidsLimit": None,
                   "Ulimits": [], "CpuCount": 0, "CpuPercent": 0, "IOMaximumIOps": 0, "IOMaximumBandwidth": 0,
                   "Mounts": [{"Type": "volume", "Source": "pgdata", "Target": "/var/lib/postgresql/data",
                               "VolumeOptions": {}}],
                   "MaskedPaths": ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                                   "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                                   "/sys/firmware", "/sys/devices/virtual/powercap"],
                   "ReadonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]},
    "GraphDriver": {"Data": {"LowerDir": f"/var/lib/docker/overlay2/{_ID}-init/diff:/var/lib/docker/overlay2/"
                                         "5c2a9d1e0f/diff:/var/lib/docker/overlay2/7e1b3c4d5a/diff",
                             "MergedDir": f"/var/lib/docker/overlay2/{_ID}/merged",
                             "UpperDir": f"/var/lib/docker/overlay2/{_ID}/diff",
                             "WorkDir": f"/var/lib/docker/overlay2/{_ID}/work"}, "Name": "overlay2"},
    "Mounts": [{"Type": "bind", "Source": "/srv/db/conf", "Destination": "/etc/postgresql/conf.d", "Mode": "ro",
                "RW": False, "Propagation": "rprivate"},
               {"Type": "volume", "Name": "pgdata", "Source": "/var/lib/docker/volumes/pgdata/_data",
                "Destination": "/var/lib/postgresql/data", "Driver": "local", "Mode": "z", "RW": True,
                "Propagation": ""}],
    "Config": {"Hostname": "3f4e5d6c7b8a", "Domainname": "", "User": "", "AttachStdin": False,
               "AttachStdout": False, "AttachStderr": False, "ExposedPorts": {"5432/tcp": {}}, "Tty": False,
               "OpenStdin": False, "StdinOnce": False,
               "Env": ["POSTGRES_PASSWORD=hunter2-SECRET", "POSTGRES_USER=app", "POSTGRES_DB=app",
                       "PGDATA=/var/lib/postgresql/data/pgdata", "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG",
                       "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/17/bin",
                       "GOSU_VERSION=1.17", "LANG=en_US.utf8", "PG_MAJOR=17", "PG_VERSION=17.2-1.pgdg120+1",
                       "TZ=UTC", "BACKUP_S3_URL=s3://backups/db?token=abcdef"],
               "Cmd": ["postgres", "-c", "shared_buffers=256MB", "-c", "max_connections=200"],
               "Healthcheck": {"Test": ["CMD-SHELL", "pg_isready -U app"], "Interval": 10000000000,
                               "Timeout": 5000000000, "Retries": 5},
               "Image": "postgres:17", "Volumes": {"/var/lib/postgresql/data": {}}, "WorkingDir": "",
               "Entrypoint": ["docker-entrypoint.sh"], "OnBuild": None,
               "Labels": {"com.docker.compose.project": "shop", "com.docker.compose.service": "db",
                          "com.docker.compose.version": "2.29.7", "com.docker.compose.oneoff": "False",
                          "com.docker.compose.config-hash": "9f" * 32, "team": "data"},
               "StopSignal": "SIGINT"},
    "NetworkSettings": {"Bridge": "", "SandboxID": "c0ffee" * 10 + "c0ff", "SandboxKey": "/var/run/docker/netns/c0ffeec0ffee",
                        "Ports": {"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "5432"}]},
                        "HairpinMode": False, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
                        "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
                        "EndpointID": "e" * 64, "Gateway": "172.17.0.1", "GlobalIPv6Address": "",
                        "GlobalIPv6PrefixLen": 0, "IPAddress": "172.17.0.2", "IPPrefixLen": 16, "IPv6Gateway": "",
                        "MacAddress": "02:42:ac:11:00:02",
                        "Networks": {"bridge": {"IPAMConfig": None, "Links": None, "Aliases": None,
                                                "MacAddress": "02:42:ac:11:00:02", "DriverOpts": None,
                                                "NetworkID": "d" * 64, "EndpointID": "e" * 64,
                                                "Gateway": "172.17.0.1", "IPAddress": "172.17.0.2", "IPPrefixLen": 16,
                                                "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                                                "DNSNames": None}}},
}
BODY = json.dumps(INSPECT, separators=(",", ":")).encode() + b"\n"


def new_answers(count: int) -> list[bytes]:
    """`count` answers that differ only in State.Pid (same length: the head's Content-Length holds)."""
    return [BODY.replace(b'"Pid":41234', b'"Pid":%05d' % (10000 + i)) for i in range(count)]
HEAD_FIELDS = [(b"Api-Version", b"1.47"), (b"Content-Type", b"application/json"), (b"Docker-Experimental", b"false"),
               (b"Ostype", b"linux"), (b"Server", b"Docker/27.3.1 (linux)"),
               (b"Date", b"Sun, 06 Dec 2026 18:20:01 GMT"), (b"Content-Length", str(len(BODY)).encode())]


def child(checkout: str, case: str, count: int, how: str | None) -> None:
    """Runs in a fresh interpreter: times one checkout's relay work for one case."""
    sys.path.insert(0, checkout)
    import h11
    from porthole.core.filters import filter_transform, plan_response_filter
    from porthole.core.objects import REDACTIONS, Filtering
    from porthole.core.rewrite import ResponseRewriter
    from porthole.core.target import canonicalize_target
    from porthole.core.wire import relayed_head

    redact, answers = CASES[case]
    bodies = iter([BODY] * (count + 200) if answers == "again" else new_answers(count + 200))
    filtering = Filtering() if redact is None else Filtering(frozenset(REDACTIONS if redact == "all" else redact))
    head = relayed_head(h11.Response(status_code=200, headers=HEAD_FIELDS, _parsed=True))
    target = canonicalize_target(f"/v1.47/containers/{_ID[:12]}/json".encode())

    def one() -> bytes:
        plan = plan_response_filter(filtering, "GET", target)
        if plan.filter is None:
            return next(bodies)
        rewriter = ResponseRewriter(filter_transform(plan.filter, 32 * 1024 * 1024), head, "GET")
        assert rewriter.head() is None
        rewriter.feed(next(bodies))
        out_head, body = rewriter.finish()
        assert out_head is not None and b"hunter2" not in body or redact == []
        return body

    if how == "--instructions":  # no warm-up: the two runs' difference cancels start-up out
        for _ in range(count):
            one()
        return
    for _ in range(200):  # warm up
        one()
    if how == "--profile":
        import cProfile
        import pstats
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(count):
            one()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
        return
    start = time.process_time()
    for _ in range(count):
        one()
    print(json.dumps({"us": (time.process_time() - start) / count * 1e6}))


def measure(checkout: Path, case: str, count: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", str(checkout), case, str(count)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])["us"]


def instructions(checkout: Path, case: str) -> float:
    totals = []
    with tempfile.TemporaryDirectory() as work:
        for count in (200, 600):
            out = f"{work}/callgrind.{count}"
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
                            "--child", str(checkout), case, str(count), "--instructions"],
                           check=True, capture_output=True)
            totals.append(int(re.search(r"^totals: (\d+)", Path(out).read_text(), re.M).group(1)))
    return (totals[1] - totals[0]) / 400


def print_comparison(figures: dict, unit: str, form: str) -> None:
    """A Markdown table of figures[side][case], before and after; a case's filtering cost is its
    figure less the "none" case's."""
    print(f"| case | before{unit} | after{unit} | after/before | before cost{unit} | after cost{unit} "
          "| cost after/before |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in CASES:
        b, a = figures["before"][p], figures["after"][p]
        cb, ca = b - figures["before"]["none"], a - figures["after"]["none"]
        ratio = f"{ca / cb:.2f}" if p != "none" else "-"
        print(f"| {p} | {b:{form}} | {a:{form}} | {a / b:.2f} | {cb:{form}} | {ca:{form}} | {ratio} |")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=REPO)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, dict[str, list[float]]] = {side: {case: [] for case in CASES} for side in sides}
    for _ in range(args.rounds):
        for case in CASES:
            for side, checkout in sides.items():
                runs[side][case].append(measure(checkout, case, args.count))
    median = {side: {p: statistics.median(v) for p, v in by.items()} for side, by in runs.items()}
    print(f"CPU per `GET /containers/{{id}}/json` answer ({len(BODY)} bytes), median of {args.rounds} rounds "
          f"x {args.count} answers; filtering cost = case - none\n")
    print_comparison(median, " µs", ".1f")
    counted = {}
    if args.instructions:
        counted = {side: {case: instructions(checkout, case) for case in CASES} for side, checkout in sides.items()}
        print("\nInstructions per answer (callgrind)\n")
        print_comparison(counted, "", ",.0f")
    if args.json:
        args.json.write_text(json.dumps({"body_bytes": len(BODY), "rounds": args.rounds, "count": args.count,
                                         "runs": runs, "median": median, "instructions": counted}, indent=1) + "\n")
    if args.profile:
        print("\ncProfile of --after, default case:\n```")
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--child", str(sides["after"]), "default", str(args.count),
                        "--profile"], check=True)
        print("```")


if __name__ == "__main__":
    main()
