#!/usr/bin/env python3
"""Fairness: how long another client's GET /_ping takes while one client misbehaves.

    sudo .venv/bin/python bench/fairness.py                     # proxy.py of this checkout
    sudo .venv/bin/python bench/fairness.py --proxy OLD/proxy.py --proxy proxy.py   # side by side

A proxy.py runs where it is, with the porthole/ package beside it (older ones are one file).

Scenarios (--scenarios, comma-separated; all by default):
  flood          N connections (--connections) pipeline refused requests as fast as they can and
                 never read the answers; ping median and maximum, and the proxy's CPU time in the
                 seconds after the flood stopped (work left over from it).
  idle-hog       127.0.0.2 holds HOG silent connections (--hog, more than --max-connections and
                 than REJECT_SLACK beyond it), opening a new one for each the proxy closes; a new
                 connection from 127.0.0.3 pings.
  idle-many      the same silent connections spread over 8 addresses (127.0.0.2-9), each under
                 --max-connections-per-client but together over --max-connections.
  slowloris-ip   127.0.0.2 holds HOG connections that send part of a head and a header line a
                 second; the pinging client is 127.0.0.2 too (one IP: a NAT, a network gateway).
  slowloris-uid  the same on a unix listener, where the client is the uid: the slowloris and the
                 pinging client are both this process's uid (many containers run as root).
The last three run the proxy with --max-connections 64 --max-connections-per-client 16 (the
defaults' ratio); a new connection per ping, 0.1 s apart, each with --ping-timeout. They report
pings answered 200, refused or failed (503, reset, time-out), and the latency of the answered:
p50, p99 (nearest rank) and maximum.

Each proxy runs as uid 65532 (setpriv) in front of a tiny keep-alive daemon stand-in on a unix
socket in a private directory, on 127.0.0.1; the misbehaving clients and the pinging client are
threads of this process. Prints a Markdown table per scenario kind. Figures, not assertions:
the test suite checks the per-pass bounds and the admission rules that make these numbers small.
"""
from __future__ import annotations

import argparse
import math
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "lib"))

from proxy_process import start_proxy_process
from support import free_port

REFUSED = b"GET /secrets HTTP/1.1\r\nHost: localhost\r\n\r\n"  # no rule allows it: a local 403
PING = b"GET /_ping HTTP/1.1\r\nHost: localhost\r\n\r\n"
PONG = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"
PARTIAL_HEAD = b"GET /_ping HTTP/1.1\r\nHost: localhost\r\n"  # a slowloris: never finished
CAPS = ["--max-connections", "64", "--max-connections-per-client", "16"]
ADMISSION = ("idle-hog", "idle-many", "slowloris-ip", "slowloris-uid")


def serve_daemon(path: str) -> None:
    """A stand-in daemon: answers every request head with PONG, keep-alive."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o666)
    server.listen(64)

    def handle(conn: socket.socket) -> None:
        pending = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                pending += data
                heads = pending.count(b"\r\n\r\n")
                if heads:
                    pending = pending.rsplit(b"\r\n\r\n", 1)[1]
                    conn.sendall(PONG * heads)

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ping(port: int, timeout: float = 60.0) -> float:
    return ping_on(lambda: socket.create_connection(("127.0.0.1", port), timeout=timeout), timeout)


def ping_on(connect, timeout: float) -> float:
    """GET /_ping on a new connection; its latency, from before the connect. Raises
    ConnectionError (with the status) for anything but 200, OSError when reset or timed out."""
    started = time.monotonic()
    with connect() as s:
        s.settimeout(timeout)
        s.sendall(PING)
        answer = b""
        while not (answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"OK")):
            data = s.recv(4096)
            if not data:
                raise ConnectionError(answer[:12].decode("latin-1") or "closed without an answer")
            answer += data
        return time.monotonic() - started


def source_text(proxy: Path) -> str:
    """proxy.py and the modules of the porthole/ package beside it (since the package split)."""
    return "".join(path.read_text() for path in (proxy, *sorted((proxy.parent / "porthole").rglob("*.py"))))


def start_proxy(proxy: Path, port: int, upstream: str, extra: list[str] = (), unix: str | None = None) -> subprocess.Popen:
    args = ["--listen", f"tcp://127.0.0.1:{port}", "--upstream", f"unix://{upstream}", "--log-level", "error",
            "--rules", str(ROOT / "rules.json")]
    if unix is not None:
        args += ["--listen", f"unix://{unix}?mode=0666"]
    if extra:
        args += list(extra)
    elif "max-connections-per-client" in source_text(proxy):  # older proxies have no such cap
        args += ["--max-connections-per-client", "4096"]

    def ready() -> bool:
        ping(port, timeout=1)
        return unix is None or os.path.exists(unix)

    return start_proxy_process(proxy, args, ready)


def measure(proxy: Path, flooders: int, seconds: float, upstream: str) -> dict:
    port = free_port()
    process = start_proxy(proxy, port, upstream)
    stop = time.monotonic() + seconds
    burst = REFUSED * 2000

    def flood() -> None:
        while time.monotonic() < stop:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    while time.monotonic() < stop:
                        s.sendall(burst)
            except OSError:
                time.sleep(0.01)  # closed on us (100 refusals in a row): connect again

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(flooders)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    latencies = []
    while time.monotonic() < stop - 0.5:
        latencies.append(ping(port))
        time.sleep(0.1)
    for thread in threads:
        thread.join(10)
    before = cpu_seconds(process.pid)
    time.sleep(5)
    after = cpu_seconds(process.pid)
    process.terminate()
    process.wait(30)
    return {"median": statistics.median(latencies), "max": max(latencies), "pings": len(latencies),
            "cpu_after": after - before}


class Hog(threading.Thread):
    """Holds `count` connections made by `connect`, each silent (send=b"") or a slowloris (send
    part of a head, then a header line every second); every half second it opens a new one for
    each the proxy closed (the proxy answered or reset it). Counts what it opened."""

    def __init__(self, connect, count: int, send: bytes) -> None:
        super().__init__(daemon=True)
        self.connects = connect if isinstance(connect, list) else [connect]  # taken in turn
        self.count, self.send = count, send
        self.selector = selectors.DefaultSelector()
        self.stopping = threading.Event()
        self.opened = 0

    def open_one(self) -> None:
        try:
            s = self.connects[self.opened % len(self.connects)]()
            s.setblocking(False)
            if self.send:
                s.send(self.send)
        except OSError:
            return
        self.opened += 1
        self.selector.register(s, selectors.EVENT_READ)

    def run(self) -> None:
        trickle = time.monotonic()
        while not self.stopping.is_set():
            for _ in range(self.count - len(self.selector.get_map())):
                self.open_one()
            until = time.monotonic() + 0.5
            while time.monotonic() < until and not self.stopping.is_set():
                for key, _ in self.selector.select(max(0.0, until - time.monotonic())):
                    try:
                        data = key.fileobj.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self.selector.unregister(key.fileobj)
                        key.fileobj.close()
            if self.send and time.monotonic() - trickle >= 1.0:
                trickle = time.monotonic()
                for key in list(self.selector.get_map().values()):
                    try:
                        key.fileobj.send(b"X-Slow: 1\r\n")
                    except OSError:
                        pass
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure_admission(proxy: Path, scenario: str, hog: int, seconds: float, timeout: float,
                      upstream: str, work: str) -> dict:
    port = free_port()
    unix = f"{work}/listen/p.{port}.sock"
    process = start_proxy(proxy, port, upstream, CAPS, unix=unix)

    def from_ip(ip: str):
        def connect():
            s = socket.socket()
            s.settimeout(timeout)
            s.bind((ip, 0))
            s.connect(("127.0.0.1", port))
            return s
        return connect

    def over_unix():
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(unix)
        return s

    hog_connect, pinger, send = {
        "idle-hog": (from_ip("127.0.0.2"), from_ip("127.0.0.3"), b""),
        "idle-many": ([from_ip(f"127.0.0.{i}") for i in range(2, 10)], from_ip("127.0.0.10"), b""),
        "slowloris-ip": (from_ip("127.0.0.2"), from_ip("127.0.0.2"), PARTIAL_HEAD),
        "slowloris-uid": (over_unix, over_unix, PARTIAL_HEAD),
    }[scenario]
    hogs = Hog(hog_connect, hog, send)
    hogs.start()
    time.sleep(2)
    latencies, failures = [], {}
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        try:
            latencies.append(ping_on(pinger, timeout))
        except ConnectionError as exc:
            failures[str(exc)] = failures.get(str(exc), 0) + 1
        except (socket.timeout, TimeoutError):
            failures[f"no answer in {timeout:g} s"] = failures.get(f"no answer in {timeout:g} s", 0) + 1
        except OSError as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
        time.sleep(0.1)
    hogs.stopping.set()
    hogs.join(10)
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return {"ok": len(latencies), "failures": failures, "opened": hogs.opened,
            "p50": percentile(latencies, 50) if latencies else None,
            "p99": percentile(latencies, 99) if latencies else None,
            "max": max(latencies) if latencies else None}


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", action="append", type=Path,
                        help="a proxy.py, with its porthole/ beside it (repeatable)")
    parser.add_argument("--scenarios", default="flood," + ",".join(ADMISSION),
                        help="comma-separated: flood, " + ", ".join(ADMISSION))
    parser.add_argument("--connections", default="16,100", help="flood: flooding connections, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each flood")
    parser.add_argument("--hog", type=int, default=256, help="connections the misbehaving client holds")
    parser.add_argument("--admission-seconds", type=float, default=15.0, help="pinging time per admission scenario")
    parser.add_argument("--ping-timeout", type=float, default=30.0, help="admission scenarios: a ping's time-out")
    args = parser.parse_args()
    proxies = args.proxy or [ROOT / "proxy.py"]
    scenarios = args.scenarios.split(",")
    work = tempfile.mkdtemp(prefix="phf.", dir="/tmp")
    os.chmod(work, 0o755)
    os.mkdir(f"{work}/listen")
    os.chmod(f"{work}/listen", 0o777)  # the proxy (uid 65532) makes its unix listener here
    try:
        upstream = f"{work}/daemon.sock"
        serve_daemon(upstream)
        if "flood" in scenarios:
            print("| proxy | flooding connections | ping median | ping max | pings | proxy CPU in the 5 s after |")
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
            for count in (int(c) for c in args.connections.split(",")):
                for proxy in proxies:
                    r = measure(proxy.resolve(), count, args.seconds, upstream)
                    print(f"| {proxy} | {count} | {r['median'] * 1000:.1f} ms | {r['max'] * 1000:.1f} ms "
                          f"| {r['pings']} | {r['cpu_after']:.2f} s |", flush=True)
            print()
        admission = [s for s in scenarios if s in ADMISSION]
        if admission:
            print(f"{' '.join(CAPS)}; the misbehaving client holds {args.hog} connections\n")
            print("| proxy | scenario | pings answered 200 | failed | p50 | p99 | max | connections the hog opened |")
            print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
            for scenario in admission:
                for proxy in proxies:
                    r = measure_admission(proxy.resolve(), scenario, args.hog, args.admission_seconds,
                                          args.ping_timeout, upstream, work)
                    failed = ", ".join(f"{n} {why}" for why, n in sorted(r["failures"].items())) or "0"
                    print(f"| {proxy} | {scenario} | {r['ok']} | {failed} | {ms(r['p50'])} | {ms(r['p99'])} "
                          f"| {ms(r['max'])} | {r['opened']} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
