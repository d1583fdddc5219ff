"""porthole/connections/exchange.py: the OutputQueue's ledger of what the client's socket
accepted, per exchange (Rule 1: never credit bytes the kernel did not take)."""

from __future__ import annotations

import socket

import h11
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from parts import FakeClock, parse_responses, read_available
from porthole.connections.exchange import Exchange, OutputQueue
from porthole.core.decide import RequestFacts

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
