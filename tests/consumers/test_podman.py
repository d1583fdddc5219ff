"""Porthole in front of Podman's service socket (a private `podman system service`, Debian's
podman 4): the docker CLI's read commands through the shipped default profile, and `podman
--remote` through a `podman` profile for Podman's own API (libpod), proposed for rules.json.

Containers run with no network (the private podman's default, and --network none)."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

import support
from proxy import Refusal, RequestFacts, canonicalize_target, decide, load_policy

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

# The requests podman 4.3.1 made for those commands (porthole's request log).
PODMAN_REQUESTS = [
    "/v4.3.1/libpod/_ping",
    "/v4.3.1/libpod/version",
    "/v4.3.1/libpod/info",
    "/v4.3.1/libpod/containers/json?all=false&external=false&filters=%7B%7D&last=-1&namespace=false&size=false&sync=false",
    "/v4.3.1/libpod/containers/json?all=true&external=false&filters=%7B%22name%22%3A%5B%22pm1%22%5D%7D&last=-1&namespace=false&size=true&sync=false",
    "/v4.3.1/libpod/containers/pm1/json?size=false",
    "/v4.3.1/libpod/containers/pm1/exists?external=false",
    "/v4.3.1/libpod/images/json?all=false&filters=%7B%7D",
    "/v4.3.1/libpod/images/json?all=false&filters=%7B%22reference%22%3A%5B%22localhost%2Fpm-busybox%22%5D%7D",
    "/v4.3.1/libpod/images/b2dcab63df4f/json?size=false",
    "/v4.3.1/libpod/images/b2dcab63df4f/exists",
    "/v4.3.1/libpod/events?filters=%7B%7D&since=1m&stream=true&until=",
]


def podman_policy():
    """The shipped rules.json, whose `podman` profile is what these requests need."""
    return json.loads((support.REPO / "rules.json").read_text())


def decision(policy, target, profile="podman"):
    try:
        decide(policy, RequestFacts("GET", target.encode(), (), "unix", profile))
    except Refusal as refusal:
        return refusal.reason
    return "allowed"


# --------------------------------------------------------------------------
# decisions (no podman needed)


def test_profile_allows_what_podman_remote_sends():
    policy = load_policy(json.dumps(podman_policy()))
    for target in PODMAN_REQUESTS:
        assert decision(policy, target) == "allowed", target
        assert decision(policy, target, "default") != "allowed", target


@pytest.mark.parametrize("target, why", [
    ("/v4.3.1/libpod/containers/pm1/logs?follow=false&stdout=true", "dangerous read"),
    ("/v4.3.1/libpod/containers/pm1/top?ps_args=", "dangerous read"),
    ("/v4.3.1/libpod/containers/pm1/export", "dangerous read"),
    ("/v4.3.1/libpod/containers/pm1/archive?path=/etc", "dangerous read"),
    ("/v4.3.1/libpod/images/export?references=busybox", "dangerous read"),
    ("/v4.3.1/libpod/secrets/s1/json?showsecret=true", "dangerous read"),
    ("/v4.3.1/libpod/containers/stats?stream=false", "no rule"),
    ("/v4.3.1/libpod/containers/json?all=true&bogus=1", "query parameter 'bogus'"),
])
def test_profile_refuses_the_rest(target, why):
    policy = load_policy(json.dumps(podman_policy()))
    assert why in str(decision(policy, target)), target


def test_three_part_versions_only_before_libpod():
    target = canonicalize_target(b"/v4.3.1/libpod/_ping")
    assert (target.version, target.path, target.forward_form()) == ("4.3.1", "/libpod/_ping", "/v4.3.1/libpod/_ping")
    for raw in (b"/v4.3.1/containers/json", b"/v4.3.1", b"/v4.03.1/libpod/_ping", b"/v4.3.1.0/libpod/_ping",
                b"/v4.3./libpod/_ping"):
        with pytest.raises(Refusal):
            canonicalize_target(raw)


def test_a_rules_file_cannot_open_libpod_dangerous_reads_unacknowledged():
    document = podman_policy()
    document["profiles"]["podman"]["rules"].append({"method": "GET", "path": "/libpod/containers/{name}/logs"})
    with pytest.raises(Exception, match="dangerous read"):
        load_policy(json.dumps(document))


# --------------------------------------------------------------------------
# through porthole, in front of the real podman service


@pytest.fixture(scope="module")
def podman_container(podman):
    name = "ph-podman-ctr"
    cid = podman.cli("run", "-d", "--network", "none", "--name", name, podman.image, "sleep", "600").stdout.strip()
    yield name, cid
    podman.cli("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture
def porthole_for_podman(podman, proxy_factory):
    url, path = support.unix_listen_url()
    podman_url, podman_path = support.unix_listen_url("podman.sock", "mode=0660&profile=podman")
    proxy = proxy_factory(listen=[url, podman_url], upstream=podman.url, groups=[support.DEFAULT_SOCK_GID],
                          rules=support.write_rules(podman_policy()))
    proxy.docker_host = "unix://" + path
    proxy.podman_host = "unix://" + podman_path
    return proxy


def refusals(proxy):
    return [line["reason"] for line in proxy.logs()
            if line.get("event") == "request" and line.get("decision") in ("deny", "error")]


def podman_remote(host, *args, timeout=30):
    return subprocess.run([support.PODMAN, "--remote", "--url", host, *args], capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"})


def test_docker_cli_reads_through_porthole(podman, podman_container, porthole_for_podman):
    name, cid = podman_container
    host = porthole_for_podman.docker_host
    started = time.time()
    assert name in support.docker_cli(host, "ps", "--format", "{{.Names}}", check=True).stdout.split()
    assert support.docker_cli(host, "inspect", "-f", "{{.Id}}", name, check=True).stdout.strip() == cid
    assert "porthole-busybox" in support.docker_cli(host, "images", check=True).stdout
    version = support.docker_cli(host, "version", "--format", "{{json .Server}}", check=True).stdout
    assert "Podman Engine" in version, version
    assert support.docker_cli(host, "info", "--format", "{{.ServerVersion}}", check=True).stdout.strip()
    podman.cli("restart", "--time", "0", name)
    events = support.docker_cli(host, "events", "--since", str(int(started) - 1), "--until", str(int(time.time()) + 1),
                                "--filter", "container=" + name, "--format", "{{.Action}}", check=True, timeout=60)
    assert "start" in events.stdout.split(), events.stdout
    for args in (["logs", name], ["rm", "-f", name], ["run", "--rm", "--network", "none", podman.image, "true"]):
        r = support.docker_cli(host, *args, timeout=60)
        assert r.returncode != 0 and "porthole:" in r.stderr, (args, r.stdout, r.stderr)
    assert podman.cli("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"


def test_podman_remote_reads_through_the_podman_profile(podman, podman_container, porthole_for_podman):
    name, cid = podman_container
    host = porthole_for_podman.podman_host
    ps = podman_remote(host, "ps", "--format", "{{.Names}}")
    assert ps.returncode == 0 and name in ps.stdout.split(), ps.stderr
    ps = podman_remote(host, "ps", "-a", "--size", "--filter", "name=" + name, "--format", "{{.ID}}")
    assert ps.returncode == 0 and cid.startswith(ps.stdout.strip()), ps.stderr
    inspect = podman_remote(host, "inspect", name)
    assert inspect.returncode == 0 and json.loads(inspect.stdout)[0]["Id"] == cid, inspect.stderr
    assert podman_remote(host, "container", "exists", name).returncode == 0
    images = podman_remote(host, "images", "--format", "{{.Repository}}")
    assert images.returncode == 0 and "localhost/porthole-busybox" in images.stdout, images.stderr
    # by id: podman percent-encodes the '/' of a name, which porthole refuses (see README)
    image = podman_remote(host, "image", "inspect", podman.image_id[:12])
    assert image.returncode == 0 and json.loads(image.stdout)[0]["Id"] == podman.image_id, image.stderr
    version = podman_remote(host, "version", "--format", "{{.Server.Version}}")
    assert version.returncode == 0 and version.stdout.strip().startswith("4."), version.stderr
    info = podman_remote(host, "info", "--format", "{{.Host.OCIRuntime.Name}}")
    assert info.returncode == 0 and info.stdout.strip(), info.stderr
    events = podman_remote(host, "events", "--since", "10m", "--stream=false", "--filter", "container=" + name,
                           "--format", "{{.Status}}")
    assert events.returncode == 0 and "start" in events.stdout.split(), events.stderr
    # Refused: each fails and porthole logged why. (podman 4.3's `logs` reads the JSON error
    # body as a multiplexed stream, so its own message is "lost synchronization", not ours.)
    for args, logged in ((["logs", name], "/logs is a dangerous read"), (["top", name], "/top is a dangerous read"),
                         (["stop", name], "method POST is never forwarded"),
                         (["rm", "-f", name], "method DELETE is never forwarded"),
                         (["image", "inspect", podman.image], "encoded slash")):
        before = len(refusals(porthole_for_podman))
        r = podman_remote(host, *args)
        assert r.returncode != 0, (args, r.stdout, r.stderr)
        # the log line is written once the answer is delivered, and read from porthole's stderr
        # by a thread: it may land a moment after podman exits
        assert support.wait_until(lambda: any(logged in reason for reason in refusals(porthole_for_podman)[before:]),
                                  5), (args, r.stderr)
    assert podman.cli("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"
    forwarded = [line["target"] for line in porthole_for_podman.logs()
                 if line.get("event") == "request" and line.get("decision") == "allow"]
    assert any(t.startswith("/v4.") and "/libpod/containers/json?" in t for t in forwarded), forwarded
