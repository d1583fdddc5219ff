"""A hidden object is indistinguishable from a missing one through every door, against the real
daemons (issue "(2 of 5)", item 16). A profile scoped to one label sees only the containers that
carry it; every other container of the daemon is hidden from it.

- An ID prefix a visible and hidden containers share: dockerd 20.10 answers 500 "Multiple IDs
  found with provided prefix" (Podman: 404 "more than one result"); through the scope the name
  means the one visible container, as it would if the hidden ones did not exist.
- A prefix only hidden containers share: the daemon's own answer for a missing container, status,
  body and header names, as for a name that exists nowhere.
- A prefix several visible containers share: still the daemon's ambiguity.
- A hidden container named like a visible one's ID prefix: the name means the visible one.
- /info's container counts (and libpod's), /system/df's count of what uses an image: visible only."""
from __future__ import annotations

import json
import secrets
from collections import defaultdict

import docker
import pytest

import fake_upstream as fu
import support

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

MAX_CONTAINERS = 90


def find_prefixes(containers):
    """{"one-visible": prefix matched by exactly one visible container and hidden ones,
    "hidden-only": by two or more hidden ones only, "visible-several": by two or more visible}
    among `containers` [(id, visible)] (1- and 2-character prefixes)."""
    found = {}
    for length in (1, 2):
        groups = defaultdict(list)
        for ident, visible in containers:
            groups[ident[:length]].append(visible)
        for prefix, members in sorted(groups.items()):
            seen, hidden = sum(members), len(members) - sum(members)
            if seen == 1 and hidden:
                found.setdefault("one-visible", prefix)
            if not seen and hidden >= 2:
                found.setdefault("hidden-only", prefix)
            if seen >= 2:
                found.setdefault("visible-several", prefix)
    return found


def make_until_found(create, listed):
    """Creates containers (visible and hidden in turn) until find_prefixes finds all three."""
    made = []
    for i in range(MAX_CONTAINERS):
        found = find_prefixes(listed())
        if len(found) == 3 and i >= 4:
            return made, found
        made.append(create(visible=i % 2 == 0))
    raise AssertionError(f"no prefixes after {MAX_CONTAINERS} containers: {find_prefixes(listed())}")


def headers_without_date(response):
    return [(name, value) for name, value in response.headers if name not in ("date", "content-length")]


# ---------------------------------------------------------------------------------------------
# dockerd

class World:
    pass


@pytest.fixture(scope="module")
def world(dockerd, docker_direct, busybox_image):
    w = World()
    w.token = secrets.token_hex(4)
    w.label = f"ph-scope-{w.token}"

    def create(visible):
        return support.run_sleeper(docker_direct, busybox_image, start=False,
                                   labels={w.label: "shown" if visible else "hidden"})

    def listed():
        return [(c.id, c.labels.get(w.label) == "shown") for c in docker_direct.containers.list(all=True)]

    w.made, w.prefixes = make_until_found(create, listed)
    w.visible = [c for c in w.made if c.labels[w.label] == "shown"]
    for c in w.visible[:2]:
        c.start()
    # a hidden container named like a visible one's ID prefix (dockerd resolves a name first)
    w.named_target = w.visible[-1]
    w.named = create(visible=False)
    w.named.rename(w.named_target.id[:12])
    rules = {"version": 1, "profiles": {
        "default": {"rules": [{"method": ["GET", "HEAD"], "path": "/_ping"}]},
        "reader": {"rules": [{"method": ["GET", "HEAD"], "path": "/_ping"}, {"method": "GET", "path": "/version"},
                             {"method": "GET", "path": "/info"}, {"method": "GET", "path": "/system/df"},
                             {"method": "GET", "path": "/containers/json"},
                             {"method": ["GET", "HEAD"], "path": "/containers/{id}/json"},
                             {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True}]},
        "scoped": {"extends": "reader", "rules": [], "visible": {"labels": [f"{w.label}=shown"]}}}}
    ports = {"reader": support.free_port(), "scoped": support.free_port()}
    w.proxy = support.ProxyProcess(listen=[f"tcp://127.0.0.1:{port}?profile={name}" for name, port in ports.items()],
                                   upstream=dockerd.url, groups=[dockerd.sock_gid], rules=support.write_rules(rules))
    with w.proxy.running():
        w.scoped, w.reader = ("127.0.0.1", ports["scoped"]), ("127.0.0.1", ports["reader"])
        w.direct = dockerd.url
        yield w
    for c in w.made + [w.named]:
        c.remove(force=True)


def visible_matching(w, docker_direct, prefix):
    return [c.id for c in docker_direct.containers.list(all=True, filters={"label": f"{w.label}=shown"})
            if c.id.startswith(prefix)]


def all_matching(docker_direct, prefix):
    return [c.id for c in docker_direct.containers.list(all=True) if c.id.startswith(prefix)]


def test_a_prefix_a_visible_and_hidden_containers_share_means_the_visible_one(world, docker_direct):
    prefix = world.prefixes["one-visible"]
    (visible,) = visible_matching(world, docker_direct, prefix)
    assert len(all_matching(docker_direct, prefix)) >= 2
    direct = fu.get(world.direct, f"/v1.41/containers/{prefix}/json")
    assert direct.status == 500 and b"Multiple IDs found with provided prefix" in direct.body  # dockerd 20.10
    for method in ("GET", "HEAD"):
        r = fu.get(world.scoped, f"/v1.41/containers/{prefix}/json", method=method)
        assert r.status == 200, (method, r.status, r.body)
    assert fu.get(world.scoped, f"/v1.41/containers/{prefix}/json").json()["Id"] == visible
    assert fu.get(world.scoped, f"/v1.41/containers/{prefix}/logs?stdout=1").status == 200
    assert fu.get(world.reader, f"/v1.41/containers/{prefix}/json").status == 500  # no scope: the daemon's answer
    out = support.docker_cli(f"tcp://{world.scoped[0]}:{world.scoped[1]}", "inspect", "--type", "container",
                             "--format", "{{.Id}}", prefix, check=True).stdout.strip()
    assert out == visible


def test_a_prefix_only_hidden_containers_share_is_answered_as_a_missing_container(world, docker_direct):
    prefix = world.prefixes["hidden-only"]
    assert not visible_matching(world, docker_direct, prefix) and len(all_matching(docker_direct, prefix)) >= 2
    missing = f"zz{world.token}"  # exists nowhere: the daemon's own 404, relayed
    for method in ("GET", "HEAD"):
        hidden = fu.get(world.scoped, f"/v1.41/containers/{prefix}/json", method=method)
        absent = fu.get(world.scoped, f"/v1.41/containers/{missing}/json", method=method)
        assert hidden.status == absent.status == 404, (hidden, hidden.body)
        assert headers_without_date(hidden) == headers_without_date(absent)
        assert hidden.body == absent.body.replace(missing.encode(), prefix.encode())
    assert fu.get(world.scoped, f"/v1.41/containers/{prefix}/json").body == \
        b'{"message":"No such container: %s"}\n' % prefix.encode()
    host = f"tcp://{world.scoped[0]}:{world.scoped[1]}"
    for command in (["inspect", "--type", "container"], ["logs"]):
        hidden_cli = support.docker_cli(host, *command, prefix)
        absent_cli = support.docker_cli(host, *command, missing)
        assert hidden_cli.returncode == absent_cli.returncode != 0
        assert hidden_cli.stderr == absent_cli.stderr.replace(missing, prefix)


def test_a_prefix_several_visible_containers_share_is_still_ambiguous(world, docker_direct):
    prefix = world.prefixes["visible-several"]
    assert len(visible_matching(world, docker_direct, prefix)) >= 2
    r = fu.get(world.scoped, f"/v1.41/containers/{prefix}/json")
    assert (r.status, r.body) == (500, b'{"message":"Multiple IDs found with provided prefix: %s"}\n' % prefix.encode())


def test_a_hidden_container_named_like_a_visible_ones_prefix_does_not_hide_it(world):
    name = world.named_target.id[:12]
    assert fu.get(world.direct, f"/v1.41/containers/{name}/json").json()["Id"] == world.named.id  # the name wins
    assert fu.get(world.scoped, f"/v1.41/containers/{name}/json").json()["Id"] == world.named_target.id
    assert fu.get(world.scoped, f"/v1.41/containers/{world.named.id}/json").status == 404


def test_info_and_disk_usage_count_visible_containers_only(world, docker_direct, busybox_image):
    visible = docker_direct.containers.list(all=True, filters={"label": f"{world.label}=shown"})
    everything = docker_direct.containers.list(all=True)
    assert len(everything) > len(visible)
    client = docker.DockerClient(base_url=f"tcp://{world.scoped[0]}:{world.scoped[1]}", version="1.41", timeout=30)
    try:
        info, df = client.info(), client.df()
    finally:
        client.close()
    running = sum(c.status == "running" for c in visible)
    assert (info["Containers"], info["ContainersRunning"], info["ContainersPaused"], info["ContainersStopped"]) == \
        (len(visible), running, 0, len(visible) - running)
    assert fu.get(world.reader, "/v1.41/info").json()["Containers"] == len(everything)  # no scope: the daemon's count
    image_id = docker_direct.images.get(busybox_image).id
    (image,) = [i for i in df["Images"] if i["Id"] == image_id]
    assert image["Containers"] == sum(c.image.id == image_id for c in visible)
    assert {c["Id"] for c in df["Containers"]} == {c.id for c in visible}


# ---------------------------------------------------------------------------------------------
# Podman: the same through its libpod and compat APIs

@pytest.fixture(scope="module")
def pworld(podman):
    w = World()
    w.token = secrets.token_hex(4)
    w.label = f"ph-scope-{w.token}"
    made = []

    def create(visible):
        ident = podman.cli("create", "--network", "none", "--label", f"{w.label}={'shown' if visible else 'hidden'}",
                           podman.image, "true").stdout.strip()
        made.append(ident)
        return ident

    def listed():
        out = podman.cli("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Labels}}").stdout
        return [(line.split()[0], f"{w.label}:shown" in line) for line in out.splitlines() if line.strip()]

    _, w.prefixes = make_until_found(create, listed)
    rules = json.loads((support.REPO / "rules.json").read_text())
    rules["profiles"]["podman-scoped"] = {"extends": "podman", "rules": [], "visible": {"labels": [f"{w.label}=shown"]}}
    port = support.free_port()
    w.proxy = support.ProxyProcess(listen=[f"tcp://127.0.0.1:{port}?profile=podman-scoped"], upstream=podman.url,
                                   groups=[support.DEFAULT_SOCK_GID], rules=support.write_rules(rules))
    w.listed = listed
    with w.proxy.running():
        w.scoped, w.direct = ("127.0.0.1", port), "unix://" + podman.socket_path
        yield w
    for ident in made:
        podman.cli("rm", "--force", ident, check=False)


@pytest.mark.parametrize("api", ["/v4.3.1/libpod", "/v1.41"])
def test_podman_prefixes_through_a_scope(pworld, api):
    containers = pworld.listed()
    one, hidden_only = pworld.prefixes["one-visible"], pworld.prefixes["hidden-only"]
    (visible,) = [ident for ident, shown in containers if shown and ident.startswith(one)]
    direct = fu.get(pworld.direct, f"{api}/containers/{one}/json")
    assert direct.status == 404 and b"more than one result" in direct.body  # Podman's ambiguity
    assert fu.get(pworld.scoped, f"{api}/containers/{one}/json").json()["Id"] == visible
    missing = f"zz{pworld.token}"
    hidden = fu.get(pworld.scoped, f"{api}/containers/{hidden_only}/json")
    absent = fu.get(pworld.scoped, f"{api}/containers/{missing}/json")
    assert hidden.status == absent.status == 404
    assert [n for n, _ in hidden.headers if n not in ("x-reference-id", "date")] == \
        [n for n, _ in absent.headers if n not in ("x-reference-id", "date")]
    assert hidden.body == absent.body.replace(missing.encode(), hidden_only.encode())


def test_podman_info_counts_visible_containers_only(pworld):
    visible = sum(shown for _, shown in pworld.listed())
    store = fu.get(pworld.scoped, "/v4.3.1/libpod/info").json()["store"]["containerStore"]
    assert store["number"] == visible and store["running"] == 0 and store["stopped"] == visible
    assert fu.get(pworld.direct, "/v4.3.1/libpod/info").json()["store"]["containerStore"]["number"] > visible
