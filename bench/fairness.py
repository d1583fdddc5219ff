#!/usr/bin/env python3
"""Fairness: how long another client's GET /_ping takes while N connections pipeline refused
requests as fast as they can and never read the answers.

    sudo .venv/bin/python bench/fairness.py                     # proxy.py of this checkout
    sudo .venv/bin/python bench/fairness.py --proxy OLD/proxy.py --proxy proxy.py   # side by side

A proxy.py runs where it is, with the porthole/ package beside it (older ones are one file).

Each proxy runs as uid 65532 (setpriv) in front of a tiny keep-alive daemon stand-in on a unix
socket in a private directory, on 127.0.0.1; the flooders and the pinging client are threads of
this process. Prints a Markdown table: ping latency median and maximum during the flood, and the
proxy's CPU time in the seconds after the flood stopped (work left over from it). Figures, not
assertions: the test suite checks the per-pass bounds that make these numbers small.
"""
from __future__ import annotations

import argparse
import os
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
PROXY_UID = 65532
REFUSED = b"GET /secrets HTTP/1.1\r\nHost: localhost\r\n\r\n"  # no rule allows it: a local 403
PING = b"GET /_ping HTTP/1.1\r\nHost: localhost\r\n\r\n"
PONG = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ping(port: int, timeout: float = 60.0) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        started = time.monotonic()
        s.sendall(PING)
        answer = b""
        while not answer.endswith(b"OK"):
            data = s.recv(4096)
            if not data:
                raise ConnectionError("closed without an answer")
            answer += data
        return time.monotonic() - started


def source_text(proxy: Path) -> str:
    """proxy.py and the modules of the porthole/ package beside it (since the package split)."""
    return "".join(path.read_text() for path in (proxy, *sorted((proxy.parent / "porthole").rglob("*.py"))))


def start_proxy(proxy: Path, port: int, upstream: str) -> subprocess.Popen:
    command = [sys.executable, str(proxy), "--listen", f"tcp://127.0.0.1:{port}", "--upstream",
               f"unix://{upstream}", "--log-level", "error", "--rules", str(ROOT / "rules.json")]
    if "max-connections-per-client" in source_text(proxy):  # older proxies have no such cap
        command += ["--max-connections-per-client", "4096"]
    if os.geteuid() == 0:
        command = ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups", *command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            ping(port, timeout=1)
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{proxy} did not start: {process.communicate()[1][-2000:]}")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", action="append", type=Path,
                        help="a proxy.py, with its porthole/ beside it (repeatable)")
    parser.add_argument("--connections", default="16,100", help="flooding connections, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each flood")
    args = parser.parse_args()
    proxies = args.proxy or [ROOT / "proxy.py"]
    work = tempfile.mkdtemp(prefix="phf.", dir="/tmp")
    os.chmod(work, 0o755)
    try:
        upstream = f"{work}/daemon.sock"
        serve_daemon(upstream)
        print("| proxy | flooding connections | ping median | ping max | pings | proxy CPU in the 5 s after |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for count in (int(c) for c in args.connections.split(",")):
            for proxy in proxies:
                r = measure(proxy.resolve(), count, args.seconds, upstream)
                print(f"| {proxy} | {count} | {r['median'] * 1000:.1f} ms | {r['max'] * 1000:.1f} ms "
                      f"| {r['pings']} | {r['cpu_after']:.2f} s |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
