"""porthole/connections/client.py: a ClientConnection alone, over a socketpair (or a TCP pair, for
resets), with a stub owner and a fake clock: its states, its deadlines, how it parses, refuses
and delivers."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import h11
import pytest

from parts import EVENTS, GET, Env, drive, finite_answer, json_message, parse_responses, read_available
from porthole.connections.client import CLIENT_TRANSITIONS, LINGER_SECONDS, REQUESTS_PER_TURN, ClientState
from porthole.connections.exchange import MAX_REFUSALS_IN_A_ROW
from porthole.core.target import Refusal
from porthole.runtime.loop import StateError
from porthole.connections.client import evict, quiet_since

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# transition table


def test_client_transition_table_is_exhaustive():
    assert set(CLIENT_TRANSITIONS) == set(ClientState)
    for targets in CLIENT_TRANSITIONS.values():
        assert targets <= set(ClientState)
    assert CLIENT_TRANSITIONS[ClientState.CLOSED] == frozenset()


@pytest.mark.parametrize("old", list(ClientState), ids=lambda s: s.name)
@pytest.mark.parametrize("new", list(ClientState), ids=lambda s: s.name)
def test_client_transitions(env, old, new):
    client, _ = env.client()
    client.state = old
    if new in CLIENT_TRANSITIONS[old]:
        env.clock.now += 1
        client.enter(new)
        assert client.state is new
        assert client.entered == env.clock.now
        assert env.loop.wanted.get(client) == client.deadline()[0]  # enter() sets the deadline
    else:
        with pytest.raises(StateError):
            client.enter(new)
        assert client.state is old


# ---------------------------------------------------------------------------------------------
# deadlines


def test_idle_client_closes_then_lingers(env):
    client, peer = env.client()
    env.clock.now += env.settings.idle_timeout - 0.01
    env.run()
    assert client.state is ClientState.IDLE
    assert read_available(peer) == (b"", None)
    env.clock.now += 0.01
    env.run()
    assert client.state is ClientState.LINGERING
    assert read_available(peer) == (b"", "eof")  # a FIN, no bytes
    assert env.owner.closed == []
    env.clock.now += LINGER_SECONDS - 0.01
    env.run()
    assert client.state is ClientState.LINGERING
    env.clock.now += 0.01
    env.run()
    assert client.state is ClientState.CLOSED
    assert env.owner.closed == [client] and env.owner.done == []
    assert client.sock.fileno() == -1


def test_lingering_client_closing_first_closes_at_once(env):
    client, peer = env.client()
    env.clock.now += env.settings.idle_timeout
    env.run()
    assert client.state is ClientState.LINGERING
    peer.sendall(b"ignored bytes")
    env.run()
    assert client.state is ClientState.LINGERING
    peer.shutdown(socket.SHUT_WR)
    env.run()
    assert client.state is ClientState.CLOSED and env.owner.closed == [client]


def test_head_timeout_answers_408_then_closes(env):
    client, peer = env.client()
    env.clock.now += 5
    peer.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n")
    env.run()
    assert client.state is ClientState.HEAD
    env.clock.now += env.settings.head_timeout - 0.01
    env.run()
    assert read_available(peer) == (b"", None)
    env.clock.now += 0.01
    env.run()
    data, end = read_available(peer)
    assert end == "eof"
    (response,) = parse_responses(data, eof=True)
    assert response["status"] == 408 and response["complete"]
    assert response["headers"][b"connection"] == b"close"
    assert json_message(response) == "porthole: request head not received in time"
    assert env.owner.requests == []
    assert [e.status for e in env.owner.done] == [408]
    assert client.state is ClientState.LINGERING


def test_finite_answer_stalled_is_aborted_with_rst(env):
    body = b"x" * (4 << 20)
    env.owner.handler = finite_answer(body)
    client, peer = env.client(tcp=True, small=True)
    peer.sendall(GET)
    env.run(3)
    assert client.exchange is None and len(client.out) > 0  # fully queued, not delivered
    env.clock.now += env.settings.write_timeout - 0.01
    env.run()
    assert env.owner.closed == []
    env.clock.now += 0.01
    env.run()
    assert env.owner.closed == [client]
    (exchange,) = env.owner.done
    assert exchange.outcome == "error" and exchange.delivered < len(body)
    assert "stopped reading" in exchange.reason
    _, end = read_available(peer)
    assert end == "reset"


def test_finite_answer_stalled_mid_answer_is_aborted(env):
    """Rule 5 while the answer is still being produced (a Relay whose daemon is paused by
    back-pressure): the exchange is ACTIVE, its queue does not move."""
    body = b"y" * (2 << 20)
    env.owner.handler = finite_answer(body + body, end=False)  # the second half never comes
    client, peer = env.client(tcp=True, small=True)
    peer.sendall(GET)
    env.run(3)
    assert client.state is ClientState.ACTIVE and len(client.out) > 0
    env.clock.now += env.settings.write_timeout + 1
    env.run()
    assert client.state is ClientState.CLOSED, "a stalled finite answer must abort (Rule 5)"
    assert read_available(peer)[1] == "reset"


def test_streaming_exchange_never_times_out_on_writes(env):
    def handler(client, exchange):
        exchange.decision = SimpleNamespace(streaming=True)
        exchange.send_head(h11.Response(status_code=200, headers=[("Content-Type", "application/json")]))
        for _ in range(40):
            exchange.send_body(b'{"status":"tick"}\n' * 3000)

    env.owner.handler = handler
    client, peer = env.client(tcp=True, small=True)
    peer.sendall(EVENTS)
    env.run(3)
    assert len(client.out) > 0
    for _ in range(5):
        env.clock.now += env.settings.write_timeout * 3
        env.run()
    assert client.state is ClientState.ACTIVE and env.owner.closed == []


def test_slow_but_progressing_reader_is_not_cut():
    e = Env("--write-timeout", "5", "--idle-timeout", "1000")
    try:
        body = bytes(range(256)) * 4096  # 1 MiB
        e.owner.handler = finite_answer(body)
        client, peer = e.client(small=True)
        peer.sendall(GET)
        e.run(3)
        received, start = bytearray(), e.clock.now
        for _ in range(2000):
            e.clock.now += 4.0  # each step under --write-timeout, the sum far over it
            data, end = read_available(peer, 65536)
            received += data
            e.run()
            if len(received) > len(body):
                break
        assert client.state is ClientState.IDLE and e.owner.closed == []
        assert e.clock.now - start > 10 * 5
        (response,) = parse_responses(bytes(received))
        assert response["complete"] and bytes(response["body"]) == body
        assert e.owner.done and e.owner.done[0].delivered == len(body)
        assert e.owner.done[0].outcome == "allow"
    finally:
        e.close()


# ---------------------------------------------------------------------------------------------
# parsing, refusals, delivery


def test_pipeline_is_parsed_at_most_requests_per_turn_per_pass(env):
    env.owner.handler = lambda client, exchange: exchange.answer(200, "ok")
    client, peer = env.client()
    n = 3 * REQUESTS_PER_TURN + 5
    peer.sendall(b"".join(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n)))
    per_pass, received = [], bytearray()
    for _ in range(20):
        before = len(env.owner.requests)
        env.run()
        per_pass.append(len(env.owner.requests) - before)
        received += read_available(peer)[0]
    assert sum(per_pass) == n
    assert max(per_pass) <= REQUESTS_PER_TURN, per_pass
    assert [ex.facts.target for ex in env.owner.requests] == [b"/r%d" % i for i in range(n)]
    assert len(parse_responses(bytes(received))) == n


def _refusal_run(env, targets: list[bytes]):
    def handler(client, exchange):
        if exchange.facts.target == b"/ok":
            exchange.send_head(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
            exchange.send_body(b"ok")
            exchange.end_body()
        else:
            client.refuse(Refusal(403, "no"))

    env.owner.handler = handler
    client, peer = env.client()
    peer.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % t for t in targets))
    data, end = drive(env, peer, passes=100)
    return client, parse_responses(data, eof=end == "eof"), end


def test_refusals_in_a_row_close_the_connection(env):
    n = MAX_REFUSALS_IN_A_ROW
    client, responses, end = _refusal_run(env, [b"/no"] * (n + 10))
    assert end == "eof"
    assert len(responses) == n
    assert all(r["status"] == 403 for r in responses)
    assert all(b"connection" not in r["headers"] for r in responses[:-1])
    assert responses[-1]["headers"][b"connection"] == b"close"
    assert client.state in (ClientState.LINGERING, ClientState.CLOSED)
    assert "refusals in a row" in env.owner.done[-1].reason


def test_an_allowed_exchange_resets_the_refusal_count(env):
    n = MAX_REFUSALS_IN_A_ROW
    targets = [b"/no"] * (n - 1) + [b"/ok"] + [b"/no"] * (n - 1)
    client, responses, end = _refusal_run(env, targets)
    assert end is None and client.state is ClientState.IDLE
    assert len(responses) == 2 * n - 1
    assert all(b"connection" not in r["headers"] for r in responses)
    assert responses[n - 1]["status"] == 200


def test_http10_large_answer_to_slow_reader_is_complete_before_fin(env):
    body = bytes(range(256)) * 4096  # 1 MiB, close-delimited for an HTTP/1.0 client

    def handler(client, exchange):
        exchange.send_head(h11.Response(status_code=200, headers=[("Content-Type", "application/octet-stream")]))
        for i in range(0, len(body), 65536):
            exchange.send_body(body[i:i + 65536])
        exchange.end_body()

    env.owner.handler = handler
    client, peer = env.client(small=True)
    peer.sendall(b"GET /big HTTP/1.0\r\n\r\n")
    data, end = drive(env, peer, passes=3000, read=4096)
    assert end == "eof"
    head, _, received = data.partition(b"\r\n\r\n")
    assert b"content-length" not in head.lower()
    assert received == body  # every byte before the FIN
    (exchange,) = env.owner.done
    assert exchange.delivered == len(body) and exchange.outcome == "allow"
    assert client.state is ClientState.LINGERING


def test_client_closing_mid_answer_is_aborted(env):
    body = b"z" * (2 << 20)
    env.owner.handler = finite_answer(body)
    client, peer = env.client(small=True)
    peer.sendall(GET)
    env.run(2)
    got, _ = read_available(peer, 10000)
    assert got
    peer.close()
    env.run(3)
    assert client.state is ClientState.CLOSED and env.owner.closed == [client]
    (exchange,) = env.owner.done
    assert exchange.outcome == "error"
    assert exchange.delivered < len(body)
    assert exchange.reason


def test_client_closing_during_active_exchange_cancels_source(env):
    cancelled = []
    source = SimpleNamespace(cancel=cancelled.append, resume=lambda exchange: None)

    def handler(client, exchange):
        exchange.source = source

    env.owner.handler = handler
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    peer.close()
    env.run()
    assert client.state is ClientState.CLOSED
    assert cancelled == env.owner.requests  # the source learns at once
    assert [e.outcome for e in env.owner.done] == ["error"]


# ---- Which client connections are quiet (connections.client.quiet_since), the only ones admission
# may close to make room for a newer connection (issue "(2 of 5)", item 4): a keep-alive between
# requests, part of a head, a handshake, a lingering close; never a request in progress or an
# answer still being delivered. Socketpairs, a fake clock, a hand-driven Loop (tests/lib/parts.py).


def test_a_new_connection_is_quiet_since_it_was_accepted(env):
    client, _ = env.client()
    assert quiet_since(client) == env.clock.now


def test_a_keep_alive_is_quiet_since_its_last_answer_left(env):
    env.owner.handler = finite_answer(b"ok")
    client, peer = env.client()
    env.clock.now += 5
    peer.sendall(GET)
    env.run(3)
    assert client.state is ClientState.IDLE and read_available(peer)[0].endswith(b"ok")
    assert quiet_since(client) == env.clock.now


def test_an_answer_still_queued_is_not_quiet(env):
    env.owner.handler = finite_answer(b"x" * (4 * 1024 * 1024))
    client, peer = env.client(small=True)
    peer.sendall(GET)
    env.run(3)
    assert client.state is ClientState.IDLE and client.out.buffer  # the peer does not read
    assert quiet_since(client) is None


def test_part_of_a_head_is_quiet_since_the_head_began(env):
    client, peer = env.client()
    env.clock.now += 2
    peer.sendall(b"GET /info HTTP/1.1\r\n")
    env.run()
    began = env.clock.now
    env.clock.now += 3
    peer.sendall(b"X-Slow: 1\r\n")  # a slowloris trickles: the head still began then
    env.run()
    assert client.state is ClientState.HEAD and quiet_since(client) == began


def test_whole_requests_waiting_their_turn_are_not_quiet(env):
    env.owner.handler = finite_answer(b"ok")
    client, peer = env.client()
    peer.sendall(GET * 6)  # more than REQUESTS_PER_TURN: the rest wait for the next pass
    env.run()
    assert client.state is ClientState.HEAD and len(env.owner.requests) == 4
    assert quiet_since(client) is None


def test_a_request_in_progress_is_not_quiet(env):
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    assert client.state is ClientState.ACTIVE and quiet_since(client) is None


def test_a_lingering_close_is_quiet_and_an_over_cap_connection_never_is(env):
    client, peer = env.client()
    client.close()
    assert client.state is ClientState.LINGERING and quiet_since(client) == env.clock.now
    rejected, _ = env.client()
    rejected.rejection = "over a cap"
    assert quiet_since(rejected) is None


def test_an_evicted_keep_alive_gets_a_clean_close_and_is_reported_once(env):
    client, peer = env.client()
    evict(client, "closed to make room")
    assert client.state is ClientState.CLOSED and env.owner.closed == [client]
    assert read_available(peer) == (b"", "eof")
