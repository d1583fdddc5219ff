"""The --metrics listener: GET /metrics, on connections of its own."""
from __future__ import annotations

import socket
import struct
from typing import Any, Callable, Sequence

import h11

from porthole.connections.client import ClientConnection
from porthole.connections.exchange import Exchange
from porthole.connections.listeners import Listener
from porthole.core.policy import ALLOWED_METHODS
from porthole.core.wire import error_body
from porthole.runtime.config import Endpoint, Settings
from porthole.runtime.log import Log
from porthole.runtime.loop import Loop
from porthole.runtime.metrics import METRICS_CONTENT_TYPE


MAX_METRICS_CONNECTIONS = 8  # scrapers served at once; past it the metrics listener pauses
METRICS_PATH = b"/metrics"


class MetricsServer:
    """The --metrics listener: GET and HEAD /metrics, rendered from the Metrics registry, on
    connections of its own (ClientConnection: the same head, idle and write-stall deadlines).

    Rule 1: its connections are its own: they never count against --max-connections or the
            per-client caps, and at most MAX_METRICS_CONNECTIONS are open at once (the listener
            pauses past it), so scrapers cannot exhaust the proxy, nor its clients a scrape.
    Rule 2: nothing here reaches the daemon: an answer is rendered and queued at once.
    Rule 3: any other path is a 404, any other method a 405, both Docker-style JSON.
    """

    def __init__(self, sock: socket.socket, endpoint: Endpoint, loop: Loop, settings: Settings, log: Log,
                 render: Callable[[], str]) -> None:
        self.loop = loop
        self.settings = settings
        self.log = log
        self.render = render
        self.clients: set[ClientConnection] = set()
        self.stopping = False
        self.listener = Listener(sock, endpoint, loop, self.accept)

    def accept(self, sock: socket.socket, endpoint: Endpoint, address: Any) -> None:
        if endpoint.kind == "unix":
            pid, uid, gid = struct.unpack("iII", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            peer = f"uid={uid} gid={gid} pid={pid}"
        else:
            peer = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
        client = ClientConnection(sock, self.loop, self, self.settings, endpoint, peer, peer)
        self.clients.add(client)
        client.update_interest()
        if len(self.clients) >= MAX_METRICS_CONNECTIONS:
            self.listener.pause()

    def on_request(self, client: ClientConnection, exchange: Exchange) -> None:
        method, target = exchange.facts.method, exchange.facts.target
        if method not in ALLOWED_METHODS:
            self.respond(exchange, 405, f"method {method} is not served here: GET {METRICS_PATH.decode()}",
                         [(b"Allow", b"GET, HEAD")])
        elif target.partition(b"?")[0] != METRICS_PATH:
            self.respond(exchange, 404, f"no such path: only {METRICS_PATH.decode()} is served here")
        else:
            body = self.render().encode("utf-8")
            exchange.send_head(h11.Response(status_code=200, headers=[
                (b"Content-Type", METRICS_CONTENT_TYPE), (b"Content-Length", str(len(body)).encode())]))
            if method == "GET":
                exchange.send_body(body)
            exchange.end_body()

    @staticmethod
    def respond(exchange: Exchange, status: int, message: str,
                headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        exchange.outcome, exchange.reason = "deny", message
        body = error_body(message)
        exchange.close_after = status == 405  # a refused method may have sent a body we never read
        exchange.send_head(h11.Response(status_code=status, headers=[
            (b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode()), *headers,
            *([(b"Connection", b"close")] if exchange.close_after else [])]))
        if exchange.facts.method != "HEAD":
            exchange.send_body(body)
        exchange.end_body()

    def exchange_done(self, exchange: Exchange) -> None:
        if self.log.enabled("debug"):
            self.log("debug", "metrics_request", listener=exchange.client.listener.url, client=exchange.client.peer,
                     method=exchange.facts.method, target=exchange.facts.target.decode("latin-1"),
                     status=exchange.status, reason=exchange.reason)

    def client_closed(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        if self.listener.paused and len(self.clients) < MAX_METRICS_CONNECTIONS and not self.stopping:
            self.listener.resume()

    def close(self) -> None:
        """The proxy is stopping: no new scrape; open connections deliver what is queued and close."""
        self.stopping = True
        self.listener.close()
        for client in list(self.clients):
            client.close()
