"""porthole/connections/sources.py: where an exchange's answer comes from, each source alone over
real ClientConnections (socketpairs) on a fake clock: a Relay and a Lookup through a real
UpstreamPool to a unix socket the test serves; a SharedStream and a CoalescedRead also with a stub
pool whose connections the test moves by hand."""

from __future__ import annotations

import json
import selectors
import socket
from types import SimpleNamespace

import h11
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from parts import (
    EVENTS,
    GET,
    Daemon,
    DispatchOwner,
    Env,
    drive,
    json_message,
    parse_responses,
    read_available,
    relay_handler,
    send_until_paused,
    serve_one,
)

from porthole.app.dispatch import Dispatch
from porthole.connections.client import CLIENT_HIGH_WATER, CLIENT_LOW_WATER, ClientConnection, ClientState
from porthole.connections.exchange import Exchange
from porthole.connections.pool import UpstreamPool
from porthole.connections.sources import FOLLOWER_PATIENCE_SECONDS, CoalescedRead, Lookup, SharedStream
from porthole.connections.upstream import UpstreamState
from porthole.core.policy import load_policy
from porthole.core.rewrite import ResponseTransform
from porthole.core.wire import READ_CHUNK, relayed_head
from porthole.runtime.config import parse_endpoint
from porthole.runtime.metrics import Metrics

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# Relay: a request forwarded to the daemon, its answer relayed (over a unix socket the test serves)


def test_relay_full_response_and_pooling(env, daemon):
    pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    body = b'{"ID":"abc","Containers":3}\n'
    srv = serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(body) + body)
    data, _ = drive(env, peer, passes=5)
    (response,) = parse_responses(data)
    assert response["status"] == 200 and response["complete"]
    assert bytes(response["body"]) == body
    assert b"connection" not in response["headers"] or response["headers"][b"connection"] != b"keep-alive"
    assert [e.delivered for e in env.owner.done] == [len(body)]
    assert len(pool.idle) == 1 and pool.idle[0].state is UpstreamState.IDLE
    # the pooled connection serves the next request
    (pooled,) = pool.idle
    peer.sendall(GET)
    env.run()
    assert relays[-1].conn is pooled and pool.idle == [] and pooled.reused
    request, _ = read_available(srv)
    assert request.startswith(b"GET /info HTTP/1.1")
    srv.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    data, _ = drive(env, peer, passes=5)
    assert bytes(parse_responses(data)[0]["body"]) == b"ok"
    assert len(daemon.conns) == 1


def test_relay_backpressure_pauses_and_resumes(env, daemon):
    pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB
    srv = daemon.accept()
    read_available(srv)
    pending = memoryview(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    conn = relays[0].conn
    pauses, resumes, max_queued = [], [], 0
    real_pause, real_resume = conn.pause, conn.resume

    def pause():
        pauses.append(len(client.out))
        real_pause()

    def resume():
        if conn.paused:
            resumes.append(len(client.out))
        real_resume()

    conn.pause, conn.resume = pause, resume

    def feed():
        nonlocal pending
        try:
            pending = pending[srv.send(pending):]
        except BlockingIOError:
            pass

    for _ in range(200):  # the peer does not read: the upstream must pause
        feed()
        env.run()
        max_queued = max(max_queued, len(client.out))
        if conn.paused:
            break
    assert conn.paused and pauses
    assert all(q >= CLIENT_HIGH_WATER for q in pauses)
    watched = env.loop.selector.get_map().get(conn.sock)
    assert watched is None or not watched.events & selectors.EVENT_READ  # not reading the daemon
    queued = len(client.out)
    for _ in range(5):
        feed()
        env.run()
    assert len(client.out) == queued  # nothing more is taken from the daemon
    received = bytearray()
    for _ in range(5000):  # now read slowly: resumes only under the low-water mark
        received += read_available(peer, 16384)[0]
        feed()
        env.run()
        max_queued = max(max_queued, len(client.out))
        if env.owner.done:
            break
    received += read_available(peer)[0]
    assert resumes and all(q < CLIENT_LOW_WATER for q in resumes)
    assert max_queued <= CLIENT_HIGH_WATER + READ_CHUNK + 64
    (response,) = parse_responses(bytes(received))
    assert response["complete"] and bytes(response["body"]) == body


def test_relay_client_that_stops_reading_is_aborted_after_write_timeout(env, daemon):
    """Rule 5 with a real Relay: the client stops reading a large finite answer, back-pressure
    pauses the daemon, and after --write-timeout the client is aborted and the daemon freed."""
    pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client(tcp=True, small=True)
    peer.sendall(GET)
    env.run()
    body = b"q" * (4 << 20)
    srv = daemon.accept()
    read_available(srv)
    conn = relays[0].conn
    send_until_paused(env, srv, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body, conn)
    assert conn.paused and client.state is ClientState.ACTIVE
    env.clock.now += env.settings.write_timeout + 1
    env.run(2)
    assert client.state is ClientState.CLOSED, "stalled finite relay never times out (Rule 5)"
    assert conn.state is UpstreamState.CLOSED
    assert read_available(peer)[1] == "reset"


def test_stale_pooled_connections_retry_once_on_a_fresh_one(env, daemon):
    pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    c1, p1 = env.client()
    c2, p2 = env.client()
    p1.sendall(GET)
    p2.sendall(GET)
    env.run()
    s1 = serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    s2 = serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    env.run(3)
    read_available(p1)
    read_available(p2)
    assert len(pool.idle) == 2
    s1.close()  # the daemon closes both idle connections ...
    s2.close()
    p1.sendall(GET)
    c1.on_io(selectors.EVENT_READ)  # ... and a request takes one before the loop notices
    if len(relays) < 3:
        c1.on_turn()  # (parsing may be left to the client's turn)
    relay = relays[-1]
    assert relay.conn is not None and relay.conn.reused
    data = bytearray()
    srv = None
    for _ in range(10):
        env.run()
        if srv is None:
            try:
                srv = serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
            except BlockingIOError:
                pass
        data += read_available(p1)[0]
    assert relay.retried
    (response,) = parse_responses(bytes(data))
    assert response["status"] == 200 and bytes(response["body"]) == b"fresh"
    assert len(daemon.conns) == 3  # one fresh connection, not the second stale one


def test_failure_after_head_aborts_client(env, daemon):
    pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client(tcp=True)
    peer.sendall(GET)
    env.run()
    srv = serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    env.run(2)
    srv.close()
    data, end = drive(env, peer, passes=10)
    assert end == "reset"  # never a clean end
    assert client.state is ClientState.CLOSED
    (exchange,) = env.owner.done
    assert exchange.outcome == "error" and exchange.status == 200
    assert "closed" in exchange.reason
    assert pool.idle == []


def test_failure_before_head_answers_502(env, daemon):
    pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    srv = daemon.accept()
    read_available(srv)
    srv.close()  # a fresh connection: no retry
    data, _ = drive(env, peer, passes=5)
    (response,) = parse_responses(data)
    assert response["status"] == 502 and json_message(response).startswith("porthole: ")
    assert client.state is ClientState.IDLE
    assert not relays[0].retried


@pytest.mark.parametrize("status", [204, 304])
def test_relay_bodyless_answer_without_framing(env, daemon, status):
    pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    serve_one(env, daemon, b"HTTP/1.1 %d X\r\nContent-Length: 10\r\nETag: \"e\"\r\n\r\n" % status)
    data, _ = drive(env, peer, passes=5)
    head = data.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 %d" % status)
    assert b"content-length" not in head and b"transfer-encoding" not in head
    assert data.endswith(b"\r\n\r\n")
    assert client.state is ClientState.IDLE


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 O\x02K\r\nContent-Length: 5\r\n\r\nhello",
])
def test_relay_refuses_bad_heads_with_502(env, daemon, raw):
    pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    serve_one(env, daemon, raw)
    data, _ = drive(env, peer, passes=5)
    (response,) = parse_responses(data)
    assert response["status"] == 502 and response["complete"]
    assert b"hello" not in data
    assert pool.idle == []


# ---------------------------------------------------------------------------------------------
# Lookup: resolving an object before a per-object request is forwarded (visible scopes)


def lookup_handler(pool, resolved: list):
    def handler(client, exchange):
        request = h11.Request(method="GET", target="/containers/web/json", headers=[("Host", "docker")])
        Lookup(pool, exchange, request, lambda status, doc: resolved.append((status, doc, exchange))).start()
    return handler


def test_lookup_hands_over_the_parsed_answer(env, daemon):
    pool, resolved = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = lookup_handler(pool, resolved)
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    body = b'{"Id":"' + b"a" * 64 + b'","Config":{"Labels":{"team":"a"}}}'
    serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    drive(env, peer, passes=5)
    ((status, doc, exchange),) = resolved
    assert status == 200 and doc["Id"] == "a" * 64 and exchange.source is None
    assert len(pool.idle) == 1  # the lookup's connection goes back to the pool
    assert parse_responses(read_available(peer)[0]) == []  # nothing answered yet: the caller decides


@pytest.mark.parametrize("answer, reason", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n" + b"[" * 300, "over --max-filter-bytes 100"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n<html", "is not JSON"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", "closed the connection"),
])
def test_lookup_fails_closed(make_env, answer, reason):
    env = make_env("--max-filter-bytes", "100")
    daemon = Daemon(env.sock_path)
    try:
        pool, resolved = UpstreamPool(env.loop, env.settings, env.log), []
        env.owner.handler = lookup_handler(pool, resolved)
        client, peer = env.client()
        peer.sendall(GET)
        env.run()
        srv = serve_one(env, daemon, answer)
        srv.shutdown(socket.SHUT_WR)
        data, _ = drive(env, peer, passes=10)
        (response,) = parse_responses(data)
        assert response["status"] == 502 and reason in json.loads(response["body"])["message"]
        assert resolved == []
    finally:
        daemon.close()


# ---------------------------------------------------------------------------------------------
# SharedStream: /events watchers of one subscription


class StubConn:
    """An upstream connection the test drives itself: CONNECTING until the test says it sent."""

    def __init__(self) -> None:
        self.state = UpstreamState.CONNECTING
        self.paused = False
        self.pauses = self.resumes = self.closes = 0
        self.consumer = None

    def pause(self):
        self.paused = True
        self.pauses += 1

    def resume(self):
        self.paused = False
        self.resumes += 1

    def close(self):
        self.closes += 1
        self.state = UpstreamState.CLOSED


class StubPool:
    endpoint = parse_endpoint("unix:///var/run/docker.sock", listener=False)

    def __init__(self) -> None:
        self.conns: list[StubConn] = []

    def acquire(self, consumer, request, fresh=False):
        self.conns.append(StubConn())
        return self.conns[-1]


KEY = "/events"


STREAM_HEAD = relayed_head(h11.Response(status_code=200, headers=[
    (b"Content-Type", b"application/json"), (b"Transfer-Encoding", b"chunked")], _parsed=True))


class StreamWorld:
    """Watchers as real ClientConnections over socketpairs, joining like Proxy.join_stream."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.pool = StubPool()
        self.registry: dict[str, SharedStream] = {}
        self.reopened: list[Exchange] = []
        self.request = h11.Request(method="GET", target="/events", headers=[("Host", "docker")])
        env.owner.handler = self.on_request

    def on_request(self, client, exchange):
        exchange.decision = SimpleNamespace(streaming=True)
        self.join(exchange)

    def join(self, exchange):
        stream = self.registry.get(KEY)
        if stream is not None:
            stream.join(exchange)
        else:
            SharedStream(KEY, self.pool, self.registry, self.request, self.reopened.append).open(exchange)

    def watcher(self, **kw):
        client, peer = self.env.client(**kw)
        peer.sendall(EVENTS)
        self.env.run()
        assert client.exchange is not None
        return client, peer

    @property
    def stream(self) -> SharedStream:
        return self.registry[KEY]


def test_shared_stream_watchers_before_head_get_everything(env):
    world = StreamWorld(env)
    (a, pa), (b, pb) = world.watcher(), world.watcher()
    stream = world.stream
    assert len(world.pool.conns) == 1 and stream.watchers == [a.exchange, b.exchange]
    conn = world.pool.conns[0]
    stream.upstream_head(conn, STREAM_HEAD)
    chunks = [b'{"n":1}\n', b'{"n":2}\n{"n"', b':3}\n']
    for chunk in chunks:
        stream.upstream_data(conn, chunk)
    stream.upstream_end(conn)
    env.run(2)
    for peer in (pa, pb):
        (response,) = parse_responses(read_available(peer)[0])
        assert response["status"] == 200 and response["complete"]
        assert bytes(response["body"]) == b"".join(chunks)
    assert world.registry == {}


def test_shared_stream_late_joiner_waits_for_a_newline(env):
    world = StreamWorld(env)
    a, pa = world.watcher()
    stream, conn = world.stream, world.pool.conns[0]
    stream.upstream_head(conn, STREAM_HEAD)
    stream.upstream_data(conn, b'{"n":1}\n{"n":')
    c, pc = world.watcher()
    assert stream.pending == [c.exchange]
    env.run()
    assert read_available(pc) == (b"", None)  # nothing, not even the head
    stream.upstream_data(conn, b'2}\n{"n":3}\n')
    assert stream.pending == [] and c.exchange in stream.watchers
    d, pd = world.watcher()  # at a boundary: admitted at once
    assert d.exchange in stream.watchers and stream.pending == []
    stream.upstream_data(conn, b'{"n":4}\n')
    env.run()
    (rc,) = parse_responses(read_available(pc)[0])
    assert rc["status"] == 200 and bytes(rc["body"]) == b'{"n":3}\n{"n":4}\n'
    (rd,) = parse_responses(read_available(pd)[0])
    assert bytes(rd["body"]) == b'{"n":4}\n'
    (ra,) = parse_responses(read_available(pa)[0])
    assert bytes(ra["body"]) == b'{"n":1}\n{"n":2}\n{"n":3}\n{"n":4}\n'
    assert len(world.pool.conns) == 1


@pytest.mark.parametrize("head", [
    h11.Response(status_code=404, headers=[(b"Content-Type", b"application/json"), (b"Content-Length", b"3")],
                 _parsed=True),
    h11.Response(status_code=200, headers=[(b"Content-Type", b"application/json"), (b"Content-Length", b"3")],
                 _parsed=True),
], ids=["404", "content-length"])
def test_shared_stream_finite_answer_leaves_registry(env, head):
    world = StreamWorld(env)
    a, pa = world.watcher()
    stream, conn = world.stream, world.pool.conns[0]
    stream.upstream_head(conn, head)
    assert world.registry == {}
    b, pb = world.watcher()  # a new joiner gets its own subscription
    assert len(world.pool.conns) == 2 and world.registry[KEY] is not stream
    assert b.exchange not in stream.watchers + stream.pending
    stream.upstream_data(conn, b"{}\n")
    stream.upstream_end(conn)
    env.run()
    (response,) = parse_responses(read_available(pa)[0])
    assert response["status"] == head.status_code and response["complete"]
    assert read_available(pb) == (b"", None)


def test_shared_stream_failure_before_head_answers_everyone_502(env):
    world = StreamWorld(env)
    (a, pa), (b, pb) = world.watcher(), world.watcher()
    world.stream.upstream_failed(world.pool.conns[0], 502, "the daemon went away", False)
    assert world.registry == {}
    env.run()
    for peer, client in ((pa, a), (pb, b)):
        (response,) = parse_responses(read_available(peer)[0])
        assert response["status"] == 502 and json_message(response) == "porthole: the daemon went away"
        assert client.state is ClientState.IDLE
    assert [e.outcome for e in env.owner.done] == ["error", "error"]


def test_shared_stream_failure_after_head_aborts_watchers_and_answers_pending(env):
    world = StreamWorld(env)
    a, pa = world.watcher(tcp=True)
    stream, conn = world.stream, world.pool.conns[0]
    stream.upstream_head(conn, STREAM_HEAD)
    stream.upstream_data(conn, b'{"n":1}\n{"n"')
    c, pc = world.watcher()
    assert stream.pending == [c.exchange]
    stream.upstream_failed(conn, 502, "the daemon went away", False)
    env.run()
    assert a.state is ClientState.CLOSED
    assert read_available(pa)[1] == "reset"
    (response,) = parse_responses(read_available(pc)[0])
    assert response["status"] == 502 and json_message(response) == "porthole: the daemon went away"


def test_shared_stream_last_watcher_leaving_closes_upstream(env):
    world = StreamWorld(env)
    (a, pa), (b, pb) = world.watcher(), world.watcher()
    stream, conn = world.stream, world.pool.conns[0]
    stream.upstream_head(conn, STREAM_HEAD)
    stream.upstream_data(conn, b'{"n":1}\n')
    pa.close()
    env.run()
    assert a.state is ClientState.CLOSED
    assert stream.watchers == [b.exchange] and conn.closes == 0 and world.registry
    pb.close()
    env.run()
    assert b.state is ClientState.CLOSED
    assert conn.closes == 1 and world.registry == {} and stream.conn is None


def test_shared_stream_pending_watcher_leaving_last_closes_upstream(env):
    world = StreamWorld(env)
    a, pa = world.watcher()
    stream, conn = world.stream, world.pool.conns[0]
    stream.upstream_head(conn, STREAM_HEAD)
    stream.upstream_data(conn, b'{"n"')
    c, pc = world.watcher()
    pa.close()
    env.run()
    assert stream.pending == [c.exchange] and conn.closes == 0
    pc.close()
    env.run()
    assert conn.closes == 1 and world.registry == {}


LINE = b'{"status":"' + b"e" * 8000 + b'"}\n'


def test_shared_stream_lone_slow_watcher_pauses_upstream(env):
    world = StreamWorld(env)
    a, pa = world.watcher()
    stream, conn = world.stream, world.pool.conns[0]
    stream.upstream_head(conn, STREAM_HEAD)
    sent = bytearray()
    for _ in range(200):
        stream.upstream_data(conn, LINE * 4)
        sent += LINE * 4
        env.run()
        if conn.paused:
            break
    assert conn.paused and a.state is ClientState.ACTIVE
    assert len(a.out) >= CLIENT_HIGH_WATER
    received = bytearray()
    for _ in range(100):
        received += read_available(pa)[0]
        env.run()
        if not conn.paused:
            break
    assert not conn.paused and conn.resumes >= 1
    received += read_available(pa)[0]
    env.run()
    received += read_available(pa)[0]
    (response,) = parse_responses(bytes(received))
    assert bytes(response["body"]) == bytes(sent)


def test_shared_stream_newcomer_is_not_starved_by_a_paused_lone_watcher(env):
    """A lone watcher that stopped reading paused the daemon in the middle of an event; a
    second watcher joins (pending until a newline). It must still be answered (Rule 4): the
    stream has to move again, and the slow one is then no longer alone (Rule 3)."""
    world = StreamWorld(env)
    a, pa = world.watcher()
    stream, conn = world.stream, world.pool.conns[0]
    stream.upstream_head(conn, STREAM_HEAD)
    daemon_bytes = LINE * 400
    offset = 0

    def daemon_sends():  # what the upstream connection would hand on while not paused
        nonlocal offset
        while not conn.paused and offset < len(daemon_bytes) and stream.conn is conn:
            stream.upstream_data(conn, daemon_bytes[offset:offset + 30000])
            offset += 30000
            env.run()

    daemon_sends()
    assert conn.paused and not stream.at_boundary  # paused mid-event by the lone slow watcher
    b, pb = world.watcher()
    assert stream.pending == [b.exchange]
    for _ in range(10):
        env.run()
        daemon_sends()
    received = read_available(pb)[0]
    assert received.startswith(b"HTTP/1.1 200"), "a newcomer waits forever behind a paused lone watcher"


def test_shared_stream_slow_watcher_among_several_is_aborted(env):
    world = StreamWorld(env)
    (a, pa), (b, pb) = world.watcher(), world.watcher()
    stream, conn = world.stream, world.pool.conns[0]
    stream.upstream_head(conn, STREAM_HEAD)
    sent, received = bytearray(), bytearray()
    for _ in range(200):
        stream.upstream_data(conn, LINE * 4)
        sent += LINE * 4
        env.run()
        received += read_available(pb)[0]  # b keeps up, a never reads
        if a.state is ClientState.CLOSED:
            break
    assert a.state is ClientState.CLOSED
    assert conn.pauses == 0 and conn.closes == 0
    assert stream.watchers == [b.exchange]
    aborted = [e for e in env.owner.done if e.client is a]
    assert aborted and aborted[0].outcome == "error" and "too slow" in aborted[0].reason
    stream.upstream_data(conn, b'{"n":"after"}\n')
    sent += b'{"n":"after"}\n'
    env.run()
    received += read_available(pb)[0]
    (response,) = parse_responses(bytes(received))
    assert bytes(response["body"]) == bytes(sent)


def test_shared_stream_pending_watchers_reopen_when_stream_ends(env):
    world = StreamWorld(env)
    a, pa = world.watcher()
    stream, conn = world.stream, world.pool.conns[0]
    stream.upstream_head(conn, STREAM_HEAD)
    stream.upstream_data(conn, b'{"n"')
    c, pc = world.watcher()
    stream.upstream_end(conn)
    assert world.reopened == [c.exchange] and c.exchange.source is None


class StubClient:
    def __init__(self) -> None:
        self.has_room = True
        self.aborted = []

    def abort(self, reason):
        self.aborted.append(reason)


class StubExchange:
    def __init__(self) -> None:
        self.client = StubClient()
        self.source = None
        self.head = None
        self.body = bytearray()
        self.ended = False
        self.failed = None
        self.active = True

    def send_head(self, head):
        assert self.head is None
        self.head = head

    def send_body(self, data):
        assert self.head is not None
        self.body += data

    def end_body(self):
        self.ended = True

    def fail(self, status, message):
        self.failed = (status, message)


@hsettings(max_examples=200, deadline=None)
@given(events=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=12),
       cuts=st.lists(st.integers(0, 400), max_size=15),
       join_at=st.integers(-1, 16),
       trailing_partial=st.booleans())
def test_property_late_joiner_gets_a_suffix_at_an_event_boundary(events, cuts, join_at, trailing_partial):
    stream_bytes = b"".join(e + b"\n" for e in events)
    if trailing_partial:
        stream_bytes += b"partial"
    points = sorted({c % (len(stream_bytes) + 1) for c in cuts} | {0, len(stream_bytes)})
    chunks = [stream_bytes[i:j] for i, j in zip(points, points[1:]) if j > i]
    pool = StubPool()
    registry: dict[str, SharedStream] = {}
    first, late = StubExchange(), StubExchange()
    stream = SharedStream(KEY, pool, registry, None, lambda exchange: None)  # type: ignore[arg-type]
    stream.open(first)
    conn = pool.conns[0]
    if join_at < 0:
        stream.join(late)
    stream.upstream_head(conn, STREAM_HEAD)
    joined_offset = 0
    for index, chunk in enumerate(chunks):
        if index == join_at:
            stream.join(late)
        stream.upstream_data(conn, chunk)
        if index < join_at:
            joined_offset += len(chunk)
    if join_at >= len(chunks):
        stream.join(late)
        joined_offset = len(stream_bytes)
    assert bytes(first.body) == stream_bytes
    if join_at < 0:
        joined_offset = 0
    boundaries = [0] + [i + 1 for i, byte in enumerate(stream_bytes) if byte == 0x0A]
    # joining at the very start, before any body byte, is a boundary too
    start = next((k for k in boundaries if k >= joined_offset), None)
    if start is None:
        assert late.head is None and late.body == b""  # still pending: no boundary came
        assert late in stream.pending
    else:
        assert late.head is not None
        assert bytes(late.body) == stream_bytes[start:]
        assert start == 0 or stream_bytes[start - 1:start] == b"\n"


# ---------------------------------------------------------------------------------------------
# CoalescedRead: identical reads share one daemon request
#
# Real ClientConnections over socketpairs, a fake clock, and either a real UpstreamPool talking to
# a unix socket the test serves, or a stub pool whose connections the test moves from CONNECTING
# to sent by hand. The guarantee under test (CoalescedRead Rule 1): no client receives the answer
# to a daemon request that was sent before its request arrived.


LIST = b"GET /containers/json?all=1 HTTP/1.1\r\nHost: x\r\n\r\n"


def answer(body: bytes, status: int = 200) -> bytes:
    return (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (status, len(body)) + body)


class World:
    """Clients whose requests coalesce as Proxy.coalesce does, over a real pool."""

    def __init__(self, env: Env, pool=None) -> None:
        self.env = env
        self.pool = pool or UpstreamPool(env.loop, env.settings, env.log)
        self.registry: dict[tuple, CoalescedRead] = {}
        self.transforms: dict[ClientConnection, ResponseTransform] = {}
        env.owner.handler = self.on_request

    def on_request(self, client, exchange):
        exchange.transform = self.transforms.get(client)
        request = h11.Request(method="GET", target=exchange.facts.target, headers=[("Host", "docker")])
        key = (request.target, tuple(request.headers.raw_items()))
        read = self.registry.get(key)
        if read is not None:
            read.join(exchange)
            return
        read = CoalescedRead(key, self.pool, self.registry, request)
        read.join(exchange)
        read.start()

    def client(self, send: bool = True, **kw):
        client, peer = self.env.client(**kw)
        if send:
            peer.sendall(LIST)
            self.env.run()
            assert client.exchange is not None
        return client, peer


def requests_in(data: bytes) -> int:
    return data.count(b"GET /containers/json?all=1 HTTP/1.1\r\n")


def test_a_request_arriving_after_the_send_waits_for_the_next_answer(env, daemon):
    world = World(env)
    a, pa = world.client()
    srv = daemon.accept()
    assert requests_in(read_available(srv)[0]) == 1  # A's request is on the wire
    b, pb = world.client()  # B arrives after it was sent: it must not get its answer
    c, pc = world.client()
    env.run(3)
    assert read_available(srv)[0] == b"" and len(daemon.conns) == 1  # nothing more asked yet
    srv.sendall(answer(b'["first"]'))
    data, _ = drive(env, pa, passes=5)
    assert bytes(parse_responses(data)[0]["body"]) == b'["first"]'
    assert read_available(pb)[0] == b"" and read_available(pc)[0] == b""
    # the answer ended: B and C's one request goes now, on the pooled connection
    env.run(2)
    assert requests_in(read_available(srv)[0]) == 1
    d, pd = world.client()  # D arrives after that one was sent: the next round again
    srv.sendall(answer(b'["second"]'))
    for peer in (pb, pc):
        data, _ = drive(env, peer, passes=5)
        (response,) = parse_responses(data)
        assert response["complete"] and bytes(response["body"]) == b'["second"]'
    env.run(2)
    assert requests_in(read_available(srv)[0]) == 1
    srv.sendall(answer(b'["third"]'))
    data, _ = drive(env, pd, passes=5)
    assert bytes(parse_responses(data)[0]["body"]) == b'["third"]'
    assert len(daemon.conns) == 1 and world.registry == {}
    assert sorted(e.delivered for e in env.owner.done) == [9, 9, 10, 10]
    assert all(e.status == 200 and e.outcome == "allow" for e in env.owner.done)


HEAD = relayed_head(h11.Response(status_code=200, headers=[
    (b"Content-Type", b"application/json"), (b"Content-Length", b"4")], _parsed=True))


def coalesce(registry, pool, exchange, key=("k",)):
    read = registry.get(key)
    if read is not None:
        read.join(exchange)
        return
    read = CoalescedRead(key, pool, registry, None)  # type: ignore[arg-type]
    read.join(exchange)
    read.start()


def test_joins_while_connecting_and_not_after():
    pool, registry = StubPool(), {}
    a, b, c = StubExchange(), StubExchange(), StubExchange()
    coalesce(registry, pool, a)
    coalesce(registry, pool, b)  # the connection is still CONNECTING: nothing sent, B joins
    read, (conn,) = registry[("k",)], pool.conns
    assert read.members == [a, b] and a.source is read and b.source is read
    conn.state = UpstreamState.AWAITING  # connected: the request is written
    coalesce(registry, pool, c)
    assert read.members == [a, b] and read.follower is not None and read.follower.members == [c]
    assert len(pool.conns) == 1
    read.upstream_head(conn, HEAD)
    read.upstream_data(conn, b"[1]\n")
    read.upstream_end(conn)
    assert a.ended and b.ended and bytes(a.body) == bytes(b.body) == b"[1]\n"
    assert c.head is None and len(pool.conns) == 2  # the follower is sent now
    assert registry[("k",)] is not read and c in registry[("k",)].members


def test_a_read_stalled_by_a_member_that_stopped_reading_holds_up_nobody():
    """Rule 2: a member without room pauses the read it is in; whoever arrives then gets a read
    of its own at once, not one queued behind the stalled answer."""
    pool, registry = StubPool(), {}
    slow, waiting, late = StubExchange(), StubExchange(), StubExchange()
    coalesce(registry, pool, slow)
    read, (conn,) = registry[("k",)], pool.conns
    conn.state = UpstreamState.AWAITING  # sent
    coalesce(registry, pool, waiting)  # arrived after the send: waits in the follower
    assert read.follower is not None and len(pool.conns) == 1
    slow.client.has_room = False  # stopped reading
    read.upstream_head(conn, HEAD)
    assert conn.paused
    assert len(pool.conns) == 2 and waiting in registry[("k",)].members  # the follower went at once
    coalesce(registry, pool, late)
    assert late in registry[("k",)].members and late not in read.members
    follower_conn = pool.conns[1]
    follower = registry[("k",)]
    follower.upstream_head(follower_conn, HEAD)
    follower.upstream_data(follower_conn, b"[2]\n")
    follower.upstream_end(follower_conn)
    assert waiting.ended and late.ended and bytes(waiting.body) == bytes(late.body) == b"[2]\n"
    assert not slow.ended and registry == {}  # the stalled read goes on at its member's pace


@hsettings(max_examples=300, deadline=None)
@given(steps=st.lists(st.sampled_from(["arrive", "send", "answer", "leave"]), max_size=40))
def test_property_no_answer_to_a_request_sent_before_arrival(steps):
    """Any interleaving of arrivals, sends (CONNECTING -> written), answers and departures: every
    answer a client gets is from a request sent after it arrived, and nobody is forgotten."""
    pool, registry = StubPool(), {}
    clock = 0
    arrived: dict[StubExchange, int] = {}
    sent_at: dict[int, int] = {}  # connection index -> when its request was written
    left: set[StubExchange] = set()

    def current():
        return registry.get(("k",))

    def send():
        read = current()
        if read is not None and read.conn is not None and read.conn.state is UpstreamState.CONNECTING:
            read.conn.state = UpstreamState.AWAITING
            sent_at[pool.conns.index(read.conn)] = clock

    def deliver():
        read = current()
        if read is None or read.conn is None:
            return
        send()
        conn = read.conn
        index = pool.conns.index(conn)
        read.upstream_head(conn, HEAD)
        read.upstream_data(conn, b"%03d" % index)
        read.upstream_end(conn)

    for step in steps:
        clock += 1
        if step == "arrive":
            exchange = StubExchange()
            arrived[exchange] = clock
            coalesce(registry, pool, exchange)
        elif step == "send":
            send()
        elif step == "answer":
            deliver()
        elif step == "leave":
            waiting = [e for e in arrived if e.head is None and e not in left]
            if waiting:
                waiting[0].active = False
                left.add(waiting[0])
                waiting[0].source.cancel(waiting[0])
    for _ in range(len(arrived) + 1):  # let everything finish
        clock += 1
        deliver()
    assert current() is None
    for exchange, when in arrived.items():
        if exchange in left:
            continue
        assert exchange.ended and exchange.head is not None, "a member was never answered"
        index = int(bytes(exchange.body))
        assert sent_at[index] >= when, "answered by a request sent before it arrived"
    # at most one request in flight at a time: every connection but the last was answered
    assert all(conn.state is not UpstreamState.CONNECTING or conn is pool.conns[-1]
               or conn.closes for conn in pool.conns[:-1]) or not pool.conns


def test_a_member_leaving_mid_answer_does_not_disturb_the_others(env, daemon):
    world = World(env)
    a, pa = world.client()
    srv = daemon.accept()
    read_available(srv)
    # B and C wait for the next round; then that round is sent
    (b, pb), (c, pc) = world.client(), world.client()
    srv.sendall(answer(b"[]"))
    drive(env, pa, passes=5)
    env.run(2)
    assert requests_in(read_available(srv)[0]) == 1
    body = b"[" + b",".join(b'{"Id":"%064d"}' % i for i in range(3000)) + b"]"
    wire = answer(body)
    srv.sendall(wire[:len(wire) // 3])
    env.run(3)
    assert read_available(pb)[0]  # B has part of it
    pb.close()  # ... and leaves
    rest = wire[len(wire) // 3:]
    got = bytearray()
    for _ in range(200):
        if rest:
            try:
                rest = rest[srv.send(rest):]
            except BlockingIOError:
                pass
        env.run()
        got += read_available(pc)[0]
        if not rest and parse_responses(bytes(got)) and parse_responses(bytes(got))[0]["complete"]:
            break
    (response,) = parse_responses(bytes(got))
    assert response["complete"] and bytes(response["body"]) == body
    assert b.state is ClientState.CLOSED and c.state is ClientState.IDLE
    outcomes = sorted((e.outcome, e.delivered == len(body)) for e in env.owner.done if e.client in (b, c))
    assert outcomes == [("allow", True), ("error", False)]


def test_last_member_leaving_closes_the_daemon_connection(env, daemon):
    world = World(env)
    a, pa = world.client()
    srv = daemon.accept()
    read_available(srv)
    pa.close()
    env.run(3)
    assert a.state is ClientState.CLOSED and world.registry == {}
    assert read_available(srv)[1] == "eof"  # porthole closed its side: nobody wants the answer


@pytest.mark.parametrize("status", [404, 500])
def test_error_answers_are_shared_as_they_are(env, daemon, status):
    world = World(env)
    a, pa = world.client()
    srv = daemon.accept()
    read_available(srv)
    (b, pb), (c, pc) = world.client(), world.client()
    srv.sendall(answer(b'{"message":"first"}', 500))
    drive(env, pa, passes=5)
    env.run(2)
    assert requests_in(read_available(srv)[0]) == 1
    message = b'{"message":"No such thing"}'
    srv.sendall(answer(message, status))
    for peer in (pb, pc):
        data, _ = drive(env, peer, passes=5)
        (response,) = parse_responses(data)
        assert response["status"] == status and bytes(response["body"]) == message
    assert len(daemon.conns) == 1


def test_failure_before_the_head_answers_every_member_and_the_next_round_goes_on(env, daemon):
    world = World(env)
    a, pa = world.client()
    srv = daemon.accept()
    read_available(srv)
    b, pb = world.client()  # waits for the next round
    srv.close()  # the daemon drops the first request
    data, _ = drive(env, pa, passes=5)
    (response,) = parse_responses(data)
    assert response["status"] == 502 and "porthole:" in json_message(response)
    env.run(2)
    srv2 = daemon.accept()  # B's round: its own request, on a new connection
    assert requests_in(read_available(srv2)[0]) == 1
    srv2.sendall(answer(b'["b"]'))
    data, _ = drive(env, pb, passes=5)
    assert bytes(parse_responses(data)[0]["body"]) == b'["b"]'


def test_each_member_filters_its_own_copy(env, daemon):
    world = World(env)
    hidden = ResponseTransform(document=lambda doc: [item for item in doc if item != "secret"])
    first, p_first = world.client()  # its request is on the wire: the next two share the next one
    srv = daemon.accept()
    read_available(srv)
    a, pa = world.client(send=False)
    world.transforms[a] = hidden  # A's profile hides "secret"; B's shows everything
    b, pb = world.client(send=False)
    pa.sendall(LIST)
    pb.sendall(LIST)
    env.run(2)
    (read,) = world.registry.values()
    assert read.follower is not None and read.follower.members == [a.exchange, b.exchange]
    srv.sendall(answer(b'["x"]'))
    drive(env, p_first, passes=5)
    env.run(2)
    assert requests_in(read_available(srv)[0]) == 1  # one daemon request for A and B
    srv.sendall(answer(b'["public","secret"]'))
    filtered = parse_responses(drive(env, pa, passes=5)[0])[0]
    unfiltered = parse_responses(drive(env, pb, passes=5)[0])[0]
    assert bytes(filtered["body"]) == b'["public"]\n'
    assert filtered["headers"][b"content-length"] == b"11"
    assert bytes(unfiltered["body"]) == b'["public","secret"]'
    assert len(daemon.conns) == 1


# ---- Coalescing never holds a request for as long as another answer lasts, and a finite answer
# that stops moving is cut (issue "(2 of 5)", item 3). Real ClientConnections, UpstreamPool and
# Dispatch over socketpairs and a unix socket the test serves as the daemon, on a fake clock.
#
# - a libpod stream (podman events) was taken for a finite answer and coalesced: a second
#   watcher got its first byte only when the first one left;
# - a daemon answer that stalls (mid-body, or before its head) held every later identical
#   request behind it: now a follower waits FOLLOWER_PATIENCE_SECONDS without progress at most,
#   then goes on its own daemon request;
# - a finite answer's body had no inactivity deadline: now --response-timeout without a byte
#   fails it (504 before anything was relayed, an abort after). Streams, and answers paused by
#   a slow client, are exempt.

pytestmark = pytest.mark.timeout(60)

STALL_RULES = {"version": 1, "profiles": {"default": {"redact": [], "rules": [
    {"method": "GET", "path": "/containers/json", "query": {"all": "*"}},
    {"method": "GET", "path": "/containers/{id}/json"},
    {"method": "GET", "path": "/containers/{id}/logs", "query": {"follow": "*", "stdout": "*"}, "dangerous": True},
    {"method": "GET", "path": "/libpod/events", "query": {"stream": "*"}},
]}}}
STALL_LIST = b"/containers/json?all=1"


class DispatchWorld:
    """Clients of a real Dispatch: what Proxy does with a request, minus the listeners."""

    def __init__(self, env: Env, rules: dict = STALL_RULES) -> None:
        self.env = env
        self.metrics = Metrics()
        self.pool = UpstreamPool(env.loop, env.settings, env.log, self.metrics)
        self.dispatch = Dispatch(env.settings, load_policy(json.dumps(rules)), env.loop, self.pool, env.log,
                                 self.metrics, None)
        env.owner = DispatchOwner(self.dispatch)

    def client(self, target: bytes = STALL_LIST, **kw):
        client, peer = self.env.client(**kw)
        peer.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        self.env.run()
        assert client.exchange is not None
        return client, peer


def waiting_connection(daemon: Daemon) -> bool:
    """Whether porthole has opened another daemon connection the test has not accepted."""
    daemon.sock.setblocking(False)
    try:
        daemon.accept()
    except BlockingIOError:
        return False
    return True


def head(length: int, status: int = 200) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (status, length)


BODY = b'[' + b",".join(b'{"Id":"%064d"}' % i for i in range(20)) + b']'


def sent_requests(srv) -> int:
    return read_available(srv)[0].count(b"GET ")


# ---- a follower never waits long on a read that does not move ------------------------------


def test_a_follower_is_sent_on_its_own_when_the_answer_stalls_mid_body(env, daemon):
    world = DispatchWorld(env)
    a, pa = world.client()
    srv1 = daemon.accept()
    assert sent_requests(srv1) == 1
    srv1.sendall(head(len(BODY)) + BODY[:10])  # the head and a little, then nothing
    env.run(3)
    got_a = bytearray(read_available(pa)[0])
    assert got_a.startswith(b"HTTP/1.1 200")
    b, pb = world.client()  # arrives after A's request was sent: it waits behind A's read
    env.run(2)
    assert not waiting_connection(daemon)
    env.clock.now += FOLLOWER_PATIENCE_SECONDS - 1
    srv1.sendall(BODY[10:20])  # progress: B keeps waiting, from now on
    env.run(3)
    env.clock.now += FOLLOWER_PATIENCE_SECONDS - 0.01
    env.run(2)
    assert not waiting_connection(daemon), "the read moved less than the patience ago"
    env.clock.now += 0.02
    env.run(2)
    assert waiting_connection(daemon), "a stalled answer held the identical request behind it"
    srv2 = daemon.conns[-1]
    assert sent_requests(srv2) == 1
    c, pc = world.client()  # newcomers join B's round (or the one after it), never A's
    srv2.sendall(head(len(BODY)) + BODY)
    (response,) = parse_responses(drive(env, pb, passes=5)[0])
    assert response["complete"] and bytes(response["body"]) == BODY
    assert c.exchange is not None and c.exchange.source is not a.exchange.source
    srv1.sendall(BODY[20:])  # A's answer resumes and ends: A gets all of it
    got_a += drive(env, pa, passes=5)[0]
    (response,) = parse_responses(bytes(got_a))
    assert response["complete"] and bytes(response["body"]) == BODY


def test_a_follower_is_sent_on_its_own_when_the_daemon_has_not_answered_yet(env, daemon):
    world = DispatchWorld(env)
    a, pa = world.client()
    srv1 = daemon.accept()
    assert sent_requests(srv1) == 1  # ... and no answer
    env.clock.now += 1
    b, pb = world.client()
    env.clock.now += FOLLOWER_PATIENCE_SECONDS - 1.01
    env.run(2)
    assert not waiting_connection(daemon)
    env.clock.now += 0.02
    env.run(2)
    assert waiting_connection(daemon), "an answer that never started held the identical request behind it"
    srv2 = daemon.conns[-1]
    assert sent_requests(srv2) == 1
    srv2.sendall(head(2) + b"[]")
    (response,) = parse_responses(drive(env, pb, passes=5)[0])
    assert response["complete"] and bytes(response["body"]) == b"[]"
    assert a.state is ClientState.ACTIVE  # A still waits for its own answer


def test_a_read_that_keeps_moving_keeps_its_follower(env, daemon):
    """Rule 2 as before: an answer under way that moves is waited for, and then the follower
    is sent: the daemon never serves the same read twice at once while it moves."""
    world = DispatchWorld(env)
    a, pa = world.client()
    srv1 = daemon.accept()
    read_available(srv1)
    srv1.sendall(head(len(BODY)))
    b, pb = world.client()
    for i in range(0, len(BODY), 40):
        env.clock.now += FOLLOWER_PATIENCE_SECONDS - 0.5
        srv1.sendall(BODY[i:i + 40])
        env.run(3)
        read_available(pa)
        assert len(daemon.conns) == 1 and not waiting_connection(daemon)
    env.run(3)
    assert sent_requests(srv1) == 1  # B's round, on the pooled connection, after A's answer
    srv1.sendall(head(2) + b"[]")
    (response,) = parse_responses(drive(env, pb, passes=5)[0])
    assert bytes(response["body"]) == b"[]"


# ---- libpod streams are streams ----------------------------------------------------------------


def test_a_second_podman_events_watcher_gets_its_own_subscription_at_once(env, daemon):
    world = DispatchWorld(env)
    events = b"/v4.0.0/libpod/events?stream=true"
    first, p_first = world.client(events)
    srv1 = daemon.accept()
    assert sent_requests(srv1) == 1
    event = b'{"Status":"a"}\n'
    srv1.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"%x\r\n%s\r\n" % (len(event), event))
    env.run(3)
    assert read_available(p_first)[0]
    second, p_second = world.client(events)
    env.run(2)
    assert waiting_connection(daemon), "the second watcher waits behind the first one's stream"
    srv2 = daemon.conns[-1]
    assert sent_requests(srv2) == 1
    srv2.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    data, _ = drive(env, p_second, passes=3)
    assert data.startswith(b"HTTP/1.1 200")
    assert world.dispatch.streams_per_client == {"id": 2}  # streams: they count against the cap
    assert world.dispatch.coalesced == {}


# ---- a finite answer's body has a deadline -------------------------------------------------------


@pytest.fixture
def timed():
    """timed(*args): an Env with --response-timeout 7 (and args), and its daemon."""
    made = []

    def make(*args):
        env = Env("--response-timeout", "7", "--write-timeout", "30", *args)
        made.append((env, Daemon(env.sock_path)))
        return made[-1]

    yield make
    for env, daemon in made:
        daemon.close()
        env.close()


@pytest.mark.parametrize("coalesce", ["--coalesce", "--no-coalesce"])
def test_a_finite_answer_that_stops_moving_is_cut_after_response_timeout(timed, coalesce):
    env, daemon = timed(coalesce)
    world = DispatchWorld(env)
    client, peer = world.client(tcp=True)
    srv = daemon.accept()
    read_available(srv)
    srv.sendall(head(len(BODY)) + BODY[:10])
    env.run(3)
    assert read_available(peer)[0].startswith(b"HTTP/1.1 200")  # the head is the client's already
    env.clock.now += 5
    srv.sendall(BODY[10:20])  # a byte moves the deadline
    env.run(3)
    env.clock.now += 6.99
    env.run(2)
    assert client.state is ClientState.ACTIVE
    env.clock.now += 0.02
    _, end = drive(env, peer, passes=3)
    assert end == "reset", "a truncated answer must never end cleanly"
    assert client.state is ClientState.CLOSED
    (exchange,) = env.owner.done
    assert exchange.outcome == "error" and "--response-timeout 7" in exchange.reason
    assert world.metrics.upstream_errors["timeout"] == 1
    assert read_available(srv)[1] == "eof"  # the daemon connection is closed, not pooled
    assert world.pool.idle == [] and world.dispatch.coalesced == {}


def test_an_answer_held_by_a_filter_that_stops_moving_is_answered_504(timed):
    """Nothing was relayed yet (the redaction holds the head until the whole document is in):
    the client is answered, not aborted."""
    env, daemon = timed()
    rules = {"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/containers/{id}/json"}]}}}
    world = DispatchWorld(env, rules)
    client, peer = world.client(b"/containers/c1/json")
    srv = daemon.accept()
    read_available(srv)  # (a full ID needs no lookup: none under the default scope)
    document = b'{"Id":"c1","Config":{"Env":["A=secret"]}}'
    srv.sendall(head(len(document)) + document[:12])
    env.run(3)
    assert read_available(peer)[0] == b""
    env.clock.now += 7
    (response,) = parse_responses(drive(env, peer, passes=3)[0])
    assert response["status"] == 504 and "--response-timeout 7" in json_message(response)
    assert client.state is ClientState.IDLE


def test_a_stream_that_is_quiet_is_never_cut(timed):
    env, daemon = timed()
    world = DispatchWorld(env)
    client, peer = world.client(b"/containers/c1/logs?follow=1&stdout=1")
    srv = daemon.accept()
    read_available(srv)
    srv.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n3\r\nhi\n\r\n")
    env.run(3)
    for _ in range(10):
        env.clock.now += 7
        env.run(2)
    assert client.state is ClientState.ACTIVE and world.metrics.upstream_errors["timeout"] == 0
    assert read_available(srv)[1] is None


def test_an_answer_paused_by_a_slow_client_is_not_the_daemons_fault(timed):
    """While back-pressure pauses the daemon connection, its body deadline does not run: the
    client that stopped reading is cut by --write-timeout, and the daemon is not blamed."""
    env, daemon = timed()
    world = DispatchWorld(env)
    client, peer = world.client(tcp=True, small=True)
    srv = daemon.accept()
    read_available(srv)
    srv.setblocking(False)
    body = b"[" + b"0," * (2 << 20) + b"0]"
    conn = next(iter(world.dispatch.coalesced.values())).conn
    send_until_paused(env, srv, head(len(body)) + body, conn)
    assert conn.paused and conn.state is UpstreamState.RECEIVING
    for _ in range(4):
        env.clock.now += 7
        env.run(2)
    assert client.state is ClientState.ACTIVE and world.metrics.upstream_errors["timeout"] == 0
    env.clock.now += 3
    env.run(2)
    assert client.state is ClientState.CLOSED
    (exchange,) = env.owner.done
    assert exchange.reason == "client stopped reading the response"
    assert world.metrics.upstream_errors["timeout"] == 0

