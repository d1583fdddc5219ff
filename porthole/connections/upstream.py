"""One connection to the daemon (UpstreamConnection): it sends a request porthole wrote
(wire.request_bytes) and gives the answer's head to an h11 client connection, unless the same
head bytes were parsed before (wire.ParsedHead); a body with a length or chunked is framed by
wire.BodyFraming.

Its states are UpstreamState, its legal moves UPSTREAM_TRANSITIONS, changed in one place
(UpstreamConnection.enter).

Invariants:
Rule 1: it serves one consumer at a time (a Relay or a SharedStream), or none while IDLE.
Rule 2: it reads only while its consumer has not paused it; on resume() it first hands on
        what h11 already holds, in a turn of its own.
Rule 3: a failure reaches the consumer exactly once (upstream_failed), then it is closed.
Rule 4: an answer wire.AnswerParser refuses (too many 1xx heads, both framings, control
        bytes in its head, malformed) is a failure (502), never relayed.
Deadlines: CONNECTING --connect-timeout (502), AWAITING --response-timeout (504),
IDLE POOL_IDLE_SECONDS (closed), RECEIVING: for a finite answer (its consumer's `finite`),
--response-timeout without a byte of it while not paused (504; the consumer aborts a client
that has the head already); for a stream, none. While paused, none: the client side owns write
stalls, and the clock starts again on resume.
"""
from __future__ import annotations

import enum
import errno
import os
import selectors
import socket
import stat
from typing import Any, Mapping, TYPE_CHECKING

import h11

from porthole.core.wire import (AnswerParser, BodyFraming, DaemonAnswerError, ParsedHead, READ_CHUNK, body_framing,
                                request_bytes)
from porthole.runtime.config import Endpoint
from porthole.runtime.loop import illegal_transition

if TYPE_CHECKING:
    from porthole.connections.pool import UpstreamPool


POOL_IDLE_SECONDS = 30.0


def upstream_error_message(upstream: Endpoint, exc: OSError) -> str:
    """Say what is wrong with the daemon socket, and for EACCES which group to add."""
    if exc.errno in (errno.EACCES, errno.EPERM) and upstream.kind == "unix":
        try:
            info = os.stat(upstream.path)
            owner = f"owned by uid {info.st_uid} gid {info.st_gid}, mode {stat.S_IMODE(info.st_mode):04o}"
            hint = (f"add the socket's group {info.st_gid} to porthole "
                    f"(docker run --group-add {info.st_gid}, or SupplementaryGroups={info.st_gid})")
        except OSError:
            owner, hint = "owner unknown", "add the socket's group to porthole"
        groups = sorted(set(os.getgroups()) | {os.getgid()})
        return (f"permission denied connecting to {upstream.path} ({owner}); porthole runs as "
                f"uid {os.getuid()} with groups {groups}: {hint}")
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return f"cannot reach the Docker daemon at {upstream.url}: {os.strerror(exc.errno)} (is dockerd running?)"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return f"porthole is out of file descriptors ({exc.strerror}); try again"
    return f"cannot reach the Docker daemon at {upstream.url}: {exc.strerror or exc}"


class UpstreamState(enum.Enum):
    CONNECTING = "connecting"  # a non-blocking connect is under way; the request waits queued
    AWAITING = "awaiting"  # the request is sent (or being sent); no response head yet
    RECEIVING = "receiving"  # the head went to the consumer; the body flows
    IDLE = "idle"  # in the pool, between exchanges
    CLOSED = "closed"

    __hash__ = object.__hash__  # members are singletons; Enum's own __hash__ is Python code


_U = UpstreamState
UPSTREAM_TRANSITIONS: Mapping[UpstreamState, frozenset[UpstreamState]] = {
    _U.CONNECTING: frozenset({_U.AWAITING, _U.CLOSED}),
    _U.AWAITING: frozenset({_U.RECEIVING, _U.CLOSED}),
    _U.RECEIVING: frozenset({_U.IDLE, _U.CLOSED}),
    _U.IDLE: frozenset({_U.AWAITING, _U.CLOSED}),
    _U.CLOSED: frozenset(),
}


class UpstreamConnection:
    """One connection to the daemon: enforces this module's Rules 1-4 and deadlines."""

    def __init__(self, pool: UpstreamPool, sock: socket.socket, reused: bool = False) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.sock = sock
        self.parser: AnswerParser | None = None  # made when a head is not one seen before (ParsedHead)
        self.request: h11.Request | None = None  # under way
        self.first_read = b""  # the exchange's first bytes from the daemon, while h11 holds only them
        self.keep_alive = True  # ... as h11 saw the response head, when porthole frames the body
        self.outbuf = bytearray()
        self.state = UpstreamState.CONNECTING
        self.moved = self.loop.clock()  # entered its state, or (RECEIVING) last had a byte of the answer
        self.consumer: Any = None
        self.reused = reused  # came from the idle pool: a failure before any byte may be retried
        self.received_any = False
        self.finite = False  # the answer under way has an end: RECEIVING has a deadline
        self.paused = False
        self.method = b"GET"  # of the request under way
        self.body: BodyFraming | None = None  # set when porthole frames the body itself
        self.unread = b""  # body bytes read while paused, not yet framed
        self.send_error: OSError | None = None
        self.address: tuple[int, Any] = (sock.family, None)  # what it connects to
        self.candidates: list[tuple[int, Any]] = []  # the daemon's other addresses, to try next
        self.mask = 0  # the events the loop watches for

    def enter(self, state: UpstreamState) -> None:
        """The one place an upstream connection changes state (and so its deadline)."""
        if state not in UPSTREAM_TRANSITIONS[self.state]:
            raise illegal_transition(self.state, state)
        self.state = state
        self.arm()

    def arm(self) -> None:
        self.moved = now = self.loop.clock()
        state = self.state
        if state is UpstreamState.AWAITING:
            self.loop.set_deadline(self, now + self.pool.settings.response_timeout)
        elif state is UpstreamState.CONNECTING:
            self.loop.set_deadline(self, now + self.pool.settings.connect_timeout)
        elif state is UpstreamState.IDLE:
            self.loop.set_deadline(self, now + POOL_IDLE_SECONDS)
        elif state is UpstreamState.RECEIVING and self.finite and not self.paused:
            self.loop.set_deadline(self, now + self.pool.settings.response_timeout)  # each byte moves it
        else:
            self.loop.set_deadline(self, None)
        self.update_interest()

    def start(self, consumer: Any, request: h11.Request, connected: bool) -> None:
        """Send one request for `consumer`; a connection still connecting sends it once connected."""
        self.consumer = consumer
        self.send_error = None
        self.received_any = False
        self.finite = getattr(consumer, "finite", False)  # the consumer says: an answer with an end
        self.paused = False
        self.method = request.method
        self.request = request
        self.outbuf += request_bytes(request)  # h11 is only asked to parse the answer
        if not connected:
            self.arm()  # a new connection: CONNECTING since __init__
            return
        try:  # most requests leave at once; a failure is reported in a turn of its own, so
            # that the consumer learns of it after acquire() has returned
            del self.outbuf[:self.sock.send(self.outbuf)]
        except BlockingIOError:
            pass
        except OSError as exc:
            self.send_error = exc
            self.loop.soon(self)
        self.enter(UpstreamState.AWAITING)  # watches for what is left to send, and the answer

    def on_deadline(self, now: float) -> None:
        if self.state is UpstreamState.CONNECTING:
            self.fail(502, upstream_error_message(self.pool.endpoint, OSError(errno.ETIMEDOUT, "connect timed out")),
                      "connect_failed")
        elif self.state is UpstreamState.AWAITING:
            self.fail(504, f"the daemon did not start answering within --response-timeout "
                           f"{self.pool.settings.response_timeout:g} s", "timeout")
        elif self.state is UpstreamState.RECEIVING and self.finite and not self.paused:
            if self.moved + self.pool.settings.response_timeout > now:  # a byte came since: not yet
                self.loop.set_deadline(self, self.moved + self.pool.settings.response_timeout)
            else:
                self.fail(504, f"the daemon's answer stopped: no byte of it for --response-timeout "
                               f"{self.pool.settings.response_timeout:g} s", "timeout")
        elif self.state is UpstreamState.IDLE:
            self.close()

    def on_io(self, mask: int) -> None:
        if self.state is UpstreamState.IDLE:  # the daemon closed it, or sent junk: either way, gone
            self.close()
            return
        if mask & selectors.EVENT_WRITE:
            if self.state is UpstreamState.CONNECTING:
                code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    self.connect_next(OSError(code, os.strerror(code)))
                    return
                self.enter(UpstreamState.AWAITING)
            self.flush()
        if self.state is UpstreamState.CLOSED or not mask & selectors.EVENT_READ:
            return
        try:
            data = self.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(502, upstream_error_message(self.pool.endpoint, exc), "closed")
            return
        if data:
            self.received_any, self.moved = True, self.loop.clock()  # (RECEIVING's deadline moves)
        if self.body is None:
            if self.parser is None:
                if self.state is UpstreamState.AWAITING and self.remembered_head(data):
                    return
                self.parser = AnswerParser(self.request)  # type: ignore[arg-type]
                self.first_read = data
            else:
                self.first_read = b""
            self.parser.h11.receive_data(data)
        elif data:
            self.unread += data  # porthole frames this body: h11 sees nothing more of it
        else:
            self.fail(502, "the daemon closed the connection before the response was complete", "closed")
            return
        self.pump()

    def remembered_head(self, data: bytes) -> bool:
        """A response head byte for byte like one h11 parsed before, for the same method: relay
        it as h11 parsed it then (ParsedHead), and frame its body."""
        end = data.find(b"\r\n\r\n")
        seen = self.pool.heads.get((self.method, data[:end + 4])) if end >= 0 else None
        if seen is None:
            return False
        self.enter(UpstreamState.RECEIVING)
        self.body, self.keep_alive, self.unread = seen.framing(), seen.keep_alive, data[end + 4:]
        self.consumer.upstream_head(self, seen.head)
        self.pump_body()
        return True

    def connect_next(self, exc: OSError) -> None:
        """The connect failed: on to the daemon's next address, if it has another."""
        self.pool.connect_failed(*self.address, exc)
        if not self.candidates:
            self.fail(502, upstream_error_message(self.pool.endpoint, exc), "connect_failed")
            return
        try:
            sock, connected, self.address = self.pool.connect(self.candidates)
        except OSError as last:
            self.fail(502, upstream_error_message(self.pool.endpoint, last), "connect_failed")
            return
        self.loop.forget(self.sock)
        self.sock.close()
        self.sock, self.mask = sock, 0
        if connected:
            self.enter(UpstreamState.AWAITING)
            self.flush()
        else:
            self.update_interest()

    def on_turn(self) -> None:
        if self.send_error is not None:
            self.fail(502, upstream_error_message(self.pool.endpoint, self.send_error), "closed")
        elif not self.paused and self.state in (UpstreamState.AWAITING, UpstreamState.RECEIVING):
            self.pump()

    def pump(self) -> None:
        """Hand what h11 holds to the consumer while it is not paused."""
        if self.body is not None:
            self.pump_body()
            return
        parser = self.parser
        while parser is not None and self.state in (UpstreamState.AWAITING, UpstreamState.RECEIVING) and not self.paused:
            try:
                event = parser.next_event()
            except DaemonAnswerError as exc:
                self.fail(502, str(exc), exc.reason)
                return
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.Response):
                self.enter(UpstreamState.RECEIVING)
                self.body = body_framing(self.method, event)
                if self.body is not None:  # the bytes after the head are body: ours from now on
                    self.unread = parser.h11.trailing_data[0]
                    self.keep_alive = parser.h11.our_state is h11.DONE  # (not MUST_CLOSE: no "close", not HTTP/1.0)
                    if self.first_read and not parser.informational:  # the head is the read's start
                        self.pool.remember_head(self.method, self.first_read[:len(self.first_read) - len(self.unread)],
                                                ParsedHead(parser.head, None if self.body.chunked else self.body.remaining,
                                                           self.keep_alive))
                self.consumer.upstream_head(self, parser.head)
                if self.body is not None:
                    self.pump_body()
                    return
            elif isinstance(event, h11.Data):  # (a body h11 frames: read until the daemon closes)
                self.consumer.upstream_data(self, event.data)
            else:  # h11.EndOfMessage
                consumer, self.consumer = self.consumer, None
                self.pool.release(self)
                consumer.upstream_end(self)
                return
        self.update_interest()

    def pump_body(self) -> None:
        """A body porthole frames (BodyFraming): what was read goes on in one piece."""
        body = self.body
        assert body is not None
        if self.state is UpstreamState.RECEIVING and not self.paused and (self.unread or body.done):
            data, self.unread = self.unread, b""
            try:
                chunk = body.feed(data)
            except ValueError as exc:
                self.fail(502, f"malformed response from the daemon: {exc}", "protocol_error")
                return
            if chunk:
                self.consumer.upstream_data(self, chunk)
                if self.state is not UpstreamState.RECEIVING:
                    return  # the consumer closed us (its client went away)
            if body.done:
                consumer, self.consumer = self.consumer, None
                self.pool.release(self)
                consumer.upstream_end(self)
                return
        self.update_interest()

    def next_cycle(self) -> None:
        """Ready for the next exchange: the next answer gets an h11 parser of its own, if any."""
        self.parser, self.body, self.first_read, self.request = None, None, b"", None

    def pause(self) -> None:
        self.paused = True  # (RECEIVING's deadline does not run meanwhile: on_deadline)
        self.update_interest()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if self.state is UpstreamState.RECEIVING:
                self.arm()  # its deadline's clock starts again
            self.loop.soon(self)  # first what h11 already holds, then read again
            self.update_interest()

    def flush(self) -> None:
        if self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
                del self.outbuf[:sent]
            except BlockingIOError:
                pass
            except OSError as exc:
                self.fail(502, upstream_error_message(self.pool.endpoint, exc), "closed")
                return
        self.update_interest()

    def update_interest(self) -> None:
        state = self.state
        if state is UpstreamState.CLOSED:
            return
        if state is UpstreamState.IDLE:
            mask = selectors.EVENT_READ  # only to notice the daemon closing it
        elif state is UpstreamState.CONNECTING:
            mask = selectors.EVENT_WRITE
        else:
            mask = (selectors.EVENT_WRITE if self.outbuf else 0) | (0 if self.paused else selectors.EVENT_READ)
        if mask != self.mask:
            self.mask = mask
            self.loop.watch(self.sock, mask, self)

    @property
    def reusable(self) -> bool:
        """Only a connection that ended its exchange cleanly with nothing extra goes back."""
        if self.body is not None:
            return (self.state is UpstreamState.RECEIVING and self.keep_alive
                    and self.body.done and not self.body.extra and not self.unread)
        answer = self.parser.h11 if self.parser is not None else None
        return (self.state is UpstreamState.RECEIVING and answer is not None and answer.our_state is h11.DONE
                and answer.their_state is h11.DONE and not answer.trailing_data[0])

    def fail(self, status: int, message: str, reason: str | None) -> None:
        """`reason`: one of UPSTREAM_ERROR_REASONS, counted when the failure reaches a consumer
        that will not retry it (None: porthole's own doing, not the daemon's)."""
        consumer, self.consumer = self.consumer, None
        retryable = self.reused and not self.received_any
        self.close()
        if consumer is not None:
            if reason is not None and not retryable:
                self.pool.metrics.upstream_error(reason)
            consumer.upstream_failed(self, status, message, retryable)

    def abort(self, reason: str) -> None:
        self.fail(502, f"porthole {reason}", None)

    def close(self) -> None:
        if self.state is UpstreamState.CLOSED:
            return
        self.enter(UpstreamState.CLOSED)
        self.loop.cancel(self)
        self.consumer = None
        self.loop.forget(self.sock)
        self.sock.close()
        self.pool.discard(self)
