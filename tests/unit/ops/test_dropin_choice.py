"""Which policy porthole runs with when no rules file is given: the Tecnativa drop-in only when a
Tecnativa-style policy variable is set to a number (issue "(2 of 5)", item 6). LOG_LEVEL=info is
in many hosts' and systemd units' environments: it used to switch the policy to a 3-endpoint
drop-in and turn reload off; LOG_LEVEL=DEBUG and INFO=yes stopped porthole from starting."""
from __future__ import annotations

import pytest

from porthole.app.settings import parse_settings
from porthole.ops.tecnativa import dropin_variables
from porthole.runtime.config import DEFAULT_UPSTREAM, UsageError

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
