"""The arm64 artifacts, built on this x86-64 machine by `./build.sh --arch arm64` (PyInstaller and
staticx run inside an emulated arm64 Debian root): dist/porthole-arm64 is a static aarch64
executable that, run under qemu-aarch64 (binfmt_misc), proxies the suite's private daemon; it
builds reproducibly; the image built from it says arm64 and passes `./build.sh --arch arm64 check`.

Out of the default run (marker `arm64`, deselected in pytest.ini): the emulated build takes
minutes. `./build.sh --arch arm64 test` runs this file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import fake_upstream as fu
import support
from artifacts import (BUILD_INPUTS, REPO, build_env, build_sh, check_binary_sbom, check_cli_through, check_image_sbom,
                       ensure_binary, layer_entries, listener_dir, proxy_version, run_check, tail, wait_health,
                       wait_socket)

pytestmark = [pytest.mark.arm64, pytest.mark.timeout(3600)]

IMAGE = "porthole-test/porthole:latest-arm64"
SOCK_GID = support.DEFAULT_SOCK_GID
BINFMT_ENTRY = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
BUILD_TIMEOUT = 3000  # a cold build (debootstrap of the root, pip, freezing) is emulated
READY_TIMEOUT = 90  # start under emulation: unpacking and importing run through qemu


@pytest.fixture(scope="session")
def arm64_binary() -> Path:
    """dist/porthole-arm64, (re)built when older than any of its inputs (build.sh's rule)."""
    return ensure_binary("arm64", timeout=BUILD_TIMEOUT)


@pytest.fixture(scope="session")
def arm64_image(dockerd, arm64_binary):
    r = build_sh("--arch", "arm64", "image", env=build_env(dockerd, IMAGE), timeout=600)
    assert r.returncode == 0, "./build.sh --arch arm64 image failed (%s):\n%s\n%s" % (
        r.returncode, tail(r.stdout), tail(r.stderr))
    return IMAGE


# --------------------------------------------------------------------------
# the file


def test_static_aarch64_elf(arm64_binary):
    described = subprocess.run(["file", "-b", str(arm64_binary)], capture_output=True, text=True,
                               check=True).stdout
    assert described.startswith("ELF 64-bit LSB executable, ARM aarch64"), described
    assert "statically linked" in described, described
    headers = subprocess.run(["readelf", "-hlW", str(arm64_binary)], capture_output=True, text=True,
                             check=True).stdout
    assert "AArch64" in headers and "INTERP" not in headers, headers
    dynamic = subprocess.run(["readelf", "-dW", str(arm64_binary)], capture_output=True, text=True,
                             check=True).stdout
    assert "NEEDED" not in dynamic, dynamic


def test_sha256_file_matches(arm64_binary):
    recorded = (arm64_binary.parent / "porthole-arm64.sha256").read_text().split()
    assert recorded == [hashlib.sha256(arm64_binary.read_bytes()).hexdigest(), "porthole-arm64"], recorded


# --------------------------------------------------------------------------
# running it under qemu-aarch64


def test_version_with_qemu_explicitly(arm64_binary):
    """qemu-aarch64-static named on the command line; the programs the bootloaders unpack and
    exec are arm64 too, and reach qemu through binfmt_misc."""
    r = subprocess.run(["qemu-aarch64-static", str(arm64_binary), "--version"], capture_output=True, text=True,
                       timeout=READY_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("porthole %s " % proxy_version()), r.stdout


@pytest.mark.docker
def test_proxies_the_daemon_under_emulation(arm64_binary, dockerd, busybox_image, containers):
    """As uid 65532 with the socket's group, its bundled rules: ping, `docker ps` and friends
    through it, `docker run` refused, nothing created."""
    assert BINFMT_ENTRY.read_text().splitlines()[0] == "enabled"
    name = "ph-arm64-%d" % os.getpid()
    containers(busybox_image, name=name, start=False)
    port = support.free_port()
    p = support.ProxyProcess(listen=["tcp://127.0.0.1:%d" % port], upstream=dockerd.url, groups=[SOCK_GID],
                             proxy_path=arm64_binary, rules=False)
    with p.running(ready_timeout=READY_TIMEOUT):
        # the kernel runs it through qemu: /proc/PID/exe is the interpreter binfmt_misc names
        interpreter = next(line.split()[1] for line in BINFMT_ENTRY.read_text().splitlines()
                           if line.startswith("interpreter "))
        assert os.path.realpath("/proc/%d/exe" % p.pid) == os.path.realpath(interpreter)
        ping = fu.get(("127.0.0.1", port), "/_ping", timeout=30)
        assert (ping.status, ping.body) == (200, b"OK"), (ping.status, ping.body)
        check_cli_through("tcp://127.0.0.1:%d" % port, dockerd.url, name, busybox_image)


# --------------------------------------------------------------------------
# reproducibility


def test_reproducible_build(arm64_binary):
    """Two builds from copies at different paths, with the same SOURCE_DATE_EPOCH, side by side
    in the same cached root, are byte-identical (test_binary's check, for arm64)."""
    copies = [support.short_tmpdir("ph-repro-arm64-a-"), support.short_tmpdir("ph-repro-arm64-bbbbbb-") / "deeper"]
    procs = []
    for copy in copies:
        copy.mkdir(parents=True, exist_ok=True)
        for name in BUILD_INPUTS:
            (copy / name).parent.mkdir(parents=True, exist_ok=True)  # patches/
            shutil.copy2(REPO / name, copy / name)
        env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", TMPDIR=str(copy))
        procs.append(subprocess.Popen(["./build.sh", "--arch", "arm64"], cwd=copy, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    try:
        outputs = [p.communicate(timeout=BUILD_TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            support.kill_group(p)
    for copy, p, out in zip(copies, procs, outputs):
        assert p.returncode == 0, "build in %s failed (%s):\n%s" % (copy, p.returncode, tail(out))
    digests = [hashlib.sha256((c / "dist" / "porthole-arm64").read_bytes()).hexdigest() for c in copies]
    for copy, digest in zip(copies, digests):
        assert (copy / "dist" / "porthole-arm64.sha256").read_text().split()[0] == digest
    assert digests[0] == digests[1], "builds differ: %s\n%s" % (
        dict(zip(map(str, copies), digests)), "\n".join(tail(o, 1500) for o in outputs))
    # and one SBOM (issue 22: item 3), made from what each build shipped
    sboms = [(c / "dist" / "porthole-arm64.spdx.json").read_bytes() for c in copies]
    assert sboms[0] == sboms[1]


def test_binary_sbom_lists_what_ships(arm64_binary):
    """dist/porthole-arm64.spdx.json: what test_sbom checks for amd64, with the arm64 root's Debian
    packages (issue 22: item 3)."""
    document = check_binary_sbom(arm64_binary, "arm64")
    assert "porthole!/ld-linux-aarch64.so.1" in {f["fileName"].removeprefix("./") for f in document["files"]}


# --------------------------------------------------------------------------
# the image


@pytest.mark.docker
def test_image_sbom_lists_what_ships(dockerd, arm64_image):
    document = check_image_sbom(dockerd, arm64_image, REPO / "dist" / "porthole-root-arm64", "arm64")
    assert "lib/ld-linux-aarch64.so.1" in {f["fileName"].removeprefix("./") for f in document["files"]}


@pytest.mark.docker
def test_two_engines_build_one_image_id(dockerd, docker_direct, arm64_image, tmp_path):
    """A fresh engine builds the arm64 image ID the session's engine built (issue 22: item 4)."""
    other = support.Dockerd()
    other.start(tmp_path / "other-dockerd", SOCK_GID)
    try:
        r = build_sh("--arch", "arm64", "image", env=build_env(other, IMAGE), timeout=600)
        assert r.returncode == 0, tail(r.stderr)
        built = support.docker_cli(other.url, "image", "inspect", "-f", "{{.Id}}", IMAGE, check=True).stdout.strip()
    finally:
        other.stop()
    assert built == docker_direct.api.inspect_image(arm64_image)["Id"]


@pytest.mark.docker
def test_image_is_arm64_and_passes_check(dockerd, docker_direct, arm64_image, arm64_binary):
    info = docker_direct.api.inspect_image(arm64_image)
    assert (info["Os"], info["Architecture"]) == ("linux", "arm64")
    assert info["Config"]["Entrypoint"] == ["/porthole"]
    # the image holds the arm64 one-folder bundle (./build.sh --arch arm64 bundle), as the amd64
    # image holds the amd64 one: its program is an aarch64 ELF, the one built
    program = REPO / "dist" / "porthole-root-arm64" / "porthole"
    entries = layer_entries(dockerd, arm64_image)
    assert entries["porthole"][4] == hashlib.sha256(program.read_bytes()).hexdigest()
    described = subprocess.run(["file", "-b", str(program)], capture_output=True, text=True, check=True).stdout
    assert "ARM aarch64" in described, described

    rc, summary = run_check(dockerd, IMAGE, arch=("--arch", "arm64"))
    assert rc == 0 and summary["ok"], json.dumps(summary, indent=1)
    assert {"check": "platform is linux/arm64", "ok": True, "detail": "linux/arm64"} in summary["checks"]
    # the amd64 check refuses it, on its platform alone
    rc, summary = run_check(dockerd, IMAGE, arch=("--arch", "amd64"))
    assert rc == 1, json.dumps(summary, indent=1)
    assert {c["check"] for c in summary["checks"] if not c["ok"]} == {"platform is linux/amd64"}, \
        json.dumps(summary, indent=1)


@pytest.mark.docker
def test_image_runs_under_emulation(dockerd, docker_direct, arm64_image, busybox_image, containers,
                                    run_proxy_container):
    """The private amd64 daemon runs the arm64 image through binfmt_misc, hardened as in the
    README: it reads through the unix listener, refuses a write and becomes healthy."""
    name = "ph-arm64-img-%d" % os.getpid()
    containers(busybox_image, name=name, start=False)
    ldir = listener_dir()
    cid = run_proxy_container(
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "none",
        "-v", "%s:/var/run/docker.sock" % dockerd.socket_path, "--group-add", str(SOCK_GID),
        "-v", "%s:/run/porthole" % ldir, "--health-interval", "2s", "--health-timeout", "30s",
        "--health-start-period", "0s", arm64_image, "--listen", "unix:///run/porthole/docker.sock?mode=0666")
    wait_socket(ldir / "docker.sock", timeout=READY_TIMEOUT)
    check_cli_through("unix://%s" % (ldir / "docker.sock"), dockerd.url, name, busybox_image)
    wait_health(docker_direct, cid, "healthy", timeout=READY_TIMEOUT)
