#!/usr/bin/env python3
"""Stalls: how long a request waits behind another client's answer that does not move.

    sudo .venv/bin/python bench/stalls.py                     # proxy.py of this checkout
    sudo .venv/bin/python bench/stalls.py --proxy OLD/proxy.py --proxy proxy.py   # side by side

Each proxy runs as uid 65532 (setpriv) in front of a stand-in daemon on a unix socket in a
private directory, on 127.0.0.1; the clients are threads of this process. Three figures:

- identical request behind a stalled answer: a client asks for /containers/json and the
  daemon's answer stops after its head and a little of its body for --stall seconds; a second
  client asks for the same list half a second later, and the daemon would answer it at once.
  How long the second one waits for its complete answer (coalescing on, and --no-coalesce);
- second `podman events` watcher: one watcher of /libpod/events is open; how long a second
  one waits for its response head;
- stalled answer's client: how long the first client above is held before its answer ends
  (complete, or cut), with --response-timeout 5.

A wait longer than --stall + 10 s is reported as such. Prints a Markdown table; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
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

BODY = (b"[" + b",".join(b'{"Id":"%064d","Names":["/c%d"]}' % (i, i) for i in range(400)) + b"]\n")
LIST = b"GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
EVENTS = b"GET /v4.3.1/libpod/events?stream=true HTTP/1.1\r\nHost: localhost\r\n\r\n"
PING = b"GET /_ping HTTP/1.1\r\nHost: localhost\r\n\r\n"
RULES = {"version": 1, "profiles": {"default": {"redact": [], "rules": [
    {"method": "GET", "path": "/_ping"},
    {"method": "GET", "path": "/containers/json", "query": {"all": "*"}},
    {"method": "GET", "path": "/libpod/events", "query": {"stream": "*"}},
]}}}


def head(length: int | None = None) -> bytes:
    framing = b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked"
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + framing + b"\r\n\r\n"


def serve_daemon(path: str, stall: float) -> None:
    """A stand-in daemon: the first /containers/json answer stalls after its head and 100
    bytes for `stall` seconds, the others come at once; /libpod/events is an endless stream
    (an event every 0.5 s); anything else is a 2-byte OK."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o666)
    server.listen(64)
    lists = [0]

    def handle(conn: socket.socket) -> None:
        pending = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    pending += data
                request, pending = pending.split(b"\r\n\r\n", 1)
                target = request.split(b" ")[1]
                try:
                    if b"/containers/json" in target:
                        lists[0] += 1
                        answer = head(len(BODY)) + BODY
                        if lists[0] == 1:
                            cut = len(head(len(BODY))) + 100
                            conn.sendall(answer[:cut])
                            time.sleep(stall)
                            answer = answer[cut:]
                        conn.sendall(answer)
                    elif b"/events" in target:
                        conn.sendall(head())
                        while True:
                            event = b'{"Status":"start","time":%d}\n' % time.time()
                            conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                            time.sleep(0.5)
                    else:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                except OSError:
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def start_proxy(proxy: Path, port: int, upstream: str, rules: str, *args: str) -> subprocess.Popen:
    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(PING)
            return s.recv(4096).startswith(b"HTTP/1.1 200")

    return start_proxy_process(proxy, ["--listen", f"tcp://127.0.0.1:{port}", "--upstream", f"unix://{upstream}",
                                       "--log-level", "error", "--rules", rules, "--shutdown-grace", "1", *args],
                               ready)


def read_answer(s: socket.socket, limit: float) -> tuple[float, str]:
    """Seconds until the answer to LIST is complete (or the connection ends, or `limit`), and how."""
    started, data = time.monotonic(), b""
    s.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - started, "reset"
        if not chunk:
            return time.monotonic() - started, "closed"
        data += chunk
        if data.endswith(BODY):
            return time.monotonic() - started, "complete"
    return limit, "still waiting"


def measure(proxy: Path, work: str, stall: float, *args: str) -> dict:
    upstream = tempfile.mkdtemp(prefix="d.", dir=work) + "/daemon.sock"
    os.chmod(os.path.dirname(upstream), 0o755)
    serve_daemon(upstream, stall)
    rules = f"{work}/rules.json"
    port = free_port()
    process = start_proxy(proxy, port, upstream, rules, *args)
    limit = stall + 10
    try:
        first = socket.create_connection(("127.0.0.1", port))
        first.sendall(LIST)
        time.sleep(0.5)
        second = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        second.sendall(LIST)
        results: dict = {}
        held = threading.Thread(target=lambda: results.update(first=read_answer(first, limit)))
        held.start()
        results["second"] = read_answer(second, limit)
        results["second"] = (time.monotonic() - started, results["second"][1])
        held.join()
        results["first"] = (results["first"][0] + 0.5, results["first"][1])
        watchers = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        watchers[0].sendall(EVENTS)
        watchers[0].settimeout(5)
        watchers[0].recv(4096)
        started = time.monotonic()
        watchers[1].sendall(EVENTS)
        watchers[1].settimeout(limit)
        try:
            got = watchers[1].recv(4096)
            results["watcher"] = (time.monotonic() - started, "head" if got.startswith(b"HTTP/1.1 200") else "?")
        except socket.timeout:
            results["watcher"] = (limit, "still waiting")
        for s in (first, second, *watchers):
            s.close()
        return results
    finally:
        process.terminate()
        process.wait(30)


def cell(result: tuple[float, str]) -> str:
    seconds, how = result
    return f"{seconds:.1f} s ({how})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", action="append", type=Path, help="a proxy.py (repeatable)")
    parser.add_argument("--stall", type=float, default=20.0, help="seconds the first answer stalls")
    args = parser.parse_args()
    proxies = args.proxy or [ROOT / "proxy.py"]
    work = tempfile.mkdtemp(prefix="phs.", dir="/tmp")
    os.chmod(work, 0o755)
    try:
        Path(f"{work}/rules.json").write_text(json.dumps(RULES))
        os.chmod(f"{work}/rules.json", 0o644)
        print(f"First answer stalls {args.stall:g} s after its head and 100 bytes of its body.\n")
        print("| proxy | options | 2nd identical request: complete answer after | 2nd `podman events` "
              "watcher: head after | stalled answer's client held |")
        print("| --- | --- | ---: | ---: | ---: |")
        for proxy in proxies:
            for options in ((), ("--no-coalesce",), ("--response-timeout", "5")):
                r = measure(proxy.resolve(), work, args.stall, *options)
                print(f"| {proxy} | {' '.join(options) or '(defaults)'} | {cell(r['second'])} "
                      f"| {cell(r['watcher'])} | {cell(r['first'])} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
