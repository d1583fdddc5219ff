"""Per-client profiles through the proxy, in front of the fake daemon: clients connecting as other
uids (unix listener) and from other loopback addresses (TCP listener) get the profile their
`clients` entry names; SIGHUP applies a new mapping to open connections; --check prints the
mapping or exits 2. (The pure parts: tests/unit/core/test_clients.py.)"""

import json
import signal

import pytest

import fake_upstream as fu
import support
from policies import CLIENTS, CLIENTS_RULES as RULES

pytestmark = pytest.mark.timeout(60)


def status(sock_or_address, target):
    with fu.HttpClient(sock_or_address) as c:
        c.request("GET", target)
        return c.read_response().status


def request_line(p, client_prefix, target):
    """The log line of the (one) request to `target` from a client whose log name starts so."""
    line = p.wait_for_log(lambda l: l.get("event") == "request" and l["target"] == target
                          and l["client"].startswith(client_prefix))
    assert line is not None, p.stderr_text()
    return line


def test_uid_and_gid_choose_the_profile_on_a_unix_listener(start_proxy, upstream):
    unix_url, path = support.unix_listen_url("c.sock", "mode=0666")
    p = start_proxy(listen=[unix_url])
    cases = [  # (uid, gid, the one probe its profile allows, profile, entry)
        (1000, 1000, "/v1.41/containers/json", "traefik", "clients[0]"),
        (1500, 2001, "/v1.41/version", "homepage", "clients[1]"),
        (1000, 2001, "/v1.41/containers/json", "traefik", "clients[0]"),  # first match wins
        (1500, 1500, None, "default", None),
    ]
    for uid, gid, allowed, profile, entry in cases:
        for probe in ("/v1.41/containers/json", "/v1.41/version", "/v1.41/info"):
            expected = 200 if probe == allowed else 403
            assert status(support.connect_as(path, uid, gid), probe) == expected, (uid, gid, probe)
            line = request_line(p, f"uid={uid} gid={gid} ", probe)
            assert (line["profile"], line["client_rule"]) == (profile, entry), line
    assert sorted(r.path for r in upstream.requests) == ["/containers/json", "/containers/json", "/version"]


def test_address_chooses_the_profile_on_a_tcp_listener(start_proxy, upstream):
    p = start_proxy()
    for source, profile, entry in (("127.0.0.2", "prometheus", "clients[2]"), ("127.0.0.1", "default", None)):
        expected = 200 if profile == "prometheus" else 403
        assert status(support.connect_from(source, p.addr), "/v1.41/info") == expected
        line = request_line(p, source + ":", "/v1.41/info")
        assert (line["profile"], line["client_rule"]) == (profile, entry), line
        assert line["decision"] == ("allow" if expected == 200 else "deny")
    assert [r.path for r in upstream.requests] == ["/info"]


def test_reload_applies_the_new_mapping_to_open_connections(start_proxy, upstream):
    """Decided: the mapping is re-applied to every open connection on SIGHUP, so the next request
    on a kept-alive connection is decided under the new mapping (revoking takes effect at once);
    a request already forwarded is not cut."""
    unix_url, path = support.unix_listen_url("c.sock", "mode=0666")
    p = start_proxy(listen=[unix_url])
    with fu.HttpClient(support.connect_as(path, 1000, 1000)) as kept:
        kept.request("GET", "/v1.41/containers/json")
        assert kept.read_response().status == 200
        moved = dict(RULES, clients=[{"match": {"uid": 1000}, "profile": "homepage"}])
        before = len([l for l in p.logs() if l.get("event") == "reload"])
        p.rules_path.write_text(json.dumps(moved))
        p.send_signal(signal.SIGHUP)
        assert support.wait_until(lambda: len([l for l in p.logs() if l.get("event") == "reload"]) > before, 5)
        kept.request("GET", "/v1.41/containers/json")
        assert kept.read_response().status == 403
        kept.request("GET", "/v1.41/version")
        assert kept.read_response().status == 200
    assert support.wait_until(lambda: len(p.requests_logged()) >= 3, 5)
    lines = p.requests_logged()
    assert [(l["profile"], l["client_rule"], l["status"]) for l in lines[-3:]] == [
        ("traefik", "clients[0]", 200), ("homepage", "clients[0]", 403), ("homepage", "clients[0]", 200)]
    # a mapping naming a profile that is gone is refused whole: the last one stays in force
    p.rules_path.write_text(json.dumps(dict(RULES, clients=[{"match": {"uid": 1000}, "profile": "gone"}])))
    p.send_signal(signal.SIGHUP)
    failed = p.wait_for_log(lambda l: l.get("event") == "reload_failed")
    assert failed and "$.clients[0].profile: no profile named 'gone'" in failed["error"]
    assert status(support.connect_as(path, 1000, 1000), "/v1.41/version") == 200


def test_check_exits_2_on_a_bad_mapping_and_prints_a_good_one():
    good = support.ProxyProcess(rules=support.write_rules(RULES), args=["--check"]).run()
    assert good.returncode == 0, good.stderr
    assert "clients[3]   cert_cn='dozzle' -> profile dozzle" in good.stdout
    bad = dict(RULES, clients=CLIENTS + [{"match": {"address": "127.0.0.2"}, "profile": "traefik"}])
    result = support.ProxyProcess(rules=support.write_rules(bad), args=["--check"]).run()
    assert result.returncode == 2
    assert "$.clients[4]: can never match: every client it matches is matched first by $.clients[2]" in result.stderr
