"""Response filtering through the proxy, in front of a hostile fake daemon: answers that cannot be
filtered give a 502 and nothing unfiltered; daemon errors pass untouched; HEAD gets the filtered
length; one /events subscription serves a view per profile. (The pure filters:
tests/unit/core/test_filters.py; the real daemon: tests/daemon/test_filtering_docker.py.)"""
from __future__ import annotations

import json

import pytest

import fake_upstream as fu
import support

SECRET = "hunter2-SECRET"


RULES = {"version": 1, "profiles": {
    "default": {"rules": [{"method": ["GET", "HEAD"], "path": "/containers/{id}/json"},
                          {"method": "GET", "path": "/containers/json"},
                          {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True},
                          {"method": "GET", "path": "/events"}],
                "visible": {"labels": ["team=a"]}}}}


def serve(body: bytes, chunked: bool = False, status: int = 200):
    def handler(conn, req):
        if chunked:
            head = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n").encode()
            conn.send(head + fu.chunk(body) + fu.LAST_CHUNK)
        else:
            conn.send(fu.response(status, body))
        return True
    return handler


HOSTILE = {
    "not JSON": b"<html>" + SECRET.encode() + b"</html>",
    "truncated": json.dumps({"Config": {"Env": [f"A={SECRET}"], "Labels": {"team": "a"}}}).encode()[:-5],
    "deeply nested": b'{"Config": {"Labels": {"team": "a"}, "Env": ["A=' + SECRET.encode() + b'"]}, "x": '
                     + b"[" * 100000 + b"]" * 100000 + b"}",
    "wrongly typed": json.dumps({"Config": {"Labels": {"team": "a"}, "Env": f"A={SECRET}"}}).encode(),
    "huge": json.dumps({"Config": {"Labels": {"team": "a"}, "Env": [f"A={SECRET}"]},
                        "pad": "x" * 300_000}).encode(),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_hostile_answers_get_a_502_and_nothing_unfiltered(start_proxy, upstream, case, chunked):
    upstream.route("/containers/web/json", serve(HOSTILE[case], chunked))
    p = start_proxy("--max-filter-bytes", 200_000)
    r = fu.get(p.addr, "/v1.41/containers/web/json")
    assert r.status == 502, r
    assert SECRET.encode() not in r.body and r.json()["message"].startswith("porthole: response filter failed")
    assert support.wait_until(lambda: any(l.get("event") == "request" and l.get("status") == 502
                                          for l in p.logs()), 5)


def test_daemon_errors_pass_through_untouched(start_proxy, upstream):
    body = json.dumps({"message": "No such container: web"}).encode()
    upstream.route("/containers/web/json", serve(body, status=404))
    p = start_proxy()
    r = fu.get(p.addr, "/containers/web/json")
    assert (r.status, r.body) == (404, body)


def test_head_gets_the_filtered_content_length(start_proxy, upstream):
    doc = {"Id": "a" * 64, "Config": {"Env": [f"A={SECRET}"], "Labels": {"team": "a"}}}
    upstream.route("/containers/web/json", serve(json.dumps(doc).encode()))
    p = start_proxy()
    got, head = fu.get(p.addr, "/containers/web/json"), fu.get(p.addr, "/containers/web/json", method="HEAD")
    assert got.status == head.status == 200 and SECRET.encode() not in got.body
    assert int(head.header("content-length")) == len(got.body) and head.body == b""
    assert [r.method for r in upstream.requests[-1:]] == ["GET"]  # HEAD went as GET, to be filtered


def test_a_hostile_event_aborts_the_stream_without_passing_it(start_proxy, upstream):
    good = {"Type": "container", "Action": "start", "Actor": {"ID": "1", "Attributes": {"team": "a"}}}
    events = (json.dumps(good) + "\n" + '{"Type": "container", "Action": "exec_start: ' + SECRET + '"\n').encode()

    def handler(conn, req):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + fu.chunk(events) + fu.LAST_CHUNK)
        return True
    upstream.route("/events", handler)
    p = start_proxy()
    with fu.HttpClient(p.addr) as c:
        c.request("GET", "/events")
        try:
            r = c.read_response("GET")
            body, complete = r.body, r.complete
        except fu.ConnectionClosed as closed:
            body, complete = getattr(closed, "partial", b""), False
    assert SECRET.encode() not in body and not complete


def test_watchers_with_different_profiles_share_one_subscription(proxy_factory, upstream):
    """The fan-out happens before filtering: one daemon subscription, a view per profile."""
    def event(i):
        team = "a" if i % 2 == 0 else "b"
        return json.dumps({"status": f"exec_create: echo {SECRET}", "id": f"c{i:06d}", "Type": "container",
                           "Action": f"exec_create: echo {SECRET}",
                           "Actor": {"ID": f"c{i:06d}", "Attributes": {"team": team, "n": str(i)}}}) + "\n"
    upstream.route("/events", lambda conn, req: _stream(conn, event))
    rules = support.write_rules({"version": 1, "profiles": {
        "default": {"rules": [{"method": "GET", "path": "/events"}]},
        "team-a": {"rules": [{"method": "GET", "path": "/events"}], "visible": {"labels": ["team=a"]}}}})
    ports = support.free_port(), support.free_port()
    proxy_factory(listen=[f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}?profile=team-a"],
                  upstream=upstream.url, rules=rules)
    views = {}
    clients = []
    try:
        for port in ports:
            c = fu.HttpClient(("127.0.0.1", port), timeout=5)
            c.request("GET", "/v1.41/events")
            clients.append((port, c, c.read_head()))
        for port, c, r in clients:
            seen = []
            while len(seen) < 6:
                chunk = c.read_chunk(r, timeout=5)
                seen += [json.loads(line) for line in chunk.splitlines() if line.strip()]
            views[port] = seen
    finally:
        for _, c, _ in clients:
            c.close()
    everyone, team_a = views[ports[0]], views[ports[1]]
    assert {e["Actor"]["Attributes"]["team"] for e in everyone} == {"a", "b"}
    assert {e["Actor"]["Attributes"]["team"] for e in team_a} == {"a"}
    for e in everyone + team_a:
        assert e["Action"] == "exec_create" and SECRET not in json.dumps(e)
    assert len([q for q in upstream.requests if q.path == "/events"]) == 1


def _stream(conn, event):
    if not conn.send(fu.response(200, content_type="application/json",
                                 headers=[("Transfer-Encoding", "chunked")], content_length=False)):
        return False
    for i in range(100000):
        if not conn.send(fu.chunk(event(i))) or not conn.sleep(0.02):
            return False
    return True


# ---- GET /swarm: the join tokens never pass (issue 21: item 2) ---------------------------------

def shipped_rules_with(**profiles):
    document = {"version": 1, "profiles": {"default": {"rules": [{"method": ["GET", "HEAD"], "path": "/swarm"}]},
                                           **profiles}}
    return support.write_rules(document)


def test_get_swarm_through_porthole_has_no_join_token(start_proxy, upstream):
    fu.swarm_manager(upstream)
    p = start_proxy(rules=shipped_rules_with())
    for method in ("GET", "HEAD"):
        r = fu.get(p.addr, "/v1.41/swarm", method=method)
        assert r.status == 200, r
        assert b"SWMTKN" not in r.body
    r = fu.get(p.addr, "/v1.41/swarm")
    assert r.json()["JoinTokens"] == {"Worker": "", "Manager": ""}
    assert r.json()["TLSInfo"] == fu.SWARM["TLSInfo"] and r.json()["ID"] == fu.SWARM["ID"]


@pytest.mark.parametrize("body", [b"SWMTKN-1-" + SECRET.encode(), b'{"JoinTokens": "SWMTKN-1-' + SECRET.encode() + b'"}'])
def test_a_swarm_answer_that_cannot_be_filtered_is_a_502(start_proxy, upstream, body):
    upstream.route("/swarm", serve(body))
    p = start_proxy(rules=shipped_rules_with())
    r = fu.get(p.addr, "/v1.41/swarm")
    assert r.status == 502 and SECRET.encode() not in r.body and b"SWMTKN" not in r.body, r
