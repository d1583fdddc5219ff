"""Fixtures of the artifact tests (the helpers: tests/lib/artifacts.py): the frozen binary, the
image built into the session's private dockerd, images derived from it, and containers of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import support
from artifacts import IMAGE, build_env, build_sh, ensure_binary


@pytest.fixture(scope="session")
def porthole_binary() -> Path:
    return ensure_binary()


@pytest.fixture(scope="session")
def porthole_image(dockerd):
    """porthole-test/porthole:latest built into the session dockerd by `./build.sh image`."""
    r = build_sh("image", env=build_env(dockerd))
    assert r.returncode == 0, "./build.sh image failed (%s):\n%s\n%s" % (
        r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    return IMAGE


@pytest.fixture
def derived_image(dockerd, porthole_image):
    """derived_image(tag, dockerfile_lines, files={name: (bytes, mode)}) -> tag: built offline
    (legacy builder, --network none) FROM the test image; removed at teardown."""
    made = []

    def build(tag, lines, files=None):
        ctx = support.short_tmpdir("ph-derive-")
        (ctx / "Dockerfile").write_text("FROM %s\n%s\n" % (porthole_image, "\n".join(lines)))
        for name, (data, mode) in (files or {}).items():
            (ctx / name).write_bytes(data)
            os.chmod(ctx / name, mode)
        made.append(tag)
        r = support.docker_cli(dockerd.url, "build", "-q", "--network", "none", "-t", tag, str(ctx),
                               timeout=120, extra_env={"DOCKER_BUILDKIT": "0"})
        shutil.rmtree(ctx, ignore_errors=True)
        assert r.returncode == 0, "build of %s failed:\n%s\n%s" % (tag, r.stdout, r.stderr)
        return tag

    yield build
    for tag in made:
        support.docker_cli(dockerd.url, "rmi", "-f", tag, timeout=60)
    leftover = support.docker_cli(dockerd.url, "images", "-q", *made).stdout.split()
    assert not leftover, "derived images not removed: %s" % made


@pytest.fixture
def run_proxy_container(dockerd):
    """run_proxy_container(*docker_run_args) -> container id; `docker rm -f -v` at teardown."""
    started = []

    def run(*args):
        r = support.docker_cli(dockerd.url, "run", "-d", *args, timeout=60)
        assert r.returncode == 0, "docker run %s failed:\n%s\n%s" % (" ".join(args), r.stdout, r.stderr)
        cid = r.stdout.strip().splitlines()[-1]
        started.append(cid)
        return cid

    yield run
    for cid in started:
        logs = support.docker_cli(dockerd.url, "logs", "--tail", "30", cid, timeout=30)
        print("---- container %s logs (tail) ----\n%s%s" % (cid[:12], logs.stdout, logs.stderr))
        support.docker_cli(dockerd.url, "rm", "-f", "-v", cid, timeout=60)
