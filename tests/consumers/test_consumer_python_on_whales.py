"""python-on-whales (PyPI) through porthole: it drives the `docker` CLI binary, so what reaches
porthole is what the CLI's commands send; run with Debian's docker.io 20.10 CLI and with the
suite's `docker` (the first on PATH) when that is another one. Its read calls
(container list and inspect, image list, system info, volume and network list) first on the
suite's recording profile, then on the shipped `docker-cli` preset; `docker.run(...)` is
refused, and the exception python-on-whales raises carries porthole's message."""

from __future__ import annotations

import uuid

import pytest
from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

import consumers
import support

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

PRESET = "docker-cli"
DEBIAN_CLI = "/usr/bin/docker"  # docker.io, installed by ./build.sh deps
CLIS = sorted({DEBIAN_CLI, support.DOCKER_CLI})


@pytest.fixture
def world(containers, busybox_image):
    """A running container made on the DIRECT socket."""
    running = containers(busybox_image, name="ph-whales-" + uuid.uuid4().hex[:8])
    return {"container": running.name, "image": busybox_image}


def client(docker_host: str, tmp_path, cli: str = DEBIAN_CLI) -> DockerClient:
    """A client driving the `cli` binary, with an empty config of its own."""
    config = tmp_path / "docker-config"
    config.mkdir(exist_ok=True)
    (config / "config.json").write_text("{}\n")
    return DockerClient(host=docker_host, config=config, client_call=[cli])


def read_calls(docker: DockerClient, w: dict) -> None:
    """Each read call answers with the world in it."""
    assert w["container"] in [c.name for c in docker.container.list()]
    container = docker.container.inspect(w["container"])
    assert container.state.running is True and container.config.image == w["image"]
    assert any(w["image"] in image.repo_tags for image in docker.image.list())
    assert docker.system.info().containers >= 1
    assert "none" in [n.name for n in docker.network.list()]
    assert isinstance(docker.volume.list(), list)


@pytest.mark.parametrize("cli", CLIS)
def test_python_on_whales_record(cli, proxy_factory, world, tmp_path, record_property):
    url, docker_host = consumers.unix_listener(consumers.RECORD_PROFILE)
    proxy = proxy_factory(listen=[url], rules=consumers.record_rules_file())
    read_calls(client(docker_host, tmp_path, cli), world)
    calls = consumers.stop_and_record(proxy)
    consumers.report("python-on-whales (%s)" % cli, calls, record_property)
    consumers.assert_all_allowed(proxy, "python-on-whales")
    for path in ("/containers/json", "/containers/{id}/json", "/images/json", "/info"):
        consumers.assert_sent(calls, "GET", path)


@pytest.mark.parametrize("cli", CLIS)
def test_python_on_whales_preset(cli, proxy_factory, world, tmp_path):
    url, docker_host = consumers.unix_listener(PRESET)
    proxy = proxy_factory(listen=[url])  # the shipped rules.json
    read_calls(client(docker_host, tmp_path, cli), world)
    consumers.assert_all_allowed(proxy, "python-on-whales")


def test_python_on_whales_run_is_refused(proxy_factory, world, tmp_path):
    url, docker_host = consumers.unix_listener(PRESET)
    proxy = proxy_factory(listen=[url])
    docker = client(docker_host, tmp_path)
    with pytest.raises(DockerException) as raised:
        # detached: python-on-whales captures the CLI's stderr only then
        docker.run(world["image"], ["true"], detach=True, networks=["none"])
    assert "porthole:" in str(raised.value), str(raised.value)
    refused = consumers.refusals(proxy)
    assert refused and all(l["method"] == "POST" for l in refused), refused
