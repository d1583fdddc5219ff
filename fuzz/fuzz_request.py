"""Fuzz target: a client byte stream through a real porthole Proxy, in-process, no threads.

The input is everything a client sends on one TCP connection (profile "log-reader", so the
dangerous-but-acknowledged logs rule is reachable; Host/Origin checks apply as on a TCP
listener). The harness builds a Proxy (porthole.app.wiring) without listeners, hands it one
end of a socketpair as a client (Proxy.admit), and runs the proxy's own event loop one pass
at a time (Loop.run_once(0), as Proxy.run does: the connections' on_io and on_turn handlers);
an exception in a handler is caught by the loop's guard and logged as "internal_error", which
is a finding here. The upstream is a unix socket served in the same
thread by an h11 server that records every forwarded request and answers it (a chunked
body for /events, Content-Length otherwise). Timers are not run: the input is sent (in one
write, line by line, or in 7-byte pieces, chosen by the input's length, with the loop run
between writes), the loop runs until nothing moves, then the client half-closes and the loop
settles again.

Invariants (InvariantViolation or any other exception is a finding):
  * nothing escapes the proxy's handlers and nothing is logged as "internal_error";
  * every request reaching the upstream is HTTP/1.1 GET or HEAD with a canonical target
    (canonicalize_target(t).forward_form() == t), no body, and only Host: docker,
    User-Agent and Accept; re-deciding it on the listener's profile forwards it, and it
    passes fuzz_common.check_decision (never-forwarded, dangerous reads, rule match);
  * differential: the requests forwarded and the statuses answered, in order, equal what a
    plain h11 server + decide make of the same bytes (reference() below);
  * the client receives well-formed HTTP/1.1 responses, one per request handled, and every
    local error body is {"message": "porthole: ..."};
  * one log line per exchange; the loop settles (no busy loop) and, after the client's
    FIN, the proxy closes the connection and holds no client and no busy upstream.

Run: fuzz/run.sh request [SECONDS]       Replay one input: python fuzz/fuzz_request.py FILE
"""
from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile

if __name__ == "__main__":  # only the fuzzing run needs atheris; pytest imports check() without it
    import atheris

    _instrumented = atheris.instrument_imports(include=["porthole", "h11", "fuzz_common"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    import fuzz_common as common
    import h11
    from fuzz_common import InvariantViolation, proxy, require

PROFILE = "log-reader"
MAX_HEAD = 2048  # small, so that the 431 paths are reachable with small inputs
MAX_ROUNDS = 2000  # loop iterations allowed to settle; more means the proxy keeps spinning
LISTENER = proxy.Endpoint("tcp://127.0.0.1:2375", "tcp", host="127.0.0.1", port=2375, profile=PROFILE)
FORWARDED_HEADERS = {b"host", b"user-agent", b"accept"}
LOCAL_STATUSES = {400, 403, 408, 429, 431, 502, 503, 505}


# ---- the in-process daemon ------------------------------------------------------------------

class _DaemonConn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.h11 = h11.Connection(h11.SERVER)
        self.request: h11.Request | None = None
        self.closed = False


class FakeDaemon:
    """A unix-socket HTTP server run from the harness loop; records forwarded requests."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ph-fuzz-")
        self.path = os.path.join(self.dir, "docker.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.conns: list[_DaemonConn] = []
        self.forwarded: list[tuple[str, bytes, list[tuple[bytes, bytes]]]] = []
        atexit.register(self.destroy)

    def destroy(self) -> None:
        self.reset()
        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def reset(self) -> None:
        for conn in self.conns:
            conn.sock.close()
        self.conns = []
        self.forwarded = []

    def serve(self) -> bool:
        """Accept, read and answer what is there. Returns True if anything happened."""
        busy = False
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                break
            sock.setblocking(False)
            self.conns.append(_DaemonConn(sock))
            busy = True
        for conn in self.conns:
            if conn.closed:
                continue
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            busy = True
            conn.h11.receive_data(data)
            self._events(conn)
        return busy

    def _events(self, conn: _DaemonConn) -> None:
        while not conn.closed:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise InvariantViolation(f"the proxy sent the daemon malformed HTTP: {exc}") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._check_forwarded(event)
                conn.request = event
            elif isinstance(event, h11.Data):
                raise InvariantViolation(f"a forwarded request carries a body: {event.data[:80]!r}")
            elif isinstance(event, h11.EndOfMessage):
                self._answer(conn)
            elif isinstance(event, h11.ConnectionClosed):
                conn.closed = True
                conn.sock.close()

    def _check_forwarded(self, request: h11.Request) -> None:
        method, target, headers = request.method.decode("ascii"), request.target, list(request.headers)
        self.forwarded.append((method, target, headers))
        require(request.http_version == b"1.1", "forwarded request is not HTTP/1.1", request)
        require(method in ("GET", "HEAD"), "forwarded a method other than GET/HEAD", method, target)
        try:
            canonical = proxy.canonicalize_target(target)
        except proxy.Refusal as refusal:
            raise InvariantViolation(f"forwarded target {target!r} is not canonical: {refusal.reason}") from None
        require(canonical.forward_form().encode("ascii") == target, "forwarded target is not in canonical form",
                target, canonical.forward_form())
        names = [name for name, _ in headers]
        require(set(names) <= FORWARDED_HEADERS, "forwarded a header outside Host/User-Agent/Accept", names)
        require([v for n, v in headers if n == b"host"] == [b"docker"], "forwarded Host is not 'docker'", headers)
        for name, value in headers:  # RFC 9110 5.5: no CTL in a field value (Go's server answers 400)
            require(not any((b < 0x20 and b != 0x09) or b == 0x7F for b in value),
                    "forwarded a header value with a control byte", name, value)
        facts = proxy.RequestFacts(method, target, headers, "unix", PROFILE)
        try:
            decision = proxy.decide(common.POLICY, facts)
        except proxy.Refusal as refusal:
            raise InvariantViolation(f"forwarded {method} {target!r} is refused when decided again: "
                                     f"{refusal.reason}") from None
        common.check_decision(facts, decision)

    def _answer(self, conn: _DaemonConn) -> None:
        request, conn.request = conn.request, None
        assert request is not None
        base = [("Api-Version", "1.41"), ("Content-Type", "application/json")]
        if request.target.split(b"?")[0].endswith(b"/events"):
            out = conn.h11.send(h11.Response(status_code=200, headers=[*base, ("Transfer-Encoding", "chunked")]))
            for i in range(2 if request.method != b"HEAD" else 0):
                out += conn.h11.send(h11.Data(data=b'{"status":"start","id":"c%d"}\n' % i))
        else:
            body = b'{"ok":true}\n'
            out = conn.h11.send(h11.Response(status_code=200, headers=[*base, ("Content-Length", str(len(body)))]))
            if request.method != b"HEAD":
                out += conn.h11.send(h11.Data(data=body))
        out += conn.h11.send(h11.EndOfMessage())
        conn.sock.sendall(out)  # small: fits the socket buffer
        conn.h11.start_next_cycle()


_daemon: FakeDaemon | None = None


def daemon() -> FakeDaemon:
    global _daemon
    if _daemon is None:
        _daemon = FakeDaemon()
    return _daemon


DELIVERIES = ("whole", "lines", "pieces")


def pieces(data: bytes, delivery: str) -> list[bytes]:
    """How the client's bytes arrive: in one write, one line at a time, or in 7-byte pieces
    (the loop runs between writes, so the proxy sees partial heads and bytes arriving while a
    request is in flight)."""
    if delivery == "lines":
        return data.splitlines(keepends=True) or [b""]
    if delivery == "pieces":
        return [data[i:i + 7] for i in range(0, len(data), 7)] or [b""]
    return [data]


# ---- the reference: a plain h11 server + decide ----------------------------------------------

def reference(data: bytes, delivery: str = "whole") -> list[tuple[str, int, bytes | None]]:
    """What should happen to `data`: one (method, status, forwarded target or None) per request
    the proxy answers, in order. Status 200 means forwarded.

    h11 is fed the pieces of the delivery one at a time, as the proxy's h11 gets them: whether
    an oversized or broken head is reported as 431 ("receive buffer too long") or as 400
    depends on how much of it h11 holds when it looks, and that is h11's business."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    feed: list[bytes] = [piece for piece in pieces(data, delivery) if piece] + [b""]  # b"": EOF
    out: list[tuple[str, int, bytes | None]] = []
    refusals_in_a_row = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            out.append(("GET", exc.error_status_hint, None))
            return out
        if event is h11.NEED_DATA and feed:
            conn.receive_data(feed.pop(0))
            continue
        if not isinstance(event, h11.Request):  # ConnectionClosed (or nothing more)
            return out
        headers = list(event.headers)
        method = event.method.decode("latin-1")
        lengths = [v for n, v in headers if n == b"content-length"]
        has_body = any(n == b"transfer-encoding" for n, _ in headers) or any(v.strip() != b"0" for v in lengths)
        if not has_body and conn.their_state is h11.SEND_BODY:
            conn.next_event()
        head_size = len(event.method) + len(event.target) + 14 + sum(len(n) + len(v) + 4 for n, v in headers)
        facts = common.request_facts(method, event.target, headers, "tcp", PROFILE, event.http_version)
        try:
            if head_size > MAX_HEAD:
                raise proxy.Refusal(431, "head too large", close=True)
            decision = proxy.decide(common.POLICY, facts)
        except proxy.Refusal as refusal:
            out.append((method, refusal.status, None))
            refusals_in_a_row += 1
            if refusal.close or refusals_in_a_row >= proxy.MAX_REFUSALS_IN_A_ROW:
                return out
        else:
            out.append((method, 200, decision.target.forward_form().encode("ascii")))
            refusals_in_a_row = 0
        conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return out
        conn.start_next_cycle()


def parse_responses(received: bytes, methods: list[str]) -> list[tuple[int, bytes]]:
    """The responses the client got, read with an h11 client that sent `methods` in order."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(received)
    conn.receive_data(b"")
    out: list[tuple[int, bytes]] = []
    for method in methods:
        if conn.our_state is not h11.IDLE:
            break
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        status, body = None, b""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise InvariantViolation(f"malformed response to the client: {exc}; got {received[:300]!r}") from None
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed) or event is h11.NEED_DATA:
                return out
        require(status is not None, "response without a head")
        out.append((status, body))
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            break
    extra = conn.trailing_data[0] if conn.their_state is not h11.ERROR else b""
    require(not extra, "bytes after the last expected response", extra[:200])
    return out


# ---- driving the proxy ------------------------------------------------------------------------

class Run:
    """One input through a fresh Proxy."""

    def __init__(self) -> None:
        self.up = daemon()
        self.up.reset()
        settings = proxy.Settings(
            listeners=(LISTENER,),
            upstream=proxy.Endpoint("unix://" + self.up.path, "unix", path=self.up.path),
            rules_path=common.RULES_PATH, max_head_bytes=MAX_HEAD)
        self.log_stream = io.StringIO()
        self.proxy = proxy.Proxy(settings, common.POLICY, proxy.Log("json", "debug", self.log_stream))
        self.ours, theirs = socket.socketpair()
        self.ours.setblocking(False)
        theirs.setblocking(False)
        self.client = self.proxy.admit(theirs, LISTENER, "127.0.0.1:40000", "127.0.0.1")
        self.received = bytearray()
        self.peer_closed = False

    def close(self) -> None:
        p = self.proxy
        for key in list(p.loop.selector.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        p.pool.close()
        self.client.sock.close()
        p.loop.selector.close()
        self.ours.close()
        self.up.reset()

    def drain_client(self) -> bool:
        busy = False
        while not self.peer_closed:
            try:
                data = self.ours.recv(65536)
            except BlockingIOError:
                break
            except ConnectionResetError:
                data = b""
            busy = True
            if not data:
                self.peer_closed = True
                break
            self.received += data
        return busy

    def round(self) -> bool:
        busy = self.proxy.loop.run_once(0) > 0  # the proxy's own loop pass, without waiting
        busy = self.up.serve() or busy
        return self.drain_client() or busy

    def settle(self) -> None:
        for _ in range(MAX_ROUNDS):
            if not self.round():
                return
        raise InvariantViolation(f"the proxy never settled in {MAX_ROUNDS} loop rounds (busy loop?)")

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        stuck = 0
        while view:
            try:
                sent = self.ours.send(view)
            except BlockingIOError:
                sent = 0
            except (BrokenPipeError, ConnectionResetError):
                return  # the proxy closed on us (e.g. after a 400): the rest is never read
            view = view[sent:]
            if not self.round() and not sent:
                stuck += 1
                require(stuck < 50, "the proxy stopped reading a client it has not answered",
                        len(data) - len(view), self.client.state)
            else:
                stuck = 0


def check(data: bytes, delivery: str | None = None) -> None:
    """Run one client byte stream through the proxy; raise on a broken invariant. The delivery
    (see pieces()) is picked from the input's length unless given."""
    delivery = delivery or DELIVERIES[len(data) % len(DELIVERIES)]
    expected = reference(data, delivery)
    run = Run()
    try:
        for piece in pieces(data, delivery):
            run.send(piece)
            run.round()
        run.settle()
        with contextlib.suppress(OSError):
            run.ours.shutdown(socket.SHUT_WR)
        run.settle()
        require(run.client.state is proxy.ClientState.CLOSED and not run.proxy.clients, "the proxy kept the connection after the "
                "client's FIN", run.client.state, bytes(run.received[-200:]))
        require(run.peer_closed, "the client never saw the proxy close the connection")
        require(not run.proxy.dispatch.streams_per_client, "stream slots leaked", run.proxy.dispatch.streams_per_client)
        forwarded = [(m, t) for m, t, _ in run.up.forwarded]
        log_text = run.log_stream.getvalue()
        received = bytes(run.received)
    finally:
        run.close()
    records = [json.loads(line) for line in log_text.splitlines()]
    errors = [r for r in records if r.get("event") == "internal_error"]
    require(not errors, "internal error logged", errors)
    want_forwarded = [(m, t) for m, s, t in expected if s == 200]
    require(forwarded == want_forwarded, "forwarded requests differ from the reference", forwarded, want_forwarded)
    responses = parse_responses(received, [m for m, _, _ in expected])
    statuses = [s for s, _ in responses]
    require(statuses == [s for _, s, _ in expected], "answers differ from the reference",
            statuses, expected, received[:400])
    for (method, status, _), (_, body) in zip(expected, responses):
        if status in LOCAL_STATUSES and method != "HEAD":
            message = json.loads(body).get("message", "")
            require(message.startswith("porthole: "), "local error body is not a porthole message", body)
    request_lines = [r for r in records if r.get("event") == "request"]
    require(len(request_lines) == len(expected), "not one log line per exchange",
            len(request_lines), len(expected))


def main() -> None:
    atheris.Setup(common.self_command(sys.argv), check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
