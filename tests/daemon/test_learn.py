"""Learn mode (--learn PATH) and warn mode through the proxy: in front of the fake daemon
(would_deny logging, the learned file written on the timer and on SIGHUP, certificate clients),
then the docker CLI against the real daemon: learn, stop, run on the learned file. (The pure
parts: tests/unit/ops/test_learn.py.)"""

import json
import signal
import stat
import uuid

import pytest

import fake_upstream as fu
import support
from policies import WARN_RULES as RULES  # noqa: F401  (the rules start_proxy runs the proxy with)
from porthole.core.policy import load_policy
from tls_certs import client_context

pytestmark = pytest.mark.timeout(90)


# ---------------------------------------------------------------------------------------------
# the proxy in front of the fake daemon


def learn_dir():
    return support.short_tmpdir("ph-learn-", mode=0o777)


def test_warn_mode_forwards_and_logs_what_it_would_deny(start_proxy, upstream):
    p = start_proxy(listen=["tcp://127.0.0.1:%d?profile=watcher" % support.free_port()])
    assert fu.get(p.addr, "/v1.47/containers/json?all=1").status == 200
    assert fu.get(p.addr, "/v1.47/info").status == 200
    assert fu.get(p.addr, "/v1.47/containers/json?size=1").status == 200
    assert fu.get(p.addr, "/v1.47/containers/x/top").status == 403
    assert fu.get(p.addr, "/v1.47/containers/x/start", method="POST").status == 403
    assert support.wait_until(lambda: len(p.requests_logged()) >= 5, 5)
    lines = {l["target"]: l for l in p.requests_logged()}
    assert lines["/v1.47/containers/json?all=1"]["decision"] == "allow"
    assert lines["/v1.47/info"]["decision"] == "would_deny"
    assert lines["/v1.47/info"]["reason"] == "no rule in profile 'watcher' allows GET /info"
    assert lines["/v1.47/info"]["rule"] is None and lines["/v1.47/info"]["status"] == 200
    assert "query parameter 'size' is not allowed" in lines["/v1.47/containers/json?size=1"]["reason"]
    assert lines["/v1.47/containers/x/top"]["decision"] == "deny"
    assert lines["/v1.47/containers/x/start"]["decision"] == "deny"
    assert sorted(r.path for r in upstream.requests) == ["/containers/json", "/containers/json", "/info"]
    assert not [l for l in p.logs() if l.get("event", "").startswith("learn")]  # warn records nothing


def test_learn_writes_a_valid_file_on_its_timer_and_on_sighup(start_proxy, upstream):
    path = learn_dir() / "learned.json"
    p = start_proxy("--learn", path)
    assert p.wait_for_log(lambda l: l.get("event") == "learn_mode")
    assert fu.get(p.addr, "/v1.47/containers/4f1c/json").status == 200  # would_deny, forwarded
    assert fu.get(p.addr, "/v1.47/containers/4f1c/logs?stdout=1").status == 403  # dangerous
    assert fu.get(p.addr, "/v1.47/containers/4f1c/start", method="POST").status == 403
    assert support.wait_until(path.exists, 10), p.stderr_text()  # the timer, no signal
    written = p.wait_for_log(lambda l: l.get("event") == "learn_written")
    assert written["why"] == "learned" and written["clients"] == ["address=127.0.0.1"]
    document = json.loads(path.read_text())
    load_policy(path.read_text())
    assert document["profiles"]["learned-127-0-0-1"]["rules"] == [
        {"method": ["GET"], "path": "/containers/{id}/json", "query": {}}]
    assert "GET /containers/{id}/logs" in document["profiles"]["learned-127-0-0-1"]["description"]
    left = p.wait_for_log(lambda l: l.get("event") == "learn_left_out")
    assert "address=127.0.0.1: GET /containers/{id}/logs (logs can hold secrets" in left["note"]
    assert fu.get(p.addr, "/v1.47/info").status == 200
    p.send_signal(signal.SIGHUP)
    assert p.wait_for_log(lambda l: l.get("event") == "learn_written" and l["why"] == "SIGHUP")
    assert [r["path"] for r in json.loads(path.read_text())["profiles"]["learned-127-0-0-1"]["rules"]] == [
        "/containers/{id}/json", "/info"]
    assert not [f for f in path.parent.iterdir() if f.name != "learned.json"]  # no temporary file left
    check = support.ProxyProcess(rules=path, args=["--check"]).run()
    assert check.returncode == 0, check.stderr
    assert "profile learned-127-0-0-1: learned by porthole --learn" in check.stdout


def test_an_unwritable_learn_path_stops_the_start_or_is_logged_later(start_proxy, upstream):
    directory = support.short_tmpdir("ph-learn-ro-", mode=0o755)  # root's: the proxy runs as 65532
    result = support.ProxyProcess(listen=["tcp://127.0.0.1:%d" % support.free_port()], upstream=upstream.url,
                                  args=["--learn", directory / "learned.json"]).run()
    assert result.returncode == 2
    assert f"--learn {directory}/learned.json: porthole (uid 65532) cannot write to {directory}" in result.stderr
    directory.chmod(0o777)
    p = start_proxy("--learn", directory / "learned.json")
    directory.chmod(0o755)  # taken away while it runs: each write fails, is logged, and it goes on
    assert fu.get(p.addr, "/v1.47/info").status == 200
    failed = p.wait_for_log(lambda l: l.get("event") == "learn_write_failed", timeout=10)
    assert failed and "Permission denied" in failed["error"]
    assert fu.get(p.addr, "/v1.47/info").status == 200
    assert not list(directory.iterdir())


def test_a_verified_certificate_is_learned_by_its_cn(start_proxy, upstream, pki):
    path = learn_dir() / "learned.json"
    port = support.free_port()
    p = start_proxy("--learn", path, listen=[pki.listen_url(port)])
    sock = client_context(pki, "dozzle").wrap_socket(fu.connect(("127.0.0.1", port)), server_hostname="localhost")
    with fu.HttpClient(sock) as http:
        http.request("GET", "/v1.47/info")
        assert http.read_response().status == 200
    assert p.stop() == 0
    document = json.loads(path.read_text())
    assert document["clients"][0] == {"match": {"cert_cn": "dozzle"}, "profile": "learned-cn-dozzle",
                                      "comment": "learned by porthole --learn"}
    assert document["profiles"]["learned-cn-dozzle"]["rules"] == [{"method": ["GET"], "path": "/info", "query": {}}]


# ---------------------------------------------------------------------------------------------
# the docker CLI against the real daemon: learn, then enforce the learned file


LEARN_BASE = {"version": 1, "profiles": {"default": {"rules": [
    {"method": ["GET", "HEAD"], "path": "/_ping"},
    {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True, "query": {"stdout": "*"},
     "comment": "acknowledged, but not every key docker logs sends: those are would_deny while learning"}]}}}


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_docker_cli_learned_then_enforced(proxy_factory, dockerd, busybox_image, containers):
    name = "ph-learn-" + uuid.uuid4().hex[:8]
    container = containers(busybox_image, name=name, command=["sh", "-c", "echo learned-line; sleep 600"])
    assert support.wait_until(lambda: b"learned-line" in container.logs(), 10)
    path = learn_dir() / "learned.json"
    unix_url, unix_path = support.unix_listen_url("learn.sock", "mode=0660")
    port = support.free_port()
    hosts = ("tcp://127.0.0.1:%d" % port, "unix://" + unix_path)

    def used(host):  # what the application does
        return [support.docker_cli(host, "version", "--format", "{{.Server.Version}}"),
                support.docker_cli(host, "ps", "-a", "--no-trunc", "--format", "{{.Names}}"),
                support.docker_cli(host, "inspect", "--format", "{{.Name}}", name),
                support.docker_cli(host, "logs", name)]

    learning = proxy_factory(listen=["tcp://127.0.0.1:%d" % port, unix_url], rules=support.write_rules(LEARN_BASE),
                             args=["--learn", str(path)])
    expected = None
    for host in hosts:
        results = used(host)
        assert all(r.returncode == 0 for r in results), [(r.args, r.stderr) for r in results]
        outputs = [r.stdout for r in results]
        assert name in outputs[1] and outputs[2].strip() == "/" + name and "learned-line" in outputs[3]
        assert expected in (None, outputs)
        expected = outputs
        top = support.docker_cli(host, "top", name)  # a dangerous read nobody acknowledged
        assert top.returncode != 0 and "dangerous read" in top.stderr
    would = [l for l in learning.requests_logged(decision="would_deny")]
    assert any(l["path"].endswith("/version") and "no rule in profile 'default'" in l["reason"] for l in would)
    assert any("/logs?" in l["path"] and "is not allowed by rule default[1]" in l["reason"] for l in would)
    assert learning.stop() == 0
    assert any(l.get("event") == "learn_written" and l["why"] == "SIGTERM" for l in learning.logs())

    document = json.loads(path.read_text())
    load_policy(path.read_text(), str(path))
    assert set(document["profiles"]) == {"default", "learned-127-0-0-1", "learned-uid-0"}  # the CLI runs as root
    assert [e["match"] for e in document["clients"]] == [{"uid": 0}, {"address": "127.0.0.1", "certificate": False}]
    for profile in ("learned-127-0-0-1", "learned-uid-0"):
        rules = {r["path"]: r for r in document["profiles"][profile]["rules"]}
        assert {"/_ping", "/version", "/containers/json", "/containers/{id}/json", "/containers/{id}/logs"} <= set(rules)
        assert rules["/containers/{id}/logs"]["dangerous"] is True  # acknowledged by the base profile
        assert not [p for p in rules if name in p or container.id[:12] in p]  # templates, never raw names
        assert "GET /containers/{id}/top" in document["profiles"][profile]["description"]

    enforcing = proxy_factory(listen=["tcp://127.0.0.1:%d" % port, unix_url], rules=path)
    for host in hosts:
        results = used(host)
        assert [r.returncode for r in results] == [0, 0, 0, 0], [(r.args, r.stderr) for r in results]
        assert [r.stdout for r in results] == expected
        for command in (["images"], ["network", "ls"], ["top", name], ["volume", "ls"]):
            refused = support.docker_cli(host, *command)
            assert refused.returncode != 0 and "porthole:" in refused.stderr, (command, refused.stdout)
    assert not enforcing.requests_logged(decision="would_deny")
    denied = enforcing.requests_logged(decision="deny")
    assert {l["profile"] for l in denied} == {"learned-127-0-0-1", "learned-uid-0"}
    assert all(l["status"] == 403 for l in denied)
    assert any(l["target"].endswith("/images/json") for l in denied)
    assert any(l["target"].endswith("/networks") for l in denied)
    assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0
