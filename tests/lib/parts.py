"""The connection layer's parts alone (tests/unit): a Loop on a fake clock, a stub owner, real
ClientConnections over socketpairs, a unix socket the test serves as the daemon, and readers of
what a client received. No running Proxy, no threads, no subprocesses.

Every Loop here is driven with run_once(0) (or fire_deadlines) and a FakeClock, so nothing waits
on real time: deadlines fire because the test moves the clock. tests/unit/conftest.py makes the
`env`, `make_env` and `daemon` fixtures of these."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile

import h11

from porthole.app.settings import parse_settings
from porthole.connections.client import ClientConnection
from porthole.connections.exchange import Exchange
from porthole.connections.sources import Relay
from porthole.runtime.config import parse_endpoint
from porthole.runtime.log import Log
from porthole.runtime.loop import Loop

GET = b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n"
EVENTS = b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n"


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
        self.requests: list[Exchange] = []
        self.done: list[Exchange] = []
        self.closed: list[ClientConnection] = []

    def on_request(self, client, exchange):
        self.requests.append(exchange)
        if self.handler is not None:
            self.handler(client, exchange)

    def exchange_done(self, exchange):
        self.done.append(exchange)

    def client_closed(self, client):
        self.closed.append(client)


class DispatchOwner(Owner):
    """An Owner that hands each request, and each exchange's end, to a real Dispatch (as Proxy does)."""

    def __init__(self, dispatch) -> None:
        super().__init__()
        self.dispatch = dispatch

    def on_request(self, client, exchange):
        self.requests.append(exchange)
        self.dispatch.on_request(client, exchange)

    def exchange_done(self, exchange):
        self.done.append(exchange)
        self.dispatch.exchange_done(exchange)


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


def read_pipe(fd: int) -> tuple[bytes, bool]:
    """What a non-blocking pipe's reader can read now, and whether it saw EOF."""
    data = bytearray()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return bytes(data), False
        if not chunk:
            return bytes(data), True
        data += chunk


def close_fds(*fds: int) -> None:
    """Close each of fds, those already closed too."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


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
        self.log = Log("json", "debug", self.stream)
        self.loop = Loop(self.log, self.clock)
        self.settings = parse_settings(["--upstream", f"unix://{self.sock_path}", *args], {})
        self.listener = parse_endpoint("unix:///run/porthole-test.sock", listener=True)
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
        client = ClientConnection(ours, self.loop, self.owner, self.settings, self.listener,
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
        relay = Relay(pool, exchange, request)
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


class Consumer:
    def __init__(self) -> None:
        self.failed: list[tuple] = []

    def upstream_failed(self, conn, status, message, retryable):
        self.failed.append((status, message, retryable))


def send_until_paused(env: Env, daemon_end: socket.socket, data: bytes, conn, rounds: int = 200) -> memoryview:
    """Send `data` from the daemon's end of a socketpair, running the loop, until the upstream
    connection `conn` pauses (its client does not read) or `rounds` passes; what is left unsent."""
    pending = memoryview(data)
    for _ in range(rounds):
        try:
            pending = pending[daemon_end.send(pending):]
        except BlockingIOError:
            pass
        env.run()
        if conn.paused:
            break
    return pending
