"""The real proxy.py --doctor against the suite's private dockerd, made bad on purpose: its socket
world-writable, its group given members, a second private dockerd listening on loopback TCP
without TLS, porthole as root, listeners off loopback. (The parsers and each check alone:
tests/unit/ops/test_doctor.py.)"""

from __future__ import annotations

import json
import os

import pytest

import support
from policies import DOCTOR_RULES
from support import fake_proc

pytestmark = pytest.mark.timeout(120)


def run_doctor(dockerd, *args, listen=None, env=None, rules=None, as_root=False, group_file=None, upstream=None):
    """proxy.py --doctor as porthole would run (uid 65532 with the socket's group), JSON output;
    returns (exit status, {check: [findings]})."""
    group = group_file or support.short_tmpdir("ph-grp-") / "group"
    if group_file is None:
        group.write_text("root:x:0:\ndocker:x:999:someone\n")  # gid 2375, the private socket's, has no entry
    passwd = group.parent / "passwd"  # nobody has the private socket's group 2375 as primary group
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\n")
    environment = {"PORTHOLE_DOCTOR_GROUP_FILE": str(group), "PORTHOLE_DOCTOR_PASSWD_FILE": str(passwd),
                   **(env or {})}
    p = support.ProxyProcess(listen=listen or ["tcp://127.0.0.1:%d" % support.free_port()],
                             upstream=upstream or dockerd.url, groups=[dockerd.sock_gid], as_root=as_root,
                             args=["--doctor", "--log-format", "json", *args], env=environment,
                             rules=support.write_rules(rules or DOCTOR_RULES))
    result = p.run(30)
    assert result.returncode in (0, 1, 2), result.stderr
    document = json.loads(result.stdout)
    assert document["exit"] == result.returncode
    by_check = {}
    for finding in document["findings"]:
        by_check.setdefault(finding["check"], []).append(finding)
    return result.returncode, by_check


def only(by_check, check):
    assert len(by_check[check]) == 1, by_check[check]
    return by_check[check][0]


@pytest.mark.docker
def test_doctor_on_the_private_daemon_as_set_up_is_clean(dockerd):
    status, found = run_doctor(dockerd)
    assert only(found, "docker socket")["severity"] == "ok"
    assert "mode 0660" in only(found, "docker socket")["message"]
    assert only(found, "daemon")["severity"] == "ok"
    dockerd_tcp = only(found, "dockerd tcp")
    assert dockerd_tcp["severity"] == "ok" and dockerd.url in dockerd_tcp["message"], \
        "the private dockerd is found in /proc by its --host"
    assert only(found, "userns-remap")["severity"] == "info"
    assert only(found, "porthole user")["severity"] == "ok"
    assert only(found, "listeners")["severity"] == "ok"
    assert "profile 'logs'" in only(found, "dangerous reads")["message"]
    assert only(found, "redaction")["severity"] == "ok"
    assert status == 0


@pytest.mark.docker
def test_doctor_world_writable_socket_is_critical(dockerd):
    os.chmod(dockerd.socket_path, 0o666)
    try:
        status, found = run_doctor(dockerd)
    finally:
        os.chmod(dockerd.socket_path, 0o660)
    socket_finding = only(found, "docker socket")
    assert socket_finding["severity"] == "critical" and "world-writable" in socket_finding["message"]
    assert status == 2


@pytest.mark.docker
def test_doctor_lists_the_socket_groups_members(dockerd):
    group = support.short_tmpdir("ph-grp-") / "group"
    group.write_text("root:x:0:\nphdocker:x:%d:alice,bob\n" % dockerd.sock_gid)
    status, found = run_doctor(dockerd, group_file=group)
    finding = only(found, "docker socket")
    assert finding["severity"] == "warning" and "phdocker" in finding["message"]
    assert "alice, bob" in finding["message"]
    assert status == 1


@pytest.mark.docker
def test_doctor_finds_a_daemon_on_tcp_without_tls(dockerd, tmp_path):
    """A second private dockerd, really listening on loopback TCP without TLS, its daemon.json
    then naming userns-remap (written after start: the running daemon does not remap)."""
    port = support.free_port()
    exposed = support.Dockerd(extra_args=["--host", "tcp://127.0.0.1:%d" % port])
    exposed.start(tmp_path, dockerd.sock_gid)
    try:
        assert support.can_connect(("127.0.0.1", port)), "the second dockerd listens on TCP"
        (exposed.base / "daemon.json").write_text(json.dumps({"userns-remap": "default"}))
        status, found = run_doctor(exposed)
    finally:
        exposed.stop()
    finding = only(found, "dockerd tcp")
    assert finding["severity"] == "critical"
    assert "tcp://127.0.0.1:%d with no TLS" % port in finding["message"]
    assert only(found, "daemon")["severity"] == "ok", "porthole could not ask the daemon: " + str(found)
    userns = only(found, "userns-remap")
    assert userns["severity"] == "info" and "restart dockerd" in userns["message"]
    assert status == 2


@pytest.mark.docker
def test_doctor_reads_daemon_json_through_a_fake_proc(dockerd, tmp_path):
    """A dockerd (as /proc shows it) whose --config-file puts the private socket and a TLS-only
    TCP host in daemon.json; then one with no flags, configured by PORTHOLE_DOCTOR_DAEMON_JSON."""
    root = support.short_tmpdir("ph-proc-")
    config = root / "daemon.json"
    config.write_text(json.dumps({"hosts": [dockerd.url, "tcp://0.0.0.0:2376"], "tls": True}))
    proc = fake_proc(root / "proc", {4242: ["/usr/bin/dockerd", "--config-file", str(config)]})
    status, found = run_doctor(dockerd, env={"PORTHOLE_DOCTOR_PROC": proc})
    finding = only(found, "dockerd tcp")
    assert finding["severity"] == "critical" and "pid 4242" in finding["message"]
    assert "TLS without client certificates" in finding["message"]
    assert status == 2

    default = root / "etc-daemon.json"
    default.write_text(json.dumps({"hosts": ["fd://", "tcp://0.0.0.0:2376"], "tlsverify": True,
                                   "userns-remap": "default"}))
    proc = fake_proc(root / "proc2", {77: ["dockerd"]})
    status, found = run_doctor(dockerd, upstream="unix:///var/run/docker.sock",
                               env={"PORTHOLE_DOCTOR_PROC": proc, "PORTHOLE_DOCTOR_DAEMON_JSON": str(default)})
    assert only(found, "dockerd tcp")["severity"] == "ok"
    assert "TLS client verification" in only(found, "dockerd tcp")["message"]
    assert only(found, "userns-remap")["severity"] == "ok"


@pytest.mark.docker
def test_doctor_as_root_warns(dockerd):
    status, found = run_doctor(dockerd, as_root=True)
    assert only(found, "porthole user")["severity"] == "warning"
    assert status == 1


@pytest.mark.docker
def test_doctor_listeners_off_loopback(dockerd):
    status, found = run_doctor(dockerd, listen=["tcp://0.0.0.0:%d" % support.free_port()])
    assert only(found, "listeners")["severity"] == "warning" and status == 1
    status, found = run_doctor(dockerd, listen=["tcp://0.0.0.0:%d?profile=logs" % support.free_port(),
                                                "tcp://127.0.0.1:%d" % support.free_port()])
    severities_found = sorted(f["severity"] for f in found["listeners"])
    assert severities_found == ["critical", "ok"] and status == 2
    assert any("/containers/{id}/logs" in f["message"] for f in found["listeners"])


@pytest.mark.docker
def test_doctor_prints_a_table_by_default(dockerd):
    p = support.ProxyProcess(listen=["tcp://127.0.0.1:%d" % support.free_port()], upstream=dockerd.url,
                             groups=[dockerd.sock_gid], args=["--doctor"],
                             rules=support.write_rules(DOCTOR_RULES))
    result = p.run(30)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["SEVERITY", "CHECK", "FINDING"]
    assert any(line.startswith("ok") and "docker socket" in line for line in lines)
    assert lines[-1].startswith("porthole --doctor: ") and lines[-1].endswith("exit %d" % result.returncode)
