"""How an exchange ended, said honestly (issue "(2 of 5)", item 17): a stream its client ended
(Ctrl-C of `docker events`, a Traefik reconnect) was logged `"decision": "error", "reason":
"client went away"` and counted as an error. Its decision now stands, and the request line says
how it ended in `ended`: "complete", "client closed" or "aborted". A finite answer its client
abandoned stays an error ("client closed"). Real ClientConnections, UpstreamPool and Dispatch
over socketpairs and a daemon socket the test serves, on a fake clock."""
from __future__ import annotations

import json
import socket
import struct

import pytest

from porthole.app.dispatch import Dispatch
from porthole.connections.client import ClientState
from porthole.connections.pool import UpstreamPool
from porthole.core.policy import load_policy
from porthole.runtime.metrics import Metrics
from test_parts import Owner, drive, read_available

pytestmark = pytest.mark.timeout(60)

RULES = {"version": 1, "profiles": {"default": {"redact": [], "rules": [
    {"method": "GET", "path": "/events"},
    {"method": "GET", "path": "/containers/json"},
    {"method": "GET", "path": "/containers/{id}/logs", "query": {"follow": "*", "stdout": "*"}, "dangerous": True},
]}}}
CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENT = b'{"status":"start"}\n'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.fixture
def world(env):
    """env, with a real Dispatch behind its clients; `.request(target)` -> (client, peer)."""
    metrics = Metrics()
    pool = UpstreamPool(env.loop, env.settings, env.log, metrics)
    dispatch = Dispatch(env.settings, load_policy(json.dumps(RULES)), env.loop, pool, env.log, metrics, None)

    class DispatchOwner(Owner):
        def on_request(self, client, exchange):
            self.requests.append(exchange)
            dispatch.on_request(client, exchange)

        def exchange_done(self, exchange):
            self.done.append(exchange)
            dispatch.exchange_done(exchange)

    env.owner = DispatchOwner()

    def request(target: bytes, **kw):
        client, peer = env.client(**kw)
        peer.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        env.run()
        return client, peer

    env.request, env.metrics = request, metrics
    return env


def request_line(env) -> dict:
    (line,) = [event for event in env.log_events() if event.get("event") == "request"]
    return line


def reset(peer: socket.socket) -> None:
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


@pytest.mark.parametrize("target", [b"/events", b"/containers/c1/logs?follow=1&stdout=1"])
@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_stream_its_client_ends_keeps_its_decision(world, daemon, target, how):
    client, peer = world.request(target, tcp=True)
    srv = daemon.accept()
    read_available(srv)
    srv.sendall(CHUNKED + chunk(EVENT))
    assert EVENT in drive(world, peer, passes=3)[0]
    (peer.close if how == "close" else lambda: reset(peer))()
    world.run(3)
    assert client.state is ClientState.CLOSED
    line = request_line(world)
    assert (line["decision"], line["ended"], line["reason"]) == ("allow", "client closed", None), line
    assert line["bytes"] == len(EVENT)
    endpoint = "/events" if target == b"/events" else "/containers/{id}/logs"
    assert world.metrics.requests == {("default", "allow", endpoint): 1}
    assert read_available(srv)[1] == "eof"  # the daemon's stream is let go at once


def test_a_finite_answer_its_client_abandons_is_an_error(world, daemon):
    client, peer = world.request(b"/containers/json", small=True)
    srv = daemon.accept()
    read_available(srv)
    srv.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[" + b"0," * 10)
    drive(world, peer, passes=3)
    peer.close()
    world.run(3)
    line = request_line(world)
    assert (line["decision"], line["ended"], line["reason"]) == ("error", "client closed", "client went away"), line
    assert world.metrics.requests == {("default", "error", "/containers/json"): 1}


def test_an_answer_porthole_cuts_is_aborted(world, daemon):
    client, peer = world.request(b"/events", tcp=True)
    srv = daemon.accept()
    read_available(srv)
    srv.sendall(CHUNKED + chunk(EVENT) + b"5\r\nhal")
    drive(world, peer, passes=3)
    srv.close()  # the daemon dies mid-event
    _, end = drive(world, peer, passes=3)
    assert end == "reset"
    line = request_line(world)
    assert (line["decision"], line["ended"]) == ("error", "aborted"), line
    assert "closed" in line["reason"]


def test_a_delivered_answer_is_complete(world, daemon):
    client, peer = world.request(b"/containers/json")
    srv = daemon.accept()
    read_available(srv)
    srv.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]")
    drive(world, peer, passes=3)
    line = request_line(world)
    assert (line["decision"], line["ended"], line["reason"], line["bytes"]) == ("allow", "complete", None, 2)
