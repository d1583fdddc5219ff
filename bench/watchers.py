#!/usr/bin/env python3
"""Event fan-out probe for bench/run.sh.

Opens N `GET /events` streams to one address (the daemon's TCP port or a proxy) plus one
reference stream straight to the daemon's unix socket, then times how long after the reference
stream each of the N streams sees the same event. One process, one selectors loop: an arrival is
stamped with the time select() returned, before any of the batch is processed, so the probe's
own Python work does not add to the delays it reports.

Driven over stdin/stdout, one line per message:
  -> READY {"connected": N, "seconds": s}
  <- ARM <marker>         expect an event whose JSON holds "<marker>" (with the quotes)
  -> ARMED <marker>       ... the orchestrator now makes the daemon emit that event
  -> DONE <marker> {"got": k, "missing": m, "ref": true|false}   all streams saw it, or timeout
  <- QUIT
  -> RESULT {"events": [{"marker": m, "delays_us": [...], "missing": k}, ...], "dropped": d}
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time

REQUEST = (b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: porthole-bench-watcher/1\r\n"
           b"Accept: application/json\r\n\r\n")


def parse_address(text: str):
    if text.startswith("unix://"):
        return socket.AF_UNIX, text[len("unix://"):], b"docker"
    host, _, port = text.rpartition(":")
    return socket.AF_INET, (host, int(port)), host.encode()


def open_stream(address: str, path: bytes, timeout: float) -> socket.socket:
    """Connect and send the request (the response head is read later, see read_head)."""
    family, addr, host = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(addr)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(REQUEST % (path, host))
    return sock


def read_head(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("stream closed before its response head: %r" % data[:200])
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise ConnectionError("stream answered %r" % head[:300])
    return rest


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="host:port or unix:///path of the watched endpoint")
    ap.add_argument("--ref", required=True, help="unix:///path of the daemon (reference stream)")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--path", default="/events")
    ap.add_argument("--batch", type=int, default=100, help="streams opened at once")
    ap.add_argument("--event-timeout", type=float, default=10.0)
    args = ap.parse_args()
    path = args.path.encode()

    started = time.monotonic()
    ref = open_stream(args.ref, path, 10)
    read_head(ref, time.monotonic() + 10)
    socks: list[socket.socket] = []
    tails: list[bytes] = []
    for first in range(0, args.n, args.batch):
        batch = [open_stream(args.target, path, 10) for _ in range(min(args.batch, args.n - first))]
        deadline = time.monotonic() + 30
        for sock in batch:
            read_head(sock, deadline)
            socks.append(sock)
            tails.append(b"")
    ready_seconds = time.monotonic() - started

    sel = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, index)
    ref.setblocking(False)
    sel.register(ref, selectors.EVENT_READ, -1)
    ref_tail = b""
    os.set_blocking(0, False)
    sel.register(0, selectors.EVENT_READ, "stdin")

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    say("READY " + json.dumps({"connected": len(socks), "seconds": round(ready_seconds, 3)}))

    stdin_buf = b""
    marker: bytes | None = None
    armed_at = 0.0
    ref_time: float | None = None
    arrivals: dict[int, float] = {}
    results = []
    dropped: set[int] = set()
    quit_ = False

    def finish_event(timed_out: bool) -> None:
        nonlocal marker, ref_time
        delays = []
        if ref_time is not None:
            delays = [round((t - ref_time) * 1e6, 1) for t in arrivals.values()]
        missing = len(socks) - len(arrivals)
        results.append({"marker": marker.decode(), "delays_us": delays, "missing": missing,
                        "ref": ref_time is not None, "timed_out": timed_out})
        say("DONE %s %s" % (marker.decode(), json.dumps({"got": len(arrivals), "missing": missing,
                                                          "ref": ref_time is not None})))
        marker = None
        ref_time = None
        arrivals.clear()

    while not quit_:
        timeout = None
        if marker is not None:
            timeout = max(0.0, armed_at + args.event_timeout - time.monotonic())
        ready = sel.select(timeout)
        now = time.monotonic()  # the arrival time of everything in this batch
        for key, _ in ready:
            tag = key.data
            if tag == "stdin":
                chunk = os.read(0, 4096)
                if not chunk:
                    quit_ = True
                    break
                stdin_buf += chunk
                while b"\n" in stdin_buf:
                    line, _, stdin_buf = stdin_buf.partition(b"\n")
                    words = line.split()
                    if not words:
                        continue
                    if words[0] == b"ARM":
                        marker = words[1]
                        armed_at = time.monotonic()
                        say("ARMED " + words[1].decode())
                    elif words[0] == b"QUIT":
                        quit_ = True
                continue
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                if tag >= 0:
                    dropped.add(tag)
                continue
            quoted = b'"' + marker + b'"' if marker is not None else None
            if tag == -1:
                window = ref_tail + data
                ref_tail = window[-128:]
                if quoted is not None and ref_time is None and quoted in window:
                    ref_time = now
            else:
                window = tails[tag] + data
                tails[tag] = window[-128:]
                if quoted is not None and tag not in arrivals and quoted in window:
                    arrivals[tag] = now
        if marker is not None:
            if ref_time is not None and len(arrivals) + len(dropped - arrivals.keys()) >= len(socks):
                finish_event(False)
            elif time.monotonic() >= armed_at + args.event_timeout:
                finish_event(True)

    say("RESULT " + json.dumps({"events": results, "dropped": len(dropped), "connected": len(socks),
                                "ready_seconds": round(ready_seconds, 3)}))
    for sock in socks:
        sock.close()
    ref.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
