"""Upstream faults: daemon absent at proxy start, daemon restarted under an open
/events stream, daemon socket not accessible to the proxy's uid.

(a) and (b) use their own short-lived dockerd (so the session daemon stays up);
(c) uses the session daemon with a proxy that lacks the socket's group."""

from __future__ import annotations

import json
import socket
import threading
import time

import h11
import pytest

import support

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
        status, headers, body = support.http_request(addr, "GET", "/_ping")
        assert status == 502, (status, body)
        assert "json" in headers.get("content-type", "")
        assert _json_message(body).startswith("porthole:")
    status, _, body = support.http_request(addr, "GET", "/v1.41/containers/json")
    assert status == 502 and _json_message(body).startswith("porthole:")
    r = support.docker_cli("tcp://%s:%d" % addr, "ps")
    assert r.returncode != 0 and "porthole:" in r.stderr, r.stderr
    assert proxy.alive()

    d = fault_daemons()
    d.start(tmp_path / "fault-a", FAULT_SOCK_GID, socket_path=sock)
    # the very next request goes through, without restarting the proxy
    status, _, body = support.http_request(addr, "GET", "/_ping")
    assert (status, body) == (200, b"OK")
    status, _, body = support.http_request(addr, "GET", "/v1.41/version")
    assert status == 200 and json.loads(body)["Version"]
    r = support.docker_cli("tcp://%s:%d" % addr, "ps", "-a", "--format", "{{.ID}}", check=True)
    assert r.stdout.strip() == ""
    assert proxy.alive()


def _read_stream_until_end(sock: socket.socket, conn: h11.Connection, deadline: float):
    """Read an HTTP response body until it ends. Returns a description of how it ended:
    "end-of-message", "closed" or "error:<...>"; fails the test if still open at deadline."""
    while True:
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as e:  # e.g. peer closed mid-body
            return "error:%s" % e
        if ev is h11.NEED_DATA:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail("the /events stream through the proxy is still open after the daemon restart (hang)")
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:
                return "error:%r" % e
            conn.receive_data(data)
            continue
        if isinstance(ev, h11.EndOfMessage):
            return "end-of-message"
        if isinstance(ev, h11.ConnectionClosed):
            return "closed"
        # h11.Data: an event line; keep reading


def test_daemon_restart_ends_open_events_stream(proxy_factory, fault_daemons, tmp_path):
    d = fault_daemons()
    d.start(tmp_path / "fault-b", FAULT_SOCK_GID)
    direct = d.client()
    proxy = proxy_factory(upstream=d.url, groups=[FAULT_SOCK_GID])
    addr = proxy.first_listener_address()

    sock = support._connect(addr, 10)
    conn = h11.Connection(h11.CLIENT)
    try:
        sock.sendall(conn.send(h11.Request(method="GET", target="/v1.41/events",
                                           headers=[("Host", "docker"), ("User-Agent", "porthole-test")])))
        sock.sendall(conn.send(h11.EndOfMessage()))
        deadline = time.monotonic() + 10
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                conn.receive_data(sock.recv(65536))
                continue
            assert isinstance(ev, h11.Response), ev
            break
        assert ev.status_code == 200, ev
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
        how = _read_stream_until_end(sock, conn, time.monotonic() + 30)
        t.join(60)
        assert not t.is_alive() and not restart_error, restart_error
        print("events stream ended with:", how)
    finally:
        sock.close()
        direct.close()

    assert d.ping()
    # the proxy reconnects for new requests
    status, _, body = support.http_request(addr, "GET", "/_ping")
    assert (status, body) == (200, b"OK")
    r = support.docker_cli("tcp://%s:%d" % addr, "version", "--format", "{{.Server.Version}}", check=True)
    assert r.stdout.strip()
    # and a new events stream works too
    status, headers, body = support.http_request(
        addr, "GET", "/v1.41/events?since=0&until=%d" % int(time.time()), timeout=15)
    assert status == 200, body
    assert proxy.alive()


def test_socket_permission_denied_names_group(proxy_factory, dockerd):
    # non-root, and WITHOUT the daemon socket's group
    proxy = proxy_factory(upstream=dockerd.url, groups=[])
    addr = proxy.first_listener_address()
    gid = str(dockerd.sock_gid)

    status, _, body = support.http_request(addr, "GET", "/_ping")
    assert status == 502, (status, body)
    msg = _json_message(body)
    assert msg.startswith("porthole:"), msg
    assert gid in msg and "group" in msg.lower() and "add" in msg.lower(), msg

    r = support.docker_cli("tcp://%s:%d" % addr, "ps")
    assert r.returncode != 0
    assert "porthole:" in r.stderr and gid in r.stderr and "group" in r.stderr.lower(), r.stderr

    # the proxy stays up and keeps answering
    assert proxy.alive()
    status, _, body = support.http_request(addr, "GET", "/v1.41/containers/json")
    assert status == 502 and gid in _json_message(body)
    assert proxy.alive()
