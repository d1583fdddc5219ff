"""--doctor: the audit of the host. First the parsers and each check alone, over hand-made facts
(a fake /proc root, group files and daemon.json files in temporary directories); then the real
proxy.py run with --doctor against the suite's private dockerd, made bad on purpose: its socket
world-writable, its group given members, a second private dockerd listening on loopback TCP
without TLS, porthole as root, listeners off loopback."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import proxy  # noqa: E402
import support  # noqa: E402

pytestmark = pytest.mark.timeout(120)

SMALL_RULES = {"version": 1, "profiles": {
    "default": {"rules": [{"method": ["GET", "HEAD"], "path": "/_ping"}, {"method": "GET", "path": "/info"}]},
    "logs": {"extends": "default", "rules": [
        {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True}]}}}


def policy(document=None) -> proxy.Policy:
    return proxy.load_policy(json.dumps(document or SMALL_RULES), "test rules")


def facts(**kw) -> proxy.HostFacts:
    base = dict(upstream=proxy.parse_endpoint("unix:///var/run/docker.sock", listener=False),
                socket=proxy.SocketFacts("/var/run/docker.sock", 0o660, 0, 999, "docker", ()),
                daemons=(proxy.DaemonFacts(1, ("fd://",)),), dockerd_processes=1, proc_root="/proc",
                security_options=("name=seccomp,profile=builtin",), daemon_error=None, euid=65532,
                allow_root=False, listeners=(proxy.parse_endpoint("tcp://127.0.0.1:2375", listener=True),),
                policy=policy())
    base.update(kw)
    return proxy.HostFacts(**base)


def severities(findings) -> list:
    return [f.severity for f in findings]


def fake_proc(root: Path, processes: dict) -> str:
    """A /proc with one directory per pid holding `cmdline` (NUL-separated, as the kernel writes it)."""
    for pid, argv in processes.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir(exist_ok=True)
    return str(root)


# ---------------------------------------------------------------------------------------------
# parsers and fact gathering over fake files


def test_dockerd_command_line_spellings():
    parse = proxy.parse_dockerd_command_line
    assert parse(["dockerd", "-H", "tcp://0.0.0.0:2375", "-Hunix:///x.sock", "--host=fd://"])["hosts"] == [
        "tcp://0.0.0.0:2375", "unix:///x.sock", "fd://"]
    found = parse(["/usr/bin/dockerd", "--tlsverify", "--tlsverify=false", "--userns-remap=default",
                   "--config-file", "/etc/d.json", "--host", "tcp://1.2.3.4:2376"])
    assert found["tlsverify"] is False and found["userns-remap"] == "default"
    assert found["config-file"] == "/etc/d.json" and found["hosts"] == ["tcp://1.2.3.4:2376"]
    assert parse(["dockerd", "--tls"])["tls"] is True
    assert "tlsverify" not in parse(["dockerd"])


@pytest.mark.parametrize("hosts,upstream,serves", [
    ((), "unix:///var/run/docker.sock", True),
    (("fd://",), "unix:///run/docker.sock", True),
    (("fd://",), "unix:///tmp/other.sock", False),
    (("unix:///tmp/d/docker.sock",), "unix:///tmp/d/docker.sock", True),
    (("unix:///tmp/d/docker.sock",), "unix:///tmp/e/docker.sock", False),
    (("unix://",), "unix:///var/run/docker.sock", True),
    (("tcp://0.0.0.0:2375",), "tcp://127.0.0.1:2375", True),
    (("unix:///var/run/docker.sock",), "tcp://127.0.0.1:2375", False),
])
def test_which_dockerd_serves_the_upstream(hosts, upstream, serves):
    assert proxy.daemon_serves(hosts, proxy.parse_endpoint(upstream, listener=False)) is serves


def test_find_daemons_reads_command_lines_and_their_config_files(tmp_path):
    config = tmp_path / "custom.json"
    config.write_text(json.dumps({"hosts": ["unix:///tmp/d/docker.sock", "tcp://0.0.0.0:2375"], "tls": True}))
    default = tmp_path / "daemon.json"
    default.write_text(json.dumps({"userns-remap": "default"}))
    proc = fake_proc(tmp_path / "proc", {
        10: ["/usr/sbin/dockerd", "--config-file", str(config)],
        11: ["dockerd", "-H", "unix:///tmp/other/docker.sock"],  # another daemon
        12: ["sleep", "dockerd"],
        13: ["dockerd"],  # the default socket, configured by the default daemon.json
    })
    paths = proxy.DoctorPaths(proc=proc, daemon_json=str(default), group="/nonexistent")
    found, seen = proxy.find_daemons(paths, proxy.parse_endpoint("unix:///tmp/d/docker.sock", listener=False))
    assert seen == 3 and [d.pid for d in found] == [10]
    assert found[0].hosts == ("unix:///tmp/d/docker.sock", "tcp://0.0.0.0:2375")
    assert found[0].tls and not found[0].tlsverify and found[0].userns_remap is None
    found, _ = proxy.find_daemons(paths, proxy.parse_endpoint("unix:///var/run/docker.sock", listener=False))
    assert [(d.pid, d.userns_remap, d.config_file) for d in found] == [(13, "default", str(default))]
    default.write_text("{ broken")
    found, _ = proxy.find_daemons(paths, proxy.parse_endpoint("unix:///var/run/docker.sock", listener=False))
    assert "cannot read" in found[0].config_error


def test_socket_facts_name_the_group_and_its_members(tmp_path):
    path = str(tmp_path / "d.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        os.chmod(path, 0o660)
        gid = os.stat(path).st_gid
        group = tmp_path / "group"
        group.write_text(f"other:x:{gid + 1}:eve\ndocker:x:{gid}:alice,bob\nsame-gid-later:x:{gid}:mallory\n")
        passwd = tmp_path / "passwd"
        passwd.write_text(f"alice:x:1000:1000::/home/alice:/bin/sh\ncarol:x:1001:{gid}::/home/carol:/bin/sh\n"
                          f"bob:x:1002:{gid}::/home/bob:/bin/sh\n")
        found = proxy.socket_facts(path, str(group), str(passwd))
    assert (found.mode, found.group_name, found.group_members) == (0o660, "docker", ("alice", "bob", "carol"))
    assert proxy.socket_facts(str(tmp_path / "missing.sock"), str(group)).error == "No such file or directory"


# ---------------------------------------------------------------------------------------------
# each check alone


def test_socket_check():
    sock = lambda mode, members=(): proxy.SocketFacts("/s", mode, 0, 999, "docker", members)  # noqa: E731
    assert severities(proxy.check_docker_socket(facts(socket=sock(0o660)))) == ["ok"]
    assert severities(proxy.check_docker_socket(facts(socket=sock(0o600)))) == ["ok"]
    warned = proxy.check_docker_socket(facts(socket=sock(0o660, ("alice", "bob"))))
    assert severities(warned) == ["warning"] and "alice, bob" in warned[0].message
    assert severities(proxy.check_docker_socket(facts(socket=sock(0o666, ("alice",))))) == ["critical"]
    assert severities(proxy.check_docker_socket(facts(socket=proxy.SocketFacts("/s", error="gone")))) == ["warning"]
    tcp = facts(upstream=proxy.parse_endpoint("tcp://127.0.0.1:2375", listener=False), socket=None)
    assert severities(proxy.check_docker_socket(tcp)) == ["critical"]


def test_daemon_tcp_check():
    check = lambda *daemons: proxy.check_daemon_tcp(facts(daemons=daemons))  # noqa: E731
    assert severities(check(proxy.DaemonFacts(1, ("fd://",)))) == ["ok"]
    plain = check(proxy.DaemonFacts(7, ("fd://", "tcp://0.0.0.0:2375")))
    assert severities(plain) == ["critical"] and "tcp://0.0.0.0:2375 with no TLS" in plain[0].message
    tls_only = check(proxy.DaemonFacts(7, ("tcp://0.0.0.0:2376",), tls=True))
    assert severities(tls_only) == ["critical"] and "without client certificates" in tls_only[0].message
    assert severities(check(proxy.DaemonFacts(7, ("tcp://0.0.0.0:2376",), tls=True, tlsverify=True))) == ["ok"]
    assert severities(check()) == ["info"]
    assert severities(check(proxy.DaemonFacts(1, (), config_error="cannot read x"))) == ["warning", "ok"]


def test_userns_check():
    assert severities(proxy.check_userns(facts())) == ["info"]
    assert severities(proxy.check_userns(facts(security_options=("name=userns",)))) == ["ok"]
    assert severities(proxy.check_userns(facts(security_options=("name=rootless",)))) == ["ok"]
    configured = proxy.DaemonFacts(1, (), userns_remap="default")
    assert severities(proxy.check_userns(facts(daemons=(configured,), security_options=None))) == ["ok"]
    stale = proxy.check_userns(facts(daemons=(configured,)))
    assert severities(stale) == ["info"] and "restart dockerd" in stale[0].message


def test_root_check():
    assert severities(proxy.check_root(facts())) == ["ok"]
    assert severities(proxy.check_root(facts(euid=0))) == ["warning"]
    assert "--allow-root" in proxy.check_root(facts(euid=0, allow_root=True))[0].message


@pytest.mark.parametrize("url,severity", [
    ("tcp://127.0.0.1:2375", "ok"),
    ("tcp://[::1]:2375", "ok"),
    ("tcp://localhost:2375", "ok"),
    ("tcp://0.0.0.0:2375", "warning"),
    ("tcp://0.0.0.0:2375?profile=logs", "critical"),
    ("tcp://0.0.0.0:2376?tlscert=/c&tlskey=/k", "warning"),
    ("tcp://0.0.0.0:2376?tlscert=/c&tlskey=/k&profile=logs", "critical"),
    ("tcp://0.0.0.0:2376?tlscert=/c&tlskey=/k&tlscacert=/ca&profile=logs", "ok"),
    ("unix:///run/p.sock?mode=0666", "ok"),
    ("unix:///run/p.sock?mode=0666&profile=logs", "warning"),
])
def test_listener_check(url, severity):
    found = proxy.check_listeners(facts(listeners=(proxy.parse_endpoint(url, listener=True),)))
    assert severities(found) == [severity], found


def test_listener_check_says_clients_entries_do_not_close_the_listener():
    document = dict(SMALL_RULES, clients=[{"match": {"address": "10.0.0.0/8"}, "profile": "logs"}])
    found = proxy.check_listeners(facts(policy=policy(document),
                                        listeners=(proxy.parse_endpoint("tcp://0.0.0.0:2375", listener=True),)))
    assert severities(found) == ["warning"] and "a client they do not match still gets 'default'" in found[0].message


def test_dangerous_reads_and_redaction_checks():
    found = proxy.check_dangerous_reads(facts())
    assert severities(found) == ["info"]
    assert "profile 'logs'" in found[0].message and "/containers/{id}/logs" in found[0].message
    clean = {"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/_ping"}]}}}
    assert severities(proxy.check_dangerous_reads(facts(policy=policy(clean)))) == ["ok"]
    assert severities(proxy.check_redaction(facts())) == ["ok"]
    bare = {"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/_ping"}], "redact": ["env"]},
                                       "spare": {"rules": [{"method": "GET", "path": "/_ping"}], "redact": []}}}
    found = proxy.check_redaction(facts(policy=policy(bare)))
    assert severities(found) == ["warning", "info"]
    assert "profile 'default' (in use) does not redact log-options, volume-options" in found[0].message
    assert "profile 'spare' does not redact env" in found[1].message


def test_exit_status_and_formats():
    ok, info = proxy.Finding("ok", "a", "fine"), proxy.Finding("info", "b", "note")
    warning, critical = proxy.Finding("warning", "c", "hmm"), proxy.Finding("critical", "d", "bad")
    assert proxy.doctor_exit_status([ok, info]) == 0
    assert proxy.doctor_exit_status([ok, warning]) == 1
    assert proxy.doctor_exit_status([warning, critical]) == 2
    table = proxy.format_findings([ok, critical], as_json=False).splitlines()
    assert table[0].split() == ["SEVERITY", "CHECK", "FINDING"]
    assert table[2].split() == ["critical", "d", "bad"] and table[-1].endswith("exit 2")
    document = json.loads(proxy.format_findings([ok, warning], as_json=True))
    assert document["exit"] == 1 and document["counts"]["warning"] == 1
    assert document["findings"][1] == {"severity": "warning", "check": "c", "message": "hmm"}


# ---------------------------------------------------------------------------------------------
# the real proxy.py --doctor against the private dockerd


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
                             rules=support.write_rules(rules or SMALL_RULES))
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
                             rules=support.write_rules(SMALL_RULES))
    result = p.run(30)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["SEVERITY", "CHECK", "FINDING"]
    assert any(line.startswith("ok") and "docker socket" in line for line in lines)
    assert lines[-1].startswith("porthole --doctor: ") and lines[-1].endswith("exit %d" % result.returncode)
