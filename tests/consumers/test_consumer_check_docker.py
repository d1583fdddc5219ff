"""check_docker and check_swarm (PyPI `check_docker`, Nagios/NRPE plugins) through porthole on
a unix listener: check_docker's container checks (status, uptime, restarts, CPU, memory, image
age, presence) first on the suite's recording profile, then on the shipped `monitoring`
profile, which covers them (stats and inspect). `--version` is not run: it asks the image's
registry, off this machine.

check_swarm asks `GET /swarm`: on this daemon, which is no swarm, the answer must be the
daemon's (503: "CRITICAL: Node is not in a swarm"), not porthole's refusal (which check_swarm
reports as "UNKNOWN: Error accessing swarm info"); that read is allowed, with the join tokens
redacted, by the swarm-tokens change."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import consumers

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

BIN = Path(sys.executable).parent  # installed into the test venv (requirements-dev)
CHECK_DOCKER = str(BIN / "check_docker")
CHECK_SWARM = str(BIN / "check_swarm")
PRESET = "monitoring"
OK, CRITICAL = 0, 2


@pytest.fixture
def world(containers, docker_direct, busybox_image):
    """A running container made on the DIRECT socket, and the daemon's cgroup version."""
    return {"container": containers(busybox_image, name="ph-nagios-" + uuid.uuid4().hex[:8]).name,
            "cgroup": docker_direct.info().get("CgroupVersion", "1")}


def socket_path(docker_host: str) -> str:
    return docker_host[len("unix://"):]


def run_plugin(plugin: str, docker_host: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, plugin, "--connection", socket_path(docker_host), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def check_container(docker_host: str, w: dict) -> None:
    """Every container check of the plugin is OK, and names the container."""
    checks = ["--status", "running", "--uptime", "0:0", "--restarts", "1:2", "--cpu", "95:99",
              "--image-age", "3650:7300"]
    shows = ["%s status is running" % w["container"], "restarts", "cpu", "uptime", "image"]
    if w["cgroup"] == "1":  # check_docker 2.2 reads memory_stats.stats.total_cache: cgroup v1 only
        checks += ["--memory", "95:99:%"]
        shows.append("memory")
    r = run_plugin(CHECK_DOCKER, docker_host, "--containers", w["container"], "--present", *checks)
    assert r.returncode == OK and r.stdout.startswith("OK: "), (r.returncode, r.stdout, r.stderr)
    for shown in shows:
        assert shown in r.stdout, (shown, r.stdout)


def test_check_docker_record(proxy_factory, world, record_property):
    url, docker_host = consumers.unix_listener(consumers.RECORD_PROFILE)
    proxy = proxy_factory(listen=[url], rules=consumers.record_rules_file())
    check_container(docker_host, world)
    calls = consumers.stop_and_record(proxy)
    consumers.report("check_docker", calls, record_property)
    consumers.assert_all_allowed(proxy, "check_docker")
    for path in ("/containers/json", "/containers/{id}/json", "/containers/{id}/stats", "/images/{name*}/json"):
        consumers.assert_sent(calls, "GET", path)


def test_check_docker_preset(proxy_factory, world):
    url, docker_host = consumers.unix_listener(PRESET)
    proxy = proxy_factory(listen=[url])  # the shipped rules.json
    check_container(docker_host, world)
    consumers.assert_all_allowed(proxy, "check_docker")


def test_check_swarm_on_a_daemon_that_is_no_swarm(proxy_factory):
    url, docker_host = consumers.unix_listener("docker-cli")
    proxy = proxy_factory(listen=[url])
    r = run_plugin(CHECK_SWARM, docker_host, "--swarm")
    assert (r.returncode, r.stdout.strip()) == (CRITICAL, "CRITICAL: Node is not in a swarm"), \
        (r.returncode, r.stdout, r.stderr)
    consumers.stop(proxy)
    assert [l["decision"] for l in proxy.requests_logged()] == ["allow"], proxy.requests_logged()
