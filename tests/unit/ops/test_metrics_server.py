"""porthole/ops/metrics_server.py: the metrics listener alone, on a hand-driven Loop and a real unix
listening socket: GET and HEAD /metrics, 404, 405, and at most MAX_METRICS_CONNECTIONS scrapers at
once."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import pytest

import fake_upstream as fu
import support
from porthole.app.settings import parse_settings
from porthole.connections.listeners import bind
from porthole.ops.metrics_server import MAX_METRICS_CONNECTIONS, MetricsServer
from porthole.runtime.log import Log
from porthole.runtime.loop import Loop

pytestmark = pytest.mark.timeout(120)


def _drive_until(loop, sock, done, passes=200):
    got = bytearray()
    for _ in range(passes):
        loop.run_once(0)
        try:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        except BlockingIOError:
            pass
        if done(bytes(got)):
            break
    return bytes(got)


def test_metrics_server_answers_get_head_404_405_and_caps_its_connections(tmp_path):
    directory = tempfile.mkdtemp(prefix="ph-m-", dir="/tmp")
    try:
        path = directory + "/m.sock"
        settings = parse_settings(["--metrics", "unix://" + path], {})
        log = Log("json", "debug", open(os.devnull, "w"))
        loop = Loop(log)
        sock, identity = bind(settings.metrics)
        server = MetricsServer(sock, settings.metrics, loop, settings, log,
                               lambda: "porthole_open_connections 7\n", identity)
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(path)
        conn.setblocking(False)
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nHEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /containers/json HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = _drive_until(loop, conn, lambda got: got.count(b"HTTP/1.1 ") == 3 and got.endswith(b"}"))
        responses = fu.HttpClient(None, received=raw)
        first = responses.read_response("GET")
        assert first.status == 200 and first.body == b"porthole_open_connections 7\n"
        assert first.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
        head = responses.read_response("HEAD")
        assert head.status == 200 and head.body == b"" and head.header("content-length") == "28"
        missing = responses.read_response("GET")
        assert missing.status == 404 and missing.json()["message"].startswith("porthole: ")
        conn.sendall(b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = _drive_until(loop, conn, lambda got: got.endswith(b"}"))
        refused = fu.HttpClient(None, received=raw).read_response("DELETE")
        assert refused.status == 405 and refused.header("allow") == "GET, HEAD"
        conn.close()

        # Rule 1: at most MAX_METRICS_CONNECTIONS at once; the listener pauses, then resumes
        held = []
        for _ in range(MAX_METRICS_CONNECTIONS + 2):
            c = socket.socket(socket.AF_UNIX)
            c.connect(path)  # the kernel's backlog takes them; the loop accepts what it may
            held.append(c)
        for _ in range(5):
            loop.run_once(0)
        assert len(server.clients) == MAX_METRICS_CONNECTIONS and server.listener.paused
        before = set(server.clients)
        held.pop(0).close()

        def slot_reused() -> bool:
            loop.run_once(0)
            return len(server.clients) == MAX_METRICS_CONNECTIONS and server.clients != before

        assert support.wait_until(slot_reused, 5), "a closed scraper's slot is given to a waiting one"
        assert server.listener.paused
        for c in held:
            c.close()
        server.close()
        for _ in range(5):
            loop.run_once(0)
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
