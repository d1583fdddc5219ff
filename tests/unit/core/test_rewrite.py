"""porthole/core/rewrite.py: a ResponseTransform (document or event form) applied by the
ResponseRewriter to the answer an Exchange relays, over a real ClientConnection (the `env`
fixture, tests/lib/parts.py): rewritten with a correct length, or failed closed."""

from __future__ import annotations

import json
from types import SimpleNamespace

import h11
import pytest
from hypothesis import assume, given, settings, strategies as st

from parts import drive, json_message, parse_responses, read_available
from porthole.connections.client import ClientState
from porthole.core.rewrite import ResponseRewriter, ResponseTransform
from porthole.core.wire import relayed_head

pytestmark = pytest.mark.timeout(60)


def transform_client(env, transform, tcp=False, target=b"/info"):
    exchanges = []

    def handler(client, exchange):
        exchange.transform = transform
        exchanges.append(exchange)

    env.owner.handler = handler
    client, peer = env.client(tcp=tcp)
    peer.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
    env.run()
    return client, peer, exchanges[0]


def daemon_head(status=200, length=None, content_type=b"application/json"):
    headers = [(b"Content-Type", content_type)]
    headers.append((b"Content-Length", str(length).encode()) if length is not None
                   else (b"Transfer-Encoding", b"chunked"))
    return relayed_head(h11.Response(status_code=status, headers=headers, _parsed=True))


def test_document_transform_rewrites_with_correct_length(env):
    transform = ResponseTransform(document=lambda value: [c["Id"] for c in value if c["Keep"]])
    client, peer, exchange = transform_client(env, transform)
    body = json.dumps([{"Id": "a", "Keep": True, "Secret": "S1"}, {"Id": "b", "Keep": False}]).encode()
    exchange.send_head(daemon_head(length=len(body)))
    env.run()
    assert read_available(peer) == (b"", None)  # the head is held until the body is rewritten
    exchange.send_body(body[:10])
    exchange.send_body(body[10:])
    exchange.end_body()
    data, _ = drive(env, peer, passes=2)
    (response,) = parse_responses(data)
    assert response["status"] == 200 and response["complete"]
    assert bytes(response["body"]) == b'["a"]\n'
    assert response["headers"][b"content-length"] == b"6"
    assert b"transfer-encoding" not in response["headers"]
    assert b"S1" not in data
    assert client.state is ClientState.IDLE


@pytest.mark.parametrize("case", ["over-max-bytes", "not-json", "raises"])
def test_document_transform_fails_closed_with_502(env, case):
    if case == "over-max-bytes":
        transform = ResponseTransform(document=lambda value: value, max_bytes=40)
        body = json.dumps({"Secret": "SECRET" * 20}).encode()
    elif case == "not-json":
        transform = ResponseTransform(document=lambda value: value)
        body = b"SECRET, not JSON at all"
    else:
        transform = ResponseTransform(document=lambda value: value["missing"])
        body = b'{"Secret": "SECRET"}'
    client, peer, exchange = transform_client(env, transform)
    exchange.send_head(daemon_head(length=len(body)))
    for i in range(0, len(body), 30):
        if not exchange.active:
            break
        exchange.send_body(body[i:i + 30])
    if exchange.active:
        exchange.end_body()
    data, _ = drive(env, peer, passes=2)
    assert b"SECRET" not in data
    (response,) = parse_responses(data)
    assert response["status"] == 502 and response["complete"]
    assert json_message(response).startswith("porthole: response filter failed")
    assert exchange.outcome == "error"


def test_event_transform_rewrites_and_drops_events(env):
    def event(value):
        return None if value.get("drop") else {"x": value["a"] * 2}

    client, peer, exchange = transform_client(env, ResponseTransform(event=event), target=b"/events")
    exchange.decision = SimpleNamespace(streaming=True)
    exchange.send_head(daemon_head())
    exchange.send_body(b'{"a":1}\n{"drop":true,"s":"SECRET"}\n{"a":')
    env.run()
    received = bytearray(read_available(peer)[0])
    (response,) = parse_responses(bytes(received))
    assert bytes(response["body"]) == b'{"x":2}\n'  # the partial event waits
    exchange.send_body(b'2}\n\n{"a":3')
    exchange.send_body(b"}")
    exchange.end_body()  # a last event without its newline still counts
    env.run()
    received += read_available(peer)[0]
    (response,) = parse_responses(bytes(received))
    assert response["complete"]
    assert bytes(response["body"]) == b'{"x":2}\n{"x":4}\n{"x":6}\n'
    assert b"SECRET" not in received


def test_event_over_max_bytes_aborts_client(env):
    transform = ResponseTransform(event=lambda value: value, max_bytes=64)
    client, peer, exchange = transform_client(env, transform, tcp=True, target=b"/events")
    exchange.decision = SimpleNamespace(streaming=True)
    exchange.send_head(daemon_head())
    exchange.send_body(b'{"a":1}\n{"big":"')
    env.run()
    assert client.state is ClientState.ACTIVE
    for _ in range(4):
        if client.state is ClientState.CLOSED:
            break
        exchange.send_body(b"SECRET" * 10)
    assert client.state is ClientState.CLOSED
    data, end = read_available(peer)
    assert end == "reset" and b"SECRET" not in data
    (done,) = env.owner.done
    assert done.outcome == "error" and "response filter failed" in done.reason


def test_event_transform_that_raises_aborts_client(env):
    transform = ResponseTransform(event=lambda value: value["missing"])
    client, peer, exchange = transform_client(env, transform, tcp=True, target=b"/events")
    exchange.decision = SimpleNamespace(streaming=True)
    exchange.send_head(daemon_head())
    exchange.send_body(b'{"s":"SECRET"}\n')
    assert client.state is ClientState.CLOSED
    data, end = read_available(peer)
    assert end == "reset" and b"SECRET" not in data


@pytest.mark.parametrize("transform", [
    ResponseTransform(document=lambda value: {"rewritten": True}),
    ResponseTransform(event=lambda value: {"rewritten": True}),
], ids=["document", "event"])
def test_non_2xx_answers_pass_through_untouched(env, transform):
    client, peer, exchange = transform_client(env, transform)
    body = b"not json, and not rewritten\n"
    exchange.send_head(daemon_head(status=404, length=len(body), content_type=b"text/plain"))
    exchange.send_body(body)
    exchange.end_body()
    data, _ = drive(env, peer, passes=2)
    (response,) = parse_responses(data)
    assert response["status"] == 404 and bytes(response["body"]) == body
    assert response["headers"][b"content-length"] == str(len(body)).encode()
    assert exchange.outcome == "allow"


header_names = st.sampled_from([b"Content-Type", b"content-length", b"Content-Length", b"Transfer-Encoding",
                                b"TRANSFER-encoding", b"Api-Version", b"Docker-Experimental", b"Ostype",
                                b"Server", b"Date", b"X-Custom"])
header_values = st.sampled_from([b"12", b"chunked", b"application/json", b"1.47", b""]) | st.binary(max_size=12).map(
    lambda value: bytes(b for b in value if 0x21 <= b <= 0x7e))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(header_names, header_values), max_size=8), st.none() | st.integers(0, 10**9),
       st.sampled_from([(200, b"OK"), (201, b""), (206, b"Partial Content")]))
def test_property_a_rewritten_head_is_the_daemons_without_its_framing(headers, length, status):
    """The head sent after a rewrite is the one h11 itself would make (and check) from the
    daemon's headers without Content-Length and Transfer-Encoding, with the new length: same
    names as sent, same order, same values."""
    code, reason = status
    try:  # as h11 parsed it from the daemon (wire.relayed_head)
        original = h11.Response(status_code=code, reason=reason, headers=headers)
    except h11.LocalProtocolError:
        assume(False)
    rewritten = ResponseRewriter(ResponseTransform(document=lambda value: value), original, "GET")._head(length)
    kept = [(name, value) for name, value in headers if name.lower() not in (b"content-length", b"transfer-encoding")]
    kept += [] if length is None else [(b"Content-Length", str(length).encode())]
    expected = h11.Response(status_code=code, reason=reason, headers=kept)  # parsed and checked by h11
    assert rewritten.headers.raw_items() == expected.headers.raw_items()
    assert list(rewritten.headers) == list(expected.headers)
    assert (rewritten.status_code, rewritten.reason, rewritten.http_version) == (code, reason, b"1.1")


def test_a_rewritten_head_is_not_checked_again(monkeypatch):
    """The daemon's headers were parsed and checked by h11 when they arrived (wire.relayed_head):
    the rewritten head takes them as they are, without running h11's checks on each again."""
    original = daemon_head(length=10)

    def checked_again(*args, **kwargs):
        raise AssertionError("h11 checked the headers again")

    monkeypatch.setattr(h11._events, "normalize_and_validate", checked_again)
    head = ResponseRewriter(ResponseTransform(document=lambda value: value), original, "GET")._head(3)
    assert head.headers.raw_items() == [(b"Content-Type", b"application/json"), (b"Content-Length", b"3")]


def test_a_head_relayed_again_is_rewritten_once_per_length():
    """The same daemon head (UpstreamPool.heads hands out one object for the same bytes) with the
    same new length gets the same rewritten head, so wire.response_head writes it once too;
    another length or another head gets its own."""
    original, other = daemon_head(length=10), daemon_head(length=10)
    transform = ResponseTransform(document=lambda value: value)
    first = ResponseRewriter(transform, original, "GET")._head(3)
    assert ResponseRewriter(transform, original, "GET")._head(3) is first
    assert ResponseRewriter(transform, original, "GET")._head(4).headers.raw_items()[-1] == (b"Content-Length", b"4")
    again = ResponseRewriter(transform, other, "GET")._head(3)
    assert again is not first and again.headers.raw_items() == first.headers.raw_items()
