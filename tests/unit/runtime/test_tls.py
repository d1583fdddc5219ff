"""porthole/runtime/tls.py: TlsTransport and a ClientConnection over socketpairs, a fake clock and
a sans-I/O client (ssl.MemoryBIO), no proxy process; certificates from conftest's `pki` fixture
(tests/lib/tls_certs.py, the openssl CLI). (The proxy with a mutual-TLS listener, the docker CLI
and the SDK through it: tests/daemon/test_tls.py.)"""

from __future__ import annotations

import socket
import ssl

import h11
import pytest
import support
import tls_certs
from parts import Env, Owner, parse_responses
from tls_certs import client_context

from porthole.connections.client import ClientConnection, ClientState
from porthole.runtime.config import Endpoint, UsageError, parse_endpoint
from porthole.runtime.tls import (
    TLS_TRANSITIONS,
    TlsConfigError,
    TlsState,
    TlsTransport,
    certificate_cn,
    tls_server_context,
)

pytestmark = pytest.mark.timeout(60)


class TlsOwner(Owner):
    """Owner stub that also records the TLS callbacks and answers every request with 200."""

    def __init__(self, body=b"x" * 10):
        super().__init__()
        self.identified = []
        self.failed = []
        self.body = body

        def answer(client, exchange):
            head = h11.Response(status_code=200, headers=[("Content-Length", str(len(self.body)))])
            exchange.send_head(head)
            exchange.send_body(self.body)
            exchange.end_body()
        self.handler = answer

    def client_identified(self, client):
        self.identified.append(client.tls.cert_cn)

    def handshake_failed(self, client, reason):
        self.failed.append(reason)


class BioClient:
    """The client side, sans-I/O too, driven by hand in the test's thread."""

    def __init__(self, sock, context):
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.plaintext = bytearray()
        self.received = 0  # ciphertext bytes read from the socket

    def pump(self):
        while self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not data:
                self.incoming.write_eof()
                break
            self.received += len(data)
            self.incoming.write(data)

    def handshake(self):
        try:
            self.tls.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False
        finally:
            self.pump()

    def read(self):
        while True:
            try:
                chunk = self.tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return bytes(self.plaintext)
            if not chunk:  # the server's close_notify
                return bytes(self.plaintext)
            self.plaintext += chunk


def tls_client(env, pki, mutual=True, body=b"x" * 10):
    url = pki.listen_url(2376, mutual)
    endpoint = parse_endpoint(url, listener=True)
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    env.sockets += [ours, peer]
    env.owner = TlsOwner(body)
    transport = TlsTransport(ours, tls_server_context(endpoint))
    client = ClientConnection(ours, env.loop, env.owner, env.settings, endpoint, "peer", "id", tls=transport)
    client.update_interest()
    return client, peer


def shake(env, bio, passes=20):
    for _ in range(passes):
        done = bio.handshake()
        env.run()
        if done and bio.tls.version():
            bio.pump()
            env.run()
            return
    raise AssertionError("no handshake")


def test_transport_state_table_is_exhaustive():
    assert set(TLS_TRANSITIONS) == set(TlsState)
    assert TLS_TRANSITIONS[TlsState.FAILED] == frozenset()


def test_request_and_answer_over_tls_with_the_clients_cn(pki):
    env = Env()
    try:
        client, peer = tls_client(env, pki)
        assert client.state is ClientState.HANDSHAKE
        bio = BioClient(peer, client_context(pki, "dozzle"))
        shake(env, bio)
        assert env.owner.identified == ["dozzle"] and not env.owner.failed
        bio.tls.write(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(10):
            bio.pump()
            env.run()
        bio.pump()
        [response] = parse_responses(bio.read())
        assert response["status"] == 200 and bytes(response["body"]) == b"x" * 10 and response["complete"]
        [done] = env.owner.done
        assert done.delivered == 10 and done.outcome == "allow"
        assert client.tls.version in ("TLSv1.2", "TLSv1.3")
        # the client's close_notify ends the connection (it once made recv() spin forever)
        with pytest.raises(ssl.SSLWantReadError):
            bio.tls.unwrap()
        bio.pump()
        env.run(5)
        assert client.state in (ClientState.LINGERING, ClientState.CLOSED)
        peer.shutdown(socket.SHUT_WR)
        env.run(5)
        assert client.state is ClientState.CLOSED and env.owner.closed == [client]
    finally:
        env.close()


def test_handshake_counts_against_the_head_deadline(pki):
    """A client that starts a handshake and stalls is closed at --head-timeout (fake clock)."""
    env = Env("--head-timeout", "3")
    try:
        client, peer = tls_client(env, pki)
        bio = BioClient(peer, client_context(pki, "dozzle"))
        bio.handshake()  # the ClientHello only, then silence
        env.run()
        assert client.state is ClientState.HANDSHAKE
        env.clock.now += 2.9
        env.loop.fire_deadlines(env.clock.now)
        assert client.state is ClientState.HANDSHAKE
        env.clock.now += 0.2
        env.loop.fire_deadlines(env.clock.now)
        assert client.state is ClientState.CLOSED
        assert env.owner.failed == ["TLS handshake not completed within --head-timeout 3s"]
        assert env.owner.requests == [] and env.owner.closed == [client]
    finally:
        env.close()


def test_a_request_sent_with_the_handshake_keeps_the_handshakes_deadline(pki):
    env = Env("--head-timeout", "3")
    try:
        client, peer = tls_client(env, pki)
        bio = BioClient(peer, client_context(pki, "dozzle"))
        started = env.clock.now
        bio.handshake()  # ClientHello
        env.run()  # the server's flight
        env.clock.now += 2
        bio.pump()
        bio.tls.do_handshake()  # TLS 1.3: the client's Finished ...
        bio.tls.write(b"GET /info HTTP/1.1\r\n")  # ... and half a head, in one flight
        bio.pump()
        env.run()
        assert client.state is ClientState.HEAD
        assert client.head_since == started and client.deadline()[0] == started + 3
        env.clock.now += 1.1
        env.loop.fire_deadlines(env.clock.now)
        bio.pump()
        [response] = parse_responses(bio.read())
        assert response["status"] == 408
    finally:
        env.close()


@pytest.mark.parametrize("first_bytes, reason", [
    (b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n", "plain HTTP on a TLS listener"),
    (b"\x16\x03\x01\x00\x05hello", "TLS handshake failed"),
])
def test_not_tls_is_refused_before_any_http(pki, first_bytes, reason):
    env = Env()
    try:
        client, peer = tls_client(env, pki)
        peer.sendall(first_bytes)
        env.run(3)
        assert client.state is ClientState.CLOSED
        assert len(env.owner.failed) == 1 and env.owner.failed[0].startswith(reason), env.owner.failed
        assert env.owner.requests == []
    finally:
        env.close()


def test_send_reports_only_what_the_socket_accepted(pki):
    """Rule 2 of TlsTransport: with a small socket buffer and a client not reading, the plaintext
    reported as delivered never exceeds what the client can decrypt from what reached it, and
    the same front is offered until it is reported."""
    env = Env()
    try:
        client, peer = tls_client(env, pki)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        bio = BioClient(peer, client_context(pki, "dozzle"))
        shake(env, bio)
        transport = client.tls
        data = bytearray(bytes(range(256)) * 4096)  # 1 MiB
        reported = 0
        stalls = 0
        while data:
            sent = transport.send(data)
            assert 0 <= sent <= len(data)
            del data[:sent]
            reported += sent
            if sent == 0:
                stalls += 1
                assert transport.ciphertext and transport.ahead > 0
                bio.pump()
                assert len(bio.read()) >= reported  # every reported byte reached the client
        bio.pump()
        received = bio.read()
        assert len(received) == reported == 1 << 20, (len(received), reported, bio.received)
        assert received == bytes(range(256)) * 4096
        assert stalls > 0  # the small buffer did make it wait
    finally:
        env.close()


def test_large_answer_over_tls_ledger_is_exact(pki):
    body = bytes(range(256)) * 2048  # 512 KiB
    env = Env()
    try:
        client, peer = tls_client(env, pki, body=body)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        bio = BioClient(peer, client_context(pki, "dozzle"))
        shake(env, bio)
        bio.tls.write(b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for _ in range(2000):
            bio.pump()
            env.run()
            if client.state is ClientState.CLOSED or (env.owner.done and bio.incoming.eof):
                break
        bio.pump()
        [response] = parse_responses(bio.read(), eof=True)
        assert bytes(response["body"]) == body and response["complete"]
        [done] = env.owner.done
        assert done.delivered == len(body) and done.outcome == "allow"
    finally:
        env.close()


def test_listener_url_options():
    endpoint = parse_endpoint("tcp://0.0.0.0:2376?tlscert=/c.pem&tlskey=/k.pem&tlscacert=/ca.pem", listener=True)
    assert (endpoint.tls, endpoint.tlscert, endpoint.tlskey, endpoint.tlscacert) == (True, "/c.pem", "/k.pem", "/ca.pem")
    assert not parse_endpoint("tcp://0.0.0.0:2375", listener=True).tls
    for url, message in [("tcp://0.0.0.0:2376?tlscert=/c.pem", "both tlscert and tlskey"),
                         ("tcp://0.0.0.0:2376?tlscacert=/ca.pem", "both tlscert and tlskey"),
                         ("tcp://0.0.0.0:2376?tlscert=&tlskey=/k.pem", "name files"),
                         ("unix:///tmp/x.sock?tlscert=/c.pem&tlskey=/k.pem", "unknown option")]:
        with pytest.raises(UsageError, match=message):
            parse_endpoint(url, listener=True)


def test_context_errors_name_the_file(pki, tmp_path):
    good = dict(tlscert=str(pki.server.cert), tlskey=str(pki.server.key), tlscacert=str(pki.ca))
    context = tls_server_context(Endpoint("u", "tcp", **good))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.minimum_version == ssl.TLSVersion.TLSv1_2
    server_only = tls_server_context(Endpoint("u", "tcp", **dict(good, tlscacert=None)))
    assert server_only.verify_mode == ssl.CERT_NONE
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for change, message in [({"tlscert": str(tmp_path / "missing.pem")}, "cannot read"),
                            ({"tlskey": str(pki.clients["dozzle"].key)}, "matching key"),
                            ({"tlscacert": str(garbage)}, "tlscacert"),
                            ({"tlscert": str(garbage)}, "not a PEM certificate")]:
        with pytest.raises(TlsConfigError, match=message):
            tls_server_context(Endpoint("u", "tcp", **dict(good, **change)))


@pytest.mark.parametrize("subject, cn", [
    ((), ""), (((("commonName", "dozzle"),),), "dozzle"),
    (((("organizationName", "x"),), (("commonName", "a"),)), "a"),
    (((("commonName", "a"),), (("commonName", "b"),)), ""),  # ambiguous: no cert_cn matches, nor null
])
def test_certificate_cn(subject, cn):
    assert certificate_cn({"subject": subject}) == cn
    assert certificate_cn(None) is None  # no certificate: what "cert_cn": null matches
    assert certificate_cn({}) is None  # (a certificate provided but not verified)


# ---- A TLS client that stops reading cannot hold its connection in DRAINING (issue "(2 of 5)",
# item 13): with only the close_notify left for a socket that takes nothing, no deadline ran, and
# the slot was held until shutdown. The write-stall deadline now runs while TLS bytes wait for the
# socket, not only while answer bytes do. A ClientConnection over a socketpair, a sans-I/O TLS
# client and a fake clock.

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki():
    return tls_certs.make_pki(support.short_tmpdir("ph-pki-"))


def fill(sock: socket.socket) -> None:
    """What a client that stopped reading leaves: a socket that takes no byte more."""
    for size in (65536, 4096, 256, 16, 1):
        try:
            while True:
                sock.send(b"\0" * size)
        except BlockingIOError:
            pass


def draining_with_close_notify_queued(env: Env, pki):
    """A TLS client, idle after its handshake, whose socket is full when --idle-timeout closes
    it: DRAINING, with the close_notify waiting for the socket."""
    client, peer = tls_client(env, pki)
    bio = BioClient(peer, client_context(pki, "dozzle"))
    shake(env, bio)
    assert client.state is ClientState.IDLE and not client.tls.ciphertext
    fill(client.sock)
    env.clock.now += env.settings.idle_timeout
    env.run(2)
    assert client.state is ClientState.DRAINING and client.tls.ciphertext  # close_notify, queued
    return client, peer


def test_a_client_that_never_takes_the_close_notify_is_cut_at_write_timeout(pki):
    env = Env("--write-timeout", "5")
    try:
        client, peer = draining_with_close_notify_queued(env, pki)
        closing = env.clock.now
        env.clock.now = closing + 4.99
        env.run(2)
        assert client.state is ClientState.DRAINING
        env.clock.now = closing + 5.01
        env.run(2)
        assert client.state is ClientState.CLOSED, "DRAINING with only TLS bytes queued has no deadline"
        assert env.owner.closed == [client]
    finally:
        env.close()


def test_a_client_that_takes_the_close_notify_in_time_closes_gracefully(pki):
    env = Env("--write-timeout", "5")
    try:
        client, peer = draining_with_close_notify_queued(env, pki)
        aborts, abort = [], client.abort
        client.abort = lambda *args, **kw: (aborts.append(args), abort(*args, **kw))
        env.clock.now += 4
        env.run()
        for _ in range(1000):  # the client reads again
            try:
                if not peer.recv(65536):
                    break
            except BlockingIOError:
                env.run()
        env.run(2)
        assert client.state in (ClientState.LINGERING, ClientState.CLOSED) and not client.tls.ciphertext
        env.clock.now += 5
        env.run(2)
        peer.shutdown(socket.SHUT_WR)
        env.run(2)
        assert client.state is ClientState.CLOSED and env.owner.closed == [client]
        assert aborts == []  # a FIN after the close_notify, never a reset
    finally:
        env.close()
