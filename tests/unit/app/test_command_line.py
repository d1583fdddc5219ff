"""porthole/app/command_line.py: main() refuses to run as root without --allow-root, with advice.
(The proxy process's command line: tests/daemon/test_cli.py.)"""
import os

from porthole.app.command_line import main


def test_refuses_root_with_advice(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["--listen", "tcp://127.0.0.1:1"], {}) == 2
    err = capsys.readouterr().err
    assert "refusing to run as root" in err and "--group-add" in err and "--allow-root" in err
