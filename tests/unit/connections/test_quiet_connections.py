"""Which client connections are quiet (connections.client.quiet_since), the only ones admission
may close to make room for a newer connection (issue "(2 of 5)", item 4): a keep-alive between
requests, part of a head, a handshake, a lingering close; never a request in progress or an
answer still being delivered. Socketpairs, a fake clock, a hand-driven Loop (tests/test_parts.py)."""
from __future__ import annotations

from porthole.connections.client import ClientState, evict, quiet_since
from test_parts import finite_answer, read_available

GET = b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n"


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
