"""One client's idle or slow connections never lock another out (issue "(2 of 5)", item 4).

The proxy runs as a process in front of the fake daemon; clients are told apart by their
source address (127.0.0.x) or, on a unix listener, by their uid (every connection here is made
by this process, so they all share one). The caps are small so that a few dozen connections
reach them. Times are generous upper bounds for liveness (a client is served within seconds
rather than after --head-timeout or --idle-timeout), never performance thresholds:
bench/fairness.py measures.
"""

import socket

import pytest

import support
import fake_upstream as fu
from fake_upstream import ConnectionClosed, HttpClient

pytestmark = pytest.mark.timeout(90)

RULES = {"version": 1, "profiles": {"default": {"rules": [
    {"method": "GET", "path": "/_ping"},
    {"method": "GET", "path": "/events"},
], "redact": []}}}

CAPS = ("--max-connections", 8, "--max-connections-per-client", 4, "--head-timeout", 30)
PARTIAL_HEAD = b"GET /_ping HTTP/1.1\r\nHost: localhost\r\n"  # never finished: a slowloris
PROMPTLY = 3.0  # seconds: far below --head-timeout (30), so only admission can explain an answer


def from_address(source, addr, timeout=5.0):
    return HttpClient(support.connect_from(source, addr, timeout), timeout=timeout)


def ping(client, timeout=PROMPTLY):
    client.request("GET", "/_ping")
    r = client.read_response(timeout=timeout)
    return r.status, r.body


def open_quietly(connect, n, send=b""):
    """n connections that send `send` (or nothing) and then nothing more. A connection the
    proxy closes meanwhile (to make room for a newer one) is kept all the same."""
    held = []
    for _ in range(n):
        s = connect()
        held.append(s)
        if send:
            try:
                s.sendall(send)
            except OSError:
                pass  # closed already: a newer connection of the same client took its slot
    return held


def close_all(socks):
    for s in socks:
        s.close()


# ---------------------------------------------------------------------------------------------
# over the caps: answered or closed at once, and the listeners never pause for them


def test_silent_connections_over_the_caps_do_not_lock_out_another_client(start_proxy, upstream):
    """One address opens many more silent connections than --max-connections (and than the
    connections over the caps that used to wait for a request head, up to REJECT_SLACK, after
    which every listener paused): another address is still served at once. Before, it waited
    in the backlog until --idle-timeout (60 s) closed the silent ones."""
    p = start_proxy(*CAPS)
    held = open_quietly(lambda: support.connect_from("127.0.0.2", p.addr), 2 * (8 + 64))
    try:
        with from_address("127.0.0.3", p.addr) as other:
            try:
                assert ping(other) == (200, b"OK")
            except (socket.timeout, TimeoutError):
                raise AssertionError("another client was not served while one address held "
                                     "silent connections over the caps") from None
    finally:
        close_all(held)
    assert p.alive()


def test_an_over_cap_connection_is_answered_without_sending_a_request(start_proxy, upstream):
    """The connection over --max-connections-per-client gets its 503 (and is closed) at once,
    not only once it sends a request head (a silent one used to wait for --idle-timeout)."""
    upstream.route("/events", fu.events(interval=0.1))
    p = start_proxy(*CAPS)
    streams = []
    try:
        for _ in range(4):  # requests in progress: nothing of this client can make room
            c = from_address("127.0.0.2", p.addr)
            streams.append(c)
            c.request("GET", "/v1.41/events")
            assert c.read_head().status == 200
        with from_address("127.0.0.2", p.addr) as extra:
            try:
                r = extra.read_response(timeout=PROMPTLY)
            except (socket.timeout, TimeoutError):
                raise AssertionError("the silent connection over the cap got no answer") from None
            assert r.status == 503
            assert "--max-connections-per-client 4" in r.json()["message"]
            assert (r.header("connection") or "").lower() == "close"
            assert extra.wait_closed(PROMPTLY)
    finally:
        close_all(c.sock for c in streams)


# ---------------------------------------------------------------------------------------------
# at the per-client cap: the client's own quiet connections make room, oldest first


def test_at_the_per_client_cap_its_oldest_idle_keep_alive_makes_room(start_proxy, upstream):
    p = start_proxy(*CAPS)
    mine = []
    try:
        for _ in range(4):
            c = from_address("127.0.0.2", p.addr)
            mine.append(c)
            assert ping(c) == (200, b"OK")
        with from_address("127.0.0.2", p.addr) as fifth:
            assert ping(fifth) == (200, b"OK"), "the client's new connection was refused"
            assert mine[0].wait_closed(PROMPTLY), "its oldest idle connection was not closed"
            for c in mine[1:]:  # the others are kept
                assert ping(c) == (200, b"OK")
    finally:
        close_all(c.sock for c in mine)
    evicted = p.wait_for_log(lambda l: l.get("event") == "connection_evicted")
    assert evicted and evicted["client"].startswith("127.0.0.2:"), evicted


def test_slowloris_from_the_victims_own_address_does_not_starve_it(start_proxy, upstream):
    """Head-incomplete connections from the victim's own address (one IP, e.g. a NAT or a
    container network gateway) are closed to admit its new connection, instead of its new
    connection getting a 503 for as long as the slowloris holds them."""
    p = start_proxy(*CAPS)
    held = open_quietly(lambda: support.connect_from("127.0.0.2", p.addr), 40, PARTIAL_HEAD)
    try:
        with from_address("127.0.0.2", p.addr) as victim:
            assert ping(victim) == (200, b"OK")
        with from_address("127.0.0.3", p.addr) as other:
            assert ping(other) == (200, b"OK")
    finally:
        close_all(held)


def test_slowloris_with_the_victims_uid_on_a_unix_listener(start_proxy, upstream):
    """On a unix listener the client is the uid: a slowloris running as the victim's uid (many
    containers run as root) must not starve the victim's new connections; the victim's stream
    (a request in progress) is never closed to make room."""
    upstream.route("/events", fu.events(interval=0.1))
    url, path = support.unix_listen_url("p.sock", "mode=0660")
    p = start_proxy(*CAPS, listen=[url])
    stream = HttpClient(path)
    stream.request("GET", "/v1.41/events")
    r = stream.read_head()
    assert r.status == 200
    held = []
    try:
        held = open_quietly(lambda: fu.connect(path), 40, PARTIAL_HEAD)
        with HttpClient(path) as victim:
            assert ping(victim) == (200, b"OK")
        try:
            assert stream.read_chunk(r, timeout=PROMPTLY), "the stream stopped"
        except ConnectionClosed:
            raise AssertionError("the stream (a request in progress) was closed to make room") from None
    finally:
        close_all(held)
        stream.close()


# ---------------------------------------------------------------------------------------------
# at --max-connections: the quiet connections of the client with the most make room


def test_at_max_connections_the_busiest_clients_oldest_idle_connection_makes_room(start_proxy, upstream):
    p = start_proxy(*CAPS)
    held = []
    try:
        for source, n in (("127.0.0.2", 3), ("127.0.0.3", 4), ("127.0.0.4", 1)):
            for _ in range(n):
                c = from_address(source, p.addr)
                held.append((source, c))
                assert ping(c) == (200, b"OK")
        with from_address("127.0.0.5", p.addr) as newcomer:
            assert ping(newcomer) == (200, b"OK"), "a new client was refused while idle connections held every slot"
            busiest = [c for source, c in held if source == "127.0.0.3"]
            assert busiest[0].wait_closed(PROMPTLY), "the busiest client's oldest idle connection was kept"
            for source, c in held:
                if c is not busiest[0]:
                    assert ping(c) == (200, b"OK"), source
    finally:
        close_all(c.sock for _, c in held)


def test_at_max_connections_requests_in_progress_are_never_closed(start_proxy, upstream):
    """A guard against over-correcting: when every slot holds a request in progress (here
    streams), a new client gets the 503 and the streams go on. (Passes before the fix too.)"""
    upstream.route("/events", fu.events(interval=0.1))
    p = start_proxy(*CAPS)
    streams = []
    try:
        for source in ("127.0.0.2", "127.0.0.3"):
            for _ in range(4):
                c = from_address(source, p.addr)
                c.request("GET", "/v1.41/events")
                streams.append((c, c.read_head()))
        with from_address("127.0.0.5", p.addr) as newcomer:
            newcomer.request("GET", "/_ping")
            r = newcomer.read_response(timeout=PROMPTLY)
            assert r.status == 503 and "--max-connections 8" in r.json()["message"]
        for c, head in streams:
            assert c.read_chunk(head, timeout=PROMPTLY)
    finally:
        close_all(c.sock for c, _ in streams)


# ---------------------------------------------------------------------------------------------
# TLS listeners: the same rules once the handshake is done


@pytest.fixture(scope="module")
def pki():
    import tls_certs
    return tls_certs.make_pki(support.short_tmpdir("ph-pki-"))


def tls_client(pki, addr, timeout=5.0):
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki.ca))
    sock = context.wrap_socket(fu.connect(addr, timeout), server_hostname="localhost")
    return HttpClient(sock, timeout=timeout)


def test_tls_over_the_cap_answered_after_the_handshake_and_idle_ones_make_room(start_proxy, upstream, pki):
    upstream.route("/events", fu.events(interval=0.1))
    port = support.free_port()
    p = start_proxy("--max-connections-per-client", 1, listen=[pki.listen_url(port, mutual=False)])
    with tls_client(pki, p.addr) as idle:
        assert ping(idle) == (200, b"OK")
        with tls_client(pki, p.addr) as new:  # the idle one makes room
            assert ping(new) == (200, b"OK")
            assert idle.wait_closed(PROMPTLY)
            new.request("GET", "/v1.41/events")
            head = new.read_head()
            assert head.status == 200
            with tls_client(pki, p.addr) as extra:  # nothing quiet: its 503, unasked
                try:
                    r = extra.read_response(timeout=PROMPTLY)
                except (socket.timeout, TimeoutError):
                    raise AssertionError("the TLS connection over the cap got no answer") from None
                assert r.status == 503 and "--max-connections-per-client 1" in r.json()["message"]
            assert new.read_chunk(head, timeout=PROMPTLY)
