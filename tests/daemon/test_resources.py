"""Resource exhaustion: slowloris, file-descriptor exhaustion, hundreds of streams from one
client, many clients that never read. The proxy runs as uid 65532 in front of the recording
fake upstream. Bounds are functional (deadlines, caps, memory), not performance figures.

(A single client that never reads an endless stream and tens of MB of pipelined junk are
covered by test_limits.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import fake_upstream as fu
import pytest
import support
from fake_upstream import ConnectionClosed, HttpClient, build_request, events_requests
from support import count_events

pytestmark = pytest.mark.timeout(90)

RULES = {
    "version": 1,
    "profiles": {
        "default": {
            "rules": [
                {"method": ["GET", "HEAD"], "path": "/_ping"},
                {"method": "GET", "path": "/version"},
                {"method": "GET", "path": "/events"},
                {"method": "GET", "path": "/containers/json"},
            ]
        }
    },
}

MB = 1024 * 1024


def cpu_seconds(pid):
    """utime + stime of the process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def timed_ping(p, timeout=5.0):
    started = time.monotonic()
    r = fu.get(p.addr, "/_ping", timeout=timeout)
    elapsed = time.monotonic() - started
    assert (r.status, r.body) == (200, b"OK"), r
    return elapsed


def porthole_message(resp):
    message = resp.json()["message"]
    assert message.startswith("porthole: "), message
    return message


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# slowloris

SLOW_CONNECTIONS = 300
HEAD_TIMEOUT = 3


def test_slowloris_connections_are_cut_at_the_head_deadline(start_proxy, upstream):
    p = start_proxy("--head-timeout", HEAD_TIMEOUT, "--max-connections-per-client", 1000)
    timed_ping(p)
    head = build_request("GET", "/_ping", [("Host", "localhost"), ("User-Agent", "slowloris"),
                                           ("X-Padding", "x" * 40)])
    socks = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            s = fu.connect(p.addr, 5)
            s.setblocking(False)
            socks.append(s)
        sent = {s: 0 for s in socks}
        received = {s: bytearray() for s in socks}
        closed_at = {}
        started = time.monotonic()
        next_tick = started
        pings = []  # (seconds, slow connections still open)
        while time.monotonic() - started < HEAD_TIMEOUT + 8:
            now = time.monotonic()
            if now >= next_tick:
                next_tick += 1.0
                for s in socks:  # one more byte on every open slow connection
                    if s in closed_at:
                        continue
                    try:
                        sent[s] += s.send(head[sent[s]:sent[s] + 1])
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed_at[s] = now
                if len(pings) < 6:  # meanwhile, a normal client
                    pings.append((timed_ping(p), SLOW_CONNECTIONS - len(closed_at)))
            for s in socks:
                if s in closed_at:
                    continue
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    received[s] += data
                else:
                    closed_at[s] = time.monotonic()
            if len(closed_at) == len(socks) and len(pings) >= 5:
                break
            time.sleep(0.05)

        print("slowloris: pings %s; closed after %.2f..%.2f s" % (
            ["%.3fs/%d open" % ping for ping in pings],
            min(closed_at.values(), default=0) - started, max(closed_at.values(), default=0) - started))
        # the normal client was answered promptly, also while the slow ones were all open
        assert len(pings) >= 5
        assert all(seconds < 2.0 for seconds, _ in pings), pings
        assert sum(1 for _, still_open in pings if still_open == SLOW_CONNECTIONS) >= 3, pings
        # every slow connection was closed by the head deadline, not before it, not much after
        assert len(closed_at) == len(socks), "%d of %d slow connections still open after %.1f s" % (
            len(socks) - len(closed_at), len(socks), time.monotonic() - started)
        lifetimes = [closed_at[s] - started for s in socks]
        assert min(lifetimes) > HEAD_TIMEOUT - 0.5, min(lifetimes)
        assert max(lifetimes) < HEAD_TIMEOUT + 3, max(lifetimes)
        for s in socks:
            assert bytes(received[s]).startswith(b"HTTP/1.1 408 "), bytes(received[s][:200])
            assert sent[s] < len(head)
        r = fu.parse_response(bytes(received[socks[0]]))
        assert r.status == 408 and json.loads(r.body)["message"].startswith("porthole: ")
    finally:
        close_all(socks)
    assert p.alive()
    timed_ping(p)
    assert all(q.header("user-agent") != "slowloris" for q in upstream.requests)
    assert b"slowloris" not in upstream.all_bytes()


# ---------------------------------------------------------------------------
# file descriptors

FD_LIMIT = 64


@pytest.fixture
def start_limited_proxy(start_proxy, monkeypatch):
    """start_proxy, but run under `prlimit --nofile=64:64` (still setpriv'd to uid 65532).
    prlimit(2) on the running proxy would need CAP_SYS_RESOURCE, which a container's root
    usually lacks; lowering one's own limit and exec'ing does not."""
    def start(*args):
        real_popen = subprocess.Popen

        def limited(cmd, *a, **kw):
            return real_popen(["prlimit", "--nofile=%d:%d" % (FD_LIMIT, FD_LIMIT), "--", *cmd], *a, **kw)

        monkeypatch.setattr(support.subprocess, "Popen", limited)
        try:
            p = start_proxy(*args)
        finally:
            monkeypatch.setattr(support.subprocess, "Popen", real_popen)
        with open("/proc/%d/limits" % p.pid) as f:
            limit = [line.split()[3:5] for line in f if line.startswith("Max open files")]
        assert limit == [[str(FD_LIMIT), str(FD_LIMIT)]], limit
        with open("/proc/%d/status" % p.pid) as f:
            assert "Uid:\t%d\t" % support.PROXY_UID in f.read()
        return p
    return start


def exhaust_descriptors(p, extra=FD_LIMIT + 60):
    """Open more connections than the proxy has descriptors. Returns the client sockets (the
    first ones are accepted, the rest wait in the listen backlog)."""
    assert open_fds(p.pid) < FD_LIMIT - 20
    socks = [fu.connect(p.addr, 5) for _ in range(extra)]
    paused = p.wait_for_log(lambda l: l.get("event") == "accept_paused", timeout=10)
    assert paused is not None, "the proxy never ran out of descriptors:\n" + p.stderr_text()[-2000:]
    assert support.wait_until(lambda: open_fds(p.pid) >= FD_LIMIT - 1, 5), open_fds(p.pid)
    return socks


def test_descriptor_exhaustion_does_not_spin_or_kill_the_proxy(start_limited_proxy, upstream):
    p = start_limited_proxy()
    timed_ping(p)
    socks = exhaust_descriptors(p)
    try:
        paused_before = count_events(p, "accept_paused")
        cpu_before, wall_before = cpu_seconds(p.pid), time.monotonic()
        time.sleep(3)
        cpu = cpu_seconds(p.pid) - cpu_before
        wall = time.monotonic() - wall_before
        paused = count_events(p, "accept_paused") - paused_before
        print("out of descriptors: %d open, %.2f s CPU in %.2f s, %d accept_paused lines" % (
            open_fds(p.pid), cpu, wall, paused))
        assert p.alive()
        assert cpu < 0.5 * wall, "the proxy spins while out of descriptors: %.2f s CPU in %.2f s" % (cpu, wall)
        assert paused < 10 * wall, "accept retried %d times in %.1f s" % (paused, wall)
        assert open_fds(p.pid) <= FD_LIMIT
    finally:
        close_all(socks)
    # once those connections are gone (accepted ones and those still in the backlog), it
    # serves normally again
    assert support.wait_until(lambda: open_fds(p.pid) < FD_LIMIT - 20, 10), open_fds(p.pid)
    for _ in range(3):
        assert timed_ping(p) < 2.0
    with HttpClient(p.addr) as c:
        c.request("GET", "/v1.41/containers/json")
        assert c.read_response().status == 200
    assert p.alive()
    assert count_events(p, "internal_error") == 0, [l for l in p.logs() if l.get("event") == "internal_error"]


@pytest.mark.parametrize("target", ["/v1.41/containers/json", "/v1.41/events"])
def test_request_while_out_of_descriptors_gets_an_http_answer(start_limited_proxy, upstream, target):
    """A client the proxy did accept asks for something while no descriptor is left for the
    upstream connection: it must get an HTTP error (502/503, porthole: message), like any other
    failure to reach the daemon, not a reset from the catch-all internal_error path. Both ways
    to the daemon: a plain request and a (shared) /events subscription."""
    p = start_limited_proxy()  # no request yet: no pooled upstream connection to reuse
    socks = exhaust_descriptors(p)
    try:
        # the accept queue is FIFO: the first connections were accepted
        accepted = HttpClient(socks[0], timeout=5)
        accepted.send(build_request("GET", target, [("Host", "localhost")]))
        r, ended = None, b""
        try:
            r = accepted.read_response()
        except ConnectionClosed as exc:
            ended = ("<%s>" % exc).encode()
        except TimeoutError:
            ended = b"<no answer in 5 s>"
        data = bytes(accepted.all_received) + ended
        p.wait_for_log(lambda l: l.get("event") in ("internal_error", "request"), timeout=2)
        errors = [l for l in p.logs() if l.get("event") == "internal_error"]
        assert r is not None and data.startswith(b"HTTP/1.1 50"), \
            "answer: %r; internal errors logged: %s" % (data[:300], errors)
        assert r.status in (502, 503) and json.loads(r.body)["message"].startswith("porthole: ")
        assert not errors
        assert p.alive()
    finally:
        close_all(socks)
    assert support.wait_until(lambda: open_fds(p.pid) < FD_LIMIT - 20, 10), open_fds(p.pid)
    assert timed_ping(p) < 2.0


# ---------------------------------------------------------------------------
# many streams from one client


def events_target(i, distinct):
    """Distinct targets are separate upstream subscriptions; identical /events watchers share
    one (see test_shared_streams.py)."""
    return "/v1.41/events?since=%d" % (1700000000 + i) if distinct else "/v1.41/events"


def open_streams(addr, n, distinct=True, batch=50):
    """n /events streams on n connections (one client address); returns [(HttpClient, Response)]
    after each has its head and first event. Opened `batch` at a time: the fake upstream's
    listen backlog is 128 and the proxy answers 502 at once when a unix socket's backlog is
    full (EAGAIN), so a burst of 300 new upstream connections would test the fake, not us."""
    clients, streams = [], []
    try:
        while len(clients) < n:
            opened = []
            for _ in range(min(batch, n - len(clients))):
                c = HttpClient(addr, timeout=10)
                c.request("GET", events_target(len(clients), distinct))
                clients.append(c)
                opened.append(c)
            for c in opened:
                r = c.read_head()
                assert r.status == 200, (len(streams), r, bytes(c.buf[:300]))
                assert c.read_chunk(r).startswith(b'{"status":"start"')
                streams.append((c, r))
        return streams
    except BaseException:
        close_all(c.sock for c in clients)
        raise


def assert_streams_flow(streams, timeout=5.0):
    for i, (c, r) in enumerate(streams):
        before = len(r.chunks)
        chunk = c.read_chunk(r, timeout=timeout)
        assert chunk is not None and chunk.startswith(b'{"status":"start"'), (i, chunk)
        assert len(r.chunks) == before + 1


def test_stream_cap_of_one_client(start_proxy, upstream):
    upstream.route("/events", fu.events(interval=0.3))
    p = start_proxy("--max-streams-per-client", 50)
    streams = open_streams(p.addr, 50)
    try:
        assert upstream.wait_requests(50)
        assert len(events_requests(upstream)) == 50
        # the 51st, a new subscription or one more watcher of an open one: 429, not forwarded
        for target in (events_target(50, True), events_target(0, True), "/v1.41/events"):
            with HttpClient(p.addr) as extra:
                extra.request("GET", target)
                r = extra.read_response(timeout=5)
            assert r.status == 429, (target, r)
            assert "50" in porthole_message(r)
        time.sleep(0.3)
        assert len(events_requests(upstream)) == 50
        assert_streams_flow(streams)  # the 50 go on
        assert timed_ping(p) < 2.0  # finite requests are not capped
    finally:
        close_all(c.sock for c, _ in streams)
    assert p.alive()


@pytest.mark.parametrize("targets", ["distinct", "identical"])
def test_hundreds_of_streams_from_one_client(start_proxy, upstream, targets):
    """300 streams from one client address: as 300 upstream subscriptions (distinct filters)
    or as 300 watchers of one shared subscription."""
    distinct = targets == "distinct"
    upstream.route("/events", fu.events(interval=0.5))
    p = start_proxy("--max-streams-per-client", 1000, "--max-connections-per-client", 1000)
    timed_ping(p)
    base_rss = support.rss_bytes(p.pid)
    streams = open_streams(p.addr, 300, distinct)
    try:
        assert len(events_requests(upstream)) == (300 if distinct else 1)
        assert_streams_flow(streams)
        rss = support.rss_bytes(p.pid)
        print("300 %s streams: proxy RSS %.1f MB (%.1f MB before), %d descriptors" % (
            targets, rss / MB, base_rss / MB, open_fds(p.pid)))
        assert rss < 100 * MB, rss
        for _ in range(3):
            assert timed_ping(p) < 2.0
        assert_streams_flow(streams)
    finally:
        close_all(c.sock for c, _ in streams)
    # the proxy lets go of the upstream subscriptions when their clients leave
    events_conns = [conn for conn in upstream.connections
                    if any(q.path == "/events" for q in conn.requests)]
    assert len(events_conns) == (300 if distinct else 1)
    assert support.wait_until(lambda: all(c.send_failed.is_set() or c.peer_eof.is_set()
                                          for c in events_conns), 10), \
        sum(1 for c in events_conns if not (c.send_failed.is_set() or c.peer_eof.is_set()))
    assert p.alive()
    timed_ping(p)


# ---------------------------------------------------------------------------
# many clients that never read (test_limits.py has one): memory is bounded per client


def test_many_non_reading_stream_clients_memory_bounded(start_proxy, upstream):
    upstream.route("/events", fu.events(interval=0, payload=b"x" * 65536))
    p = start_proxy()
    timed_ping(p)
    base_rss = support.rss_bytes(p.pid)
    socks = []
    try:
        for i in range(20):  # distinct filters: 20 subscriptions, each held back on its own
            s = fu.connect(p.addr, 5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(build_request("GET", events_target(i, True), [("Host", "localhost")]))
            socks.append(s)
        assert upstream.wait_requests(21)
        time.sleep(2.0)
        sent_mid = sum(c.bytes_sent for c in upstream.connections)
        rss_mid = support.rss_bytes(p.pid)
        time.sleep(1.5)
        sent_end = sum(c.bytes_sent for c in upstream.connections)
        rss_end = support.rss_bytes(p.pid)
        print("20 non-reading clients: RSS %.1f -> %.1f -> %.1f MB, upstream sent %.1f -> %.1f MB" % (
            base_rss / MB, rss_mid / MB, rss_end / MB, sent_mid / MB, sent_end / MB))
        assert sent_end - sent_mid < 8 * MB, (sent_mid, sent_end)  # all held back
        assert rss_end - base_rss < 40 * MB, (base_rss, rss_mid, rss_end)
        assert timed_ping(p) < 2.0
    finally:
        close_all(socks)
    assert p.alive()
    timed_ping(p)
