"""porthole/ops/tecnativa.py: the Tecnativa drop-in. tecnativa/docker-socket-proxy's (and
linuxserver's fork's) environment variables make an equivalent READ-ONLY policy when no rules file
is given: the pure mapping (tecnativa_policy) and the settings (parse_settings). (The command line
and the running proxy: tests/daemon/test_tecnativa.py; the image, run the way a user swapping
images would run it: tests/artifacts/test_tecnativa_image.py.)"""
from __future__ import annotations

import json

import pytest
from policies import allowed

from porthole.app.settings import parse_settings
from porthole.core.guards import DANGEROUS_READS, parse_template, templates_overlap
from porthole.core.objects import Filtering
from porthole.core.policy import load_policy
from porthole.ops.tecnativa import (
    TECNATIVA_GATES,
    TECNATIVA_SECTIONS,
    TECNATIVA_WRITES,
    dropin_variables,
    tecnativa_policy,
)
from porthole.runtime.config import DEFAULT_UPSTREAM, UsageError


def policy_for(**variables):
    dropin = tecnativa_policy(variables)
    return load_policy(json.dumps(dropin.document), "env"), dropin.notes


# --------------------------------------------------------------------------
# the mapping (pure)


def test_defaults_are_ping_version_events():
    policy, _ = policy_for(LOG_LEVEL="info")  # any of their variables switches the drop-in on
    assert allowed("GET", "/_ping", policy=policy) and allowed("HEAD", "/_ping", policy=policy)
    assert allowed("GET", "/v1.47/version", policy=policy)
    assert allowed("GET", "/v1.47/events?filters=%7B%7D", policy=policy)
    for target in ("/containers/json", "/info", "/images/json", "/networks", "/v1.47/system/df"):
        assert not allowed("GET", target, policy=policy), target


def test_a_default_can_be_switched_off():
    policy, _ = policy_for(EVENTS="0", CONTAINERS="1")
    assert not allowed("GET", "/events", policy=policy) and allowed("GET", "/containers/json", policy=policy)


def test_containers_opens_list_inspect_stats_but_no_dangerous_read():
    policy, notes = policy_for(CONTAINERS="1", IMAGES="0")
    for target in ("/v1.47/containers/json?all=1", "/containers/web/json", "/containers/web/stats?stream=0"):
        assert allowed("GET", target, policy=policy), target
    for target in ("/containers/web/logs", "/containers/web/top", "/containers/web/export",
                   "/containers/web/archive?path=/etc", "/containers/web/changes", "/images/json"):
        assert not allowed("GET", target, policy=policy), target
    assert any("logs left out: it needs ALLOW_LOGS=1" in note for note in notes), notes


def test_linuxserver_gates_acknowledge_dangerous_reads():
    policy, _ = policy_for(CONTAINERS="1", ALLOW_LOGS="1", ALLOW_TOP="1", ALLOW_ARCHIVE="1",
                           ALLOW_EXPORT="1", ALLOW_CHANGES="1", SERVICES="1", TASKS="1")
    for target in ("/containers/web/logs?follow=1&details=1", "/containers/web/top?ps_args=aux",
                   "/containers/web/export", "/containers/web/archive?path=/", "/containers/web/changes",
                   "/services/s1/logs", "/tasks/t1/logs"):
        assert allowed("GET", target, policy=policy), target
    assert allowed("HEAD", "/containers/web/archive?path=/", policy=policy)
    by_path = {rule.path: rule for rule in policy.profiles["default"]}
    assert by_path["/containers/{id}/logs"].dangerous and by_path["/services/{id}/logs"].dangerous
    assert not by_path["/containers/{id}/json"].dangerous


def test_a_gate_without_its_section_opens_nothing():
    policy, notes = policy_for(ALLOW_LOGS="1")
    assert not allowed("GET", "/containers/web/logs", policy=policy)
    assert any("ALLOW_LOGS=1 opens nothing" in note for note in notes), notes


@pytest.mark.parametrize("variable, refused", [
    ("CONFIGS", ["/configs", "/configs/c1"]),
    ("DISTRIBUTION", ["/distribution/busybox/json"]),
    ("EXEC", ["/exec/e1/json"]),
    ("IMAGES", ["/images/get?names=busybox", "/images/busybox/get", "/images/search?term=x"]),
    ("PLUGINS", ["/plugins/privileges?remote=x"]),
])
def test_dangerous_reads_no_variable_acknowledges_are_left_out(variable, refused):
    policy, notes = policy_for(**{variable: "1"})
    for target in refused:
        assert not allowed("GET", target, policy=policy), target
    assert sum(f"{variable}=1: GET" in note and "dangerous read" in note for note in notes) == len(refused), notes


def test_every_section_opens_its_reads():
    policy, _ = policy_for(INFO="1", IMAGES="1", NETWORKS="1", VOLUMES="1", SERVICES="1", TASKS="1",
                           NODES="1", SECRETS="1", PLUGINS="1", SYSTEM="1")
    for target in ("/info", "/images/json", "/images/registry:5000/team/app:1/json", "/images/busybox/history",
                   "/networks", "/networks/n1", "/volumes", "/volumes/v1", "/services", "/services/s1",
                   "/tasks", "/tasks/t1", "/nodes", "/nodes/n1", "/secrets", "/secrets/s1", "/plugins",
                   "/plugins/vieux/sshfs:latest/json", "/system/df"):
        assert allowed("GET", target, policy=policy), target


def test_swarm_opens_get_swarm_without_its_join_tokens_and_never_the_unlock_key():
    """(issue 21: item 2) GET /swarm is an ordinary read for a profile that redacts swarm-tokens,
    as the drop-in's one profile does; /swarm/unlockkey is never forwarded."""
    policy, notes = policy_for(SWARM="1")
    assert allowed("GET", "/swarm", policy=policy)
    assert "swarm-tokens" in policy.filtering.get("default", Filtering()).redact
    assert not allowed("GET", "/swarm/unlockkey", policy=policy)
    assert not any("/swarm" in note for note in notes), notes


def test_every_rule_is_get_or_head_and_every_guard_holds():
    everything = {name: "1" for name in TECNATIVA_SECTIONS}
    everything.update({gate: "1" for gate in TECNATIVA_GATES})
    policy, _ = policy_for(**everything)
    for rule in policy.profiles["default"]:
        assert rule.methods <= {"GET", "HEAD"}, rule
    for target in ("/session", "/grpc", "/debug/pprof", "/containers/web/attach/ws", "/swarm/unlockkey"):
        assert not allowed("GET", target, policy=policy), target
    for method in ("POST", "PUT", "DELETE"):
        assert not allowed(method, "/containers/web/start", policy=policy)


@pytest.mark.parametrize("variable", sorted(TECNATIVA_WRITES))
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
    assert allowed("GET", "/containers/json", policy=policy)
    assert not allowed("GET", "/events", policy=policy) and allowed("GET", "/version", policy=policy)
    assert not allowed("GET", "/_ping", policy=policy)


def test_nothing_open_is_an_error():
    with pytest.raises(UsageError, match="allow nothing"):
        tecnativa_policy({"PING": "0", "VERSION": "0", "EVENTS": "0"})


def test_the_guards_decide_what_is_dangerous():
    """The mapping asks the guard table, so a read it opens without a gate is never dangerous."""
    everything = {name: "1" for name in TECNATIVA_SECTIONS}
    policy, _ = policy_for(**everything)
    guards = [parse_template(t) for t in DANGEROUS_READS]
    for rule in policy.profiles["default"]:
        assert not any(templates_overlap(rule.template, g) for g in guards), rule.path


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


# ---- Which policy porthole runs with when no rules file is given: the Tecnativa drop-in only when a
# Tecnativa-style policy variable is set to a number (issue "(2 of 5)", item 6). LOG_LEVEL=info is
# in many hosts' and systemd units' environments: it used to switch the policy to a 3-endpoint
# drop-in and turn reload off; LOG_LEVEL=DEBUG and INFO=yes stopped porthole from starting.

AMBIENT = [
    {"LOG_LEVEL": "info"},
    {"LOG_LEVEL": "DEBUG"},
    {"SOCKET_PATH": "/run/other.sock"},
    {"DISABLE_IPV6": "1"},
    {"INFO": "yes"},
    {"EVENTS": "true", "LOG_LEVEL": "verbose", "SOCKET_PATH": "relative.sock"},
    {"CONTAINERS": ""},
]


@pytest.mark.parametrize("environ", AMBIENT, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_ambient_variables_never_switch_the_policy(environ):
    settings = parse_settings([], {"PATH": "/bin", **environ})
    assert settings.dropin == ()
    assert settings.log_level == "info" and settings.upstream.url == DEFAULT_UPSTREAM
    assert settings.policy_reason.startswith("no --rules") and "ignored" in settings.policy_reason


@pytest.mark.parametrize("environ, signals", [
    ({"CONTAINERS": "1"}, "CONTAINERS"),
    ({"PING": "0", "LOG_LEVEL": "info"}, "PING"),  # closing a default section is a policy too
    ({"POST": "0", "EVENTS": "1"}, "EVENTS, POST"),
])
def test_a_policy_variable_set_to_a_number_makes_the_drop_in(environ, signals):
    variables, reason = dropin_variables(environ)
    assert dict(variables) == environ
    assert reason == f"Tecnativa-style variables set to numbers: {signals}"


def test_with_the_drop_in_its_settings_are_read_and_a_word_is_refused():
    settings = parse_settings([], {"CONTAINERS": "1", "LOG_LEVEL": "debug", "SOCKET_PATH": "/run/d.sock"})
    assert settings.log_level == "debug" and settings.upstream.url == "unix:///run/d.sock"
    assert dict(settings.dropin)["CONTAINERS"] == "1"
    with pytest.raises(UsageError, match="LOG_LEVEL='DEBUG'"):
        parse_settings([], {"CONTAINERS": "1", "LOG_LEVEL": "DEBUG"})


def test_rules_given_win_and_say_so():
    assert parse_settings(["--rules", "/r.json"], {"CONTAINERS": "1"}).policy_reason == "--rules"
    assert parse_settings([], {"CONTAINERS": "1", "PORTHOLE_RULES": "/r.json"}).policy_reason == "PORTHOLE_RULES"
    assert parse_settings([], {}).policy_reason == "no --rules and no Tecnativa-style policy variables: the rules file"
