"""The image (Dockerfile.distroless, `./build.sh image`) in the session's private dockerd:
`./build.sh check` passes on it and fails on breaching derivatives, and the container runs
hardened (read-only with no writable mount at all, no capabilities, no network), rootless, as
PID 1 and its only process, healthy within seconds, reloads on `docker kill -s HUP`, and stops
cleanly.

Containers are started DIRECTLY on the private daemon with `--network none` and removed
(`docker rm -f -v`) afterwards; derived images are removed too."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time

import pytest

import fake_upstream as fu
import support

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

REPO = support.REPO
IMAGE = "porthole-test/porthole:latest"
SOCK_GID = support.DEFAULT_SOCK_GID
HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "none"]
BUNDLE = REPO / "dist" / "porthole-root"  # the image's root, `./build.sh bundle`
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


def build_sh(*args, env=None, timeout=300):
    return subprocess.run(["./build.sh", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def build_env(dockerd, image=IMAGE, **extra):
    return support.docker_env(dockerd.url, {"PORTHOLE_IMAGE": image, **extra})


@pytest.fixture(scope="session")
def porthole_image(dockerd):
    """porthole-test/porthole:latest built into the session dockerd by `./build.sh image`."""
    r = build_sh("image", env=build_env(dockerd))
    assert r.returncode == 0, "./build.sh image failed (%s):\n%s\n%s" % (
        r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    return IMAGE


def run_check(dockerd, image=IMAGE, **extra):
    r = build_sh("check", env=build_env(dockerd, image, **extra))
    try:
        summary = json.loads(r.stdout)
    except ValueError:
        raise AssertionError("./build.sh check printed no JSON (exit %s):\n%s\n%s" % (r.returncode, r.stdout, r.stderr))
    return r.returncode, summary


def failing(summary):
    return {c["check"] for c in summary["checks"] if not c["ok"]}


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


def inspect(docker_direct, cid):
    return docker_direct.api.inspect_container(cid)


def wait_health(docker_direct, cid, want, timeout=45.0):
    """Wait until the container's health status is `want`; assert with the health log otherwise."""
    last = {}

    def reached():
        state = inspect(docker_direct, cid)["State"]
        last["state"] = state
        return (state.get("Health") or {}).get("Status") == want or not state["Running"]

    support.wait_until(reached, timeout, 0.25)
    state = last["state"]
    health = state.get("Health") or {}
    assert state["Running"], "container stopped (exit %s): %s" % (state.get("ExitCode"), state.get("Error"))
    assert health.get("Status") == want, "health %r, not %r, after %ss; log: %s" % (
        health.get("Status"), want, timeout, json.dumps(health.get("Log", [])[-3:], indent=1))


def listener_dir():
    """A 0777 directory for the container's unix listener (mounted at /run/porthole)."""
    return support.short_tmpdir("ph-ctr-", 0o777)


def wait_socket(path, timeout=20.0):
    assert support.wait_until(lambda: support.can_connect(path), timeout, 0.1), \
        "%s never accepted connections" % path


def layer_entries(dockerd, image):
    """{path: (type, mode, uid, gid, sha256 of a file or None)} over all layers of `docker save`
    (legacy or OCI layout)."""
    saved = subprocess.run([support.DOCKER_CLI, "save", image], env=support.docker_env(dockerd.url),
                           capture_output=True, timeout=120, check=True).stdout
    entries = {}
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        for member in outer.getmembers():
            if not member.isfile() or not (member.name.endswith("layer.tar") or member.name.startswith("blobs/")):
                continue
            data = outer.extractfile(member).read()
            try:
                layer = tarfile.open(fileobj=io.BytesIO(data))
            except tarfile.ReadError:
                continue  # config or manifest blob
            with layer:
                for m in layer.getmembers():
                    name = m.name.rstrip("/").removeprefix("./")
                    if not name:
                        continue
                    kind = "dir" if m.isdir() else "file" if m.isfile() else "other:%s" % m.type
                    digest = hashlib.sha256(layer.extractfile(m).read()).hexdigest() if m.isfile() else None
                    entries[name] = (kind, m.mode & 0o7777, m.uid, m.gid, digest)
    return entries


# --------------------------------------------------------------------------
# ./build.sh check


def test_check_passes(dockerd, porthole_image):
    rc, summary = run_check(dockerd)
    assert rc == 0 and summary["ok"], json.dumps(summary, indent=1)
    assert summary["image"] == IMAGE
    names = {c["check"] for c in summary["checks"]}
    assert {"user is numeric and not root", "only the expected files", "no shell"} <= names, names
    assert any(n.startswith("image size <=") for n in names), names
    assert failing(summary) == set()


def test_image_config_and_contents(dockerd, docker_direct, porthole_image):
    info = docker_direct.api.inspect_image(porthole_image)
    config = info["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/porthole"]
    assert config["Cmd"] == ["--listen", "tcp://0.0.0.0:2375"]
    assert config["Healthcheck"]["Test"] == ["CMD", "/porthole", "--healthcheck"]
    # healthy within seconds of the start, not after a 30 s interval
    assert config["Healthcheck"]["Interval"] <= 5 * 10**9, config["Healthcheck"]
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
    assert failing(summary) == {"user is numeric and not root"}, json.dumps(summary, indent=1)


def test_check_fails_for_a_shell(dockerd, derived_image):
    busybox = open(support.BUSYBOX, "rb").read()
    tag = derived_image("porthole-test/porthole-shell:latest", ["COPY sh /bin/sh"], {"sh": (busybox, 0o755)})
    rc, summary = run_check(dockerd, tag)
    assert rc == 1, json.dumps(summary, indent=1)
    assert {"no shell", "only the expected files"} <= failing(summary), json.dumps(summary, indent=1)


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
    """tcp://0.0.0.0:2375 on a --network none container: --healthcheck finds it via the state file."""
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
    and the only process, becomes healthy by the image's own HEALTHCHECK within seconds,
    reloads on `docker kill -s HUP`, and a SIGKILL leaves nothing behind."""
    volumes_before = set(support.docker_cli(dockerd.url, "volume", "ls", "-q", check=True).stdout.split())
    started = time.monotonic()
    cid = run_proxy_container(*HARDENED, "-v", "%s:/var/run/docker.sock" % dockerd.socket_path,
                              "--group-add", str(SOCK_GID), porthole_image)
    info = inspect(docker_direct, cid)
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert not info["HostConfig"].get("Tmpfs"), info["HostConfig"].get("Tmpfs")
    assert [m["Destination"] for m in info["Mounts"]] == ["/var/run/docker.sock"], info["Mounts"]

    wait_health(docker_direct, cid, "healthy", timeout=20)  # the image's interval: no override
    healthy_after = time.monotonic() - started
    assert healthy_after < 20, healthy_after

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
