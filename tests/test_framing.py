"""BodyFraming, porthole's own parser of the daemon's Content-Length and chunked bodies, fuzzed
and differential-tested against h11 on the same bytes split the same way: wherever porthole
accepts, h11 accepts the same body and leaves the same bytes after it; porthole accepts every
canonical chunked body (Go's net/http shape) and every exact Content-Length body."""

from __future__ import annotations

import sys
from pathlib import Path

import h11
import pytest
from hypothesis import given, settings as hsettings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import proxy  # noqa: E402


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[i:j] for i, j in zip(points, points[1:]) if j > i]  # (b"" would mean EOF to h11)


def ours(length: int | None, pieces: list[bytes]):
    """(body, done, extra) or ("error", message)."""
    framing = proxy.BodyFraming(length)
    body = bytearray()
    try:
        for piece in pieces:
            body += framing.feed(piece)
    except ValueError as exc:
        return "error", str(exc)
    return bytes(body), framing.done, framing.extra


def h11s(length: int | None, pieces: list[bytes]):
    """The same through h11's client side: (body, done, extra) or ("error", message)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "docker")]))
    conn.send(h11.EndOfMessage())
    framing = ("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}").encode()
    conn.receive_data(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Response)
    body, done = bytearray(), False
    try:
        for piece in [None, *pieces]:  # (None: what h11 makes of the head alone)
            if piece is not None:
                conn.receive_data(piece)
            while not done:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    done = True
    except h11.ProtocolError as exc:
        return "error", str(exc)
    extra = conn.trailing_data[0] if done else b""
    return bytes(body), done, extra


def agree(length, pieces, must_accept=False):
    mine, theirs = ours(length, pieces), h11s(length, pieces)
    if mine[0] == "error":
        assert not must_accept, (mine, pieces)
        return
    body, done, extra = mine
    assert theirs[0] != "error", f"porthole accepted what h11 refuses: {pieces!r} -> {theirs}"
    if done:
        assert theirs == mine  # the same body, ended at the same byte
    else:  # not ended yet: h11 has not ended it either, and gave the same bytes so far
        assert theirs[1] is False and theirs[0] == body


def chunked(chunks: list[bytes], size_format: str = "{:x}") -> bytes:
    return b"".join(size_format.format(len(c)).encode() + b"\r\n" + c + b"\r\n" for c in chunks if c) + b"0\r\n\r\n"


chunk_lists = st.lists(st.binary(min_size=1, max_size=40), max_size=8)
cut_lists = st.lists(st.integers(0, 1000), max_size=12)


@hsettings(max_examples=400, deadline=None)
@given(chunks=chunk_lists, cuts=cut_lists, upper=st.booleans(), tail=st.binary(max_size=8))
def test_canonical_chunked_bodies_are_accepted_as_h11_reads_them(chunks, cuts, upper, tail):
    data = chunked(chunks, "{:X}" if upper else "{:x}") + tail
    agree(None, split(data, cuts), must_accept=True)
    assert ours(None, [data])[0] == b"".join(chunks)


@hsettings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), extra=st.binary(max_size=10), cuts=cut_lists, short=st.integers(0, 5))
def test_content_length_bodies(body, extra, cuts, short):
    agree(len(body), split(body + extra, cuts), must_accept=True)
    truncated = body[:max(0, len(body) - short)]
    agree(len(body), split(truncated, cuts), must_accept=True)  # not ended yet, like h11


MUTATIONS = [b"\r", b"\n", b" ", b"\t", b";", b"0", b"g", b"x", b"\r\n", b"\x00", b"-", b"+", b"=", b"ff",
             b"0000000000000000000001", b"1\r\n", b"0\r\n\r\n", b"Trailer: x\r\n"]


@hsettings(max_examples=1500, deadline=None)
@given(chunks=chunk_lists, cuts=cut_lists,
       edits=st.lists(st.tuples(st.integers(0, 400), st.sampled_from(MUTATIONS), st.integers(0, 3)), min_size=1, max_size=4))
def test_mutated_chunked_bodies_never_accepted_beyond_h11(chunks, cuts, edits):
    """Insertions and deletions at random places: porthole may refuse more than h11 (extensions,
    trailers, whitespace), never less, and when both accept they read the same body."""
    data = bytearray(chunked(chunks))
    for at, insert, delete in edits:
        at %= len(data) + 1
        data[at:at + delete] = insert
    agree(None, split(bytes(data), cuts))


@hsettings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=120), cuts=cut_lists)
def test_random_bytes_as_a_chunked_body(data, cuts):
    agree(None, split(data, cuts))


@pytest.mark.parametrize("data, reason", [
    (b"5;ext=1\r\nhello\r\n0\r\n\r\n", "malformed chunk header"),
    (b"5 \r\nhello\r\n0\r\n\r\n", "malformed chunk header"),
    (b"5\r\nhelloX\r\n0\r\n\r\n", "not followed by CRLF"),
    (b"5\r\nhello\r\n0\r\nTrailer: x\r\n\r\n", "trailers"),
    (b"-5\r\nhello\r\n", "malformed chunk header"),
    (b"00000000000000001\r\nh", "too long"),
    (b"5\nhello\r\n", "malformed"),
])
def test_what_porthole_refuses(data, reason):
    result = ours(None, [data])
    assert result[0] == "error" and reason in result[1], result


def test_large_chunks_across_many_reads():
    chunks = [bytes([i % 251]) * (10000 + i) for i in range(20)]
    data = chunked(chunks)
    pieces = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    body, done, extra = ours(None, pieces)
    assert done and extra == b"" and body == b"".join(chunks)
    assert h11s(None, pieces) == (body, done, extra)


def head(*headers, version=b"1.1", status=200):
    return h11.Response(status_code=status, http_version=version, headers=list(headers))


@pytest.mark.parametrize("method, response, framed", [
    (b"GET", head((b"Content-Length", b"5")), True),
    (b"GET", head((b"Transfer-Encoding", b"chunked")), True),
    (b"HEAD", head((b"Content-Length", b"5")), False),  # no body: h11 knows
    (b"GET", head((b"Content-Length", b"0"), status=204), False),
    (b"GET", head(), False),  # read until the daemon closes: h11's
    (b"GET", head((b"Content-Length", b"5"), (b"Connection", b"close")), True),  # (not pooled: see below)
])
def test_which_bodies_porthole_frames(method, response, framed):
    assert (proxy.body_framing(method, response) is not None) == framed


@pytest.mark.parametrize("closing", [False, True])
def test_a_framed_answer_returns_its_connection_to_the_pool_only_if_the_daemon_keeps_it(closing):
    """Through a real UpstreamPool and Relay: a chunked answer porthole framed itself goes back
    to the pool, unless the daemon said `Connection: close` (h11 saw that in the head)."""
    from test_parts import Daemon, Env, drive, parse_responses, relay_handler, serve_one

    env = Env()
    daemon = Daemon(env.sock_path)
    try:
        pool, relays = proxy.UpstreamPool(env.loop, env.settings, env.log), []
        env.owner.handler = relay_handler(pool, relays)
        client, peer = env.client()
        peer.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        env.run()
        close = b"Connection: close\r\n" if closing else b""
        serve_one(env, daemon, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + close + b"\r\n"
                               b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        data, _ = drive(env, peer, passes=5)
        (response,) = parse_responses(data)
        assert response["complete"] and bytes(response["body"]) == b"abcde"
        assert len(pool.idle) == (0 if closing else 1)
    finally:
        daemon.close()
        env.close()
