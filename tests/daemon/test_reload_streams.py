"""A reload reaches open streams (issue "(2 of 5)", item 14): a stream whose decision or filtering
the new rules change is ended (cleanly: its client sees the end and asks again, and is decided
under the new rules); a stream the new rules still allow as before goes on. It used to go on
under the old rules for as long as its client kept it open."""
from __future__ import annotations

import json
import signal
import time

import fake_upstream as fu
import pytest
import support

PING = {"method": ["GET", "HEAD"], "path": "/_ping"}
EVENTS = {"method": "GET", "path": "/events"}
RULES = {"version": 1, "profiles": {"default": {"rules": [PING, EVENTS]}}}


def open_events(p):
    client = fu.HttpClient(p.addr, timeout=5)
    client.request("GET", "/v1.41/events")
    response = client.read_head()
    assert response.status == 200
    assert client.read_chunk(response)  # the first event: the stream is open
    return client, response


def reload_with(p, document):
    p.rules_path.write_text(json.dumps(document))
    p.send_signal(signal.SIGHUP)
    assert p.wait_for_log(lambda line: line.get("event") == "reload", 10), p.stderr_text()[-2000:]


def stream_ends(client, response, within=5.0):
    """True if the stream ends (its last chunk, or the connection closes) within `within` s."""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if client.read_chunk(response, timeout=max(0.1, deadline - time.monotonic())) is None:
                return True
    except fu.ConnectionClosed:
        return True
    except OSError:  # the deadline passed with the stream still open
        return False
    return False


@pytest.mark.parametrize("change", [
    {"rules": [PING]},  # /events no longer allowed
    {"rules": [PING, {"method": "GET", "path": "/events", "query": {"filters": "*"}}]},  # another grant
    {"rules": [PING, EVENTS], "redact": ["env", "exec-commands", "commands"]},  # other filtering
    {"rules": [PING, EVENTS], "visible": {"labels": ["team=a"]}},  # a scope
    {"rules": [PING, EVENTS], "mode": "warn"},  # the same grant, but now a warn profile: still alike
])
def test_a_reload_ends_the_streams_it_changes(start_proxy, upstream, change):
    upstream.route("/events", fu.events(interval=0.1))
    p = start_proxy()
    client, response = open_events(p)
    try:
        reload_with(p, {"version": 1, "profiles": {"default": change}})
        ends = stream_ends(client, response)
        if change.get("mode") == "warn":
            assert not ends, "a stream the new rules allow alike was ended"
        else:
            assert ends, "the stream went on under the old rules"
            ended = p.wait_for_log(lambda line: line.get("event") == "request" and "reload" in (line.get("reason") or ""), 5)
            assert ended is not None, p.stderr_text()[-2000:]
    finally:
        client.close()


def test_an_unrelated_change_leaves_the_stream_open(start_proxy, upstream):
    upstream.route("/events", fu.events(interval=0.1))
    p = start_proxy()
    client, response = open_events(p)
    try:
        reload_with(p, {"version": 1, "profiles": {"default": {"rules": [
            {"method": "GET", "path": "/version"}, PING, EVENTS]}}})  # reordered, one rule more
        assert not stream_ends(client, response, within=1.5)
        assert support.wait_until(lambda: p.wait_for_log(
            lambda line: line.get("event") == "reload" and line.get("streams_ended") == 0, 0) is not None, 5)
    finally:
        client.close()
