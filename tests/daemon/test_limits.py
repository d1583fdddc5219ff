"""Resource limits: back-pressure, bounded buffers, head size and deadline,
connection and stream caps.  The proxy runs in front of a fake upstream."""

import select
import socket
import time

import pytest

import support
from support import assert_served, wait_until
import fake_upstream as fu
from fake_upstream import HttpClient, ConnectionClosed, build_request
from policies import FANOUT_RULES

pytestmark = pytest.mark.timeout(60)

RULES = FANOUT_RULES

MB = 1024 * 1024


def write_rules(rules=RULES):
    return support.write_rules(rules)


# ---------------------------------------------------------------------------
# back-pressure


def test_endless_stream_to_non_reading_client_is_bounded(start_proxy, upstream):
    upstream.route("/events", fu.events(interval=0, payload=b"x" * 65536))
    p = start_proxy()
    assert_served(p)
    base_rss = support.rss_bytes(p.pid)
    s = fu.connect(p.addr)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        s.sendall(build_request("GET", "/v1.41/events", [("Host", "localhost")]))
        assert upstream.wait_requests(2)
        conn = upstream.connections[-1]
        time.sleep(2.0)
        sent_mid = conn.bytes_sent
        rss_mid = support.rss_bytes(p.pid)
        time.sleep(2.0)
        sent_end = conn.bytes_sent
        rss_end = support.rss_bytes(p.pid)
        # the upstream is held back: nearly nothing more was taken from it
        assert sent_end - sent_mid < 8 * MB, (sent_mid, sent_end)
        assert sent_end < 64 * MB, sent_end
        # and the proxy did not buffer what it took
        assert rss_end - base_rss < 20 * MB, (base_rss, rss_mid, rss_end)
        assert not conn.send_failed.is_set()
        # other clients are still served meanwhile
        assert_served(p)
    finally:
        s.close()
    # the watcher went away: the proxy closes its upstream stream
    assert conn.send_failed.wait(5), "upstream stream still open after the client disconnected"
    assert p.alive()
    assert_served(p)


def _flood(sock, data, seconds):
    """Write as much of data as the peer takes within `seconds`; returns the
    number of bytes written."""
    sock.setblocking(False)
    view = memoryview(data)
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < len(data) and time.monotonic() < deadline:
        _, w, _ = select.select([], [sock], [], 0.1)
        if not w:
            continue
        try:
            sent += sock.send(view[sent:sent + 1024 * 1024])
        except BlockingIOError:
            continue
        except OSError:
            break
    return sent


@pytest.mark.parametrize("junk", ["pipelined_requests", "garbage"])
def test_pipelined_junk_unread_responses_memory_bounded(start_proxy, upstream, junk):
    p = start_proxy()
    assert_served(p)
    base_rss = support.rss_bytes(p.pid)
    first = build_request("GET", "/v1.41/containers/json", [("Host", "localhost")])
    if junk == "pipelined_requests":
        one = build_request("GET", "/_ping", [("Host", "localhost")])
        payload = first + one * ((40 * MB) // len(one))
    else:
        payload = first + (b"\x00junk\xff" * 4096) * ((40 * MB) // (6 * 4096))
    s = fu.connect(p.addr)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        sent = _flood(s, payload, 4.0)
        rss_end = support.rss_bytes(p.pid)
        assert rss_end - base_rss < 20 * MB, (base_rss, rss_end, sent)
        assert p.alive()
        assert_served(p)
        assert support.rss_bytes(p.pid) - base_rss < 20 * MB
    finally:
        s.close()
    time.sleep(0.3)
    assert p.alive()
    assert_served(p)


# ---------------------------------------------------------------------------
# request head limits


def _ping_barrier(p, up, n_before, bytes_before):
    assert_served(p)
    assert up.wait_requests(n_before + 1)
    time.sleep(0.1)
    new = up.requests[n_before:]
    assert [(q.method, q.target) for q in new] == [("GET", "/_ping")]
    assert len(up.all_bytes()) - bytes_before == len(new[0].raw)


BIG_HEAD = build_request("GET", "/v1.41/containers/json",
                         [("Host", "localhost"), ("X-Big", "a" * 20000)])


def test_oversized_head_in_one_write(start_proxy, upstream):
    p = start_proxy("--max-head-bytes", 4096)
    n0, b0 = len(upstream.requests), len(upstream.all_bytes())
    with HttpClient(p.addr) as c:
        c.send(BIG_HEAD)
        r = c.read_response()
        assert r.status in (431, 400), r
        assert r.json()["message"].startswith("porthole: ")
        assert c.wait_closed(5)
    _ping_barrier(p, upstream, n0, b0)


def test_oversized_head_in_many_small_writes(start_proxy, upstream):
    p = start_proxy("--max-head-bytes", 4096)
    n0, b0 = len(upstream.requests), len(upstream.all_bytes())
    with HttpClient(p.addr) as c:
        pieces = 0
        for i in range(0, len(BIG_HEAD), 64):
            r, _, _ = select.select([c.sock], [], [], 0)
            if r:
                break   # the proxy answered: stop sending, like a real client would
            try:
                c.send(BIG_HEAD[i:i + 64])
            except OSError:
                break
            pieces += 1
            if pieces % 16 == 0:
                time.sleep(0.005)
        assert pieces < len(BIG_HEAD) // 64, "the proxy took a 20 KB head with --max-head-bytes 4096"
        r = c.read_response()
        assert r.status in (431, 400), r
        assert c.wait_closed(5)
    _ping_barrier(p, upstream, n0, b0)


def test_many_headers_over_limit(start_proxy, upstream):
    p = start_proxy("--max-head-bytes", 4096)
    n0, b0 = len(upstream.requests), len(upstream.all_bytes())
    headers = [("Host", "localhost")] + [("X-H%d" % i, "v") for i in range(1000)]
    with HttpClient(p.addr) as c:
        c.send(build_request("GET", "/_ping", headers))
        r = c.read_response()
        assert r.status in (431, 400), r
    _ping_barrier(p, upstream, n0, b0)


def test_head_deadline_closes_slow_client(start_proxy, upstream):
    p = start_proxy("--head-timeout", 2)
    n0, b0 = len(upstream.requests), len(upstream.all_bytes())
    req = build_request("GET", "/_ping", [("Host", "localhost"), ("User-Agent", "slowloris")])
    with HttpClient(p.addr) as slow:
        started = time.monotonic()
        closed = False
        served_meanwhile = False
        for i in range(len(req)):
            try:
                slow.send(req[i:i + 1])
            except OSError:
                closed = True
                break
            if slow.wait_closed(1.0):
                closed = True
                break
            if i == 1:
                # a normal client is served while the slow one dawdles
                assert_served(p, timeout=3)
                served_meanwhile = True
            assert time.monotonic() - started < 8, "slow client still connected after 8 s"
        assert closed, "the whole head went through byte by byte"
        assert served_meanwhile
        elapsed = time.monotonic() - started
        assert elapsed < 8
        received = bytes(slow.all_received)
        assert received == b"" or received.startswith(b"HTTP/1.1 408") or received.startswith(b"HTTP/1.1 400"), received
    assert p.alive()
    assert b"slowloris" not in upstream.all_bytes()
    new = upstream.requests[n0:]
    assert all(q.header("user-agent") != "slowloris" for q in new)


# ---------------------------------------------------------------------------
# connection and stream caps


def test_max_connections_extra_connection_gets_503(start_proxy, upstream):
    """Over --max-connections a connection is answered at once (503, JSON, Connection: close)
    rather than left silent in the backlog; once a slot frees up, new connections are served.
    The two connections holding the slots have requests in progress (streams): an idle
    keep-alive would be closed to make room instead (tests/daemon/test_fairness.py)."""
    upstream.route("/events", fu.events(interval=0.1))
    p = start_proxy("--max-connections", 2)
    streams, heads, extra = [], [], []
    try:
        for _ in range(2):
            c = HttpClient(p.addr)
            streams.append(c)
            c.request("GET", "/v1.41/events")
            heads.append(c.read_head())
            assert heads[-1].status == 200
        c3 = HttpClient(p.addr)
        extra.append(c3)
        c3.request("GET", "/v1.41/version")
        r3 = c3.read_response(timeout=2)
        assert r3.status == 503, "served a third connection with --max-connections 2"
        assert "--max-connections 2" in r3.json()["message"]
        assert (r3.header("connection") or "").lower() == "close"
        assert c3.wait_closed(timeout=5), "the rejected connection was not closed"
        # both streams go on
        for c, head in zip(streams, heads):
            assert c.read_chunk(head, timeout=5)
        streams[0].close()

        def served():
            c = HttpClient(p.addr)
            extra.append(c)
            c.request("GET", "/v1.41/version")
            r = c.read_response(timeout=5)
            return r.status == 200 and r.json()["Version"] == "24.0.7"
        assert wait_until(served, 5, interval=0.1), "a freed slot was never reused"
    finally:
        for c in (*streams, *extra):
            c.close()
    assert p.alive()
    # served again once the proxy has seen those closes (until then: 503, not silence)
    assert wait_until(lambda: fu.get(p.addr, "/_ping").status == 200, 5, interval=0.1)


def _open_stream(addr):
    c = HttpClient(addr, timeout=5)
    c.request("GET", "/v1.41/events")
    r = c.read_head()
    return c, r


def test_max_streams_per_client(start_proxy, upstream):
    upstream.route("/events", fu.events(interval=0.2))
    p = start_proxy("--max-streams-per-client", 2)
    streams = []
    try:
        for _ in range(2):
            c, r = _open_stream(p.addr)
            streams.append((c, r))
            assert r.status == 200
            assert c.read_chunk(r).startswith(b'{"status":"start"')
        assert upstream.wait_requests(1)  # identical /events watchers share one subscription
        n_events_requests = sum(1 for q in upstream.requests if q.path == "/events")
        with HttpClient(p.addr) as c3:
            c3.request("GET", "/v1.41/events")
            r3 = c3.read_response(timeout=5)
        assert r3.status in (429, 403), r3
        assert r3.json()["message"].startswith("porthole: ")
        time.sleep(0.2)
        assert sum(1 for q in upstream.requests if q.path == "/events") == n_events_requests
        # the first streams go on
        for c, r in streams:
            n = len(r.chunks)
            assert c.read_chunk(r, timeout=5) is not None
            assert len(r.chunks) == n + 1
        # non-streaming requests are not limited
        assert_served(p)
        # closing one stream frees a slot
        streams[0][0].close()
        deadline = time.monotonic() + 5
        while True:
            c, r = _open_stream(p.addr)
            streams.append((c, r))
            if r.status == 200 or time.monotonic() > deadline:
                break
            c.close()
            time.sleep(0.2)
        assert r.status == 200, "a closed stream's slot was not released"
    finally:
        for c, _ in streams:
            c.close()


def test_whitespace_padding_counts_toward_the_head_limit(start_proxy, upstream):
    """h11 strips optional whitespace from header values; the limit is on the raw bytes."""
    p = start_proxy("--max-head-bytes", 16384)
    before = len(upstream.all_bytes())
    head = b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nX-Pad: a" + b" " * 30000 + b"b\r\n\r\n"
    with fu.connect(p.addr) as sock:
        sock.sendall(head)
        sock.settimeout(5)
        answer = b""
        while not answer.endswith(b"\n") or b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"porthole: request head of" in answer
    time.sleep(0.2)
    assert len(upstream.all_bytes()) == before
    assert_served(p)
