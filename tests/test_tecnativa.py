"""The Tecnativa drop-in: tecnativa/docker-socket-proxy's (and linuxserver's fork's) environment
variables make an equivalent READ-ONLY policy when no rules file is given.

Layers: the pure mapping (tecnativa_policy), settings (parse_settings), the command line
(--check, exit 2 for a write), and the image run the way a user swapping images would run it,
against the session's private dockerd, checked with the docker CLI."""
from __future__ import annotations

import json
import os
import signal

import pytest

import proxy
import support
from proxy import (DANGEROUS_READS, Refusal, RequestFacts, UsageError, decide, load_policy, parse_settings,
                   tecnativa_policy)


def policy_for(**variables):
    dropin = tecnativa_policy(variables)
    return load_policy(json.dumps(dropin.document), "env"), dropin.notes


def allowed(policy, target, method="GET"):
    facts = RequestFacts(method=method, target=target.encode(), headers=(), listener_kind="unix",
                         profile="default")
    try:
        decide(policy, facts)
    except Refusal:
        return False
    return True


# --------------------------------------------------------------------------
# the mapping (pure)


def test_defaults_are_ping_version_events():
    policy, _ = policy_for(LOG_LEVEL="info")  # any of their variables switches the drop-in on
    assert allowed(policy, "/_ping") and allowed(policy, "/_ping", "HEAD")
    assert allowed(policy, "/v1.47/version") and allowed(policy, "/v1.47/events?filters=%7B%7D")
    for target in ("/containers/json", "/info", "/images/json", "/networks", "/v1.47/system/df"):
        assert not allowed(policy, target), target


def test_a_default_can_be_switched_off():
    policy, _ = policy_for(EVENTS="0", CONTAINERS="1")
    assert not allowed(policy, "/events") and allowed(policy, "/containers/json")


def test_containers_opens_list_inspect_stats_but_no_dangerous_read():
    policy, notes = policy_for(CONTAINERS="1", IMAGES="0")
    for target in ("/v1.47/containers/json?all=1", "/containers/web/json", "/containers/web/stats?stream=0"):
        assert allowed(policy, target), target
    for target in ("/containers/web/logs", "/containers/web/top", "/containers/web/export",
                   "/containers/web/archive?path=/etc", "/containers/web/changes", "/images/json"):
        assert not allowed(policy, target), target
    assert any("logs left out: it needs ALLOW_LOGS=1" in note for note in notes), notes


def test_linuxserver_gates_acknowledge_dangerous_reads():
    policy, _ = policy_for(CONTAINERS="1", ALLOW_LOGS="1", ALLOW_TOP="1", ALLOW_ARCHIVE="1",
                           ALLOW_EXPORT="1", ALLOW_CHANGES="1", SERVICES="1", TASKS="1")
    for target in ("/containers/web/logs?follow=1&details=1", "/containers/web/top?ps_args=aux",
                   "/containers/web/export", "/containers/web/archive?path=/", "/containers/web/changes",
                   "/services/s1/logs", "/tasks/t1/logs"):
        assert allowed(policy, target), target
    assert allowed(policy, "/containers/web/archive?path=/", "HEAD")
    by_path = {rule.path: rule for rule in policy.profiles["default"]}
    assert by_path["/containers/{id}/logs"].dangerous and by_path["/services/{id}/logs"].dangerous
    assert not by_path["/containers/{id}/json"].dangerous


def test_a_gate_without_its_section_opens_nothing():
    policy, notes = policy_for(ALLOW_LOGS="1")
    assert not allowed(policy, "/containers/web/logs")
    assert any("ALLOW_LOGS=1 opens nothing" in note for note in notes), notes


@pytest.mark.parametrize("variable, refused", [
    ("SWARM", ["/swarm", "/swarm/unlockkey"]),
    ("CONFIGS", ["/configs", "/configs/c1"]),
    ("DISTRIBUTION", ["/distribution/busybox/json"]),
    ("EXEC", ["/exec/e1/json"]),
    ("IMAGES", ["/images/get?names=busybox", "/images/busybox/get", "/images/search?term=x"]),
    ("PLUGINS", ["/plugins/privileges?remote=x"]),
])
def test_dangerous_reads_no_variable_acknowledges_are_left_out(variable, refused):
    policy, notes = policy_for(**{variable: "1"})
    for target in refused:
        assert not allowed(policy, target), target
    assert sum(f"{variable}=1: GET" in note and "dangerous read" in note for note in notes) == len(refused), notes


def test_every_section_opens_its_reads():
    policy, _ = policy_for(INFO="1", IMAGES="1", NETWORKS="1", VOLUMES="1", SERVICES="1", TASKS="1",
                           NODES="1", SECRETS="1", PLUGINS="1", SYSTEM="1")
    for target in ("/info", "/images/json", "/images/registry:5000/team/app:1/json", "/images/busybox/history",
                   "/networks", "/networks/n1", "/volumes", "/volumes/v1", "/services", "/services/s1",
                   "/tasks", "/tasks/t1", "/nodes", "/nodes/n1", "/secrets", "/secrets/s1", "/plugins",
                   "/plugins/vieux/sshfs:latest/json", "/system/df"):
        assert allowed(policy, target), target


def test_every_rule_is_get_or_head_and_every_guard_holds():
    everything = {name: "1" for name in proxy.TECNATIVA_SECTIONS}
    everything.update({gate: "1" for gate in proxy.TECNATIVA_GATES})
    policy, _ = policy_for(**everything)
    for rule in policy.profiles["default"]:
        assert rule.methods <= {"GET", "HEAD"}, rule
    for target in ("/session", "/grpc", "/debug/pprof", "/containers/web/attach/ws"):
        assert not allowed(policy, target), target
    for method in ("POST", "PUT", "DELETE"):
        assert not allowed(policy, "/containers/web/start", method)


@pytest.mark.parametrize("variable", sorted(proxy.TECNATIVA_WRITES))
def test_a_write_variable_is_refused(variable):
    with pytest.raises(UsageError, match=f"porthole never forwards writes: {variable}=1 asks for"):
        tecnativa_policy({variable: "1", "CONTAINERS": "1"})
    tecnativa_policy({variable: "0", "CONTAINERS": "1"})  # off is fine


@pytest.mark.parametrize("value", ["true", "yes", "on", " 1", "1x", "-1"])
def test_values_are_numbers(value):
    """HAProxy reads `env(X) -m bool` as a number ('true' is 0): porthole does not guess."""
    with pytest.raises(UsageError, match="are 0 or 1"):
        tecnativa_policy({"CONTAINERS": value})


def test_numbers_as_haproxy_reads_them():
    policy, _ = policy_for(CONTAINERS="2", EVENTS="", PING="00")
    assert allowed(policy, "/containers/json")
    assert not allowed(policy, "/events") and allowed(policy, "/version") and not allowed(policy, "/_ping")


def test_nothing_open_is_an_error():
    with pytest.raises(UsageError, match="allow nothing"):
        tecnativa_policy({"PING": "0", "VERSION": "0", "EVENTS": "0"})


def test_the_guards_decide_what_is_dangerous():
    """The mapping asks the guard table, so a read it opens without a gate is never dangerous."""
    everything = {name: "1" for name in proxy.TECNATIVA_SECTIONS}
    policy, _ = policy_for(**everything)
    guards = [proxy.parse_template(t) for t in DANGEROUS_READS]
    for rule in policy.profiles["default"]:
        assert not any(proxy.templates_overlap(rule.template, g) for g in guards), rule.path


# --------------------------------------------------------------------------
# settings


def test_settings_pick_up_the_variables_only_without_a_rules_file():
    settings = parse_settings([], {"CONTAINERS": "1", "PATH": "/bin", "LOG_LEVEL": "debug"})
    assert dict(settings.dropin) == {"CONTAINERS": "1", "LOG_LEVEL": "debug"}
    assert settings.log_level == "debug"
    assert parse_settings(["--rules", "/r.json"], {"CONTAINERS": "1"}).dropin == ()
    assert parse_settings([], {"CONTAINERS": "1", "PORTHOLE_RULES": "/r.json"}).dropin == ()
    assert parse_settings([], {"PATH": "/bin"}).dropin == ()


def test_log_level_and_socket_path():
    """Read with the drop-in only (a policy variable set to a number): alone they are some other
    program's (tests/unit/ops/test_dropin_choice.py)."""
    settings = parse_settings([], {"PING": "1", "LOG_LEVEL": "err", "SOCKET_PATH": "/run/docker.sock"})
    assert settings.log_level == "error" and settings.upstream.url == "unix:///run/docker.sock"
    settings = parse_settings(["--upstream", "unix:///a.sock"], {"PING": "1", "SOCKET_PATH": "/b.sock",
                                                                  "LOG_LEVEL": "notice", "PORTHOLE_LOG_LEVEL": "warning"})
    assert settings.upstream.url == "unix:///a.sock" and settings.log_level == "warning"
    with pytest.raises(UsageError, match="LOG_LEVEL='verbose'"):
        parse_settings([], {"PING": "1", "LOG_LEVEL": "verbose"})
    with pytest.raises(UsageError, match="SOCKET_PATH='docker.sock'"):
        parse_settings([], {"PING": "1", "SOCKET_PATH": "docker.sock"})


# --------------------------------------------------------------------------
# the command line


def run_proxy(*args, env=None):
    return support.ProxyProcess(args=args, as_root=True, env=env, rules=False).run(20)


def test_check_prints_the_policy_the_variables_made():
    result = run_proxy("--check", env={"CONTAINERS": "1", "ALLOW_LOGS": "1", "IMAGES": "0"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "policy from the Tecnativa-style environment variables" in out
    assert "GET      /containers/{id}/logs  (any query)  [dangerous read, acknowledged]" in out
    assert "/images/json" not in out and "/info" not in out
    assert "note: CONTAINERS=1: GET /containers/{id}/top left out: it needs ALLOW_TOP=1 too" in out


@pytest.mark.parametrize("env, names", [
    ({"POST": "1"}, ["POST=1"]),
    ({"CONTAINERS": "1", "ALLOW_START": "1", "ALLOW_STOP": "1"}, ["ALLOW_START=1", "ALLOW_STOP=1"]),
    ({"BUILD": "1"}, ["BUILD=1"]),
])
def test_a_write_stops_porthole_with_exit_2(env, names):
    for mode in (["--check"], ["--listen", "tcp://127.0.0.1:%d" % support.free_port()]):
        result = run_proxy(*mode, env=env)
        assert result.returncode == 2, (mode, result.stdout, result.stderr)
        assert "porthole never forwards writes" in result.stderr
        for name in names:
            assert name in result.stderr


def test_an_explicit_rules_file_wins_over_the_variables():
    result = support.ProxyProcess(args=["--check"], as_root=True, env={"POST": "1", "CONTAINERS": "1"}).run(20)
    assert result.returncode == 0, result.stderr
    assert "profile log-reader" in result.stdout and "Tecnativa" not in result.stdout


def test_running_proxy_forwards_what_the_variables_open(proxy_factory, docker_direct, busybox_image, containers):
    """In front of the real daemon, with the docker CLI: allowed reads answer, the rest is refused,
    and SIGHUP keeps the environment's policy."""
    name = "ph-tecnativa-%d" % os.getpid()
    containers(busybox_image, name=name)
    url, path = support.unix_listen_url()
    p = proxy_factory(listen=[url], rules=False, env={"CONTAINERS": "1", "VERSION": "0"})
    host = "unix://" + path
    assert name in support.docker_cli(host, "ps", "--format", "{{.Names}}", check=True).stdout.split()
    assert support.docker_cli(host, "inspect", "-f", "{{.Name}}", name, check=True).stdout.strip() == "/" + name
    for args, why in ((["images"], "no rule in profile 'default'"),
                      (["logs", name], "dangerous read"),
                      (["version"], "no rule in profile 'default'")):
        r = support.docker_cli(host, *args)
        assert r.returncode != 0 and "porthole:" in r.stderr and why in r.stderr, (args, r.stderr)
    p.proc.send_signal(signal.SIGHUP)  #: nothing to reload
    assert support.wait_until(lambda: "the policy comes from environment variables" in p.stderr_text(), 10)
    assert name in support.docker_cli(host, "ps", "--format", "{{.Names}}", check=True).stdout.split()
    assert support.docker_cli(host, "images").returncode != 0


# --------------------------------------------------------------------------
# through the image, as a user swapping tecnativa/docker-socket-proxy for porthole


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_image_drop_in(dockerd, docker_direct, busybox_image, containers):
    from test_image import HARDENED, SOCK_GID, listener_dir, wait_socket
    image = _image(dockerd)
    name = "ph-tecnativa-img-%d" % os.getpid()
    containers(busybox_image, name=name)
    started = []

    def docker_run(*args, detach=True):
        r = support.docker_cli(dockerd.url, "run", *(["-d"] if detach else ["--rm"]), *args, timeout=90)
        if detach:
            assert r.returncode == 0, r.stderr
            started.append(r.stdout.strip().splitlines()[-1])
        return r

    socket_mount = ["-v", "%s:/var/run/docker.sock" % dockerd.socket_path, "--group-add", str(SOCK_GID)]
    try:
        # --check through the image prints what the variables made
        r = docker_run(*HARDENED, "-e", "CONTAINERS=1", "-e", "IMAGES=0", image, "--check", detach=False)
        assert r.returncode == 0 and "policy from the Tecnativa-style environment variables" in r.stdout, r.stderr
        # a write variable: the container exits 2 at once, saying why
        r = docker_run(*HARDENED, *socket_mount, "-e", "CONTAINERS=1", "-e", "POST=1", image, detach=False)
        assert r.returncode == 2 and "porthole never forwards writes: POST=1" in r.stderr, (r.returncode, r.stderr)

        ldir = listener_dir()
        docker_run(*HARDENED, *socket_mount, "-v", "%s:/run/porthole" % ldir, "-e", "CONTAINERS=1",
                   "-e", "IMAGES=0", "-e", "ALLOW_LOGS=1", image,
                   "--listen", "unix:///run/porthole/docker.sock?mode=0666")
        wait_socket(ldir / "docker.sock")
        host = "unix://%s" % (ldir / "docker.sock")
        assert name in support.docker_cli(host, "ps", "--format", "{{.Names}}", check=True).stdout.split()
        assert support.docker_cli(host, "version", "--format", "{{.Server.Version}}", check=True).stdout.strip()
        assert support.docker_cli(host, "logs", name).returncode == 0
        for args in (["images"], ["info"], ["top", name], ["run", "--rm", "--network", "none", busybox_image, "true"]):
            r = support.docker_cli(host, *args, timeout=60)
            assert r.returncode != 0 and "porthole:" in r.stderr, (args, r.stdout, r.stderr)

        # no variables: the image's own default (/rules.json), and a file mounted over it replaces it
        rules = support.write_rules({"version": 1, "profiles": {"default": {"rules": [
            {"method": ["GET", "HEAD"], "path": "/_ping"}, {"method": "GET", "path": "/images/json"}]}}})
        os.chmod(rules, 0o644)
        ldir2 = listener_dir()
        docker_run(*HARDENED, *socket_mount, "-v", "%s:/run/porthole" % ldir2, "-v", "%s:/rules.json:ro" % rules,
                   image, "--listen", "unix:///run/porthole/docker.sock?mode=0666")
        wait_socket(ldir2 / "docker.sock")
        host2 = "unix://%s" % (ldir2 / "docker.sock")
        assert support.docker_cli(host2, "images", "-q", check=True).stdout.strip()
        assert support.docker_cli(host2, "ps").returncode != 0
    finally:
        for cid in started:
            support.docker_cli(dockerd.url, "rm", "-f", "-v", cid, timeout=60)


def _image(dockerd):
    """The image test module's session image, built once by `./build.sh image`."""
    from test_image import IMAGE, build_env, build_sh
    from test_binary import ensure_binary
    if support.docker_cli(dockerd.url, "image", "inspect", IMAGE).returncode != 0:
        ensure_binary()
        r = build_sh("image", env=build_env(dockerd))
        assert r.returncode == 0, r.stderr[-3000:]
    return IMAGE
