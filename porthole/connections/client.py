"""One client's connection, the server side: parse, answer, deliver, close (ClientConnection).

Its states are ClientState, its legal moves CLIENT_TRANSITIONS, changed in one place
(ClientConnection.enter); its deadlines are client_deadline's, a function of the state.

Invariants:
Rule 1: a client is closed exactly once: gracefully (queue delivered, FIN, then closed
        when it closes or LINGER_SECONDS pass) or aborted (RST, with a reason): on purpose,
        or because the client closed or reset its end mid-exchange (abort(by_client=True)).
        A queued byte is never dropped behind a clean FIN.
Rule 2: at most one exchange is active; the next request is parsed only once the answer to
        the last one is completely queued.
Rule 3: what is read but not parsed is bounded (RequestReader), and so is the work of one
        turn (REQUESTS_PER_TURN requests); a client whose answers pile up unread
        (CLIENT_HIGH_WATER) is not parsed until it reads.
Rule 4: every exchange is reported to the owner exactly once (exchange_done), when its
        last byte is delivered or the connection closes, with the body bytes delivered.
Rule 5: a finite answer stalled longer than --write-timeout aborts the client; a stream
        never times out on writes (it pauses its source instead). Bytes the TLS layer holds
        for the socket count as stalled bytes too: a client that stops reading cannot hold its
        connection in DRAINING with only a close_notify queued.
Rule 6: on a TLS listener all bytes go through its TlsTransport (`wire`), and the TLS
        handshake counts against the head deadline: it must complete within --head-timeout
        of the accept, and a request whose bytes came with it continues that deadline. A
        failed handshake is reported to the owner (handshake_failed) and the connection
        closed: no HTTP is ever read from it.
Rule 7: a connection over a cap (`rejection`) is answered with its 503 as soon as it can be
        (at once; on TLS once the handshake completes), never after a request it would be
        refused anyway: it never waits for a head (start). Only a quiet connection
        (quiet_since) is ever closed to make room for another (evict), so no request and no
        answer is ever cut for it.
"""
from __future__ import annotations

import contextlib
import enum
import selectors
import socket
import struct
from typing import TYPE_CHECKING, Any, Mapping

import h11

from porthole.connections.exchange import Exchange, MAX_REFUSALS_IN_A_ROW, OutputQueue
from porthole.core.clients import ClientFacts, ClientRule
from porthole.core.decide import RequestFacts
from porthole.core.target import Refusal
from porthole.core.wire import READ_CHUNK, RequestReader
from porthole.runtime.config import Endpoint, Settings
from porthole.runtime.loop import Loop, illegal_transition

if TYPE_CHECKING:  # runtime.tls (and ssl) are loaded only for a TLS listener (app.wiring)
    from porthole.runtime.tls import TlsTransport


CLIENT_HIGH_WATER = 256 * 1024  # stop reading upstream while this much is queued for a client
CLIENT_LOW_WATER = 64 * 1024  # ... and resume once it drains below this


LINGER_SECONDS = 2.0  # how long a closing client may keep sending before we drop it


REQUESTS_PER_TURN = 4  # pipelined requests parsed per client per loop pass (fairness)


CLIENT_LEFT = "client went away"  # the reason an answer its client closed on is cut short


class PlainTransport:
    """A plain socket with TlsTransport's interface, so a ClientConnection has one code path."""

    ciphertext = b""  # nothing waits between us and the socket
    buffered = False  # nothing is held above it

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recv, self.send = sock.recv, sock.send  # bound: no call of ours in between

    def push(self) -> None:
        pass

    def close_write(self) -> bool:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        return True


class ClientState(enum.Enum):
    HANDSHAKE = "handshake"  # TLS listeners: the handshake is under way, no HTTP yet
    IDLE = "idle"  # between requests: waiting for the first byte of the next head
    HEAD = "head"  # part of a request head has arrived
    ACTIVE = "active"  # one request is being answered (forwarded, relayed or answered locally)
    DRAINING = "draining"  # the last answer is queued: deliver it, then send FIN
    LINGERING = "lingering"  # FIN sent: discard what the client still sends until it closes
    CLOSED = "closed"

    __hash__ = object.__hash__  # members are singletons; Enum's own __hash__ is Python code


_C = ClientState
CLIENT_TRANSITIONS: Mapping[ClientState, frozenset[ClientState]] = {
    _C.HANDSHAKE: frozenset({_C.IDLE, _C.HEAD, _C.DRAINING, _C.CLOSED}),
    _C.IDLE: frozenset({_C.HEAD, _C.ACTIVE, _C.DRAINING, _C.CLOSED}),
    _C.HEAD: frozenset({_C.ACTIVE, _C.DRAINING, _C.CLOSED}),
    _C.ACTIVE: frozenset({_C.IDLE, _C.HEAD, _C.DRAINING, _C.CLOSED}),
    _C.DRAINING: frozenset({_C.LINGERING, _C.CLOSED}),
    _C.LINGERING: frozenset({_C.CLOSED}),
    _C.CLOSED: frozenset(),
}


def client_deadline(state: ClientState, entered: float, head_since: float, out: OutputQueue,
                    streaming: bool, settings: Settings, tls_queued: bool = False) -> tuple[float | None, bool]:
    """When a client's deadline falls, and whether it is the write-stall one. IDLE:
    --idle-timeout after the last answer was delivered; HANDSHAKE and HEAD: --head-timeout
    after the connection (TLS) or the head began; LINGERING: LINGER_SECONDS; in any open
    state, a finite answer queued but not moving for --write-timeout (a stream pauses its
    source instead), and so are bytes the TLS layer holds for the socket (`tls_queued`: a
    close_notify in DRAINING, tickets, alerts), counted from when they could first have moved
    (the state's start or the last progress)."""
    stall = None
    if state is not ClientState.CLOSED and not streaming:
        if out.buffer:
            stall = out.last_progress + settings.write_timeout
        elif tls_queued:
            stall = max(entered, out.last_progress) + settings.write_timeout
    if state is ClientState.IDLE:
        own = None if out.buffer else max(entered, out.last_progress) + settings.idle_timeout
    elif state is ClientState.HEAD or state is ClientState.HANDSHAKE:
        own = head_since + settings.head_timeout
    elif state is ClientState.LINGERING:
        own = entered + LINGER_SECONDS
    else:
        own = None
    if stall is not None and (own is None or stall <= own):
        return stall, True
    return own, False


class ClientConnection:
    """The server side of one client connection: enforces this module's Rules 1-6."""

    def __init__(self, sock: socket.socket, loop: Loop, owner: Any, settings: Settings,
                 listener: Endpoint, peer: str, identity: str, rejection: str | None = None,
                 facts: ClientFacts = ClientFacts(), tls: TlsTransport | None = None) -> None:
        self.sock = sock
        self.tls = tls
        self.wire: Any = tls if tls is not None else PlainTransport(sock)  # recv() and send() go through it
        self.loop = loop
        self.owner = owner  # on_request(client, request), exchange_done(exchange), client_closed(client)
        self.settings = settings
        self.listener = listener
        self.peer = peer
        self.identity = identity  # whom per-client limits count against
        self.rejection = rejection  # over a connection cap: answered with this 503 at once (Rule 7)
        self.facts = facts  # who the peer is, for the `clients` entries of rules.json
        self.profile = listener.profile  # the owner assigns it (choose_profile), per connection
        self.client_rule: ClientRule | None = None  # ... and the entry that chose it
        self.reader = RequestReader(settings.max_head_bytes)
        self.out = OutputQueue(loop.clock)
        self.exchange: Exchange | None = None
        self.state = ClientState.IDLE if tls is None else ClientState.HANDSHAKE
        self.entered = self.head_since = loop.clock()
        self.head_size = 0  # raw size of the last request head
        self.mask = 0  # the events the loop watches for
        self.budget_pass, self.budget = -1, 0  # requests this pass may still parse (Rule 3)
        self.refusals_in_a_row = 0
        self.rearm()

    # ---- state ---------------------------------------------------------------------------------

    def enter(self, state: ClientState) -> None:
        """The one place a client changes state (and so its deadline)."""
        if state not in CLIENT_TRANSITIONS[self.state]:
            raise illegal_transition(self.state, state)
        old, self.state = self.state, state
        self.entered = self.loop.clock()
        if state is ClientState.HEAD and old is not ClientState.HANDSHAKE:
            self.head_since = self.entered  # (Rule 6) after a handshake, the head goes on from it
        self.rearm()

    def rearm(self) -> None:
        self.loop.set_deadline(self, self.deadline()[0])

    def deadline(self) -> tuple[float | None, bool]:
        streaming = self.exchange is not None and self.exchange.streaming
        return client_deadline(self.state, self.entered, self.head_since, self.out, streaming, self.settings,
                               bool(self.wire.ciphertext))

    def on_deadline(self, now: float) -> None:
        when, stalled = self.deadline()
        if when is None:
            return
        if when > now:
            self.loop.set_deadline(self, when)  # progress since it was set: not yet
        elif stalled:
            self.abort("client stopped reading the response")
        elif self.state is ClientState.HANDSHAKE:
            self.handshake_failed(f"TLS handshake not completed within --head-timeout "
                                  f"{self.settings.head_timeout:g}s")
        elif self.state is ClientState.HEAD:
            self.refuse(Refusal(408, "request head not received in time", close=True))
        elif self.state is ClientState.IDLE:
            self.close()
        elif self.state is ClientState.LINGERING:
            self.finish_close(rst=False, reason=None)

    # ---- reading and parsing -------------------------------------------------------------------

    def on_io(self, mask: int) -> None:
        if self.state is ClientState.HANDSHAKE:
            self.handshake()
            return
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if self.state is ClientState.CLOSED or not mask & selectors.EVENT_READ:
            return
        self.read()

    def handshake(self) -> None:
        try:
            done = self.tls.handshake()  # type: ignore[union-attr]
        except self.tls.Error as exc:  # type: ignore[union-attr]  # runtime.tls's TlsError, without importing it
            self.handshake_failed(str(exc))
            return
        except OSError:
            self.handshake_failed("the client went away during the TLS handshake")
            return
        if not done:
            self.update_interest()
            return
        self.owner.client_identified(self)  # its certificate may choose its profile
        if self.tls.buffered and self.rejection is None:  # type: ignore[union-attr]
            self.enter(ClientState.HEAD)  # request bytes came with the handshake (Rule 6)
            self.read()
        else:
            self.enter(ClientState.IDLE)
            start(self)  # over a cap, its 503 now (Rule 7)

    def handshake_failed(self, reason: str) -> None:
        self.owner.handshake_failed(self, reason)
        self.finish_close(rst=False, reason=reason)

    def read(self) -> None:
        try:
            data = self.wire.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self.abort(CLIENT_LEFT, by_client=True)
            return
        if self.state in (ClientState.DRAINING, ClientState.LINGERING):
            if not data:
                self.reader.eof = True
                if self.state is ClientState.LINGERING:
                    self.finish_close(rst=False, reason=None)
                else:
                    self.update_interest()
            return  # discarded: we only wait until the client has read our last answer
        if not data and self.exchange is not None:
            # Gone mid-exchange (as nginx reads it): free the upstream at once rather than
            # hold a daemon connection, a stream slot and a connection slot for nobody.
            self.abort(CLIENT_LEFT, by_client=True)
            return
        self.reader.add(data)
        if self.exchange is None:
            self.parse()  # at most REQUESTS_PER_TURN a pass, turns included
            if self.state is ClientState.IDLE and self.reader.pending:
                self.enter(ClientState.HEAD)  # part of a head (or a turn's worth): its deadline runs
        else:
            self.update_interest()

    def wake(self) -> None:
        """Something was queued or may be parsed: one turn later in this pass sends it all with
        one system call, however many events were queued."""
        self.loop.turns[self] = None  # Loop.soon, inlined: this is the hottest call there is

    def on_turn(self) -> None:
        if self.out.buffer or self.wire.ciphertext:
            self.flush()
        if self.wire.buffered and self.reader.wants_more and self.state is not ClientState.CLOSED:
            self.read()  # (TlsTransport Rule 4) the socket will not tell us again
        if self.exchange is None and self.state in (ClientState.IDLE, ClientState.HEAD):
            self.parse()

    def parse(self) -> None:
        if self.budget_pass != self.loop.passes:  # a new pass: a new budget (Rule 3)
            self.budget_pass, self.budget = self.loop.passes, REQUESTS_PER_TURN
        while True:
            if self.exchange is not None or self.state not in (ClientState.IDLE, ClientState.HEAD):
                break
            if not self.budget:
                self.loop.soon(self)  # more may be waiting: the next pass, after everyone else
                break
            if len(self.out.buffer) >= CLIENT_HIGH_WATER:
                break  # answers pile up unread: on_io parses on once the client drains them
            try:
                event = self.reader.next_event()
            except h11.RemoteProtocolError as exc:
                self.refuse(Refusal(exc.error_status_hint, f"malformed request: {exc}", close=True))
                break
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.Request):
                self.budget -= 1
                self.begin(event)
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                break
            else:  # a refused request's body is never read: we close instead
                break
        self.update_interest()

    def begin(self, request: h11.Request) -> None:
        facts = RequestFacts(request.method.decode("latin-1"), request.target, list(request.headers),
                             self.listener.kind, self.profile, request.http_version)
        self.exchange = Exchange(self, facts, self.loop.clock(),
                                 client_rule=self.client_rule.label if self.client_rule else None)
        self.enter(ClientState.ACTIVE)
        if self.reader.declares_body:
            self.exchange.close_after = True  # a body is never read: the connection closes instead
        self.head_size = self.reader.head_bytes
        if self.rejection is not None:
            self.refuse(Refusal(503, self.rejection, close=True))
        else:
            self.owner.on_request(self, self.exchange)

    # ---- answering -----------------------------------------------------------------------------

    def refuse(self, refusal: Refusal) -> None:
        """Answer locally with a Docker-style JSON error."""
        if self.exchange is None:  # the request head never parsed: log what we know
            self.exchange = Exchange(self, RequestFacts("-", b"", [], self.listener.kind, self.profile, b""),
                                     self.loop.clock(), client_rule=self.client_rule.label if self.client_rule else None)
            if self.state is ClientState.IDLE:
                self.enter(ClientState.HEAD)
        self.refusals_in_a_row += 1
        self.exchange.refuse(refusal, last_straw=self.refusals_in_a_row >= MAX_REFUSALS_IN_A_ROW)

    def finish_exchange(self) -> None:
        """The answer is completely queued: the ledger logs it once delivered."""
        exchange, self.exchange = self.exchange, None
        assert exchange is not None
        exchange.source = None
        self.out.end(exchange)
        if exchange.close_after or self.owner.stopping:
            self.close()
            return
        self.enter(ClientState.HEAD if self.reader.pending else ClientState.IDLE)
        self.flush()  # the answer's last bytes leave now
        if self.reader.pending:
            self.wake()  # the next pipelined request, in a turn (no recursion)

    # ---- delivering and closing ----------------------------------------------------------------

    @property
    def has_room(self) -> bool:
        return len(self.out.buffer) < CLIENT_HIGH_WATER

    def flush(self) -> None:
        if self.state is ClientState.CLOSED:
            return
        try:
            self.wire.push()  # TLS handshake, ticket or alert bytes first
            done = self.out.send(self.wire)
        except OSError:
            self.abort(CLIENT_LEFT, by_client=True)
            return
        for exchange in done:
            self.owner.exchange_done(exchange)
        if self.state is ClientState.DRAINING and not self.out.buffer:
            try:  # False: TLS, and close_notify still waits for the socket (Rule 5's deadline)
                closed = self.wire.close_write()
            except OSError:
                closed = True
            if closed and self.reader.eof:
                self.finish_close(rst=False, reason=None)
                return
            if closed:
                self.enter(ClientState.LINGERING)
        if self.exchange is not None and self.exchange.source is not None and len(self.out.buffer) < CLIENT_LOW_WATER:
            self.exchange.source.resume(self.exchange)
        elif (self.exchange is None and self.state in (ClientState.IDLE, ClientState.HEAD)
              and self.reader.pending and len(self.out.buffer) < CLIENT_LOW_WATER):
            self.loop.soon(self)  # parsing was paused while our answers were unread
        self.rearm()  # the write-stall deadline moves with the queue
        self.update_interest()

    def update_interest(self) -> None:
        if self.state is ClientState.CLOSED:
            return
        mask = selectors.EVENT_WRITE if self.out.buffer or self.wire.ciphertext else 0
        if self.reader.wants_more:
            mask |= selectors.EVENT_READ  # a full pipelining backlog stops reading this client
            if self.wire.buffered:
                self.loop.soon(self)  # read in a turn: what the SSLObject holds never polls ready
        if mask != self.mask:
            self.mask = mask
            self.loop.watch(self.sock, mask, self)

    def close(self) -> None:
        """Graceful: deliver what is queued, send FIN, linger, close."""
        if self.state in (ClientState.DRAINING, ClientState.LINGERING, ClientState.CLOSED):
            return
        if self.exchange is not None:  # shutting down: a request never answered
            self.abort("proxy closing the connection")
            return
        self.reader.backlog.clear()
        self.enter(ClientState.DRAINING)
        self.flush()

    def abort(self, reason: str, by_client: bool = False) -> None:
        """RST, so a truncated response never looks like a clean end: on purpose, or `by_client`
        (it closed or reset its end first, or its socket failed: Exchange.cut_short)."""
        if self.exchange is not None:
            self.exchange.cut_short(reason, by_client)
        self.finish_close(rst=True, reason=reason, by_client=by_client)

    def finish_close(self, rst: bool, reason: str | None, by_client: bool = False) -> None:
        if self.state is ClientState.CLOSED:
            return
        self.enter(ClientState.CLOSED)
        self.loop.cancel(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            if exchange.source is not None:
                exchange.source.cancel(exchange)
                exchange.source = None
            self.out.end(exchange)
        for pending in self.out.settle():
            if pending.delivered < pending.body_bytes or pending is exchange:
                pending.cut_short(reason or "client went away before the answer was delivered", by_client)
            self.owner.exchange_done(pending)
        self.loop.forget(self.sock)
        if rst:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        self.owner.client_closed(self)


# Admission's view of a connection (the owner's caps: app.wiring Rule 2)

def start(client: ClientConnection) -> None:
    """The owner has admitted `client` (and assigned its profile): watch its socket, and read
    what came with the connection at once, so that a burst of newer connections from the same
    client cannot take it for quiet (evict) before its first request is read. Over a cap, its
    503 goes at once instead (Rule 7; on TLS, ClientConnection.handshake calls this once done)."""
    if client.rejection is not None and client.state is ClientState.IDLE:
        client.refuse(Refusal(503, client.rejection, close=True))
        return
    if client.tls is None:
        client.read()  # a request sent with the connection is read now: it never looks quiet
    client.update_interest()


def quiet_since(client: ClientConnection) -> float | None:
    """Since when `client` has held nothing its client waits for, if it holds nothing; None
    otherwise. Quiet: IDLE with its last answer delivered (a keep-alive between requests; since
    that answer left), HEAD with part of a head and nothing else (nothing queued, no whole
    request waiting its turn; since the head began), HANDSHAKE (since the accept), LINGERING
    (answered, FIN sent; since then). Never quiet: a request in progress (ACTIVE, streams
    included), an answer still being delivered (DRAINING, or queued), a connection over a cap
    (its 503), CLOSED."""
    state = client.state
    if client.rejection is not None or client.exchange is not None or client.out.buffer or client.wire.ciphertext:
        return None
    if state is ClientState.IDLE:
        return max(client.entered, client.out.last_progress)
    if state is ClientState.HEAD:
        return None if client in client.loop.turns else client.head_since
    if state is ClientState.HANDSHAKE:
        return client.head_since
    if state is ClientState.LINGERING:
        return client.entered
    return None


def evict(client: ClientConnection, reason: str) -> None:
    """Close a quiet `client` (quiet_since) at once, without lingering, to make room for a newer
    connection (Rule 7). An idle keep-alive (close_notify first, on TLS) or a lingering close
    gets FIN; part of a head or of a handshake gets RST."""
    graceful = client.state is ClientState.IDLE or client.state is ClientState.LINGERING
    if client.state is ClientState.IDLE:
        with contextlib.suppress(OSError):
            client.wire.close_write()
    client.finish_close(rst=not graceful, reason=reason)
