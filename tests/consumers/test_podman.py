"""Porthole in front of Podman's service socket (a private `podman system service`, Debian's
podman 4): the docker CLI's read commands through the shipped default profile, and `podman
--remote` through the shipped `podman` profile for Podman's own API (libpod). (The podman
profile's decisions alone: tests/unit/core/test_presets.py.)

Containers run with no network (the private podman's default, and --network none)."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

import support
from policies import shipped_document

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

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
                          rules=support.write_rules(shipped_document()))
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
