"""porthole/connections/pool.py: the UpstreamPool keeps idle daemon connections (until
POOL_IDLE_SECONDS, or until the daemon closes them), remembers the daemon's answer heads, and
falls back to a daemon name's next address. Over a unix or loopback socket the test serves, on a
fake clock."""

from __future__ import annotations

import socket
import time

import h11
import pytest

from parts import GET, Consumer, drive, parse_responses, read_available, relay_handler, serve_one
from porthole.connections.pool import UpstreamPool
from porthole.connections.upstream import POOL_IDLE_SECONDS, UpstreamState

pytestmark = pytest.mark.timeout(60)


def test_idle_pooled_connection_closed_after_pool_idle_seconds(env, daemon):
    pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    srv = serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    drive(env, peer, passes=3)
    (conn,) = pool.idle
    env.clock.now += POOL_IDLE_SECONDS - 0.01
    env.run()
    assert pool.idle == [conn]
    env.clock.now += 0.01
    env.run()
    assert pool.idle == [] and conn.state is UpstreamState.CLOSED
    assert read_available(srv)[1] == "eof"


def test_idle_pooled_connection_closed_by_daemon_leaves_pool(env, daemon):
    pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    srv = serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    drive(env, peer, passes=3)
    (conn,) = pool.idle
    srv.close()
    env.run(2)
    assert pool.idle == [] and conn.state is UpstreamState.CLOSED


def test_tcp_daemon_falls_back_to_its_next_address(make_env):
    """A daemon name with two addresses, the first refusing connections: the request goes
    through on the second, and the refusing address is tried last from then on."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dead.bind(("127.0.0.2", 0))  # bound, never listening: connections to it are refused
    dead_address = dead.getsockname()
    env = make_env("--upstream", f"tcp://127.0.0.1:{port}")
    env.sockets += [server, dead]
    pool = UpstreamPool(env.loop, env.settings, env.log)
    good = (socket.AF_INET, ("127.0.0.1", port))
    pool.addresses = [(socket.AF_INET, dead_address), good]
    consumer = Consumer()
    conn = pool.acquire(consumer, h11.Request(method="GET", target="/_ping", headers=[("Host", "docker")]))
    accepted = None
    for _ in range(200):
        env.run()
        server.setblocking(False)
        try:
            accepted, _ = server.accept()
            break
        except BlockingIOError:
            time.sleep(0.005)
    assert accepted is not None, (consumer.failed, conn.state)
    env.sockets.append(accepted)
    env.run(5)  # the connect completes, the request is sent
    accepted.settimeout(2)
    assert accepted.recv(4096).startswith(b"GET /_ping HTTP/1.1")
    assert consumer.failed == []
    assert pool.addresses[0] == good  # the refusing address now comes last


def test_a_name_resolved_again_wakes_the_idle_loop_to_log_what_came_of_it(make_env, monkeypatch):
    """The helper thread that resolves a TCP daemon's name again ends the loop's wait when it is
    done (Pool Rule 4): the loop has no tick any more (Loop Rule 4), and the thread's log line
    would otherwise wait for the next event of an idle proxy."""
    env = make_env("--upstream", "tcp://docker.invalid:2375")
    failures = iter([OSError("no such name (before the loop)"), OSError("no such name (in the thread)")])

    def getaddrinfo(*args, **kwargs):
        raise next(failures)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    env.log.pending = []  # as Proxy.run has it: lines wait for the end of the pass
    pool = UpstreamPool(env.loop, env.settings, env.log)
    env.log.flush()
    with pytest.raises(OSError, match="cannot resolve"):
        pool.acquire(Consumer(), h11.Request(method="GET", target="/_ping", headers=[("Host", "docker")]))
    assert pool.waker is not None
    started = time.monotonic()
    assert env.loop.run_once(10.0) == 1  # the waker, well before 10 s
    assert time.monotonic() - started < 5
    env.log.flush()
    failed = [e for e in env.log_events() if e["event"] == "upstream_resolve_failed"]
    assert [e["error"] for e in failed] == ["no such name (before the loop)", "no such name (in the thread)"]
    deadline = time.monotonic() + 5
    while pool.resolving and time.monotonic() < deadline:  # the thread marks itself done after waking
        time.sleep(0.01)
    pool.close()
    assert pool.waker is None  # closed with the pool once no thread is resolving


@pytest.mark.parametrize("closing", [False, True])
def test_a_framed_answer_pools_its_connection_as_h11_says_also_when_its_head_is_remembered(closing, monkeypatch, env, daemon):
    """Through a real UpstreamPool and Relay: a chunked answer porthole framed itself returns
    its connection to the pool unless the daemon said `Connection: close` (h11 saw that in the
    head). The second, identical answer's head is remembered (UpstreamPool.heads, ParsedHead):
    it needs no h11 client connection, reaches the client byte for byte as the first did, and
    keeps h11's verdict on reuse."""
    parsers = []
    real = h11.Connection
    monkeypatch.setattr(h11, "Connection",
                        lambda role, **kw: (parsers.append(role), real(role, **kw))[1])
    pool, relays = UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client()
    close = b"Connection: close\r\n" if closing else b""
    answer = (b"HTTP/1.1 200 OK\r\nDate: Sun, 29 Nov 2026 13:00:00 GMT\r\n" + close
              + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    seen, srv = [], None
    for _ in range(2):
        peer.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        env.run()
        if srv is None or closing:
            srv = daemon.accept()
        assert read_available(srv)[0].startswith(b"GET /info HTTP/1.1\r\nHost: docker\r\n")
        srv.sendall(answer)
        data, _ = drive(env, peer, passes=5)
        seen.append(data)
        assert len(pool.idle) == (0 if closing else 1)
    assert parsers.count(h11.CLIENT) == 1 and len(pool.heads) == 1  # (before parse_responses makes its own)
    (response,) = parse_responses(seen[0])
    assert seen[0] == seen[1] and response["complete"] and bytes(response["body"]) == b"abcde"
    assert len(daemon.conns) == (2 if closing else 1)
