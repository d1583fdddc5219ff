"""A filter applied to an answer's bytes: ResponseRewriter.

Invariants:
  1. A document is buffered whole (at most max_bytes) and its head held back until it is
     rewritten: its Content-Length is the rewritten body's, and a failure is still a 502.
  2. A stream of events is rewritten line by line, each line bounded by max_bytes.
  3. Any exception from a filter is a TransformError: the client gets a 502 or an abort,
     never the bytes the filter could not handle.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Callable

import h11
from h11._headers import Headers  # (h11 is pinned: its parsed headers are taken as they are)

from porthole.core.wire import kept_for


# Compact JSON, as dockerd writes it. A parsed answer holds no cycles, so none is looked for.
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_FRAMING = (b"content-length", b"transfer-encoding")
_REWRITTEN_HEADS: dict[tuple, tuple[Any, Any]] = {}  # ResponseRewriter._head (wire.kept_for)


class TransformError(Exception):
    """A response could not be transformed: the client gets a 502 or an abort, never the
    untransformed bytes."""


@dataclass(frozen=True)
class ResponseTransform:
    """How to rewrite one exchange's successful (2xx) response body on its way to the client.
    `document` rewrites a finite JSON body (a parsed value in, a value out); `event` rewrites
    each event of a stream of JSON lines (None drops the event). Each buffers at most
    `max_bytes` (the whole document, or one event)."""

    document: Callable[[Any], Any] | None = None
    document_bytes: Callable[[bytes], bytes] | None = None  # the answer in, its bytes out (made from `document`)
    event: Callable[[Any], Any] | None = None
    event_line: Callable[[bytes], bytes] | None = None  # a line in, its bytes out (made from `event`)
    max_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:  # one form of each for ResponseRewriter
        if self.document is not None and self.document_bytes is None:
            object.__setattr__(self, "document_bytes", functools.partial(document_bytes, self.document))
        if self.event is not None and self.event_line is None:
            object.__setattr__(self, "event_line", functools.partial(event_bytes, self.event))


def document_bytes(document: Callable[[Any], Any], data: bytes) -> bytes:
    """A whole answer through `document` (parsed value in, value out), serialised. Raises
    TransformError where it cannot be applied (fail closed)."""
    return _encode(_applied(document, ResponseRewriter._parse(data))).encode() + b"\n"


def event_bytes(event: Callable[[Any], Any], line: bytes) -> bytes:
    """One event line through `event` (parsed value in, value or None out), serialised; b"": not
    delivered. Raises TransformError where it cannot be applied (fail closed)."""
    value = _applied(event, ResponseRewriter._parse(line))
    return b"" if value is None else _encode(value).encode() + b"\n"


def _applied(transform: Callable[[Any], Any], parsed: Any) -> Any:
    try:
        return transform(parsed)
    except TransformError:
        raise
    except Exception as exc:  # the filter could not be applied: fail closed
        raise TransformError(f"the filter could not be applied ({type(exc).__name__})") from None  # no daemon data


class ResponseRewriter:
    """Applies a ResponseTransform to one response. A document's head is held back until the
    whole body is rewritten, so its Content-Length is right and a failure can still be a 502."""

    def __init__(self, transform: ResponseTransform, head: h11.Response, method: str) -> None:
        self.transform = transform
        self.original = head
        self.method = method
        self.buffer = bytearray()

    def _head(self, length: int | None) -> h11.Response:
        """The daemon's head, checked when it arrived (wire.relayed_head), without its framing and
        with `length`: built from h11's parsed headers as they are, not parsed and checked again.
        A head relayed again (the same object: UpstreamPool.heads) gets the same new head for the
        same length, so it is written once too (wire.response_head)."""
        return kept_for(_REWRITTEN_HEADS, self.original, (length,), lambda: self._new_head(length))

    def _new_head(self, length: int | None) -> h11.Response:
        headers = [(name, low, value) for name, value in self.original.headers.raw_items()
                   if (low := name.lower()) not in _FRAMING]
        if length is not None:
            headers.append((b"Content-Length", b"content-length", b"%d" % length))
        return h11.Response(status_code=self.original.status_code, reason=self.original.reason,
                            http_version=self.original.http_version, headers=Headers(headers), _parsed=True)

    def head(self) -> h11.Response | None:
        if self.transform.document is not None:
            return None  # (a HEAD's was forwarded as GET: its length is the rewritten body's)
        return self._head(None)  # framed anew by BodyWriter (chunked for HTTP/1.1 clients)

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        if self.transform.document is not None:
            if len(self.buffer) > self.transform.max_bytes:
                raise TransformError(f"the response is over {self.transform.max_bytes} bytes")
            return b""
        if self.transform.event_line is None:
            out, self.buffer = bytes(self.buffer), bytearray()
            return out
        *events, rest = self.buffer.split(b"\n")
        if max(map(len, events), default=0) > self.transform.max_bytes or len(rest) > self.transform.max_bytes:
            raise TransformError(f"an event is over {self.transform.max_bytes} bytes")
        self.buffer = bytearray(rest)
        return b"".join(self._event(line) for line in events if line.strip())

    def _event(self, line: bytes) -> bytes:
        return self.transform.event_line(line)  # type: ignore[misc]

    @staticmethod
    def _parse(data: bytes) -> Any:
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise TransformError(f"the daemon's answer is not JSON ({str(exc)[:80]})") from None

    def finish(self) -> tuple[h11.Response | None, bytes]:
        if self.transform.document is not None:
            body = self.transform.document_bytes(bytes(self.buffer))  # type: ignore[misc]
            return self._head(len(body)), b"" if self.method == "HEAD" else body
        if self.buffer.strip():
            if self.transform.event_line is None:
                return None, bytes(self.buffer)
            return None, self._event(bytes(self.buffer))
        return None, b""
