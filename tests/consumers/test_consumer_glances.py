"""Glances (PyPI) with only its containers plugin, talking to porthole through DOCKER_HOST:
first on the suite's recording profile (what does it send?), then on the shipped `glances`
preset. Containers must show up WITH CPU and memory figures: those come from one
`stats` stream per container, the request that a profile without stats refuses silently
(Glances then shows CPU 0.0 and no memory).

Glances runs headless (`--stdout-json containers`), with every other plugin disabled (no
cloud metadata or public IP look-ups) and its update check off: nothing leaves loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import consumers
import support

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

GLANCES = Path(sys.executable).parent / "glances"  # installed into the test venv (requirements-dev)
# A little CPU every half second, so the CPU figure of a working stats stream is above 0.
BUSY = ["sh", "-c", "while true; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 0.5; done"]
CONFIG = """\
[global]
check_update=false
[containers]
disable=False
all=True
[ip]
public_disabled=True
[cloud]
disable=True
"""


@pytest.fixture
def watched(containers, busybox_image):
    """A busy and an idle `--network none` container; returns their names."""
    run = uuid.uuid4().hex[:8]
    busy = containers(busybox_image, name="ph-glances-busy-" + run, command=BUSY)
    idle = containers(busybox_image, name="ph-glances-idle-" + run)
    return busy.name, idle.name


def run_glances(docker_host: str, tmp_path) -> dict:
    """Run Glances for a few refreshes; returns {container name: {attribute: [values]}} from
    its `--stdout` lines (`containers.NAME.ATTRIBUTE: VALUE`, one per refresh)."""
    home = tmp_path / ("glances-" + uuid.uuid4().hex[:6])
    home.mkdir()
    config = home / "glances.conf"
    config.write_text(CONFIG)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "DOCKER_HOST": docker_host}
    # --stdout, not --stdout-json: Glances 4.5.8 stops after the first --stdout-json refresh.
    r = subprocess.run(
        [str(GLANCES), "-C", str(config), "--disable-check-update", "--disable-plugin", "all",
         "--enable-plugin", "containers", "-t", "1", "--stop-after", "6",
         "--stdout", "containers.status,containers.cpu_percent,containers.memory_usage"],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)
    print("---- glances output ----\n" + r.stdout[-4000:] + r.stderr[-2000:])
    assert r.returncode == 0, "glances exited %s" % r.returncode
    seen: dict = {}
    for line in r.stdout.splitlines():
        head, sep, value = line.partition(": ")
        plugin, _, rest = head.partition(".")
        name, _, attribute = rest.rpartition(".")
        if sep and plugin == "containers" and name:
            seen.setdefault(name, {}).setdefault(attribute, []).append(value)
    return seen


def _numbers(values: list) -> list:
    return [float(v) for v in values if v not in ("None", "")]


def assert_figures(seen: dict, busy: str, idle: str) -> None:
    """Both containers listed, each with a memory figure, the busy one with CPU above 0."""
    assert {busy, idle} <= set(seen), "glances lists %s" % sorted(seen)
    for name in (busy, idle):
        assert any(m > 0 for m in _numbers(seen[name].get("memory_usage", []))), \
            "no memory figure for %s: %r" % (name, seen[name])
    assert any(c > 0 for c in _numbers(seen[busy].get("cpu_percent", []))), \
        "no CPU figure for the busy container: %r" % seen[busy]


def test_glances_record(proxy_factory, watched, tmp_path, record_property):
    url, docker_host = consumers.unix_listener(consumers.RECORD_PROFILE)
    proxy = proxy_factory(listen=[url], rules=consumers.record_rules_file())
    seen = run_glances(docker_host, tmp_path)
    assert_figures(seen, *watched)
    calls = consumers.stop_and_record(proxy)
    consumers.report("glances", calls, record_property)
    consumers.assert_all_allowed(proxy, "glances")
    consumers.assert_sent(calls, "GET", "/containers/{id}/stats")


def test_glances_preset(proxy_factory, watched, tmp_path):
    url, docker_host = consumers.tcp_listener("glances")
    proxy = proxy_factory(listen=[url])  # the shipped rules.json
    seen = run_glances(docker_host, tmp_path)
    assert_figures(seen, *watched)
    consumers.assert_all_allowed(proxy, "glances")
