"""`./build.sh publish` (issue 22: items 1, 2, 4) against Debian's docker-registry on 127.0.0.1:
one tag whose manifest list names linux/amd64 and linux/arm64, each the image build.sh built (the
same image ID); `docker pull` of the tag by a fresh engine on this machine gets the amd64 image,
which runs read-only; the arm64 image from the registry passes `./build.sh --arch arm64 check`;
a second publish writes nothing to the registry.

In the default run: it builds the arm64 image under emulation, which a cold cache makes take
minutes (the root under /var/cache/porthole; docs/releasing.md has the figures)."""
from __future__ import annotations

import json

import pytest

import support
from artifacts import HARDENED, Registry, build_env, build_sh, proxy_version, run_check, tail

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]

PUBLISH_TIMEOUT = 3000  # cold: the arm64 root, its venv and the freezing, all emulated
LIST_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"


@pytest.fixture
def registry(tmp_path):
    r = Registry().start(tmp_path / "registry")
    try:
        yield r
    finally:
        r.stop()


def image_id(url, ref):
    return support.docker_cli(url, "image", "inspect", "-f", "{{.Id}}", ref, check=True).stdout.strip()


def test_publish_one_multi_arch_tag(dockerd, registry, tmp_path):
    target = "%s/porthole/porthole:t1" % registry.address
    r = build_sh("publish", env=build_env(dockerd, target), timeout=PUBLISH_TIMEOUT)
    assert r.returncode == 0, "./build.sh publish failed (%s):\n%s\n%s" % (r.returncode, tail(r.stdout), tail(r.stderr))

    # the tag is a manifest list of the two images build.sh built, by digest
    media_type, _, listed = registry.manifest("porthole/porthole", "t1")
    assert media_type == LIST_TYPE, media_type
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]): m for m in listed["manifests"]}
    assert sorted(platforms) == [("linux", "amd64"), ("linux", "arm64")], listed
    assert platforms[("linux", "arm64")]["platform"].get("variant") == "v8"
    for arch in ("amd64", "arm64"):
        _, digest, manifest = registry.manifest("porthole/porthole", platforms[("linux", arch)]["digest"])
        assert digest == platforms[("linux", arch)]["digest"]
        assert manifest["config"]["digest"] == image_id(dockerd.url, "%s-%s" % (target, arch)), arch

    # a fresh engine pulls the tag: the amd64 image, the one built, and it runs read-only
    other = support.Dockerd()
    other.start(tmp_path / "pulling-dockerd", support.DEFAULT_SOCK_GID)
    try:
        support.docker_cli(other.url, "pull", "-q", target, check=True, timeout=300)
        info = json.loads(support.docker_cli(other.url, "image", "inspect", target, check=True).stdout)[0]
        assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
        assert info["Id"] == image_id(dockerd.url, target + "-amd64")
        ran = support.docker_cli(other.url, "run", "--rm", *HARDENED, target, "--version",
                                 timeout=60)
        assert ran.returncode == 0 and ran.stdout.startswith("porthole %s (commit " % proxy_version()), ran
        # the arm64 image of the same tag passes the arm64 check, from the registry
        support.docker_cli(other.url, "pull", "-q", "--platform", "linux/arm64", target, check=True, timeout=300)
        rc, summary = run_check(other, target, arch=("--arch", "arm64"))
        assert rc == 0 and summary["ok"], json.dumps(summary, indent=1)
    finally:
        other.stop()

    # again: nothing new is pushed, nothing in the registry is written
    before = registry.stored()
    r = build_sh("publish", env=build_env(dockerd, target), timeout=PUBLISH_TIMEOUT)
    assert r.returncode == 0, "second publish failed:\n%s" % tail(r.stderr)
    assert registry.stored() == before
    assert "pushing" not in r.stderr and r.stderr.count("the registry has") == 3, r.stderr


def test_publish_needs_a_tag(dockerd):
    for target in ("", "127.0.0.1:5000/porthole", "127.0.0.1:5000/porthole@sha256:" + "0" * 64):
        r = build_sh("publish", env=build_env(dockerd, target))
        assert r.returncode != 0 and "REGISTRY/NAME:TAG" in r.stderr, (target, r.stderr)
