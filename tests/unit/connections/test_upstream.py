"""porthole/connections/upstream.py: an UpstreamConnection's states and deadlines (connect,
response), over socketpairs and a unix socket the test serves, on a fake clock."""

from __future__ import annotations

import socket

import h11
import pytest

from parts import GET, Consumer, Daemon, drive, json_message, parse_responses, read_available, relay_handler
from porthole.connections.pool import UpstreamPool
from porthole.connections.sources import Relay
from porthole.connections.upstream import POOL_IDLE_SECONDS, UPSTREAM_TRANSITIONS, UpstreamConnection, UpstreamState
from porthole.runtime.loop import StateError

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# transition table


def test_upstream_transition_table_is_exhaustive():
    assert set(UPSTREAM_TRANSITIONS) == set(UpstreamState)
    for targets in UPSTREAM_TRANSITIONS.values():
        assert targets <= set(UpstreamState)
    assert UPSTREAM_TRANSITIONS[UpstreamState.CLOSED] == frozenset()


@pytest.mark.parametrize("old", list(UpstreamState), ids=lambda s: s.name)
@pytest.mark.parametrize("new", list(UpstreamState), ids=lambda s: s.name)
def test_upstream_transitions(env, old, new):
    pool = UpstreamPool(env.loop, env.settings, env.log)
    ours, other = socket.socketpair()
    env.sockets += [ours, other]
    conn = UpstreamConnection(pool, ours)
    conn.state = old
    if new in UPSTREAM_TRANSITIONS[old]:
        conn.enter(new)
        assert conn.state is new
        timeout = {UpstreamState.CONNECTING: env.settings.connect_timeout,
                   UpstreamState.AWAITING: env.settings.response_timeout,
                   UpstreamState.IDLE: POOL_IDLE_SECONDS}.get(new)
        expected = None if timeout is None else env.clock.now + timeout
        assert env.loop.wanted.get(conn) == expected
    else:
        with pytest.raises(StateError):
            conn.enter(new)
        assert conn.state is old


# ---------------------------------------------------------------------------------------------
# deadlines


def test_upstream_connect_timeout_502(env):
    pool = UpstreamPool(env.loop, env.settings, env.log)
    ours, other = socket.socketpair()
    env.sockets += [ours, other]
    conn = UpstreamConnection(pool, ours)  # CONNECTING since __init__
    consumer = Consumer()
    conn.start(consumer, h11.Request(method="GET", target="/info", headers=[("Host", "docker")]),
               connected=False)
    assert conn.state is UpstreamState.CONNECTING
    env.clock.now += env.settings.connect_timeout - 0.01
    env.loop.fire_deadlines(env.clock.now)
    assert consumer.failed == []
    env.clock.now += 0.01
    env.loop.fire_deadlines(env.clock.now)
    (status, message, retryable), = consumer.failed
    assert status == 502 and "timed out" in message and not retryable
    assert conn.state is UpstreamState.CLOSED


def test_upstream_connect_timeout_reaches_client_as_502(env):
    pool = UpstreamPool(env.loop, env.settings, env.log)
    ours, other = socket.socketpair()
    env.sockets += [ours, other]
    request = h11.Request(method="GET", target="/info", headers=[("Host", "docker")])

    def handler(client, exchange):
        relay = Relay(pool, exchange, request)
        relay.conn = UpstreamConnection(pool, ours)
        relay.conn.start(relay, request, connected=False)

    env.owner.handler = handler
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    env.clock.now += env.settings.connect_timeout
    env.loop.fire_deadlines(env.clock.now)
    env.run()  # the answer is queued by the deadline, sent in the next turn
    (response,) = parse_responses(read_available(peer)[0])
    assert response["status"] == 502 and "timed out" in json_message(response)


def test_upstream_response_timeout_504(make_env):
    env = make_env("--response-timeout", "7")
    d = Daemon(env.sock_path)
    try:
        pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
        env.owner.handler = relay_handler(pool, relays)
        client, peer = env.client()
        peer.sendall(GET)
        env.run()
        srv = d.accept()
        read_available(srv)  # ... and never answers
        conn = relays[0].conn
        assert conn.state is UpstreamState.AWAITING
        env.clock.now += 6.99
        env.run()
        assert read_available(peer) == (b"", None)
        env.clock.now += 0.01
        data, _ = drive(env, peer, passes=2)
        (response,) = parse_responses(data)
        assert response["status"] == 504
        message = json_message(response)
        assert "--response-timeout" in message and "7" in message
        assert conn.state is UpstreamState.CLOSED
        assert read_available(srv)[1] == "eof"
    finally:
        d.close()
