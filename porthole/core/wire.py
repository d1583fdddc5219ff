"""The bytes on either side, read and written.

h11 parses every head on both sides: each client request head (RequestReader) and each
daemon response head (UpstreamConnection gives it to an h11 client connection). What porthole
sends is written here, from values h11 parsed and checked, or porthole made: the request to the
daemon (request_bytes), the response heads and bodies to clients (response_head, BodyWriter),
framed exactly as h11's server side frames them; tests/unit/core/test_wire.py checks, on
generated heads, methods, versions and bodies, that they write the bytes h11 writes and close
where h11 would. A daemon body with a length or chunked is framed by BodyFraming, stricter than
h11 (fuzzed and differential-tested against it).

Invariants:
  1. A head is interpreted by h11 alone. A head byte for byte equal to one h11 accepted (from
     the same initial state) is that head again; porthole compares bytes, never parses them.
  2. A body never goes out as if it matched its head when it does not (FramingError).
  3. An answer with both Content-Length and Transfer-Encoding, or with control bytes in its
     head, is refused (relayed_head), never relayed; hop-by-hop headers are not relayed.
  4. What is read but not parsed is bounded (RequestReader), and so is every table here
     (MAX_REMEMBERED_HEADS entries, then dropped).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import h11

from porthole.core.target import CONTROL_BYTES


READ_CHUNK = 65536
MAX_REMEMBERED_HEADS = 256  # distinct heads h11 parsed kept per table, by their bytes (then all dropped)
MAX_REMEMBERED_REQUEST_HEAD = 2048  # longer request heads are parsed every time (a table stays small)


def kept_for(table: dict[tuple, tuple[Any, Any]], obj: Any, key: tuple, compute: Callable[[], Any]) -> Any:
    """compute()'s result for this very object (and key), made once while the entry lives: for
    immutable objects used again and again (a cached forwarded request, a remembered head). The
    table holds the object, so its id cannot be reused while the entry is there."""
    known = table.get((id(obj), *key))
    if known is None or known[0] is not obj:
        if len(table) >= MAX_REMEMBERED_HEADS:
            table.clear()
        known = table[(id(obj), *key)] = (obj, compute())
    return known[1]


# ---- from the client: request heads, parsed by h11 -------------------------------------------

class RequestReader:
    """A client's bytes on their way to h11, which parses every request head: one fresh h11
    server connection a head (porthole writes the answers itself, see response_head), fed one
    chunk at a time, only when h11 asks, so what h11 holds stays bounded, the backlog is what
    stops us reading a flooding client, and the raw size of each request head is exact.

    Rule 1: a head byte for byte like one h11 has parsed is that same request (h11's parse
            depends on nothing else: each head gets a fresh h11 in the same state), so clients
            polling with the same requests are parsed by h11 once. `remembered` holds heads h11
            accepted, complete and body-less, by their exact bytes (one table per profile, as
            the decisions are kept). The candidate looked up runs to the backlog's first CRLF
            CRLF: if h11 would end the head sooner (a bare LF), no head it accepted is equal
            to the candidate, so a match is always exactly where h11 ends the head.
    Rule 2: bytes after a head (pipelined requests) go back to the backlog, for the next one.
    """

    def __init__(self, max_head_bytes: int, remembered: dict[bytes, h11.Request] | None = None) -> None:
        self.max_head_bytes = max_head_bytes
        self.remembered: dict[bytes, h11.Request] = {} if remembered is None else remembered
        self.parser: h11.Connection | None = None  # h11, parsing the head under way
        self.fed = bytearray()  # what it was given
        self.backlog = bytearray()  # read from the socket, not yet given to h11
        self.backlog_limit = 4 * max_head_bytes
        self.eof = False  # the client sent FIN
        self.eof_fed = False  # ... and the parser has been told
        self.head_bytes = 0  # raw size of the last head
        self.declares_body = False  # ... which announced a body (never read: the connection closes)

    def add(self, data: bytes) -> None:
        if data:
            self.backlog += data
        else:
            self.eof = True

    @property
    def pending(self) -> bool:
        """Bytes of a next request are waiting (in the backlog or inside h11)."""
        return bool(self.backlog or self.fed)

    @property
    def wants_more(self) -> bool:
        return not self.eof and len(self.backlog) < self.backlog_limit

    def next_event(self) -> Any:
        """The next request (h11.Request), NEED_DATA or ConnectionClosed; raises
        h11.RemoteProtocolError for a malformed head."""
        if not self.fed:
            end = self.backlog.find(b"\r\n\r\n", 0, MAX_REMEMBERED_REQUEST_HEAD) + 4
            request = self.remembered.get(bytes(self.backlog[:end])) if end > 3 else None
            if request is not None:  # (Rule 1)
                del self.backlog[:end]
                self.head_bytes, self.declares_body = end, False
                return request
            if not self.backlog and not self.eof:
                return h11.NEED_DATA  # nothing new: no need to ask h11
        if self.parser is None:
            self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes)
            self.eof_fed = False  # ... to this parser
        while True:
            event = self.parser.next_event()
            if event is not h11.NEED_DATA:
                break
            if self.backlog:
                chunk = bytes(self.backlog[:READ_CHUNK])
                del self.backlog[:READ_CHUNK]
                self.parser.receive_data(chunk)
                self.fed += chunk
            elif self.eof and not self.eof_fed:
                self.eof_fed = True
                self.parser.receive_data(b"")
            else:
                return event
        if isinstance(event, h11.Request):
            trailing = self.parser.trailing_data[0]
            self.head_bytes = len(self.fed) - len(trailing)
            self.declares_body = _declares_body(event.headers)
            if not self.declares_body and self.head_bytes <= min(self.max_head_bytes, MAX_REMEMBERED_REQUEST_HEAD):
                if len(self.remembered) >= MAX_REMEMBERED_HEADS:
                    self.remembered.clear()
                self.remembered[bytes(self.fed[:self.head_bytes])] = event
            self.backlog[:0] = trailing  # (Rule 2)
            self.parser = None
            self.fed.clear()
        return event


def _declares_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return any(name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
               for name, value in headers)


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The tokens of every Connection header, lowercase (`headers`' names already lowercase)."""
    return {token.strip() for name, value in headers if name == b"connection"
            for token in value.lower().split(b",") if token.strip()}


def client_keeps_alive(version: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the client's request lets its connection stay open after the answer (h11:
    HTTP/1.1 and no "close" token in Connection)."""
    return version >= b"1.1" and b"close" not in connection_tokens(headers)


# ---- to the daemon: the request porthole writes --------------------------------------------

END_OF_MESSAGE = h11.EndOfMessage()  # events are immutable: one for every message (no per-request validation)


def request_bytes(request: h11.Request) -> bytes:
    """`request` as h11's writer puts it on the wire (Host first, names as given), written by
    porthole so that no h11 connection is needed to send it; tests/test_framing.py checks the
    two agree byte for byte. Everything in it was validated when the h11.Request was made. The
    forwarded requests of cached decisions are the same objects each time: written once."""
    return kept_for(_WRITTEN_REQUESTS, request, (), lambda: _request_bytes(request))


_WRITTEN_REQUESTS: dict[tuple, tuple[Any, Any]] = {}


def _request_bytes(request: h11.Request) -> bytes:
    items = request.headers.raw_items()
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method, request.target)]
    lines += [b"%s: %s\r\n" % item for item in items if item[0].lower() == b"host"]
    lines += [b"%s: %s\r\n" % item for item in items if item[0].lower() != b"host"]
    lines.append(b"\r\n")
    return b"".join(lines)


# ---- from the daemon: the answer's head (h11) and body (BodyFraming) ------------------------

UPSTREAM_MAX_HEAD = 64 * 1024  # a Docker response head is a few hundred bytes
MAX_INFORMATIONAL = 8  # 1xx responses tolerated before the real one


class DaemonAnswerError(Exception):
    """The daemon's answer cannot be relayed: a 502 that says why in porthole's words (never
    the daemon's bytes), counted under `reason` ("closed" or "protocol_error")."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AnswerParser:
    """h11's client side for one answer of the daemon, in the state porthole's own writing of
    the request left it (request_bytes sent it): it parses the head, and a body h11 frames
    (read until the daemon closes). Feed it with .h11.receive_data().

    Rule 1: 1xx heads are skipped, at most MAX_INFORMATIONAL of them; none is relayed.
    Rule 2: a head relayed_head refuses (both framings, control bytes) raises, never relayed.
    Rule 3: an answer that ends before it is complete, or is malformed, raises.
    """

    def __init__(self, request: h11.Request) -> None:
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=UPSTREAM_MAX_HEAD)
        self.h11.send(request)
        self.h11.send(END_OF_MESSAGE)
        self.informational = 0
        self.head: h11.Response | None = None  # the head as relayed, once parsed

    def next_event(self) -> Any:
        """h11.NEED_DATA, the daemon's h11.Response (self.head is then its relayed form),
        h11.Data or h11.EndOfMessage. Raises DaemonAnswerError."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                closed = self.h11.their_state is h11.ERROR and self.h11.trailing_data[1]
                raise DaemonAnswerError("the daemon closed the connection before the response was complete"
                                        if closed else f"malformed response from the daemon: {exc}",
                                        "closed" if closed else "protocol_error") from None
            if isinstance(event, h11.InformationalResponse):
                self.informational += 1
                if self.informational > MAX_INFORMATIONAL:
                    raise DaemonAnswerError("the daemon sent too many 1xx responses", "protocol_error")
                continue  # porthole sends no bodies, so never waits for a 100
            if isinstance(event, h11.Response):
                try:
                    self.head = relayed_head(event)
                except ValueError as exc:
                    raise DaemonAnswerError(str(exc), "protocol_error") from None
            elif not (event is h11.NEED_DATA or isinstance(event, (h11.Data, h11.EndOfMessage))):
                # ConnectionClosed, or PAUSED, before the answer ended
                raise DaemonAnswerError("the daemon closed the connection mid-response", "closed")
            return event


_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding", b"upgrade"})


def has_both_framings(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """A response with Content-Length and Transfer-Encoding is a smuggling shape: refuse it."""
    names = {name.lower() for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


def relayed_response_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones (porthole frames the body itself)."""
    headers = list(headers)
    listed = connection_tokens((name.lower(), value) for name, value in headers)
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower not in _HOP_BY_HOP and lower not in listed and not lower.startswith(b"proxy-"):
            kept.append((name, value))
    return kept


def relayed_head(event: h11.Response) -> h11.Response:
    """The daemon's response head as porthole relays it; ValueError says why it is refused
    (smuggling shapes, control bytes)."""
    raw_headers = event.headers.raw_items()
    if has_both_framings(raw_headers):
        raise ValueError("the daemon's response has both Content-Length and Transfer-Encoding")
    if CONTROL_BYTES.search(b" ".join([event.reason, *(v for _, v in raw_headers)])):  # one search, not one a header
        raise ValueError("the daemon's response head holds control characters")
    headers = relayed_response_headers(raw_headers)
    if event.status_code in (204, 304):  # never a body, so never framing headers (RFC 9110 8.6)
        headers = [(n, v) for n, v in headers if n.lower() not in (b"content-length", b"transfer-encoding")]
    return h11.Response(status_code=event.status_code, reason=event.reason, http_version=b"1.1",
                        headers=headers, _parsed=True)  # values as h11 parsed and we checked them


_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
MAX_CHUNK_LINE = 18  # 16 hex digits and CRLF: Go's net/http sends bare sizes, no extensions


class BodyFraming:
    """A daemon response body framed by Content-Length or chunked, parsed by porthole instead
    of one h11 event per chunk (h11 has parsed and checked the head). It is STRICTER than h11,
    never more lenient: no chunk extensions, no trailers, no whitespace, 16 hex digits at most;
    any of those is an error (a 502), as is a chunk not followed by CRLF. Fuzzed and
    differential-tested against h11 (tests/test_framing.py): wherever it accepts, h11
    accepts the same body and leaves the same bytes after it."""

    def __init__(self, length: int | None) -> None:
        self.chunked = length is None
        self.remaining = length or 0  # body bytes still to come (of the body, or of this chunk)
        self.state = "size" if self.chunked else "data"  # chunked: size, data, crlf, last
        self.partial = b""  # a chunk line or CRLF split across reads
        self.done = length == 0
        self.extra = b""  # bytes after the body's end (the connection is then not reused)

    def feed(self, data: bytes) -> bytes:
        """The body bytes in `data`. Raises ValueError on a framing error."""
        if self.done:
            self.extra += data
            return b""
        if not self.chunked:
            body, self.remaining = data[:self.remaining], self.remaining - min(len(data), self.remaining)
            if not self.remaining:
                self.done, self.extra = True, data[len(body):]
            return body
        data, self.partial = self.partial + data, b""
        body: list[bytes] = []
        at, size = 0, len(data)
        while at < size:
            if self.done:
                self.extra = data[at:]
                break
            if self.state == "data":
                piece = data[at:at + self.remaining]
                body.append(piece)
                at += len(piece)
                self.remaining -= len(piece)
                if not self.remaining:
                    self.state = "crlf"
            elif self.state == "size":
                end = data.find(b"\r\n", at, at + MAX_CHUNK_LINE)
                if end < 0:
                    if size - at >= MAX_CHUNK_LINE:
                        raise ValueError(f"chunk header too long or malformed: {data[at:at + 24]!r}")
                    self.partial = data[at:]
                    break
                if not _CHUNK_SIZE.fullmatch(data, at, end):
                    raise ValueError(f"malformed chunk header {data[at:end][:24]!r}")
                self.remaining = int(data[at:end], 16)
                self.state = "data" if self.remaining else "last"
                at = end + 2
            else:  # "crlf" ends a chunk's data; "last" ends the body (porthole takes no trailers)
                piece = data[at:at + 2]
                if piece != b"\r\n"[:len(piece)]:
                    raise ValueError("chunk data not followed by CRLF" if self.state == "crlf"
                                     else "the chunked body has trailers or junk after its last chunk")
                if len(piece) < 2:
                    self.partial = piece
                    break
                at += 2
                if self.state == "last":
                    self.done = True
                else:
                    self.state = "size"
        return body[0] if len(body) == 1 else b"".join(body)


def body_framing(method: bytes, head: h11.Response) -> BodyFraming | None:
    """Porthole frames the body itself for a GET answered with Content-Length or chunked; None
    leaves it to h11 (HEAD, 204/304, or a body read until the daemon closes)."""
    if method != b"GET" or head.status_code in (204, 304):
        return None
    for name, value in head.headers:  # h11 checked both: one valid length, or exactly "chunked"
        if name == b"content-length":
            return BodyFraming(int(value))
        if name == b"transfer-encoding":
            return BodyFraming(None)
    return None


@dataclass(frozen=True)
class ParsedHead:
    """What h11 made of one daemon response head to a GET whose body porthole frames, kept by
    the head's exact bytes (UpstreamPool.heads): the same bytes parse the same way, so a head
    seen before needs no h11 connection at all. Only heads h11 accepted are kept, and a lookup
    hits only bytes that h11 itself ended the head at (a candidate running past h11's end of
    head is never a key)."""

    head: h11.Response  # as relayed (relayed_head)
    length: int | None  # the body's Content-Length; None: chunked
    keep_alive: bool  # h11 would reuse the connection after it

    def framing(self) -> BodyFraming:
        return BodyFraming(self.length)


# ---- to the client: answers porthole writes (not h11: writing through it re-validated what it
# had validated already, half of its time) --------------------------------------------------

def error_body(message: str, as_daemon: bool = False) -> bytes:
    """A Docker-style error; `as_daemon`: worded exactly as dockerd would (no "porthole:")."""
    return json.dumps({"message": message if as_daemon else f"porthole: {message}"}).encode() + b"\n"


class FramingError(Exception):
    """A body that does not match its head's framing: never sent as if it did."""


class BodyWriter:
    """Frames one answer's body for the client: exactly Content-Length bytes, chunked, or (an
    HTTP/1.0 client) as it comes, ended by closing the connection."""

    __slots__ = ("chunked", "remaining")

    def __init__(self, chunked: bool, length: int | None) -> None:
        self.chunked = chunked
        self.remaining = length  # None: chunked, or until the connection closes

    def data(self, data: bytes) -> bytes:
        if self.chunked:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if self.remaining is not None:
            self.remaining -= len(data)
            if self.remaining < 0:
                raise FramingError("more body than the Content-Length announced")
        return data

    def end(self) -> bytes:
        if self.chunked:
            return b"0\r\n\r\n"
        if self.remaining:
            raise FramingError("less body than the Content-Length announced")
        return b""


def response_head(head: h11.Response, method: str, version: bytes | None,
                  keep_alive: bool) -> tuple[bytes, BodyWriter, bool]:
    """response_head_parts, with a fresh BodyWriter. A head relayed again and again (the same
    h11.Response object: UpstreamPool.heads) is written once per kind of client, then reused."""
    data, chunked, length, close = kept_for(_WRITTEN_HEADS, head, (method, version, keep_alive),
                                            lambda: response_head_parts(head, method, version, keep_alive))
    return data, BodyWriter(chunked, length), close


_WRITTEN_HEADS: dict[tuple, tuple[Any, Any]] = {}


def response_head_parts(head: h11.Response, method: str, version: bytes | None,
                        keep_alive: bool) -> tuple[bytes, bool, int | None, bool]:
    """`head`'s bytes for a client that asked with `method` over HTTP `version` (None: its
    request never parsed), how its body is framed (chunked, Content-Length or None: neither)
    and whether the connection closes after it, as h11's server side decides them: a body of
    unknown length goes chunked to HTTP/1.1 and unframed to HTTP/1.0 (which then closes);
    Connection: close is added whenever the connection will close."""
    headers = head.headers.raw_items()
    names = [name.lower() for name, _ in headers]
    status = head.status_code
    unknown_length = status not in (204, 304) and (b"transfer-encoding" in names or b"content-length" not in names)
    close = not keep_alive
    if unknown_length:
        kept = [(n, v) for (n, v), low in zip(headers, names) if low not in (b"content-length", b"transfer-encoding")]
        if version is None or version < b"1.1":
            close = close or method != "HEAD"
        else:
            kept.append((b"Transfer-Encoding", b"chunked"))
        headers = kept
        names = [name.lower() for name, _ in headers]
    if close:
        tokens = connection_tokens(zip(names, (value for _, value in headers)))
        tokens.discard(b"keep-alive")
        tokens.add(b"close")
        headers = [(n, v) for (n, v), low in zip(headers, names) if low != b"connection"]
        headers += [(b"Connection", token) for token in sorted(tokens)]
        names = [name.lower() for name, _ in headers]
    elif b"connection" in names:  # the head's own "close" ends the connection too
        close = b"close" in connection_tokens(zip(names, (value for _, value in headers)))
    if status in (204, 304) or method == "HEAD":
        chunked, length = False, 0
    elif b"transfer-encoding" in names:
        chunked, length = True, None
    elif b"content-length" in names:
        chunked, length = False, int(headers[names.index(b"content-length")][1])
    else:
        chunked, length = False, None
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, head.reason)]
    lines += [b"%s: %s\r\n" % item for item, low in zip(headers, names) if low == b"host"]
    lines += [b"%s: %s\r\n" % item for item, low in zip(headers, names) if low != b"host"]
    lines.append(b"\r\n")
    return b"".join(lines), chunked, length, close
