"""Hangs that coalescing and finite answers could cause, and honest request logs (issue
"(2 of 5)", items 3 and 17): the proxy process in front of the recording fake daemon.

- a second `podman events` watcher got its first byte only when the first one left (libpod
  streams were taken for finite answers, and coalesced);
- an identical request waited for as long as a stalled daemon answer lasted;
- a finite answer that stopped moving mid-body was held forever;
- a watcher that hung up was logged and counted as an error."""
from __future__ import annotations

import time

import pytest

import fake_upstream as fu
import support
from fake_upstream import HttpClient

pytestmark = pytest.mark.timeout(120)

RULES = {"version": 1, "profiles": {
    "default": {"redact": [], "rules": [
        {"method": "GET", "path": "/_ping"},
        {"method": "GET", "path": "/events"},
        {"method": "GET", "path": "/containers/json", "query": {"all": "*"}},
        {"method": "GET", "path": "/libpod/events", "query": {"filters": "*", "since": "*", "until": "*",
                                                                "stream": "*"}},
    ]},
    "redacting": {"rules": [{"method": "GET", "path": "/containers/{id}/json"}]},
}}
LIST = "/v1.41/containers/json?all=1"
BODY = (b"[" + b",".join(b'{"Id":"%064d","Names":["/c%d"]}' % (i, i) for i in range(200)) + b"]\n")


def stalls_first(seconds: float):
    """The daemon's first answer stops after its head and a little of its body for `seconds`,
    then ends; every later one comes at once."""
    calls = []

    def handler(conn, req):
        calls.append(req)
        data = fu.response(200, BODY)
        if len(calls) > 1:
            return conn.send(data)
        cut = data.index(b"\r\n\r\n") + 4 + 100
        return conn.send(data[:cut]) and conn.sleep(seconds) and conn.send(data[cut:])

    return handler


def request_lines(p, target):
    return [line for line in p.logs() if line.get("event") == "request" and line.get("target") == target]


def request_line(p, target, timeout=5.0) -> dict:
    """The one request log line of `target`, once it is written."""
    assert support.wait_until(lambda: request_lines(p, target), timeout), "no request line"
    (line,) = request_lines(p, target)
    return line


def test_a_second_podman_events_watcher_gets_its_first_byte_at_once(start_proxy, upstream):
    upstream.route("/libpod/events", fu.events(interval=0.2))
    p = start_proxy()
    target = "/v4.3.1/libpod/events?filters=%7B%7D&since=1m&stream=true&until="
    with HttpClient(p.addr, timeout=10) as first, HttpClient(p.addr, timeout=10) as second:
        first.request("GET", target)
        first_head = first.read_head()
        assert first_head.status == 200
        started = time.monotonic()
        second.request("GET", target)
        head = second.read_head(timeout=5)  # (it waited for the first watcher to leave)
        assert head.status == 200 and time.monotonic() - started < 2
        assert second.read_chunk(head) and first.read_chunk(first_head)  # events flow to both
    assert len([q for q in upstream.requests if q.path == "/libpod/events"]) == 2


def test_an_identical_request_does_not_wait_for_a_stalled_answer(start_proxy, upstream):
    upstream.route("/containers/json", stalls_first(30))
    p = start_proxy("--shutdown-grace", "1")
    with HttpClient(p.addr, timeout=40) as first, HttpClient(p.addr, timeout=10) as second:
        first.request("GET", LIST)
        assert first.read_head().status == 200
        started = time.monotonic()
        second.request("GET", LIST)
        answer = second.read_response(timeout=8)  # (it waited out the first answer's 30 s)
        waited = time.monotonic() - started
        assert answer.status == 200 and answer.body == BODY
        assert 2 < waited < 6, waited  # a few seconds of patience: then a daemon request of its own
    assert len([q for q in upstream.requests if q.path == "/containers/json"]) == 2


def test_a_finite_answer_that_stops_mid_body_is_cut_after_response_timeout(start_proxy, upstream):
    upstream.route("/containers/json", stalls_first(30))
    p = start_proxy("--response-timeout", "1", "--no-coalesce")
    with HttpClient(p.addr, timeout=10) as client:
        client.request("GET", LIST)
        started = time.monotonic()
        answer = client.read_response(timeout=8, allow_incomplete=True)  # (held for the 30 s)
        assert answer.status == 200 and not answer.complete
        assert time.monotonic() - started < 4
    line = request_line(p, LIST)
    assert (line["decision"], line["ended"]) == ("error", "aborted"), line
    assert "--response-timeout 1" in line["reason"]


def test_a_held_answer_that_stops_is_answered_504(start_proxy, upstream):
    """The redaction holds the head until the whole document is in: nothing was relayed, so the
    client gets a 504 rather than a reset."""
    cid = "c" * 64
    document = b'{"Id":"%s","Config":{"Env":["TOKEN=secret"]}}\n' % cid.encode()

    def stalls(conn, req):
        data = fu.response(200, document)
        return conn.send(data[:data.index(b"\r\n\r\n") + 10]) and conn.sleep(30)

    upstream.route(f"/containers/{cid}/json", stalls)
    port = support.free_port()
    p = start_proxy("--response-timeout", "1", listen=[f"tcp://127.0.0.1:{port}?profile=redacting"])
    started = time.monotonic()
    answer = fu.get(p.addr, f"/v1.41/containers/{cid}/json", timeout=8)
    assert answer.status == 504 and "--response-timeout 1" in answer.json()["message"]
    assert time.monotonic() - started < 4


def test_a_watcher_that_hangs_up_is_logged_allow_and_client_closed(start_proxy, upstream):
    upstream.route("/events", fu.events(interval=0.1))
    port = support.free_port()
    p = start_proxy("--metrics", f"tcp://127.0.0.1:{port}")
    with HttpClient(p.addr, timeout=10) as watcher:  # docker events, then Ctrl-C
        watcher.request("GET", "/v1.41/events")
        head = watcher.read_head()
        assert head.status == 200 and watcher.read_chunk(head)
    line = request_line(p, "/v1.41/events")
    assert (line["decision"], line["ended"], line["reason"]) == ("allow", "client closed", None), line
    metrics = fu.get(("127.0.0.1", port), "/metrics").body.decode()
    assert 'porthole_requests_total{profile="default",decision="allow",endpoint="/events"} 1' in metrics
    assert 'decision="error"' not in metrics
