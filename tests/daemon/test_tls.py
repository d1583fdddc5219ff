"""Mutual TLS on TCP listeners (tcp://...?tlscert=&tlskey=&tlscacert=), the proxy itself, with
certificates the suite makes (conftest's `pki`, tests/lib/tls_certs.py): the real `docker
--tlsverify` CLI and the SDK's TLSConfig against the private daemon, the CN choosing the profile,
refused handshakes (wrong CA, expired certificate, no certificate, plain HTTP) that never reach the
daemon, server-only TLS with --healthcheck, and certificate reload on SIGHUP. (TlsTransport and a
ClientConnection alone: tests/unit/runtime/test_tls.py.)"""

from __future__ import annotations

import shutil
import signal
import ssl

import pytest

import fake_upstream as fu
import support
import tls_certs
from tls_certs import client_context

pytestmark = pytest.mark.timeout(60)


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
