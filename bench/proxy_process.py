"""Starting a proxy.py under test for the stand-alone benchmarks (stalls.py, fairness.py): as
uid 65532 when run as root, with this interpreter's import path, and back once it answers."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PROXY_UID = 65532


def start_proxy_process(proxy: Path, args: list[str], ready: Callable[[], bool],
                        start_timeout: float = 10.0) -> subprocess.Popen:
    """`python3 proxy ARGS`, returned once ready() holds (an OSError from it: not yet); exits
    with the proxy's stderr if it never does."""
    command = [sys.executable, str(proxy), *args]
    if os.geteuid() == 0:
        command = ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups", *command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return process
        except OSError:
            pass
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{proxy} did not start: {process.communicate()[1][-2000:]}")
