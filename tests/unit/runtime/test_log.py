"""porthole/runtime/log.py: where the log goes (stderr, --log-file, syslog for --stdio, nowhere)
and what a syslog datagram looks like."""
from __future__ import annotations

import json
import os
import re
import socket
import sys

import pytest

from porthole.runtime.log import AppendFile, Discard, Log, SyslogStream, log_stream


@pytest.fixture
def syslog(tmp_path):
    """A datagram socket standing in for /dev/log: (its path, the socket)."""
    path = str(tmp_path / "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_syslog_datagrams_carry_facility_severity_tag_and_the_line(syslog):
    path, sock = syslog
    log = Log("json", "info", SyslogStream(path))
    log("warning", "stdio_session", client="ssh ci@127.0.0.1:4000")
    log("info", "request", status=200)
    log("debug", "not_sent")
    first, second = sock.recv(65536).decode(), sock.recv(65536).decode()
    match = re.fullmatch(r"<28>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d porthole\[(\d+)\]: (\{.*\})", first)
    assert match and int(match.group(1)) == os.getpid(), first  # 28: daemon (3 << 3) | warning (4)
    assert json.loads(match.group(2))["client"] == "ssh ci@127.0.0.1:4000"
    assert second.startswith("<30>") and json.loads(second.split(": ", 1)[1])["status"] == 200
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(65536)


def test_syslog_never_blocks_a_full_receiver_drops(syslog):
    path, _ = syslog
    stream = SyslogStream(path)
    log = Log("text", "info", stream)
    for n in range(5000):  # nobody reads: the socket's queue fills
        log("info", "request", n=n, padding="x" * 200)
    assert stream.dropped > 0


def test_log_file_appends_whole_batches(tmp_path):
    path = tmp_path / "p.log"
    path.write_text("before\n")
    log = Log("json", "info", AppendFile(path))
    log.pending = []
    log("info", "one")
    log("info", "two")
    log.flush()
    lines = path.read_text().splitlines()
    assert lines[0] == "before" and [json.loads(l)["event"] for l in lines[1:]] == ["one", "two"]


def test_where_the_log_goes(tmp_path, syslog):
    path, _ = syslog
    assert log_stream(None, stdio=False, syslog_path=path) is sys.stderr
    assert isinstance(log_stream(tmp_path / "f.log", stdio=True, syslog_path=path), AppendFile)
    assert isinstance(log_stream(None, stdio=True, syslog_path=path), SyslogStream)
    # never stderr with --stdio: sshd hands it to the SSH client
    assert isinstance(log_stream(None, stdio=True, syslog_path=str(tmp_path / "none")), Discard)
    with pytest.raises(OSError):
        log_stream(tmp_path / "missing" / "f.log", stdio=True)
