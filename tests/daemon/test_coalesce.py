"""Identical concurrent reads share one daemon request (CoalescedRead): black-box, through
a running proxy, in front of the recording fake daemon and of the real one. (CoalescedRead
alone: tests/unit/connections/test_sources.py; the "coalesce" key: tests/unit/core/test_policy.py.)"""

import json
import signal
import threading

import pytest

import support
import fake_upstream as fu
from fake_upstream import HttpClient
from policies import COALESCE_RULES as RULES
from support import wait_until

pytestmark = pytest.mark.timeout(120)

LIST = "/v1.41/containers/json?all=1"


def concurrently(address, target, n, headers=()):
    """n clients, each on its own open connection, send `target` back to back from one thread
    (so they arrive together however busy the machine is: threads released by a barrier are
    spread out by the scheduler), then each reads its answer in a thread of its own (a member
    not reading would pace the shared read for all)."""
    clients = [HttpClient(address, timeout=20) for _ in range(n)]
    responses, errors = [None] * n, []

    def read(i):
        try:
            responses[i] = clients[i].read_response("GET")
        except Exception as exc:  # reported below, with the others' outcome
            errors.append(exc)

    try:
        for client in clients:
            client.request("GET", target, headers)
        threads = [threading.Thread(target=read, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        for c in clients:
            c.close()
    assert not errors, errors
    return responses


def daemon_requests(upstream, path):
    return [q for q in upstream.requests if q.path == path]


def slow_json(document, delay=0.3):
    """The fake daemon answers after `delay` seconds, so that concurrent requests overlap."""
    def handler(conn, req):
        if not conn.idle(delay):
            return False
        return conn.send(fu.json_response(req, document))
    return handler


def test_sixteen_identical_reads_cost_the_daemon_far_fewer_requests(start_proxy, upstream):
    upstream.route("/containers/json", slow_json(fu.CONTAINERS))
    p = start_proxy()
    responses = concurrently(p.addr, LIST, 16)
    assert all(r.status == 200 and json.loads(r.body) == fu.CONTAINERS for r in responses)
    # the first is sent at once; the others arrive while it is under way and share the next
    assert len(daemon_requests(upstream, "/containers/json")) <= 3
    # different targets or forwarded headers are different reads
    other = concurrently(p.addr, "/v1.41/containers/json", 4) + concurrently(
        p.addr, LIST, 4, headers=[("User-Agent", "another-client")])
    assert all(r.status == 200 for r in other)
    forwarded = {(q.target, q.header("user-agent")) for q in daemon_requests(upstream, "/containers/json")}
    assert ("/v1.41/containers/json", None) in forwarded and (LIST, "another-client") in forwarded


@pytest.mark.parametrize("how", ["flag", "profile"])
def test_coalescing_off_sends_every_read(start_proxy, proxy_factory, upstream, how):
    upstream.route("/containers/json", slow_json(fu.CONTAINERS, delay=0.1))
    if how == "flag":
        p = start_proxy("--no-coalesce")
    else:
        port = support.free_port()
        p = start_proxy(listen=[f"tcp://127.0.0.1:{port}?profile=solo"])
    responses = concurrently(p.addr, LIST, 8)
    assert all(r.status == 200 for r in responses)
    assert len(daemon_requests(upstream, "/containers/json")) == 8


def test_each_profile_filters_its_own_copy_of_a_shared_answer(start_proxy, upstream):
    secret = {"Id": "c" * 64, "Name": "/app", "Config": {"Env": ["TOKEN=hunter2", "PATH=/bin"]}}
    upstream.route(f"/containers/{'c' * 64}/json", slow_json(secret))
    ports = [support.free_port(), support.free_port()]
    p = start_proxy(listen=[f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}?profile=open"])
    target = f"/v1.41/containers/{'c' * 64}/json"
    results: dict[str, list] = {}

    def side(name, port, n):
        results[name] = concurrently(("127.0.0.1", port), target, n)

    threads = [threading.Thread(target=side, args=("default", ports[0], 6)),
               threading.Thread(target=side, args=("open", ports[1], 6))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results["default"]:
        assert r.status == 200 and json.loads(r.body)["Config"]["Env"] == ["TOKEN=", "PATH="]
    for r in results["open"]:
        assert r.status == 200 and json.loads(r.body)["Config"]["Env"] == ["TOKEN=hunter2", "PATH=/bin"]
    assert len(daemon_requests(upstream, f"/containers/{'c' * 64}/json")) < 12


@pytest.mark.parametrize("status", [404, 500])
def test_error_answers_are_coalesced_unchanged(start_proxy, upstream, status):
    message = {"message": "No such container: nope"} if status == 404 else {"message": "boom"}

    def handler(conn, req):
        if not conn.idle(0.3):
            return False
        return conn.send(fu.json_response(req, message, status))

    upstream.route("/containers/nope/json", handler)
    p = start_proxy()
    responses = concurrently(p.addr, "/v1.41/containers/nope/json", 10)
    assert all(r.status == status and json.loads(r.body) == message for r in responses)
    assert len(daemon_requests(upstream, "/containers/nope/json")) <= 3


def test_a_client_leaving_mid_answer_does_not_disturb_the_others(start_proxy, upstream):
    big = [{"Id": "%064d" % i, "Names": ["/c%d" % i], "Labels": {}} for i in range(20000)]
    body = (json.dumps(big) + "\n").encode()

    def trickle(conn, req):  # the head at once, then the body in pieces
        data = fu.response(200, body)
        cut = data.index(b"\r\n\r\n") + 4
        if not conn.send(data[:cut]):
            return False
        for i in range(cut, len(data), 65536):
            if not conn.sleep(0.01) or not conn.send(data[i:i + 65536]):
                return False
        return True

    upstream.route("/containers/json", trickle)
    p = start_proxy(rules=support.write_rules({**RULES, "profiles": {
        **RULES["profiles"], "default": {**RULES["profiles"]["default"], "redact": []}}}))
    first = HttpClient(p.addr, timeout=20)
    first.request("GET", LIST)  # on the wire: the next ones share the next request
    wait_until(lambda: len(daemon_requests(upstream, "/containers/json")) == 1, 5)
    leaver = HttpClient(p.addr, timeout=20)
    stayers = [HttpClient(p.addr, timeout=20) for _ in range(3)]
    for c in [leaver, *stayers]:
        c.request("GET", LIST)
    assert first.read_response("GET").body == body
    wait_until(lambda: len(daemon_requests(upstream, "/containers/json")) == 2, 5)
    head = leaver.read_head()
    assert head.status == 200
    leaver.close()  # gone after the head, mid-body
    for c in stayers:
        r = c.read_response("GET")
        assert r.status == 200 and r.body == body
        c.close()
    first.close()
    assert len(daemon_requests(upstream, "/containers/json")) == 2


def test_real_daemon_lists_once_for_many_concurrent_clients(proxy_factory, dockerd, busybox_image):
    """16 concurrent `GET /containers/json?all=1` through porthole: the daemon's own debug log
    counts far fewer list calls than clients."""
    p = proxy_factory()
    address = p.first_listener_address()
    config = dockerd.base / "daemon.json"
    before_config = config.read_text()
    config.write_text(json.dumps({"debug": True}) + "\n")
    dockerd.proc.send_signal(signal.SIGHUP)

    def list_calls() -> int:
        text = dockerd.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if 'msg="Calling GET' in line and "/containers/json" in line)

    try:
        # debug logging is on once a call is logged
        wait_until(lambda: fu.get(address, "/v1.41/containers/json?all=1").status == 200 and list_calls() > 0, 10)
        rounds = []
        for _ in range(3):
            before = list_calls()
            responses = concurrently(address, "/v1.41/containers/json?all=1", 16)
            assert all(r.status == 200 and isinstance(json.loads(r.body), list) for r in responses)
            wait_until(lambda: list_calls() > before, 5)
            rounds.append(list_calls() - before)
        assert min(rounds) <= 4, rounds  # without coalescing: 16 each
    finally:
        config.write_text(before_config)
        dockerd.proc.send_signal(signal.SIGHUP)
