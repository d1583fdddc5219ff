"""Regression tests for the connection layer (black box: the proxy in front of fakes).

Every test here describes behaviour of the rebuilt connection layer; on the proxy.py before
the rebuild (commit 9dc4ec1) each of them fails, except where a docstring or comment says
otherwise (a few guards against over-correcting fixes). Tests using --response-timeout or
--max-connections-per-client also fail there because the option did not exist, but each
would still detect the behaviour itself once the option is parsed.

Everything runs on 127.0.0.x or unix sockets; every wait is bounded.
"""

import json
import re
import select
import signal
import socket
import struct
import threading
import time

import pytest

import fake_upstream as fu
import support
from fake_upstream import ConnectionClosed, HttpClient, build_request
from support import assert_porthole_error, assert_served

pytestmark = pytest.mark.timeout(60)

MB = 1024 * 1024
KB = 1024

RULES = {
    "version": 1,
    "profiles": {
        "default": {
            "rules": [
                {"method": ["GET", "HEAD"], "path": "/_ping"},
                {"method": "GET", "path": "/version"},
                {"method": "GET", "path": "/info"},
                {"method": "GET", "path": "/events"},
                {"method": "GET", "path": "/containers/json"},
                {"method": "GET", "path": "/containers/{id}/json"},
                {"method": "GET", "path": "/images/json"},
            ],
            # framing, fan-out and limits, not filtering (tests/daemon/test_filtering*.py): the fake
            # daemon's filler events are not JSON, so they pass only unfiltered
            "redact": [],
        }
    },
}

REFUSED = build_request("GET", "/v1.41/secrets", [("Host", "localhost")])  # 403, keep-alive
PING = build_request("GET", "/_ping", [("Host", "localhost")])


def request_log(p, target, timeout=5.0):
    """The proxy's `request` log line for `target` (waits for it); None if never logged."""
    return p.wait_for_log(lambda l: l.get("event") == "request" and l.get("target") == target, timeout)


def client_from(source_ip, address, timeout=5.0):
    """An HttpClient whose source address is `source_ip` (e.g. 127.0.0.2): another client IP."""
    return HttpClient(support.connect_from(source_ip, address, timeout), timeout=timeout)


# ---------------------------------------------------------------------------
# kernel socket queues (to know what the proxy handed to the kernel / what was delivered)


def _proc_addr(addr):
    return "%08X:%04X" % (struct.unpack("<I", socket.inet_aton(addr[0]))[0], addr[1])


def tcp_queues(local, remote):
    """(tx_queue, rx_queue) of the IPv4 TCP socket local -> remote, from /proc/net/tcp:
    tx = bytes written but not yet acknowledged by the peer, rx = bytes received but not
    yet read by the application."""
    want = (_proc_addr(local), _proc_addr(remote))
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                tx, rx = fields[4].split(":")
                return int(tx, 16), int(rx, 16)
    raise AssertionError("no TCP socket %s -> %s in /proc/net/tcp" % (local, remote))


def in_kernel(sock):
    """Response bytes between the proxy and this client socket that sit in kernel buffers:
    the proxy side's send queue plus our unread receive queue."""
    here, there = sock.getsockname(), sock.getpeername()
    return tcp_queues(there, here)[0] + tcp_queues(here, there)[1]


def settled_in_kernel(sock, timeout=5.0):
    """in_kernel(sock) once it has stopped changing (the client is not reading)."""
    deadline = time.monotonic() + timeout
    last, same = None, 0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        held = in_kernel(sock)
        same = same + 1 if held == last else 0
        last = held
        if same >= 3 and held > 0:
            break
    return last


def loopback_capacity(p, upstream):
    """How many response bytes the kernel buffers between the proxy and one client hold
    while the client reads nothing (measured on a throw-away connection)."""
    upstream.route("/images/json", fu.BigBody(16 * MB, seed=11))
    s = fu.connect(p.addr, 10)
    try:
        s.sendall(build_request("GET", "/v1.41/images/json", [("Host", "localhost")]))
        return settled_in_kernel(s)
    finally:
        s.close()


def body_size_just_over_kernel_buffers(p, upstream):
    """At least 2 MiB, and more than the kernel buffers can absorb (by 128 KiB), so that
    the tail of the response is still in the proxy's own buffer when the client sleeps.
    (On gVisor the loopback buffers hold ~4 MB: a plain 2 MiB body would fit entirely.)"""
    return max(2 * MB, loopback_capacity(p, upstream) + 128 * KB)


def read_slowly(sock, deadline, piece=16384, pause=0.002):
    """Small recv()s with short sleeps until EOF, reset or deadline.
    Returns (bytes, "eof" | "reset" | "timeout")."""
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(data), "timeout"
        sock.settimeout(left)
        try:
            got = sock.recv(piece)
        except socket.timeout:
            return bytes(data), "timeout"
        except ConnectionResetError:
            return bytes(data), "reset"
        if not got:
            return bytes(data), "eof"
        data += got
        time.sleep(pause)


def split_response(data):
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, "no complete response head: %r" % data[:300]
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split(" ")[1]), headers, body


# ---------------------------------------------------------------------------
# 1. silent truncation


@pytest.mark.parametrize("closing", ["http/1.0", "connection-close"])
def test_slow_reader_of_a_closing_response_gets_every_byte(start_proxy, upstream, closing):
    """The response ends the connection (HTTP/1.0, or Connection: close); the client sleeps
    3.5 s, then reads slowly.  Today the proxy closes 2 s (its linger) after it has queued
    the end of the response, dropping what it still held."""
    p = start_proxy()
    size = body_size_just_over_kernel_buffers(p, upstream)
    big = fu.BigBody(size, seed=21)
    upstream.route("/containers/json", big)
    if closing == "http/1.0":
        request = b"GET /v1.41/containers/json HTTP/1.0\r\nHost: localhost\r\n\r\n"
    else:
        request = build_request("GET", "/v1.41/containers/json",
                                [("Host", "localhost"), ("Connection", "close")])
    s = fu.connect(p.addr, 10)
    try:
        s.sendall(request)
        time.sleep(3.5)
        data, end = read_slowly(s, time.monotonic() + 15)
    finally:
        s.close()
    status, headers, body = split_response(data)
    assert status == 200 and headers.get("content-length") == str(size), headers
    assert len(body) == size, "got %d of %d body bytes, then %s" % (len(body), size, end)
    assert body == big.data
    assert end == "eof", "the connection did not end cleanly after the body: %s" % end
    line = request_log(p, "/v1.41/containers/json")
    assert line is not None, "no request log line"
    assert line["bytes"] == len(body) == size, line


def test_client_leaving_early_is_logged_with_what_it_got(start_proxy, upstream):
    """A client reads ~100 KiB of a 16 MiB body and goes away: the log line must not claim
    more bytes than the proxy handed to the kernel (today it logs what it had queued,
    including its own ~256 KiB buffer) and the exchange is an error, not an allow."""
    upstream.route("/images/json", fu.BigBody(16 * MB, seed=12))
    p = start_proxy()
    s = fu.connect(p.addr, 10)
    try:
        s.sendall(build_request("GET", "/v1.41/images/json", [("Host", "localhost")]))
        data = bytearray()
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in data or len(data) - data.index(b"\r\n\r\n") - 4 < 100 * KB:
            assert time.monotonic() < deadline, "100 KiB did not arrive"
            data += s.recv(16384)
        head_len = data.index(b"\r\n\r\n") + 4
        read_body = len(data) - head_len
        # stop reading: everything the proxy wrote is in the two kernel queues
        held = settled_in_kernel(s)
        time.sleep(0.3)
        held = max(held, in_kernel(s))
        handed_to_kernel = read_body + held
        s.shutdown(socket.SHUT_WR)
        time.sleep(0.3)
    finally:
        s.close()
    line = request_log(p, "/v1.41/images/json")
    assert line is not None, "no request log line"
    assert line["bytes"] <= handed_to_kernel, (
        "logged %d bytes, but only %d were ever written to the client's connection (%d read)"
        % (line["bytes"], handed_to_kernel, read_body))
    assert line["decision"] == "error", line


def test_sigterm_lets_a_slow_reader_finish_its_response(start_proxy, upstream):
    """SIGTERM (default 10 s grace) while a client that is not reading yet has a response in
    flight (head and 64 KiB relayed, the rest still coming from the daemon): it must still get
    the whole body, then a clean close.  Today the connection is closed 2 s after the end of
    the response was queued, with data still in the proxy's buffer."""
    p = start_proxy()
    size = body_size_just_over_kernel_buffers(p, upstream)
    big = fu.BigBody(size, seed=22)
    rest_may_come = threading.Event()

    def paused_body(conn, req):
        data = fu.response(200, big.data, content_type="application/octet-stream")
        cut = data.index(b"\r\n\r\n") + 4 + 64 * KB
        if not conn.send(data[:cut]):
            return False
        deadline = time.monotonic() + 10
        while not rest_may_come.is_set():
            if time.monotonic() > deadline or not conn.sleep(0.02):
                return False
        return conn.send(data[cut:])

    upstream.route("/containers/json", paused_body)
    s = fu.connect(p.addr, 10)
    try:
        s.sendall(build_request("GET", "/v1.41/containers/json", [("Host", "localhost")]))
        readable, _, _ = select.select([s], [], [], 5)
        assert readable, "no response head"
        p.send_signal(signal.SIGTERM)
        assert p.wait_for_log(lambda l: l.get("event") == "stopping", 5), "SIGTERM not logged"
        rest_may_come.set()
        time.sleep(3.0)
        data, end = read_slowly(s, time.monotonic() + 6)
    finally:
        rest_may_come.set()
        s.close()
    status, headers, body = split_response(data)
    assert status == 200 and headers.get("content-length") == str(size), headers
    assert len(body) == size, "got %d of %d body bytes, then %s" % (len(body), size, end)
    assert body == big.data
    assert end == "eof", end
    assert p.wait(10) == 0


# ---------------------------------------------------------------------------
# 2. reload robustness


def _doc(**profile_extra):
    body = {"rules": [{"method": "GET", "path": "/_ping"}]}
    body.update(profile_extra)
    return json.dumps({"version": 1, "profiles": {"default": body}})


BAD_RULES = {
    # crash today (TypeError / RecursionError / ValueError escape load_policy)
    "extends-list": (_doc(extends=[]), r"extends"),
    "extends-object": (_doc(extends={}), r"extends"),
    "deep-nesting": ('{"version": 1, "profiles": {"default": {"rules": '
                     + "[" * 100000 + "]" * 100000 + "}}}", r"(?i)deep|nest|depth|recurs"),
    "huge-number": ('{"version": 1' + "0" * 5000 + ', "profiles": {}}',
                    r"(?i)version|digit|number|integer|large"),
    # accepted today although it is not a string
    "top-level-description-number": (json.dumps({"version": 1, "description": 5, "profiles": {
        "default": {"rules": [{"method": "GET", "path": "/_ping"}]}}}), r"description"),
    # already refused today (regression guards)
    "profile-description-number": (_doc(description=5), r"description"),
    "rule-not-an-object": (json.dumps({"version": 1, "profiles": {"default": {"rules": [5]}}}),
                           r"rules\[0\]"),
    "method-object": (json.dumps({"version": 1, "profiles": {"default": {"rules": [
        {"method": {"GET": True}, "path": "/_ping"}]}}}), r"method"),
    "query-value-number": (json.dumps({"version": 1, "profiles": {"default": {"rules": [
        {"method": "GET", "path": "/containers/json", "query": {"all": 1}}]}}}), r"query"),
}


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_sighup_with_bad_rules_keeps_the_old_policy(start_proxy, upstream, case):
    """The proxy stays up, logs reload_failed and keeps the old policy.  (The cases marked
    "regression guards" in BAD_RULES pass today.)"""
    p = start_proxy()
    assert fu.get(p.addr, "/v1.41/info").status == 200
    p.rules_path.write_text(BAD_RULES[case][0])
    p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while p.alive() and time.monotonic() < deadline and not any(
            l.get("event") in ("reload_failed", "reload") for l in p.logs()):
        time.sleep(0.05)
    time.sleep(0.2)
    failed = p.wait_for_log(lambda l: l.get("event") in ("reload_failed", "reload"), 0)
    assert p.alive(), "the proxy died on SIGHUP:\n" + p.stderr_text()[-2000:]
    assert failed is not None and failed["event"] == "reload_failed", failed
    # still the old policy
    assert_served(p)
    assert fu.get(p.addr, "/v1.41/info").status == 200
    assert_porthole_error(fu.get(p.addr, "/v1.41/secrets"), 403)


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_check_reports_bad_rules_in_one_line(tmp_path, case):
    """--check: exit 2, one line naming the file and the problem, no traceback.  (The cases
    marked "regression guards" in BAD_RULES pass today.)"""
    text, problem = BAD_RULES[case]
    path = tmp_path / "rules.json"
    path.write_text(text)
    result = support.run_proxy("--check", "--rules", str(path), timeout=30)
    err = result.stderr.strip()
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert err and "\n" not in err, "not a one-line message: %r" % result.stderr[-2000:]
    assert str(path) in err, err
    assert re.search(problem, err[len(str(path)):]), err


# ---------------------------------------------------------------------------
# 3. late joiners of a shared /events subscription


def open_watcher(addr, target="/v1.41/events", timeout=5.0):
    c = HttpClient(addr, timeout=timeout)
    c.request("GET", target)
    return c


def test_late_joiner_starts_at_an_event_boundary(start_proxy, upstream):
    """The daemon splits events across chunks; a watcher joining between the halves must
    not get the second half of an event as its first line."""
    go_on = threading.Event()
    events = [fu.event_line(i) for i in range(200)]
    half = len(events[1]) // 2

    def split_events(conn, req):
        head = fu.response(200, headers=[("Transfer-Encoding", "chunked")], content_length=False)
        if not conn.send(head) or not conn.send(fu.chunk(events[0] + events[1][:half])):
            return False
        deadline = time.monotonic() + 10
        while not go_on.is_set():
            if time.monotonic() > deadline or not conn.sleep(0.02):
                return False
        if not conn.send(fu.chunk(events[1][half:] + events[2][:half])):
            return False
        conn.sleep(0.1)
        if not conn.send(fu.chunk(events[2][half:] + events[3])):
            return False
        i = 4
        while i < len(events) and conn.sleep(0.1):
            if not conn.send(fu.chunk(events[i])):
                return False
            i += 1
        return False

    upstream.route("/events", split_events)
    p = start_proxy()
    w1 = open_watcher(p.addr)
    w2 = None
    try:
        r1 = w1.read_head()
        assert r1.status == 200
        while b"\n" not in r1.body:
            assert w1.read_chunk(r1) is not None
        w2 = open_watcher(p.addr)     # joins with half of event 1 already relayed
        time.sleep(0.5)               # (its head may wait for the next event boundary)
        go_on.set()
        r2 = w2.read_head()
        assert r2.status == 200 and (r2.header("transfer-encoding") or "").lower() == "chunked"
        deadline = time.monotonic() + 5
        while r2.body.count(b"\n") < 3 and time.monotonic() < deadline:
            if w2.read_chunk(r2, timeout=max(0.01, deadline - time.monotonic())) is None:
                break
        lines = r2.body.split(b"\n")[:-1]
        assert len(lines) >= 3, r2.body
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError:
                raise AssertionError("the late watcher got a partial event: %r (body %r)"
                                     % (line, r2.body[:300])) from None
            assert isinstance(obj, dict) and obj.get("status") == "start", line
        # the first watcher still sees the events whole and in order
        while r1.body.count(b"\n") < 5:
            assert w1.read_chunk(r1) is not None
        assert r1.body.split(b"\n")[:5] == [e.rstrip(b"\n") for e in events[:5]]
    finally:
        go_on.set()
        w1.close()
        if w2 is not None:
            w2.close()


def test_length_framed_events_answer_is_not_shared_with_late_joiners(start_proxy, upstream):
    """/events answered with Content-Length, slowly: watchers that ask after its head
    arrived must each get a complete, correctly sized body of their own."""
    body = b"".join(fu.event_line(i) for i in range(20))
    upstream.route("/events", fu.slow(delay=2.0, body=body, trickle=10))
    p = start_proxy()
    watchers = [open_watcher(p.addr, timeout=10)]
    try:
        assert upstream.wait_requests(1)
        readable, _, _ = select.select([watchers[0].sock], [], [], 3)
        assert readable, "the first watcher got no response head"
        time.sleep(0.5)   # part of the body went out to the first watcher
        watchers += [open_watcher(p.addr, timeout=10) for _ in range(2)]
        deadline = time.monotonic() + 8
        for i, c in enumerate(watchers):
            try:
                r = c.read_response(timeout=max(0.01, deadline - time.monotonic()))
            except (socket.timeout, TimeoutError):
                raise AssertionError("watcher %d got no complete answer within 8 s" % i) from None
            except ConnectionClosed as exc:
                raise AssertionError("watcher %d: connection ended mid-response (%s); got %r"
                                     % (i, exc, bytes(c.all_received)[:300])) from None
            assert r.status == 200, (i, r)
            assert r.header("content-length") == str(len(body)), (i, r.headers)
            assert r.body == body, "watcher %d got %d bytes: %r" % (i, len(r.body), r.body[:200])
    finally:
        for c in watchers:
            c.close()
    assert_served(p)


# ---------------------------------------------------------------------------
# 4. watchers never answered


def test_shared_stream_whose_first_send_fails_answers_every_watcher(start_proxy):
    daemon = fu.FakeUpstream()
    daemon.close_on_accept = True  # accepts every connection and closes it at once
    daemon.start()
    try:
        p = start_proxy(upstream=daemon.url)
        for attempt in range(10):   # the failing send is a race: try often
            watchers = [open_watcher(p.addr) for _ in range(2)]
            try:
                for i, c in enumerate(watchers):
                    try:
                        r = c.read_response(timeout=2)
                    except (socket.timeout, TimeoutError):
                        raise AssertionError("attempt %d: watcher %d not answered within 2 s" % (attempt, i)) from None
                    assert_porthole_error(r, 502)
            finally:
                for c in watchers:
                    c.close()
    finally:
        daemon.stop()


def test_connect_timeout_applies_to_shared_streams(start_proxy):
    """--upstream is a TCP listener whose backlog is full: connects hang (SYNs dropped)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    held = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.3)
            try:
                s.connect(address)
                held.append(s)
            except OSError:
                s.close()
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setblocking(False)
        probe.connect_ex(address)
        _, connected, _ = select.select([], [probe], [], 0.5)
        probe.close()
        assert not connected, "precondition: connecting to a full backlog should hang here"

        p = start_proxy("--connect-timeout", 1, upstream="tcp://%s:%d" % address)
        started = time.monotonic()
        r = fu.get(p.addr, "/v1.41/version", timeout=6)    # finite: works today
        assert_porthole_error(r, 502)
        assert time.monotonic() - started < 4
        started = time.monotonic()
        try:
            r = fu.get(p.addr, "/v1.41/events", timeout=6)
        except (socket.timeout, TimeoutError):
            raise AssertionError("the /events watcher got no answer within 6 s "
                                 "(--connect-timeout 1)") from None
        assert_porthole_error(r, 502)
        assert time.monotonic() - started < 4
    finally:
        for s in held:
            s.close()
        listener.close()


# ---------------------------------------------------------------------------
# 5. response-head timeout


def test_response_head_timeout_gives_504(start_proxy, upstream):
    upstream.route("/containers/json", fu.stall())
    p = start_proxy("--response-timeout", 1)
    started = time.monotonic()
    try:
        r = fu.get(p.addr, "/v1.41/containers/json", timeout=6)
    except (socket.timeout, TimeoutError):
        raise AssertionError("no answer within 6 s with --response-timeout 1") from None
    assert_porthole_error(r, 504)
    assert time.monotonic() - started < 3
    assert_served(p)


@pytest.mark.parametrize("target", ["/v1.41/events", "/v1.41/events?since=1700000000"],
                         ids=["shared", "unshared"])


def test_response_timeout_does_not_cut_a_quiet_stream(start_proxy, upstream, target):
    """A stream whose head arrived is never cut by --response-timeout.  Fails today only
    because the option does not exist: it guards against a timeout that also hits streams."""
    def quiet_events(conn, req):
        head = fu.response(200, headers=[("Transfer-Encoding", "chunked")], content_length=False)
        if not conn.send(head) or not conn.send(fu.chunk(fu.event_line(0))):
            return False
        if not conn.idle(3.0):
            return False
        i = 1
        while conn.send(fu.chunk(fu.event_line(i))) and conn.idle(0.5):
            i += 1
        return False

    upstream.route("/events", quiet_events)
    p = start_proxy("--response-timeout", 1)
    with open_watcher(p.addr, target, timeout=8) as c:
        r = c.read_head()
        assert r.status == 200
        assert c.read_chunk(r) == fu.event_line(0)
        started = time.monotonic()
        try:
            later = c.read_chunk(r, timeout=6)
        except ConnectionClosed:
            raise AssertionError("the stream was cut while no event came") from None
        assert later == fu.event_line(1)
        assert time.monotonic() - started > 2


# ---------------------------------------------------------------------------
# 6. retry on a fresh connection


def test_retry_after_a_stale_pooled_connection_uses_a_fresh_one(start_proxy, upstream):
    """Two idle pooled connections, both stale: the retry must not take the second one."""
    def first_two_go_stale(conn, req):
        if conn.index < 2 and len(conn.requests) >= 2:
            return False                     # close without answering
        if req.path == "/info" and not conn.idle(0.5):
            return False
        return fu.docker_daemon(conn, req)

    upstream.handler = first_two_go_stale
    p = start_proxy()
    slow = [HttpClient(p.addr), HttpClient(p.addr)]
    try:
        for c in slow:
            c.request("GET", "/v1.41/info")
        for c in slow:
            assert c.read_response().status == 200
    finally:
        for c in slow:
            c.close()
    assert upstream.connections_accepted == 2, "precondition: two pooled upstream connections"
    r = fu.get(p.addr, "/v1.41/version", timeout=10)
    assert r.status == 200, (r, r.body)
    assert r.json()["Version"] == "24.0.7"


# ---------------------------------------------------------------------------
# 7. fairness and caps


def test_refusal_floods_do_not_delay_other_clients(start_proxy, upstream):
    """16 connections pipeline 2000 refused requests each and never read the answers; a
    GET /_ping from another client meanwhile is answered at once, not after the floods (the
    connection layer before the rebuild kept it waiting 6 s and more)."""
    p = start_proxy()
    assert_served(p)
    payload = REFUSED * 2000
    flooders, threads = [], []

    def flood(sock):
        try:
            sock.sendall(payload)
        except OSError:
            pass

    try:
        for _ in range(16):
            s = fu.connect(p.addr, 30)
            flooders.append(s)
            t = threading.Thread(target=flood, args=(s,), daemon=True)
            t.start()
            threads.append(t)
        time.sleep(0.5)
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            try:
                r = fu.get(p.addr, "/_ping", timeout=5)
            except (socket.timeout, TimeoutError):
                raise AssertionError("GET /_ping not answered within 5 s during the flood "
                                     "(earlier latencies %s)" % latencies) from None
            latencies.append(round(time.monotonic() - started, 3))
            assert (r.status, r.body) == (200, b"OK")
            time.sleep(0.1)
        # A liveness check with a wide margin, not a speed target (those live in bench/; the
        # per-pass bounds themselves are checked with a fake clock in tests/unit/connections/test_client.py): the
        # connection layer before the rebuild kept this ping waiting 6 to 19 s.
        assert max(latencies) < 3.0, "GET /_ping latencies during the flood: %s s" % latencies
    finally:
        for s in flooders:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in threads:
            t.join(5)
    assert p.alive()


def test_a_run_of_refusals_closes_the_connection_but_mixed_traffic_does_not(start_proxy, upstream):
    p = start_proxy()
    # allowed requests between the refusals: never closed
    with HttpClient(p.addr, timeout=10) as c:
        for _ in range(4):
            c.send(REFUSED * 50 + PING)
            for _ in range(50):
                r = c.read_response()
                assert r.status == 403 and r.header("connection") != "close", r
            r = c.read_response()
            assert (r.status, r.body) == (200, b"OK")
        c.send(PING)
        assert c.read_response().body == b"OK"
    # only refusals: closed after at most 100 of them, the last one saying so
    with HttpClient(p.addr, timeout=3) as c:
        c.send(REFUSED * 300)
        answers = []
        while True:
            try:
                answers.append(c.read_response())
            except ConnectionClosed:
                break
            except (socket.timeout, TimeoutError):
                raise AssertionError("connection still open after %d refusals" % len(answers)) from None
        assert answers and all(r.status == 403 for r in answers)
        assert len(answers) <= 100, "%d refusals in a row on one connection" % len(answers)
        assert (answers[-1].header("connection") or "").lower() == "close", answers[-1].headers
    assert_served(p)


def _stream(c):
    """Open an /events stream on `c` (a request in progress: never closed to make room)."""
    c.request("GET", "/v1.41/events")
    head = c.read_head()
    assert head.status == 200
    return head


def test_per_client_connection_cap(start_proxy, upstream):
    """The ten connections hold streams: idle keep-alives would be closed to make room for the
    eleventh instead (tests/daemon/test_fairness.py)."""
    upstream.route("/events", fu.events(interval=0.1))
    p = start_proxy("--max-connections-per-client", 10)
    clients, heads = [], []
    try:
        for _ in range(10):
            c = HttpClient(p.addr)
            clients.append(c)
            heads.append(_stream(c))
        with HttpClient(p.addr) as extra:
            extra.request("GET", "/_ping")
            try:
                r = extra.read_response(timeout=2)
            except (socket.timeout, TimeoutError):
                raise AssertionError("the 11th connection got no answer") from None
            assert_porthole_error(r, 503)
            assert (r.header("connection") or "").lower() == "close", r.headers
            assert extra.wait_closed(2)
        with client_from("127.0.0.2", p.addr) as other:
            other.request("GET", "/_ping")
            r = other.read_response()
            assert (r.status, r.body) == (200, b"OK")
        for c, head in zip(clients, heads):  # the ten are still served
            assert c.read_chunk(head, timeout=5)
        clients.pop().close()      # one leaves: its slot is free again
        deadline = time.monotonic() + 5
        while True:
            r = fu.get(p.addr, "/_ping")
            if r.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status == 200, r
    finally:
        for c in clients:
            c.close()


def test_connection_over_max_connections_gets_503_not_silence(start_proxy, upstream):
    """Every slot holds a stream: idle keep-alives would be closed to make room instead."""
    upstream.route("/events", fu.events(interval=0.1))
    p = start_proxy("--max-connections", 20, "--max-connections-per-client", 15)
    clients = []
    try:
        for source, n in (("127.0.0.1", 15), ("127.0.0.2", 5)):
            for _ in range(n):
                c = client_from(source, p.addr)
                clients.append(c)
                _stream(c)
        with client_from("127.0.0.3", p.addr) as extra:
            started = time.monotonic()
            extra.request("GET", "/_ping")
            try:
                r = extra.read_response(timeout=3)
            except (socket.timeout, TimeoutError):
                raise AssertionError("the 21st connection got no answer within 3 s") from None
            assert time.monotonic() - started < 1.5
            assert_porthole_error(r, 503)
            assert (r.header("connection") or "").lower() == "close", r.headers
    finally:
        for c in clients:
            c.close()


# ---------------------------------------------------------------------------
# 8. smaller ones


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_status_has_no_framing_headers(start_proxy, upstream, status):
    reason = {204: b"No Content", 304: b"Not Modified"}[status]
    upstream.route("/containers/json", fu.raw(
        b"HTTP/1.1 %d %s\r\nApi-Version: 1.41\r\nContent-Length: 0\r\n\r\n" % (status, reason),
        keep_alive=True))
    p = start_proxy()
    with HttpClient(p.addr) as c:
        c.request("GET", "/v1.41/containers/json")
        r = c.read_response()
        assert r.status == status
        assert r.header("content-length") is None, r.raw_head
        assert r.header("transfer-encoding") is None, r.raw_head
        c.request("GET", "/_ping")
        assert c.read_response().body == b"OK"


CONTROL_BYTE_RESPONSES = {
    "header-0x01": b"HTTP/1.1 200 OK\r\nX-Note: a\x01b\r\n",
    "header-0x7f": b"HTTP/1.1 200 OK\r\nX-Note: a\x7fb\r\n",
    "reason-0x01": b"HTTP/1.1 200 O\x01K\r\n",
    "reason-0x7f": b"HTTP/1.1 200 OK\x7f\r\n",
}


@pytest.mark.parametrize("case", sorted(CONTROL_BYTE_RESPONSES))
def test_control_bytes_in_the_daemons_head_are_refused(start_proxy, upstream, case):
    head = CONTROL_BYTE_RESPONSES[case]
    upstream.route("/containers/json", fu.raw(
        head + b"Api-Version: 1.41\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"))
    p = start_proxy()
    with HttpClient(p.addr) as c:
        c.request("GET", "/v1.41/containers/json")
        r = c.read_response()
        c.wait_closed(0.3)
        received = bytes(c.all_received)
    assert_porthole_error(r, 502)
    assert b"\x01" not in received and b"\x7f" not in received, received
    assert_served(p)


def test_tcp_upstream_given_by_name(start_proxy):
    """--upstream tcp://localhost:PORT (a name, not an IP).  Passes on the current proxy.py
    (Python's connect_ex resolves the name); a guard for the rewritten connection layer."""
    daemon = fu.FakeUpstream(tcp=True).start()
    try:
        p = start_proxy(upstream="tcp://localhost:%d" % daemon.port)
        for _ in range(2):
            r = fu.get(p.addr, "/_ping", timeout=10)
            assert (r.status, r.body) == (200, b"OK"), (r, r.body)
        assert [q.target for q in daemon.requests] == ["/_ping", "/_ping"]
    finally:
        daemon.stop()
