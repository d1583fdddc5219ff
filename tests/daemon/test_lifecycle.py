"""Logging, SIGHUP reload, SIGTERM shutdown and --healthcheck, with the
proxy in front of a fake upstream."""

import json
import os
import signal
import socket
import time

import pytest

import support
import fake_upstream as fu
from fake_upstream import HttpClient, build_request, exchange
from support import count_events

pytestmark = pytest.mark.timeout(60)

REQUEST_KEYS = {"time", "level", "event", "listener", "client", "method", "target", "path",
                "decision", "rule", "reason", "status", "bytes", "duration_ms"}


def rules_doc(*paths):
    return {"version": 1, "profiles": {"default": {
        "rules": [{"method": "GET", "path": p} for p in paths]}}}


RULES = rules_doc("/_ping", "/version", "/events", "/containers/json")


def replace_file(path, text):
    tmp = str(path) + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def request_lines(p):
    return [l for l in p.logs() if l.get("event") == "request"]


def wait_request_lines(p, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while len(request_lines(p)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)   # and no more than n arrive
    return request_lines(p)


def req(method, target, headers=(("Host", "localhost"),), body=b""):
    return build_request(method, target, list(headers), body)


# ---------------------------------------------------------------------------
# logging


def test_one_json_log_line_per_request(start_proxy, upstream):
    p = start_proxy()
    sent = [
        (req("GET", "/_ping?m=log1"), 200, "allow"),
        (req("GET", "/v1.41/version?m=log2"), 200, "allow"),
        (req("HEAD", "/_ping?m=log3"), 403, "deny"),            # no HEAD rule
        (req("DELETE", "/v1.41/containers/abc?m=log4"), 403, "deny"),
        (req("POST", "/v1.41/containers/create?m=log5",
             [("Host", "localhost"), ("Content-Length", "2")], b"{}"), 403, "deny"),
        (req("GET", "/v1.41/containers/abc/export?m=log6"), 403, "deny"),
        (req("GET", "/v1.41//containers/json?m=log7"), 400, "error"),   # empty segment
    ]
    for data, status, _ in sent:
        method = data.split(b" ", 1)[0].decode()
        r = exchange(p.addr, data, method).response
        assert r is not None and r.status == status, (data, r)
    # one malformed request (no parseable request line)
    r = exchange(p.addr, b"THIS IS NOT HTTP\r\n\r\n").response
    assert r is None or r.status == 400
    # three pipelined requests on one connection
    with HttpClient(p.addr) as c:
        c.send(req("GET", "/_ping?m=pipe1") + req("GET", "/v1.41/version?m=pipe2")
               + req("GET", "/v1.41/containers/json?m=pipe3"))
        for _ in range(3):
            assert c.read_response().status == 200
    total = len(sent) + 1 + 3
    lines = wait_request_lines(p, total)
    assert len(lines) == total, json.dumps(lines, indent=1)
    for line in lines:
        assert REQUEST_KEYS <= set(line), line
        assert line["decision"] in ("allow", "deny", "error"), line
    by_target = {}
    for line in lines:
        by_target.setdefault(line["target"], []).append(line)
    for data, status, decision in sent:
        target = data.split(b" ")[1].decode()
        assert len(by_target.get(target, [])) == 1, (target, by_target.keys())
        line = by_target[target][0]
        assert line["status"] == status, line
        assert line["decision"] == decision, line
        assert line["method"] == data.split(b" ", 1)[0].decode()
    allowed = by_target["/v1.41/version?m=log2"][0]
    assert allowed["path"] == "/v1.41/version?m=log2"
    assert allowed["rule"]
    assert allowed["bytes"] == len(json.dumps(fu.VERSION)) + 1
    assert isinstance(allowed["duration_ms"], (int, float))
    for target in ("/_ping?m=pipe1", "/v1.41/version?m=pipe2", "/v1.41/containers/json?m=pipe3"):
        assert len(by_target.get(target, [])) == 1, target
    # every line on stderr is one JSON object
    for raw in p.stderr_lines():
        assert isinstance(json.loads(raw), dict), raw


HOSTILE_TARGETS = [
    b'/v1.41/containers/json?x=%0d%0a{"event":"request","forged":1}',
    b'/v1.41/containers/json?x=%0A%7B%22event%22%3A%22request%22%7D',
    b'/v1.41/containers/json?q="quoted"&r=\\back\\slash',
    b'/v1.41/containers/json?q=%22%5C%E2%80%AE%F0%9F%92%A5%1B%5B31m',
    b'/v1.41/containers/json?q=%ff%fe',
    b'/v1.41/containers/json?q=\xe2\x80\xae\xc3\xa9\xff',          # raw non-ASCII
    b'/v1.41/containers/json?q=a\x1b[31mred',                      # raw ESC
    b'/v1.41/containers/json?q=a\rb',                              # raw CR
    b'/v1.41/containers/%2e%2e/json',
    b'/v1.41/containers/json?q=' + b'%00' * 50,
]


def test_hostile_targets_cannot_break_log_lines(start_proxy, upstream):
    p = start_proxy()
    for target in HOSTILE_TARGETS:
        r = exchange(p.addr, b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n"
                     b"User-Agent: ua\"\\\x1b\xc3\xa9\r\n\r\n").response
        assert r is None or r.status in (200, 400, 403), (target, r)
    lines = wait_request_lines(p, len(HOSTILE_TARGETS))
    assert len(lines) == len(HOSTILE_TARGETS), json.dumps(lines, indent=1)
    for raw in p.stderr_lines():
        obj = json.loads(raw)          # every stderr line is one JSON object
        assert isinstance(obj, dict), raw
        assert obj.get("forged") is None, raw
        assert all(ord(ch) >= 0x20 for ch in raw), repr(raw)
    logged = [l["target"] for l in lines]
    # targets h11 accepts are logged verbatim (JSON round trip)
    for target in HOSTILE_TARGETS:
        if all(0x21 <= b <= 0x7e for b in target):
            assert target.decode() in logged, (target, logged)


def test_text_log_format_one_line_per_request(start_proxy, upstream):
    p = start_proxy("--log-format", "text")
    targets = [b"/_ping?m=TXTMARK1", b"/v1.41/containers/abc/export?m=TXTMARK2",
               b'/v1.41/containers/json?m=TXTMARK3%0a%0dforged=1', b'/v1.41/version?m=TXTMARK4"\\']
    for target in targets:
        exchange(p.addr, b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n").response
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if all(any("TXTMARK%d" % i in l for l in p.stderr_lines()) for i in range(1, 5)):
            break
        time.sleep(0.05)
    time.sleep(0.3)
    lines = p.stderr_lines()
    for i in range(1, 5):
        hits = [l for l in lines if "TXTMARK%d" % i in l]
        assert len(hits) == 1, (i, lines)
    assert not any(l.lstrip().startswith("forged") for l in lines)
    for l in lines:
        assert all(ord(ch) >= 0x20 for ch in l), repr(l)


# ---------------------------------------------------------------------------
# SIGHUP


def wait_log_event(p, event, after, timeout=5.0):
    """Wait for the (after+1)-th log line with this event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [l for l in p.logs() if l.get("event") == event]
        if len(hits) > after:
            return hits[after]
        time.sleep(0.05)
    return None


def status_of(p, target):
    r = fu.get(p.addr, target)
    return r.status


def test_sighup_reload_changes_policy_and_bad_file_keeps_old(start_proxy, upstream):
    # --watch-rules 0: the reloads counted here are the signal's alone
    p = start_proxy("--watch-rules", "0", rules=support.write_rules(rules_doc("/_ping", "/containers/json")))
    assert status_of(p, "/v1.41/version") == 403
    assert status_of(p, "/v1.41/containers/json") == 200
    n_before = len(upstream.requests)

    # allow /version, drop /containers/json
    replace_file(p.rules_path, json.dumps(rules_doc("/_ping", "/version")))
    ok = count_events(p, "reload")
    p.send_signal(signal.SIGHUP)
    assert wait_log_event(p, "reload", ok), p.stderr_text()
    assert status_of(p, "/v1.41/version") == 200
    assert status_of(p, "/v1.41/containers/json") == 403
    assert [q.path for q in upstream.requests[n_before:]] == ["/version"]

    bad_files = [
        "{ this is not json",
        json.dumps({"version": 1, "profiles": {"default": {"rules": [
            {"method": "POST", "path": "/containers/create"}]}}}),
        json.dumps({"version": 1, "profiles": {"default": {"rules": [
            {"method": "GET", "path": "/containers/{id}/logs"}]}}}),    # dangerous, unacknowledged
        json.dumps({"version": 2, "profiles": {}}),
        "",
    ]
    for text in bad_files:
        failed = count_events(p, "reload_failed")
        replace_file(p.rules_path, text)
        p.send_signal(signal.SIGHUP)
        line = wait_log_event(p, "reload_failed", failed)
        assert line is not None, (text, p.stderr_text())
        assert p.alive()
        # the old policy is still in force
        assert status_of(p, "/v1.41/version") == 200, text
        assert status_of(p, "/v1.41/containers/json") == 403, text
        assert status_of(p, "/_ping") == 200, text
    assert count_events(p, "reload") == ok + 1

    # a good file after the bad ones is taken again
    replace_file(p.rules_path, json.dumps(rules_doc("/_ping", "/containers/json")))
    p.send_signal(signal.SIGHUP)
    assert wait_log_event(p, "reload", ok + 1)
    assert status_of(p, "/v1.41/version") == 403
    assert status_of(p, "/v1.41/containers/json") == 200


def test_sighup_deleted_rules_file_keeps_policy(start_proxy, upstream):
    p = start_proxy("--watch-rules", "0")
    os.unlink(p.rules_path)
    p.send_signal(signal.SIGHUP)
    assert wait_log_event(p, "reload_failed", 0)
    assert status_of(p, "/v1.41/version") == 200
    assert status_of(p, "/v1.41/containers/abc/export") == 403


# ---------------------------------------------------------------------------
# the rules file watched (--watch-rules)


def test_changed_rules_file_reloads_without_a_signal(start_proxy, upstream):
    p = start_proxy("--watch-rules", "0.2", rules=support.write_rules(rules_doc("/_ping", "/containers/json")))
    assert status_of(p, "/v1.41/version") == 403
    replace_file(p.rules_path, json.dumps(rules_doc("/_ping", "/version")))
    line = wait_log_event(p, "reload", 0)
    assert line is not None, p.stderr_text()
    assert status_of(p, "/v1.41/version") == 200
    assert status_of(p, "/v1.41/containers/json") == 403
    requested = [l for l in p.logs() if l.get("event") == "reload_requested"]
    assert requested and requested[0]["reason"] == "the rules file changed", requested

    # an invalid file: refused once (not at every look), the old policy stays
    replace_file(p.rules_path, "{ not json")
    failed = wait_log_event(p, "reload_failed", 0)
    assert failed is not None and failed["kept"] == str(p.rules_path), p.stderr_text()
    time.sleep(1.0)  # five more looks
    assert count_events(p, "reload_failed") == 1
    assert status_of(p, "/v1.41/version") == 200
    replace_file(p.rules_path, json.dumps(rules_doc("/_ping", "/containers/json")))
    assert wait_log_event(p, "reload", 1)
    assert status_of(p, "/v1.41/version") == 403


def test_configmap_symlink_swap_reloads(start_proxy, upstream):
    """A Kubernetes ConfigMap volume: rules.json -> ..data/rules.json, and an update swaps the
    ..data symlink to a new directory atomically (what the kubelet does)."""
    volume = support.short_tmpdir("ph-cm-", 0o755)

    def version(name, paths):
        (volume / name).mkdir(mode=0o755)
        (volume / name / "rules.json").write_text(json.dumps(rules_doc(*paths)))
        os.chmod(volume / name / "rules.json", 0o644)
        (volume / "..data_tmp").symlink_to(name)
        os.rename(volume / "..data_tmp", volume / "..data")

    version("..2026_01_01_v1", ["/_ping", "/containers/json"])
    (volume / "rules.json").symlink_to("..data/rules.json")
    p = start_proxy("--rules", str(volume / "rules.json"), "--watch-rules", "0.2")
    assert status_of(p, "/v1.41/version") == 403
    version("..2026_01_01_v2", ["/_ping", "/version"])
    assert wait_log_event(p, "reload", 0), p.stderr_text()
    assert status_of(p, "/v1.41/version") == 200


def test_watch_rules_zero_reloads_only_on_sighup(start_proxy, upstream):
    p = start_proxy("--watch-rules", "0", rules=support.write_rules(rules_doc("/_ping")))
    replace_file(p.rules_path, json.dumps(rules_doc("/_ping", "/version")))
    time.sleep(6)  # longer than the default interval
    assert count_events(p, "reload") == 0
    assert status_of(p, "/v1.41/version") == 403
    p.send_signal(signal.SIGHUP)
    assert wait_log_event(p, "reload", 0)
    assert status_of(p, "/v1.41/version") == 200


# ---------------------------------------------------------------------------
# SIGTERM


def test_sigterm_finishes_inflight_closes_streams_refuses_new(start_proxy, upstream):
    upstream.route("/version", fu.slow(delay=2.5, body=b'{"slow":true}'))
    upstream.route("/events", fu.events(interval=0.2))
    p = start_proxy("--shutdown-grace", 6)
    slow = HttpClient(p.addr, timeout=10)
    stream = HttpClient(p.addr, timeout=10)
    idle = HttpClient(p.addr, timeout=10)
    try:
        idle.request("GET", "/_ping")
        assert idle.read_response().body == b"OK"
        stream.request("GET", "/v1.41/events")
        sr = stream.read_head()
        assert sr.status == 200
        assert stream.read_chunk(sr) is not None
        slow.request("GET", "/v1.41/version")
        assert upstream.wait_requests(3)
        time.sleep(0.2)

        p.send_signal(signal.SIGTERM)
        # new connections are refused while the slow request is still running
        deadline = time.monotonic() + 2.0
        refused = False
        while time.monotonic() < deadline:
            try:
                s = socket.create_connection(p.addr, timeout=1)
            except ConnectionRefusedError:
                refused = True
                break
            s.close()
            time.sleep(0.05)
        assert refused, "still accepting connections 2 s after SIGTERM"
        assert p.alive(), "exited before the in-flight request finished"
        # the open event stream is ended
        stream_closed = stream.wait_closed(5)
        assert stream_closed, "event stream still open after SIGTERM"
        # the idle keep-alive connection is closed
        assert idle.wait_closed(5)
        # the in-flight finite response completes
        r = slow.read_response(timeout=8)
        assert r.status == 200 and r.json() == {"slow": True}
        assert r.complete
    finally:
        for c in (slow, stream, idle):
            c.close()
    assert p.wait(10) == 0
    assert any(l.get("event") == "shutdown" for l in p.logs())


def test_sigterm_grace_period_bounds_shutdown(start_proxy, upstream):
    upstream.route("/version", fu.slow(delay=30))
    p = start_proxy("--shutdown-grace", 1)
    with HttpClient(p.addr, timeout=10) as c:
        c.request("GET", "/v1.41/version")
        assert upstream.wait_requests(1)
        p.send_signal(signal.SIGTERM)
        assert c.wait_closed(6), "in-flight request outlived the grace period"
        assert not c.all_received.startswith(b"HTTP/1.1 200")
    assert p.wait(6) == 0
    # the upstream connection was closed too
    assert upstream.connections[0].peer_eof.wait(5)


def test_sigint_also_stops_cleanly(start_proxy, upstream):
    p = start_proxy()
    assert status_of(p, "/_ping") == 200
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0


# ---------------------------------------------------------------------------
# --healthcheck


def run_healthcheck(listen_url, timeout=20):
    """`proxy.py --healthcheck --listen URL` as uid 65532 without groups."""
    return support.ProxyProcess(listen=[listen_url], args=["--healthcheck"], rules=False).run(timeout)


def test_healthcheck(start_proxy, upstream):
    p = start_proxy()
    url = p.listen[0]
    res = run_healthcheck(url)
    assert res.returncode == 0, res
    assert any(q.path == "/_ping" for q in upstream.requests)
    # upstream down: the proxy answers 502, the healthcheck fails
    upstream.stop()
    res = run_healthcheck(url)
    assert res.returncode != 0, res
    # proxy down: the healthcheck fails
    p.stop()
    res = run_healthcheck(url)
    assert res.returncode != 0, res
    # nobody ever listened there
    res = run_healthcheck("tcp://127.0.0.1:%d" % support.free_port())
    assert res.returncode != 0, res
