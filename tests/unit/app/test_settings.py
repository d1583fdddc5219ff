"""porthole/app/settings.py: parse_settings, the command line over the environment over the
defaults, and what it refuses (usage errors)."""
import socket
from pathlib import Path

import pytest

from porthole.app.settings import parse_settings
from porthole.runtime.config import UsageError
from support import REPO


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
