"""Where an exchange's answer comes from: its own Relay, a Lookup before it, a SharedStream or a
CoalescedRead that several exchanges share.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import h11

from porthole.connections.exchange import Exchange
from porthole.connections.pool import UpstreamPool
from porthole.connections.upstream import UpstreamConnection, UpstreamState, upstream_error_message
from porthole.core.rewrite import TransformError
from porthole.runtime.loop import Loop


FOLLOWER_PATIENCE_SECONDS = 3.0  # a coalesced read whose answer does not move for this long
# while a follower waits behind it no longer holds that follower (CoalescedRead Rule 2)


class Relay:
    """One exchange's response, from its own daemon connection to its client.

    Rule 1: an exchange has exactly one source (exchange.source): its Relay or one SharedStream.
    Rule 2: the daemon is read only while the client has room (CLIENT_HIGH_WATER); the client
            resumes it once its queue is under CLIENT_LOW_WATER.
    Rule 3: a pooled connection that fails before any response byte is retried once, on a fresh
            connection (a body-less GET or HEAD is safe to repeat).
    Rule 4: before the response head a failure is answered (502, or 504 for the head timeout);
            after it, the client is aborted.
    Rule 5: a finite answer (`finite`) has --response-timeout between two of its bytes
            (UpstreamConnection's RECEIVING deadline); a stream has no such deadline.
    """

    def __init__(self, pool: UpstreamPool, exchange: Exchange, request: h11.Request) -> None:
        self.pool = pool
        self.exchange = exchange
        self.request = request
        self.conn: UpstreamConnection | None = None
        self.retried = False
        exchange.source = self

    @property
    def finite(self) -> bool:
        """(Rule 5) Read by the daemon connection at each request it sends."""
        return not self.exchange.streaming

    def start(self, fresh: bool = False) -> None:
        try:
            self.conn = self.pool.acquire(self, self.request, fresh=fresh)
        except OSError as exc:
            self.exchange.fail(502, upstream_error_message(self.pool.endpoint, exc))

    def upstream_head(self, conn: UpstreamConnection, head: h11.Response) -> None:
        self.exchange.send_head(head)
        self.apply_backpressure(conn)

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        self.exchange.send_body(data)
        self.apply_backpressure(conn)

    def apply_backpressure(self, conn: UpstreamConnection) -> None:
        client = self.exchange.client
        if not self.exchange.active:
            conn.close()  # the client is gone (cancel() ran) or moved on
        elif not client.has_room:
            conn.pause()

    def upstream_end(self, conn: UpstreamConnection) -> None:
        self.conn = None
        if self.exchange.active:
            self.exchange.end_body()

    def upstream_failed(self, conn: UpstreamConnection, status: int, message: str, retryable: bool) -> None:
        self.conn = None
        if retryable and not self.retried:
            self.retried = True  # a stale pooled connection: once more, on a fresh one
            self.start(fresh=True)
            return
        self.exchange.fail(status, message)

    def resume(self, exchange: Exchange) -> None:
        if self.conn is not None:
            self.conn.resume()

    def cancel(self, exchange: Exchange) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.consumer = None
            conn.close()


class Lookup(Relay):
    """Asks the daemon before answering under a visible scope (app.dispatch.look_up): which object
    a per-object request (logs, stats, top, ...) names, an inspect's own answer, or the visible
    objects, so that the scope is decided about the very object that will answer: a Relay whose
    answer is kept, not relayed (its connection, retry and cancel are the Relay's).

    Rule 1: until it resolves, the exchange's source is the Lookup; then its Relay, another
            Lookup, or an answer.
    Rule 2: a request about an object is then forwarded with the object's full ID as the daemon
            resolved it, so a name, a short ID or a rename in between cannot swap in another
            object (or answered from the Lookup's own answer, when that answer is the inspect).
    Rule 3: the daemon's answer is bounded by --max-filter-bytes; a failure or an answer that is
            not JSON ends the exchange with a 502 (a filter's failure: the Lookup is part of the
            filtering): nothing is forwarded unchecked.
    Rule 4: its head and body are kept as the daemon sent them (head, body): an answer made from
            them is the daemon's, byte for byte, filtered like any other.
    Rule 5: its own answer is finite, whatever the request it resolves for (Relay Rule 5).
    """

    finite = True

    def __init__(self, pool: UpstreamPool, exchange: Exchange, request: h11.Request,
                 resolved: Callable[[int, Any], None]) -> None:
        super().__init__(pool, exchange, request)
        self.resolved = resolved  # (status, parsed JSON or None), once the answer is complete
        self.status = 0
        self.head: h11.Response | None = None
        self.body = bytearray()

    def upstream_head(self, conn: UpstreamConnection, head: h11.Response) -> None:
        self.status = head.status_code
        self.head = head

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        self.body += data
        if len(self.body) > self.pool.settings.max_filter_bytes:
            self.exchange.transform_failed(TransformError(  # (cancels this Lookup first)
                f"the daemon's answer about the object is over --max-filter-bytes {self.pool.settings.max_filter_bytes}"))

    def upstream_end(self, conn: UpstreamConnection) -> None:
        self.conn = None
        if not self.exchange.active:
            return
        try:
            document = json.loads(self.body) if self.body else None
        except (ValueError, RecursionError):
            self.exchange.transform_failed(TransformError(
                f"the daemon's answer about the object (status {self.status}) is not JSON"))
            return
        self.exchange.source = None
        self.resolved(self.status, document)

    def resume(self, exchange: Exchange) -> None:
        pass  # nothing flows to the client while looking up


class SharedStream:
    """One /events subscription fanned out to every watcher of the same canonical target: the
    daemon serves one subscriber, and an event costs porthole one parse plus one send per watcher.

    Rule 1: a watcher joins at an event boundary only: before the head, or right after a newline
            of the body. Until then it is pending and receives nothing.
    Rule 2: an answer that is not an open-ended 200 stream (an error, a Content-Length body) is
            never shared with a late joiner: the stream leaves the registry at its head, so later
            watchers get their own subscription.
    Rule 3: a lone watcher that falls CLIENT_HIGH_WATER behind pauses the daemon, as an unshared
            stream would; with others sharing it, it is disconnected instead.
    Rule 4: every watcher is answered: the stream, a 502 when the subscription fails before its
            head (pending ones too), or an abort after.
    """

    finite = False  # (Relay Rule 5) a stream: no deadline between its events

    def __init__(self, key: str, pool: UpstreamPool, registry: dict[str, SharedStream],
                 request: h11.Request, reopen: Callable[[Exchange], None]) -> None:
        self.key = key
        self.pool = pool
        self.registry = registry
        self.request = request
        self.reopen = reopen  # a pending watcher of a stream that ended gets a new subscription
        self.watchers: list[Exchange] = []
        self.pending: list[Exchange] = []
        self.head: h11.Response | None = None
        self.at_boundary = True
        self.conn: UpstreamConnection | None = None

    def open(self, first: Exchange) -> None:
        self.registry[self.key] = self
        self.watchers.append(first)
        first.source = self
        try:  # fresh: a stream outlives any pooled connection's staleness check
            self.conn = self.pool.acquire(self, self.request, fresh=True)
        except OSError as exc:
            self.upstream_failed(None, 502, upstream_error_message(self.pool.endpoint, exc), False)

    def join(self, exchange: Exchange) -> None:
        exchange.source = self
        if self.head is None:
            self.watchers.append(exchange)
            return
        self.pending.append(exchange)
        if self.at_boundary:
            self.admit_pending()
        elif self.conn is not None:
            self.conn.resume()  # a lone slow watcher may have paused it mid-event: not alone now

    def admit_pending(self) -> None:
        pending, self.pending = self.pending, []
        for exchange in pending:
            self.watchers.append(exchange)
            exchange.send_head(self.head)  # type: ignore[arg-type]
        if self.conn is not None and len(self.watchers) > 1:
            self.conn.resume()  # paused by a lone slow watcher: no longer alone

    def upstream_head(self, conn: UpstreamConnection, head: h11.Response) -> None:
        self.head = head
        open_ended = head.status_code == 200 and not any(
            name.lower() == b"content-length" for name, _ in head.headers.raw_items())
        if not open_ended:
            self.leave_registry()
        for exchange in list(self.watchers):
            exchange.send_head(head)

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        if self.pending:
            boundary = data.find(b"\n") + 1
            if boundary:
                self.fan_out(data[:boundary])
                self.at_boundary = True
                self.admit_pending()
                data = data[boundary:]
        if data:
            self.fan_out(data)
            self.at_boundary = data.endswith(b"\n")
        if len(self.watchers) == 1 and not self.pending and not self.watchers[0].client.has_room \
                and self.conn is not None:
            self.conn.pause()  # resumed by resume() when the lone watcher drains

    def fan_out(self, data: bytes) -> None:
        lone = len(self.watchers) == 1 and not self.pending
        for exchange in list(self.watchers):
            client = exchange.client
            if not lone and not client.has_room:
                client.abort("too slow for a shared event stream")
                continue
            exchange.send_body(data)

    def upstream_end(self, conn: UpstreamConnection) -> None:
        self.conn = None
        self.leave_registry()
        watchers, self.watchers = self.watchers, []
        for exchange in watchers:
            if exchange.active:
                exchange.end_body()
        pending, self.pending = self.pending, []
        for exchange in pending:
            exchange.source = None
            self.reopen(exchange)

    def upstream_failed(self, conn: UpstreamConnection | None, status: int, message: str, retryable: bool) -> None:
        self.conn = None
        self.leave_registry()
        everyone = self.watchers + self.pending
        self.watchers, self.pending = [], []
        for exchange in everyone:
            exchange.fail(status, message)

    def resume(self, exchange: Exchange) -> None:
        if self.conn is not None and len(self.watchers) == 1:
            self.conn.resume()

    def cancel(self, exchange: Exchange) -> None:
        for group in (self.watchers, self.pending):
            if exchange in group:
                group.remove(exchange)
        if not self.watchers and not self.pending:  # the last watcher left: unsubscribe
            self.leave_registry()
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.consumer = None
                conn.close()
        elif self.conn is not None:
            self.conn.resume()  # whoever paused it may have been the one who left

    def leave_registry(self) -> None:
        if self.registry.get(self.key) is self:
            del self.registry[self.key]


class CoalescedRead:
    """One finite GET sent once for every client that asked for it before it was sent: polled
    lists cost the daemon one answer per round trip, however many clients poll.

    Rule 1: a client joins a read only while nothing of it has been written to the daemon (not
            yet acquired, or its connection still CONNECTING). Otherwise it joins the read queued
            to follow, which is sent once the current one has ended. So no client ever gets an
            answer to a daemon request sent before its own request arrived.
    Rule 2: per key (method, forwarded target and headers) at most one read is in flight and
            at most one waits behind it: the daemon never serves the same read twice at once
            while it moves, and a newcomer waits for at most the rest of one answer before its
            own is sent. A read that stops moving hands over: its follower is sent, and
            newcomers join that one. At once when a member that stopped reading paused it
            (Rule 4), so a client that stops reading never holds up anyone else's identical
            read; after FOLLOWER_PATIENCE_SECONDS without a byte of its answer (none yet, or
            none since the last) when the daemon stalls, so a stalled answer holds a later
            identical request for a few seconds at most, never for as long as it lasts.
            Only answers known to be finite are coalesced (decide.is_known_finite): a stream
            moves, and would hold its follower forever.
    Rule 3: each member gets the head and every body chunk through its own exchange
            (send_head, send_body, end_body), so its profile's ResponseTransform filters its
            copy; the bytes are immutable, so sharing them shares nothing mutable.
    Rule 4: the daemon is read only while every member has room (the slowest paces the rest;
            one that stops reading is cut by its own --write-timeout). A member that leaves
            is removed; when the last leaves, the daemon connection is closed.
    Rule 5: a failure before the head answers every member (502, 504); after it, every
            member is aborted. A stale pooled connection is retried once on a fresh one: that
            request, too, is sent after every member arrived.
    """

    finite = True  # (Relay Rule 5) what is coalesced has an end

    def __init__(self, key: tuple, pool: UpstreamPool, registry: dict[tuple, CoalescedRead],
                 request: h11.Request, loop: Loop | None = None) -> None:
        self.key = key
        self.pool = pool
        self.registry = registry  # key -> the read in flight (or about to be sent)
        self.request = request
        self.loop = loop  # for the follower's patience (Rule 2); None: it waits for the end
        self.members: list[Exchange] = []
        self.follower: CoalescedRead | None = None  # who arrived after this one was sent
        self.conn: UpstreamConnection | None = None
        self.started = False
        self.retried = False
        self.moved = 0.0  # when it was sent, or its answer last moved (Rule 2)

    @property
    def joinable(self) -> bool:
        """(Rule 1) Nothing of the request has reached the daemon yet."""
        return not self.started or (self.conn is not None and self.conn.state is UpstreamState.CONNECTING)

    def join(self, exchange: Exchange) -> None:
        if self.joinable:
            exchange.source = self
            self.members.append(exchange)
            return
        if self.follower is None:
            self.follower = CoalescedRead(self.key, self.pool, self.registry, self.request, self.loop)
            if self.loop is not None:  # (Rule 2) how long it may wait for this read
                self.loop.set_deadline(self, self.moved + FOLLOWER_PATIENCE_SECONDS)
        self.follower.join(exchange)

    def start(self, fresh: bool = False) -> None:
        self.registry.setdefault(self.key, self)  # (a retry after its hand-over stays out of it)
        self.started = True
        if self.loop is not None:
            self.moved = self.loop.clock()
        try:
            self.conn = self.pool.acquire(self, self.request, fresh=fresh)
        except OSError as exc:
            self.upstream_failed(None, 502, upstream_error_message(self.pool.endpoint, exc), False)

    def hand_over(self) -> None:
        """This read is over, stalled or has nobody left: the follower, if anyone still waits in
        it, is sent now (Rule 2)."""
        if self.registry.get(self.key) is self:
            del self.registry[self.key]
        if self.loop is not None:
            self.loop.cancel(self)
        follower, self.follower = self.follower, None
        if follower is not None and follower.members:
            follower.start()

    def on_deadline(self, now: float) -> None:
        """(Rule 2) A follower waits: hand over if the answer has not moved for the patience."""
        if self.follower is None:
            return
        due = self.moved + FOLLOWER_PATIENCE_SECONDS
        if due > now:
            self.loop.set_deadline(self, due)  # type: ignore[union-attr]
            return
        self.hand_over()

    def upstream_head(self, conn: UpstreamConnection, head: h11.Response) -> None:
        if self.loop is not None:
            self.moved = self.loop.clock()
        for exchange in list(self.members):
            exchange.send_head(head)
        self.apply_backpressure(conn)

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        if self.loop is not None:
            self.moved = self.loop.clock()
        for exchange in list(self.members):
            exchange.send_body(data)
        self.apply_backpressure(conn)

    def apply_backpressure(self, conn: UpstreamConnection) -> None:
        if any(not exchange.client.has_room for exchange in self.members):
            conn.pause()
            self.hand_over()  # (Rule 2) stalled: whoever comes next is not held up by it

    def upstream_end(self, conn: UpstreamConnection | None) -> None:
        self.conn = None
        members, self.members = self.members, []
        self.hand_over()
        for exchange in members:
            if exchange.active:
                exchange.end_body()

    def upstream_failed(self, conn: UpstreamConnection | None, status: int, message: str, retryable: bool) -> None:
        self.conn = None
        if retryable and not self.retried and self.members:
            self.retried = True  # a stale pooled connection: once more, on a fresh one
            self.start(fresh=True)
            return
        members, self.members = self.members, []
        self.hand_over()
        for exchange in members:
            exchange.fail(status, message)

    def resume(self, exchange: Exchange) -> None:
        if self.conn is not None and all(member.client.has_room for member in self.members):
            self.conn.resume()

    def cancel(self, exchange: Exchange) -> None:
        if exchange in self.members:
            self.members.remove(exchange)
        if self.members or not self.started:
            self.resume(exchange)  # whoever paused it may have been the one who left
            return
        conn, self.conn = self.conn, None  # nobody is left to answer: stop asking (Rule 4)
        if conn is not None:
            conn.consumer = None
            conn.close()
        self.hand_over()
