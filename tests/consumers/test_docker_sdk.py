"""The docker Python SDK through the proxy (TCP and unix listeners) against the
session's private dockerd.  Refusals must raise APIError 403 with a
"porthole:" explanation and change nothing on the daemon (checked through the
DIRECT daemon socket)."""

from __future__ import annotations

import copy
import os
import queue
import stat
import threading
import time
import uuid

import docker
import pytest

import consumers
import fake_upstream as fu
import support

from porthole.core.objects import Filtering
from porthole.core.filters import ResponseFilter  # the filter the proxy applies, as the model

pytestmark = [pytest.mark.docker, pytest.mark.timeout(90)]


@pytest.fixture
def client(proxy_url):
    """SDK client talking to the proxy (API version negotiated through it)."""
    c = docker.DockerClient(base_url=proxy_url, timeout=30)
    try:
        yield c
    finally:
        c.close()


def _ids(client):
    return sorted(c.id for c in client.containers.list(all=True))


def assert_forbidden(excinfo):
    err = excinfo.value
    assert err.status_code == 403, "expected 403, got %s: %s" % (err.status_code, err)
    assert "porthole:" in (err.explanation or ""), "explanation: %r" % err.explanation


def _request_lines(proxy, method, fragment):
    return [l for l in proxy.logs() if l.get("event") == "request" and l.get("method") == method
            and fragment in str(l.get("target"))]


def assert_denial_logged(proxy, method, fragment, before=0):
    ok = support.wait_until(lambda: len(_request_lines(proxy, method, fragment)) > before, 5)
    assert ok, "no request log line for %s %s" % (method, fragment)
    new = _request_lines(proxy, method, fragment)[before:]
    assert any(l.get("decision") == "deny" and l.get("status") == 403 for l in new), new


# --------------------------------------------------------------------------
# harness sanity (direct, no proxy)


def test_private_daemon_fixture(dockerd, docker_direct, busybox_image):
    st = os.stat(dockerd.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, support.DEFAULT_SOCK_GID, 0o660)
    assert dockerd.socket_path != "/var/run/docker.sock"
    assert docker_direct.ping() is True
    c = support.run_sleeper(docker_direct, busybox_image)
    try:
        assert c.status == "running"
        assert c.attrs["HostConfig"]["NetworkMode"] == "none"
        assert c.exec_run(["cat", "/proc/1/cmdline"]).output.startswith(b"sleep")
    finally:
        c.remove(force=True)


# --------------------------------------------------------------------------
# allowed


def test_ping_version_info(client, docker_direct):
    assert client.ping() is True
    direct_version = docker_direct.version()
    v = client.version()
    assert v["Version"] == direct_version["Version"]
    assert v["ApiVersion"] == direct_version["ApiVersion"]
    assert client.api.api_version == docker_direct.api.api_version
    info = client.info()
    assert info["ID"] == docker_direct.info()["ID"]


def redacted(kind, attrs):
    """What the default profile's redaction makes of the daemon's answer (env values go)."""
    return ResponseFilter(Filtering(), kind, "x").document(copy.deepcopy(attrs))


def test_containers_list_and_get(client, docker_direct, busybox_image, containers):
    name = "ph-sdk-" + uuid.uuid4().hex[:8]
    running = containers(busybox_image, name=name)
    created = containers(busybox_image, name=name + "-c", start=False)

    assert sorted(c.id for c in client.containers.list(all=True)) == _ids(docker_direct)
    running_ids = [c.id for c in client.containers.list()]
    assert running.id in running_ids and created.id not in running_ids
    assert [c.id for c in client.containers.list(all=True, filters={"name": name + "-c"})] == [created.id]

    got = client.containers.get(running.id)
    direct = docker_direct.containers.get(running.id)
    assert got.attrs == redacted("container", direct.attrs)
    assert "PATH=" in got.attrs["Config"]["Env"]  # names kept, values gone
    assert got.name == name and got.status == "running"
    assert got.attrs["HostConfig"]["NetworkMode"] == "none"
    assert client.containers.get(name).id == running.id

    with pytest.raises(docker.errors.NotFound):
        client.containers.get("ph-no-such-container-" + uuid.uuid4().hex[:6])


def test_images_list_and_get(client, docker_direct, busybox_image):
    direct = docker_direct.images.get(busybox_image)
    listed = {i.id: i.tags for i in client.images.list()}
    assert busybox_image in listed.get(direct.id, [])
    assert sorted(listed) == sorted(i.id for i in docker_direct.images.list())
    repo = busybox_image.rsplit(":", 1)[0]
    for ref in (busybox_image, repo, direct.id):
        img = client.images.get(ref)
        assert img.id == direct.id
        assert img.attrs == redacted("image", direct.attrs)
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("porthole-test/absent:nope")


def test_networks_and_volumes_list(client, docker_direct):
    assert sorted(n.id for n in client.networks.list()) == sorted(n.id for n in docker_direct.networks.list())
    none = client.networks.get("none")
    assert none.attrs["Driver"] == "null"
    name = "ph-sdkvol-" + uuid.uuid4().hex[:8]
    vol = docker_direct.volumes.create(name)
    try:
        assert name in [v.name for v in client.volumes.list()]
        assert client.volumes.get(name).attrs["Mountpoint"] == vol.attrs["Mountpoint"]
    finally:
        vol.remove(force=True)


def test_events_stream(client, docker_direct, busybox_image, containers):
    c = containers(busybox_image, start=False)
    baseline = docker_direct.info()["NEventsListener"]
    events = client.events(decode=True)
    got: "queue.Queue[dict]" = queue.Queue()

    def reader():
        try:
            for ev in events:
                got.put(ev)
        except Exception as e:  # closed by the test
            got.put({"_error": repr(e)})

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        assert support.wait_until(lambda: docker_direct.info()["NEventsListener"] > baseline, 10), \
            "events subscription never reached the daemon"
        c.start()  # DIRECT socket
        support.wait_for_item(
            got, lambda ev: ev.get("Type") == "container" and ev.get("Action") == "start" and ev.get("id") == c.id,
            1.0, "start event not seen through the proxy")
    finally:
        events.close()
        t.join(5)
    assert client.ping() is True


# --------------------------------------------------------------------------
# refused


def test_run_and_create_refused(client, shared_proxy, docker_direct, busybox_image):
    before = _ids(docker_direct)
    n = len(_request_lines(shared_proxy, "POST", "/containers/create"))
    with pytest.raises(docker.errors.APIError) as ei:
        client.containers.run(busybox_image, ["touch", "/pwned"], network_mode="none", remove=True)
    assert_forbidden(ei)
    with pytest.raises(docker.errors.APIError) as ei:
        client.containers.create(busybox_image, ["true"], network_mode="none", name="ph-" + uuid.uuid4().hex[:8])
    assert_forbidden(ei)
    assert_denial_logged(shared_proxy, "POST", "/containers/create", n)
    assert _ids(docker_direct) == before


def test_remove_refused(client, shared_proxy, docker_direct, busybox_image, containers):
    c = containers(busybox_image)
    via_proxy = client.containers.get(c.id)
    with pytest.raises(docker.errors.APIError) as ei:
        via_proxy.remove(force=True, v=True)
    assert_forbidden(ei)
    assert_denial_logged(shared_proxy, "DELETE", "/containers/" + c.id)
    c.reload()
    assert c.status == "running"
    with pytest.raises(docker.errors.APIError) as ei:
        via_proxy.kill()
    assert_forbidden(ei)
    with pytest.raises(docker.errors.APIError) as ei:
        via_proxy.stop(timeout=1)
    assert_forbidden(ei)
    c.reload()
    assert c.status == "running"


def test_logs_export_archive_refused(client, shared_proxy, busybox_image, containers):
    secret = "ph-secret-" + uuid.uuid4().hex
    c = containers(busybox_image, command=["sh", "-c", "echo %s; exec sleep 3600" % secret])
    support.put_file(c, "/secret.txt", secret.encode())
    assert support.wait_until(lambda: secret.encode() in c.logs(), 5)  # DIRECT: the log exists
    via_proxy = client.containers.get(c.id)

    with pytest.raises(docker.errors.APIError) as ei:
        via_proxy.logs()
    assert_forbidden(ei)
    assert_denial_logged(shared_proxy, "GET", "/containers/%s/logs" % c.id)

    with pytest.raises(docker.errors.APIError) as ei:
        b"".join(via_proxy.export())
    assert_forbidden(ei)
    assert_denial_logged(shared_proxy, "GET", "/containers/%s/export" % c.id)

    with pytest.raises(docker.errors.APIError) as ei:
        via_proxy.get_archive("/secret.txt")
    assert_forbidden(ei)
    assert_denial_logged(shared_proxy, "GET", "/containers/%s/archive" % c.id)

    with pytest.raises(docker.errors.APIError) as ei:
        via_proxy.put_archive("/", b"\0" * 1024)
    assert_forbidden(ei)
    assert_denial_logged(shared_proxy, "PUT", "/containers/%s/archive" % c.id)
    assert support.read_file(c, "/secret.txt") == secret.encode()


def test_exec_refused(client, shared_proxy, busybox_image, containers):
    c = containers(busybox_image)
    with pytest.raises(docker.errors.APIError) as ei:
        client.containers.get(c.id).exec_run(["touch", "/pwned"])
    assert_forbidden(ei)
    assert_denial_logged(shared_proxy, "POST", "/containers/%s/exec" % c.id)
    c.reload()
    assert not c.attrs.get("ExecIDs")
    with pytest.raises(docker.errors.NotFound):
        c.get_archive("/pwned")


def test_pull_refused_without_reaching_registry(client, shared_proxy, dockerd, docker_direct):
    t0 = int(time.time()) - 1
    log_size = dockerd.log_path.stat().st_size
    n = len(_request_lines(shared_proxy, "POST", "/images/create"))
    with pytest.raises(docker.errors.APIError) as ei:
        client.images.pull("busybox", tag="1.36")
    assert_forbidden(ei)
    assert_denial_logged(shared_proxy, "POST", "/images/create", n)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_direct.images.get("busybox:1.36")
    # the daemon saw nothing: no image events, no pull attempt in its log
    events = list(docker_direct.events(since=t0, until=int(time.time()) + 1, decode=True))
    assert not [e for e in events if e.get("Type") == "image"], events
    with open(dockerd.log_path, "rb") as f:
        f.seek(log_size)
        new_log = f.read().decode(errors="replace").lower()
    assert "pull" not in new_log and "registry" not in new_log, new_log[-2000:]


def test_volume_create_refused(client, shared_proxy, docker_direct):
    name = "ph-denied-" + uuid.uuid4().hex[:8]
    before = sorted(v.name for v in docker_direct.volumes.list())
    n = len(_request_lines(shared_proxy, "POST", "/volumes/create"))
    with pytest.raises(docker.errors.APIError) as ei:
        client.volumes.create(name)
    assert_forbidden(ei)
    assert_denial_logged(shared_proxy, "POST", "/volumes/create", n)
    assert sorted(v.name for v in docker_direct.volumes.list()) == before
    with pytest.raises(docker.errors.NotFound):
        docker_direct.volumes.get(name)


@pytest.mark.parametrize("profile", ["monitoring", "docker-cli"])
def test_inspect_swarm_through_porthole_has_no_join_tokens(profile, upstream, proxy_factory):
    """(issue 21: item 2) Ansible's docker_swarm_info, docker_node_info and
    docker_swarm_service_info ask docker-py's inspect_swarm first (check_if_swarm_manager: any
    error reads "must run on swarm manager node"). Through the monitoring and docker-cli presets
    it answers, without the join tokens (the fake daemon as a swarm manager)."""
    fu.swarm_manager(upstream)
    url, docker_host = consumers.unix_listener(profile)
    proxy_factory(listen=[url], upstream=upstream.url)  # the shipped rules.json
    api = docker.APIClient(base_url=docker_host, version="1.41", timeout=30)
    try:
        swarm = api.inspect_swarm()
    finally:
        api.close()
    assert swarm["ID"] == fu.SWARM["ID"] and swarm["JoinTokens"] == {"Worker": "", "Manager": ""}
