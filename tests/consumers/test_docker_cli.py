"""The real `docker` CLI through the proxy (TCP listener and unix listener),
against the session's private dockerd.

Allowed commands must show the same data as the daemon itself; refused
commands must fail with a "porthole:" message, be logged as denied, and leave
the daemon unchanged (checked through the DIRECT daemon socket)."""

from __future__ import annotations

import json
import os
import queue
import re
import stat
import threading
import uuid

import docker
import pytest

import support

pytestmark = [pytest.mark.docker, pytest.mark.timeout(90)]


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture
def cli_proxy(shared_proxy):
    return shared_proxy


@pytest.fixture
def host(proxy_url):
    """DOCKER_HOST URL of one of the shared proxy's listeners (tcp and unix)."""
    return proxy_url


def _ids(client):
    return sorted(c.id for c in client.containers.list(all=True))


def _denials(proxy, method, target_re):
    rx = re.compile(target_re)
    return [l for l in proxy.logs()
            if l.get("event") == "request" and l.get("method") == method
            and isinstance(l.get("target"), str) and rx.search(l["target"])]


def assert_refused(result, proxy, method, target_re, before_count=0):
    """The CLI failed with a porthole message and the proxy logged a denial."""
    assert result.returncode != 0, "command unexpectedly succeeded:\n%s" % result.stdout
    assert "porthole:" in result.stderr, "no porthole message on stderr: %r" % result.stderr
    ok = support.wait_until(lambda: len(_denials(proxy, method, target_re)) > before_count, 5)
    lines = _denials(proxy, method, target_re)
    assert ok, "no request log line for %s %s; request lines:\n%s" % (
        method, target_re, "\n".join(json.dumps(l) for l in proxy.logs() if l.get("event") == "request"))
    new = lines[before_count:]
    assert any(l.get("decision") == "deny" and l.get("status") == 403 for l in new), new


# --------------------------------------------------------------------------
# allowed commands


def test_unix_listener_socket_mode(cli_proxy):
    st = os.stat(cli_proxy.unix_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert st.st_mode & 0o777 == 0o660
    assert st.st_uid == support.PROXY_UID  # created by the unprivileged proxy


def test_version_shows_server(host, docker_direct):
    server = docker_direct.version()
    r = support.docker_cli(host, "version", check=True)
    assert "Server:" in r.stdout
    assert server["Version"] in r.stdout.split("Server:", 1)[1]
    r = support.docker_cli(host, "version", "--format", "{{json .Server}}", check=True)
    got = json.loads(r.stdout)
    assert got["Version"] == server["Version"]
    assert got["ApiVersion"] == server["ApiVersion"]


def test_info(host, docker_direct):
    info = docker_direct.info()
    r = support.docker_cli(host, "info", "--format", "{{json .}}", check=True)
    got = json.loads(r.stdout)
    assert got["ID"] == info["ID"]
    assert got["ServerVersion"] == info["ServerVersion"]
    assert got["DockerRootDir"] == info["DockerRootDir"]
    r = support.docker_cli(host, "info", check=True)
    assert "Server Version: " + info["ServerVersion"] in r.stdout


def test_ps_lists_direct_containers(host, docker_direct, busybox_image, containers):
    name = "ph-ps-" + uuid.uuid4().hex[:8]
    running = containers(busybox_image, name=name)
    created = containers(busybox_image, name=name + "-c", start=False)
    assert running.attrs["HostConfig"]["NetworkMode"] == "none"

    r = support.docker_cli(host, "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.State}}",
                           check=True)
    rows = dict((line.split()[0], line.split()[1:]) for line in r.stdout.splitlines() if line.strip())
    assert rows.get(running.id) == [name, "running"], r.stdout
    assert rows.get(created.id) == [name + "-c", "created"], r.stdout
    assert set(rows) == set(_ids(docker_direct))

    r = support.docker_cli(host, "ps", "--no-trunc", "--format", "{{.ID}}", check=True)
    ids = r.stdout.split()
    assert running.id in ids and created.id not in ids

    r = support.docker_cli(host, "ps", "-a", check=True)
    assert name in r.stdout and "CONTAINER ID" in r.stdout


def test_inspect_container(host, busybox_image, containers):
    name = "ph-insp-" + uuid.uuid4().hex[:8]
    c = containers(busybox_image, name=name)
    for ref in (c.id, c.id[:12], name):
        r = support.docker_cli(host, "inspect", ref, check=True)
        data = json.loads(r.stdout)
        assert len(data) == 1
        assert data[0]["Id"] == c.id
        assert data[0]["Name"] == "/" + name
        assert data[0]["HostConfig"]["NetworkMode"] == "none"
        assert data[0]["State"]["Running"] is True
    r = support.docker_cli(host, "container", "inspect", "--format", "{{.Config.Image}}", name, check=True)
    assert r.stdout.strip() == busybox_image


def test_image_inspect_and_images(host, docker_direct, busybox_image):
    img = docker_direct.images.get(busybox_image)
    repo = busybox_image.rsplit(":", 1)[0]
    assert "/" in repo
    for ref in (busybox_image, repo, img.id, img.short_id.split(":", 1)[1]):
        r = support.docker_cli(host, "image", "inspect", ref, check=True)
        data = json.loads(r.stdout)
        assert [d["Id"] for d in data] == [img.id], ref
        assert busybox_image in data[0]["RepoTags"]
    r = support.docker_cli(host, "images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}",
                           check=True)
    assert "%s %s" % (busybox_image, img.id) in r.stdout.splitlines()


def test_image_inspect_missing_is_not_found(host):
    r = support.docker_cli(host, "image", "inspect", "porthole-test/does-not-exist:nope")
    assert r.returncode != 0
    assert "No such image" in r.stderr or "no such image" in r.stderr.lower(), r.stderr


def test_network_ls(host, docker_direct):
    direct = sorted((n.id, n.name) for n in docker_direct.networks.list())
    r = support.docker_cli(host, "network", "ls", "--no-trunc", "--format", "{{.ID}} {{.Name}}", check=True)
    got = sorted(tuple(line.split()) for line in r.stdout.splitlines() if line.strip())
    assert got == direct
    assert "none" in {n for _, n in got}


def test_volume_ls(host, docker_direct):
    name = "ph-vol-" + uuid.uuid4().hex[:8]
    vol = docker_direct.volumes.create(name)
    try:
        r = support.docker_cli(host, "volume", "ls", "--format", "{{.Name}}", check=True)
        assert name in r.stdout.split()
        r = support.docker_cli(host, "volume", "inspect", name, check=True)
        assert json.loads(r.stdout)[0]["Name"] == name
    finally:
        vol.remove(force=True)


def test_events_stream_live(host, cli_proxy, dockerd, docker_direct, busybox_image, containers):
    c = containers(busybox_image, start=False)
    baseline = docker_direct.info()["NEventsListener"]
    proc = support.docker_cli_popen(host, "events", "--format", "{{json .}}")
    lines: "queue.Queue[bytes]" = queue.Queue()

    def reader():
        for line in iter(proc.stdout.readline, b""):
            lines.put(line)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        # the subscription has reached the daemon once it counts one more listener
        subscribed = support.wait_until(
            lambda: proc.poll() is None and docker_direct.info()["NEventsListener"] > baseline, 10)
        assert subscribed, "events subscription never reached the daemon (rc=%s, stderr=%r)" % (
            proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        c.start()  # DIRECT socket

        def is_start(line):
            ev = json.loads(line)
            return ev.get("Type") == "container" and ev.get("Action") == "start" and \
                ev.get("Actor", {}).get("ID") == c.id

        support.wait_for_item(lines, is_start, 1.0, "start event not seen through the proxy")
    finally:
        proc.terminate()
        proc.wait(10)
        t.join(5)
        proc.stdout.close()
        proc.stderr.close()
    # the proxy keeps serving after the client went away
    assert support.docker_cli(host, "version", "--format", "{{.Server.Version}}", check=True).stdout.strip()


# --------------------------------------------------------------------------
# refused commands


def test_run_refused(host, cli_proxy, docker_direct, busybox_image):
    before = _ids(docker_direct)
    n = len(_denials(cli_proxy, "POST", r"/containers/create"))
    r = support.docker_cli(host, "run", "--rm", "--network", "none", busybox_image, "touch", "/pwned")
    assert_refused(r, cli_proxy, "POST", r"/containers/create", n)
    assert _ids(docker_direct) == before


def test_rm_refused(host, cli_proxy, docker_direct, busybox_image, containers):
    c = containers(busybox_image)
    before = _ids(docker_direct)
    r = support.docker_cli(host, "rm", "-f", c.id)
    assert_refused(r, cli_proxy, "DELETE", r"/containers/%s" % c.id)
    c.reload()
    assert c.status == "running"
    assert _ids(docker_direct) == before


def test_exec_refused(host, cli_proxy, docker_direct, busybox_image, containers):
    c = containers(busybox_image)
    r = support.docker_cli(host, "exec", c.id, "touch", "/pwned")
    assert_refused(r, cli_proxy, "POST", r"/containers/%s/exec" % c.id)
    c.reload()
    assert c.status == "running"
    assert not c.attrs.get("ExecIDs"), "an exec instance was created: %r" % c.attrs["ExecIDs"]
    with pytest.raises(docker.errors.NotFound):
        c.get_archive("/pwned")


def test_logs_refused(host, cli_proxy, busybox_image, containers):
    secret = "ph-secret-" + uuid.uuid4().hex
    c = containers(busybox_image, command=["sh", "-c", "echo %s; exec sleep 3600" % secret])
    assert support.wait_until(lambda: secret.encode() in c.logs(), 5)  # DIRECT: it is there
    r = support.docker_cli(host, "logs", c.id)
    assert_refused(r, cli_proxy, "GET", r"/containers/%s/logs" % c.id)
    assert secret not in r.stdout and secret not in r.stderr


def test_export_refused(host, cli_proxy, busybox_image, containers, tmp_path):
    c = containers(busybox_image)
    out = tmp_path / "export.tar"
    r = support.docker_cli(host, "export", "-o", out, c.id)
    assert_refused(r, cli_proxy, "GET", r"/containers/%s/export" % c.id)
    assert not out.exists() or out.stat().st_size == 0


def test_cp_from_container_refused(host, cli_proxy, busybox_image, containers, tmp_path):
    c = containers(busybox_image)
    secret = ("ph-secret-" + uuid.uuid4().hex).encode()
    support.put_file(c, "/secret.txt", secret)
    out = tmp_path / "copied.txt"
    r = support.docker_cli(host, "cp", "%s:/secret.txt" % c.id, out)
    assert_refused(r, cli_proxy, "GET", r"/containers/%s/archive" % c.id)
    assert not out.exists()
    assert support.read_file(c, "/secret.txt") == secret


def test_cp_into_container_refused(host, cli_proxy, busybox_image, containers, tmp_path):
    c = containers(busybox_image)
    src = tmp_path / "injected.txt"
    src.write_text("should never arrive\n")
    support.put_file(c, "/target.txt", b"original\n")
    for dest in ("/injected.txt", "/target.txt"):
        n = len(_denials(cli_proxy, "PUT", r"/containers/%s/archive" % c.id))
        r = support.docker_cli(host, "cp", src, "%s:%s" % (c.id, dest))
        assert_refused(r, cli_proxy, "PUT", r"/containers/%s/archive" % c.id, n)
    with pytest.raises(docker.errors.NotFound):
        c.get_archive("/injected.txt")
    assert support.read_file(c, "/target.txt") == b"original\n"
