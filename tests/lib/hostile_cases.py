"""The hostile-request table: data only, no sockets.

Every case is what a hostile client writes to a Porthole listener, byte for byte, and what
may come of it:

* ``forwarded``: ``None`` when the upstream must receive NOTHING, else the exact bytes the
  upstream may receive -- the rebuilt canonical request (request line with the canonical
  target, ``Host: docker``, then only the client's User-Agent/Accept, lowercase names as h11
  hands them over) -- byte for byte, nothing more.
* ``status``: the client-visible outcome: an HTTP status (400/403/408/413/429/431/501 from
  porthole, or the fake upstream's status for a forwarded request), ``"closed"`` (the proxy
  closes without answering), or a tuple of statuses for pipelined requests, in order.
* ``closes``: True when the proxy must close the connection after answering (an unread
  request body must never be parsed as a next request); None when either is fine.
* ``also``: other outcomes that are equally safe, as ((status, forwarded), ...); used only
  where h11 or the RFC leave a choice (e.g. 501 vs 400 for an unsupported Transfer-Encoding,
  505 vs rebuilding an HTTP/1.2 request). The note says why.

Cases run against the SHIPPED rules.json (profile ``default``) on these listeners:
``tcp`` (127.0.0.1), ``unix`` (default profile) and ``unix-logs`` (profile ``log-reader``),
with ``--head-timeout 1`` (see test_hostile.py). The fake upstream (fake_upstream.py)
answers /_ping, /version, /info, /containers/json, /containers/{x}/json and /images/json
with 200, anything else with 404.

``python3 tests/lib/hostile_cases.py`` prints the category table (for SECURITY.md).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from fake_upstream import as_bytes, build_request

CATEGORIES = ("method", "path", "framing", "upgrade", "browser", "dangerous-read", "limits")

HEAD_TIMEOUT = 1.0  # the --head-timeout test_hostile.py gives the proxy
MAX_HEAD_BYTES = 16384  # the proxy's default --max-head-bytes (not overridden)
MAX_REFUSALS = 100  # refusals in a row after which the proxy closes a connection


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    send: bytes | tuple | list  # one write, or a sequence of writes (split / slow cases)
    forwarded: bytes | None  # None: the upstream receives nothing; else exactly these bytes
    status: int | str | tuple  # client-visible outcome (tuple: pipelined responses in order)
    listener: str = "tcp"  # tcp | unix | unix-logs
    closes: bool | None = None  # the proxy must (True) close after its answer(s)
    pause: float = 0.0  # seconds between writes
    half_close: bool = False  # shutdown(SHUT_WR) after the last write
    head: bool = False  # the request(s) are HEAD: responses carry no body
    also: tuple = ()  # ((status, forwarded), ...): other safe outcomes, see note
    note: str = ""

    @property
    def writes(self) -> tuple:
        return tuple(self.send) if isinstance(self.send, (tuple, list)) else (self.send,)

    @property
    def raw(self) -> bytes:
        return b"".join(self.writes)

    @property
    def statuses(self) -> tuple:
        return self.status if isinstance(self.status, tuple) else (self.status,)

    def outcomes(self) -> list:
        """Every acceptable (statuses, forwarded) pair, the primary one first."""
        out = [(self.statuses, self.forwarded)]
        for status, forwarded in self.also:
            out.append((status if isinstance(status, tuple) else (status,), forwarded))
        return out


# ---------------------------------------------------------------------------------------------
# builders

HOST = (("Host", "localhost"),)
UA = "Docker-Client/28.2.2 (linux)"


def req(method="GET", target="/_ping", headers=HOST, body=b"", version="HTTP/1.1", eol=b"\r\n") -> bytes:
    """A raw request, exactly as given (no header is added, not even Content-Length)."""
    return build_request(method, target, headers, body, version, eol)


def with_body(method, target, body, extra=()) -> bytes:
    body = as_bytes(body)
    return req(method, target, HOST + tuple(extra) + (("Content-Length", str(len(body))),), body)


def canonical(method, target, *headers) -> bytes:
    """The rebuilt request porthole sends upstream: canonical target, Host: docker, then the
    client's User-Agent / Accept (in the client's order, names lowercase)."""
    return build_request(method, target, (("Host", "docker"),) + headers)


PING = canonical("GET", "/_ping")
CJSON = canonical("GET", "/containers/json")
TAR_BODY = b"pwned.txt".ljust(100, b"\0") + b"0000644\0" + b"\0" * 404  # a tar-looking body
CREATE_BODY = b'{"Image":"busybox","Cmd":["sh","-c","touch /pwned"],"HostConfig":{"Privileged":true}}'
EXEC_BODY = b'{"Cmd":["sh","-c","touch /pwned"],"AttachStdout":true}'
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(range(32)) + b"\x00\x02\x13\x01\x01\x00"
WS = (("Host", "localhost"), ("Connection", "Upgrade"), ("Upgrade", "websocket"),
      ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="))
WS_FRAME = b"\x81\x86" + b"\x01\x02\x03\x04" + bytes(a ^ b for a, b in zip(b"rm -rf", b"\x01\x02\x03\x04\x01\x02"))


def _case(cat):
    def make(id, send, forwarded, status, **kw):
        return Case(id=id, category=cat, send=send, forwarded=forwarded, status=status, **kw)
    return make


# ---------------------------------------------------------------------------------------------
# methods: only GET and HEAD are ever forwarded, and never turned into one another

m = _case("method")
METHOD = [
    m("lowercase-get", req("get", "/_ping"), None, 403, closes=True,
      note="methods are case-sensitive: 'get' is not GET"),
    m("mixedcase-get", req("Get", "/containers/json"), None, 403, closes=True),
    m("options-path", req("OPTIONS", "/_ping"), None, 403, closes=True),
    m("options-asterisk", req("OPTIONS", "*"), None, 403, closes=True),
    m("connect-authority", req("CONNECT", "docker:2375", (("Host", "docker:2375"),)), None, 403, closes=True),
    m("connect-then-tunnel-bytes",
      req("CONNECT", "127.0.0.1:2375", (("Host", "127.0.0.1:2375"),)) + req("GET", "/containers/c1/export"),
      None, 403, closes=True, note="bytes after a CONNECT head are a tunnel, never a request"),
    m("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + H2_SETTINGS, None, 403, closes=True),
    m("method-override-headers",
      req("GET", "/containers/json", HOST + (("X-HTTP-Method-Override", "DELETE"), ("X-HTTP-Method", "DELETE"),
                                              ("X-Method-Override", "DELETE"))),
      CJSON, 200, note="override headers are dropped; the daemon gets a plain GET"),
    m("method-override-query", req("GET", "/containers/json?_method=DELETE"),
      canonical("GET", "/containers/json?_method=DELETE"), 200,
      note="harmless to the daemon; forwarded in canonical form"),
    m("head-export", req("HEAD", "/containers/c1/export"), None, 403, head=True,
      note="HEAD of a dangerous read is refused, never turned into GET"),
    m("head-archive", req("HEAD", "/containers/c1/archive?path=/etc/shadow"), None, 403, head=True),
    m("head-ping-stays-head", req("HEAD", "/_ping"), canonical("HEAD", "/_ping"), 200, head=True),
    m("head-containers-json-no-rule", req("HEAD", "/containers/json"), None, 403, head=True,
      note="the default profile allows GET only there; HEAD is not upgraded to GET"),
    m("trace", req("TRACE", "/_ping"), None, 403, closes=True),
    m("track", req("TRACK", "/_ping"), None, 403, closes=True),
    m("patch", with_body("PATCH", "/containers/c1", b'{"Memory":1}'), None, 403, closes=True),
    m("put-archive", with_body("PUT", "/containers/c1/archive?path=/tmp", TAR_BODY), None, 403, closes=True),
    m("delete-container", req("DELETE", "/containers/c1?force=1"), None, 403, closes=True),
    m("post-no-body", req("POST", "/containers/c1/kill"), None, 403, closes=True),
    m("post-content-length-0", req("POST", "/containers/c1/stop", HOST + (("Content-Length", "0"),)),
      None, 403, closes=True),
    m("post-create-with-body", with_body("POST", "/v1.41/containers/create", CREATE_BODY,
                                         (("Content-Type", "application/json"),)), None, 403, closes=True),
    m("post-exec-create", with_body("POST", "/containers/c1/exec", EXEC_BODY), None, 403, closes=True),
    m("unknown-method-brew", req("BREW", "/_ping"), None, 403, closes=True),
    m("webdav-propfind", req("PROPFIND", "/containers/json", HOST + (("Depth", "1"),)), None, 403, closes=True),
    m("ssdp-msearch", req("M-SEARCH", "*", (("Host", "239.255.255.250:1900"),)), None, 403, closes=True),
    m("double-space-after-method", b"GET  /_ping HTTP/1.1\r\nHost: localhost\r\n\r\n", None, 400, closes=True),
    m("nul-in-method", b"GET\x00 /_ping HTTP/1.1\r\nHost: localhost\r\n\r\n", None, 400, closes=True),
]

# ---------------------------------------------------------------------------------------------
# paths: only the canonical form is matched, and only the canonical form is forwarded

p = _case("path")
PATH = [
    p("pct-65xport", req("GET", "/containers/c1/%65xport"), None, 403,
      note="decoded once: it IS export, a dangerous read"),
    p("pct-attach-77s", req("GET", "/containers/c1/attach/%77s"), None, 403),
    p("pct-2e2e", req("GET", "/containers/json/%2e%2e/c1/export"), None, 400, closes=True),
    p("raw-dotdot", req("GET", "/containers/c1/json/../export"), None, 400, closes=True),
    p("pct-2F-in-segment", req("GET", "/containers/c1%2Fexport"), None, 400, closes=True),
    p("pct-2f-in-image-name", req("GET", "/images/busybox%2flatest/json"), None, 400, closes=True),
    p("double-slash-leading", req("GET", "//containers/json"), None, 400, closes=True),
    p("double-slash-middle", req("GET", "/containers//c1/json"), None, 400, closes=True),
    p("dot-segment", req("GET", "/./containers/json"), None, 400, closes=True),
    p("trailing-slash", req("GET", "/containers/json/"), None, 400, closes=True),
    p("semicolon-params", req("GET", "/containers/c1;x=1/json"), None, 400, closes=True),
    p("fragment", req("GET", "/_ping#frag"), None, 400, closes=True),
    p("absolute-form-allowed-path", req("GET", "http://docker/containers/json"), None, 400, closes=True),
    p("absolute-form-export", req("GET", "http://docker/containers/c1/export"), None, 400, closes=True),
    p("asterisk-get", req("GET", "*"), None, 400, closes=True),
    p("version-v1.41.0", req("GET", "/v1.41.0/containers/json"), None, 400, closes=True,
      note="the daemon's /v{version:[0-9.]+} would route it: refused, not normalised"),
    p("version-v1.041", req("GET", "/v1.041/containers/json"), None, 400, closes=True),
    p("version-V1.41", req("GET", "/V1.41/containers/json"), None, 400, closes=True),
    p("version-v1", req("GET", "/v1/containers/json"), None, 400, closes=True),
    p("version-only", req("GET", "/v1.41"), None, 400, closes=True),
    p("pct-encoded-version", req("GET", "/%761.41/containers/json"),
      canonical("GET", "/v1.41/containers/json"), 200,
      note="the daemon decodes %76 too: same endpoint, forwarded canonical"),
    p("uppercase-path", req("GET", "/CONTAINERS/json"), None, 403),
    p("uppercase-last-segment", req("GET", "/containers/JSON"), None, 403),
    p("legacy-link-name-export", req("GET", "/containers/web/db/export"), None, 403,
      note="the daemon routes names with '/', so web/db is one name: still export"),
    p("legacy-link-name-json", req("GET", "/containers/web/db/json"), None, 403),
    p("query-traversal", req("GET", "/containers/json?x=/../../containers/c1/export"),
      canonical("GET", "/containers/json?x=%2F..%2F..%2Fcontainers%2Fc1%2Fexport"), 200,
      note="an allowed path: forwarded with the value encoded, never a different path"),
    p("query-traversal-on-ping", req("GET", "/_ping?x=/../../containers/json"),
      canonical("GET", "/_ping?x=%2F..%2F..%2Fcontainers%2Fjson"), 200),
    p("query-filters-encoded", req("GET", "/v1.41/containers/json?all=1&filters={%22name%22:[%22a/b%22]}"),
      canonical("GET", "/v1.41/containers/json?all=1&filters=%7B%22name%22%3A%5B%22a%2Fb%22%5D%7D"), 200),
    p("query-plus-is-space", req("GET", "/containers/json?filters=a+b"),
      canonical("GET", "/containers/json?filters=a%20b"), 200),
    p("pct-nul", req("GET", "/containers/c1%00/json"), None, 400, closes=True),
    p("pct-c0af", req("GET", "/containers/%C0%AF/json"), None, 400, closes=True),
    p("overlong-utf8-dots", req("GET", "/containers/%C0%AE%C0%AE/c1/export"), None, 400, closes=True),
    p("overlong-utf8-3byte", req("GET", "/containers/%E0%80%AE%E0%80%AE/json"), None, 400, closes=True),
    p("raw-non-ascii", req("GET", b"/containers/caf\xc3\xa9/json"), None, 400, closes=True),
    p("backslash", req("GET", "/containers\\c1\\export"), None, 400, closes=True),
    p("pct-5C", req("GET", "/containers/c1%5Cexport"), None, 400, closes=True),
    p("tab-in-target", req("GET", "/containers/\tjson"), None, 400, closes=True),
    p("space-in-target", req("GET", "/containers/ json"), None, 400, closes=True),
    p("pct-encoded-allowed", req("GET", "/%63ontainers/%6Aso%6E"), CJSON, 200),
    p("pct-dot-segment", req("GET", "/containers/%2e/json"), None, 400, closes=True),
    p("plus-in-segment", req("GET", "/containers/a+b/json"), None, 400, closes=True),
    p("repeated-query-key", req("GET", "/containers/json?all=1&all=0"), None, 400, closes=True),
    p("semicolon-query", req("GET", "/containers/json?all=1;all=0"), None, 400, closes=True),
    p("pct-nul-query-key", req("GET", "/containers/json?a%00=1"), None, 400, closes=True),
    p("malformed-escape", req("GET", "/containers/%zzjson"), None, 400, closes=True),
    p("trailing-percent", req("GET", "/containers/json%"), None, 400, closes=True),
    p("double-encoded-export", req("GET", "/containers/c1/%2565xport"), None, 400, closes=True,
      note="decoded exactly once: '%65xport' is not a safe segment"),
    p("encoded-question-mark", req("GET", "/containers/json%3Fall=1"), None, 400, closes=True),
    p("encoded-hash", req("GET", "/_ping%23"), None, 400, closes=True),
    p("hidden-segment", req("GET", "/containers/.c1/json"), None, 400, closes=True),
    p("dash-segment", req("GET", "/containers/-rf/json"), None, 400, closes=True),
    p("empty-query", req("GET", "/containers/json?"), CJSON, 200),
    p("long-query-value", req("GET", "/containers/json?label=" + "a" * 4000),
      canonical("GET", "/containers/json?label=" + "a" * 4000), 200),
    p("image-name-ending-get-json", req("GET", "/images/x/get/json"),
      canonical("GET", "/images/x/get/json"), 404,
      note="inspect of an image named 'x/get' (the daemon routes it to inspect too; "
           "see test_hostile_daemon differential)"),
    p("no-rule-changes", req("GET", "/containers/c1/changes"), None, 403),
    p("no-rule-secrets", req("GET", "/secrets"), None, 403),
    p("no-rule-stats-default", req("GET", "/containers/c1/stats?stream=0"), None, 403),
    p("no-rule-system-df", req("GET", "/system/df"), None, 403),
    p("no-rule-plugins", req("GET", "/plugins"), None, 403),
]

# ---------------------------------------------------------------------------------------------
# framing: bodies, smuggling, odd heads

f = _case("framing")
_SMUGGLED_DELETE = req("DELETE", "/containers/c1?force=1")
FRAMING = [
    f("cve-2024-41110-get-with-body",
      req("GET", "/v1.41/containers/json", HOST + (("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(CREATE_BODY))),), CREATE_BODY),
      None, 403, closes=True),
    f("cve-2024-41110-post-cl0-body-follows",
      req("POST", "/v1.41/containers/create", HOST + (("Content-Length", "0"),)) + CREATE_BODY,
      None, 403, closes=True),
    f("chunked-get", req("GET", "/containers/json", HOST + (("Transfer-Encoding", "chunked"),),
                         b"5\r\nhello\r\n0\r\n\r\n"), None, 403, closes=True),
    f("cl-and-te", req("GET", "/_ping", HOST + (("Content-Length", "4"), ("Transfer-Encoding", "chunked")),
                       b"0\r\n\r\n" + _SMUGGLED_DELETE), None, 403, closes=True),
    f("te-obs-fold", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
                     b"0\r\n\r\n", None, 403, closes=True),
    f("te-gzip", req("GET", "/_ping", HOST + (("Transfer-Encoding", "gzip"),)), None, 501, closes=True,
      also=((400, None), (403, None)), note="h11 answers unsupported codings with 501"),
    f("te-identity", req("GET", "/_ping", HOST + (("Transfer-Encoding", "identity"),)), None, 501, closes=True,
      also=((400, None), (403, None))),
    f("te-chunked-twice", req("GET", "/_ping", HOST + (("Transfer-Encoding", "chunked, chunked"),)),
      None, 501, closes=True, also=((400, None), (403, None))),
    f("te-vertical-tab", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: \x0bchunked\r\n\r\n",
      None, 400, closes=True),
    f("cl-0-comma-0", req("GET", "/_ping", HOST + (("Content-Length", "0, 0"),)), PING, 200,
      note="h11 folds equal Content-Lengths to one 0: no body; the rebuilt request has none",
      also=((400, None), (403, None))),
    f("cl-0-and-5", req("GET", "/_ping", HOST + (("Content-Length", "0"), ("Content-Length", "5")), b"hello"),
      None, 400, closes=True),
    f("cl-empty", req("GET", "/_ping", HOST + (("Content-Length", ""),)), None, 400, closes=True),
    f("cl-negative", req("GET", "/_ping", HOST + (("Content-Length", "-1"),)), None, 400, closes=True),
    f("cl-plus", req("GET", "/_ping", HOST + (("Content-Length", "+5"),), b"hello"), None, 400, closes=True),
    f("cl-hex", req("GET", "/_ping", HOST + (("Content-Length", "0x5"),), b"hello"), None, 400, closes=True),
    f("cl-leading-zeros", req("GET", "/_ping", HOST + (("Content-Length", "00"),)), None, 403, closes=True,
      also=((200, PING),), note="'00' is zero; refusing it as a body is the stricter reading"),
    f("cl-huge", req("GET", "/_ping", HOST + (("Content-Length", "99999999999999999999"),)), None, 403,
      closes=True),
    f("bare-lf-head", req("GET", "/_ping", HOST + (("User-Agent", UA),), eol=b"\n"),
      canonical("GET", "/_ping", ("user-agent", UA)), 200, note="rebuilt with CRLF"),
    f("mixed-crlf-lf-head", b"GET /containers/json HTTP/1.1\nHost: localhost\r\nAccept: */*\n\r\n",
      canonical("GET", "/containers/json", ("accept", "*/*")), 200),
    f("bare-cr-head", (b"GET /_ping HTTP/1.1\rHost: localhost\r\r",), None, 408, closes=True,
      also=((400, None),), note="never a complete head: timed out (or refused)"),
    f("ctl-in-dropped-header", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nX-Junk: a\x01b\x7fc\r\n\r\n",
      None, 400, closes=True, note="h11 accepts; porthole refuses control bytes in any header"),
    f("ctl-in-forwarded-user-agent",
      b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nUser-Agent: evil\x01\x1b[2Jagent\r\n\r\n",
      None, 400, closes=True, also=((200, PING),),
      note="RFC 9110 5.5: CTLs make a field value invalid; the daemon (Go) rejects them with 400. "
           "Porthole must not forward them: refuse, or drop the header"),
    f("ctl-in-forwarded-accept", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nAccept: a\x08b\r\n\r\n",
      None, 400, closes=True, also=((200, PING),)),
    f("obs-text-user-agent", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nUser-Agent: caf\xe9\r\n\r\n",
      canonical("GET", "/_ping", ("user-agent", b"caf\xe9")), 200,
      note="obs-text is a legal field-value byte"),
    f("obs-fold-user-agent", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nUser-Agent: a\r\n\tb\r\n\r\n",
      canonical("GET", "/_ping", ("user-agent", "a b")), 200, note="unfolded into one line"),
    f("nul-in-header", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n", None, 400, closes=True),
    f("cr-in-header", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\n\r\n", None, 400, closes=True),
    f("two-host-headers", req("GET", "/_ping", (("Host", "localhost"), ("Host", "evil.example"))),
      None, 400, closes=True),
    f("no-host-http11", req("GET", "/_ping", ()), None, 400, closes=True),
    f("http10-no-host", req("GET", "/_ping", (), version="HTTP/1.0"), PING, 200, closes=True),
    f("http10-with-host", req("GET", "/containers/json", version="HTTP/1.0"), CJSON, 200, closes=True),
    f("http10-post", with_body("POST", "/containers/c1/kill", b"").replace(b"HTTP/1.1", b"HTTP/1.0"),
      None, 403, closes=True),
    f("http12", req("GET", "/_ping", version="HTTP/1.2"), PING, 200,
      also=((505, None), (400, None)), note="h11 reads 1.2 as HTTP/1.x; rebuilt as HTTP/1.1"),
    f("http20-request-line", req("GET", "/_ping", version="HTTP/2.0"), PING, 200,
      also=((505, None), (400, None)),
      note="h11 accepts a textual HTTP/2.0 request line; RFC 9112 suggests 505. Either is safe"),
    f("http09", b"GET /_ping\r\n\r\n", None, 400, closes=True),
    f("lowercase-http-version", req("GET", "/_ping", version="http/1.1"), None, 400, closes=True),
    f("expect-100-allowed-get", req("GET", "/_ping", HOST + (("Expect", "100-continue"),)), PING, 200,
      note="Expect is dropped; no 100 Continue is ever sent"),
    f("expect-100-post", req("POST", "/containers/create", HOST + (("Expect", "100-continue"),
                                                                   ("Content-Length", str(len(CREATE_BODY))))),
      None, 403, closes=True, note="refused before the body: no 100 Continue"),
    f("smuggled-request-in-body",
      req("GET", "/_ping", HOST + (("Content-Length", str(len(_SMUGGLED_DELETE))),), _SMUGGLED_DELETE),
      None, 403, closes=True),
    f("smuggled-after-cl0",
      req("GET", "/_ping", HOST + (("Content-Length", "0"),)) + _SMUGGLED_DELETE,
      PING, (200, 403), closes=True, note="two requests: the GET is served, the DELETE refused"),
    f("smuggled-in-chunked-body",
      req("GET", "/_ping", HOST + (("Transfer-Encoding", "chunked"),), b"0\r\n\r\n" + _SMUGGLED_DELETE),
      None, 403, closes=True),
    f("pipelined-post-after-get",
      req("GET", "/_ping") + with_body("POST", "/containers/create", CREATE_BODY), PING, (200, 403), closes=True),
    f("pipelined-dangerous-then-allowed",
      req("GET", "/containers/c1/export") + req("GET", "/containers/json"), CJSON, (403, 200)),
    f("pipelined-upgrade-after-get", req("GET", "/_ping") + req("GET", "/_ping", WS) + WS_FRAME,
      PING, (200, 403), closes=True),
    f("pipelined-after-connection-close",
      req("GET", "/_ping", HOST + (("Connection", "close"),)) + req("GET", "/containers/c1/export"),
      PING, (200, "closed"), closes=True, note="nothing after 'Connection: close' is even parsed"),
    f("pipelined-after-http10", req("GET", "/_ping", version="HTTP/1.0") + req("DELETE", "/containers/c1"),
      PING, (200, "closed"), closes=True),
    f("http10-keep-alive-pipelined",
      req("GET", "/_ping", HOST + (("Connection", "keep-alive"),), version="HTTP/1.0")
      + req("GET", "/containers/json", version="HTTP/1.0"),
      PING, (200, "closed"), closes=True, also=(((200, 200), PING + CJSON),),
      note="h11 does not keep HTTP/1.0 connections alive"),
    f("te-chunked-uppercase", req("GET", "/_ping", HOST + (("Transfer-Encoding", "CHUNKED"),), b"0\r\n\r\n"),
      None, 403, closes=True),
    f("cl-with-spaces", req("GET", "/_ping", HOST + (("Content-Length", "  5  "),), b"hello"), None, 403,
      closes=True),
    f("header-space-before-colon", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nContent-Length : 5\r\n\r\nhello",
      None, 400, closes=True),
    f("header-without-colon", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nX-No-Colon\r\n\r\n", None, 400, closes=True),
    f("leading-space-first-header", b"GET /_ping HTTP/1.1\r\n Host: localhost\r\n\r\n", None, 400, closes=True),
    f("request-line-extra-token", b"GET /_ping HTTP/1.1 extra\r\nHost: localhost\r\n\r\n", None, 400, closes=True),
    f("leading-crlf", b"\r\n" + req("GET", "/_ping"), None, 400, closes=True, also=((200, PING),),
      note="RFC 9112 allows ignoring it; h11 refuses it"),
    f("tls-client-hello", TLS_HELLO, None, 400, closes=True, half_close=True, also=(("closed", None),)),
    f("ssh-banner", b"SSH-2.0-OpenSSH_9.2p1\r\n", None, 400, closes=True, half_close=True,
      also=(("closed", None),)),
    f("truncated-head-then-eof", b"GET /containers/c1/export HTTP/1.1\r\nHost: local", None, 400, closes=True,
      half_close=True, also=(("closed", None),)),
    f("allowed-get-then-garbage-line", req("GET", "/_ping") + b"GARBAGE\r\n\r\n", PING, (200, 400), closes=True),
    f("half-close-after-allowed-get", req("GET", "/containers/json"), CJSON, 200, half_close=True,
      also=(("closed", CJSON),),
      note="a client that half-closes after its request may be treated as gone (as nginx does): "
           "the answer is then dropped; either way only the canonical GET reaches the upstream"),
]

# ---------------------------------------------------------------------------------------------
# upgrades and connection takeovers: never forwarded

u = _case("upgrade")
UPGRADE = [
    u("websocket-attach-ws", req("GET", "/v1.41/containers/c1/attach/ws?stream=1&stdin=1", WS) + WS_FRAME,
      None, 403, closes=True),
    u("websocket-on-ping", req("GET", "/_ping", WS) + WS_FRAME, None, 403, closes=True),
    u("h2c-with-junk", req("GET", "/_ping", HOST + (("Connection", "Upgrade, HTTP2-Settings"),
                                                    ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")))
      + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + H2_SETTINGS, None, 403, closes=True),
    u("tcp-upgrade-on-ping-with-junk", req("GET", "/_ping", HOST + (("Connection", "Upgrade"), ("Upgrade", "tcp")))
      + b"echo pwned\n", None, 403, closes=True),
    u("tcp-upgrade-attach", req("POST", "/v1.41/containers/c1/attach?stream=1&stdin=1&stdout=1",
                               HOST + (("Connection", "Upgrade"), ("Upgrade", "tcp"))) + b"id\n",
      None, 403, closes=True),
    u("session-post", req("POST", "/session", HOST + (("Connection", "Upgrade"), ("Upgrade", "h2c"),
                                                      ("X-Docker-Expose-Session-Uuid", "abc"))),
      None, 403, closes=True),
    u("session-get", req("GET", "/session"), None, 403),
    u("grpc-get", req("GET", "/grpc"), None, 403),
    u("grpc-post-h2c", req("POST", "/grpc", HOST + (("Connection", "Upgrade"), ("Upgrade", "h2c"))),
      None, 403, closes=True),
    u("exec-start-hijack", with_body("POST", "/v1.41/exec/e1/start", b'{"Detach":false,"Tty":false}',
                                     (("Connection", "Upgrade"), ("Upgrade", "tcp"))), None, 403, closes=True),
    u("exec-start-get", req("GET", "/exec/e1/start"), None, 403),
    u("connection-upgrade-without-upgrade", req("GET", "/_ping", HOST + (("Connection", "Upgrade"),)),
      None, 403, closes=True),
    u("upgrade-without-connection", req("GET", "/_ping", HOST + (("Upgrade", "websocket"),)), None, 403, closes=True),
    u("connection-token-list", req("GET", "/_ping", HOST + (("Connection", "keep-alive, Upgrade"), ("Upgrade", "tcp"))),
      None, 403, closes=True),
    u("lowercase-upgrade-header", b"GET /_ping HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\n"
                                  b"upgrade: websocket\r\n\r\n", None, 403, closes=True),
    u("upgrade-on-events", req("GET", "/events", HOST + (("Connection", "Upgrade"), ("Upgrade", "tcp"))),
      None, 403, closes=True),
    u("upgrade-obs-folded-connection", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive,\r\n"
                                       b" Upgrade\r\n\r\n", None, 403, closes=True),
    u("upgrade-http10", req("GET", "/_ping", (("Connection", "Upgrade"), ("Upgrade", "tcp")), version="HTTP/1.0"),
      None, 403, closes=True),
    u("upgrade-empty-value", req("GET", "/_ping", HOST + (("Upgrade", ""),)), None, 403, closes=True),
    u("upgrade-split-connection-headers",
      req("GET", "/_ping", HOST + (("Connection", "keep-alive"), ("Connection", "Upgrade"), ("Upgrade", "tcp"))),
      None, 403, closes=True),
    u("attach-post-no-upgrade", req("POST", "/containers/c1/attach?stream=1&stdin=1"), None, 403, closes=True),
]

# ---------------------------------------------------------------------------------------------
# browsers: on TCP, Origin and DNS-rebinding Host are refused; on unix only the path counts

b = _case("browser")
_ORIGIN_EVIL = (("Origin", "http://evil.example"),)
BROWSER = [
    b("origin-evil", req("GET", "/containers/json", HOST + _ORIGIN_EVIL), None, 403),
    b("origin-null", req("GET", "/containers/json", HOST + (("Origin", "null"),)), None, 403),
    b("origin-same-host", req("GET", "/_ping", (("Host", "127.0.0.1:2375"), ("Origin", "http://127.0.0.1:2375"))),
      None, 403, note="any Origin: a browser sent it"),
    b("origin-empty", req("GET", "/_ping", HOST + (("Origin", ""),)), None, 403),
    b("host-evil", req("GET", "/containers/json", (("Host", "evil.example"),)), None, 403),
    b("host-nip-io", req("GET", "/containers/json", (("Host", "127.0.0.1.nip.io:2375"),)), None, 403),
    b("host-evil-port", req("GET", "/_ping", (("Host", "evil.example:2375"),)), None, 403),
    b("host-localhost-prefix", req("GET", "/_ping", (("Host", "localhost.evil.example"),)), None, 403),
    b("host-uppercase", req("GET", "/_ping", (("Host", "EVIL.EXAMPLE"),)), None, 403),
    b("host-trailing-dot", req("GET", "/_ping", (("Host", "evil.example."),)), None, 403),
    b("host-userinfo", req("GET", "/_ping", (("Host", "localhost@evil.example"),)), None, 403),
    b("host-obs-folded", b"GET /_ping HTTP/1.1\r\nHost: localhost\r\n .evil.example\r\n\r\n", None, 403),
    b("host-http10-evil", req("GET", "/_ping", (("Host", "evil.example"),), version="HTTP/1.0"), None, 403),
    b("origin-on-dangerous", req("GET", "/containers/c1/export", HOST + _ORIGIN_EVIL), None, 403),
    b("host-ipv4-ok", req("GET", "/_ping", (("Host", "127.0.0.1:2375"),)), PING, 200,
      note="control: an IP literal is fine and Host is rewritten to 'docker'"),
    b("host-ipv6-ok", req("GET", "/_ping", (("Host", "[::1]:2375"),)), PING, 200),
    b("host-localhost-ok", req("GET", "/_ping", (("Host", "localhost:2375"),)), PING, 200),
    b("unix-origin-allowed-path", req("GET", "/_ping", HOST + _ORIGIN_EVIL), PING, 200, listener="unix",
      note="unix listeners judge by path only"),
    b("unix-rebinding-host-allowed-path", req("GET", "/containers/json", (("Host", "127.0.0.1.nip.io"),)),
      CJSON, 200, listener="unix"),
    b("unix-origin-null-and-host", req("GET", "/containers/c1/json", (("Host", "evil.example"), ("Origin", "null"))),
      canonical("GET", "/containers/c1/json"), 200, listener="unix"),
    b("unix-origin-dangerous", req("GET", "/containers/c1/export", HOST + _ORIGIN_EVIL), None, 403,
      listener="unix"),
    b("unix-rebinding-post", req("POST", "/containers/c1/kill", (("Host", "evil.example"), ("Content-Length", "0"))),
      None, 403, listener="unix", closes=True),
]

# ---------------------------------------------------------------------------------------------
# dangerous reads: refused in the default profile, on every listener

d = _case("dangerous-read")
DANGEROUS = [
    d("export", req("GET", "/v1.41/containers/c1/export"), None, 403),
    d("export-unversioned", req("GET", "/containers/c1/export"), None, 403),
    d("archive-get", req("GET", "/containers/c1/archive?path=/etc/shadow"), None, 403),
    d("archive-head", req("HEAD", "/containers/c1/archive?path=/"), None, 403, head=True),
    d("container-logs", req("GET", "/containers/c1/logs?stdout=1&stderr=1"), None, 403),
    d("container-logs-follow", req("GET", "/containers/c1/logs?stdout=1&follow=1"), None, 403),
    d("service-logs", req("GET", "/services/s1/logs?stdout=1"), None, 403),
    d("task-logs", req("GET", "/tasks/t1/logs?stdout=1"), None, 403),
    d("top", req("GET", "/containers/c1/top"), None, 403),
    d("top-ps-args", req("GET", "/containers/c1/top?ps_args=aux"), None, 403),
    d("images-get", req("GET", "/images/get?names=busybox"), None, 403),
    d("images-name-get", req("GET", "/images/busybox/get"), None, 403),
    d("images-deep-name-get", req("GET", "/images/registry.local:5000/team/app/get"), None, 403),
    d("swarm", req("GET", "/swarm"), None, 403),
    d("swarm-unlockkey", req("GET", "/swarm/unlockkey"), None, 403),
    d("configs", req("GET", "/configs"), None, 403),
    d("configs-id", req("GET", "/configs/cfg1"), None, 403),
    d("exec-inspect", req("GET", "/exec/e1/json"), None, 403),
    d("distribution", req("GET", "/distribution/busybox/json"), None, 403),
    d("images-search", req("GET", "/images/search?term=busybox"), None, 403),
    d("plugins-privileges", req("GET", "/plugins/privileges?remote=vieux/sshfs"), None, 403),
    d("debug-pprof", req("GET", "/debug/pprof/goroutine?debug=2"), None, 403),
    d("debug-pprof-trailing-slash", req("GET", "/debug/pprof/"), None, 400, closes=True),
    d("debug-vars", req("GET", "/debug/vars"), None, 403),
    d("export-on-unix", req("GET", "/containers/c1/export"), None, 403, listener="unix"),
    d("archive-on-unix", req("GET", "/containers/c1/archive?path=/"), None, 403, listener="unix"),
    # profile log-reader: logs allowed with a query allowlist, everything else still refused
    d("logreader-logs-follow-on", req("GET", "/containers/c1/logs?stdout=1&follow=on"),
      canonical("GET", "/containers/c1/logs?stdout=1&follow=on"), 404, listener="unix-logs",
      note="control: the acknowledged dangerous read is forwarded canonical (the fake answers 404)"),
    d("logreader-logs-pct-query", req("GET", "/containers/c1/logs?%73tdout=1&follow=0"),
      canonical("GET", "/containers/c1/logs?stdout=1&follow=0"), 404, listener="unix-logs"),
    d("logreader-follow-repeated", req("GET", "/containers/c1/logs?follow=0&follow=1"), None, 400,
      listener="unix-logs", closes=True),
    d("logreader-logs-unlisted-query", req("GET", "/containers/c1/logs?stdout=1&ps_args=aux"), None, 403,
      listener="unix-logs"),
    d("logreader-legacy-link-logs", req("GET", "/containers/web/db/logs?stdout=1"), None, 403,
      listener="unix-logs"),
    d("logreader-head-logs", req("HEAD", "/containers/c1/logs?stdout=1"), None, 403, listener="unix-logs",
      head=True),
    d("logreader-service-logs", req("GET", "/services/s1/logs?stdout=1"), None, 403, listener="unix-logs"),
    d("logreader-export", req("GET", "/containers/c1/export"), None, 403, listener="unix-logs"),
    d("logreader-top", req("GET", "/containers/c1/top"), None, 403, listener="unix-logs"),
]

# ---------------------------------------------------------------------------------------------
# limits: head size and head time

_BIG_REQUEST = req("GET", "/_ping", HOST + (("X-Pad", "a" * 20000),))
_ALLOWED_WITH_UA = req("GET", "/containers/json", HOST + (("User-Agent", UA), ("Accept", "application/json")))
_CANON_WITH_UA = canonical("GET", "/containers/json", ("user-agent", UA), ("accept", "application/json"))
lim = _case("limits")
LIMITS = [
    lim("head-over-limit-one-write", _BIG_REQUEST, None, 431, closes=True),
    lim("head-over-limit-small-writes", tuple(_BIG_REQUEST[i:i + 1024] for i in range(0, len(_BIG_REQUEST), 1024)),
        None, 431, closes=True),
    lim("many-tiny-headers-over-limit", req("GET", "/_ping", HOST + tuple(("a", "b") for _ in range(3000))),
        None, 431, closes=True),
    lim("many-tiny-headers-under-limit", req("GET", "/_ping", HOST + tuple(("X-A", "b") for _ in range(500))),
        PING, 200, note="none of them is forwarded"),
    lim("target-over-limit", req("GET", "/containers/json?x=" + "a" * 20000), None, 431, closes=True),
    lim("one-byte-writes", tuple(_ALLOWED_WITH_UA[i:i + 1] for i in range(len(_ALLOWED_WITH_UA))),
        _CANON_WITH_UA, 200, note="a split head is reassembled, then rebuilt"),
    lim("split-at-crlf", (b"GET /containers/json HTTP/1.1\r", b"\nHost: localhost\r\n\r", b"\n"), CJSON, 200,
        pause=0.05),
    lim("slow-but-in-time", tuple(_ALLOWED_WITH_UA[i:i + 16] for i in range(0, len(_ALLOWED_WITH_UA), 16)),
        _CANON_WITH_UA, 200, pause=0.03),
    lim("pipelined-300-denied", req("GET", "/containers/c1/export") * 300, None, (403,) * MAX_REFUSALS,
        closes=True, note="keep-alive refusals answered one after another, until 100 in a row "
                          "close the connection; no request is forwarded"),
    lim("pipelined-300-denied-then-allowed", req("GET", "/containers/c1/top") * 300 + req("GET", "/_ping"),
        None, (403,) * MAX_REFUSALS, closes=True, note="the connection is closed before the allowed request"),
    lim("pipelined-99-denied-then-allowed", req("GET", "/containers/c1/top") * 99 + req("GET", "/_ping"),
        PING, (403,) * 99 + (200,), note="under the limit: the allowed request is served"),
    lim("pipelined-allowed-then-300-denied", req("GET", "/_ping") + req("GET", "/containers/c1/export") * 300,
        PING, (200,) + (403,) * MAX_REFUSALS, closes=True,
        note="the refusals are processed from the upstream's answer to the first request"),
    lim("pipelined-100-allowed", req("HEAD", "/_ping") * 100, canonical("HEAD", "/_ping") * 100, (200,) * 100,
        head=True, note="each is forwarded once, in canonical form, in order"),
    lim("slowloris-partial-head", (b"GET /_ping HTTP/1.1\r\nHost: localhost\r\n",), None, 408, closes=True,
        note="the head is never finished: 408 after --head-timeout"),
    lim("slowloris-trickled-headers",
        (b"GET /_ping HTTP/1.1\r\n",) + tuple(b"X-Trickle-%d: x\r\n" % i for i in range(12)), None, 408,
        closes=True, pause=0.25, note="bytes keep coming, but the head does not end in time"),
    lim("slowloris-dangerous-head", (b"GET /containers/c1/export HTTP/1.1\r\n", b"Host: localhost\r\n"),
        None, 408, closes=True, pause=0.3),
]

CASES: list = METHOD + PATH + FRAMING + UPGRADE + BROWSER + DANGEROUS + LIMITS


def category_counts() -> dict:
    """Cases per category, in CATEGORIES order, plus "total"."""
    counts = Counter(case.category for case in CASES)
    out = {cat: counts.get(cat, 0) for cat in CATEGORIES}
    out["total"] = len(CASES)
    return out


def category_table() -> str:
    """The table for SECURITY.md (markdown)."""
    refused = Counter(case.category for case in CASES if case.forwarded is None)
    lines = ["| category | cases | upstream receives nothing | forwarded only in canonical form |",
             "|---|---:|---:|---:|"]
    for cat, n in category_counts().items():
        if cat == "total":
            nothing = sum(refused.values())
        else:
            nothing = refused.get(cat, 0)
        lines.append(f"| {cat} | {n} | {nothing} | {n - nothing} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(category_table())
