"""Mutual TLS on TCP listeners (tcp://...?tlscert=&tlskey=&tlscacert=).

Unit tests first: TlsTransport and a ClientConnection over socketpairs, a fake clock and a
sans-I/O client (ssl.MemoryBIO), no proxy process. Then the proxy itself, with certificates the
suite makes (tests/tls_certs.py, the openssl CLI): the real `docker --tlsverify` CLI and the SDK's
TLSConfig against the private daemon, the CN choosing the profile, refused handshakes (wrong CA,
expired certificate, no certificate, plain HTTP) that never reach the daemon, and certificate
reload on SIGHUP."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import sys
from pathlib import Path

import h11
import pytest

import support
import fake_upstream as fu
import tls_certs
from test_parts import Env, Owner, parse_responses

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import proxy  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki():
    return tls_certs.make_pki(support.short_tmpdir("ph-pki-"))


def client_context(pki, name=None, ca=None):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(ca or pki.ca))
    if name is not None:
        pair = pki.clients[name]
        context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


# ---------------------------------------------------------------------------------------------
# unit tests: the transport and a client connection, no proxy process


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
    endpoint = proxy.parse_endpoint(url, listener=True)
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    env.sockets += [ours, peer]
    env.owner = TlsOwner(body)
    transport = proxy.TlsTransport(ours, proxy.tls_server_context(endpoint))
    client = proxy.ClientConnection(ours, env.loop, env.owner, env.settings, endpoint, "peer", "id", tls=transport)
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
    assert set(proxy.TLS_TRANSITIONS) == set(proxy.TlsState)
    assert proxy.TLS_TRANSITIONS[proxy.TlsState.FAILED] == frozenset()


def test_request_and_answer_over_tls_with_the_clients_cn(pki):
    env = Env()
    try:
        client, peer = tls_client(env, pki)
        assert client.state is proxy.ClientState.HANDSHAKE
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
        assert client.state in (proxy.ClientState.LINGERING, proxy.ClientState.CLOSED)
        peer.shutdown(socket.SHUT_WR)
        env.run(5)
        assert client.state is proxy.ClientState.CLOSED and env.owner.closed == [client]
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
        assert client.state is proxy.ClientState.HANDSHAKE
        env.clock.now += 2.9
        env.loop.fire_deadlines(env.clock.now)
        assert client.state is proxy.ClientState.HANDSHAKE
        env.clock.now += 0.2
        env.loop.fire_deadlines(env.clock.now)
        assert client.state is proxy.ClientState.CLOSED
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
        assert client.state is proxy.ClientState.HEAD
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
        assert client.state is proxy.ClientState.CLOSED
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
            if client.state is proxy.ClientState.CLOSED or (env.owner.done and bio.incoming.eof):
                break
        bio.pump()
        [response] = parse_responses(bio.read(), eof=True)
        assert bytes(response["body"]) == body and response["complete"]
        [done] = env.owner.done
        assert done.delivered == len(body) and done.outcome == "allow"
    finally:
        env.close()


def test_listener_url_options():
    endpoint = proxy.parse_endpoint("tcp://0.0.0.0:2376?tlscert=/c.pem&tlskey=/k.pem&tlscacert=/ca.pem", listener=True)
    assert (endpoint.tls, endpoint.tlscert, endpoint.tlskey, endpoint.tlscacert) == (True, "/c.pem", "/k.pem", "/ca.pem")
    assert not proxy.parse_endpoint("tcp://0.0.0.0:2375", listener=True).tls
    for url, message in [("tcp://0.0.0.0:2376?tlscert=/c.pem", "both tlscert and tlskey"),
                         ("tcp://0.0.0.0:2376?tlscacert=/ca.pem", "both tlscert and tlskey"),
                         ("tcp://0.0.0.0:2376?tlscert=&tlskey=/k.pem", "name files"),
                         ("unix:///tmp/x.sock?tlscert=/c.pem&tlskey=/k.pem", "unknown option")]:
        with pytest.raises(proxy.UsageError, match=message):
            proxy.parse_endpoint(url, listener=True)


def test_context_errors_name_the_file(pki, tmp_path):
    good = dict(tlscert=str(pki.server.cert), tlskey=str(pki.server.key), tlscacert=str(pki.ca))
    context = proxy.tls_server_context(proxy.Endpoint("u", "tcp", **good))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.minimum_version == ssl.TLSVersion.TLSv1_2
    server_only = proxy.tls_server_context(proxy.Endpoint("u", "tcp", **dict(good, tlscacert=None)))
    assert server_only.verify_mode == ssl.CERT_NONE
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for change, message in [({"tlscert": str(tmp_path / "missing.pem")}, "cannot read"),
                            ({"tlskey": str(pki.clients["dozzle"].key)}, "matching key"),
                            ({"tlscacert": str(garbage)}, "tlscacert"),
                            ({"tlscert": str(garbage)}, "not a PEM certificate")]:
        with pytest.raises(proxy.TlsConfigError, match=message):
            proxy.tls_server_context(proxy.Endpoint("u", "tcp", **dict(good, **change)))


@pytest.mark.parametrize("subject, cn", [
    ((), None), (((("commonName", "dozzle"),),), "dozzle"),
    (((("organizationName", "x"),), (("commonName", "a"),)), "a"),
    (((("commonName", "a"),), (("commonName", "b"),)), None),  # ambiguous: no cert_cn matches
])
def test_certificate_cn(subject, cn):
    assert proxy.certificate_cn({"subject": subject}) == cn
    assert proxy.certificate_cn(None) is None


# ---------------------------------------------------------------------------------------------
# the proxy with a mutual-TLS listener

PROFILES_FOR_DAEMON = {
    "default": {"rules": [
        {"method": ["GET", "HEAD"], "path": "/_ping"}, {"method": "GET", "path": "/version"},
        {"method": "GET", "path": "/containers/json"}, {"method": "GET", "path": "/containers/{id}/json"}]},
    "dozzle": {"extends": "default", "description": "a log viewer: logs too", "rules": [
        {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True, "comment": "a log viewer",
         "query": {"follow": "*", "stdout": "*", "stderr": "*", "since": "*", "until": "*", "timestamps": "*", "tail": "*"}}]},
}
RULES = {"version": 1, "profiles": PROFILES_FOR_DAEMON,
         "clients": [{"match": {"cert_cn": "dozzle"}, "profile": "dozzle"}]}


def tls_args(pki, name=None, ca=None):
    args = ["--tlsverify", "--tlscacert", str(ca or pki.ca)]
    if name is not None:
        args += ["--tlscert", str(pki.clients[name].cert), "--tlskey", str(pki.clients[name].key)]
    return args


def test_docker_cli_and_sdk_through_mutual_tls(pki, proxy_factory, containers, busybox_image, monkeypatch):
    import docker

    # requests lets these variables override the CA that the SDK's TLSConfig sets (verify=path)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)

    port = support.free_port()
    p = proxy_factory(listen=[pki.listen_url(port)], rules=support.write_rules(RULES))
    host = "tcp://127.0.0.1:%d" % port
    c = containers(busybox_image, command=["sh", "-c", "echo hello-over-tls; sleep 3600"])
    assert support.wait_until(lambda: b"hello-over-tls" in c.logs(), 10)

    # the real docker CLI, as docker's own docs set up a TLS client
    ps = support.docker_cli(host, *tls_args(pki, "dozzle"), "ps", "--format", "{{.ID}}", check=True)
    assert c.id[:12] in ps.stdout
    logs = support.docker_cli(host, *tls_args(pki, "dozzle"), "logs", c.id, check=True)
    assert "hello-over-tls" in logs.stdout
    # another certificate from the same CA: connected, but the listener's profile (no logs)
    other = support.docker_cli(host, *tls_args(pki, "other"), "logs", c.id)
    assert other.returncode != 0 and "no rule in profile 'default' acknowledges it" in other.stderr
    assert c.id[:12] in support.docker_cli(host, *tls_args(pki, "other"), "ps", check=True).stdout

    # the SDK's TLSConfig
    tls = docker.tls.TLSConfig(client_cert=(str(pki.clients["dozzle"].cert), str(pki.clients["dozzle"].key)),
                               ca_cert=str(pki.ca), verify=True)
    sdk = docker.DockerClient(base_url="https://127.0.0.1:%d" % port, tls=tls, timeout=30)
    try:
        assert c.id in [x.id for x in sdk.containers.list()]
        assert b"hello-over-tls" in sdk.containers.get(c.id).logs()
        assert sdk.version()["ApiVersion"]
    finally:
        sdk.close()

    lines = p.requests_logged()
    dozzle = [l for l in lines if l["client"].endswith(" cn=dozzle")]
    assert dozzle and all((l["profile"], l["client_rule"]) == ("dozzle", "clients[0]") for l in dozzle)
    others = [l for l in lines if l["client"].endswith(" cn=other")]
    assert others and all((l["profile"], l["client_rule"]) == ("default", None) for l in others)
    assert not [l for l in p.logs() if l.get("event") == "tls_handshake_failed"]


@pytest.mark.parametrize("client, reason", [
    ("wrong-ca", "client certificate rejected: unable to get local issuer certificate"),
    ("expired", "client certificate rejected: certificate has expired"),
    (None, "the client presented no certificate"),
])
def test_refused_certificates_never_reach_the_daemon(pki, start_proxy, upstream, client, reason):
    port = support.free_port()
    p = start_proxy(listen=[pki.listen_url(port)], rules=support.write_rules(RULES))
    host = "tcp://127.0.0.1:%d" % port
    cli = support.docker_cli(host, *tls_args(pki, client), "version", timeout=30)
    assert cli.returncode != 0
    assert "Server:" not in cli.stdout
    # the Python ssl client too, through the one raw HTTP client
    with pytest.raises((ssl.SSLError, OSError, fu.ConnectionClosed)):
        sock = client_context(pki, client).wrap_socket(fu.connect(("127.0.0.1", port)), server_hostname="localhost")
        with fu.HttpClient(sock) as http:
            http.request("GET", "/_ping")
            http.read_response()
    failures = [l for l in p.logs() if l.get("event") == "tls_handshake_failed"]
    assert failures and all(l["reason"].startswith(reason) for l in failures), failures
    assert len(failures) >= 2  # the CLI's and ours
    assert upstream.all_bytes() == b"" and p.requests_logged() == []


def test_plain_http_on_a_tls_port_is_refused(pki, start_proxy, upstream):
    port = support.free_port()
    p = start_proxy(listen=[pki.listen_url(port)], rules=support.write_rules(RULES))
    with fu.HttpClient(("127.0.0.1", port)) as http:
        http.request("GET", "/_ping")
        assert http.wait_closed()
        assert b"HTTP/1.1" not in bytes(http.all_received)
    line = p.wait_for_log(lambda l: l.get("event") == "tls_handshake_failed")
    assert line and line["reason"] == "plain HTTP on a TLS listener"
    cli = support.docker_cli("tcp://127.0.0.1:%d" % port, "version", timeout=30)  # no --tls at all
    assert cli.returncode != 0
    assert upstream.all_bytes() == b""


def test_server_only_tls_and_healthcheck(pki, start_proxy, upstream):
    port = support.free_port()
    url = pki.listen_url(port, mutual=False)
    start_proxy(listen=[url], rules=support.write_rules(RULES))
    sock = client_context(pki).wrap_socket(fu.connect(("127.0.0.1", port)), server_hostname="localhost")
    with fu.HttpClient(sock) as http:
        http.request("GET", "/v1.41/version")
        assert http.read_response().status == 200
    health = support.ProxyProcess(listen=[url], args=["--healthcheck"]).run()
    assert health.returncode == 0, health.stderr


def test_certificates_reload_on_sighup(pki, start_proxy, upstream):
    certs = support.short_tmpdir("ph-certs-")
    cert, key = certs / "server.pem", certs / "server-key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    replacement = tls_certs.make_leaf(pki.dir, "server2", "localhost", (pki.other_ca, pki.dir / "other-ca-key.pem"),
                                      "serverAuth", 9, san="IP:127.0.0.1")
    for f in (cert, key, replacement.cert, replacement.key):
        f.chmod(0o644)
    port = support.free_port()
    url = "tcp://127.0.0.1:%d?tlscert=%s&tlskey=%s&tlscacert=%s" % (port, cert, key, pki.ca)
    p = start_proxy(listen=[url], rules=support.write_rules(RULES))

    def served_by(ca):
        try:
            sock = client_context(pki, "dozzle", ca=ca).wrap_socket(fu.connect(("127.0.0.1", port)),
                                                                  server_hostname="localhost")
        except ssl.SSLCertVerificationError:
            return False
        with fu.HttpClient(sock) as http:
            http.request("GET", "/_ping")
            return http.read_response().status == 200

    kept = client_context(pki, "dozzle").wrap_socket(fu.connect(("127.0.0.1", port)), server_hostname="localhost")
    assert served_by(pki.ca) and not served_by(pki.other_ca)
    shutil.copy(replacement.cert, cert)
    shutil.copy(replacement.key, key)
    p.send_signal(signal.SIGHUP)
    assert p.wait_for_log(lambda l: l.get("event") == "tls_reload")
    assert served_by(pki.other_ca) and not served_by(pki.ca)
    with fu.HttpClient(kept) as http:  # an open connection keeps its session
        http.request("GET", "/_ping")
        assert http.read_response().status == 200

    cert.write_text("garbage\n")  # a bad file keeps the last good context
    p.send_signal(signal.SIGHUP)
    failed = p.wait_for_log(lambda l: l.get("event") == "tls_reload_failed")
    assert failed and str(cert) in failed["error"] and "not a PEM certificate" in failed["error"]
    assert served_by(pki.other_ca)
    assert p.alive()


def test_bad_certificate_files_stop_the_start_with_exit_2(pki, tmp_path):
    missing = "tcp://127.0.0.1:%d?tlscert=/nonexistent.pem&tlskey=%s" % (support.free_port(), pki.server.key)
    result = support.ProxyProcess(listen=[missing], upstream="unix:///nonexistent.sock").run()
    assert result.returncode == 2
    assert "cannot read /nonexistent.pem" in result.stderr
