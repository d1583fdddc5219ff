"""Rules reload: noticing that the rules file changed (SIGHUP does the rest the same way)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from porthole.runtime.config import rules_label
from porthole.runtime.log import Log
from porthole.runtime.loop import Loop


FileIdentity = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size


class RulesWatcher:
    """Looks at the rules file every --watch-rules seconds and calls on_change when it is another
    file or was rewritten: a Kubernetes ConfigMap update swaps a symlink (..data) to a new
    directory, so the path then names a file with a new (st_dev, st_ino); an edit in place
    changes mtime or size.

    Rule 1: a change is reported once: the next look compares with what this one saw, so an
            invalid file is refused (and logged) once, not at every look.
    Rule 2: a path that cannot be stat'ed (gone, or mid-swap) is no change; it is logged once, and
            the file that then appears is a change.
    Rule 3: after a reload by other means (SIGHUP), remember() makes the current file the seen one.
    """

    def __init__(self, loop: Loop, path: Path, interval: float, on_change: Callable[[], None],
                 log: Log) -> None:
        self.loop = loop
        self.path = path
        self.interval = interval
        self.on_change = on_change
        self.log = log
        self.seen = self.identity()

    def identity(self) -> FileIdentity | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def start(self) -> None:
        self.loop.set_deadline(self, self.loop.clock() + self.interval)

    def remember(self) -> None:
        self.seen = self.identity()

    def on_deadline(self, now: float) -> None:
        self.loop.set_deadline(self, now + self.interval)
        current = self.identity()
        if current == self.seen:
            return
        self.seen = current
        if current is None:
            self.log("warning", "rules_missing", rules=rules_label(self.path),
                     kept="the rules loaded before", note="reloaded when the file is back")
            return
        self.on_change()

    def stop(self) -> None:
        self.loop.cancel(self)
