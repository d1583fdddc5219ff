"""The hostile-request suite: every case of hostile_cases.py against the proxy, in front of
the recording fake upstream.

The central assertion of every case: the upstream received NOTHING, or only the rebuilt
canonical form of an allowed request, byte for byte. Around it, for every case: the client
got a response (a JSON {"message": "porthole: ..."} for porthole's own 4xx/5xx) or a close,
never a hang and never a 1xx; the proxy closes where an unread body could follow; it logged
one JSON line per request with the right decision; and it is still alive and serving.

One proxy (shipped rules.json; listeners tcp, unix, unix?profile=log-reader; --head-timeout 1;
--max-streams-per-client 2) and one fake upstream serve the whole module.
"""
from __future__ import annotations

import json
import select
import socket
import time

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

import h11

import support
import fake_upstream as fu
from fake_upstream import ConnectionClosed, FakeUpstream, HttpClient
import hostile_cases as hc
from hostile_cases import CASES, Case
from policies import SHIPPED
# the pure policy functions, for the property test's oracle
from porthole.core.decide import RequestFacts, decide
from porthole.core.target import Refusal, canonicalize_target

pytestmark = pytest.mark.timeout(120)

LOCAL_STATUSES = {400, 403, 408, 413, 429, 431, 501, 505}  # what porthole itself answers


# ---------------------------------------------------------------------------------------------
# the module's proxy and upstream


class Rig:
    """The module's proxy + fake upstream, with the bookkeeping every exchange needs."""

    def __init__(self, proxy, upstream, addrs):
        self.proxy = proxy
        self.up = upstream
        self.addrs = addrs  # listener name -> address for fu.HttpClient
        self.barriers = 0
        self.expected_upstream_bytes = 0  # running total: what the upstream may have received
        self.open_snapshots = 0  # snapshots not yet settled by since(): a test stopped early

        self._lines_seen = 0
        self._requests_logged = []  # parsed "request" log lines, in order
        self._internal_errors = []  # parsed "internal_error" log lines

    # ---- bookkeeping ------------------------------------------------------------------------
    def _parse_new_lines(self):
        lines = self.proxy.stderr_lines()
        for line in lines[self._lines_seen:]:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") == "request":
                self._requests_logged.append(obj)
            elif isinstance(obj, dict) and obj.get("event") == "internal_error":
                self._internal_errors.append(obj)
        self._lines_seen = len(lines)

    def request_lines(self):
        """The proxy's request log lines so far (parsed incrementally)."""
        self._parse_new_lines()
        return self._requests_logged

    def internal_errors(self):
        """Log lines of connection handlers that crashed (caught by the proxy's loop)."""
        self._parse_new_lines()
        return self._internal_errors

    def snapshot(self):
        self.open_snapshots += 1
        return {"requests": len(self.up.requests), "bytes": len(self.up.all_bytes()),
                "logs": len(self.request_lines()), "internal_errors": len(self.internal_errors())}

    def barrier(self):
        """An allowed GET on a fresh connection; returns when the upstream has it and the
        proxy has logged it. Everything a case caused happened before this."""
        self.barriers += 1
        target = "/_ping?barrier=%d" % self.barriers
        r = fu.get(self.addrs["tcp"], target, timeout=10)
        assert (r.status, r.body) == (200, b"OK"), ("barrier failed: proxy not serving", r, r.body)
        raw = hc.canonical("GET", target)
        assert support.wait_until(lambda: any(q.raw == raw for q in self.up.requests[-5:]), 5), \
            "barrier never reached the upstream"
        assert support.wait_until(lambda: any(l.get("target") == target for l in self.request_lines()[-5:]),
                                  5, interval=0.005), "barrier never logged"
        time.sleep(0.02)  # let the fake's reader threads record any straggler
        self.expected_upstream_bytes += len(raw)
        return target, raw

    def since(self, snap):
        """Settle a snapshot: (the raw requests the upstream received since, other than the
        barrier; the number of bytes it received since, other than the barrier; the request
        log lines since, up to the barrier's)."""
        self.open_snapshots -= 1
        target, raw = self.barrier()
        new = self.up.requests[snap["requests"]:]
        barrier_hits = [q for q in new if q.raw == raw]
        assert len(barrier_hits) == 1, new
        others = [q for q in new if q is not barrier_hits[0]]
        total_new = len(self.up.all_bytes()) - snap["bytes"]
        lines = self.request_lines()[snap["logs"]:]
        index = next(i for i, l in enumerate(lines) if l.get("target") == target)
        return b"".join(q.raw for q in others), total_new - len(raw), lines[:index]


@pytest.fixture(scope="module")
def rig():
    up = FakeUpstream().start()
    port = support.free_port()
    unix_url, unix_path = support.unix_listen_url("d.sock", "mode=0666")
    logs_url, logs_path = support.unix_listen_url("l.sock", "mode=0666&profile=log-reader")
    p = support.ProxyProcess(
        listen=["tcp://127.0.0.1:%d" % port, unix_url, logs_url], upstream=up.url,
        args=["--head-timeout", str(hc.HEAD_TIMEOUT), "--max-streams-per-client", "2"])
    try:
        with p.running():  # must stay up for the whole module and exit 0 on SIGTERM
            r = Rig(p, up, {"tcp": ("127.0.0.1", port), "unix": unix_path, "unix-logs": logs_path})
            yield r
            # every stderr line is one JSON object: hostile bytes never broke a log line
            bad = [l for l in p.stderr_lines() if l.strip() and not _is_json_object(l)]
            # and the upstream received nothing but what the cases allowed (plus barriers)
            total = len(up.all_bytes())
        assert not bad, bad[:5]
        if r.open_snapshots == 0:  # else a test stopped before its accounting; it failed already
            assert total == r.expected_upstream_bytes, (total, r.expected_upstream_bytes)
    finally:
        up.stop()


def _is_json_object(line):
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# talking to the proxy


def _readable(sock):
    return bool(select.select([sock], [], [], 0)[0])


def send_case(rig, case: Case):
    """Write the case's bytes (stopping early if the proxy has already answered), then read
    what comes back. Returns (observed statuses, responses, client)."""
    c = HttpClient(rig.addrs[case.listener], timeout=10)
    try:
        for i, data in enumerate(case.writes):
            if i and case.pause:
                time.sleep(case.pause)
            if i and _readable(c.sock):
                break  # answered already (431, 408, ...): a real client would stop too
            try:
                c.send(data)
            except OSError:
                break
        if case.half_close:
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        observed, responses = [], []
        wanted = max(len(statuses) for statuses, _ in case.outcomes())
        for i in range(wanted):
            # the first answer may take --head-timeout (+ the proxy's 0.25 s timer sweep)
            timeout = hc.HEAD_TIMEOUT + 4 if i == 0 else 4
            try:
                r = c.read_response("HEAD" if case.head else "GET", timeout=timeout)
            except ConnectionClosed:
                observed.append("closed" if not c.buf else "truncated:%r" % bytes(c.buf[:200]))
                break
            except TimeoutError:
                observed.append("hang")
                break
            observed.append(r.status)
            responses.append(r)
        return observed, responses, c
    except BaseException:
        c.close()
        raise


def expected_log_decision(status):
    if status in (403, 429):
        return "deny"
    if status in LOCAL_STATUSES:
        return "error"
    return "allow"


def request_targets(raw: bytes):
    """Request targets of the (canonical, CRLF) requests concatenated in raw."""
    out = []
    for block in raw.split(b"\r\n\r\n"):
        if block:
            out.append(block.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1"))
    return out


def runs(items):
    """[403, 403, 403, 'closed'] -> "403 x3, 'closed'": long pipelines stay readable."""
    out = []
    for item in items:
        if out and out[-1][0] == item:
            out[-1][1] += 1
        else:
            out.append([item, 1])
    return ", ".join("%r x%d" % (item, n) if n > 1 else repr(item) for item, n in out)


def describe(case, observed, forwarded, client):
    received = bytes(client.all_received)
    return ("\ncase %s (%s, listener %s)\n  client sent:        %r%s\n  client got:         %s\n"
            "                      %r%s\n  upstream received:  %r\n  expected:           %s"
            % (case.id, case.category, case.listener, case.raw[:600],
               " ... (%d bytes)" % len(case.raw) if len(case.raw) > 600 else "", runs(observed),
               received[-600:] if len(received) > 600 else received,
               " (last 600 of %d bytes)" % len(received) if len(received) > 600 else "",
               forwarded[:600] if forwarded else forwarded,
               " or ".join("%s, forwarded %r" % (runs(st), fw if not fw or len(fw) < 200 else fw[:200] + b"...")
                           for st, fw in case.outcomes())))


# ---------------------------------------------------------------------------------------------
# the table


def test_case_table_is_well_formed():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(CASES) >= 80
    counts = hc.category_counts()
    assert all(counts[cat] > 0 for cat in hc.CATEGORIES), counts
    assert sum(counts[cat] for cat in hc.CATEGORIES) == counts["total"] == len(CASES)
    for case in CASES:
        assert case.category in hc.CATEGORIES, case.id
        assert case.listener in ("tcp", "unix", "unix-logs"), case.id
        for statuses, forwarded in case.outcomes():
            if forwarded is not None:
                # canonical bytes: CRLF heads, Host: docker, no body
                assert forwarded.count(b"\r\n\r\n") == len(request_targets(forwarded)), case.id
                for block in forwarded.split(b"\r\n\r\n")[:-1]:
                    assert block.split(b"\r\n")[1] == b"Host: docker", case.id
                assert forwarded.endswith(b"\r\n\r\n"), case.id
                # something is forwarded only if the client got an upstream answer (or the
                # client went away before it could get one)
                assert any(s not in LOCAL_STATUSES for s in statuses if isinstance(s, int)) \
                    or statuses == ("closed",), case.id
            else:
                assert all(s in LOCAL_STATUSES or s == "closed" for s in statuses), case.id
    print("\n" + hc.category_table())


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_case(rig, case):
    snap = rig.snapshot()
    observed, responses, client = send_case(rig, case)
    try:
        # the barrier runs while this connection is still open: whatever the proxy would do
        # with it has been done once the barrier has been served
        forwarded, forwarded_len, log_lines = rig.since(snap)
        rig.expected_upstream_bytes += forwarded_len  # checked case by case below
        # ---- the client got an answer or a close, never a hang ------------------------------
        assert "hang" not in observed, "proxy neither answered nor closed" + describe(case, observed, forwarded,
                                                                                    client)
        primary = case.outcomes()[0][0] == tuple(observed)
        must_close = case.closes is True and primary  # alternatives are judged by their own merits
        if observed and (observed[-1] == "closed" or str(observed[-1]).startswith("truncated")):
            closed = True
        else:
            closed = client.wait_closed(3.0 if must_close else 0.05)
        leftover = bytes(client.buf)
    finally:
        client.close()
    info = describe(case, observed, forwarded, client)

    # ---- THE central assertion: nothing forbidden reached the upstream ------------------------
    # whatever the client saw, the upstream got nothing or exactly an acceptable canonical form
    acceptable = {fwd or b"" for _, fwd in case.outcomes()}
    assert forwarded in acceptable and forwarded_len == len(forwarded), \
        "the upstream received something other than nothing or the canonical request" + info
    # ---- the client-visible outcome, and the forwarding that goes with it ----------------------
    matches = [(statuses, fwd) for statuses, fwd in case.outcomes() if tuple(observed) == statuses]
    assert matches, "unexpected client-visible outcome" + info
    statuses, expected_forward = matches[0]
    assert forwarded == (expected_forward or b""), \
        ("the upstream received nothing" if expected_forward else "a refused request reached the upstream") + info
    if matches[0] != case.outcomes()[0]:
        print("case %s: accepted alternative outcome %r (%s)" % (case.id, matches[0], case.note))

    # ---- what the client saw -----------------------------------------------------------------
    assert b" 100 Continue" not in client.all_received and b"HTTP/1.1 1" not in client.all_received, info
    for r in responses:
        if r.status in LOCAL_STATUSES:
            assert "application/json" in (r.header("content-type") or ""), (r.headers, info)
            if case.head:
                assert r.body == b"", info
            else:
                message = json.loads(r.body)["message"]
                assert message.startswith("porthole: "), (message, info)
    assert not leftover, "unexpected bytes after the expected response(s): %r" % leftover[:300] + info
    if must_close:
        assert closed, "the proxy kept the connection open after refusing a request whose body " \
                       "(or tunnel/upgrade bytes) could follow" + info

    # ---- one JSON log line per request, with the right decision ---------------------------------
    answered = [s for s in statuses if isinstance(s, int)]
    if answered:
        assert [l["decision"] for l in log_lines] == [expected_log_decision(s) for s in answered], \
            (log_lines, info)
        assert [l["status"] for l in log_lines] == answered, (log_lines, info)
    else:
        assert len(log_lines) <= 1 and all(l["decision"] in ("deny", "error") for l in log_lines), \
            (log_lines, info)
    # a log line names a canonical path exactly for what was forwarded
    forwarded_paths = [l["path"] for l in log_lines if l["path"] is not None]
    assert forwarded_paths == request_targets(expected_forward or b""), (log_lines, info)
    for l in log_lines:
        if l["decision"] != "allow":
            assert l["reason"], (l, info)
        if l["decision"] == "deny":
            assert l["path"] is None, (l, info)

    # ---- and the proxy is still there, and nothing crashed on the way ---------------------------
    assert rig.proxy.alive(), info
    assert rig.internal_errors()[snap["internal_errors"]:] == [], info


# ---------------------------------------------------------------------------------------------
# per-client stream limit (429): needs open streams, so it is not a table row


STREAM_TARGETS = ("/v1.41/events", "/v1.41/events?filters=%7B%7D")


def test_stream_limit_429_is_local_and_logged(rig):
    rig.up.route("/events", fu.events(interval=0.2))
    snap = rig.snapshot()
    streams = []
    try:
        # two different targets: identical /events watchers would share one subscription
        for target in STREAM_TARGETS:
            c = HttpClient(rig.addrs["tcp"], timeout=10)
            streams.append(c)
            c.request("GET", target)
            assert c.read_head().status == 200
        assert rig.up.wait_requests(snap["requests"] + 2)
        with HttpClient(rig.addrs["tcp"], timeout=10) as c:
            c.request("GET", "/v1.41/events?since=1")
            r = c.read_response()
            assert r.status == 429, r
            assert json.loads(r.body)["message"].startswith("porthole: "), r.body
            # a non-streaming request from the same client is still served
            c.request("GET", "/_ping")
            assert c.read_response().body == b"OK"
    finally:
        for c in streams:
            c.close()
    time.sleep(0.3)
    rig.up.routes.pop("/events", None)
    forwarded, forwarded_len, lines = rig.since(snap)
    assert forwarded == b"".join(hc.canonical("GET", t) for t in STREAM_TARGETS) + hc.PING, forwarded
    assert forwarded_len == len(forwarded)
    rig.expected_upstream_bytes += forwarded_len
    assert [l["status"] for l in lines if l["decision"] == "deny"] == [429], lines
    assert all(l.get("path") != "/v1.41/events?since=1" for l in lines)


def test_flood_of_pipelined_refusals_to_a_non_reading_client_is_bounded(rig):
    """A client pipelines refused (keep-alive 403) requests as fast as it can and never reads
    the answers. Each answer echoes the request's 4 KB path, so what porthole queues for the
    client adds up fast. Porthole must stop answering (and reading) a client that does not take
    its answers: the answers it produces are bounded by its socket buffer plus a bounded queue
    (a few MB, ~1000 answers here), not by the client's patience; its memory stays flat; it
    stays alive and serves others. (Kernel buffers on loopback absorb tens of MB, so what the
    client managed to send says nothing; porthole's own log count and RSS do.)"""
    snap = rig.snapshot()
    base = support.rss_bytes(rig.proxy.pid)
    one = hc.req("GET", "/containers/%s/export" % ("a" * 4000))
    data = one * ((1 << 20) // len(one))
    most = 3000  # 12 MB of answers: far above any sane queue plus the kernel's send buffer
    s = fu.connect(rig.addrs["tcp"])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.setblocking(False)
    sent, answered, started, checked = 0, 0, time.monotonic(), 0.0
    try:
        while time.monotonic() - started < 5.0 and answered <= most:
            if select.select([], [s], [], 0.05)[1]:
                try:
                    sent += s.send(data)
                except BlockingIOError:
                    pass
                except OSError:
                    break
            if time.monotonic() - checked > 0.25:
                checked = time.monotonic()
                answered = len(rig.request_lines()) - snap["logs"]
        elapsed = time.monotonic() - started
        growth = support.rss_bytes(rig.proxy.pid) - base
        assert rig.proxy.alive()
        assert fu.get(rig.addrs["tcp"], "/_ping", timeout=5).status == 200
    finally:
        s.close()
    forwarded, forwarded_len, lines = rig.since(snap)
    rig.expected_upstream_bytes += forwarded_len
    assert forwarded == hc.PING and forwarded_len == len(hc.PING), forwarded[:300]
    answered = len(lines)
    evidence = ("in %.1f s a client that read nothing sent %d MB of pipelined refused requests; porthole "
                "answered %d of them (%d MB of answers queued for a client that reads nothing) and grew "
                "by %d MB" % (elapsed, sent >> 20, answered, answered * len(lines[0]["reason"]) >> 20 if lines else 0,
                              growth >> 20))
    assert answered <= most, evidence
    assert growth < 24 << 20, evidence


# ---------------------------------------------------------------------------------------------
# property: generated heads, judged by proxy.decide() on the same input


VERSIONS = ["", "", "", "", "/v1.41", "/v1.41", "/v1.24", "/v1.041", "/v1.41.0", "/V1.41", "/v1", "/%761.41"]
ALLOWED_ENDPOINTS = [
    ("_ping",), ("version",), ("info",), ("events",), ("containers", "json"), ("containers", "c1", "json"),
    ("images", "json"), ("images", "busybox", "json"), ("images", "a", "b", "json"), ("networks",),
    ("volumes", "v1"), ("nodes", "n1"),
]
OTHER_ENDPOINTS = [
    ("containers", "web", "db", "json"), ("containers", "c1", "export"), ("containers", "c1", "archive"),
    ("containers", "c1", "logs"), ("containers", "c1", "top"), ("containers", "c1", "attach", "ws"),
    ("containers", "c1", "attach"), ("containers", "c1", "exec"), ("exec", "e1", "json"), ("exec", "e1", "start"),
    ("images", "busybox", "get"), ("images", "get"), ("images", "search"), ("swarm",), ("swarm", "unlockkey"),
    ("configs",), ("session",), ("grpc",), ("debug", "pprof", "goroutine"), ("services", "s1", "logs"),
    ("distribution", "busybox", "json"), ("plugins", "privileges"), ("containers", "create"),
]
SEGMENT_TRICKS = ["pct-first", "pct-first-lower", "pct-all", "upper", "double-pct", "dot-before",
                  "dotdot-before", "empty-before", "pct-2e", "pct-2f-join", "semicolon", "backslash", "nul",
                  "overlong", "plus", "trailing-slash"]


def _pct(ch, lower=False):
    text = "%%%02X" % ord(ch)
    return text.lower() if lower else text


def _segment(seg, trick):
    if trick == "pct-first":
        return _pct(seg[0]) + seg[1:]
    if trick == "pct-first-lower":
        return _pct(seg[0], True) + seg[1:]
    if trick == "pct-all":
        return "".join(_pct(c) for c in seg)
    if trick == "upper":
        return seg.upper()
    if trick == "double-pct":
        return "%25" + "%02X" % ord(seg[0]) + seg[1:]
    if trick == "dot-before":
        return "./" + seg
    if trick == "dotdot-before":
        return "x/../" + seg
    if trick == "empty-before":
        return "/" + seg
    if trick == "pct-2e":
        return "%2e/" + seg
    if trick == "pct-2f-join":
        return seg + "%2F"
    if trick == "semicolon":
        return seg + ";p=1"
    if trick == "backslash":
        return seg + "\\"
    if trick == "nul":
        return seg + "%00"
    if trick == "overlong":
        return "%C0%AE%C0%AE/" + seg
    if trick == "plus":
        return seg + "+"
    if trick == "trailing-slash":
        return seg + "/"
    return seg


BENIGN_QUERY = ["all=1", "all=0", "size=1", "filters=%7B%22status%22%3A%5B%22running%22%5D%7D", "x", "a+b=c+d",
                "%61ll=1", "x=/../../containers/c1/export", "_method=DELETE", "follow=on", "path=/etc/shadow"]
HOSTILE_QUERY = ["q=%00", "q=%ff", "q=#frag", "q=;x", "=1", "q=%zz", "all=1&all=0", "a%00=1", "q=%C0%AF"]
BENIGN_HEADERS = [("User-Agent", "Docker-Client/28.2.2 (linux)"), ("Accept", "application/json"),
                  ("X-Registry-Auth", "c2VjcmV0"), ("Cookie", "a=b"), ("Connection", "keep-alive"),
                  ("Content-Length", "0"), ("X-HTTP-Method-Override", "DELETE"), ("Accept", "caf\xe9"),
                  ("Proxy-Connection", "keep-alive"), ("Expect", "100-continue"), ("Content-Type", "text/plain")]
HOSTILE_HEADERS = [("Origin", "http://evil.example"), ("Origin", "null"), ("Upgrade", "websocket"),
                   ("Connection", "Upgrade"), ("Content-Length", "0, 0"), ("Content-Length", "00"),
                   ("Content-Length", "5"), ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "gzip"),
                   ("User-Agent", "evil\x01agent"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                   ("Connection", "keep-alive, upgrade"), ("Upgrade", "h2c")]
HOSTS = [["localhost"]] * 6 + [["127.0.0.1:2375"], ["[::1]"], ["docker"], ["x.localhost"], [], ["evil.example"],
                               ["127.0.0.1.nip.io"], ["localhost", "localhost"]]


AXES = ("method", "version", "segment", "query", "form", "http-version", "host", "header", "line-end", "body")


@st.composite
def hostile_requests(draw):
    """A benign read (method, endpoint, version prefix, query, Host, headers) with tricks on up
    to three axes: method, version prefix, path segments, query, target form, HTTP version,
    Host, headers (upgrade, body framing, Origin, control bytes), line ends, body."""
    tricks = draw(st.sets(st.sampled_from(AXES), max_size=3))
    pick = st.sampled_from
    method = draw(pick(["GET"] * 4 + ["HEAD"]))
    if "method" in tricks:
        method = draw(pick(["get", "Get", "POST", "DELETE", "PUT", "OPTIONS", "PATCH", "TRACE", "CONNECT", "PRI"]))
    endpoint = draw(pick(ALLOWED_ENDPOINTS * 2 + OTHER_ENDPOINTS))
    segments = list(endpoint)
    if "segment" in tricks:
        i = draw(st.integers(0, len(segments) - 1))
        segments[i] = _segment(segments[i], draw(pick(SEGMENT_TRICKS)))
    version = draw(pick(["", "/v1.41", "/v1.24", "/%761.41"]))
    if "version" in tricks:
        version = draw(pick(["/v1.041", "/v1.41.0", "/V1.41", "/v1", "/v1.41/v1.41", "/v.1", "/v1.41%2F"]))
    target = version + "/" + "/".join(segments)
    pairs = draw(st.lists(pick(BENIGN_QUERY), max_size=2))
    if "query" in tricks:
        pairs.append(draw(pick(HOSTILE_QUERY)))
    if pairs or draw(st.booleans()):
        target += "?" + "&".join(pairs)
    if "form" in tricks:
        target = draw(pick(["*", "http://docker" + target, target + "#f", "docker:2375", target + " x"]))
    http_version = draw(pick(["HTTP/1.1"] * 4 + ["HTTP/1.0"]))
    if "http-version" in tricks:
        http_version = draw(pick(["HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/1.1 x", "HTTP/11"]))
    hosts = ["localhost"] if http_version != "HTTP/1.0" or draw(st.booleans()) else []
    if "host" in tricks:
        hosts = draw(pick([["127.0.0.1:2375"], ["[::1]"], ["docker"], ["x.localhost"], [], ["evil.example"],
                           ["127.0.0.1.nip.io"], ["localhost", "localhost"], ["localhost", "evil.example"]]))
    headers = [("Host", h) for h in hosts]
    headers += draw(st.lists(pick(BENIGN_HEADERS), max_size=3, unique=True))
    if "header" in tricks:
        headers += draw(st.lists(pick(HOSTILE_HEADERS), min_size=1, max_size=2, unique=True))
    headers = draw(st.permutations(headers))
    eol = b"\n" if "line-end" in tricks else b"\r\n"
    body = b""
    names = [n.lower() for n, _ in headers]
    if "transfer-encoding" in names:
        body = b"0\r\n\r\n" + hc.req("DELETE", "/containers/c1")
    elif ("Content-Length", "5") in headers:
        body = b"hello"
    elif "body" in tricks and "content-length" not in names:
        smuggled = hc.req("POST", "/containers/create")
        headers.append(("Content-Length", str(len(smuggled))))
        body = smuggled
    listener = draw(pick(["tcp", "tcp", "unix"]))
    return listener, hc.req(method, target, headers, body, http_version, eol)


def oracle(raw: bytes, listener: str):
    """What the proxy must do with raw, by the pure functions: (status or None for
    'forwarded', canonical bytes or None)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=hc.MAX_HEAD_BYTES)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        return exc.error_status_hint, None
    assert isinstance(event, h11.Request), (event, raw)
    headers = list(event.headers)
    kind = "unix" if listener.startswith("unix") else "tcp"
    facts = RequestFacts(event.method.decode("latin-1"), event.target, headers, kind, "default", event.http_version)
    try:
        decision = decide(SHIPPED, facts)
    except Refusal as refusal:
        return refusal.status, None
    kept = [(n, v) for n, v in headers if n in (b"user-agent", b"accept")]
    # the canonical target is a fixpoint: canonicalising it again changes nothing
    again = canonicalize_target(decision.target.forward_form().encode())
    assert again == decision.target, (again, decision.target)
    return None, hc.canonical(facts.method, decision.target.forward_form(), *kept)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(hostile_requests())
def test_property_generated_heads(rig, request_):
    listener, raw = request_
    status, canonical = oracle(raw, listener)
    event("forwarded" if canonical else "refused %s" % status)
    snap = rig.snapshot()
    case = Case(id="generated", category="generated", send=raw, forwarded=canonical,
                status=status or 200, listener=listener, head=raw.startswith(b"HEAD "))
    observed, responses, client = send_case(rig, case)
    forwarded, forwarded_len, lines = rig.since(snap)
    client.close()
    info = describe(case, observed, forwarded, client)
    rig.expected_upstream_bytes += forwarded_len
    assert rig.proxy.alive(), info
    assert rig.internal_errors()[snap["internal_errors"]:] == [], info
    assert observed and observed[0] != "hang", "neither an answer nor a close" + info
    if canonical is None:
        assert forwarded_len == 0, "forwarded although decide() refuses it" + info
        assert observed[0] == status, info
        if responses and not case.head:
            assert json.loads(responses[0].body)["message"].startswith("porthole: "), info
    else:
        assert forwarded == canonical and forwarded_len == len(canonical), "not the canonical bytes" + info
        assert observed[0] in (200, 404), info
    assert len(lines) == 1 and lines[0]["decision"] == ("allow" if canonical else
                                                        expected_log_decision(status)), (lines, info)
