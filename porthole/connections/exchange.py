"""One request and its answer (Exchange), and what is queued for a client (OutputQueue)."""
from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, TYPE_CHECKING

import h11

from porthole.core.decide import Decision, RequestFacts
from porthole.core.objects import ObjectHidden
from porthole.core.filters import ResponseFilter
from porthole.core.rewrite import ResponseRewriter, ResponseTransform, TransformError
from porthole.core.target import Refusal
from porthole.core.wire import BodyWriter, FramingError, client_keeps_alive, error_body, response_head

if TYPE_CHECKING:
    from porthole.connections.client import ClientConnection


MAX_REFUSALS_IN_A_ROW = 100  # then the connection is closed: refusals are cheap, not free


@dataclass(eq=False)
class Exchange:
    """One request/response on a client connection, from request head to its log line, and
    the sink its response is written into."""

    client: ClientConnection
    facts: RequestFacts
    started: float
    decision: Decision | None = None
    status: int | None = None
    outcome: str = "allow"  # allow, would_deny (learn or warn mode), deny or error
    reason: str | None = None
    ended: str | None = None  # None: complete; "client closed" or "aborted" (cut_short)
    body_bytes: int = 0  # body bytes queued for the client
    delivered: int = 0  # ... of which the client's socket accepted
    source: Any = None  # its one source of response bytes: a Relay or a SharedStream
    response_started: bool = False  # a response head is queued: failures now abort
    close_after: bool = False
    transform: ResponseTransform | None = None
    rewriter: ResponseRewriter | None = None
    filter: ResponseFilter | None = None  # the profile's response filter, for its counts
    client_rule: str | None = None  # the `clients` entry that chose facts.profile, if any
    writer: BodyWriter | None = None  # frames the body once the head is written

    def write_head(self, head: h11.Response) -> None:
        facts = self.facts
        data, self.writer, close = response_head(head, facts.method, facts.http_version,
                                                 client_keeps_alive(facts.http_version, facts.headers))
        self.close_after = self.close_after or close
        self.response_started = True
        self.client.out.write(data)

    def write_body(self, data: bytes) -> None:
        """Raises FramingError for more body than the head announced."""
        self.client.out.write_body(self.writer.data(data), len(data), self)  # type: ignore[union-attr]

    def write_end(self) -> None:
        """Raises FramingError for less body than the head announced."""
        self.client.out.write(self.writer.end())  # type: ignore[union-attr]

    @property
    def streaming(self) -> bool:
        return self.decision is not None and self.decision.streaming

    @property
    def active(self) -> bool:
        """Still the client's current exchange (not finished, not closed)."""
        return self.client.exchange is self

    # The response, written by porthole (wire.response_head, wire.BodyWriter) into the client's
    # OutputQueue. The sources call send_head, send_body, end_body and fail; local answers, answer.

    def answer(self, status: int, message: str, close: bool = False, as_daemon: bool = False) -> None:
        """Answer locally with a Docker-style JSON error."""
        client, body = self.client, error_body(message, as_daemon)
        self.status = status
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
        if close:
            headers.append((b"Connection", b"close"))
            self.close_after = True
        self.rewriter = None  # a local answer is never transformed
        self.write_head(h11.Response(status_code=status, headers=headers, _parsed=True))  # (porthole's own)
        if self.facts.method != "HEAD":
            self.write_body(body)
        self.write_end()
        client.finish_exchange()

    def refuse(self, refusal: Refusal, last_straw: bool = False) -> None:
        """Answer with the refusal; `last_straw`: the client has had MAX_REFUSALS_IN_A_ROW of
        them in a row, so its connection closes after this one."""
        self.outcome = "deny" if refusal.status in (403, 429) else "error"
        self.reason = refusal.reason
        close = refusal.close
        if last_straw and not close:
            close = True
            self.reason += f" (closing the connection after {MAX_REFUSALS_IN_A_ROW} refusals in a row)"
        self.answer(refusal.status, refusal.reason, close=close)

    def send_head(self, head: h11.Response) -> None:
        client = self.client
        client.refusals_in_a_row = 0
        self.status = head.status_code
        if self.transform is not None and 200 <= head.status_code < 300:
            self.rewriter = ResponseRewriter(self.transform, head, self.facts.method)
            head = self.rewriter.head()
            if head is None:
                return  # held until the whole body is rewritten
        self.write_head(head)
        client.wake()

    def send_body(self, data: bytes) -> None:
        if self.rewriter is not None:
            try:
                data = self.rewriter.feed(data)
            except TransformError as exc:
                self.transform_failed(exc)
                return
        if data and self.facts.method != "HEAD":  # a filtered HEAD went as GET: its head answers
            try:
                self.write_body(data)
            except FramingError as exc:
                self.client.abort(f"the daemon's answer: {exc}")
                return
            self.client.wake()

    def end_body(self) -> None:
        client = self.client
        try:
            if self.rewriter is not None:
                try:
                    head, data = self.rewriter.finish()
                except TransformError as exc:
                    self.transform_failed(exc)
                    return
                if head is not None:
                    self.write_head(head)
                if data:
                    self.write_body(data)
            self.write_end()
        except FramingError as exc:
            client.abort(f"the daemon's answer: {exc}")
            return
        client.finish_exchange()

    def transform_failed(self, exc: TransformError) -> None:
        """Fail closed: never the untransformed bytes. A hidden object is answered as missing."""
        if self.source is not None:
            self.source.cancel(self)
        if isinstance(exc, ObjectHidden) and self.active and not self.response_started:
            self.source = None
            self.outcome = "deny" if exc.status == 404 else "error"
            self.reason = ("not visible to this profile, or missing" if exc.status == 404
                           else f"the daemon answered the lookup with {exc.status}")
            self.answer(exc.status, exc.message, as_daemon=True)
            return
        self.fail(502, f"response filter failed: {exc}")

    def fail(self, status: int, message: str) -> None:
        """The source could not deliver: answer if nothing was sent yet, else abort the client
        (a broken response never ends cleanly)."""
        if not self.active:
            return
        self.source = None
        self.outcome, self.reason = "error", message
        if self.response_started:
            self.client.abort(message)
        else:
            self.answer(status, message)

    def stop(self) -> None:
        """The proxy is stopping: a stream ends now (cleanly, if its head was sent); a finite
        answer is delivered, then the connection closes."""
        self.close_after = True
        if self.streaming:
            self.end_stream("stream ended: proxy shutting down", "porthole is shutting down")

    def end_stream(self, reason: str, unanswered: str) -> None:
        """End a stream now: cleanly if its head was sent (the client sees the end and may ask
        again), else a 503 saying `unanswered`; either way its connection then closes."""
        self.close_after = True
        if self.source is not None:
            self.source.cancel(self)
            self.source = None
        if not self.response_started:
            self.answer(503, unanswered, close=True)
            return
        self.reason = reason
        try:
            self.write_end()
        except FramingError:
            self.client.abort(self.reason)
            return
        self.client.finish_exchange()

    def cut_short(self, reason: str, by_client: bool = False) -> None:
        """Its connection closes before its answer was delivered: it ended "client closed" (the
        client closed or reset its end: `by_client`) or "aborted" (porthole reset it). A stream
        its client closed ended as streams end: its decision stands, with no reason. Anything
        else cut short turns an "allow" into an "error" with the reason: an answer porthole cut,
        and a finite answer its client did not wait for (it has an end the client asked for and
        did not get, often a client's time-out: a daemon too slow for its clients shows up as
        errors). The first ending and the first reason given are kept."""
        if self.ended is None:
            self.ended = "client closed" if by_client else "aborted"
        if self.ended == "client closed" and self.streaming:
            return
        if self.outcome == "allow":
            self.outcome = "error"
        self.reason = self.reason or reason


class OutputQueue:
    """Bytes waiting for a client's socket, and a ledger of whose body bytes they are.

    Rule 1: an exchange's body bytes count as delivered only once the socket accepted them.
    Rule 2: an exchange is complete once the socket accepted its last byte.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.buffer = bytearray()
        self.queued = 0  # bytes ever queued
        self.sent = 0  # bytes ever accepted by the socket
        self.last_progress = clock()
        self.payloads: deque[tuple[int, int, Exchange]] = deque()  # (start, length, exchange)
        self.ends: deque[tuple[int, Exchange]] = deque()  # (offset after its last byte, exchange)

    def __len__(self) -> int:
        return len(self.buffer)

    def write(self, data: bytes) -> None:
        if not self.buffer:
            self.last_progress = self.clock()  # the write-stall clock starts now
        self.buffer += data
        self.queued += len(data)

    def write_body(self, wire: bytes, payload: int, exchange: Exchange) -> None:
        """Queue `wire`, which carries `payload` body bytes (framed by BodyWriter: chunked adds CRLF)."""
        trailer = 2 if len(wire) > payload else 0
        self.payloads.append((self.queued + len(wire) - payload - trailer, payload, exchange))
        exchange.body_bytes += payload
        self.write(wire)

    def end(self, exchange: Exchange) -> None:
        self.ends.append((self.queued, exchange))

    def send(self, sock: socket.socket) -> list[Exchange]:
        """Send what the socket takes; return the exchanges now completely delivered.
        Raises OSError when the client is gone."""
        if self.buffer:
            try:
                sent = sock.send(self.buffer)
            except BlockingIOError:
                sent = 0
            if sent:
                del self.buffer[:sent]
                self.sent += sent
                self.last_progress = self.clock()
        while self.payloads and self.payloads[0][0] + self.payloads[0][1] <= self.sent:
            _, length, exchange = self.payloads.popleft()
            exchange.delivered += length
        done = []
        while self.ends and self.ends[0][0] <= self.sent:
            done.append(self.ends.popleft()[1])
        return done

    def settle(self) -> list[Exchange]:
        """The connection is closing: credit partly sent payloads; return every exchange still
        in the ledger (each appears once)."""
        for start, length, exchange in self.payloads:
            exchange.delivered += max(0, min(length, self.sent - start))
        self.payloads.clear()
        pending = list(dict.fromkeys(exchange for _, exchange in self.ends))
        self.ends.clear()
        self.buffer.clear()
        return pending
