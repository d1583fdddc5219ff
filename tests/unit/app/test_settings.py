"""porthole/app/settings.py: parse_settings, the command line over the environment over the
defaults, and what it refuses (usage errors)."""
import socket
from pathlib import Path

import pytest
from support import REPO

from porthole.app.settings import _NUMERIC_OPTIONS, parse_settings
from porthole.runtime.config import UsageError


def test_defaults():
    settings = parse_settings([], {})
    assert [l.url for l in settings.listeners] == ["tcp://127.0.0.1:2375"]
    assert settings.upstream.path == "/var/run/docker.sock"
    assert settings.rules_path == REPO / "rules.json"
    assert (settings.log_format, settings.log_level, settings.allow_root) == ("json", "info", False)


def test_environment_and_command_line_precedence():
    env = {"PORTHOLE_LISTEN": "tcp://127.0.0.1:1, unix:///tmp/a.sock?mode=0600&gid=5&profile=monitoring",
           "PORTHOLE_UPSTREAM": "tcp://127.0.0.1:2376", "PORTHOLE_LOG_FORMAT": "text",
           "PORTHOLE_MAX_CONNECTIONS": "7", "PORTHOLE_ALLOW_ROOT": "true", "PORTHOLE_ALLOW_HOSTS": "a.example,B.example",
           "PORTHOLE_HEAD_TIMEOUT": "2.5", "PORTHOLE_RULES": "/etc/porthole/rules.json"}
    settings = parse_settings([], env)
    tcp, unix = settings.listeners
    assert (tcp.host, tcp.port, tcp.profile) == ("127.0.0.1", 1, "default")
    assert (unix.path, unix.mode, unix.gid, unix.profile) == ("/tmp/a.sock", 0o600, 5, "monitoring")
    assert settings.upstream.kind == "tcp" and settings.upstream.port == 2376
    assert settings.max_connections == 7 and settings.head_timeout == 2.5 and settings.allow_root
    assert settings.allow_hosts == {"a.example", "b.example"}
    assert settings.rules_path == Path("/etc/porthole/rules.json")
    settings = parse_settings(["--listen", "tcp://[::1]:9", "--max-connections", "3", "--log-format", "json"], env)
    assert [(l.host, l.port) for l in settings.listeners] == [("::1", 9)]
    assert settings.listeners[0].family == socket.AF_INET6
    assert settings.max_connections == 3 and settings.log_format == "json"


def test_bad_numbers_are_usage_errors():
    with pytest.raises(UsageError):
        parse_settings([], {"PORTHOLE_MAX_CONNECTIONS": "many"})
    with pytest.raises(UsageError):
        parse_settings(["--head-timeout", "0"], {})


# ---- --metrics --------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["tcp://127.0.0.1:9100?profile=default",
                                 "tcp://127.0.0.1:9100?tlscert=/c.pem&tlskey=/k.pem",
                                 "http://127.0.0.1:9100", "tcp://127.0.0.1"])
def test_bad_metrics_urls_are_usage_errors(url):
    with pytest.raises(UsageError):
        parse_settings(["--metrics", url], {})


def test_metrics_url_from_command_line_or_environment():
    s = parse_settings([], {"PORTHOLE_METRICS": "unix:///run/p/metrics.sock?mode=0666"})
    assert (s.metrics.kind, s.metrics.path, s.metrics.mode) == ("unix", "/run/p/metrics.sock", 0o666)
    s = parse_settings(["--metrics", "tcp://[::1]:9100"], {"PORTHOLE_METRICS": "unix:///x.sock"})
    assert (s.metrics.host, s.metrics.port) == ("::1", 9100)
    assert parse_settings([], {}).metrics is None


# ---- Every numeric option is a positive, finite number, from the command line or PORTHOLE_*
# (issue "(2 of 5)", item 8): `--idle-timeout nan` used to be accepted, and one NaN deadline broke
# the loop's heap (no 408, no idle close; the loop spun hundreds of thousands of passes a second).

FLOATS = [name for name, kind, _, _ in _NUMERIC_OPTIONS if kind is float]
NOT_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"]


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("name", FLOATS)
def test_a_flag_that_is_not_finite_is_refused(name, value):
    with pytest.raises(UsageError, match=f"--{name} must be a positive, finite number"):
        parse_settings([f"--{name}={value}"], {})


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("name", FLOATS)
def test_a_variable_that_is_not_finite_is_refused(name, value):
    with pytest.raises(UsageError, match=f"--{name} must be a positive, finite number"):
        parse_settings([], {"PORTHOLE_" + name.upper().replace("-", "_"): value})


@pytest.mark.parametrize("name", [name for name, _, _, _ in _NUMERIC_OPTIONS])
def test_zero_and_negative_are_refused_and_a_number_is_taken(name):
    for value in ("0", "-1"):
        with pytest.raises(UsageError):
            parse_settings([f"--{name}={value}"], {})
    settings = parse_settings([f"--{name}", "7"], {})
    assert getattr(settings, name.replace("-", "_")) == 7


def test_watch_rules_is_finite_too():
    for value in ("nan", "inf", "-1"):
        with pytest.raises(UsageError, match="--watch-rules"):
            parse_settings([f"--watch-rules={value}"], {})


def test_the_rules_are_looked_at_every_30_seconds_by_default():
    """An idle proxy's only timer: one stat every 30 s, not every 5 s (issue "(3 of 5)", item 3;
    docs/command-line.md says why)."""
    assert parse_settings([], {}).watch_rules == 30.0
    assert parse_settings([], {"PORTHOLE_WATCH_RULES": "5"}).watch_rules == 5.0
    assert parse_settings(["--watch-rules", "0"], {}).watch_rules == 0.0


# ---- --stdio ----------------------------------------------------------------------------------

def test_stdio_has_no_listener_and_a_profile():
    s = parse_settings(["--stdio", "--profile", "docker-cli", "--upstream", "unix:///run/d.sock"],
                       {"PORTHOLE_LISTEN": "tcp://0.0.0.0:2375", "PORTHOLE_STATE_FILE": "/run/p.json",
                        "PORTHOLE_METRICS": "tcp://127.0.0.1:9100"})
    assert s.listeners == () and s.state_file is None and s.metrics is None  # the host's variables: not ours
    assert (s.stdio.kind, s.stdio.profile, s.upstream.path) == ("stdio", "docker-cli", "/run/d.sock")
    assert parse_settings(["--stdio"], {}).stdio.profile == "default"
    assert parse_settings(["--stdio"], {"PORTHOLE_PROFILE": "monitoring"}).stdio.profile == "monitoring"
    assert parse_settings([], {"PORTHOLE_PROFILE": "monitoring"}).stdio is None


@pytest.mark.parametrize("argv, message", [
    (["--stdio", "--listen", "tcp://127.0.0.1:2375"], "--stdio serves stdin and stdout: it takes no --listen"),
    (["--stdio", "--metrics", "tcp://127.0.0.1:9100"], "no --metrics"),
    (["--stdio", "--healthcheck"], "--stdio has none"),
    (["--profile", "docker-cli"], "--profile is for --stdio"),
])
def test_stdio_usage_errors(argv, message):
    with pytest.raises(UsageError) as info:
        parse_settings(argv, {})
    assert message in str(info.value)


def test_log_file():
    assert parse_settings(["--log-file", "/var/log/p.log"], {}).log_file == Path("/var/log/p.log")
    assert parse_settings([], {"PORTHOLE_LOG_FILE": "/l"}).log_file == Path("/l")
    assert parse_settings([], {}).log_file is None
