"""Protocol-level relay tests: the proxy in front of a recording fake upstream.

The central assertion for denied traffic: the upstream received nothing, or
only the canonical form of an allowed request."""

import hashlib
import json
import time

import pytest

import support
import fake_upstream as fu
from fake_upstream import HttpClient, ConnectionClosed, build_request
from support import assert_porthole_error

pytestmark = pytest.mark.timeout(60)

RULES = {
    "version": 1,
    "profiles": {
        "default": {
            "rules": [
                {"method": "GET", "path": "/_ping"},
                {"method": "HEAD", "path": "/_ping"},
                {"method": "GET", "path": "/version"},
                {"method": "GET", "path": "/info"},
                {"method": "GET", "path": "/events"},
                {"method": "GET", "path": "/containers/json"},
                {"method": "GET", "path": "/containers/{id}/json"},
                {"method": "GET", "path": "/images/json"},
            ]
        }
    },
}


@pytest.fixture
def proxy(start_proxy):
    return start_proxy()


# ---------------------------------------------------------------------------
# helpers


def snapshot(up):
    return (len(up.requests), len(up.all_bytes()))


def assert_canonical(req, method, target, user_agent=None, accept=None):
    """req is exactly the rebuilt request: request line, Host: docker, and
    only the client's User-Agent / Accept; no body."""
    assert req.method == method, req.raw
    assert req.target == target, req.raw
    assert req.version == "HTTP/1.1", req.raw
    assert req.raw_head.startswith(("%s %s HTTP/1.1\r\n" % (method, target)).encode()), req.raw
    expected = ["host"]
    if user_agent is not None:
        expected.append("user-agent")
    if accept is not None:
        expected.append("accept")
    assert sorted(req.header_names()) == sorted(expected), req.raw
    assert req.header("host") == "docker", req.raw
    if user_agent is not None:
        assert req.header("user-agent") == user_agent, req.raw
    if accept is not None:
        assert req.header("accept") == accept, req.raw
    assert req.body == b"", req.raw


def ping_barrier(proxy, up, snap):
    """After a denial: one allowed GET /_ping on a fresh connection must be
    the ONLY thing the upstream received since `snap` (so nothing of the
    denied request was forwarded, not even partially)."""
    r = fu.get(proxy.addr, "/_ping")
    assert r.status == 200 and r.body == b"OK"
    assert up.wait_requests(snap[0] + 1)
    time.sleep(0.1)
    new = up.requests[snap[0]:]
    assert len(new) == 1, new
    assert_canonical(new[0], "GET", "/_ping")
    assert len(up.all_bytes()) - snap[1] == len(new[0].raw), up.all_bytes()[snap[1]:]


def client_on(proxy):
    return HttpClient(proxy.addr, timeout=10)


# ---------------------------------------------------------------------------
# forwarding in canonical form


def test_allowed_get_is_rebuilt_canonically(proxy, upstream):
    headers = [
        ("Host", "localhost:2375"),
        ("User-Agent", "Docker-Client/24.0.7 (linux)"),
        ("Accept", "application/json"),
        ("X-Registry-Auth", "eyJ1c2VybmFtZSI6InNlY3JldCJ9"),
        ("Cookie", "session=abc"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("Authorization", "Bearer token"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Forwarded", "for=10.0.0.1"),
        ("Expect", "100-continue"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "hop"),
        ("X-Custom", "custom"),
        ("Accept-Encoding", "gzip"),
    ]
    with client_on(proxy) as c:
        c.send(build_request("GET", "/v1.41/containers/json?all=1", headers))
        r = c.read_response()
    assert r.status == 200, r.body
    assert json.loads(r.body)[0]["Names"] == ["/web"]
    assert upstream.wait_requests(1)
    time.sleep(0.1)
    assert len(upstream.requests) == 1, upstream.requests
    req = upstream.requests[0]
    assert_canonical(req, "GET", "/v1.41/containers/json?all=1",
                     user_agent="Docker-Client/24.0.7 (linux)", accept="application/json")
    # and nothing else at all went over the wire
    assert upstream.all_bytes() == req.raw_head
    for secret in (b"eyJ1c2VybmFtZSI6", b"session=abc", b"dXNlcjpwYXNz", b"Bearer", b"10.0.0.1",
                   b"100-continue", b"X-Hop", b"custom", b"gzip", b"localhost"):
        assert secret not in upstream.all_bytes()


def test_percent_encoded_target_forwarded_canonical(proxy, upstream):
    with client_on(proxy) as c:
        c.request("GET", "/v1.41/%63ontainers/json")
        r = c.read_response()
    assert r.status == 200
    assert upstream.wait_requests(1)
    assert_canonical(upstream.requests[0], "GET", "/v1.41/containers/json")
    assert b"%63" not in upstream.all_bytes()


def test_unversioned_and_id_paths_forwarded(proxy, upstream):
    with client_on(proxy) as c:
        c.request("GET", "/_ping")
        assert c.read_response().body == b"OK"
        c.request("GET", "/v1.41/containers/4f1c6e2a9b3d/json")
        r = c.read_response()
    assert r.status == 200 and r.json()["Id"] == "4f1c6e2a9b3d"
    assert upstream.wait_requests(2)
    assert_canonical(upstream.requests[0], "GET", "/_ping")
    assert_canonical(upstream.requests[1], "GET", "/v1.41/containers/4f1c6e2a9b3d/json")


# ---------------------------------------------------------------------------
# denials never reach the upstream

DENIED = {
    "post_create": build_request(
        "POST", "/v1.41/containers/create",
        [("Host", "localhost"), ("Content-Type", "application/json"), ("Content-Length", "18")],
        b'{"Image":"alpine"}'),
    "delete": build_request("DELETE", "/v1.41/containers/4f1c6e2a9b3d?force=1", [("Host", "localhost")]),
    "export": build_request("GET", "/v1.41/containers/4f1c6e2a9b3d/export", [("Host", "localhost")]),
    "attach_ws": build_request(
        "GET", "/v1.41/containers/4f1c6e2a9b3d/attach/ws?stream=1&stdin=1",
        [("Host", "localhost"), ("Connection", "Upgrade"), ("Upgrade", "websocket"),
         ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]),
    "get_with_body": build_request(
        "GET", "/v1.41/containers/json",
        [("Host", "localhost"), ("Content-Length", "5")], b"hello"),
    "get_with_chunked_body": build_request(
        "GET", "/v1.41/containers/json",
        [("Host", "localhost"), ("Transfer-Encoding", "chunked")], b"5\r\nhello\r\n0\r\n\r\n"),
}


@pytest.mark.parametrize("name", sorted(DENIED))
def test_denied_request_never_reaches_upstream(proxy, upstream, name):
    snap = snapshot(upstream)
    with client_on(proxy) as c:
        c.send(DENIED[name])
        r = c.read_response()
        assert_porthole_error(r, 403)
        assert not 100 <= r.status < 200
    ping_barrier(proxy, upstream, snap)
    for word in (b"POST", b"DELETE", b"export", b"attach", b"Upgrade", b"hello"):
        assert word not in upstream.all_bytes()


# ---------------------------------------------------------------------------
# keep-alive and pipelining


def test_keepalive_sequential_requests(proxy, upstream):
    with client_on(proxy) as c:
        for i in range(5):
            c.request("GET", "/v1.41/version")
            r = c.read_response()
            assert r.status == 200
            assert r.json()["ApiVersion"] == "1.41"
        # still the same client connection
        c.request("GET", "/_ping")
        assert c.read_response().body == b"OK"


def test_pipelined_requests_in_one_write_answered_in_order(proxy, upstream):
    data = (build_request("GET", "/_ping", [("Host", "x")])
            + build_request("GET", "/v1.41/version", [("Host", "x")])
            + build_request("GET", "/v1.41/containers/json?all=1", [("Host", "x")])
            + build_request("HEAD", "/_ping", [("Host", "x")])
            + build_request("GET", "/v1.41/containers/abc/json", [("Host", "x")]))
    with client_on(proxy) as c:
        c.send(data)
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response()
        r4 = c.read_response("HEAD")
        r5 = c.read_response()
    assert (r1.status, r1.body) == (200, b"OK")
    assert r2.json()["Version"] == "24.0.7"
    assert [x["Names"] for x in r3.json()] == [["/web"], ["/db"]]
    assert r4.status == 200 and r4.body == b""
    assert r5.json()["Id"] == "abc"
    assert [(q.method, q.target) for q in upstream.requests] == [
        ("GET", "/_ping"), ("GET", "/v1.41/version"), ("GET", "/v1.41/containers/json?all=1"),
        ("HEAD", "/_ping"), ("GET", "/v1.41/containers/abc/json")]


def test_pipelined_post_after_get_is_denied_and_not_forwarded(proxy, upstream):
    data = (build_request("GET", "/v1.41/_ping", [("Host", "x")])
            + DENIED["post_create"])
    with client_on(proxy) as c:
        c.send(data)
        r1 = c.read_response()
        r2 = c.read_response()
    assert (r1.status, r1.body) == (200, b"OK")
    assert_porthole_error(r2, 403)
    time.sleep(0.2)
    assert len(upstream.requests) == 1
    assert_canonical(upstream.requests[0], "GET", "/v1.41/_ping")
    assert upstream.all_bytes() == upstream.requests[0].raw
    assert b"POST" not in upstream.all_bytes()


def test_pipelined_denied_between_allowed(proxy, upstream):
    """GET, DELETE, GET in one write: 200, 403, then either 200 or a closed
    connection -- and the DELETE never reaches the upstream."""
    data = (build_request("GET", "/_ping", [("Host", "x")])
            + DENIED["delete"]
            + build_request("GET", "/v1.41/version", [("Host", "x")]))
    with client_on(proxy) as c:
        c.send(data)
        assert c.read_response().status == 200
        assert_porthole_error(c.read_response(), 403)
        try:
            r3 = c.read_response()
            assert r3.status == 200 and r3.json()["Version"] == "24.0.7"
        except ConnectionClosed:
            pass
    time.sleep(0.2)
    assert b"DELETE" not in upstream.all_bytes()
    for q in upstream.requests:
        assert q.method == "GET"


# ---------------------------------------------------------------------------
# upstream connection pool


def test_upstream_connection_reused_on_keepalive(proxy, upstream):
    n = 6
    with client_on(proxy) as c:
        for _ in range(n):
            c.request("GET", "/_ping")
            assert c.read_response().body == b"OK"
    assert len(upstream.requests) == n
    assert upstream.connections_accepted == 1


def test_upstream_connection_reused_across_client_connections(proxy, upstream):
    n = 6
    for _ in range(n):
        r = fu.get(proxy.addr, "/v1.41/version")
        assert r.status == 200
    assert len(upstream.requests) == n
    assert upstream.connections_accepted < n


def test_stale_pooled_connection_closed_by_upstream(proxy, upstream):
    upstream.close_after_response = True
    with client_on(proxy) as c:
        for _ in range(3):
            c.request("GET", "/_ping")
            r = c.read_response()
            assert (r.status, r.body) == (200, b"OK")
            time.sleep(0.3)   # the upstream has closed the pooled connection by now
    assert upstream.connections_accepted == 3


def test_stale_pooled_connection_request_is_retried(proxy, upstream):
    """The upstream closes a reused keep-alive connection as the next request
    arrives (no response byte sent): an idempotent GET must be retried on a
    fresh connection, not turned into a 502."""
    upstream.drop_reused = True
    with client_on(proxy) as c:
        c.request("GET", "/_ping")
        assert c.read_response().body == b"OK"
        time.sleep(0.1)
        c.request("GET", "/v1.41/version")
        r = c.read_response()
    assert r.status == 200, r.body
    assert r.json()["Version"] == "24.0.7"
    assert upstream.connections_accepted == 2
    assert [q.target for q in upstream.requests] == ["/_ping", "/v1.41/version", "/v1.41/version"]


# ---------------------------------------------------------------------------
# HEAD, streaming, big bodies


def test_head_ping_relayed_without_body(proxy, upstream):
    with client_on(proxy) as c:
        c.request("HEAD", "/_ping")
        r = c.read_response("HEAD")
        assert r.status == 200
        assert r.header("api-version") == "1.41"
        assert r.header("content-length") in (None, "2")
        # the next response on the connection parses cleanly: no body leaked
        c.request("GET", "/_ping")
        r2 = c.read_response()
        assert (r2.status, r2.body) == (200, b"OK")
        assert not c.buf
    assert_canonical(upstream.requests[0], "HEAD", "/_ping")


def test_events_stream_is_relayed_as_produced(proxy, upstream):
    upstream.route("/events", fu.events(interval=0.3))   # endless
    with client_on(proxy) as c:
        c.request("GET", "/v1.41/events?filters=%7B%7D")
        r = c.read_head(timeout=5)
        assert r.status == 200
        assert (r.header("transfer-encoding") or "").lower() == "chunked"
        deadline = time.monotonic() + 5
        while b"\n" not in r.body and time.monotonic() < deadline:
            assert c.read_chunk(r, timeout=5) is not None
        assert r.body.startswith(fu.event_line(0))
        assert not r.complete   # the stream is still going on
        conn = upstream.connections[0]
        assert not conn.closed.is_set()
    assert upstream.requests[0].target == "/v1.41/events?filters=%7B%7D"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_large_response_arrives_intact(proxy, upstream, chunked):
    big = fu.BigBody(8 * 1024 * 1024, seed=7, chunked=chunked)
    upstream.route("/images/json", big)
    with client_on(proxy) as c:
        c.request("GET", "/v1.41/images/json")
        r = c.read_response(timeout=30)
        assert r.status == 200
        assert len(r.body) == len(big.data)
        assert hashlib.sha256(r.body).hexdigest() == big.sha256
        # the connection is still usable
        c.request("GET", "/_ping")
        assert c.read_response().body == b"OK"


def test_close_delimited_upstream_body_is_relayed(proxy, upstream):
    body = json.dumps([{"Id": "%064d" % i} for i in range(2000)]).encode()
    upstream.route("/containers/json", fu.close_delimited(body))
    with client_on(proxy) as c:
        c.request("GET", "/v1.41/containers/json")
        r = c.read_response(timeout=10)
    assert r.status == 200
    assert r.complete
    assert r.body == body


# ---------------------------------------------------------------------------
# hostile upstream


def test_upstream_101_on_plain_get_becomes_502(proxy, upstream):
    upstream.route("/containers/json", fu.switching_protocols())
    with client_on(proxy) as c:
        c.request("GET", "/v1.41/containers/json")
        r = c.read_response(timeout=10)
        assert_porthole_error(r, 502)
        c.wait_closed(0.3)
        assert b"101" not in bytes(c.all_received).split(b"\r\n", 1)[0]
        assert b"HTTP/1.1 101" not in c.all_received
        assert b"RAW-HIJACKED" not in c.all_received
    # the hijacked upstream connection is not kept
    assert upstream.connections[0].peer_eof.wait(5)
    # and the proxy keeps working on a fresh upstream connection
    assert fu.get(proxy.addr, "/_ping").body == b"OK"


def test_upstream_invalid_status_line_becomes_502(proxy, upstream):
    upstream.route("/version", fu.invalid_status_line())
    r = fu.get(proxy.addr, "/v1.41/version", timeout=10)
    assert_porthole_error(r, 502)
    assert fu.get(proxy.addr, "/_ping").body == b"OK"


def test_upstream_oversized_head_becomes_502(proxy, upstream):
    upstream.route("/version", fu.oversized_head(1024 * 1024))
    with client_on(proxy) as c:
        c.request("GET", "/v1.41/version")
        r = c.read_response(timeout=15)
        assert_porthole_error(r, 502)
        assert b"X-Padding" not in c.all_received
    assert fu.get(proxy.addr, "/_ping").body == b"OK"


def test_upstream_death_mid_chunk_aborts_client_stream(proxy, upstream):
    upstream.route("/events", fu.die_mid_chunk(good_events=1, delay=0.3))
    with client_on(proxy) as c:
        c.request("GET", "/v1.41/events")
        r = c.read_response(timeout=10, allow_incomplete=True)
        assert r.status == 200
        assert r.body.startswith(fu.event_line(0))
        # the client must be able to tell: no clean last chunk, connection ended
        assert not r.complete, "stream ended with a clean 0-chunk after upstream died"
        assert c.eof
        assert b"\r\n0\r\n\r\n" not in c.all_received


def test_extra_bytes_after_content_length_body_do_not_leak(proxy, upstream):
    upstream.route("/containers/json", fu.extra_after_body())
    with client_on(proxy) as c:
        c.request("GET", "/v1.41/containers/json")
        r1 = c.read_response()
        assert r1.status == 200 and r1.json() == {"ok": True}
        time.sleep(0.2)
        c.request("GET", "/_ping")
        r2 = c.read_response()
        assert (r2.status, r2.body) == (200, b"OK")
        c.request("GET", "/v1.41/version")
        r3 = c.read_response()
        assert r3.status == 200 and r3.json()["Version"] == "24.0.7"
        c.wait_closed(0.2)
        assert b"SMUGGLED" not in c.all_received
    # the tainted upstream connection was not reused
    assert upstream.requests[0].conn_index == 0
    assert all(q.conn_index != 0 for q in upstream.requests[1:]), upstream.requests


def test_body_on_head_response_does_not_leak(proxy, upstream):
    upstream.route("/_ping", fu.body_on_head())
    with client_on(proxy) as c:
        c.request("HEAD", "/_ping")
        r1 = c.read_response("HEAD")
        assert r1.status == 200
        c.request("GET", "/v1.41/version")
        r2 = c.read_response()
        assert r2.status == 200 and r2.json()["Version"] == "24.0.7"
        c.request("GET", "/v1.41/containers/json")
        r3 = c.read_response()
        assert r3.status == 200 and len(r3.json()) == 2
        c.wait_closed(0.2)
        assert b"LEAKEDBODY" not in c.all_received
        assert b"SMUGGLED" not in c.all_received


def test_continue_flood_is_not_relayed(proxy, upstream):
    upstream.route("/version", fu.continue_flood(20000, final=True))
    with client_on(proxy) as c:
        c.request("GET", "/v1.41/version")
        r = c.read_response(timeout=20)
        assert r.status in (200, 502), r
        if r.status == 200:
            assert r.json() == {"final": True}
        else:
            assert_porthole_error(r, 502)
        assert bytes(c.all_received).startswith(b"HTTP/1.1 %d" % r.status)
        assert b" 100 Continue" not in c.all_received
    assert fu.get(proxy.addr, "/_ping").body == b"OK"


def test_content_length_with_transfer_encoding_is_not_smuggled(proxy, upstream):
    upstream.route("/containers/json", fu.cl_and_te())
    c = client_on(proxy)
    try:
        c.request("GET", "/v1.41/containers/json")
        r = c.read_response(timeout=10)
        assert r.status in (200, 502), r
        if r.status == 200:
            assert r.body == b'[{"Id":"x"}]'
            assert not (r.header("content-length") and r.header("transfer-encoding"))
        try:
            c.request("GET", "/_ping")
            r2 = c.read_response()
        except TimeoutError:  # an OSError too, but a hang is neither an answer nor a close
            pytest.fail("the connection hangs after the refused response")
        except (ConnectionClosed, OSError):
            c.close()
            c = client_on(proxy)
            c.request("GET", "/_ping")
            r2 = c.read_response()
        assert (r2.status, r2.body) == (200, b"OK")
        c.wait_closed(0.2)
        assert b"SMUGGLED" not in c.all_received
    finally:
        c.close()
    assert all(q.conn_index != 0 for q in upstream.requests[1:]), upstream.requests


def test_upstream_unreachable_gives_502(proxy_factory):
    d = support.short_tmpdir("ph-nowhere-")
    p = proxy_factory(upstream="unix://%s/absent.sock" % d, rules=support.write_rules(RULES))
    r = fu.get(p.first_listener_address(), "/_ping", timeout=10)
    assert_porthole_error(r, 502)


def test_client_disconnect_while_upstream_stalls_frees_upstream(proxy, upstream):
    upstream.route("/info", fu.stall())
    with client_on(proxy) as c:
        c.request("GET", "/v1.41/info")
        assert upstream.wait_requests(1)
        time.sleep(0.2)
    # the proxy must not keep (or pool) the upstream connection of a request
    # whose client went away before the answer
    assert upstream.connections[0].peer_eof.wait(5)
    assert fu.get(proxy.addr, "/_ping").body == b"OK"
    assert upstream.connections_accepted == 2


def test_trickled_response_relayed_intact(proxy, upstream):
    body = json.dumps({"ID": "trickle", "pad": "z" * 5000}).encode()
    # (/version: an answer no profile filters, so its bytes are relayed as they come)
    upstream.route("/version", fu.slow(delay=1.0, body=body, trickle=10))
    with client_on(proxy) as c:
        c.request("GET", "/v1.41/version")
        r = c.read_response(timeout=10)
        assert r.status == 200 and r.body == body
        c.request("GET", "/_ping")
        assert c.read_response().body == b"OK"
