"""Command line, environment, listener URLs and start-up checks."""
import os
import socket
import stat
from pathlib import Path

import pytest

import proxy
import support
from proxy import UsageError, bind_unix, parse_endpoint, parse_settings

REPO = Path(__file__).resolve().parent.parent


def run_proxy(*args, env=None, timeout=20):
    """proxy.py as root in a one-shot mode (--version, --check, a usage error), without a
    --rules option: CompletedProcess with text output."""
    return support.ProxyProcess(args=args, as_root=True, env=env, rules=False).run(timeout)


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


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:1", "tcp://127.0.0.1", "tcp://:80", "tcp://127.0.0.1:1/path", "unix://relative.sock",
    "unix:///a.sock?mode=999", "unix:///a.sock?mode=abc", "unix:///a.sock?owner=1", "tcp://127.0.0.1:1?mode=0600",
    "tcp://127.0.0.1:99999",
])
def test_bad_listener_urls(url):
    with pytest.raises(UsageError):
        parse_endpoint(url, listener=True)


def test_upstream_takes_no_options():
    with pytest.raises(UsageError):
        parse_endpoint("unix:///var/run/docker.sock?profile=x", listener=False)


def test_bad_numbers_are_usage_errors():
    with pytest.raises(UsageError):
        parse_settings([], {"PORTHOLE_MAX_CONNECTIONS": "many"})
    with pytest.raises(UsageError):
        parse_settings(["--head-timeout", "0"], {})


def test_version():
    result = run_proxy("--version")
    assert result.returncode == 0 and result.stdout.startswith(f"porthole {proxy.VERSION} (h11 0.16.0")


def test_check_prints_every_profile():
    result = run_proxy("--check")
    assert result.returncode == 0, result.stderr
    for name in ("profile default", "profile monitoring", "profile log-reader", "GET|HEAD /_ping",
                 "/containers/{id}/logs", "dangerous read, acknowledged", "never forwarded"):
        assert name in result.stdout


def test_check_names_file_path_and_problem(tmp_path):
    bad = tmp_path / "rules.json"
    bad.write_text('{"version": 1, "profiles": {"default": {"rules": [{"method": "DELETE", "path": "/containers/{id}"}]}}}')
    result = run_proxy("--check", "--rules", str(bad))
    assert result.returncode == 2
    assert f"{bad}: $.profiles.default.rules[0].method: must be GET or HEAD" in result.stderr
    result = run_proxy("--check", env={"PORTHOLE_RULES": str(tmp_path / "missing.json")})
    assert result.returncode == 2 and "missing.json: cannot read" in result.stderr


def test_refuses_root_with_advice(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert proxy.main(["--listen", "tcp://127.0.0.1:1"], {}) == 2
    err = capsys.readouterr().err
    assert "refusing to run as root" in err and "--group-add" in err and "--allow-root" in err


def test_unknown_listener_profile_is_refused(tmp_path):
    result = run_proxy("--allow-root", "--listen", f"unix://{tmp_path}/p.sock?profile=nope")
    assert result.returncode == 2 and "no profile 'nope'" in result.stderr


def test_usage_errors_exit_2():
    result = run_proxy("--listen", "http://x:1")
    assert result.returncode == 2 and "scheme must be tcp:// or unix://" in result.stderr


# ---- unix listener files ------------------------------------------------------------------------

def test_stale_socket_is_replaced_and_mode_applied(tmp_path):
    path = tmp_path / "p.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody accepts: stale
    sock = bind_unix(parse_endpoint(f"unix://{path}?mode=0640&gid={os.getgid()}", listener=True))
    try:
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == os.getgid()
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        client.close()
    finally:
        sock.close()


def test_live_socket_is_not_replaced(tmp_path):
    path = tmp_path / "p.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(UsageError, match="live process"):
            bind_unix(parse_endpoint(f"unix://{path}", listener=True))
        assert path.exists()
    finally:
        live.close()


def test_regular_file_is_not_replaced(tmp_path):
    path = tmp_path / "p.sock"
    path.write_text("keep me")
    with pytest.raises(UsageError, match="not a socket"):
        bind_unix(parse_endpoint(f"unix://{path}", listener=True))
    assert path.read_text() == "keep me"


def test_default_socket_mode_is_0660(tmp_path):
    path = tmp_path / "p.sock"
    sock = bind_unix(parse_endpoint(f"unix://{path}", listener=True))
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    finally:
        sock.close()


def test_unix_listener_under_an_unreadable_directory_is_one_line_exit_2(tmp_path):
    """Issue "(2 of 5)", item 12: it was a Python traceback and exit 1. Porthole runs as uid 65532
    here; the directory is root's, mode 0700."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o755)
    result = support.ProxyProcess(listen=[f"unix://{private}/p.sock"], upstream="unix:///nonexistent.sock").run(20)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # (JSON: the log)
    assert line.startswith(f"porthole: unix://{private}/p.sock: cannot listen: Permission denied")
