"""A 502 porthole writes says what was wrong with the daemon's answer and never echoes what the
daemon sent (issue "(2 of 5)", item 2: a malformed answer's 502 embedded the raw chunk header)."""
from __future__ import annotations

import h11
import pytest
from hypothesis import given, strategies as st

from porthole.core.rewrite import ResponseRewriter, ResponseTransform, TransformError
from porthole.core.wire import AnswerParser, BodyFraming, DaemonAnswerError

MARKER = "SeKr3tMarker"
REQUEST = h11.Request(method="GET", target="/v1.41/info", headers=[("Host", "docker")])


def answer_error(raw: bytes) -> str:
    parser = AnswerParser(REQUEST)
    parser.h11.receive_data(raw)
    parser.h11.receive_data(b"")
    with pytest.raises(DaemonAnswerError) as caught:
        while True:
            parser.next_event()
    return str(caught.value)


@pytest.mark.parametrize("chunked", [
    b"%s\r\n" % MARKER.encode(),
    b"1;ext=%s\r\nx\r\n0\r\n\r\n" % MARKER.encode(),
    b"%s%s\r\n" % (MARKER.encode(), b"0" * 30),
    b"4\r\nabcd%s\r\n" % MARKER.encode(),
])
def test_body_framing_errors_do_not_quote_the_body(chunked):
    with pytest.raises(ValueError) as caught:
        BodyFraming(None).feed(chunked)
    assert MARKER not in str(caught.value) and "Mark" not in str(caught.value)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 2x0 %s\r\n\r\n" % MARKER.encode(),
    b"HTTP/1.1 200 OK\r\n%s\r\n\r\n" % MARKER.encode(),
    b"HTTP/1.1 200 OK\r\nX-%s: \x01\r\n\r\n" % MARKER.encode(),
    b"HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\n" % MARKER.encode(),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n" % MARKER.encode(),
    b"%s / HTTP/1.1\r\n\r\n" % MARKER.encode(),
])
def test_answer_errors_do_not_quote_the_head(raw):
    message = answer_error(raw)
    assert "daemon" in message and MARKER not in message and "Mark" not in message


@given(st.binary(min_size=1, max_size=40))
def test_no_malformed_head_is_echoed(junk):
    raw = b"HTTP/1.1 200 OK\r\nX: " + junk.replace(b"\r", b"").replace(b"\n", b"") + b"\x00" + MARKER.encode() + b"\r\n\r\n"
    assert MARKER not in answer_error(raw)


def test_a_filter_that_fails_does_not_quote_the_answer():
    def fragile(doc):
        return doc[MARKER]  # KeyError('SeKr3tMarker'): its text is the daemon's key
    rewriter = ResponseRewriter(ResponseTransform(document=fragile), h11.Response(status_code=200, headers=[]), "GET")
    rewriter.feed(b'{"other": 1}')
    with pytest.raises(TransformError) as caught:
        rewriter.finish()
    assert MARKER not in str(caught.value) and "KeyError" in str(caught.value)
