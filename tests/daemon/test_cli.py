"""The proxy's command line, run as a process (proxy.py as root, one-shot: support.run_proxy):
--version, --check, and the usage errors that stop the start with exit 2. (Settings, URLs and
listener files in-process: tests/unit/app/test_settings.py, tests/unit/runtime/test_config.py,
tests/unit/connections/test_listeners.py.)"""
import os
import re

import support
from porthole import VERSION
from support import run_proxy


def test_version():
    result = run_proxy("--version")
    # (a staged copy has no git checkout beside it: "commit unknown, built unknown")
    assert result.returncode == 0 and re.match(rf"porthole {re.escape(VERSION)} \(commit \S+, built \S+; h11 0\.16\.0, Python 3",
                                               result.stdout), result.stdout


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


def test_unknown_listener_profile_is_refused(tmp_path):
    result = run_proxy("--allow-root", "--listen", f"unix://{tmp_path}/p.sock?profile=nope")
    assert result.returncode == 2 and "no profile 'nope'" in result.stderr


def test_usage_errors_exit_2():
    result = run_proxy("--listen", "http://x:1")
    assert result.returncode == 2 and "scheme must be tcp:// or unix://" in result.stderr


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
