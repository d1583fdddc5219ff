"""The log: one line per event on stderr, JSON or text. json.dumps escapes every control
character, so a hostile target or header can never start a new line.
"""
from __future__ import annotations

import json
import re
import sys
import time
from typing import Any


LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_JSON_LINE = json.JSONEncoder(ensure_ascii=True, default=str).encode  # json.dumps(default=...) builds one a call
_TEXT_SAFE = re.compile(r"[A-Za-z0-9_./:@{}|\[\]=+-]+")


class Log:
    def __init__(self, fmt: str = "json", level: str = "info", stream: Any = None) -> None:
        self.fmt = fmt
        self.threshold = LOG_LEVELS[level]
        self.stream = stream or sys.stderr
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
