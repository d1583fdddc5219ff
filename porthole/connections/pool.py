"""The daemon's connections: fresh ones, idle ones kept for reuse, and the daemon's address."""
from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any

import h11

from porthole.connections.upstream import UpstreamConnection, UpstreamState
from porthole.core.wire import MAX_REMEMBERED_HEADS, ParsedHead
from porthole.runtime.config import Settings
from porthole.runtime.log import Log
from porthole.runtime.loop import Loop, Waker
from porthole.runtime.metrics import Metrics


MAX_IDLE_UPSTREAMS = 16


class UpstreamPool:
    """Daemon connections: fresh ones, and idle ones kept for reuse.

    Rule 1: a connection is in exactly one place: the idle list, one consumer, or closed.
    Rule 2: only a connection whose exchange ended cleanly goes back (UpstreamConnection.reusable).
    Rule 3: acquire(fresh=True) never takes an idle one: a retry must not meet another stale
            connection.
    Rule 4: a TCP daemon's name is resolved outside the loop: before it starts, and again in a
            helper thread after a failure; the loop only ever reads the last answer. The thread
            ends the loop's wait when it is done (a Waker), so what it logged is written then,
            not at the next event of an idle proxy.
    """

    def __init__(self, loop: Loop, settings: Settings, log: Log, metrics: Metrics | None = None) -> None:
        self.loop = loop
        self.settings = settings
        self.endpoint = settings.upstream
        self.log = log
        self.metrics = metrics if metrics is not None else Metrics()  # upstream failures are counted here
        self.idle: list[UpstreamConnection] = []
        self.heads: dict[tuple[bytes, bytes], ParsedHead] = {}  # (method, head bytes): see ParsedHead
        self.addresses: list[tuple[int, Any]] = []  # (family, sockaddr), for TCP daemons
        self.resolving = False
        self.waker: Waker | None = None  # made with the first helper thread
        self.closed = False
        if self.endpoint.kind == "tcp":
            self.resolve()

    def resolve(self) -> None:
        """getaddrinfo, which blocks: called before the loop runs, or from a helper thread."""
        try:
            found = socket.getaddrinfo(self.endpoint.host, self.endpoint.port, type=socket.SOCK_STREAM)
            self.addresses = [(family, address) for family, _, _, _, address in found]
        except OSError as exc:
            self.log("warning", "upstream_resolve_failed", upstream=self.endpoint.url, error=str(exc))
        finally:
            if self.waker is not None:
                self.waker.wake()
            self.resolving = False  # after the wake-up: close() closes the waker only when this is False

    def re_resolve(self) -> None:
        if self.endpoint.kind == "tcp" and not self.resolving and not _is_ip_literal(self.endpoint.host):
            self.resolving = True
            if self.waker is None:
                self.waker = Waker(self.loop)
            threading.Thread(target=self.resolve, name="porthole-resolve", daemon=True).start()

    def acquire(self, consumer: Any, request: h11.Request, fresh: bool = False) -> UpstreamConnection:
        """A connection already sending `request` for `consumer`. Raises OSError (with a
        message for the client) when no connection can be made at once; counted here, for every
        kind of consumer."""
        try:
            return self._acquire(consumer, request, fresh)
        except OSError:
            self.metrics.upstream_error("connect_failed")
            raise

    def _acquire(self, consumer: Any, request: h11.Request, fresh: bool) -> UpstreamConnection:
        if self.idle and not fresh:
            conn = self.idle.pop()
            conn.reused = True
            conn.start(consumer, request, connected=True)
            return conn
        if self.endpoint.kind == "unix":
            candidates = [(socket.AF_UNIX, self.endpoint.path)]
        elif self.addresses:
            candidates = list(self.addresses)
        else:
            self.re_resolve()
            raise OSError(errno.EHOSTUNREACH, f"cannot resolve {self.endpoint.host}")
        sock, connected, address = self.connect(candidates)
        conn = UpstreamConnection(self, sock)
        conn.address, conn.candidates = address, candidates
        conn.start(consumer, request, connected=connected)
        return conn

    def remember_head(self, method: bytes, raw: bytes, parsed: ParsedHead) -> None:
        if len(self.heads) >= MAX_REMEMBERED_HEADS:
            self.heads.clear()
        self.heads[(method, raw)] = parsed

    def connect(self, candidates: list[tuple[int, Any]]) -> tuple[socket.socket, bool, tuple[int, Any]]:
        """Start connecting to the first candidate address that does not fail at once (each
        tried is taken off the list): (socket, connected already, the address). Raises the
        last OSError."""
        while True:
            family, address = candidates.pop(0)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                code = sock.connect_ex(address)
                if code == errno.EAGAIN:
                    raise OSError(errno.EAGAIN, "the daemon's socket backlog is full")
                if code not in (0, errno.EINPROGRESS):
                    raise OSError(code, os.strerror(code))
                if family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock, code == 0, (family, address)
            except OSError as exc:
                sock.close()
                self.connect_failed(family, address, exc)
                if not candidates:
                    raise

    def connect_failed(self, family: int, address: Any, exc: OSError) -> None:
        """Try that address last from now on, and ask DNS again."""
        if family != socket.AF_UNIX:
            if (family, address) in self.addresses and len(self.addresses) > 1:
                self.addresses = [a for a in self.addresses if a != (family, address)] + [(family, address)]
            self.re_resolve()

    def release(self, conn: UpstreamConnection) -> None:
        """An exchange ended: keep the connection if it is clean and there is room."""
        if conn.reusable and len(self.idle) < MAX_IDLE_UPSTREAMS and not self.closed:
            conn.next_cycle()
            conn.reused = False
            conn.enter(UpstreamState.IDLE)
            self.idle.append(conn)
        else:
            conn.close()

    def discard(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        self.closed = True
        for conn in list(self.idle):
            conn.close()
        if self.waker is not None and not self.resolving:  # (a thread still resolving may still wake it)
            self.waker.close()
            self.waker = None


def _is_ip_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return True
    except OSError:
        return False
