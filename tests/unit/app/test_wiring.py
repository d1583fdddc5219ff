"""Admission (Proxy Rule 2), in-process: a Proxy whose connections are socketpairs, a fake
clock and a hand-driven Loop (issue "(2 of 5)", item 4). One client's quiet connections make
room for new ones, its own first, oldest first; a request in progress is never closed for it;
a connection over a cap is answered at once or closed, and no listener ever pauses for it."""
from __future__ import annotations

import io
import json
import socket

import pytest
from parts import read_available

from porthole.app.settings import parse_settings
from porthole.app.wiring import REJECT_SLACK, Proxy
from porthole.connections.client import ClientState
from porthole.core.policy import load_policy
from porthole.runtime.config import parse_endpoint
from porthole.runtime.log import Log

POLICY = load_policy(json.dumps({"version": 1, "profiles": {"default": {"rules": [
    {"method": "GET", "path": "/_ping"}]}}}))
PING = b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HeldRequests:
    """Stands in for Dispatch: every request stays in progress (ACTIVE) until the test says."""

    def __init__(self) -> None:
        self.policy = POLICY
        self.requests = []
        self.done = []

    def on_request(self, client, exchange):
        self.requests.append((client, exchange))

    def exchange_done(self, exchange):
        self.done.append(exchange)


class StubListener:
    """Records whether the proxy paused it."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause(self):
        self.paused = True
        self.pauses += 1

    def resume(self):
        self.paused = False


class Harness:
    def __init__(self, *args: str) -> None:
        self.clock = FakeClock()
        self.stream = io.StringIO()
        settings = parse_settings(["--upstream", "unix:///nonexistent/d.sock", "--watch-rules", "0", *args], {})
        self.proxy = Proxy(settings, POLICY, Log("json", "debug", self.stream), self.clock)
        self.dispatch = self.proxy.dispatch = HeldRequests()  # type: ignore[assignment]
        self.listener = StubListener()
        self.proxy.listeners.append(self.listener)  # type: ignore[arg-type]
        self.endpoint = parse_endpoint("unix:///run/porthole-test.sock", listener=True)
        self.peers: dict = {}  # client -> the test's end
        self.sockets: list[socket.socket] = []

    def connect(self, identity: str, advance: float = 1.0):
        """A new connection from `identity`, `advance` seconds after the last one: (client or
        None if closed at once, the test's end)."""
        self.clock.now += advance
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        peer.setblocking(False)
        self.sockets += [ours, peer]
        client = self.proxy.admit(ours, self.endpoint, f"{identity}#{len(self.sockets) // 2}", identity)
        if client is not None:
            self.peers[client] = peer
        return client, peer

    def run(self, passes: int = 3) -> None:
        for _ in range(passes):
            self.proxy.loop.run_once(0)

    def ping(self, client, answer: bool = True) -> None:
        """A request on `client`, half a second on; answered (200) unless `answer` is False (then
        it stays ACTIVE)."""
        self.clock.now += 0.5
        self.peers[client].sendall(PING)
        self.run()
        assert client.state is ClientState.ACTIVE
        if answer:
            _, exchange = self.dispatch.requests[-1]
            exchange.answer(200, "ok")
            self.run()
            assert client.state is ClientState.IDLE
            read_available(self.peers[client])

    def events(self, name: str) -> list[dict]:
        return [e for e in map(json.loads, self.stream.getvalue().splitlines()) if e["event"] == name]

    def close(self) -> None:
        for client in list(self.proxy.clients):
            client.abort("test over")
        for sock in self.sockets:
            sock.close()
        self.proxy.loop.selector.close()


@pytest.fixture
def harness():
    made = []

    def make(*args: str) -> Harness:
        made.append(Harness(*args))
        return made[-1]

    yield make
    for h in made:
        h.close()


def test_at_the_per_client_cap_its_quietest_connection_makes_room(harness):
    h = harness("--max-connections-per-client", "3")
    a, peer_a = h.connect("uid=0")
    b, _ = h.connect("uid=0")
    c, peer_c = h.connect("uid=0")
    h.ping(a)  # idle since now: quiet for less time than c, which never sent anything
    h.ping(b, answer=False)  # a request in progress: never closed to make room
    d, _ = h.connect("uid=0")
    assert d is not None and d.rejection is None
    assert c.state is ClientState.CLOSED and read_available(peer_c)[1] == "eof"
    assert a.state is ClientState.IDLE and b.state is ClientState.ACTIVE
    e, _ = h.connect("uid=0")
    assert e is not None and e.rejection is None
    assert a.state is ClientState.CLOSED and read_available(peer_a)[1] == "eof"  # quiet longer than d
    assert b.state is ClientState.ACTIVE
    evicted = h.events("connection_evicted")
    assert [x["state"] for x in evicted] == ["idle", "idle"]
    assert "--max-connections-per-client 3" in evicted[0]["reason"]
    assert h.proxy.served.count == 3 and len(h.proxy.served.by_client["uid=0"]) == 3


def test_part_of_a_head_makes_room(harness):
    h = harness("--max-connections-per-client", "1")
    slow, peer = h.connect("10.0.0.1")
    peer.sendall(b"GET /_ping HTTP/1.1\r\nHo")
    h.run()
    assert slow.state is ClientState.HEAD
    new, _ = h.connect("10.0.0.1")
    assert new is not None and new.rejection is None
    assert slow.state is ClientState.CLOSED and read_available(peer)[1] == "eof"


def test_requests_in_progress_are_never_closed_and_the_503_goes_at_once(harness):
    h = harness("--max-connections-per-client", "2")
    held = [h.connect("uid=0")[0] for _ in range(2)]
    for client in held:
        h.ping(client, answer=False)
    extra, peer = h.connect("uid=0")
    assert extra is not None and extra.rejection is not None
    h.run()
    data, end = read_available(peer)  # the client never sent a request
    assert data.startswith(b"HTTP/1.1 503 ") and b"--max-connections-per-client 2" in data
    assert b"Connection: close" in data and end == "eof"
    assert all(c.state is ClientState.ACTIVE for c in held)
    other, _ = h.connect("uid=1000")  # another client is not concerned
    assert other is not None and other.rejection is None


def test_at_max_connections_the_busiest_client_makes_room(harness):
    h = harness("--max-connections", "4", "--max-connections-per-client", "4")
    lone, _ = h.connect("10.0.0.9")  # the oldest of all, but its client has one connection
    busy = [h.connect("10.0.0.1")[0] for _ in range(3)]
    for client in (lone, *busy):
        h.ping(client)
    h.ping(busy[0], answer=False)  # in progress: the next quietest of the busiest goes
    newcomer, _ = h.connect("10.0.0.2")
    assert newcomer is not None and newcomer.rejection is None
    assert busy[1].state is ClientState.CLOSED
    assert lone.state is ClientState.IDLE and busy[0].state is ClientState.ACTIVE
    assert busy[2].state is ClientState.IDLE
    assert "--max-connections 4" in h.events("connection_evicted")[0]["reason"]


def test_over_the_caps_beyond_the_slack_connections_close_at_once_and_nothing_pauses(harness):
    """Before: past REJECT_SLACK connections waiting for their 503 (each until it sent a head
    or --head-timeout passed) every listener paused, and everyone else waited in the backlog."""
    h = harness("--max-connections", "1")
    first, _ = h.connect("10.0.0.1")
    h.ping(first, answer=False)
    peers = [h.connect("10.0.0.2", advance=0.0) for _ in range(REJECT_SLACK + 20)]
    answered = [client for client, _ in peers if client is not None]
    assert len(answered) == REJECT_SLACK
    h.run()
    for client, peer in peers:
        data, end = read_available(peer)
        if client is None:
            assert (data, end) == (b"", "eof")
        else:
            assert data.startswith(b"HTTP/1.1 503 ") and end == "eof"
    assert h.listener.pauses == 0 and not h.listener.paused
    assert len(h.events("connection_rejected")) == REJECT_SLACK + 20


def test_a_request_sent_with_the_connection_is_read_at_admission(harness):
    """A burst of newer connections from the same client (a slowloris sharing the victim's
    address or uid) cannot take the victim's new connection for quiet before its request was
    read: what came with the connection is read when it is admitted."""
    h = harness("--max-connections-per-client", "2")
    ours, peer = socket.socketpair()
    h.sockets += [ours, peer]
    ours.setblocking(False)
    peer.sendall(PING)  # in the socket before the proxy accepts it, as with a real client
    victim = h.proxy.admit(ours, h.endpoint, "victim", "uid=0")
    assert victim is not None and victim.state is ClientState.ACTIVE
    burst = [h.connect("uid=0", advance=0.0)[0] for _ in range(5)]
    assert all(c is not None and c.rejection is None for c in burst)  # each took the last one's room
    assert [c.state for c in burst[:-1]] == [ClientState.CLOSED] * 4
    assert victim.state is ClientState.ACTIVE


# ---- an idle proxy sleeps (issue "(3 of 5)", item 3): no tick, only the deadlines it really has


@pytest.mark.parametrize("args, wait", [((), 30.0), (("--watch-rules", "0"), None), (("--watch-rules", "7"), 7.0)])
def test_an_idle_proxy_sleeps_until_its_next_deadline(tmp_path, args, wait):
    """Proxy.run waits until the rules watcher's next look (by default 30 s), or with no
    watcher until I/O or a signal comes: it used to wake up every second."""
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/_ping"}]}}}))
    clock = FakeClock()
    settings = parse_settings(["--upstream", "unix:///nonexistent/d.sock", "--rules", str(rules), *args], {})
    proxy = Proxy(settings, POLICY, Log("json", "debug", io.StringIO()), clock)
    if proxy.rules_watcher is not None:
        proxy.rules_watcher.start()
    seen = []

    def select(timeout=None):
        seen.append(timeout)
        if len(seen) == 3:
            proxy.stopping = True  # no clients: run() returns after this pass
        return []

    proxy.loop.selector.select = select  # type: ignore[method-assign]
    try:
        assert proxy.run() == 0
    finally:
        proxy.loop.selector.close()
    assert seen == [wait] * 3


# ---- ssl is loaded only for a TLS listener (issue "(3 of 5)", item 3) ---------------------------

BIND = """
import io, json, sys
from porthole.app.command_line import main  # the whole program, as proxy.py loads it
from porthole.app.settings import parse_settings
from porthole.app.wiring import Proxy
from porthole.core.policy import load_policy
from porthole.runtime.log import Log
policy = load_policy(json.dumps({"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/_ping"}]}}}))
settings = parse_settings(["--listen", sys.argv[1], "--upstream", "unix:///nonexistent/d.sock", "--watch-rules", "0"], {})
loaded = "ssl" in sys.modules or "porthole.runtime.tls" in sys.modules
Proxy(settings, policy, Log("json", "info", io.StringIO())).bind()
print(json.dumps([loaded, "ssl" in sys.modules, "porthole.runtime.tls" in sys.modules]))
"""


def test_ssl_is_loaded_only_for_a_tls_listener(pki):
    import subprocess
    import sys

    import support
    tls = pki.listen_url(support.free_port(), mutual=False)
    plain = "unix://%s/p.sock" % support.short_tmpdir("ph-ssl-")
    seen = {}
    for url in (plain, tls):
        r = subprocess.run([sys.executable, "-c", BIND, url], cwd=support.REPO, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        seen[url] = json.loads(r.stdout)
    assert seen[plain] == [False, False, False]  # not at start, not for a plain listener
    assert seen[tls] == [False, True, True]  # bind() loads them for the TLS listener
