"""porthole/ops/doctor.py: the audit of the host (--doctor), its parsers and each check alone, over
hand-made facts (a fake /proc root, group files and daemon.json files in temporary directories).
(The real proxy.py --doctor against the suite's private dockerd, made bad on purpose:
tests/daemon/test_doctor.py.)"""

from __future__ import annotations

import json
import os
import socket

import pytest

from policies import DOCTOR_RULES, load_document
from porthole.core.policy import Policy
from porthole.ops.doctor import (DaemonFacts, DoctorPaths, Finding, HostFacts, SocketFacts, SshKeyFacts,
                                 check_daemon_tcp, check_ssh_keys, ssh_key_facts,
                                 check_dangerous_reads, check_docker_socket, check_listeners, check_redaction,
                                 check_root, check_userns, daemon_serves, doctor_exit_status, find_daemons,
                                 format_findings, parse_dockerd_command_line, socket_facts)
from porthole.runtime.config import parse_endpoint
from support import fake_proc

pytestmark = pytest.mark.timeout(120)


def policy(document=None) -> Policy:
    return load_document(document or DOCTOR_RULES, "test rules")


def host_facts(**kw) -> HostFacts:
    base = dict(upstream=parse_endpoint("unix:///var/run/docker.sock", listener=False),
                socket=SocketFacts("/var/run/docker.sock", 0o660, 0, 999, "docker", ()),
                daemons=(DaemonFacts(1, ("fd://",)),), dockerd_processes=1, proc_root="/proc",
                security_options=("name=seccomp,profile=builtin",), daemon_error=None, euid=65532,
                allow_root=False, listeners=(parse_endpoint("tcp://127.0.0.1:2375", listener=True),),
                policy=policy())
    base.update(kw)
    return HostFacts(**base)


def severities(findings) -> list:
    return [f.severity for f in findings]


# ---------------------------------------------------------------------------------------------
# parsers and fact gathering over fake files


def test_dockerd_command_line_spellings():
    parse = parse_dockerd_command_line
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
    assert daemon_serves(hosts, parse_endpoint(upstream, listener=False)) is serves


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
    paths = DoctorPaths(proc=proc, daemon_json=str(default), group="/nonexistent")
    found, seen = find_daemons(paths, parse_endpoint("unix:///tmp/d/docker.sock", listener=False))
    assert seen == 3 and [d.pid for d in found] == [10]
    assert found[0].hosts == ("unix:///tmp/d/docker.sock", "tcp://0.0.0.0:2375")
    assert found[0].tls and not found[0].tlsverify and found[0].userns_remap is None
    found, _ = find_daemons(paths, parse_endpoint("unix:///var/run/docker.sock", listener=False))
    assert [(d.pid, d.userns_remap, d.config_file) for d in found] == [(13, "default", str(default))]
    default.write_text("{ broken")
    found, _ = find_daemons(paths, parse_endpoint("unix:///var/run/docker.sock", listener=False))
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
        found = socket_facts(path, str(group), str(passwd))
    assert (found.mode, found.group_name, found.group_members) == (0o660, "docker", ("alice", "bob", "carol"))
    assert socket_facts(str(tmp_path / "missing.sock"), str(group)).error == "No such file or directory"


# ---------------------------------------------------------------------------------------------
# each check alone


def test_socket_check():
    sock = lambda mode, members=(): SocketFacts("/s", mode, 0, 999, "docker", members)  # noqa: E731
    assert severities(check_docker_socket(host_facts(socket=sock(0o660)))) == ["ok"]
    assert severities(check_docker_socket(host_facts(socket=sock(0o600)))) == ["ok"]
    warned = check_docker_socket(host_facts(socket=sock(0o660, ("alice", "bob"))))
    assert severities(warned) == ["warning"] and "alice, bob" in warned[0].message
    assert severities(check_docker_socket(host_facts(socket=sock(0o666, ("alice",))))) == ["critical"]
    assert severities(check_docker_socket(host_facts(socket=SocketFacts("/s", error="gone")))) == ["warning"]
    tcp = host_facts(upstream=parse_endpoint("tcp://127.0.0.1:2375", listener=False), socket=None)
    assert severities(check_docker_socket(tcp)) == ["critical"]


def test_daemon_tcp_check():
    check = lambda *daemons: check_daemon_tcp(host_facts(daemons=daemons))  # noqa: E731
    assert severities(check(DaemonFacts(1, ("fd://",)))) == ["ok"]
    plain = check(DaemonFacts(7, ("fd://", "tcp://0.0.0.0:2375")))
    assert severities(plain) == ["critical"] and "tcp://0.0.0.0:2375 with no TLS" in plain[0].message
    tls_only = check(DaemonFacts(7, ("tcp://0.0.0.0:2376",), tls=True))
    assert severities(tls_only) == ["critical"] and "without client certificates" in tls_only[0].message
    assert severities(check(DaemonFacts(7, ("tcp://0.0.0.0:2376",), tls=True, tlsverify=True))) == ["ok"]
    assert severities(check()) == ["info"]
    assert severities(check(DaemonFacts(1, (), config_error="cannot read x"))) == ["warning", "ok"]


def test_userns_check():
    assert severities(check_userns(host_facts())) == ["info"]
    assert severities(check_userns(host_facts(security_options=("name=userns",)))) == ["ok"]
    assert severities(check_userns(host_facts(security_options=("name=rootless",)))) == ["ok"]
    configured = DaemonFacts(1, (), userns_remap="default")
    assert severities(check_userns(host_facts(daemons=(configured,), security_options=None))) == ["ok"]
    stale = check_userns(host_facts(daemons=(configured,)))
    assert severities(stale) == ["info"] and "restart dockerd" in stale[0].message


def test_root_check():
    assert severities(check_root(host_facts())) == ["ok"]
    assert severities(check_root(host_facts(euid=0))) == ["warning"]
    assert "--allow-root" in check_root(host_facts(euid=0, allow_root=True))[0].message


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
    found = check_listeners(host_facts(listeners=(parse_endpoint(url, listener=True),)))
    assert severities(found) == [severity], found


def test_listener_check_says_clients_entries_do_not_close_the_listener():
    document = dict(DOCTOR_RULES, clients=[{"match": {"address": "10.0.0.0/8"}, "profile": "logs"}])
    found = check_listeners(host_facts(policy=policy(document),
                                        listeners=(parse_endpoint("tcp://0.0.0.0:2375", listener=True),)))
    assert severities(found) == ["warning"] and "a client they do not match still gets 'default'" in found[0].message


def test_dangerous_reads_and_redaction_checks():
    found = check_dangerous_reads(host_facts())
    assert severities(found) == ["info"]
    assert "profile 'logs'" in found[0].message and "/containers/{id}/logs" in found[0].message
    clean = {"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/_ping"}]}}}
    assert severities(check_dangerous_reads(host_facts(policy=policy(clean)))) == ["ok"]
    assert severities(check_redaction(host_facts())) == ["ok"]
    bare = {"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/_ping"}], "redact": ["env"]},
                                       "spare": {"rules": [{"method": "GET", "path": "/_ping"}], "redact": []}}}
    found = check_redaction(host_facts(policy=policy(bare)))
    assert severities(found) == ["warning", "info"]
    assert "profile 'default' (in use) does not redact log-options, volume-options" in found[0].message
    assert "profile 'spare' does not redact env" in found[1].message
    assert "swarm-tokens" not in found[0].message + found[1].message  # (neither reaches GET /swarm)


def test_swarm_tokens_matter_to_a_profile_that_reaches_get_swarm():
    """(issue 21: item 2) A profile written before swarm-tokens existed ("redact" without it) is
    not reported for it unless a rule of it reaches GET /swarm (acknowledged as dangerous)."""
    old = ["env", "log-options", "volume-options", "exec-commands", "config-data"]
    document = {"version": 1, "profiles": {
        "default": {"rules": [{"method": "GET", "path": "/_ping"}], "redact": old},
        "swarm": {"rules": [{"method": "GET", "path": "/swarm", "dangerous": True}], "redact": old}}}
    found = check_redaction(host_facts(policy=policy(document)))
    assert severities(found) == ["info"] and "profile 'swarm' does not redact swarm-tokens" in found[0].message


def test_exit_status_and_formats():
    ok, info = Finding("ok", "a", "fine"), Finding("info", "b", "note")
    warning, critical = Finding("warning", "c", "hmm"), Finding("critical", "d", "bad")
    assert doctor_exit_status([ok, info]) == 0
    assert doctor_exit_status([ok, warning]) == 1
    assert doctor_exit_status([warning, critical]) == 2
    table = format_findings([ok, critical], as_json=False).splitlines()
    assert table[0].split() == ["SEVERITY", "CHECK", "FINDING"]
    assert table[2].split() == ["critical", "d", "bad"] and table[-1].endswith("exit 2")
    document = json.loads(format_findings([ok, warning], as_json=True))
    assert document["exit"] == 1 and document["counts"]["warning"] == 1
    assert document["findings"][1] == {"severity": "warning", "check": "c", "message": "hmm"}


# ---------------------------------------------------------------------------------------------
# SSH keys of the socket group's members (docs/ssh.md)

def test_ssh_keys_without_a_forced_command_are_warned_about(tmp_path):
    homes = {}
    for user, lines in {
        "alice": ['ssh-ed25519 AAAA alice@laptop', '# a comment', '',
                  'no-pty,no-port-forwarding,command="porthole --stdio --profile docker-cli" ssh-ed25519 AAAB ci'],
        "bob": ['restrict,command="porthole --stdio",from="10.0.0.0/8" ssh-ed25519 AAAC monitor',
                'from="10.1.0.1",restrict,command="echo \\"a, command=\\"" ecdsa-sha2-nistp256 AAAD x'],
        "carol": ['from="10.0.0.1,command=\\"x\\"" ssh-rsa AAAE tricky', 'environment="A=b" ssh-ed25519 AAAF'],
        "erin": ['command="porthole --stdio" ssh-ed25519 AAAG forwards',
                 'restrict,port-forwarding,command="porthole --stdio" ssh-ed25519 AAAH forwards again'],
    }.items():
        home = tmp_path / user
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "authorized_keys").write_text("\n".join(lines) + "\n")
        homes[user] = home
    (tmp_path / "dave" / ".ssh").mkdir(parents=True)  # no authorized_keys
    passwd = tmp_path / "passwd"
    passwd.write_text("".join(f"{u}:x:{1000 + i}:{1000 + i}::{tmp_path / u}:/bin/sh\n"
                              for i, u in enumerate(["alice", "bob", "carol", "dave", "erin"])))
    keys = ssh_key_facts(["alice", "bob", "carol", "dave", "erin", "nobody-listed"], str(passwd))
    assert [(k.user, k.unforced, k.forced, k.forwarding) for k in keys] == [
        ("alice", 1, 1, 0), ("bob", 0, 2, 0), ("carol", 2, 0, 0), ("erin", 0, 0, 2)]
    sock = SocketFacts("/s", 0o660, 0, 999, "docker", ("alice", "bob", "carol", "erin"))
    findings = check_ssh_keys(host_facts(socket=sock, ssh_keys=keys))
    assert severities(findings) == ["warning", "ok", "warning", "warning"]
    assert "1 key(s) of alice, a member of group docker, log in without a forced command" in findings[0].message
    assert "2 key(s) of erin, a member of group docker, force a command but allow port forwarding" in findings[3].message
    unreadable = check_ssh_keys(host_facts(socket=sock, ssh_keys=(SshKeyFacts("eve", "/home/eve/.ssh/authorized_keys",
                                                                                error="Permission denied"),)))
    assert severities(unreadable) == ["info"]
