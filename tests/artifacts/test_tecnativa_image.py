"""The Tecnativa drop-in through the image, run the way a user swapping
tecnativa/docker-socket-proxy for porthole would run it, against the session's private dockerd,
checked with the docker CLI. (The pure mapping: tests/unit/ops/test_tecnativa.py; the proxy
process: tests/daemon/test_tecnativa.py.)"""
from __future__ import annotations

import os

import pytest

import support
from artifacts import HARDENED, IMAGE, SOCK_GID, build_env, build_sh, ensure_binary, listener_dir, wait_socket


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_image_drop_in(dockerd, docker_direct, busybox_image, containers):
    image = _image(dockerd)
    name = "ph-tecnativa-img-%d" % os.getpid()
    containers(busybox_image, name=name)
    started = []

    def docker_run(*args, detach=True):
        r = support.docker_cli(dockerd.url, "run", *(["-d"] if detach else ["--rm"]), *args, timeout=90)
        if detach:
            assert r.returncode == 0, r.stderr
            started.append(r.stdout.strip().splitlines()[-1])
        return r

    socket_mount = ["-v", "%s:/var/run/docker.sock" % dockerd.socket_path, "--group-add", str(SOCK_GID)]
    try:
        # --check through the image prints what the variables made
        r = docker_run(*HARDENED, "-e", "CONTAINERS=1", "-e", "IMAGES=0", image, "--check", detach=False)
        assert r.returncode == 0 and "policy from the Tecnativa-style environment variables" in r.stdout, r.stderr
        # a write variable: the container exits 2 at once, saying why
        r = docker_run(*HARDENED, *socket_mount, "-e", "CONTAINERS=1", "-e", "POST=1", image, detach=False)
        assert r.returncode == 2 and "porthole never forwards writes: POST=1" in r.stderr, (r.returncode, r.stderr)

        ldir = listener_dir()
        docker_run(*HARDENED, *socket_mount, "-v", "%s:/run/porthole" % ldir, "-e", "CONTAINERS=1",
                   "-e", "IMAGES=0", "-e", "ALLOW_LOGS=1", image,
                   "--listen", "unix:///run/porthole/docker.sock?mode=0666")
        wait_socket(ldir / "docker.sock")
        host = "unix://%s" % (ldir / "docker.sock")
        assert name in support.docker_cli(host, "ps", "--format", "{{.Names}}", check=True).stdout.split()
        assert support.docker_cli(host, "version", "--format", "{{.Server.Version}}", check=True).stdout.strip()
        assert support.docker_cli(host, "logs", name).returncode == 0
        for args in (["images"], ["info"], ["top", name], ["run", "--rm", "--network", "none", busybox_image, "true"]):
            r = support.docker_cli(host, *args, timeout=60)
            assert r.returncode != 0 and "porthole:" in r.stderr, (args, r.stdout, r.stderr)

        # no variables: the image's own default (/rules.json), and a file mounted over it replaces it
        rules = support.write_rules({"version": 1, "profiles": {"default": {"rules": [
            {"method": ["GET", "HEAD"], "path": "/_ping"}, {"method": "GET", "path": "/images/json"}]}}})
        os.chmod(rules, 0o644)
        ldir2 = listener_dir()
        docker_run(*HARDENED, *socket_mount, "-v", "%s:/run/porthole" % ldir2, "-v", "%s:/rules.json:ro" % rules,
                   image, "--listen", "unix:///run/porthole/docker.sock?mode=0666")
        wait_socket(ldir2 / "docker.sock")
        host2 = "unix://%s" % (ldir2 / "docker.sock")
        assert support.docker_cli(host2, "images", "-q", check=True).stdout.strip()
        assert support.docker_cli(host2, "ps").returncode != 0
    finally:
        for cid in started:
            support.docker_cli(dockerd.url, "rm", "-f", "-v", cid, timeout=60)


def _image(dockerd):
    """The image the artifact tests use, built by `./build.sh image` when the daemon lacks it."""
    if support.docker_cli(dockerd.url, "image", "inspect", IMAGE).returncode != 0:
        ensure_binary()
        r = build_sh("image", env=build_env(dockerd))
        assert r.returncode == 0, r.stderr[-3000:]
    return IMAGE
