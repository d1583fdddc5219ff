"""porthole/app/build_info.py: `--version` names the commit and the build date, from the module
build.sh writes into a frozen build, else from the checkout (the artifact side: test_binary.py)."""
import subprocess
import sys
import types

from porthole import VERSION
from porthole.app import build_info as module
from porthole.app.command_line import main


def test_frozen_build_names_its_commit_and_date(monkeypatch, capsys):
    written = types.ModuleType("porthole.app._build")
    written.COMMIT, written.BUILD_DATE = "0123456789ab", "2026-12-06"
    monkeypatch.setitem(sys.modules, "porthole.app._build", written)
    assert module.build_info() == ("0123456789ab", "2026-12-06")
    assert main(["--version"], {}) == 0
    assert capsys.readouterr().out.startswith(f"porthole {VERSION} (commit 0123456789ab, built 2026-12-06; h11 ")


def test_checkout_names_gits_commit(monkeypatch):
    monkeypatch.delitem(sys.modules, "porthole.app._build", raising=False)
    head = subprocess.run(["git", "-C", module.__file__.rsplit("/", 1)[0], "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert module.build_info() == (head, "unknown")


def test_without_git_unknown(monkeypatch):
    monkeypatch.delitem(sys.modules, "porthole.app._build", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert module.build_info() == ("unknown", "unknown")
