"""Coalescing never holds a request for as long as another answer lasts, and a finite answer
that stops moving is cut (issue "(2 of 5)", item 3). Real ClientConnections, UpstreamPool and
Dispatch over socketpairs and a unix socket the test serves as the daemon, on a fake clock.

- a libpod stream (podman events) was taken for a finite answer and coalesced: a second
  watcher got its first byte only when the first one left;
- a daemon answer that stalls (mid-body, or before its head) held every later identical
  request behind it: now a follower waits FOLLOWER_PATIENCE_SECONDS without progress at most,
  then goes on its own daemon request;
- a finite answer's body had no inactivity deadline: now --response-timeout without a byte
  fails it (504 before anything was relayed, an abort after). Streams, and answers paused by
  a slow client, are exempt."""
from __future__ import annotations

import json

import pytest

from porthole.app.dispatch import Dispatch
from porthole.connections.client import ClientState
from porthole.connections.pool import UpstreamPool
from porthole.connections.sources import FOLLOWER_PATIENCE_SECONDS
from porthole.connections.upstream import UpstreamState
from porthole.core.policy import load_policy
from porthole.runtime.metrics import Metrics
from test_parts import Daemon, Env, Owner, drive, json_message, parse_responses, read_available

pytestmark = pytest.mark.timeout(60)

RULES = {"version": 1, "profiles": {"default": {"redact": [], "rules": [
    {"method": "GET", "path": "/containers/json", "query": {"all": "*"}},
    {"method": "GET", "path": "/containers/{id}/json"},
    {"method": "GET", "path": "/containers/{id}/logs", "query": {"follow": "*", "stdout": "*"}, "dangerous": True},
    {"method": "GET", "path": "/libpod/events", "query": {"stream": "*"}},
]}}}
LIST = b"/containers/json?all=1"


class World:
    """Clients of a real Dispatch: what Proxy does with a request, minus the listeners."""

    def __init__(self, env: Env, rules: dict = RULES) -> None:
        self.env = env
        self.metrics = Metrics()
        self.pool = UpstreamPool(env.loop, env.settings, env.log, self.metrics)
        self.dispatch = Dispatch(env.settings, load_policy(json.dumps(rules)), env.loop, self.pool, env.log,
                                 self.metrics, None)
        dispatch = self.dispatch

        class DispatchOwner(Owner):
            def on_request(self, client, exchange):
                self.requests.append(exchange)
                dispatch.on_request(client, exchange)

            def exchange_done(self, exchange):
                self.done.append(exchange)
                dispatch.exchange_done(exchange)

        env.owner = DispatchOwner()

    def client(self, target: bytes = LIST, **kw):
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
    world = World(env)
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
    world = World(env)
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
    world = World(env)
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
    world = World(env)
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
    world = World(env)
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
    world = World(env, rules)
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
    world = World(env)
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
    world = World(env)
    client, peer = world.client(tcp=True, small=True)
    srv = daemon.accept()
    read_available(srv)
    srv.setblocking(False)
    body = b"[" + b"0," * (2 << 20) + b"0]"
    pending = memoryview(head(len(body)) + body)
    conn = next(iter(world.dispatch.coalesced.values())).conn
    for _ in range(200):
        try:
            pending = pending[srv.send(pending):]
        except BlockingIOError:
            pass
        env.run()
        if conn.paused:
            break
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

