"""Upstream faults: daemon absent at proxy start, daemon restarted under an open
/events stream, daemon socket not accessible to the proxy's uid.

(a) and (b) use their own short-lived dockerd (so the session daemon stays up);
(c) uses the session daemon with a proxy that lacks the socket's group."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

import fake_upstream as fu
import support
from fake_upstream import ConnectionClosed, HttpClient

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

FAULT_SOCK_GID = 2376  # socket group of the fault daemons (no such group in /etc/group)


@pytest.fixture
def fault_daemons(tmp_path):
    """Start extra private dockerds (each removed at teardown)."""
    support.require_docker_env()
    started = []

    def make():
        d = support.Dockerd()
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


def _json_message(body: bytes) -> str:
    data = json.loads(body)
    assert isinstance(data, dict) and isinstance(data.get("message"), str), body
    return data["message"]


def test_daemon_absent_at_start_then_appears(proxy_factory, fault_daemons, tmp_path):
    sockdir = support.short_tmpdir("ph-fs-", 0o755)
    sock = str(sockdir / "docker.sock")
    proxy = proxy_factory(upstream="unix://" + sock, groups=[FAULT_SOCK_GID])
    addr = proxy.first_listener_address()

    for _ in range(2):  # repeatedly, and the proxy keeps running
        r = fu.get(addr, "/_ping", timeout=10)
        assert r.status == 502, (r.status, r.body)
        assert "json" in (r.header("content-type") or "")
        assert _json_message(r.body).startswith("porthole:")
    r = fu.get(addr, "/v1.41/containers/json", timeout=10)
    assert r.status == 502 and _json_message(r.body).startswith("porthole:")
    r = support.docker_cli("tcp://%s:%d" % addr, "ps")
    assert r.returncode != 0 and "porthole:" in r.stderr, r.stderr
    assert proxy.alive()

    d = fault_daemons()
    d.start(tmp_path / "fault-a", FAULT_SOCK_GID, socket_path=sock)
    # the very next request goes through, without restarting the proxy
    r = fu.get(addr, "/_ping", timeout=10)
    assert (r.status, r.body) == (200, b"OK")
    r = fu.get(addr, "/v1.41/version", timeout=10)
    assert r.status == 200 and json.loads(r.body)["Version"]
    r = support.docker_cli("tcp://%s:%d" % addr, "ps", "-a", "--format", "{{.ID}}", check=True)
    assert r.stdout.strip() == ""
    assert proxy.alive()


def _read_stream_until_end(c: HttpClient, resp, deadline: float):
    """Read a response body (chunked, or until close) until it ends. Returns a description of how it ended:
    "end-of-message", "closed" (also mid-body) or "error:<...>"; fails the test if still
    open at deadline."""
    chunked = "chunked" in (resp.header("transfer-encoding") or "").lower()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if not chunked:  # a body that ends with the connection
            if c.wait_closed(remaining):
                return "closed"
            break
        try:
            if c.read_chunk(resp, timeout=remaining) is None:
                return "end-of-message"
        except ConnectionClosed:  # also a close mid-body
            return "closed"
        except (socket.timeout, TimeoutError):
            break
        except OSError as e:
            return "error:%r" % e
        except (AssertionError, ValueError) as e:  # broken chunk framing
            return "error:%s" % e
        # an event line; keep reading
    pytest.fail("the /events stream through the proxy is still open after the daemon restart (hang)")


def test_daemon_restart_ends_open_events_stream(proxy_factory, fault_daemons, tmp_path):
    d = fault_daemons()
    d.start(tmp_path / "fault-b", FAULT_SOCK_GID)
    direct = d.client()
    proxy = proxy_factory(upstream=d.url, groups=[FAULT_SOCK_GID])
    addr = proxy.first_listener_address()

    c = HttpClient(addr, 10)
    try:
        c.request("GET", "/v1.41/events", headers=[("User-Agent", "porthole-test")], host="docker")
        resp = c.read_head(timeout=10)
        assert resp.status == 200, resp
        assert support.wait_until(lambda: direct.info()["NEventsListener"] >= 1, 10), \
            "events subscription never reached the daemon"

        restart_error = []

        def restart():
            try:
                d.restart()
            except Exception as e:  # reported below
                restart_error.append(e)

        t = threading.Thread(target=restart, daemon=True)
        t.start()
        how = _read_stream_until_end(c, resp, time.monotonic() + 30)
        t.join(60)
        assert not t.is_alive() and not restart_error, restart_error
        print("events stream ended with:", how)
    finally:
        c.close()
        direct.close()

    assert d.ping()
    # the proxy reconnects for new requests
    r = fu.get(addr, "/_ping", timeout=10)
    assert (r.status, r.body) == (200, b"OK")
    r = support.docker_cli("tcp://%s:%d" % addr, "version", "--format", "{{.Server.Version}}", check=True)
    assert r.stdout.strip()
    # and a new events stream works too
    r = fu.get(addr, "/v1.41/events?since=0&until=%d" % int(time.time()), timeout=15)
    assert r.status == 200, r.body
    assert proxy.alive()


def test_socket_permission_denied_names_group(proxy_factory, dockerd):
    # non-root, and WITHOUT the daemon socket's group
    proxy = proxy_factory(upstream=dockerd.url, groups=[])
    addr = proxy.first_listener_address()
    gid = str(dockerd.sock_gid)

    r = fu.get(addr, "/_ping", timeout=10)
    assert r.status == 502, (r.status, r.body)
    msg = _json_message(r.body)
    assert msg.startswith("porthole:"), msg
    assert gid in msg and "group" in msg.lower() and "add" in msg.lower(), msg

    r = support.docker_cli("tcp://%s:%d" % addr, "ps")
    assert r.returncode != 0
    assert "porthole:" in r.stderr and gid in r.stderr and "group" in r.stderr.lower(), r.stderr

    # the proxy stays up and keeps answering
    assert proxy.alive()
    r = fu.get(addr, "/v1.41/containers/json", timeout=10)
    assert r.status == 502 and gid in _json_message(r.body)
    assert proxy.alive()
