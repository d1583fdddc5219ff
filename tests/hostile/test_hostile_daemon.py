"""Hostile requests where what matters is what the REAL daemon would have done.

The proxy runs in front of the session's private dockerd. Raw hostile requests for exec,
archive, export, attach, logs, top, kill/rm go through it; the DIRECT daemon socket then
shows that nothing happened: no exec created, no file written, nobody attached, no
export/archive/top event, the container still running, and no secret in what the client got.

Then a differential test: raw target variants (percent-encodings, case, version prefixes,
trailing slash, dot segments, double slashes, '/' in names, repeated query keys, follow=on
vs follow=0, ...) go to the daemon DIRECTLY and through the proxy. The proxy may forward a
variant only when the daemon treats the raw variant exactly like the canonical form the proxy
forwarded, and only for an endpoint the listener's profile allows; where they disagree the
proxy must be the stricter one. Only GET and HEAD ever go to the daemon directly.
"""
from __future__ import annotations

import json
import secrets
import time
from urllib.parse import quote

import docker
import pytest

import hostile_cases as hc
import support
from fake_upstream import exchange
from policies import SHIPPED
from porthole.core.filters import plan_response_filter  # the redaction, for the differential
from porthole.core.target import Refusal, canonicalize_target  # the canonical form of a target

pytestmark = [pytest.mark.docker, pytest.mark.timeout(150)]

API = "/v1.41"
LOCAL = {400, 403, 408, 413, 429, 431, 501, 505}
# container events that a refused request must never cause
FORBIDDEN_EVENTS = {"exec_create", "exec_start", "exec_die", "attach", "detach", "export", "archive-path",
                    "extract-to-dir", "top", "kill", "die", "stop", "destroy", "pause", "rename", "update",
                    "commit", "resize", "restart", "copy"}


# ---------------------------------------------------------------------------------------------
# fixtures


class Victim:
    def __init__(self, container, token, image):
        self.c = container
        self.id = container.id
        self.name = container.name
        self.token = token
        self.image = image
        self.log_secret = ("LOGSECRET-" + token).encode()
        self.file_secret = ("FILESECRET-" + token).encode()
        self.payload = ("PWNED-" + token).encode()


@pytest.fixture(scope="module")
def victim(docker_direct, busybox_image):
    """A running container (stdin open, echoing every stdin line to its log), with a secret
    in its log and one in a file. Created and inspected through the DIRECT socket only."""
    token = secrets.token_hex(6)
    script = 'echo LOGSECRET-%s; while read line; do echo "GOT:$line"; done' % token
    c = support.run_sleeper(docker_direct, busybox_image, name="ph-victim-" + token,
                            command=["sh", "-c", script], stdin_open=True)
    support.put_file(c, "/secret.txt", ("FILESECRET-" + token).encode())
    assert support.wait_until(lambda: ("LOGSECRET-" + token).encode() in c.logs(), 10)
    try:
        yield Victim(c, token, busybox_image)
    finally:
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.fixture
def proxy(proxy_factory):
    p = proxy_factory()
    p.addr = p.first_listener_address()
    return p


def direct_events(docker_direct, since, container_id):
    """Container events since `since` (time.time(), nanosecond precision), read through the
    DIRECT socket."""
    time.sleep(0.2)
    until = "%.9f" % (time.time() + 0.3)
    return [e for e in docker_direct.api.events(since="%.9f" % since, until=until, decode=True,
                                                filters={"container": container_id})]


def assert_no_forbidden_events(docker_direct, since, victim):
    actions = [e.get("Action", e.get("status", "")).split(":")[0]
               for e in direct_events(docker_direct, since, victim.id)]
    bad = [a for a in actions if a in FORBIDDEN_EVENTS]
    assert not bad, "the daemon saw %r for the victim container (all events: %r)" % (bad, actions)
    return actions


def assert_refused(answer, raw, allow_first_ok=False):
    """Every answer is porthole's own refusal (a pipelined allowed GET /_ping may come first),
    and nothing follows the answers read."""
    statuses, responses, received, leftover = answer
    assert statuses and statuses[0] != "hang", ("no answer and no close", raw, received[:500])
    assert "quiet" not in statuses, ("a pipelined request was neither answered nor closed", raw, received[:500])
    for i, (status, r) in enumerate(zip(statuses, responses)):
        if allow_first_ok and i == 0 and status == 200 and r.body == b"OK":
            continue
        assert status in LOCAL, ("not refused by porthole", raw[:400], received[:800])
        if r.body:
            assert json.loads(r.body)["message"].startswith("porthole: "), (raw[:400], r.body)
    assert not leftover, ("unexpected bytes after porthole's answer", raw[:400], leftover[:400])


H = hc.HOST


# ---------------------------------------------------------------------------------------------
# writes never happen


def exec_attempts(v):
    body = json.dumps({"Cmd": ["sh", "-c", "echo %s > /pwned" % v.payload.decode()],
                       "AttachStdout": True}).encode()
    cl = (("Content-Type", "application/json"), ("Content-Length", str(len(body))))
    post = hc.req("POST", "%s/containers/%s/exec" % (API, v.id), H + cl, body)
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return {
        "post": post,
        "post-by-name": hc.req("POST", "%s/containers/%s/exec" % (API, v.name), H + cl, body),
        "lowercase-post": b"post" + post[4:],
        "post-chunked": hc.req("POST", "%s/containers/%s/exec" % (API, v.id),
                               H + (("Transfer-Encoding", "chunked"),), chunk),
        "get-with-body-cve-shape": b"GET" + post[4:],
        "get-method-override": hc.req("GET", "%s/containers/%s/exec" % (API, v.id),
                                      H + (("X-HTTP-Method-Override", "POST"),) + cl, body),
        "pipelined-after-ping": hc.req("GET", "/_ping") + post,
        "smuggled-after-cl0": hc.req("GET", "/_ping", H + (("Content-Length", "0"),)) + post,
        "smuggled-in-chunked-get": hc.req("GET", "/_ping", H + (("Transfer-Encoding", "chunked"),),
                                          b"0\r\n\r\n" + post),
        "smuggled-cl-te": hc.req("GET", "/_ping", H + (("Content-Length", "5"), ("Transfer-Encoding", "chunked")),
                                 b"0\r\n\r\n" + post),
        "http10-post": post.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        "absolute-form": post.replace(b"POST /", b"POST http://docker/", 1),
        "version-v1.41.0": post.replace(API.encode(), b"/v1.41.0", 1),
        "connect-tunnel": hc.req("CONNECT", "docker:2375", (("Host", "docker:2375"),)) + post,
        "h2c-upgrade-then-post": hc.req("GET", "/_ping", H + (("Connection", "Upgrade"), ("Upgrade", "h2c"))) + post,
        "expect-100": hc.req("POST", "%s/containers/%s/exec" % (API, v.id), H + cl + (("Expect", "100-continue"),)),
    }


def test_exec_is_never_created(proxy, docker_direct, victim):
    since = time.time()
    for name, raw in exec_attempts(victim).items():
        two = name.startswith(("pipelined", "smuggled"))
        answer = exchange(proxy.addr, raw, responses=2 if two else 1)
        assert_refused(answer, raw, allow_first_ok=two)
        assert b'"Id"' not in answer[2], (name, answer[2][:500])
    # an exec's hijacked start too (with a made-up exec id: porthole must not even ask)
    start = hc.with_body("POST", "%s/exec/%s/start" % (API, "0" * 64), b'{"Detach":false}',
                         (("Connection", "Upgrade"), ("Upgrade", "tcp")))
    assert_refused(exchange(proxy.addr, start), start)
    victim.c.reload()
    assert not victim.c.attrs.get("ExecIDs"), victim.c.attrs.get("ExecIDs")
    with pytest.raises(docker.errors.NotFound):
        support.read_file(victim.c, "/pwned")
    assert_no_forbidden_events(docker_direct, since, victim)


def test_archive_is_never_written(proxy, docker_direct, victim):
    since = time.time()
    tar = support.tar_of("pwned.txt", victim.payload)
    target = "%s/containers/%s/archive?path=/tmp" % (API, victim.id)
    cl = (("Content-Type", "application/x-tar"), ("Content-Length", str(len(tar))))
    put = hc.req("PUT", target, H + cl, tar)
    attempts = {
        "put": put,
        "lowercase-put": b"put" + put[3:],
        "put-by-name": put.replace(victim.id.encode(), victim.name.encode(), 1),
        "put-pct-archive": put.replace(b"/archive", b"/%61rchive", 1),
        "get-with-tar-body": b"GET" + put[3:],
        "head-with-tar-body": b"HEAD" + put[3:],
        "post-override-put": hc.req("POST", target, H + (("X-HTTP-Method-Override", "PUT"),) + cl, tar),
        "put-chunked": hc.req("PUT", target, H + (("Transfer-Encoding", "chunked"),),
                              b"%x\r\n%s\r\n0\r\n\r\n" % (len(tar), tar)),
        "pipelined-after-ping": hc.req("GET", "/_ping") + put,
        "smuggled-in-get-body": hc.req("GET", "/_ping", H + (("Content-Length", str(len(put))),), put),
        "put-expect-100": hc.req("PUT", target, H + cl + (("Expect", "100-continue"),)),
    }
    for name, raw in attempts.items():
        two = name.startswith("pipelined")
        answer = exchange(proxy.addr, raw, method="HEAD" if name.startswith("head") else "GET",
                          responses=2 if two else 1)
        assert_refused(answer, raw, allow_first_ok=two)
    with pytest.raises(docker.errors.NotFound):
        support.read_file(victim.c, "/tmp/pwned.txt")
    assert_no_forbidden_events(docker_direct, since, victim)


def test_attach_never_happens(proxy, docker_direct, victim):
    since = time.time()
    line = victim.payload + b"\n"
    attach = "%s/containers/%s/attach?stream=1&stdin=1&stdout=1&stderr=1" % (API, victim.id)
    key = (("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="))
    mask = b"\x01\x02\x03\x04"
    frame = b"\x81" + bytes([0x80 | len(line)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(line))
    ws = "%s/containers/%s/attach/ws?stream=1&stdin=1" % (API, victim.id)
    ws_head = H + (("Connection", "Upgrade"), ("Upgrade", "websocket")) + key
    attempts = {
        "post-upgrade-tcp": hc.req("POST", attach, H + (("Connection", "Upgrade"), ("Upgrade", "tcp"))) + line,
        "post-no-upgrade": hc.req("POST", attach, H + (("Content-Length", str(len(line))),), line),
        "lowercase-post": b"post" + hc.req("POST", attach, H + (("Connection", "Upgrade"), ("Upgrade", "tcp")))[4:]
                          + line,
        "get-attach-hijack": hc.req("GET", attach, H + (("Connection", "Upgrade"), ("Upgrade", "tcp"))) + line,
        "websocket": hc.req("GET", ws, ws_head) + frame,
        "websocket-by-name": hc.req("GET", ws.replace(victim.id, victim.name), ws_head) + frame,
        "websocket-pct-ws": hc.req("GET", ws.replace("/ws?", "/%77s?"), ws_head) + frame,
        "websocket-no-upgrade-headers": hc.req("GET", ws, H + key) + frame,
        "websocket-http10": hc.req("GET", ws, ws_head, version="HTTP/1.0") + frame,
        "websocket-v1.41.0": hc.req("GET", ws.replace(API, "/v1.41.0"), ws_head) + frame,
        "pipelined-after-ping": hc.req("GET", "/_ping") + hc.req("GET", ws, ws_head) + frame,
        "connect-tunnel": hc.req("CONNECT", "docker:2375", (("Host", "docker:2375"),))
                          + hc.req("POST", attach, H + (("Connection", "Upgrade"), ("Upgrade", "tcp"))) + line,
    }
    for name, raw in attempts.items():
        two = name.startswith("pipelined")
        answer = exchange(proxy.addr, raw, responses=2 if two else 1)
        assert_refused(answer, raw, allow_first_ok=two)
        assert b" 101 " not in answer[2] and b"raw-stream" not in answer[2], (name, answer[2][:500])
    time.sleep(0.3)
    logs = victim.c.logs()
    assert victim.payload not in logs, "a hostile attach wrote to the container's stdin: %r" % logs[-300:]
    assert_no_forbidden_events(docker_direct, since, victim)


def test_kill_stop_remove_are_refused(proxy, docker_direct, victim):
    since = time.time()
    cid = victim.id
    attempts = [
        hc.req("DELETE", "%s/containers/%s?force=1" % (API, cid)),
        hc.req("delete", "%s/containers/%s?force=1" % (API, cid)),
        hc.req("GET", "%s/containers/%s?force=1" % (API, cid), H + (("X-HTTP-Method-Override", "DELETE"),)),
        hc.req("POST", "%s/containers/%s/kill" % (API, cid)),
        hc.req("POST", "%s/containers/%s/stop?t=0" % (API, cid), H + (("Content-Length", "0"),)),
        hc.req("POST", "%s/containers/%s/pause" % (API, cid)),
        hc.req("POST", "%s/containers/%s/rename?name=pwned" % (API, victim.id)),
        hc.req("GET", "/_ping", H + (("Content-Length", "0"),)) + hc.req("POST", "/containers/%s/kill" % cid),
        hc.req("POST", "http://docker/containers/%s/kill" % cid),
        hc.req("POST", "/v1.41.0/containers/%s/kill" % cid),
    ]
    for raw in attempts:
        two = raw.startswith(b"GET /_ping ")
        assert_refused(exchange(proxy.addr, raw, responses=2 if two else 1), raw, allow_first_ok=two)
    victim.c.reload()
    assert victim.c.status == "running" and victim.c.name == victim.name, (victim.c.status, victim.c.name)
    assert_no_forbidden_events(docker_direct, since, victim)


# ---------------------------------------------------------------------------------------------
# dangerous reads: no secret ever reaches the client, and the daemon is never asked


def test_dangerous_reads_leak_nothing(proxy_factory, docker_direct, dockerd, victim):
    unix_url, unix_path = support.unix_listen_url("d.sock", "mode=0666")
    p = proxy_factory(listen=["tcp://127.0.0.1:%d" % support.free_port(), unix_url])
    tcp = p.first_listener_address()
    v, cid = victim, victim.id
    image = v.image
    # control: the daemon, asked directly, does hand out these secrets
    for target, secret in [("%s/containers/%s/logs?stdout=1" % (API, cid), v.log_secret),
                           ("%s/containers/%s/archive?path=/secret.txt" % (API, cid), v.file_secret)]:
        status, body, _ = fetch(dockerd.socket_path, "GET", target.encode())
        assert status == 200 and secret in body, (target, status)
    since = time.time()
    targets = [
        "%s/containers/%s/export" % (API, cid), "/containers/%s/export" % cid,
        "%s/containers/%s/%%65xport" % (API, cid), "%s/containers/%s/export" % (API, v.name),
        "%s/containers/%s/export" % (API, cid[:12]), "/v1.41.0/containers/%s/export" % cid,
        "/v1.041/containers/%s/export" % cid, "/V1.41/containers/%s/export" % cid,
        "//containers/%s/export" % cid, "/containers/%s/./export" % cid, "/containers/%s/export/" % cid,
        "/containers/%s%%2Fexport" % cid, "http://docker/containers/%s/export" % cid,
        "%s/containers/%s/archive?path=/secret.txt" % (API, cid),
        "%s/containers/%s/%%61rchive?path=/secret.txt" % (API, cid),
        "%s/containers/%s/archive?path=%%2Fsecret.txt" % (API, v.name),
        "%s/containers/%s/logs?stdout=1&stderr=1" % (API, cid), "%s/containers/%s/logs?stdout=1&follow=on" % (API, cid),
        "%s/containers/%s/%%6Cogs?stdout=1" % (API, cid), "%s/containers/%s/logs?stdout=1" % (API, v.name),
        "%s/containers/%s/logs?stdout=1&stdout=1" % (API, cid),
        "%s/containers/%s/top" % (API, cid), "%s/containers/%s/%%74op?ps_args=aux" % (API, cid),
        "%s/images/%s/get" % (API, image), "%s/images/get?names=%s" % (API, quote(image, safe="")),
        "%s/containers/%s/changes" % (API, cid),
    ]
    for listener in (tcp, unix_path):
        for target in targets:
            for method in ("GET", "HEAD"):
                raw = hc.req(method, target)
                answer = exchange(listener, raw, method=method)
                assert_refused(answer, raw)
                received = answer[2]
                for secret in (v.log_secret, v.file_secret, b"ustar", b"GOT:", b"\"Titles\"",
                               b"X-Docker-Container-Path-Stat", b"repositories"):
                    assert secret not in received, (target, method, secret, received[:600])
    assert_no_forbidden_events(docker_direct, since, victim)
    # control: the events check does see a top, so its silence above means something
    assert fetch(dockerd.socket_path, "GET", ("%s/containers/%s/top" % (API, cid)).encode())[0] == 200
    seen = [e.get("Action") for e in direct_events(docker_direct, since, cid)]
    assert "top" in seen, seen


def test_control_bytes_in_forwarded_headers_do_not_reach_the_daemon(proxy, dockerd):
    """The rebuilt request must be one the daemon parses as the canonical request. A CTL in a
    forwarded header (User-Agent, Accept) makes the daemon (Go net/http) reject the request:
    porthole should refuse it (400) or drop the header."""
    raw = b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nUser-Agent: evil\x01agent\r\n\r\n"
    direct_received = exchange(dockerd.socket_path, raw)[2]
    statuses, responses, received, _ = exchange(proxy.addr, raw)
    assert statuses, received
    ours = responses and responses[0].body.startswith(b'{"message": "porthole: ')
    assert (statuses[0] == 200 and responses[0].body == b"OK") or (statuses[0] == 400 and ours), (
        "porthole forwarded a header value the daemon rejects: daemon directly answers %r; through "
        "porthole the client got %r" % (direct_received[:200], received[:300]))


# ---------------------------------------------------------------------------------------------
# differential: the daemon's router versus porthole's canonical form


class Base:
    def __init__(self, method, target, allowed_in, kind="json", profiles=("default",)):
        self.method = method
        self.profiles = profiles  # listeners (profiles) the variants are sent through
        self.target = target  # canonical, as a well-behaved client sends it
        self.allowed_in = allowed_in  # profiles whose rules allow it
        self.kind = kind  # how to compare bodies: json, containers, info, bytes, head


def variants(base: Base):
    """Raw spellings of base.target: (label, raw target bytes)."""
    target = base.target
    path, sep, query = target.partition("?")
    q = sep + query
    parts = path.split("/")[1:]  # ['v1.41', 'containers', id, 'json']
    ver, rest = (parts[0], parts[1:]) if parts[0].startswith("v1.") else ("", parts)
    vp = "/" + ver if ver else ""
    out = [("canonical", target)]
    out += [("no-version", "/" + "/".join(rest) + q)]
    for v in ("v1.041", "v1.41.0", "V1.41", "v1.24", "%761.41", "v1.41/v1.41"):
        out.append(("version-" + v, "/%s/%s%s" % (v, "/".join(rest), q)))
    last = len(rest) - 1
    for i, seg in enumerate(rest):
        enc = list(rest)
        enc[i] = "%%%02X" % ord(seg[0]) + seg[1:]
        out.append(("pct-seg%d" % i, vp + "/" + "/".join(enc) + q))
        if i in (0, last):
            enc[i] = seg.upper()
            if enc[i] != seg:
                out.append(("upper-seg%d" % i, vp + "/" + "/".join(enc) + q))
        if i == last:
            enc[i] = "%%%02x" % ord(seg[0]) + seg[1:]
            out.append(("pct-lower-seg%d" % i, vp + "/" + "/".join(enc) + q))
            enc[i] = "%25" + "%02X" % ord(seg[0]) + seg[1:]
            out.append(("double-pct-seg%d" % i, vp + "/" + "/".join(enc) + q))
    out += [
        ("trailing-slash", path + "/" + q),
        ("dot-segment", vp + "/./" + "/".join(rest) + q),
        ("dotdot-segment", vp + "/x/../" + "/".join(rest) + q),
        ("pct-dotdot", vp + "/x/%2e%2e/" + "/".join(rest) + q),
        ("double-slash-leading", "/" + path + q),
        ("double-slash-inside", vp + "/" + "//".join(rest) + q),
        ("pct-2F-last", vp + "/" + "/".join(rest[:-1]) + "%2F" + rest[-1] + q if len(rest) > 1 else path + "%2F" + q),
        ("encoded-question", path + "%3F" + query if query else path + "%3F"),
    ]
    if len(rest) >= 3 and rest[0] == "containers":
        name = rest[1]
        out += [("legacy-link-name", vp + "/containers/x/%s/%s%s" % (name, "/".join(rest[2:]), q)),
                ("leading-slash-name", vp + "/containers/%%2F%s/%s%s" % (name, "/".join(rest[2:]), q)),
                ("id-prefix", vp + "/containers/%s/%s%s" % (name[:12], "/".join(rest[2:]), q))]
    if query:
        key, _, value = query.split("&")[0].partition("=")
        out += [("repeated-key", target + "&%s=%s" % (key, "0" if value != "0" else "1")),
                ("pct-key", path + "?%%%02X%s=%s" % (ord(key[0]), key[1:], value) + query[len(key) + 1 + len(value):]),
                ("semicolon-query", path + "?" + query.replace("&", ";")),
                ("extra-param", target + "&x=/../../export")]
        if "follow=" in query:
            out += [("follow-0", target.replace("follow=on", "follow=0")),
                    ("follow-on-vs-1", target.replace("follow=on", "follow=1")),
                    ("follow-TRUE", target.replace("follow=on", "follow=TRUE"))]
    seen, unique = set(), []
    for label, raw in out:
        if raw not in seen:
            seen.add(raw)
            unique.append((label, raw.encode("latin-1")))
    return unique


def fetch(address, method, raw_target, timeout=20.0):
    """One request on a fresh connection: (status, body, headers) or ("closed", what came, [])."""
    seen = exchange(address, hc.req(method, raw_target, H + (("Connection", "close"),)), method, timeout, linger=0)
    r = seen.response
    return ("closed", seen.received, []) if r is None else (r.status, r.body, r.headers)

def normal_form(kind, answer):
    """What must agree between two answers: the status, and for a 200 the body (minus what
    changes by itself: container uptimes, daemon counters); for HEAD the X-Docker-* headers."""
    status, body, headers = answer
    if kind == "head":
        return status, sorted(k for k, _ in headers if k.startswith("x-docker"))
    if status != 200:
        return (status,)  # error messages quote the raw path: compare the status only
    if kind == "containers":
        return status, sorted(json.dumps({k: v for k, v in c.items() if k not in ("Status", "State")},
                                         sort_keys=True) for c in json.loads(body))
    if kind == "info":
        return status, json.loads(body)["ID"]
    return status, body


def filtered(profile, method, target, answer):
    """The daemon's answer as the profile's response filter leaves it (redaction): porthole must
    relay exactly that."""
    status, body, headers = answer
    plan = plan_response_filter(SHIPPED.filtering[profile], method, canonicalize_target(target))
    if plan.filter is None or not 200 <= status < 300 or method == "HEAD":
        return answer
    if plan.filter.kind == "events":  # line by line; dropped events leave no line
        kept = (plan.filter.event(json.loads(line)) for line in body.splitlines() if line.strip())
        return status, b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in kept if e), headers
    document = plan.filter.document(json.loads(body))
    return status, json.dumps(document, separators=(",", ":")).encode() + b"\n", headers


def is_porthole_refusal(answer):
    """porthole's own answers carry none of the daemon's headers (Api-Version, Server)."""
    status, body, headers = answer
    names = {k for k, _ in headers}
    return status in LOCAL and not names & {"api-version", "server", "docker-experimental", "ostype"} and (
        body == b"" or body.startswith(b'{"message": "porthole: '))


def test_differential_daemon_vs_proxy(proxy_factory, dockerd, docker_direct, victim, busybox_image):
    exited = support.run_sleeper(docker_direct, busybox_image, command=["sh", "-c", "echo hello-differential"],
                                 start=True)
    try:
        exited.wait(timeout=30)
        logs_url, logs_path = support.unix_listen_url("l.sock", "mode=0666&profile=log-reader")
        p = proxy_factory(listen=["tcp://127.0.0.1:%d" % support.free_port(), logs_url])
        listeners = {"default": p.first_listener_address(), "log-reader": logs_path}
        _run_differential(dockerd, victim, exited, busybox_image, listeners, p)
    finally:
        exited.remove(force=True)


def _run_differential(dockerd, victim, exited, image, listeners, p):
    cid, eid = victim.id, exited.id
    both = ("default", "log-reader")
    bases = [
        Base("GET", "/_ping", both, "bytes"),
        Base("GET", API + "/version", both),
        Base("GET", API + "/info", both, "info"),
        Base("GET", API + "/containers/json?all=1", both, "containers"),
        Base("GET", API + "/containers/%s/json" % cid, both),
        Base("GET", API + "/images/%s/json" % image, both),
        Base("GET", API + "/events?since=1&until=2", both),
        # forbidden in the default profile
        Base("GET", API + "/containers/%s/export" % cid, ()),
        Base("GET", API + "/containers/%s/archive?path=/secret.txt" % cid, ()),
        Base("HEAD", API + "/containers/%s/archive?path=/secret.txt" % cid, (), "head"),
        Base("GET", API + "/containers/%s/top" % cid, ()),
        Base("GET", API + "/images/%s/get" % image, ()),
        Base("GET", API + "/containers/%s/changes" % cid, ()),
        Base("GET", API + "/containers/%s/logs?stdout=1&follow=on" % eid, ("log-reader",), "bytes",
             profiles=("default", "log-reader")),
        Base("GET", API + "/containers/%s/export" % eid, (), "bytes", profiles=("log-reader",)),
    ]
    direct_cache = {}

    def direct(method, raw):
        key = (method, raw)
        if key not in direct_cache:
            direct_cache[key] = fetch(dockerd.socket_path, method, raw)
        return direct_cache[key]

    problems, stricter, refused_dangerous_routes, requests = [], [], [], 0
    for base in bases:
        canonical_answer = direct(base.method, base.target.encode())
        assert canonical_answer[0] == 200, ("the daemon does not serve the base target", base.target,
                                            canonical_answer[:2])
        base_form = normal_form(base.kind, canonical_answer)
        for profile, address in listeners.items():
            if profile not in base.profiles:
                continue
            for label, raw in variants(base):
                d = direct(base.method, raw)
                pr = fetch(address, base.method, raw)
                requests += 2
                daemon_serves_base = d[0] == 200 and normal_form(base.kind, d) == base_form
                where = "%s %s %r (%s) via %s" % (base.method, base.target[:60], raw, label, profile)
                if is_porthole_refusal(pr):
                    if daemon_serves_base and profile in base.allowed_in:
                        stricter.append(where)
                    if daemon_serves_base and profile not in base.allowed_in:
                        refused_dangerous_routes.append(where)
                    continue
                # porthole forwarded it: only for an allowed endpoint, and only if the daemon
                # treats the raw variant exactly like the canonical form porthole forwarded
                try:
                    canon = canonicalize_target(raw).forward_form().encode()
                except Refusal as refusal:
                    problems.append("%s: forwarded although canonicalize_target refuses it (%s); "
                                    "proxy answered %r" % (where, refusal.reason, pr[:2]))
                    continue
                c = direct(base.method, canon)
                if profile not in base.allowed_in:
                    problems.append("%s: forwarded a variant of a forbidden endpoint; daemon directly: %r, "
                                    "through porthole: %r" % (where, d[:2], (pr[0], pr[1][:200])))
                elif normal_form(base.kind, d) != normal_form(base.kind, c):
                    problems.append("%s: daemon treats the raw variant differently from porthole's canonical "
                                    "form %r: raw -> %r, canonical -> %r" % (where, canon, d[:2], c[:2]))
                elif normal_form(base.kind, pr) != normal_form(base.kind, filtered(profile, base.method, canon, c)):
                    problems.append("%s: porthole relayed %r but the daemon answers the canonical form %r "
                                    "with %r" % (where, pr[:2], canon, c[:2]))
    print("\ndifferential: %d requests, %d variants refused by porthole although the daemon would have "
          "served the allowed endpoint (porthole stricter), %d spellings the daemon routes to a forbidden "
          "endpoint, all refused" % (requests, len(stricter), len(refused_dangerous_routes)))
    for line in stricter:
        print("  stricter: " + line)
    for line in refused_dangerous_routes:
        print("  refused forbidden route: " + line)
    assert not problems, "\n".join(problems)
    # the differential has teeth: the daemon does route non-canonical spellings of forbidden
    # endpoints, and porthole refused each of them
    assert len(refused_dangerous_routes) >= 5, refused_dangerous_routes
    assert requests <= 800, requests
