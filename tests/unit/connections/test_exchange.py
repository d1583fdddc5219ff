"""porthole/connections/exchange.py: the OutputQueue's ledger of what the client's socket
accepted, per exchange (Rule 1: never credit bytes the kernel did not take)."""

from __future__ import annotations

import json
import socket
import struct

import h11
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from parts import DispatchOwner, FakeClock, drive, parse_responses, read_available

from porthole.app.dispatch import Dispatch
from porthole.connections.client import ClientState
from porthole.connections.exchange import Exchange, OutputQueue
from porthole.connections.pool import UpstreamPool
from porthole.core.decide import RequestFacts
from porthole.core.policy import load_policy
from porthole.runtime.metrics import Metrics

pytestmark = pytest.mark.timeout(60)


FACTS = RequestFacts("GET", b"/", [], "unix", "default")


def h11_server(cycles: int) -> h11.Connection:
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * cycles)
    return server


def queue_answers(out: OutputQueue, specs: list[tuple[str, list[int]]]):
    """Queue one answer per spec (framing, payload sizes) through a real h11 server; return
    (exchanges, the whole wire)."""
    server = h11_server(len(specs))
    exchanges, wire = [], bytearray()
    for framing, sizes in specs:
        assert isinstance(server.next_event(), h11.Request)
        assert isinstance(server.next_event(), h11.EndOfMessage)
        exchange = Exchange(None, FACTS, 0.0)  # type: ignore[arg-type]
        exchanges.append(exchange)
        headers = [("Content-Length", str(sum(sizes)))] if framing == "length" else []
        head = server.send(h11.Response(status_code=200, headers=headers))
        out.write(head)
        wire += head
        for i, size in enumerate(sizes):
            payload = bytes([65 + i % 26]) * size
            data = server.send(h11.Data(data=payload))
            out.write_body(data, size, exchange)
            wire += data
        end = server.send(h11.EndOfMessage())
        out.write(end)
        wire += end
        out.end(exchange)
        server.start_next_cycle()
    return exchanges, bytes(wire)


def body_bytes_in(wire_prefix: bytes, answers: int) -> list[int]:
    """An independent oracle: the body bytes of each answer within a prefix of the wire."""
    counts = [0] * answers
    for i, response in enumerate(parse_responses(wire_prefix)):
        counts[i] = len(response["body"])
    return counts


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_ledger_counts_exactly_what_the_socket_accepted(framing):
    ours, peer = socket.socketpair()
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        ours.setblocking(False)
        peer.setblocking(False)
        out = OutputQueue(FakeClock())
        (first, second), wire = queue_answers(out, [(framing, [1000] * 3), (framing, [3000] * 60)])
        done = out.send(ours)
        done += out.send(ours)
        read_available(peer, 5000)  # the peer reads a little, then stops
        for _ in range(5):
            done += out.send(ours)
        assert 0 < out.sent < len(wire)
        assert done == [first]  # the first answer fully accepted, reported once
        expected = body_bytes_in(wire[:out.sent], 2)
        assert first.delivered == 3000 == expected[0]
        assert second.delivered <= expected[1] < second.body_bytes  # whole payloads only, so far
        pending = out.settle()
        assert pending == [second]  # each exchange once, never the completed one
        assert second.delivered == expected[1]  # settle() credits the partly sent payload
        assert first.delivered == 3000
        assert out.settle() == []
    finally:
        ours.close()
        peer.close()


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_ledger_complete_delivery_reports_once(framing):
    ours, peer = socket.socketpair()
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        ours.setblocking(False)
        peer.setblocking(False)
        out = OutputQueue(FakeClock())
        exchanges, wire = queue_answers(out, [(framing, [7000] * 20), (framing, [1]), (framing, [])])
        done, received = [], bytearray()
        while len(out):
            done += out.send(ours)
            received += read_available(peer)[0]
        done += out.send(ours)
        received += read_available(peer)[0]
        assert bytes(received) == wire
        assert done == exchanges
        assert [e.delivered for e in exchanges] == [e.body_bytes for e in exchanges] == [140000, 1, 0]
        assert out.settle() == []
    finally:
        ours.close()
        peer.close()


def test_ledger_settle_lists_an_exchange_once():
    out = OutputQueue(FakeClock())
    exchange = Exchange(None, FACTS, 0.0)  # type: ignore[arg-type]
    out.write_body(b"abc", 3, exchange)
    out.end(exchange)
    out.end(exchange)
    assert out.settle() == [exchange]
    assert exchange.delivered == 0


class TrickleSocket:
    """A socket that accepts what `limits` say, call by call (0: would block), then all."""

    def __init__(self, limits) -> None:
        self.limits = list(limits)
        self.received = bytearray()

    def send(self, data) -> int:
        n = min(self.limits.pop(0) if self.limits else len(data), len(data))
        if n == 0:
            raise BlockingIOError
        self.received += bytes(data[:n])
        return n


@hsettings(max_examples=150, deadline=None)
@given(specs=st.lists(st.tuples(st.sampled_from(["chunked", "length"]),
                                st.lists(st.integers(1, 3000), max_size=8)), min_size=1, max_size=4),
       limits=st.lists(st.integers(0, 4000), max_size=40),
       settle_early=st.booleans())
def test_property_ledger_never_overcredits_and_ends_exact(specs, limits, settle_early):
    out = OutputQueue(FakeClock())
    exchanges, wire = queue_answers(out, specs)
    sock = TrickleSocket(limits)
    reported = []
    for _ in range(len(limits)):
        reported += out.send(sock)
        truth = body_bytes_in(wire[:out.sent], len(exchanges))
        for exchange, accepted in zip(exchanges, truth):
            assert exchange.delivered <= accepted  # Rule 1: never credit unsent bytes
    if settle_early:
        pending = out.settle()
        truth = body_bytes_in(wire[:out.sent], len(exchanges))
        assert [e.delivered for e in exchanges] == truth
        assert len(pending) == len(set(pending))
        assert sorted(map(id, reported + pending)) == sorted(map(id, exchanges))  # each exactly once
    else:
        while len(out):
            reported += out.send(sock)
        reported += out.send(sock)
        assert bytes(sock.received) == wire
        assert reported == exchanges
        assert [e.delivered for e in exchanges] == [sum(sizes) for _, sizes in specs]


# ---- How an exchange ended, said honestly (issue "(2 of 5)", item 17): a stream its client ended
# (Ctrl-C of `docker events`, a Traefik reconnect) was logged `"decision": "error", "reason":
# "client went away"` and counted as an error. Its decision now stands, and the request line says
# how it ended in `ended`: "complete", "client closed" or "aborted". A finite answer its client
# abandoned stays an error ("client closed"). Real ClientConnections, UpstreamPool and Dispatch
# over socketpairs and a daemon socket the test serves, on a fake clock.

pytestmark = pytest.mark.timeout(60)

RULES = {"version": 1, "profiles": {"default": {"redact": [], "rules": [
    {"method": "GET", "path": "/events"},
    {"method": "GET", "path": "/containers/json"},
    {"method": "GET", "path": "/containers/{id}/logs", "query": {"follow": "*", "stdout": "*"}, "dangerous": True},
]}}}
CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENT = b'{"status":"start"}\n'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.fixture
def world(env):
    """env, with a real Dispatch behind its clients; `.request(target)` -> (client, peer)."""
    metrics = Metrics()
    pool = UpstreamPool(env.loop, env.settings, env.log, metrics)
    dispatch = Dispatch(env.settings, load_policy(json.dumps(RULES)), env.loop, pool, env.log, metrics, None)
    env.owner = DispatchOwner(dispatch)

    def request(target: bytes, **kw):
        client, peer = env.client(**kw)
        peer.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        env.run()
        return client, peer

    env.request, env.metrics = request, metrics
    return env


def request_line(env) -> dict:
    (line,) = [event for event in env.log_events() if event.get("event") == "request"]
    return line


def reset(peer: socket.socket) -> None:
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


@pytest.mark.parametrize("target", [b"/events", b"/containers/c1/logs?follow=1&stdout=1"])
@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_stream_its_client_ends_keeps_its_decision(world, daemon, target, how):
    client, peer = world.request(target, tcp=True)
    srv = daemon.accept()
    read_available(srv)
    srv.sendall(CHUNKED + chunk(EVENT))
    assert EVENT in drive(world, peer, passes=3)[0]
    (peer.close if how == "close" else lambda: reset(peer))()
    world.run(3)
    assert client.state is ClientState.CLOSED
    line = request_line(world)
    assert (line["decision"], line["ended"], line["reason"]) == ("allow", "client closed", None), line
    assert line["bytes"] == len(EVENT)
    endpoint = "/events" if target == b"/events" else "/containers/{id}/logs"
    assert world.metrics.requests == {("default", "allow", endpoint): 1}
    assert read_available(srv)[1] == "eof"  # the daemon's stream is let go at once


def test_a_finite_answer_its_client_abandons_is_an_error(world, daemon):
    client, peer = world.request(b"/containers/json", small=True)
    srv = daemon.accept()
    read_available(srv)
    srv.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[" + b"0," * 10)
    drive(world, peer, passes=3)
    peer.close()
    world.run(3)
    line = request_line(world)
    assert (line["decision"], line["ended"], line["reason"]) == ("error", "client closed", "client went away"), line
    assert world.metrics.requests == {("default", "error", "/containers/json"): 1}


def test_an_answer_porthole_cuts_is_aborted(world, daemon):
    client, peer = world.request(b"/events", tcp=True)
    srv = daemon.accept()
    read_available(srv)
    srv.sendall(CHUNKED + chunk(EVENT) + b"5\r\nhal")
    drive(world, peer, passes=3)
    srv.close()  # the daemon dies mid-event
    _, end = drive(world, peer, passes=3)
    assert end == "reset"
    line = request_line(world)
    assert (line["decision"], line["ended"]) == ("error", "aborted"), line
    assert "closed" in line["reason"]


def test_a_delivered_answer_is_complete(world, daemon):
    client, peer = world.request(b"/containers/json")
    srv = daemon.accept()
    read_available(srv)
    srv.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]")
    drive(world, peer, passes=3)
    line = request_line(world)
    assert (line["decision"], line["ended"], line["reason"], line["bytes"]) == ("allow", "complete", None, 2)
