"""dockerode (npm, tests/node, installed by `./build.sh deps` with `npm ci`) used the way
Homepage (list all, inspect by name, one stats sample) and Uptime Kuma (list all, inspect by
name, unversioned; Uptime Kuma itself sends the same requests with axios) use the Docker API:
first on the suite's recording profile, then on the shipped `homepage` and `uptime-kuma`
presets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

import consumers
import fake_upstream as fu
import support

pytestmark = [pytest.mark.docker, pytest.mark.timeout(90)]

NODE_DIR = support.REPO / "tests" / "node"
NODE = shutil.which("node") or "/usr/bin/node"


@pytest.fixture
def watched(containers, busybox_image):
    """A running `--network none` container for the consumers to watch; returns its name."""
    return containers(busybox_image, name="ph-node-" + uuid.uuid4().hex[:8]).name


def run_node(consumer: str, docker_host: str, name: str) -> dict:
    assert (NODE_DIR / "node_modules" / "dockerode").is_dir(), \
        "dockerode is not installed: run ./build.sh deps (npm ci in tests/node)"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(NODE_DIR), "DOCKER_HOST": docker_host}
    r = subprocess.run([NODE, str(NODE_DIR / "consumers.js"), consumer, name], cwd=str(NODE_DIR), env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, "%s (dockerode) failed: %s" % (consumer, r.stderr.strip())
    return json.loads(r.stdout)


def assert_shown(consumer: str, shown: dict, name: str) -> None:
    assert "/" + name in shown["listed"], shown
    if consumer == "homepage":
        assert shown["status"] == "running", shown
        assert shown["memoryUsage"] > 0 and shown["cpuTotalUsage"] > 0, shown
    else:
        assert shown["running"] is True, shown


@pytest.mark.parametrize("consumer", ["homepage", "uptime-kuma"])
def test_dockerode_record(consumer, proxy_factory, watched, record_property):
    url, docker_host = consumers.unix_listener(consumers.RECORD_PROFILE)
    proxy = proxy_factory(listen=[url], rules=consumers.record_rules_file())
    assert_shown(consumer, run_node(consumer, docker_host, watched), watched)
    calls = consumers.stop_and_record(proxy)
    consumers.report("%s (dockerode)" % consumer, calls, record_property)
    consumers.assert_all_allowed(proxy, consumer)
    consumers.assert_sent(calls, "GET", "/containers/{id}/json")
    assert not any(c["versioned"] for c in calls), "dockerode without a version sends unversioned paths"


@pytest.mark.parametrize("listener", ["unix", "tcp"])
@pytest.mark.parametrize("consumer", ["homepage", "uptime-kuma"])
def test_dockerode_preset(consumer, listener, proxy_factory, watched):
    make = consumers.unix_listener if listener == "unix" else consumers.tcp_listener
    url, docker_host = make(consumer)
    proxy = proxy_factory(listen=[url])  # the shipped rules.json
    assert_shown(consumer, run_node(consumer, docker_host, watched), watched)
    consumers.assert_all_allowed(proxy, consumer)


def test_uptime_kuma_preset_refuses_what_it_does_not_need(proxy_factory, watched):
    """Uptime Kuma only lists and inspects: its preset has no stats, logs or top."""
    url, docker_host = consumers.tcp_listener("uptime-kuma")
    proxy_factory(listen=[url])
    for path in ("/containers/%s/stats?stream=false" % watched, "/containers/%s/logs?stdout=1" % watched,
                 "/containers/%s/top" % watched):
        r = fu.get(("127.0.0.1", int(docker_host.rsplit(":", 1)[1])), path, timeout=10)
        assert r.status == 403, (path, r.status, r.body[:200])
        assert r.json()["message"].startswith("porthole:"), r.body[:200]
