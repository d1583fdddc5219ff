"""Unit tests of the connection layer's parts, each ALONE: socketpairs, a fake clock, stub
owners and a hand-driven Loop. No running Proxy, no threads, no subprocesses.

Every Loop here is driven with run_once(0) (or fire_deadlines) and a FakeClock, so nothing
waits on real time: deadlines fire because the test moves the clock."""

from __future__ import annotations

import io
import json
import selectors
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import h11
import pytest
from hypothesis import given, settings as hsettings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import proxy  # noqa: E402

pytestmark = pytest.mark.timeout(60)

GET = b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n"
EVENTS = b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n"


# ---------------------------------------------------------------------------------------------
# helpers


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Owner:
    """The ClientConnection owner: records every call; on_request delegates to `handler`."""

    def __init__(self) -> None:
        self.stopping = False
        self.handler = None
        self.requests: list[proxy.Exchange] = []
        self.done: list[proxy.Exchange] = []
        self.closed: list[proxy.ClientConnection] = []

    def on_request(self, client, exchange):
        self.requests.append(exchange)
        if self.handler is not None:
            self.handler(client, exchange)

    def exchange_done(self, exchange):
        self.done.append(exchange)

    def client_closed(self, client):
        self.closed.append(client)


def tcp_pair(small: bool = False) -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair (for RST semantics, which unix sockets lack): (ours, peer)."""
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        if small:  # inherited by the accepted socket
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        listener.listen(1)
        peer = socket.socket()
        if small:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        peer.connect(listener.getsockname())
        ours, _ = listener.accept()
    finally:
        listener.close()
    ours.setblocking(False)
    peer.setblocking(False)
    return ours, peer


def read_available(sock: socket.socket, limit: int | None = None) -> tuple[bytes, str | None]:
    """What the peer can read now: (bytes, None | 'eof' | 'reset')."""
    data = bytearray()
    while limit is None or len(data) < limit:
        want = 65536 if limit is None else min(65536, limit - len(data))
        try:
            chunk = sock.recv(want)
        except BlockingIOError:
            return bytes(data), None
        except ConnectionResetError:
            return bytes(data), "reset"
        if not chunk:
            return bytes(data), "eof"
        data += chunk
    return bytes(data), None


def parse_responses(raw: bytes, eof: bool = False, method: str = "GET") -> list[dict]:
    """Decode what a client received (possibly a partial answer) with h11's client side."""
    conn = h11.Connection(h11.CLIENT)

    def request() -> None:
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())

    request()
    if raw:
        conn.receive_data(raw)  # (b"" would mean EOF to h11)
    if eof:
        conn.receive_data(b"")
    out: list[dict] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return out
        if isinstance(event, h11.Response):
            out.append({"status": event.status_code, "headers": {k: v for k, v in event.headers},
                        "raw_headers": list(event.headers), "body": bytearray(), "complete": False})
        elif isinstance(event, h11.Data):
            out[-1]["body"] += event.data
        elif isinstance(event, h11.EndOfMessage):
            out[-1]["complete"] = True
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                request()
            else:
                return out


class Env:
    """A Loop on a fake clock, a stub owner, and factories for clients over socketpairs."""

    def __init__(self, *args: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="ph-", dir="/tmp")  # short: AF_UNIX paths are short
        self.sock_path = f"{self.dir}/d.sock"
        self.clock = FakeClock()
        self.stream = io.StringIO()
        self.log = proxy.Log("json", "debug", self.stream)
        self.loop = proxy.Loop(self.log, self.clock)
        self.settings = proxy.parse_settings(["--upstream", f"unix://{self.sock_path}", *args], {})
        self.listener = proxy.parse_endpoint("unix:///run/porthole-test.sock", listener=True)
        self.owner = Owner()
        self.sockets: list[socket.socket] = []

    def client(self, tcp: bool = False, small: bool = False):
        if tcp:
            ours, peer = tcp_pair(small)
        else:
            ours, peer = socket.socketpair()
            if small:
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            ours.setblocking(False)
            peer.setblocking(False)
        self.sockets += [ours, peer]
        client = proxy.ClientConnection(ours, self.loop, self.owner, self.settings, self.listener,
                                        "peer", "id")
        client.update_interest()
        return client, peer

    def run(self, passes: int = 1) -> None:
        for _ in range(passes):
            self.loop.run_once(0)

    def log_events(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.loop.selector.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def make_env():
    made: list[Env] = []

    def factory(*args: str) -> Env:
        made.append(Env(*args))
        return made[-1]

    yield factory
    for e in made:
        e.close()


def drive(env: Env, peer: socket.socket, passes: int = 50, read: int | None = None) -> tuple[bytes, str | None]:
    """Run the loop and read the peer between passes until it sees EOF/reset or passes run out."""
    got = bytearray()
    end = None
    for _ in range(passes):
        env.run()
        data, end = read_available(peer, read)
        got += data
        if end:
            break
    return bytes(got), end


def finite_answer(body: bytes, chunk: int = 65536, end: bool = True):
    """An owner handler that answers every request with `body` (Content-Length framing)."""
    def handler(client, exchange):
        exchange.send_head(h11.Response(status_code=200, headers=[
            ("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))]))
        for i in range(0, len(body), chunk):
            exchange.send_body(body[i:i + chunk])
        if end:
            exchange.end_body()
    return handler


def json_message(response: dict) -> str:
    assert response["headers"][b"content-type"] == b"application/json"
    return json.loads(bytes(response["body"]))["message"]


# ---------------------------------------------------------------------------------------------
# transition tables


def test_client_transition_table_is_exhaustive():
    assert set(proxy.CLIENT_TRANSITIONS) == set(proxy.ClientState)
    for targets in proxy.CLIENT_TRANSITIONS.values():
        assert targets <= set(proxy.ClientState)
    assert proxy.CLIENT_TRANSITIONS[proxy.ClientState.CLOSED] == frozenset()


def test_upstream_transition_table_is_exhaustive():
    assert set(proxy.UPSTREAM_TRANSITIONS) == set(proxy.UpstreamState)
    for targets in proxy.UPSTREAM_TRANSITIONS.values():
        assert targets <= set(proxy.UpstreamState)
    assert proxy.UPSTREAM_TRANSITIONS[proxy.UpstreamState.CLOSED] == frozenset()


@pytest.mark.parametrize("old", list(proxy.ClientState), ids=lambda s: s.name)
@pytest.mark.parametrize("new", list(proxy.ClientState), ids=lambda s: s.name)
def test_client_transitions(env, old, new):
    client, _ = env.client()
    client.state = old
    if new in proxy.CLIENT_TRANSITIONS[old]:
        env.clock.now += 1
        client.enter(new)
        assert client.state is new
        assert client.entered == env.clock.now
        assert env.loop.wanted.get(client) == client.deadline()[0]  # enter() sets the deadline
    else:
        with pytest.raises(proxy.StateError):
            client.enter(new)
        assert client.state is old


@pytest.mark.parametrize("old", list(proxy.UpstreamState), ids=lambda s: s.name)
@pytest.mark.parametrize("new", list(proxy.UpstreamState), ids=lambda s: s.name)
def test_upstream_transitions(env, old, new):
    pool = proxy.UpstreamPool(env.loop, env.settings, env.log)
    ours, other = socket.socketpair()
    env.sockets += [ours, other]
    conn = proxy.UpstreamConnection(pool, ours)
    conn.state = old
    if new in proxy.UPSTREAM_TRANSITIONS[old]:
        conn.enter(new)
        assert conn.state is new
        timeout = {proxy.UpstreamState.CONNECTING: env.settings.connect_timeout,
                   proxy.UpstreamState.AWAITING: env.settings.response_timeout,
                   proxy.UpstreamState.IDLE: proxy.POOL_IDLE_SECONDS}.get(new)
        expected = None if timeout is None else env.clock.now + timeout
        assert env.loop.wanted.get(conn) == expected
    else:
        with pytest.raises(proxy.StateError):
            conn.enter(new)
        assert conn.state is old


# ---------------------------------------------------------------------------------------------
# Loop


class Part:
    def __init__(self, loop=None, again: bool = False) -> None:
        self.fired: list[float] = []
        self.turns = 0
        self.aborted: list[str] = []
        self.loop = loop
        self.again = again

    def on_deadline(self, now):
        self.fired.append(now)

    def on_turn(self):
        self.turns += 1
        if self.again:
            self.loop.soon(self)

    def abort(self, reason):
        self.aborted.append(reason)


def test_loop_earlier_deadline_replaces_later(env):
    loop, part = env.loop, Part()
    loop.set_deadline(part, 1010.0)
    loop.set_deadline(part, 1005.0)
    loop.fire_deadlines(1004.0)
    assert part.fired == []
    loop.fire_deadlines(1005.0)
    assert part.fired == [1005.0]
    loop.fire_deadlines(2000.0)  # the stale entry at 1010 never fires
    assert part.fired == [1005.0]


def test_loop_later_deadline_reschedules_not_fires(env):
    loop, part = env.loop, Part()
    loop.set_deadline(part, 1005.0)
    loop.set_deadline(part, 1010.0)
    loop.fire_deadlines(1006.0)
    assert part.fired == []
    assert loop.scheduled[part][0] == 1010.0
    loop.fire_deadlines(1009.9)
    assert part.fired == []
    loop.fire_deadlines(1010.0)
    assert part.fired == [1010.0]
    loop.fire_deadlines(5000.0)
    assert part.fired == [1010.0]


def test_loop_cancelled_deadline_never_fires(env):
    loop, part, other = env.loop, Part(), Part()
    loop.set_deadline(part, 1005.0)
    loop.set_deadline(part, None)
    loop.set_deadline(other, 1001.0)
    loop.fire_deadlines(5000.0)
    assert part.fired == [] and other.fired == [5000.0]
    # cancelled then set again later: only the new one fires, once
    loop.set_deadline(part, 6000.0)
    loop.set_deadline(part, None)
    loop.set_deadline(part, 7000.0)
    loop.fire_deadlines(6500.0)
    assert part.fired == []
    loop.fire_deadlines(7000.0)
    assert part.fired == [7000.0]
    loop.fire_deadlines(9000.0)
    assert part.fired == [7000.0]


def test_loop_many_replacements_fire_once(env):
    loop, part = env.loop, Part()
    for i in range(500):  # exercises the stale-entry compaction too
        loop.set_deadline(part, 2000.0 - i if i % 2 else 1000.0 + i)
    final = loop.wanted[part]
    loop.fire_deadlines(final - 0.5)
    assert part.fired == []
    loop.fire_deadlines(10_000.0)
    assert part.fired == [10_000.0]
    assert len(loop.heap) <= 2 * len(loop.scheduled) + 65


def test_loop_run_once_fires_by_fake_clock(env):
    loop, part = env.loop, Part()
    loop.set_deadline(part, env.clock.now + 5)
    loop.run_once(0)
    assert part.fired == []
    env.clock.now += 5
    loop.run_once(0)
    assert part.fired == [env.clock.now]


def test_loop_guard_logs_and_aborts(env):
    loop = env.loop

    class Broken(Part):
        def on_deadline(self, now):
            raise ZeroDivisionError("boom in on_deadline")

    broken, fine = Broken(), Part()
    loop.set_deadline(broken, env.clock.now)
    loop.set_deadline(fine, env.clock.now)
    loop.run_once(0)
    assert broken.aborted == ["internal error"]
    assert fine.fired == [env.clock.now]  # the loop went on
    errors = [e for e in env.log_events() if e["event"] == "internal_error"]
    assert len(errors) == 1
    assert errors[0]["level"] == "error" and errors[0]["part"] == "Broken"
    assert "ZeroDivisionError" in errors[0]["error"]
    assert "Traceback" in errors[0]["traceback"] and "boom in on_deadline" in errors[0]["traceback"]


def test_loop_guard_on_io_and_abort_raising(env):
    loop = env.loop
    a, b = socket.socketpair()
    env.sockets += [a, b]

    class BadIO:
        calls = 0

        def on_io(self, mask):
            raise KeyError("io")

        def abort(self, reason):
            BadIO.calls += 1
            loop.forget(a)
            raise RuntimeError("abort raising is swallowed too")

    loop.watch(a, selectors.EVENT_WRITE, BadIO())
    loop.run_once(0)
    loop.run_once(0)
    assert BadIO.calls == 1
    assert [e["part"] for e in env.log_events() if e["event"] == "internal_error"] == ["BadIO"]


def test_loop_turns_once_per_pass_and_nonblocking(env):
    loop = env.loop
    timeouts: list[float] = []
    real_select = loop.selector.select

    def select(timeout=None):
        timeouts.append(timeout)
        return real_select(0)

    loop.selector.select = select
    again, once = Part(loop, again=True), Part(loop)
    loop.soon(again)
    loop.soon(once)
    loop.soon(once)  # asking twice is still one turn
    loop.run_once(5.0)
    assert (again.turns, once.turns) == (1, 1)
    assert timeouts[-1] == 0.0  # turns pending: select does not block
    loop.run_once(5.0)
    loop.run_once(5.0)
    assert (again.turns, once.turns) == (3, 1)  # re-asked inside its turn: next pass, not now
    assert timeouts[-1] == 0.0
    again.again = False
    loop.run_once(5.0)
    loop.run_once(5.0)
    assert again.turns == 4
    assert timeouts[-1] == 5.0  # nothing pending: select may block
    deadline = Part()
    loop.set_deadline(deadline, env.clock.now + 2.0)
    loop.run_once(5.0)
    assert timeouts[-1] == 2.0  # ... but not past the next deadline


# ---------------------------------------------------------------------------------------------
# OutputQueue ledger


FACTS = proxy.RequestFacts("GET", b"/", [], "unix", "default")


def h11_server(cycles: int) -> h11.Connection:
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * cycles)
    return server


def queue_answers(out: proxy.OutputQueue, specs: list[tuple[str, list[int]]]):
    """Queue one answer per spec (framing, payload sizes) through a real h11 server; return
    (exchanges, the whole wire)."""
    server = h11_server(len(specs))
    exchanges, wire = [], bytearray()
    for framing, sizes in specs:
        assert isinstance(server.next_event(), h11.Request)
        assert isinstance(server.next_event(), h11.EndOfMessage)
        exchange = proxy.Exchange(None, FACTS, 0.0)  # type: ignore[arg-type]
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
        out = proxy.OutputQueue(FakeClock())
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
        out = proxy.OutputQueue(FakeClock())
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
    out = proxy.OutputQueue(FakeClock())
    exchange = proxy.Exchange(None, FACTS, 0.0)  # type: ignore[arg-type]
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
    out = proxy.OutputQueue(FakeClock())
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


# ---------------------------------------------------------------------------------------------
# ClientConnection: deadlines


def test_idle_client_closes_then_lingers(env):
    client, peer = env.client()
    env.clock.now += env.settings.idle_timeout - 0.01
    env.run()
    assert client.state is proxy.ClientState.IDLE
    assert read_available(peer) == (b"", None)
    env.clock.now += 0.01
    env.run()
    assert client.state is proxy.ClientState.LINGERING
    assert read_available(peer) == (b"", "eof")  # a FIN, no bytes
    assert env.owner.closed == []
    env.clock.now += proxy.LINGER_SECONDS - 0.01
    env.run()
    assert client.state is proxy.ClientState.LINGERING
    env.clock.now += 0.01
    env.run()
    assert client.state is proxy.ClientState.CLOSED
    assert env.owner.closed == [client] and env.owner.done == []
    assert client.sock.fileno() == -1


def test_lingering_client_closing_first_closes_at_once(env):
    client, peer = env.client()
    env.clock.now += env.settings.idle_timeout
    env.run()
    assert client.state is proxy.ClientState.LINGERING
    peer.sendall(b"ignored bytes")
    env.run()
    assert client.state is proxy.ClientState.LINGERING
    peer.shutdown(socket.SHUT_WR)
    env.run()
    assert client.state is proxy.ClientState.CLOSED and env.owner.closed == [client]


def test_head_timeout_answers_408_then_closes(env):
    client, peer = env.client()
    env.clock.now += 5
    peer.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n")
    env.run()
    assert client.state is proxy.ClientState.HEAD
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
    assert client.state is proxy.ClientState.LINGERING


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
    assert client.state is proxy.ClientState.ACTIVE and len(client.out) > 0
    env.clock.now += env.settings.write_timeout + 1
    env.run()
    assert client.state is proxy.ClientState.CLOSED, "a stalled finite answer must abort (Rule 5)"
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
    assert client.state is proxy.ClientState.ACTIVE and env.owner.closed == []


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
        assert client.state is proxy.ClientState.IDLE and e.owner.closed == []
        assert e.clock.now - start > 10 * 5
        (response,) = parse_responses(bytes(received))
        assert response["complete"] and bytes(response["body"]) == body
        assert e.owner.done and e.owner.done[0].delivered == len(body)
        assert e.owner.done[0].outcome == "allow"
    finally:
        e.close()


# ---------------------------------------------------------------------------------------------
# ClientConnection: parsing, refusals, delivery


def test_pipeline_is_parsed_at_most_requests_per_turn_per_pass(env):
    env.owner.handler = lambda client, exchange: exchange.answer(200, "ok")
    client, peer = env.client()
    n = 3 * proxy.REQUESTS_PER_TURN + 5
    peer.sendall(b"".join(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n)))
    per_pass, received = [], bytearray()
    for _ in range(20):
        before = len(env.owner.requests)
        env.run()
        per_pass.append(len(env.owner.requests) - before)
        received += read_available(peer)[0]
    assert sum(per_pass) == n
    assert max(per_pass) <= proxy.REQUESTS_PER_TURN, per_pass
    assert [ex.facts.target for ex in env.owner.requests] == [b"/r%d" % i for i in range(n)]
    assert len(parse_responses(bytes(received))) == n


def _refusal_run(env, targets: list[bytes]):
    def handler(client, exchange):
        if exchange.facts.target == b"/ok":
            exchange.send_head(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
            exchange.send_body(b"ok")
            exchange.end_body()
        else:
            client.refuse(proxy.Refusal(403, "no"))

    env.owner.handler = handler
    client, peer = env.client()
    peer.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % t for t in targets))
    data, end = drive(env, peer, passes=100)
    return client, parse_responses(data, eof=end == "eof"), end


def test_refusals_in_a_row_close_the_connection(env):
    n = proxy.MAX_REFUSALS_IN_A_ROW
    client, responses, end = _refusal_run(env, [b"/no"] * (n + 10))
    assert end == "eof"
    assert len(responses) == n
    assert all(r["status"] == 403 for r in responses)
    assert all(b"connection" not in r["headers"] for r in responses[:-1])
    assert responses[-1]["headers"][b"connection"] == b"close"
    assert client.state in (proxy.ClientState.LINGERING, proxy.ClientState.CLOSED)
    assert "refusals in a row" in env.owner.done[-1].reason


def test_an_allowed_exchange_resets_the_refusal_count(env):
    n = proxy.MAX_REFUSALS_IN_A_ROW
    targets = [b"/no"] * (n - 1) + [b"/ok"] + [b"/no"] * (n - 1)
    client, responses, end = _refusal_run(env, targets)
    assert end is None and client.state is proxy.ClientState.IDLE
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
    assert client.state is proxy.ClientState.LINGERING


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
    assert client.state is proxy.ClientState.CLOSED and env.owner.closed == [client]
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
    assert client.state is proxy.ClientState.CLOSED
    assert cancelled == env.owner.requests  # the source learns at once
    assert [e.outcome for e in env.owner.done] == ["error"]


# ---------------------------------------------------------------------------------------------
# Relay and UpstreamPool over a unix socket the test serves


class Daemon:
    """A listening unix socket; the test accepts and speaks raw HTTP itself."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.conns: list[socket.socket] = []

    def accept(self) -> socket.socket:
        conn, _ = self.sock.accept()
        conn.setblocking(False)
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.sock.close()


def relay_handler(pool, relays: list):
    def handler(client, exchange):
        request = h11.Request(method=exchange.facts.method, target=exchange.facts.target,
                              headers=[("Host", "docker")])
        relay = proxy.Relay(pool, exchange, request)
        relays.append(relay)
        relay.start()
    return handler


def serve_one(env, daemon, response: bytes) -> socket.socket:
    """Accept the next upstream connection, read its request, answer with raw bytes."""
    srv = daemon.accept()
    request, _ = read_available(srv)
    assert request.startswith(b"GET ") and b"\r\nHost: docker\r\n" in request
    srv.sendall(response)
    return srv


def test_relay_full_response_and_pooling(env, daemon):
    pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
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
    assert len(pool.idle) == 1 and pool.idle[0].state is proxy.UpstreamState.IDLE
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
    pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
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
    assert all(q >= proxy.CLIENT_HIGH_WATER for q in pauses)
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
    assert resumes and all(q < proxy.CLIENT_LOW_WATER for q in resumes)
    assert max_queued <= proxy.CLIENT_HIGH_WATER + proxy.READ_CHUNK + 64
    (response,) = parse_responses(bytes(received))
    assert response["complete"] and bytes(response["body"]) == body


def test_relay_client_that_stops_reading_is_aborted_after_write_timeout(env, daemon):
    """Rule 5 with a real Relay: the client stops reading a large finite answer, back-pressure
    pauses the daemon, and after --write-timeout the client is aborted and the daemon freed."""
    pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client(tcp=True, small=True)
    peer.sendall(GET)
    env.run()
    body = b"q" * (4 << 20)
    srv = daemon.accept()
    read_available(srv)
    pending = memoryview(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    conn = relays[0].conn
    for _ in range(200):
        try:
            pending = pending[srv.send(pending):]
        except BlockingIOError:
            pass
        env.run()
        if conn.paused:
            break
    assert conn.paused and client.state is proxy.ClientState.ACTIVE
    env.clock.now += env.settings.write_timeout + 1
    env.run(2)
    assert client.state is proxy.ClientState.CLOSED, "stalled finite relay never times out (Rule 5)"
    assert conn.state is proxy.UpstreamState.CLOSED
    assert read_available(peer)[1] == "reset"


def test_stale_pooled_connections_retry_once_on_a_fresh_one(env, daemon):
    pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
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
    pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client(tcp=True)
    peer.sendall(GET)
    env.run()
    srv = serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    env.run(2)
    srv.close()
    data, end = drive(env, peer, passes=10)
    assert end == "reset"  # never a clean end
    assert client.state is proxy.ClientState.CLOSED
    (exchange,) = env.owner.done
    assert exchange.outcome == "error" and exchange.status == 200
    assert "closed" in exchange.reason
    assert pool.idle == []


def test_failure_before_head_answers_502(env, daemon):
    pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
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
    assert client.state is proxy.ClientState.IDLE
    assert not relays[0].retried


@pytest.mark.parametrize("status", [204, 304])
def test_relayed_head_drops_framing_of_bodyless_answers(status):
    for framing in ([(b"Content-Length", b"10")], [(b"Transfer-Encoding", b"chunked")]):
        event = h11.Response(status_code=status, headers=[(b"ETag", b'"x"'), *framing], _parsed=True)
        head = proxy.relayed_head(event)
        names = [n.lower() for n, _ in head.headers.raw_items()]
        assert b"content-length" not in names and b"transfer-encoding" not in names
        assert b"etag" in names
    kept = proxy.relayed_head(h11.Response(status_code=200, headers=[(b"Content-Length", b"10")], _parsed=True))
    assert (b"content-length", b"10") in [(n.lower(), v) for n, v in kept.headers.raw_items()]


@pytest.mark.parametrize("headers,reason", [
    ([(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")], b"OK"),
    ([(b"X-Thing", b"a\x01b")], b"OK"),
    ([(b"X-Thing", b"a\nSet-Cookie: x")], b"OK"),
    ([], b"O\x07K"),
])
def test_relayed_head_refuses_smuggling_shapes(headers, reason):
    with pytest.raises(ValueError):
        proxy.relayed_head(h11.Response(status_code=200, headers=headers, reason=reason, _parsed=True))


@pytest.mark.parametrize("status", [204, 304])
def test_relay_bodyless_answer_without_framing(env, daemon, status):
    pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
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
    assert client.state is proxy.ClientState.IDLE


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 O\x02K\r\nContent-Length: 5\r\n\r\nhello",
])
def test_relay_refuses_bad_heads_with_502(env, daemon, raw):
    pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
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
# UpstreamConnection deadlines


class Consumer:
    def __init__(self) -> None:
        self.failed: list[tuple] = []

    def upstream_failed(self, conn, status, message, retryable):
        self.failed.append((status, message, retryable))


def test_upstream_connect_timeout_502(env):
    pool = proxy.UpstreamPool(env.loop, env.settings, env.log)
    ours, other = socket.socketpair()
    env.sockets += [ours, other]
    conn = proxy.UpstreamConnection(pool, ours)  # CONNECTING since __init__
    consumer = Consumer()
    conn.start(consumer, h11.Request(method="GET", target="/info", headers=[("Host", "docker")]),
               connected=False)
    assert conn.state is proxy.UpstreamState.CONNECTING
    env.clock.now += env.settings.connect_timeout - 0.01
    env.loop.fire_deadlines(env.clock.now)
    assert consumer.failed == []
    env.clock.now += 0.01
    env.loop.fire_deadlines(env.clock.now)
    (status, message, retryable), = consumer.failed
    assert status == 502 and "timed out" in message and not retryable
    assert conn.state is proxy.UpstreamState.CLOSED


def test_upstream_connect_timeout_reaches_client_as_502(env):
    pool = proxy.UpstreamPool(env.loop, env.settings, env.log)
    ours, other = socket.socketpair()
    env.sockets += [ours, other]
    request = h11.Request(method="GET", target="/info", headers=[("Host", "docker")])

    def handler(client, exchange):
        relay = proxy.Relay(pool, exchange, request)
        relay.conn = proxy.UpstreamConnection(pool, ours)
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
        pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
        env.owner.handler = relay_handler(pool, relays)
        client, peer = env.client()
        peer.sendall(GET)
        env.run()
        srv = d.accept()
        read_available(srv)  # ... and never answers
        conn = relays[0].conn
        assert conn.state is proxy.UpstreamState.AWAITING
        env.clock.now += 6.99
        env.run()
        assert read_available(peer) == (b"", None)
        env.clock.now += 0.01
        data, _ = drive(env, peer, passes=2)
        (response,) = parse_responses(data)
        assert response["status"] == 504
        message = json_message(response)
        assert "--response-timeout" in message and "7" in message
        assert conn.state is proxy.UpstreamState.CLOSED
        assert read_available(srv)[1] == "eof"
    finally:
        d.close()


def test_idle_pooled_connection_closed_after_pool_idle_seconds(env, daemon):
    pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    srv = serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    drive(env, peer, passes=3)
    (conn,) = pool.idle
    env.clock.now += proxy.POOL_IDLE_SECONDS - 0.01
    env.run()
    assert pool.idle == [conn]
    env.clock.now += 0.01
    env.run()
    assert pool.idle == [] and conn.state is proxy.UpstreamState.CLOSED
    assert read_available(srv)[1] == "eof"


def test_idle_pooled_connection_closed_by_daemon_leaves_pool(env, daemon):
    pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
    env.owner.handler = relay_handler(pool, relays)
    client, peer = env.client()
    peer.sendall(GET)
    env.run()
    srv = serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    drive(env, peer, passes=3)
    (conn,) = pool.idle
    srv.close()
    env.run(2)
    assert pool.idle == [] and conn.state is proxy.UpstreamState.CLOSED


# ---------------------------------------------------------------------------------------------
# SharedStream


class StubConn:
    """An upstream connection the test drives itself: CONNECTING until the test says it sent."""

    def __init__(self) -> None:
        self.state = proxy.UpstreamState.CONNECTING
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
        self.state = proxy.UpstreamState.CLOSED


class StubPool:
    endpoint = proxy.parse_endpoint("unix:///var/run/docker.sock", listener=False)

    def __init__(self) -> None:
        self.conns: list[StubConn] = []

    def acquire(self, consumer, request, fresh=False):
        self.conns.append(StubConn())
        return self.conns[-1]


KEY = "/events"
STREAM_HEAD = proxy.relayed_head(h11.Response(status_code=200, headers=[
    (b"Content-Type", b"application/json"), (b"Transfer-Encoding", b"chunked")], _parsed=True))


class StreamWorld:
    """Watchers as real ClientConnections over socketpairs, joining like Proxy.join_stream."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.pool = StubPool()
        self.registry: dict[str, proxy.SharedStream] = {}
        self.reopened: list[proxy.Exchange] = []
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
            proxy.SharedStream(KEY, self.pool, self.registry, self.request, self.reopened.append).open(exchange)

    def watcher(self, **kw):
        client, peer = self.env.client(**kw)
        peer.sendall(EVENTS)
        self.env.run()
        assert client.exchange is not None
        return client, peer

    @property
    def stream(self) -> proxy.SharedStream:
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
        assert client.state is proxy.ClientState.IDLE
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
    assert a.state is proxy.ClientState.CLOSED
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
    assert a.state is proxy.ClientState.CLOSED
    assert stream.watchers == [b.exchange] and conn.closes == 0 and world.registry
    pb.close()
    env.run()
    assert b.state is proxy.ClientState.CLOSED
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
    assert conn.paused and a.state is proxy.ClientState.ACTIVE
    assert len(a.out) >= proxy.CLIENT_HIGH_WATER
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
        if a.state is proxy.ClientState.CLOSED:
            break
    assert a.state is proxy.ClientState.CLOSED
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
    registry: dict[str, proxy.SharedStream] = {}
    first, late = StubExchange(), StubExchange()
    stream = proxy.SharedStream(KEY, pool, registry, None, lambda exchange: None)  # type: ignore[arg-type]
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
# ResponseRewriter / ResponseTransform through an Exchange


def transform_client(env, transform, tcp=False, target=b"/info"):
    exchanges = []

    def handler(client, exchange):
        exchange.transform = transform
        exchanges.append(exchange)

    env.owner.handler = handler
    client, peer = env.client(tcp=tcp)
    peer.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
    env.run()
    return client, peer, exchanges[0]


def daemon_head(status=200, length=None, content_type=b"application/json"):
    headers = [(b"Content-Type", content_type)]
    headers.append((b"Content-Length", str(length).encode()) if length is not None
                   else (b"Transfer-Encoding", b"chunked"))
    return proxy.relayed_head(h11.Response(status_code=status, headers=headers, _parsed=True))


def test_document_transform_rewrites_with_correct_length(env):
    transform = proxy.ResponseTransform(document=lambda value: [c["Id"] for c in value if c["Keep"]])
    client, peer, exchange = transform_client(env, transform)
    body = json.dumps([{"Id": "a", "Keep": True, "Secret": "S1"}, {"Id": "b", "Keep": False}]).encode()
    exchange.send_head(daemon_head(length=len(body)))
    env.run()
    assert read_available(peer) == (b"", None)  # the head is held until the body is rewritten
    exchange.send_body(body[:10])
    exchange.send_body(body[10:])
    exchange.end_body()
    data, _ = drive(env, peer, passes=2)
    (response,) = parse_responses(data)
    assert response["status"] == 200 and response["complete"]
    assert bytes(response["body"]) == b'["a"]\n'
    assert response["headers"][b"content-length"] == b"6"
    assert b"transfer-encoding" not in response["headers"]
    assert b"S1" not in data
    assert client.state is proxy.ClientState.IDLE


@pytest.mark.parametrize("case", ["over-max-bytes", "not-json", "raises"])
def test_document_transform_fails_closed_with_502(env, case):
    if case == "over-max-bytes":
        transform = proxy.ResponseTransform(document=lambda value: value, max_bytes=40)
        body = json.dumps({"Secret": "SECRET" * 20}).encode()
    elif case == "not-json":
        transform = proxy.ResponseTransform(document=lambda value: value)
        body = b"SECRET, not JSON at all"
    else:
        transform = proxy.ResponseTransform(document=lambda value: value["missing"])
        body = b'{"Secret": "SECRET"}'
    client, peer, exchange = transform_client(env, transform)
    exchange.send_head(daemon_head(length=len(body)))
    for i in range(0, len(body), 30):
        if not exchange.active:
            break
        exchange.send_body(body[i:i + 30])
    if exchange.active:
        exchange.end_body()
    data, _ = drive(env, peer, passes=2)
    assert b"SECRET" not in data
    (response,) = parse_responses(data)
    assert response["status"] == 502 and response["complete"]
    assert json_message(response).startswith("porthole: response filter failed")
    assert exchange.outcome == "error"


def test_event_transform_rewrites_and_drops_events(env):
    def event(value):
        return None if value.get("drop") else {"x": value["a"] * 2}

    client, peer, exchange = transform_client(env, proxy.ResponseTransform(event=event), target=b"/events")
    exchange.decision = SimpleNamespace(streaming=True)
    exchange.send_head(daemon_head())
    exchange.send_body(b'{"a":1}\n{"drop":true,"s":"SECRET"}\n{"a":')
    env.run()
    received = bytearray(read_available(peer)[0])
    (response,) = parse_responses(bytes(received))
    assert bytes(response["body"]) == b'{"x":2}\n'  # the partial event waits
    exchange.send_body(b'2}\n\n{"a":3')
    exchange.send_body(b"}")
    exchange.end_body()  # a last event without its newline still counts
    env.run()
    received += read_available(peer)[0]
    (response,) = parse_responses(bytes(received))
    assert response["complete"]
    assert bytes(response["body"]) == b'{"x":2}\n{"x":4}\n{"x":6}\n'
    assert b"SECRET" not in received


def test_event_over_max_bytes_aborts_client(env):
    transform = proxy.ResponseTransform(event=lambda value: value, max_bytes=64)
    client, peer, exchange = transform_client(env, transform, tcp=True, target=b"/events")
    exchange.decision = SimpleNamespace(streaming=True)
    exchange.send_head(daemon_head())
    exchange.send_body(b'{"a":1}\n{"big":"')
    env.run()
    assert client.state is proxy.ClientState.ACTIVE
    for _ in range(4):
        if client.state is proxy.ClientState.CLOSED:
            break
        exchange.send_body(b"SECRET" * 10)
    assert client.state is proxy.ClientState.CLOSED
    data, end = read_available(peer)
    assert end == "reset" and b"SECRET" not in data
    (done,) = env.owner.done
    assert done.outcome == "error" and "response filter failed" in done.reason


def test_event_transform_that_raises_aborts_client(env):
    transform = proxy.ResponseTransform(event=lambda value: value["missing"])
    client, peer, exchange = transform_client(env, transform, tcp=True, target=b"/events")
    exchange.decision = SimpleNamespace(streaming=True)
    exchange.send_head(daemon_head())
    exchange.send_body(b'{"s":"SECRET"}\n')
    assert client.state is proxy.ClientState.CLOSED
    data, end = read_available(peer)
    assert end == "reset" and b"SECRET" not in data


@pytest.mark.parametrize("transform", [
    proxy.ResponseTransform(document=lambda value: {"rewritten": True}),
    proxy.ResponseTransform(event=lambda value: {"rewritten": True}),
], ids=["document", "event"])
def test_non_2xx_answers_pass_through_untouched(env, transform):
    client, peer, exchange = transform_client(env, transform)
    body = b"not json, and not rewritten\n"
    exchange.send_head(daemon_head(status=404, length=len(body), content_type=b"text/plain"))
    exchange.send_body(body)
    exchange.end_body()
    data, _ = drive(env, peer, passes=2)
    (response,) = parse_responses(data)
    assert response["status"] == 404 and bytes(response["body"]) == body
    assert response["headers"][b"content-length"] == str(len(body)).encode()
    assert exchange.outcome == "allow"


# ---------------------------------------------------------------------------------------------
# Listener and Timer


def test_listener_accepts_at_most_accepts_per_turn(env):
    path = f"{env.dir}/l.sock"
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(512)
    endpoint = proxy.parse_endpoint(f"unix://{path}", listener=True)
    accepted = []
    listener = proxy.Listener(lsock, endpoint, env.loop, lambda sock, ep, addr: accepted.append(sock))
    clients = []
    for _ in range(proxy.ACCEPTS_PER_TURN + 6):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        clients.append(c)
    try:
        env.run()
        assert len(accepted) == proxy.ACCEPTS_PER_TURN
        env.run()
        assert len(accepted) == proxy.ACCEPTS_PER_TURN + 6
        assert all(not s.getblocking() for s in accepted)
    finally:
        for s in clients + accepted:
            s.close()
        listener.close()


def test_timer_fires_its_callback_once(env):
    fired = []
    timer = proxy.Timer(lambda: fired.append(env.clock.now))
    env.loop.set_deadline(timer, env.clock.now + 3)
    env.clock.now += 3
    env.run()
    env.clock.now += 100
    env.run()
    assert fired == [env.clock.now - 100]


# ---------------------------------------------------------------------------------------------
# RulesWatcher


def configmap_layout(base: Path, text: str) -> Path:
    """A Kubernetes ConfigMap volume: rules.json -> ..data/rules.json, ..data -> ..v1/."""
    (base / "..v1").mkdir()
    (base / "..v1" / "rules.json").write_text(text)
    (base / "..data").symlink_to("..v1")
    (base / "rules.json").symlink_to("..data/rules.json")
    return base / "rules.json"


def configmap_update(base: Path, version: str, text: str) -> None:
    """What the kubelet does: a new timestamped directory, then ..data swapped to it atomically."""
    (base / version).mkdir()
    (base / version / "rules.json").write_text(text)
    (base / "..data_tmp").symlink_to(version)
    (base / "..data_tmp").rename(base / "..data")


def watch(env, path, interval=5.0):
    changes = []
    watcher = proxy.RulesWatcher(env.loop, path, interval, lambda: changes.append(env.clock.now), env.log)
    watcher.start()
    return watcher, changes


def tick(env, seconds):
    env.clock.now += seconds
    env.run()


def test_rules_watcher_reports_an_edit_once_and_only_when_due(env):
    path = Path(env.dir) / "rules.json"
    path.write_text("one")
    watcher, changes = watch(env, path)
    tick(env, 5)
    assert changes == []
    path.write_text("one, longer")  # size changes: no need for the mtime to move
    tick(env, 4.9)
    assert changes == []  # not due yet
    tick(env, 0.1)
    assert changes == [env.clock.now]
    tick(env, 5)
    tick(env, 5)
    assert len(changes) == 1  # Rule 1: reported once


def test_rules_watcher_sees_a_configmap_symlink_swap(env):
    """Same size, and a mtime that may well be equal: the identity (st_dev, st_ino) differs."""
    base = Path(env.dir)
    path = configmap_layout(base, '{"a": 1}')
    watcher, changes = watch(env, path)
    configmap_update(base, "..v2", '{"a": 2}')
    tick(env, 5)
    assert changes == [env.clock.now]
    tick(env, 5)
    assert len(changes) == 1


def test_rules_watcher_missing_file_is_logged_once_and_its_return_is_a_change(env):
    path = Path(env.dir) / "rules.json"
    path.write_text("one")
    watcher, changes = watch(env, path)
    path.unlink()
    tick(env, 5)
    tick(env, 5)
    assert changes == []
    assert [e["event"] for e in env.log_events()].count("rules_missing") == 1
    path.write_text("one")
    tick(env, 5)
    assert len(changes) == 1


def test_rules_watcher_remember_and_stop(env):
    path = Path(env.dir) / "rules.json"
    path.write_text("one")
    watcher, changes = watch(env, path)
    path.write_text("two, after a SIGHUP")
    watcher.remember()  # Rule 3: the SIGHUP already reloaded this file
    tick(env, 5)
    assert changes == []
    path.write_text("three, not seen")
    watcher.stop()
    tick(env, 5)
    tick(env, 5)
    assert changes == []


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
    pool = proxy.UpstreamPool(env.loop, env.settings, env.log)
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


# Lookup: resolving an object before a per-object request is forwarded (visible scopes)


def lookup_handler(pool, resolved: list):
    def handler(client, exchange):
        request = h11.Request(method="GET", target="/containers/web/json", headers=[("Host", "docker")])
        proxy.Lookup(pool, exchange, request, lambda status, doc: resolved.append((status, doc, exchange))).start()
    return handler


def test_lookup_hands_over_the_parsed_answer(env, daemon):
    pool, resolved = proxy.UpstreamPool(env.loop, env.settings, env.log), []
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
        pool, resolved = proxy.UpstreamPool(env.loop, env.settings, env.log), []
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
