"""CoalescedRead, alone: real ClientConnections over socketpairs, a fake clock, and either a
real UpstreamPool talking to a unix socket the test serves, or a stub pool whose connections
the test moves from CONNECTING to sent by hand. The guarantee under test (CoalescedRead Rule 1):
no client receives the answer to a daemon request that was sent before its request arrived."""

from __future__ import annotations

import sys
from pathlib import Path

import h11
import pytest
from hypothesis import given, settings as hsettings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import proxy  # noqa: E402
from test_parts import (Env, StubExchange, StubPool, drive, json_message, parse_responses,  # noqa: E402
                        read_available)

pytestmark = pytest.mark.timeout(60)

LIST = b"GET /containers/json?all=1 HTTP/1.1\r\nHost: x\r\n\r\n"


def answer(body: bytes, status: int = 200) -> bytes:
    return (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (status, len(body)) + body)


class World:
    """Clients whose requests coalesce as Proxy.coalesce does, over a real pool."""

    def __init__(self, env: Env, pool=None) -> None:
        self.env = env
        self.pool = pool or proxy.UpstreamPool(env.loop, env.settings, env.log)
        self.registry: dict[tuple, proxy.CoalescedRead] = {}
        self.transforms: dict[proxy.ClientConnection, proxy.ResponseTransform] = {}
        env.owner.handler = self.on_request

    def on_request(self, client, exchange):
        exchange.transform = self.transforms.get(client)
        request = h11.Request(method="GET", target=exchange.facts.target, headers=[("Host", "docker")])
        key = (request.target, tuple(request.headers.raw_items()))
        read = self.registry.get(key)
        if read is not None:
            read.join(exchange)
            return
        read = proxy.CoalescedRead(key, self.pool, self.registry, request)
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


HEAD = proxy.relayed_head(h11.Response(status_code=200, headers=[
    (b"Content-Type", b"application/json"), (b"Content-Length", b"4")], _parsed=True))


def coalesce(registry, pool, exchange, key=("k",)):
    read = registry.get(key)
    if read is not None:
        read.join(exchange)
        return
    read = proxy.CoalescedRead(key, pool, registry, None)  # type: ignore[arg-type]
    read.join(exchange)
    read.start()


def test_joins_while_connecting_and_not_after():
    pool, registry = StubPool(), {}
    a, b, c = StubExchange(), StubExchange(), StubExchange()
    coalesce(registry, pool, a)
    coalesce(registry, pool, b)  # the connection is still CONNECTING: nothing sent, B joins
    read, (conn,) = registry[("k",)], pool.conns
    assert read.members == [a, b] and a.source is read and b.source is read
    conn.state = proxy.UpstreamState.AWAITING  # connected: the request is written
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
    conn.state = proxy.UpstreamState.AWAITING  # sent
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
        if read is not None and read.conn is not None and read.conn.state is proxy.UpstreamState.CONNECTING:
            read.conn.state = proxy.UpstreamState.AWAITING
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
    assert all(conn.state is not proxy.UpstreamState.CONNECTING or conn is pool.conns[-1]
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
    assert b.state is proxy.ClientState.CLOSED and c.state is proxy.ClientState.IDLE
    outcomes = sorted((e.outcome, e.delivered == len(body)) for e in env.owner.done if e.client in (b, c))
    assert outcomes == [("allow", True), ("error", False)]


def test_last_member_leaving_closes_the_daemon_connection(env, daemon):
    world = World(env)
    a, pa = world.client()
    srv = daemon.accept()
    read_available(srv)
    pa.close()
    env.run(3)
    assert a.state is proxy.ClientState.CLOSED and world.registry == {}
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
    hidden = proxy.ResponseTransform(document=lambda doc: [item for item in doc if item != "secret"])
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
