"""The shipped presets end to end: one proxy with a unix listener per preset (profile=NAME) in front
of the suite's real dockerd; each consumer's requests (tests/lib/presets.py) work through it, what a
preset does not need is refused, the docker CLI on the docker-cli preset, docker logs through
log-reader, Fluent Bit's raw HTTP/1.0 events. (The same table against `decide` alone:
tests/unit/core/test_presets.py.)
"""
from __future__ import annotations

import socket
import time

import pytest

import fake_upstream as fu
import support
from porthole.core.decide import is_streaming
from porthole.core.target import canonicalize_target
from presets import CONSUMERS, PRESETS, F, render


def ask(address, method: str, target: str, timeout: float = 15.0):
    """One request on a fresh connection; streams: the head only."""
    return fu.get(address, target, method, timeout=timeout,
                  head_only=method == "GET" and is_streaming(canonicalize_target(target.encode())))


LISTENED = PRESETS + ["log-reader", "default"]


@pytest.fixture(scope="module")
def preset_proxy(dockerd):
    """One proxy with a unix listener per preset (profile=NAME), in front of the real dockerd."""
    listeners = {name: support.unix_listen_url(f"{name}.sock", f"mode=0666&profile={name}") for name in LISTENED}
    p = support.ProxyProcess(listen=[url for url, _ in listeners.values()], upstream=dockerd.url,
                             groups=[dockerd.sock_gid])
    with p.running():
        p.sockets = {name: path for name, (_, path) in listeners.items()}
        p.hosts = {name: "unix://" + path for name, path in p.sockets.items()}
        yield p


@pytest.fixture(scope="module")
def victim(docker_direct, busybox_image):
    """A running container that printed a line, with a label and a volume."""
    container = support.run_sleeper(docker_direct, busybox_image,
                                     command=["sh", "-c", "echo hello-from-preset; exec sleep 3600"],
                                     labels={"porthole.preset": "yes"})
    volume = docker_direct.volumes.create("porthole-preset-vol")
    try:
        yield container
    finally:
        container.remove(force=True)
        volume.remove(force=True)


@pytest.mark.docker
@pytest.mark.timeout(300)
@pytest.mark.parametrize("preset", PRESETS)
def test_consumer_requests_work_end_to_end(preset, preset_proxy, victim, busybox_image):
    values = {"{id}": victim.id, "{name*}": busybox_image, "{name}": "porthole-preset-vol"}
    for method, path, query in CONSUMERS[preset]:
        concrete = dict(values)
        if path.startswith("/networks/"):
            concrete["{id}"] = "none"
        if path.split("/")[1] in ("services", "tasks", "nodes", "secrets", "plugins", "swarm"):
            concrete["{id}"] = concrete["{name*}"] = "x1"  # no swarm here: the daemon answers 503/404
        for target in (render(path, query, version=None, shape="map", values=concrete),
                       render(path, query, version="1.41", shape="list", values=concrete)):
            answer = ask(preset_proxy.sockets[preset], method, target)
            assert answer.status != 403, (preset, method, target, answer.body[:300])
            if concrete["{id}"] != "x1":  # swarm endpoints: 503 "not a swarm manager" is dockerd's answer
                assert answer.status in (200, 204), (preset, method, target, answer.status, answer.body[:300])


@pytest.mark.docker
def test_get_swarm_outside_a_swarm_is_the_daemons_own_503(preset_proxy, dockerd):
    """(issue 21: item 2) docker-cli allows GET /swarm; the suite's daemon is not a swarm manager,
    and its 503 reaches the client byte for byte (answers other than 2xx are not filtered)."""
    direct = fu.get(dockerd.socket_path, "/v1.41/swarm")
    assert direct.status == 503 and b"not a swarm manager" in direct.body, direct
    through = fu.get(preset_proxy.sockets["docker-cli"], "/v1.41/swarm")
    assert (through.status, through.body) == (direct.status, direct.body), through
    assert through.header("content-type") == direct.header("content-type")


@pytest.mark.docker
def test_netdata_names_a_nomad_task_from_the_variables_it_keeps(preset_proxy, containers, busybox_image):
    """(issue 21: item 3) Netdata's cgroup name resolution reads NOMAD_NAMESPACE, NOMAD_JOB_NAME,
    NOMAD_TASK_NAME and NOMAD_SHORT_ALLOC_ID from Config.Env (cgroup-name.sh.in): through the
    netdata preset their values pass, and every other variable's value is still redacted."""
    nomad = {"NOMAD_NAMESPACE": "default", "NOMAD_JOB_NAME": "cons2job", "NOMAD_TASK_NAME": "api",
             "NOMAD_SHORT_ALLOC_ID": "1f2e3d4c"}
    secret = "s3cr3t-" + str(time.time_ns())
    container = containers(busybox_image, name="cons2-nomad-alloc",
                           environment={**nomad, "NOMAD_TOKEN": secret, "DB_PASSWORD": secret})
    answer = ask(preset_proxy.sockets["netdata"], "GET", f"/v1.41/containers/{container.id}/json")
    assert answer.status == 200 and secret.encode() not in answer.body, answer
    env = dict(item.partition("=")[::2] for item in answer.json()["Config"]["Env"])
    assert {name: env[name] for name in nomad} == nomad
    assert env["NOMAD_TOKEN"] == env["DB_PASSWORD"] == ""
    # what netdata then names it (containerResolution in cgroup-name/container_runtime.go)
    assert "-".join(env[name] for name in nomad) == "default-cons2job-api-1f2e3d4c"


@pytest.mark.docker
def test_head_ping_through_every_preset(preset_proxy):
    for name, path in preset_proxy.sockets.items():
        answer = ask(path, "HEAD", "/_ping")
        assert answer.status == 200 and answer.header("api-version"), (name, answer)


@pytest.mark.docker
def test_what_a_preset_does_not_need_is_refused_end_to_end(preset_proxy, victim):
    cases = [("traefik", "GET", f"/v1.41/containers/{victim.id}/stats?stream=0"),
             ("traefik", "GET", "/v1.41/info"),
             ("prometheus", "GET", f"/v1.41/containers/{victim.id}/json"),
             ("homepage", "GET", f"/containers/{victim.id}/logs?stdout=1"),
             ("glances", "GET", f"/v1.41/containers/{victim.id}/logs?stdout=1"),
             ("dozzle", "GET", f"/v1.41/containers/{victim.id}/top"),
             ("alloy", "GET", "/v1.41/events"),
             ("fluent-bit", "GET", "/v1.41/containers/json"),
             ("docker-cli", "GET", f"/v1.41/containers/{victim.id}/changes"),
             ("docker-cli", "POST", f"/v1.41/containers/{victim.id}/restart")]
    for preset, method, target in cases:
        answer = fu.get(preset_proxy.sockets[preset], target, method=method, timeout=15)
        assert answer.status == 403 and b"porthole: " in answer.body, (preset, target, answer)
    assert victim.attrs["State"]["StartedAt"] == victim.client.containers.get(victim.id).attrs["State"]["StartedAt"]


DOCKER_CLI_READS = [
    ("ps",), ("ps", "-a", "-s"), ("ps", "--filter", "label=porthole.preset=yes", "-q"), ("inspect", "{id}"),
    ("inspect", "-s", "{id}"), ("images",), ("images", "-a"), ("image", "inspect", "{image}"), ("info",),
    ("version",), ("events", "--since", "1h", "--until", "0s"), ("stats", "--no-stream"),
    ("stats", "--no-stream", "{id}"), ("system", "df"), ("system", "df", "-v"), ("image", "history", "{image}"),
    ("network", "ls"), ("network", "inspect", "none"), ("network", "inspect", "-v", "none"), ("volume", "ls"),
    ("volume", "inspect", "porthole-preset-vol"), ("inspect", "porthole-preset-vol"), ("port", "{id}"),
    ("context", "ls"), ("context", "show"), ("plugin", "ls"),
]


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_docker_cli_read_commands_on_the_docker_cli_preset(preset_proxy, victim, busybox_image):
    host = preset_proxy.hosts["docker-cli"]
    for command in DOCKER_CLI_READS:
        args = [a.replace("{id}", victim.name).replace("{image}", busybox_image) for a in command]
        result = support.docker_cli(host, *args)
        assert result.returncode == 0 and "porthole" not in result.stderr, (args, result.stderr)
        if args[0] == "ps" and "-q" in args:
            assert result.stdout.split() == [victim.id[:12]]
        if args[0] == "stats":
            assert victim.name in result.stdout


@pytest.mark.docker
@pytest.mark.parametrize("command", [("logs", "{id}"), ("top", "{id}"), ("diff", "{id}"),
                                     ("export", "{id}"), ("run", "--rm", "{image}", "true")])
def test_docker_cli_preset_refuses_dangerous_reads_and_writes(command, preset_proxy, victim, busybox_image):
    args = [a.replace("{id}", victim.name).replace("{image}", busybox_image) for a in command]
    result = support.docker_cli(preset_proxy.hosts["docker-cli"], *args)
    assert result.returncode != 0 and "porthole: " in result.stderr, (args, result.stderr)


@pytest.mark.docker
def test_docker_logs_with_every_option_through_log_reader(preset_proxy, victim):
    result = support.docker_cli(preset_proxy.hosts["log-reader"], "logs", "--details", "--timestamps",
                                "--tail", "5", "--since", "2000-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z",
                                victim.name)
    assert result.returncode == 0, result.stderr
    assert "hello-from-preset" in result.stdout


@pytest.mark.docker
def test_fluent_bit_raw_http_1_0_events_without_host(preset_proxy, docker_direct, busybox_image):
    """Fluent Bit's in_docker_events: raw 'GET /events HTTP/1.0', no Host, body until close."""
    with fu.HttpClient(preset_proxy.sockets["fluent-bit"], 15) as client:
        client.send(b"GET /events HTTP/1.0\r\n\r\n")
        head = client.read_head()
        assert head.status == 200, head
        made = docker_direct.containers.create(busybox_image, ["true"], network_mode="none",
                                               labels={"porthole.fluent": "yes"})
        try:
            deadline = time.monotonic() + 15
            while made.id.encode() not in client.buf and time.monotonic() < deadline:
                client.sock.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    data = client.sock.recv(65536)
                except socket.timeout:
                    break
                if not data:
                    break
                client.buf += data
            assert made.id.encode() in client.buf and b'"create"' in client.buf, bytes(client.buf[:500])
        finally:
            made.remove(force=True)


@pytest.mark.docker
def test_raw_unencoded_filters_reach_dockerd_as_the_same_query(preset_proxy, dockerd, victim, docker_direct,
                                                               busybox_image):
    """Autoheal's shape: the JSON in `filters` is sent raw. Through porthole it gives what the
    encoded query gives when asked of dockerd directly."""
    other = support.run_sleeper(docker_direct, busybox_image, labels={"porthole.preset": "no"})
    try:
        query = F(label=["porthole.preset=yes"], status=["running"])
        raw = render("/containers/json", {"filters": query}, version="1.41", shape="list", raw_json=True)
        assert '{"label":["porthole.preset=yes"],"status":["running"]}' in raw
        encoded = render("/containers/json", {"filters": query}, version="1.41", shape="list")
        direct = fu.get(dockerd.socket_path, encoded)
        for preset in ("docker-cli", "netdata", "default"):
            through = ask(preset_proxy.sockets[preset], "GET", raw)
            assert through.status == 200, (preset, through.body[:300])
            assert [c["Id"] for c in through.json()] == [c["Id"] for c in direct.json()] == [victim.id]
        canonical = canonicalize_target(encoded.encode()).forward_form()

        def forwarded_lines():
            return [line for line in preset_proxy.logs() if line.get("event") == "request"
                    and line.get("target") == raw]

        support.wait_until(lambda: len(forwarded_lines()) == 3, 5)
        forwarded = forwarded_lines()
        assert len(forwarded) == 3 and all(line["path"] == canonical for line in forwarded), [
            line for line in preset_proxy.logs() if "porthole.preset" in str(line.get("target"))]
    finally:
        other.remove(force=True)
