"""The image (Dockerfile.distroless, `./build.sh image`) in the session's private dockerd:
`./build.sh check` passes on it and fails on breaching derivatives, and the container runs
hardened (read-only with no writable mount at all, no capabilities, no network), rootless, as
PID 1 and its only process, healthy by its own schedule, reloads on `docker kill -s HUP`, and stops
cleanly.

Containers are started DIRECTLY on the private daemon with `--network none` and removed
(`docker rm -f -v`) afterwards; derived images are removed too."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

import fake_upstream as fu
import support
from artifacts import (BUNDLE, HARDENED, HEALTHCHECK_SCHEDULE, IMAGE, REPO, SOCK_GID, build_env, build_sh,
                       engine_api_version, image_config, inspect, layer_entries, listener_dir, run_check, tail,
                       wait_health, wait_socket)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

# path -> (type, mode, uid, gid) of the entries beside the bundle's
RUN_DIRS = {
    "run": ("dir", 0o755, None, None),
    "run/porthole": ("dir", 0o755, 65532, 65532),
}


def expected_files():
    """path -> (type, mode, uid, gid) of every entry the image's layers must hold: the bundle's
    tree (root-owned, read-only; executable only the program, loader and libraries) and /run."""
    out = dict(RUN_DIRS)
    for path in sorted(BUNDLE.rglob("*")):
        st = path.lstat()
        kind = "dir" if path.is_dir() else "file" if path.is_file() else "other"
        out[str(path.relative_to(BUNDLE))] = (kind, st.st_mode & 0o7777, 0, 0)
    return out


def failing(summary):
    return {c["check"] for c in summary["checks"] if not c["ok"]}


# --------------------------------------------------------------------------
# ./build.sh check


def test_check_passes(dockerd, porthole_image):
    rc, summary = run_check(dockerd)
    assert rc == 0 and summary["ok"], json.dumps(summary, indent=1)
    assert summary["image"] == IMAGE
    names = {c["check"] for c in summary["checks"]}
    assert {"user is numeric and not root", "only the expected files", "no shell", "healthcheck schedule"} <= names, names
    assert any(n.startswith("image size <=") for n in names), names
    assert failing(summary) == set()


def test_image_config_and_contents(dockerd, docker_direct, porthole_image):
    info = docker_direct.api.inspect_image(porthole_image)
    config = info["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/porthole"]
    assert config["Cmd"] == ["--listen", "tcp://0.0.0.0:2375"]
    # every 30 s, every second while it starts (the start interval: in the config, which an engine
    # older than Docker 25 leaves out of `docker image inspect`)
    assert image_config(dockerd, porthole_image)["Healthcheck"] == HEALTHCHECK_SCHEDULE
    shown = {key: value for key, value in HEALTHCHECK_SCHEDULE.items()
             if key != "StartInterval" or engine_api_version(dockerd) >= (1, 44)}
    assert config["Healthcheck"] == shown, config["Healthcheck"]
    assert not config.get("Volumes"), config.get("Volumes")  # no VOLUME: nothing writable needed
    assert info["Size"] <= 22_000_000, info["Size"]

    entries = layer_entries(dockerd, porthole_image)
    expected = expected_files()
    assert set(entries) == set(expected), sorted(set(entries) ^ set(expected))
    for path, (kind, mode, uid, gid) in expected.items():
        got = entries[path]
        assert got[:2] == (kind, mode), (path, got)
        if uid is not None:
            assert got[2:4] == (uid, gid), (path, got)
    # the files are the bundle's, the rules the repo's
    for path, (kind, *_rest) in expected.items():
        if kind == "file":
            assert entries[path][4] == hashlib.sha256((BUNDLE / path).read_bytes()).hexdigest(), path
    assert entries["rules.json"][4] == hashlib.sha256((REPO / "rules.json").read_bytes()).hexdigest()
    assert not any(name.startswith(("bin/", "sbin/", "usr/bin/", "tmp")) for name in entries), sorted(entries)

    shell = support.docker_cli(dockerd.url, "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh",
                               porthole_image, "-c", "true", timeout=60)
    assert shell.returncode != 0
    assert "/bin/sh" in shell.stderr and "no such file" in shell.stderr.lower(), shell.stderr


def test_check_fails_for_root_user(dockerd, derived_image):
    tag = derived_image("porthole-test/porthole-root:latest", ["USER 0"])
    rc, summary = run_check(dockerd, tag)
    assert rc == 1 and summary["ok"] is False, json.dumps(summary, indent=1)
    # (an engine older than Docker 25 builds what it derives without the start interval)
    lost = {"healthcheck schedule"} if engine_api_version(dockerd) < (1, 44) else set()
    assert failing(summary) == {"user is numeric and not root"} | lost, json.dumps(summary, indent=1)


def test_check_fails_for_a_shell(dockerd, derived_image):
    busybox = open(support.BUSYBOX, "rb").read()
    tag = derived_image("porthole-test/porthole-shell:latest", ["COPY sh /bin/sh"], {"sh": (busybox, 0o755)})
    rc, summary = run_check(dockerd, tag)
    assert rc == 1, json.dumps(summary, indent=1)
    assert {"no shell", "only the expected files"} <= failing(summary), json.dumps(summary, indent=1)


def test_check_fails_for_another_healthcheck_schedule(dockerd, derived_image):
    """Every 5 s, as before, and no start interval: `check` says so (issue "(3 of 5)", item 2)."""
    tag = derived_image("porthole-test/porthole-every-5s:latest",
                        ['HEALTHCHECK --interval=5s --timeout=5s --retries=3 CMD ["/porthole", "--healthcheck"]'])
    rc, summary = run_check(dockerd, tag)
    assert rc == 1, json.dumps(summary, indent=1)
    assert failing(summary) == {"healthcheck schedule"}, json.dumps(summary, indent=1)


def test_the_same_inputs_give_the_same_image_id(dockerd, docker_direct, porthole_image):
    """The config is rewritten after the build (start interval, platform) as a function of the
    built image alone, and the built image stays in the engine as the build's cache: building
    again gives the same image ID."""
    before = docker_direct.api.inspect_image(porthole_image)["Id"]
    r = build_sh("image", env=build_env(dockerd))
    assert r.returncode == 0, tail(r.stderr)
    assert docker_direct.api.inspect_image(porthole_image)["Id"] == before


@pytest.mark.docker
def test_two_engines_build_one_image_id(dockerd, docker_direct, porthole_image, tmp_path):
    """A fresh engine builds the image ID the session's engine built: no time of the build, no
    build container and no engine version end up in the image (issue 22: item 4)."""
    other = support.Dockerd()
    other.start(tmp_path / "other-dockerd", SOCK_GID)
    try:
        r = build_sh("image", env=build_env(other))
        assert r.returncode == 0, tail(r.stderr)
        built = support.docker_cli(other.url, "image", "inspect", "-f", "{{.Id}}", IMAGE, check=True).stdout.strip()
    finally:
        other.stop()
    assert built == docker_direct.api.inspect_image(porthole_image)["Id"]


def test_check_fails_for_size_bound(dockerd, porthole_image):
    rc, summary = run_check(dockerd, PORTHOLE_MAX_IMAGE_BYTES="1000")
    assert rc == 1, json.dumps(summary, indent=1)
    assert failing(summary) == {"image size <= 1000 bytes"}, json.dumps(summary, indent=1)


# --------------------------------------------------------------------------
# running the image


def test_hardened_unix_listener(dockerd, docker_direct, porthole_image, busybox_image, containers,
                                run_proxy_container):
    name = "ph-img-direct-%d" % os.getpid()
    containers(busybox_image, name=name, start=False)
    ldir = listener_dir()
    cid = run_proxy_container(
        *HARDENED, "-v", "%s:/var/run/docker.sock" % dockerd.socket_path, "--group-add", str(SOCK_GID),
        "-v", "%s:/run/porthole" % ldir, "--health-interval", "1s", "--health-start-period", "0s",
        porthole_image, "--listen", "unix:///run/porthole/docker.sock?mode=0666")
    wait_socket(ldir / "docker.sock")
    host = "unix://%s" % (ldir / "docker.sock")

    ps = support.docker_cli(host, "ps", "-a", "--format", "{{.Names}}", check=True)
    assert name in ps.stdout.split(), ps.stdout
    inspected = json.loads(support.docker_cli(host, "inspect", name, check=True).stdout)
    assert inspected[0]["Name"] == "/" + name
    assert inspected[0]["Id"] == docker_direct.containers.get(name).id

    before = sorted(c.id for c in docker_direct.containers.list(all=True))
    run = support.docker_cli(host, "run", "--rm", "--network", "none", busybox_image, "true", timeout=60)
    assert run.returncode != 0, run.stdout
    assert "porthole:" in run.stderr, run.stderr
    assert sorted(c.id for c in docker_direct.containers.list(all=True)) == before

    wait_health(docker_direct, cid, "healthy")
    state = inspect(docker_direct, cid)
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    # the container's one process (porthole, no bootloader): uid/gid 65532, the socket's group,
    # no capabilities, no_new_privs
    top = support.docker_cli(dockerd.url, "top", cid, "-eo", "pid", check=True).stdout
    pids = [int(line.split()[0]) for line in top.splitlines()[1:] if line.strip()]
    assert len(pids) == 1, pids
    for pid in pids:
        status = dict(line.split(":\t", 1) for line in open("/proc/%d/status" % pid).read().splitlines()
                      if ":\t" in line)
        assert status["Uid"].split() == ["65532"] * 4, (pid, status["Uid"])
        assert status["Gid"].split() == ["65532"] * 4, (pid, status["Gid"])
        assert str(SOCK_GID) in status["Groups"].split(), (pid, status["Groups"])
        assert "0" not in status["Groups"].split(), (pid, status["Groups"])
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, (pid, status["CapEff"])
        assert status["NoNewPrivs"].strip() == "1", pid


def test_default_cmd_becomes_healthy(dockerd, docker_direct, porthole_image, run_proxy_container):
    """tcp://0.0.0.0:2375 on a --network none container: --healthcheck finds it in PID 1's command line."""
    cid = run_proxy_container(
        *HARDENED, "-v", "%s:/var/run/docker.sock" % dockerd.socket_path, "--group-add", str(SOCK_GID),
        "--health-interval", "1s", "--health-start-period", "0s", porthole_image)
    wait_health(docker_direct, cid, "healthy")


def test_without_socket_group(dockerd, docker_direct, porthole_image, run_proxy_container):
    ldir = listener_dir()
    cid = run_proxy_container(
        *HARDENED, "-v", "%s:/var/run/docker.sock" % dockerd.socket_path,
        "-v", "%s:/run/porthole" % ldir, "--health-interval", "1s", "--health-start-period", "0s",
        "--health-retries", "1", porthole_image, "--listen", "unix:///run/porthole/docker.sock?mode=0666")
    wait_socket(ldir / "docker.sock")
    r = fu.get(ldir / "docker.sock", "/v1.41/containers/json", timeout=10)
    assert r.status == 502, (r.status, r.body)
    message = json.loads(r.body)["message"]
    assert message.startswith("porthole:"), message
    assert "2375" in message and "--group-add" in message, message
    wait_health(docker_direct, cid, "unhealthy")
    assert inspect(docker_direct, cid)["State"]["Running"] is True


def test_docker_stop_is_prompt_and_clean(dockerd, docker_direct, porthole_image, run_proxy_container):
    """SIGTERM reaches porthole, PID 1 (no bootloader in between)."""
    ldir = listener_dir()
    cid = run_proxy_container(
        *HARDENED, "-v", "%s:/var/run/docker.sock" % dockerd.socket_path, "--group-add", str(SOCK_GID),
        "-v", "%s:/run/porthole" % ldir, porthole_image, "--listen", "unix:///run/porthole/docker.sock?mode=0666")
    wait_socket(ldir / "docker.sock")
    started = time.monotonic()
    r = support.docker_cli(dockerd.url, "stop", cid, timeout=60)  # default: SIGKILL after 10 s
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert elapsed < 10, "docker stop took %.1fs: SIGTERM did not stop the proxy" % elapsed
    state = inspect(docker_direct, cid)["State"]
    assert state["Running"] is False
    assert state["ExitCode"] == 0, state
    logs = support.docker_cli(dockerd.url, "logs", cid, timeout=30)
    events = [json.loads(line).get("event") for line in logs.stderr.splitlines() if line.startswith("{")]
    assert "shutdown" in events, logs.stderr[-2000:]


def container_events(dockerd, cid):
    logs = support.docker_cli(dockerd.url, "logs", cid, timeout=30)
    return [json.loads(line) for line in logs.stderr.splitlines() if line.startswith("{")]


def test_read_only_no_mounts_pid1_reload_kill(dockerd, docker_direct, porthole_image, run_proxy_container):
    """--read-only with no tmpfs and no volume, only the daemon socket mounted: porthole is PID 1
    and the only process, becomes healthy by the image's own HEALTHCHECK (within seconds where
    the engine honours its start interval, Docker >= 25; after its 30 s interval on older ones),
    reloads on `docker kill -s HUP`, and a SIGKILL leaves nothing behind."""
    volumes_before = set(support.docker_cli(dockerd.url, "volume", "ls", "-q", check=True).stdout.split())
    started = time.monotonic()
    cid = run_proxy_container(*HARDENED, "-v", "%s:/var/run/docker.sock" % dockerd.socket_path,
                              "--group-add", str(SOCK_GID), porthole_image)
    info = inspect(docker_direct, cid)
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert not info["HostConfig"].get("Tmpfs"), info["HostConfig"].get("Tmpfs")
    assert [m["Destination"] for m in info["Mounts"]] == ["/var/run/docker.sock"], info["Mounts"]

    within = 10 if engine_api_version(dockerd) >= (1, 44) else 45  # the image's schedule: no override
    wait_health(docker_direct, cid, "healthy", timeout=within)
    healthy_after = time.monotonic() - started
    assert healthy_after < within, healthy_after

    top = support.docker_cli(dockerd.url, "top", cid, "-eo", "pid,args", check=True).stdout.splitlines()[1:]
    assert len(top) == 1, top
    host_pid = int(top[0].split()[0])
    assert top[0].split()[1] == "/porthole", top
    status = open("/proc/%d/status" % host_pid).read()
    assert status.split("NSpid:")[1].split("\n")[0].split()[-1] == "1", "porthole is not PID 1"

    listening = next(e for e in container_events(dockerd, cid) if e.get("event") == "listening")
    assert listening["rules"] == "/rules.json", listening  # a path the user recognises

    support.docker_cli(dockerd.url, "kill", "-s", "HUP", cid, check=True)
    assert support.wait_until(lambda: any(e.get("event") == "reload" for e in container_events(dockerd, cid)),
                              10, 0.1), container_events(dockerd, cid)[-5:]
    reload = next(e for e in container_events(dockerd, cid) if e.get("event") == "reload")
    assert reload["rules"] == "/rules.json", reload
    info = inspect(docker_direct, cid)
    assert info["State"]["Running"] and info["State"]["Pid"] == host_pid, info["State"]

    support.docker_cli(dockerd.url, "kill", "-s", "KILL", cid, check=True)
    assert support.wait_until(lambda: not inspect(docker_direct, cid)["State"]["Running"], 10, 0.1)
    diff = support.docker_cli(dockerd.url, "diff", cid, check=True).stdout.split("\n")
    # nothing written in the container: only the socket's mount point (and its parents) Docker made
    mount_point = {"A /var", "A /var/run", "A /var/run/docker.sock"}
    assert set(filter(None, diff)) <= mount_point, diff
    volumes_after = set(support.docker_cli(dockerd.url, "volume", "ls", "-q", check=True).stdout.split())
    assert volumes_after == volumes_before  # and no anonymous volume made for it
