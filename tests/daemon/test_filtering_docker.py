"""Response filtering against the real daemon, through the docker CLI and the Python SDK (the fake
daemon: test_filtering.py; the pure filters: tests/unit/core/test_filters.py).

Containers the test starts (--network none) carry a secret in their environment and log
options, and labels; a volume carries a secret in its driver options. Two listeners: `reader`
(default redaction) and `scoped` (the same rules, visible only with label scope=shown)."""
from __future__ import annotations

import json
import secrets
import signal
import time
from types import SimpleNamespace

import docker
import pytest

import fake_upstream as fu
import support

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

READER_RULES = [
    {"method": ["GET", "HEAD"], "path": "/_ping"},
    {"method": "GET", "path": "/version"},
    {"method": "GET", "path": "/info"},
    {"method": "GET", "path": "/containers/json"},
    {"method": ["GET", "HEAD"], "path": "/containers/{id}/json"},
    {"method": "GET", "path": "/containers/{id}/stats"},
    {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True},
    {"method": "GET", "path": "/containers/{id}/top", "dangerous": True},
    {"method": "GET", "path": "/images/{name*}/json"},
    {"method": "GET", "path": "/volumes"},
    {"method": "GET", "path": "/volumes/{name}"},
    {"method": "GET", "path": "/events"},
]
RULES = {"version": 1, "profiles": {
    "default": {"rules": [{"method": ["GET", "HEAD"], "path": "/_ping"}]},
    "reader": {"rules": READER_RULES},
    "scoped": {"extends": "reader", "rules": [], "visible": {"labels": ["scope=shown"]}},
    "bare": {"extends": "reader", "rules": [], "redact": []},
}}


@pytest.fixture(scope="module")
def world(docker_direct, busybox_image, dockerd):
    w = SimpleNamespace()
    w.token = secrets.token_hex(8)
    w.secret = "S3CRET-" + w.token
    made = []

    def make(name, scope, **kw):
        c = support.run_sleeper(docker_direct, busybox_image, name=name,
                                command=["sh", "-c", f"echo LOG-{name}; sleep 3600"],
                                environment={"DB_PASSWORD": w.secret, "PLAIN": "x"},
                                labels={"scope": scope}, log_config=docker.types.LogConfig(
                                    type="json-file", config={"max-size": "1m", "labels": w.secret}), **kw)
        made.append(c)
        return c

    w.shown = make("ph-shown-" + w.token, "shown")
    w.hidden = make("ph-hidden-" + w.token, "hidden")
    # a visible container NAMED like the hidden one's ID prefix: the daemon resolves a name before
    # an ID prefix, so through the scoped listener this name must mean the visible one
    w.trick = make(w.hidden.id[:10], "shown")
    w.volume = docker_direct.volumes.create("ph-vol-" + w.token, driver="local",
                                            driver_opts={"type": "cifs", "device": "//127.0.0.1/share",
                                                         "o": f"username=u,password={w.secret}"})
    for c in made:
        assert support.wait_until(lambda c=c: b"LOG-" in c.logs(), 10)
    rules = support.write_rules(RULES)
    port_reader, port_scoped, port_bare = support.free_port(), support.free_port(), support.free_port()
    w.proxy = support.ProxyProcess(listen=[f"tcp://127.0.0.1:{port_reader}?profile=reader",
                                           f"tcp://127.0.0.1:{port_scoped}?profile=scoped",
                                           f"tcp://127.0.0.1:{port_bare}?profile=bare"],
                                   upstream=dockerd.url, groups=[dockerd.sock_gid], rules=rules)
    with w.proxy.running():
        w.reader, w.scoped, w.bare = (f"tcp://127.0.0.1:{port}" for port in (port_reader, port_scoped, port_bare))
        w.direct = dockerd.url
        yield w
    for c in made:
        c.remove(force=True)
    w.volume.remove(force=True)


def cli(host, *args, check=True):
    return support.docker_cli(host, *args, check=check)


# ---------------------------------------------------------------------------------------------
# redaction


def test_docker_inspect_shows_names_without_values(world):
    out = cli(world.reader, "inspect", world.shown.name).stdout
    assert world.secret not in out
    doc = json.loads(out)[0]
    assert "DB_PASSWORD=" in doc["Config"]["Env"] and "PLAIN=" in doc["Config"]["Env"]
    assert doc["HostConfig"]["LogConfig"]["Config"] == {"max-size": "", "labels": ""}
    assert doc["Name"] == "/" + world.shown.name and doc["Config"]["Labels"] == {"scope": "shown"}
    # the same through the bare profile ("redact": []) and directly: the secret is really there
    assert world.secret in cli(world.bare, "inspect", world.shown.name).stdout
    assert world.secret in cli(world.direct, "inspect", world.shown.name).stdout


def test_the_sdk_sees_redacted_env_and_volume_options(world):
    client = docker.DockerClient(base_url=world.reader, version="1.41", timeout=30)
    try:
        attrs = client.containers.get(world.shown.id).attrs
        assert sorted(attrs["Config"]["Env"])[:2] == ["DB_PASSWORD=", "PATH="]
        volume = client.volumes.get(world.volume.name).attrs
        assert volume["Options"] == {"type": "", "device": "", "o": ""}
        listed = [v for v in client.volumes.list() if v.name == world.volume.name]
        assert listed and world.secret not in json.dumps(listed[0].attrs)
    finally:
        client.close()


def test_head_and_get_agree_on_the_filtered_length(world):
    address = world.reader.removeprefix("tcp://").split(":")
    address = (address[0], int(address[1]))
    got = fu.get(address, f"/v1.41/containers/{world.shown.id}/json")
    head = fu.get(address, f"/v1.41/containers/{world.shown.id}/json", method="HEAD")
    assert got.status == head.status == 200 and world.secret.encode() not in got.body
    assert int(head.header("content-length")) == len(got.body)


def test_the_log_line_counts_what_was_filtered(world):
    cli(world.reader, "inspect", world.shown.id)
    cli(world.scoped, "ps", "-a")

    def found():
        lines = [l for l in world.proxy.logs() if l.get("event") == "request"]
        inspected = [l for l in lines if l.get("path", "").endswith(f"{world.shown.id}/json")]
        listed = [l for l in lines if "/containers/json" in (l.get("path") or "") and l.get("profile") == "scoped"]
        return inspected and inspected[-1]["redacted"] >= 4 and listed and "hidden" in listed[-1]
    assert support.wait_until(found, 5), world.proxy.stderr_text()[-3000:]


def test_an_inspect_asked_again_is_the_kept_answer_and_a_change_reaches_the_next(world, docker_direct):
    """The same answer again is answered from the kept filtered answer (same bytes, same counts
    in the log line); once the container changes, the daemon's answer differs and is filtered
    anew."""
    def inspected_lines():
        return [l for l in world.proxy.logs() if l.get("event") == "request"
                and l.get("path", "").endswith(f"{world.shown.id}/json") and l.get("profile") == "reader"]

    before = len(inspected_lines())
    first, again = (cli(world.reader, "inspect", world.shown.id).stdout for _ in range(2))
    assert first == again and world.secret not in first
    assert support.wait_until(lambda: len(inspected_lines()) >= before + 2, 5)
    counts = [l["redacted"] for l in inspected_lines()[-2:]]
    assert counts[0] == counts[1] >= 4
    renamed = "ph-renamed-" + world.token
    docker_direct.api.rename(world.shown.id, renamed)
    try:
        doc = json.loads(cli(world.reader, "inspect", world.shown.id).stdout)[0]
        assert doc["Name"] == "/" + renamed and "DB_PASSWORD=" in doc["Config"]["Env"]
        assert world.secret not in json.dumps(doc)
    finally:
        docker_direct.api.rename(world.shown.id, world.shown.name)


# ---------------------------------------------------------------------------------------------
# label-scoped visibility


def names(host, *extra):
    return set(cli(host, "ps", "-a", "--format", "{{.Names}}", *extra).stdout.split())


def test_docker_ps_lists_exactly_the_visible_containers(world):
    assert names(world.reader) >= {world.shown.name, world.hidden.name, world.trick.name}
    assert names(world.scoped) == {world.shown.name, world.trick.name}  # only they carry scope=shown
    # a client filter of its own (the CLI sends the map form) is combined with the scope
    assert names(world.scoped, "--filter", f"name={world.token}") == {world.shown.name}
    assert names(world.scoped, "--filter", "label=scope=hidden") == set()


@pytest.mark.parametrize("command", [["inspect", "--type", "container"], ["logs"], ["stats", "--no-stream"],
                                     ["container", "top"]])
def test_an_invisible_container_is_no_such_container(world, command):
    for ref in (world.hidden.name, world.hidden.id, world.hidden.id[:16]):
        r = cli(world.scoped, *command, ref, check=False)
        assert r.returncode != 0, (command, r.stdout)
        assert f"No such container: {ref}" in r.stderr, (command, r.stderr)
        assert "porthole" not in r.stderr and world.secret not in r.stdout + r.stderr
    # the same commands on the visible one work
    r = cli(world.scoped, *command, world.shown.name, check=False)
    assert r.returncode == 0, r.stderr


def test_a_name_like_an_invisible_id_prefix_means_the_visible_container(world):
    prefix = world.trick.name  # == world.hidden.id[:10]
    doc = json.loads(cli(world.scoped, "inspect", prefix).stdout)[0]
    assert doc["Id"] == world.trick.id
    assert f"LOG-{world.trick.name}" in cli(world.scoped, "logs", prefix).stdout
    stats = json.loads(cli(world.scoped, "stats", "--no-stream", "--format", "{{json .}}", prefix).stdout)
    assert stats["ID"].startswith(world.trick.id[:12])


def test_docker_events_show_only_visible_containers_and_no_exec_command(world, docker_direct):
    marker = "EXECMARK-" + world.token
    watchers = {name: support.docker_cli_popen(host, "events", "--format", "{{json .}}")
                for name, host in (("scoped", world.scoped), ("reader", world.reader))}
    try:
        time.sleep(1.5)  # both subscribed (they share one daemon subscription)
        for c in (world.shown, world.hidden):
            exit_code, _ = docker_direct.containers.get(c.id).exec_run(["sh", "-c", f"echo {marker}"])
            assert exit_code == 0
            c.pause()
            c.unpause()
        time.sleep(1.5)
    finally:
        outputs = {}
        for name, proc in watchers.items():
            proc.send_signal(signal.SIGINT)
            outputs[name] = proc.communicate(timeout=15)[0].decode()
    for name, text in outputs.items():
        assert marker not in text, name
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        actions = {(e["Actor"]["Attributes"].get("name"), e["Action"]) for e in events if e.get("Type") == "container"}
        assert (world.shown.name, "exec_create") in actions and (world.shown.name, "pause") in actions, (name, actions)
        hidden_seen = any(n == world.hidden.name for n, _ in actions)
        assert hidden_seen == (name == "reader"), (name, actions)
