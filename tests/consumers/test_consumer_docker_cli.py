"""The `docker` CLI's and the Python SDK's read-only commands through porthole: first on the
suite's recording profile (what do they send?), then on the shipped `docker-cli` preset
(every read-only command that is not a dangerous read: ps, inspect, images, info, version,
events, stats, system df, image history, network and volume ls/inspect, port, context).
What the preset must not give, the dangerous reads (logs, top), is refused with a porthole
message."""

from __future__ import annotations

import time
import uuid

import docker
import pytest

import consumers
import fake_upstream as fu
import support

pytestmark = [pytest.mark.docker, pytest.mark.timeout(150)]


@pytest.fixture
def world(containers, docker_direct, busybox_image):
    """A running container, a stopped one and a volume, all made on the DIRECT socket."""
    run = uuid.uuid4().hex[:8]
    running = containers(busybox_image, name="ph-cli-" + run, labels={"porthole.test": run})
    stopped = containers(busybox_image, name="ph-cli-stopped-" + run, start=False)
    volume = docker_direct.volumes.create("ph-cli-vol-" + run)
    since = int(time.time()) - 60
    try:
        yield {"run": run, "running": running.name, "stopped": stopped.name, "volume": volume.name,
               "image": busybox_image, "since": since}
    finally:
        volume.remove(force=True)


def cli_commands(w: dict) -> list:
    """(command, what its output must contain) for every read-only command of the preset."""
    until = int(time.time()) + 1
    return [
        (["version", "--format", "{{.Server.Version}}"], "."),
        (["info", "--format", "{{.Containers}}"], ""),
        (["ps"], w["running"]),
        (["ps", "--all", "--filter", "label=porthole.test=" + w["run"]], w["running"]),
        (["ps", "--all", "--size"], w["stopped"]),
        (["inspect", w["running"]], w["running"]),
        (["container", "inspect", "--size", w["stopped"]], w["stopped"]),
        (["port", w["running"]], ""),
        (["images"], "porthole-test/busybox"),
        (["image", "inspect", w["image"]], "busybox"),
        (["image", "history", w["image"]], "busybox"),
        (["events", "--since", str(w["since"]), "--until", str(until), "--filter", "container=" + w["running"]],
         "start"),
        (["stats", "--no-stream", w["running"]], w["running"]),
        (["stats", "--no-stream"], w["running"]),
        (["system", "df"], "Images"),
        (["system", "df", "--verbose"], w["volume"]),
        (["network", "ls"], "none"),
        (["network", "inspect", "none"], "null"),
        (["volume", "ls"], w["volume"]),
        (["volume", "inspect", w["volume"]], w["volume"]),
        (["context", "ls"], "default"),
    ]


def run_cli(docker_host: str, w: dict) -> None:
    for args, shown in cli_commands(w):
        r = support.docker_cli(docker_host, *args, timeout=60)
        assert r.returncode == 0, "docker %s failed (%s): %s" % (" ".join(args), r.returncode, r.stderr.strip())
        assert shown in r.stdout, "docker %s shows no %r:\n%s" % (" ".join(args), shown, r.stdout)


def run_sdk(docker_host: str, w: dict) -> None:
    """The SDK's read-only calls, as scripts and dashboards use them."""
    client = docker.DockerClient(base_url=docker_host, version="auto", timeout=60)
    try:
        assert client.ping() is True
        assert client.version()["ApiVersion"]
        assert "Containers" in client.info()
        names = [c.name for c in client.containers.list(all=True)]
        assert {w["running"], w["stopped"]} <= set(names), names
        assert [c.name for c in client.containers.list(filters={"label": "porthole.test=" + w["run"]})] \
            == [w["running"]]
        container = client.containers.get(w["running"])
        assert container.status == "running"
        assert container.stats(stream=False)["memory_stats"]["usage"] > 0
        image = client.images.get(w["image"])
        assert any(w["image"] in i.tags for i in client.images.list())
        assert image.history()
        df = client.df()
        assert {"Images", "Containers", "Volumes"} <= set(df), df.keys()
        assert "none" in [n.name for n in client.networks.list()]
        assert client.volumes.get(w["volume"]).name == w["volume"]
        events = list(client.events(since=w["since"], until=int(time.time()) + 1, decode=True,
                                    filters={"container": w["running"]}))
        assert any(e.get("status") == "start" for e in events), events
    finally:
        client.close()


@pytest.mark.parametrize("client", ["docker CLI", "Python SDK"])
def test_docker_read_commands_record(client, proxy_factory, world, record_property):
    url, docker_host = consumers.unix_listener(consumers.RECORD_PROFILE)
    proxy = proxy_factory(listen=[url], rules=consumers.record_rules_file())
    (run_cli if client == "docker CLI" else run_sdk)(docker_host, world)
    calls = consumers.stop_and_record(proxy)
    consumers.report(client, calls, record_property)
    consumers.assert_all_allowed(proxy, client)
    for path in ("/containers/json", "/containers/{id}/stats", "/system/df", "/images/{name*}/history"):
        consumers.assert_sent(calls, "GET", path)


@pytest.mark.parametrize("listener", ["unix", "tcp"])
@pytest.mark.parametrize("client", ["docker CLI", "Python SDK"])
def test_docker_read_commands_preset(client, listener, proxy_factory, world):
    make = consumers.unix_listener if listener == "unix" else consumers.tcp_listener
    url, docker_host = make("docker-cli")
    proxy = proxy_factory(listen=[url])  # the shipped rules.json
    (run_cli if client == "docker CLI" else run_sdk)(docker_host, world)
    consumers.assert_all_allowed(proxy, client)


def test_docker_cli_preset_refuses_dangerous_reads(proxy_factory, world):
    url, docker_host = consumers.unix_listener("docker-cli")
    proxy = proxy_factory(listen=[url])
    for args in (["logs", world["running"]], ["top", world["running"]]):
        r = support.docker_cli(docker_host, *args, timeout=30)
        assert r.returncode != 0 and "porthole:" in r.stderr, (args, r.returncode, r.stdout, r.stderr)
        assert "dangerous" in r.stderr, r.stderr
    refused = consumers.refusals(proxy)
    assert sorted(l["target"].rsplit("/", 1)[-1].split("?")[0] for l in refused) == ["logs", "top"], refused


@pytest.mark.parametrize("quiet", [False, True], ids=["command", "quiet"])
def test_swarm_join_token_through_the_docker_cli_preset_shows_no_token(quiet, upstream, proxy_factory):
    """(issue 21: item 2) `docker swarm join-token worker` reads GET /swarm and prints
    JoinTokens.Worker: through porthole it prints the join command with an empty token (-q: an
    empty line). The upstream is the fake daemon answering as a swarm manager: the suite's real
    daemon is never put into swarm mode."""
    fu.swarm_manager(upstream)
    url, docker_host = consumers.unix_listener("docker-cli")
    proxy = proxy_factory(listen=[url], upstream=upstream.url)  # the shipped rules.json
    for role in ("worker", "manager"):
        args = ["swarm", "join-token", *(["-q"] if quiet else []), role]
        result = support.docker_cli(docker_host, *args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "SWMTKN" not in result.stdout + result.stderr, result.stdout
        if quiet:
            assert result.stdout.strip() == "", result.stdout
        else:
            assert "docker swarm join --token  10.0.0.1:2377" in result.stdout, result.stdout
    assert any(q.path == "/swarm" for q in upstream.requests)
    consumers.assert_all_allowed(proxy, "docker-cli")
