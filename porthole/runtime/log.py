"""The log: one line per event on stderr, JSON or text. json.dumps escapes every control
character, so a hostile target or header can never start a new line.

Where it goes: stderr; a file (--log-file: AppendFile); with --stdio, whose stderr reaches the
SSH client, syslog (SyslogStream: /dev/log, journald or a syslog daemon) or nowhere.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any


LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_JSON_LINE = json.JSONEncoder(ensure_ascii=True, default=str).encode  # json.dumps(default=...) builds one a call
_TEXT_SAFE = re.compile(r"[A-Za-z0-9_./:@{}|\[\]=+-]+")


class Log:
    def __init__(self, fmt: str = "json", level: str = "info", stream: Any = None) -> None:
        self.fmt = fmt
        self.threshold = LOG_LEVELS[level]
        self.stream = stream or sys.stderr
        self.priorities = getattr(self.stream, "wants_priority", False)  # syslog: <severity> before each line
        self.pending: list[str] | None = None  # set by the event loop: one write per loop pass
        self.second, self.second_text = -1, ""

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        if LOG_LEVELS[level] < self.threshold:
            return
        now = time.time()
        second = int(now)
        if second != self.second:  # strftime once a second, not once a line
            self.second, self.second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = f"{self.second_text}.{int(now % 1 * 1000):03d}Z"
        record = {"time": stamp, "level": level, "event": event, **fields}
        if self.fmt == "json":
            line = _JSON_LINE(record)
        else:
            line = " ".join(f"{k}={self._text(v)}" for k, v in record.items())
        if self.priorities:
            line = f"<{SYSLOG_SEVERITIES[level]}>{line}"
        if self.pending is not None:
            self.pending.append(line)
        else:
            self.write([line])

    def enabled(self, level: str) -> bool:
        return LOG_LEVELS[level] >= self.threshold

    def flush(self) -> None:
        if self.pending:
            lines, self.pending = self.pending, []
            self.write(lines)

    def write(self, lines: list[str]) -> None:
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not take the proxy down

    @staticmethod
    def _text(value: Any) -> str:
        text = "-" if value is None else str(value)
        return text if _TEXT_SAFE.fullmatch(text) else json.dumps(text, ensure_ascii=True)


SYSLOG_DEVICE = "/dev/log"
SYSLOG_DAEMON = 3 << 3  # the facility: LOG_DAEMON
SYSLOG_SEVERITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3}
_PRIORITY = re.compile(r"<([0-7])>")


class SyslogStream:
    """Log lines as syslog datagrams on /dev/log (RFC 3164, as syslog(3) sends them). Never
    blocks: a datagram the receiver has no room for is dropped, as is every line once the
    socket is gone (the client's answers matter more than the log)."""

    wants_priority = True  # Log puts <severity> before each line

    def __init__(self, path: str = SYSLOG_DEVICE, ident: str = "porthole") -> None:
        self.tag = f"{ident}[{os.getpid()}]: "
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.dropped = 0

    def write(self, text: str) -> None:
        stamp = time.strftime("%b %e %H:%M:%S", time.localtime())
        for line in text.splitlines():
            match = _PRIORITY.match(line)
            severity = int(match.group(1)) if match else 6
            body = line[match.end():] if match else line
            datagram = f"<{SYSLOG_DAEMON | severity}>{stamp} {self.tag}{body}".encode("utf-8", "replace")
            try:
                self.sock.send(datagram)
            except OSError as exc:
                self.dropped += 1
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EMSGSIZE):
                    raise  # gone: Log.write stops caring

    def flush(self) -> None:
        pass


class AppendFile:
    """--log-file: each batch of lines is one write(2) in O_APPEND mode, so the lines of several
    processes (one per SSH session) sharing the file never interleave mid-line."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8", "replace"))
        while data:
            data = data[os.write(self.fd, data):]

    def flush(self) -> None:
        pass


class Discard:
    """--stdio with no syslog socket and no --log-file: stderr reaches the SSH client, so nothing."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def log_stream(log_file: Path | None, stdio: bool, syslog_path: str = SYSLOG_DEVICE) -> Any:
    """Where the log goes: --log-file, else stderr; with --stdio, syslog or nowhere instead of
    stderr. Raises OSError when --log-file cannot be opened."""
    if log_file is not None:
        return AppendFile(log_file)
    if not stdio:
        return sys.stderr
    with contextlib.suppress(OSError):
        return SyslogStream(syslog_path)
    return Discard()
