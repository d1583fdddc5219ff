"""A recording, scriptable fake Docker Engine upstream for Porthole's tests.

``FakeUpstream``, the test suite's one fake daemon, is an HTTP/1.1 server on a
unix socket, run by background threads (one accept thread, one thread per
connection).  It records every raw byte it receives, per connection, and
answers through a pluggable handler.

Usage::

    up = FakeUpstream()              # default: behaves like a tiny docker daemon
    up.start()
    ...  proxy --upstream up.url  ...
    up.route("/events", events(interval=0.01))    # per-path misbehaviour
    up.handler = raw(b"HTTP/1.1 101 Switching Protocols\\r\\n\\r\\n")  # for everything
    ...
    assert up.all_bytes() == b""     # denied traffic never reached the daemon
    up.stop()

``FakeUpstream(tcp=True)`` listens on 127.0.0.1 instead (``up.port``; ``up.url`` is
``tcp://127.0.0.1:PORT`` once started).

A handler is ``handler(conn, req) -> bool``: it writes its answer with
``conn.send(...)`` and returns True to keep the connection for the next
request, False to close it.  ``req`` is a parsed ``Request``.

Routes are matched on the request path with any ``/vX.Y`` prefix removed and
the query string dropped, e.g. ``up.route("/containers/json", h)``.

Connection-level switches (set before the traffic they should affect):

``close_on_accept``
    close every connection as soon as it is accepted, before reading anything.
``close_after_response``
    close the connection right after every response, WITHOUT announcing it
    (no ``Connection: close``) -- the client's pooled connection goes stale.
``drop_reused``
    when a second (or later) request arrives on a connection, close it
    without answering: what a client sees when the daemon closed an idle
    keep-alive connection just as the request was sent.
"""

import hashlib
import json
import os
import random
import shutil
import socket
import tempfile
import threading
import time
import typing
from urllib.parse import urlsplit

API_VERSION = "1.41"
DOCKER_HEADERS = [
    ("Api-Version", API_VERSION),
    ("Docker-Experimental", "false"),
    ("Ostype", "linux"),
    ("Server", "Docker/24.0.7 (linux)"),
]

RECV_SIZE = 65536


class HeaderList:
    """header() / header_all() over ``self.headers``, a list of (lower-case name, value)."""

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]


class Request(HeaderList):
    """One request as the upstream received it."""

    def __init__(self, raw_head, method, target, version, headers, body, conn_index):
        self.raw_head = raw_head          # bytes, request line + headers + CRLFCRLF
        self.method = method              # str
        self.target = target              # str, exactly as received
        self.version = version            # str, e.g. "HTTP/1.1"
        self.headers = headers            # list of (lower-case name, value) str pairs
        self.body = body                  # bytes
        self.conn_index = conn_index      # index into FakeUpstream.connections

    @property
    def raw(self):
        return self.raw_head + self.body

    @property
    def path(self):
        """Target path without query and without a /vX.Y prefix."""
        return strip_version(self.target.split("?", 1)[0])

    @property
    def query(self):
        return self.target.split("?", 1)[1] if "?" in self.target else None

    def header_names(self):
        return [k for k, _ in self.headers]

    def __repr__(self):
        return "Request(%r %r conn=%d)" % (self.method, self.target, self.conn_index)


def strip_version(path):
    if path.startswith("/v"):
        rest = path[2:]
        head, sep, tail = rest.partition("/")
        if sep and head.replace(".", "").isdigit() and "." in head:
            return "/" + tail
    return path


class BadRequest(Exception):
    pass


def _parse_head(raw_head):
    text = raw_head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest("bad request line %r" % lines[0])
    method, target, version = parts
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        if ":" not in line:
            raise BadRequest("bad header line %r" % line)
        name, value = line.split(":", 1)
        headers.append((name.strip().lower(), value.strip()))
    return method, target, version, headers


class Conn:
    """One accepted upstream connection (server side)."""

    def __init__(self, upstream, sock, index):
        self.upstream = upstream
        self.sock = sock
        self.index = index
        self.received = bytearray()
        self.buf = bytearray()            # unparsed received bytes
        self.bytes_sent = 0
        self.requests = []
        self.peer_eof = threading.Event()     # recv() returned b"" / error
        self.send_failed = threading.Event()  # a send() failed (peer gone)
        self.closed = threading.Event()       # we closed our side
        self.lock = threading.Lock()

    # -- output -----------------------------------------------------------
    def send(self, data, timeout=None):
        """Send all of data; returns False if the peer went away (or the
        upstream is stopping, or ``timeout`` seconds passed without progress
        being possible).  Blocks while the peer applies back-pressure."""
        view = memoryview(bytes(data))
        deadline = None if timeout is None else time.monotonic() + timeout
        while view:
            if self.upstream.stopping.is_set() or self.closed.is_set():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
            try:
                n = self.sock.send(view)
            except socket.timeout:
                continue
            except OSError:
                self.send_failed.set()
                return False
            self.bytes_sent += n
            view = view[n:]
        return True

    def close(self):
        if self.closed.is_set():
            return
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    # -- input ------------------------------------------------------------
    def _recv_some(self):
        """One recv; returns bytes, b"" at EOF, or None on timeout."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except socket.timeout:
            return None
        except OSError:
            self.peer_eof.set()
            return b""
        if not data:
            self.peer_eof.set()
            return b""
        with self.lock:
            self.received += data
        self.buf += data
        return data

    def wait_peer_close(self, timeout=None):
        """Keep reading (and recording) until the peer closes, the upstream
        stops, or timeout.  Returns True if the peer closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.peer_eof.is_set():
            if self.upstream.stopping.is_set() or self.closed.is_set():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
            self._recv_some()
        return True

    def sleep(self, seconds):
        """Sleep, but wake early when the upstream stops.  Returns False if
        interrupted by stop()."""
        return not self.upstream.stopping.wait(seconds)

    def idle(self, seconds):
        """Wait ``seconds`` while still reading (and recording) from the peer,
        so a close is noticed.  Returns False if the peer closed or the
        upstream stops first."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.upstream.stopping.is_set() or self.peer_eof.is_set():
                return False
            self._recv_some()
        return not (self.upstream.stopping.is_set() or self.peer_eof.is_set())

    def _read_request(self):
        """Parse the next request from the buffer, reading as needed.
        Returns a Request or None at EOF / stop."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                raw_head = bytes(self.buf[: end + 4])
                method, target, version, headers = _parse_head(raw_head)
                body = self._read_body(end + 4, headers)
                if body is None:
                    return None
                return Request(raw_head, method, target, version, headers, body, self.index)
            if self.peer_eof.is_set() or self.upstream.stopping.is_set():
                return None
            if len(self.buf) > 4 * 1024 * 1024:
                raise BadRequest("request head too large")
            self._recv_some()

    def _read_body(self, start, headers):
        hdr = dict(headers)
        te = hdr.get("transfer-encoding", "").lower()
        if "chunked" in te:
            pos = start
            body = bytearray()
            while True:
                line_end = self.buf.find(b"\r\n", pos)
                if line_end < 0:
                    if not self._more():
                        return None
                    continue
                size = int(bytes(self.buf[pos:line_end]).split(b";")[0].strip() or b"0", 16)
                need = line_end + 2 + size + 2
                while len(self.buf) < need:
                    if not self._more():
                        return None
                if size == 0:
                    # trailers are not supported: expect the final CRLF
                    del self.buf[:need]
                    return bytes(body)
                body += self.buf[line_end + 2 : line_end + 2 + size]
                pos = need
        length = int(hdr.get("content-length", "0") or "0")
        while len(self.buf) < start + length:
            if not self._more():
                return None
        body = bytes(self.buf[start : start + length])
        del self.buf[: start + length]
        return body

    def _more(self):
        if self.peer_eof.is_set() or self.upstream.stopping.is_set():
            return False
        self._recv_some()
        return True

    def run(self):
        try:
            served = 0
            while not self.upstream.stopping.is_set():
                try:
                    req = self._read_request()
                except BadRequest:
                    self.send(response(400, b'{"message":"fake upstream: bad request"}',
                                       keep_alive=False))
                    break
                if req is None:
                    break
                self.requests.append(req)
                with self.upstream.lock:
                    self.upstream.requests.append(req)
                self.upstream.request_event.set()
                if served >= 1 and self.upstream.drop_reused:
                    break
                served += 1
                handler = self.upstream.handler_for(req)
                try:
                    keep = handler(self, req)
                except Exception as exc:  # pragma: no cover - test debugging aid
                    self.upstream.errors.append(repr(exc))
                    keep = False
                if not keep or self.upstream.close_after_response:
                    break
        finally:
            self.close()


class FakeUpstream:
    """The fake daemon: on a unix socket (``.path``), or with tcp=True on 127.0.0.1
    (``.port``, known once started); ``.url`` is what ``--upstream`` takes."""

    def __init__(self, handler=None, directory=None, tcp=False):
        self._own_dir = directory is None and not tcp
        self.dir = None if tcp else directory or tempfile.mkdtemp(prefix="porthole-up-")
        if self.dir is not None:
            # the proxy runs as an unprivileged uid: it must reach the socket
            os.chmod(self.dir, 0o755)
        self.path = None if tcp else os.path.join(self.dir, "docker.sock")
        self.port = None
        self.url = None if tcp else "unix://" + self.path
        self.default_handler = handler or docker_daemon
        self.handler = None               # overrides everything when set
        self.routes = {}
        self.close_on_accept = False
        self.close_after_response = False
        self.drop_reused = False
        self.connections = []
        self.requests = []
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.request_event = threading.Event()
        self._threads = []
        self._lsock = None

    # -- lifecycle --------------------------------------------------------
    def start(self):
        if self.path is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
            self.url = "tcp://127.0.0.1:%d" % self.port
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(self.path)
            os.chmod(self.path, 0o666)
        s.listen(128)
        s.settimeout(0.2)
        self._lsock = s
        t = threading.Thread(target=self._accept_loop, name="fake-upstream-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self.stopping.set()
        for c in list(self.connections):
            c.close()
        for t in list(self._threads):
            t.join(timeout=5)
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self._lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(0.2)
            with self.lock:
                conn = Conn(self, sock, len(self.connections))
                self.connections.append(conn)
            if self.close_on_accept:
                conn.close()
                continue
            t = threading.Thread(target=conn.run, name="fake-upstream-conn-%d" % conn.index,
                                 daemon=True)
            t.start()
            self._threads.append(t)

    # -- scripting --------------------------------------------------------
    def route(self, path, handler):
        self.routes[path] = handler

    def handler_for(self, req):
        if self.handler is not None:
            return self.handler
        return self.routes.get(req.path, self.default_handler)

    # -- inspection -------------------------------------------------------
    @property
    def connections_accepted(self):
        return len(self.connections)

    @property
    def received(self):
        return [bytes(c.received) for c in list(self.connections)]

    def all_bytes(self):
        return b"".join(self.received)

    def wait_requests(self, n, timeout=5.0):
        """Wait until at least n requests have been received."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.requests) >= n

    def wait_connections(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.connections) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.connections) >= n


# ---------------------------------------------------------------------------
# response building


def events_requests(up):
    """The /events requests the fake daemon `up` received (any API version, any query)."""
    return [q for q in up.requests if q.path == "/events"]


REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 204: "No Content",
           304: "Not Modified", 400: "Bad Request", 404: "Not Found",
           500: "Internal Server Error"}


def response(status, body=b"", headers=(), content_type="application/json",
             keep_alive=True, content_length=True, head_only=False):
    """Serialize a plain response.  ``head_only`` omits the body bytes but
    keeps Content-Length (an answer to HEAD)."""
    if isinstance(body, str):
        body = body.encode()
    lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
    for k, v in DOCKER_HEADERS:
        lines.append("%s: %s" % (k, v))
    if content_type:
        lines.append("Content-Type: " + content_type)
    lines.append("Date: Thu, 01 Jan 2026 00:00:00 GMT")
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    if content_length:
        lines.append("Content-Length: %d" % len(body))
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def json_response(req, obj, status=200):
    body = (json.dumps(obj) + "\n").encode()
    return response(status, body, head_only=req.method == "HEAD")


def chunk(data):
    if isinstance(data, str):
        data = data.encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

CONTAINERS = [
    {"Id": "4f1c6e2a9b3d" + "0" * 52, "Names": ["/web"], "Image": "nginx:latest",
     "State": "running", "Status": "Up 2 hours", "Labels": {}},
    {"Id": "9a8b7c6d5e4f" + "1" * 52, "Names": ["/db"], "Image": "postgres:16",
     "State": "exited", "Status": "Exited (0) 1 hour ago", "Labels": {}},
]

VERSION = {"Version": "24.0.7", "ApiVersion": API_VERSION, "MinAPIVersion": "1.12",
           "Os": "linux", "Arch": "amd64", "KernelVersion": "6.1.0"}


def docker_daemon(conn, req):
    """Default handler: a tiny docker daemon, keep-alive, Content-Length."""
    path = req.path
    if req.method not in ("GET", "HEAD"):
        conn.send(json_response(req, {"message": "fake upstream: method not expected"}, 405))
        return True
    if path == "/_ping":
        body = b"OK"
        conn.send(response(200, body, headers=[("Cache-Control", "no-cache, no-store, must-revalidate"),
                                               ("Pragma", "no-cache")],
                           content_type="text/plain; charset=utf-8",
                           head_only=req.method == "HEAD"))
        return True
    if path == "/version":
        return conn.send(json_response(req, VERSION))
    if path == "/info":
        return conn.send(json_response(req, {"ID": "fake", "Containers": 2, "ServerVersion": "24.0.7"}))
    if path == "/containers/json":
        return conn.send(json_response(req, CONTAINERS))
    if path.startswith("/containers/") and path.endswith("/json"):
        cid = path[len("/containers/"):-len("/json")]
        return conn.send(json_response(req, {"Id": cid, "Name": "/" + cid, "State": {"Running": True}}))
    if path == "/images/json":
        return conn.send(json_response(req, []))
    conn.send(json_response(req, {"message": "page not found"}, 404))
    return True


# A swarm manager's answers (the suite's real daemon is never put into swarm mode): GET /swarm
# with its join tokens, /info naming the node, the node's inspect with its manager address.
SWARM_JOIN_TOKENS = {"Worker": "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx",
                     "Manager": "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-7p73s1dx5in4tatdymyhg9hu2"}
SWARM_NODE_ID = "24ifsmvkjbyhk0nn8xzzq1pwy"
SWARM = {"ID": "abajmipo7b4xz5ip2nrla6b11", "Version": {"Index": 10}, "CreatedAt": "2026-12-01T10:00:00Z",
         "UpdatedAt": "2026-12-01T10:00:00Z",
         "Spec": {"Name": "default", "Labels": {}, "Orchestration": {"TaskHistoryRetentionLimit": 5},
                  "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0, "LogEntriesForSlowFollowers": 500,
                           "ElectionTick": 10, "HeartbeatTick": 1},
                  "Dispatcher": {"HeartbeatPeriod": 5000000000}, "CAConfig": {"NodeCertExpiry": 7776000000000000},
                  "TaskDefaults": {}, "EncryptionConfig": {"AutoLockManagers": False}},
         "TLSInfo": {"TrustRoot": "-----BEGIN CERTIFICATE-----\nMIIBajCCARCgAwIBAgIU\n-----END CERTIFICATE-----\n",
                     "CertIssuerSubject": "MBMxETAPBgNVBAMTCHN3YXJtLWNh", "CertIssuerPublicKey": "MFkwEwYHKoZIzj0C"},
         "RootRotationInProgress": False, "DataPathPort": 4789, "DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 24,
         "JoinTokens": SWARM_JOIN_TOKENS}


def swarm_manager(up):
    """Route `up` (a FakeUpstream) to answer as a swarm manager: /swarm, /info, /nodes/{id}."""
    up.route("/swarm", lambda conn, req: conn.send(json_response(req, SWARM)))
    up.route("/info", lambda conn, req: conn.send(json_response(req, {
        "ID": "fake", "Containers": 0, "ServerVersion": "24.0.7",
        "Swarm": {"NodeID": SWARM_NODE_ID, "NodeAddr": "10.0.0.1", "LocalNodeState": "active",
                  "ControlAvailable": True, "Error": "", "RemoteManagers": [{"NodeID": SWARM_NODE_ID,
                                                                             "Addr": "10.0.0.1:2377"}]}})))
    up.route("/nodes/" + SWARM_NODE_ID, lambda conn, req: conn.send(json_response(req, {
        "ID": SWARM_NODE_ID, "Version": {"Index": 9}, "Spec": {"Role": "manager", "Availability": "active"},
        "Description": {"Hostname": "manager1"}, "Status": {"State": "ready", "Addr": "10.0.0.1"},
        "ManagerStatus": {"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.1:2377"}})))
    return up


# ---------------------------------------------------------------------------
# scriptable misbehaviours: each factory returns a handler


def event_line(i):
    return ('{"status":"start","id":"c%06d","from":"busybox","Type":"container",'
            '"Action":"start","time":%d}\n' % (i, 1700000000 + i)).encode()


def events(interval=0.05, count=None, payload=None):
    """Chunked /events stream.  interval=0 streams as fast as possible.
    ``count`` events then a clean last chunk (None = endless, until the peer
    goes away or the upstream stops).  ``payload`` (bytes) replaces the
    event text in every chunk (e.g. 64 KiB of filler for a fast stream)."""

    def handler(conn, req):
        head = response(200, content_type="application/json",
                         headers=[("Transfer-Encoding", "chunked")], content_length=False)
        if not conn.send(head):
            return False
        i = 0
        while count is None or i < count:
            data = payload if payload is not None else event_line(i)
            if not conn.send(chunk(data)):
                return False
            i += 1
            if interval and not conn.sleep(interval):
                return False
        conn.send(LAST_CHUNK)
        return True

    return handler


def die_mid_chunk(good_events=1, delay=0.3):
    """Start a chunked stream, send ``good_events`` complete chunks, wait
    ``delay`` seconds, then announce a 0x100-byte chunk, send 10 bytes of it
    and close the connection."""

    def handler(conn, req):
        head = response(200, headers=[("Transfer-Encoding", "chunked")], content_length=False)
        conn.send(head)
        for i in range(good_events):
            conn.send(chunk(event_line(i)))
        conn.sleep(delay)
        conn.send(b"100\r\n" + b'{"status":')
        conn.sleep(0.05)
        return False

    return handler


def raw(data, keep_alive=False, hold=False):
    """Send ``data`` verbatim.  hold=True keeps the connection open (reading
    and recording) until the peer closes it; otherwise keep_alive decides."""

    def handler(conn, req):
        conn.send(data, timeout=10)
        if hold:
            conn.wait_peer_close(timeout=30)
            return False
        return keep_alive

    return handler


def switching_protocols():
    """101 on a plain GET, then raw stream bytes, connection held open."""
    return raw(b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
               b"Connection: Upgrade\r\nUpgrade: tcp\r\nApi-Version: 1.41\r\n\r\n"
               b"RAW-HIJACKED-STREAM-BYTES\n", hold=True)


def invalid_status_line():
    return raw(b"HTTP/1.1 TWO-HUNDRED OK\r\nContent-Length: 2\r\n\r\nOK")


def oversized_head(size=1024 * 1024):
    """A 200 whose head holds ``size`` bytes of headers."""

    def handler(conn, req):
        conn.send(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\n", timeout=10)
        pad = b"X-Padding-%06d: " + b"a" * 1000 + b"\r\n"
        sent = 0
        i = 0
        while sent < size:
            line = pad % i
            if not conn.send(line, timeout=10):
                return False
            sent += len(line)
            i += 1
        conn.send(b"Content-Length: 2\r\n\r\nOK", timeout=10)
        conn.wait_peer_close(timeout=10)
        return False

    return handler


SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nSMUGGLED"


def cl_and_te():
    """Content-Length and Transfer-Encoding: chunked together; the two
    framings disagree, and after the chunked body comes a smuggled
    response.  Keep-alive."""
    body = chunk(b'[{"Id":"x"}]') + LAST_CHUNK
    data = (b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n"
            b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + body + SMUGGLED)
    return raw(data, keep_alive=True)


def close_delimited(body):
    """No Content-Length, no chunked: body ends when the connection closes."""
    data = (b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n\r\n"
            + body)
    return raw(data, keep_alive=False)


def extra_after_body():
    """A correct Content-Length response followed by extra bytes (a whole
    smuggled response).  Keep-alive."""
    data = response(200, b'{"ok":true}') + SMUGGLED
    return raw(data, keep_alive=True)


def body_on_head():
    """Answer HEAD with a Content-Length AND the body bytes (plus a smuggled
    response), keep-alive.  GETs get the normal daemon answer."""

    def handler(conn, req):
        if req.method != "HEAD":
            return docker_daemon(conn, req)
        conn.send(response(200, b"LEAKEDBODY", content_type="text/plain") + SMUGGLED)
        return True

    return handler


def continue_flood(n=20000, final=True):
    """n x '100 Continue' then (if final) a normal 200."""

    def handler(conn, req):
        one = b"HTTP/1.1 100 Continue\r\n\r\n"
        batch = one * 1000
        left = n
        while left > 0:
            k = min(left, 1000)
            if not conn.send(batch[: k * len(one)], timeout=10):
                return False
            left -= k
        if final:
            conn.send(response(200, b'{"final":true}'), timeout=10)
            return True
        conn.wait_peer_close(timeout=30)
        return False

    return handler


class BigBody:
    """A handler answering with ``size`` deterministic bytes."""

    def __init__(self, size=8 * 1024 * 1024, seed=1234, chunked=False):
        self.data = random.Random(seed).randbytes(size)
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.chunked = chunked

    def __call__(self, conn, req):
        if self.chunked:
            head = response(200, content_type="application/octet-stream",
                            headers=[("Transfer-Encoding", "chunked")], content_length=False)
            if not conn.send(head):
                return False
            step = 100000
            for i in range(0, len(self.data), step):
                if not conn.send(chunk(self.data[i:i + step])):
                    return False
            return conn.send(LAST_CHUNK)
        return conn.send(response(200, self.data, content_type="application/octet-stream"))


def slow(delay=1.0, body=b'{"slow":true}', trickle=0):
    """Answer after ``delay`` seconds; with trickle=N the body is sent in N
    pieces spread over the delay instead (head sent at once)."""

    def handler(conn, req):
        if trickle:
            data = response(200, body)
            head_end = data.index(b"\r\n\r\n") + 4
            if not conn.send(data[:head_end]):
                return False
            rest = data[head_end:]
            step = max(1, -(-len(rest) // trickle))
            for i in range(0, len(rest), step):
                if not conn.sleep(delay / trickle):
                    return False
                if not conn.send(rest[i:i + step]):
                    return False
            return True
        if not conn.idle(delay):
            return False
        return conn.send(response(200, body))

    return handler


def stall():
    """Never answer; hold the connection until the peer closes it."""

    def handler(conn, req):
        conn.wait_peer_close(timeout=60)
        return False

    return handler


# ---------------------------------------------------------------------------
# client side: the test suite's one raw HTTP/1.1 client, which exposes exactly what came
# back (every test module, support.Dockerd and bench/ talk HTTP through it: to the proxy,
# to a private dockerd, to this fake)


class ConnectionClosed(Exception):
    """The server closed (or reset) the connection before a message ended."""


class Response(HeaderList):
    def __init__(self, status, reason, headers, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers            # list of (lower-case name, value) str
        self.raw_head = raw_head
        self.body = b""
        self.framing = None               # "length" | "chunked" | "close" | "none"
        self.complete = False             # framing ended cleanly
        self.chunks = []                  # chunk payloads (chunked framing)

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Response(%d %r, %d body bytes, framing=%s, complete=%s)" % (
            self.status, self.reason, len(self.body), self.framing, self.complete)


def connect(address, timeout=5.0):
    """A connected socket.  address: (host, port) for TCP; a unix socket path (str or
    Path); a tcp://, http:// or unix:// URL; or a socket that is already connected (it is
    used as it is, with the timeout)."""
    if isinstance(address, socket.socket):
        address.settimeout(timeout)
        return address
    if isinstance(address, os.PathLike):
        address = os.fspath(address)
    if isinstance(address, str) and "://" in address:
        url = urlsplit(address)
        address = url.path if url.scheme == "unix" else (url.hostname, url.port)
    if isinstance(address, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET,
                          socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(address)
    except BaseException:
        s.close()
        raise
    return s


class HttpClient:
    """Raw client over one connection, with its own read buffer so pipelined
    responses can be read one after another.  All reads have a deadline."""

    def __init__(self, address, timeout=5.0, received=b""):
        """address: anything connect() takes; or None for no connection at all, only the
        bytes `received` to parse (as if the server had sent them and closed)."""
        self.sock = connect(address, timeout) if address is not None else None
        self.timeout = timeout
        self.buf = bytearray(received)
        self.all_received = bytearray(received)
        self.eof = address is None

    def close(self):
        if self.sock is None:
            return
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, target, headers=None, body=b"", host="localhost"):
        hdrs = [("Host", host)] if host is not None else []
        hdrs += list(headers or [])
        if body:
            hdrs.append(("Content-Length", str(len(body))))
        data = build_request(method, target, hdrs, body)
        self.send(data)

    def _fill(self, deadline):
        """Read more bytes; raises ConnectionClosed at EOF, socket.timeout
        past the deadline."""
        if self.eof:
            raise ConnectionClosed("connection closed")
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(RECV_SIZE)
        except (ConnectionResetError, BrokenPipeError) as exc:
            self.eof = True
            raise ConnectionClosed("connection reset: %r" % exc)
        if not data:
            self.eof = True
            raise ConnectionClosed("connection closed")
        self.buf += data
        self.all_received += data

    def _read_until(self, sep, deadline, limit=16 * 1024 * 1024):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes" % (sep, limit))
            self._fill(deadline)

    def _read_exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_head(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        raw_head = self._read_until(b"\r\n\r\n", deadline)
        lines = raw_head.decode("latin-1").split("\r\n")
        status_line = lines[0]
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise AssertionError("bad status line from proxy: %r" % status_line)
        headers = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.append((k.strip().lower(), v.strip()))
        return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, raw_head)

    def read_chunk(self, resp, timeout=None):
        """Next chunk payload of a chunked response; None after the last
        chunk (and resp.complete is set).  Raises ConnectionClosed."""
        deadline = time.monotonic() + (timeout or self.timeout)
        line = self._read_until(b"\r\n", deadline)
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            # trailers until an empty line
            while self._read_until(b"\r\n", deadline) != b"\r\n":
                pass
            resp.complete = True
            return None
        data = self._read_exact(size + 2, deadline)
        if data[-2:] != b"\r\n":
            raise AssertionError("bad chunk terminator %r" % data[-2:])
        resp.chunks.append(data[:-2])
        resp.body += data[:-2]
        return data[:-2]

    def read_response(self, method="GET", timeout=None, allow_incomplete=False):
        """Read one full response.  With allow_incomplete the response read
        so far is returned (complete=False) when the connection ends early."""
        deadline = time.monotonic() + (timeout or self.timeout)
        resp = self.read_head(timeout=deadline - time.monotonic())
        te = (resp.header("transfer-encoding") or "").lower()
        cl = resp.header("content-length")
        try:
            if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
                resp.framing = "none"
                resp.complete = True
            elif "chunked" in te:
                resp.framing = "chunked"
                while self.read_chunk(resp, timeout=max(0.001, deadline - time.monotonic())) is not None:
                    pass
            elif cl is not None:
                resp.framing = "length"
                resp.body = self._read_exact(int(cl), deadline)
                resp.complete = True
            else:
                resp.framing = "close"
                try:
                    while True:
                        self._fill(deadline)
                except ConnectionClosed:
                    pass
                resp.body = bytes(self.buf)
                self.buf.clear()
                resp.complete = True
        except ConnectionClosed:
            if not allow_incomplete:
                raise
        return resp

    def wait_closed(self, timeout=5.0):
        """True if the server closes the connection within timeout (any
        bytes that arrive meanwhile are kept in .buf / .all_received)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except ConnectionClosed:
            return True
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            self.eof = True
            return True


def as_bytes(value):
    return value if isinstance(value, bytes) else value.encode("latin-1")


def build_request(method, target, headers=(), body=b"", version="HTTP/1.1", eol=b"\r\n"):
    """A raw request, exactly as given (no header is added, not even Content-Length);
    every part may be str (latin-1) or bytes."""
    out = as_bytes(method) + b" " + as_bytes(target) + b" " + as_bytes(version) + eol
    for name, value in headers:
        out += as_bytes(name) + b": " + as_bytes(value) + eol
    return out + eol + as_bytes(body)


def get(address, target, method="GET", headers=(), timeout=5.0, body=b"", head_only=False):
    """One request on a fresh connection; returns the Response (with head_only, its head alone:
    for a stream that never ends)."""
    with HttpClient(address, timeout) as c:
        c.request(method, target, headers, body)
        if head_only:
            return c.read_head()
        return c.read_response(method)


class Exchanged(typing.NamedTuple):
    """What exchange() saw: the statuses read (an int per response; "hang" when the first one did
    not come in time, "quiet" when a later one did not), those responses, every byte received,
    and the bytes left over after the responses read."""
    statuses: list
    responses: list
    received: bytes
    leftover: bytes

    @property
    def response(self):
        """The first response, or None when the connection closed without one; a first response
        that never came is an error (TimeoutError), never taken for a close."""
        if self.statuses[:1] == ["hang"]:
            raise TimeoutError("no response within the timeout")
        return self.responses[0] if self.responses else None


def exchange(address, raw, method="GET", timeout=5.0, responses=1, linger=0.1):
    """Send the raw bytes `raw` (requests, or anything else) on a fresh connection and read up to
    `responses` responses to `method` (fewer if the connection closes), then collect for `linger`
    seconds whatever else arrives. A send the peer cut short is not an error: what it answered is
    read all the same."""
    c = HttpClient(address, timeout=timeout)
    statuses, got = [], []
    try:
        try:
            c.send(raw)
        except OSError:
            pass
        for i in range(responses):
            try:
                r = c.read_response(method, timeout=timeout if i == 0 else 1.0)
            except ConnectionClosed:
                break
            except TimeoutError:
                statuses.append("hang" if i == 0 else "quiet")
                break
            statuses.append(r.status)
            got.append(r)
        c.wait_closed(linger)
        return Exchanged(statuses, got, bytes(c.all_received), bytes(c.buf))
    finally:
        c.close()


def parse_response(data, method="GET"):
    """One response parsed from bytes that came in some other way (e.g. read on a raw,
    non-blocking socket), by HttpClient's parser.  Raises ConnectionClosed if ``data`` ends
    before the response does."""
    return HttpClient(None, received=data).read_response(method)
