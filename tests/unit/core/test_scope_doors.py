"""A hidden object is indistinguishable from a missing one through every door (issue "(2 of 5)",
item 16): an ID prefix several containers share, some of them hidden (dockerd 20.10 answers 500
"Multiple IDs found with provided prefix", later dockerd 400, Podman 404 "more than one result");
a hidden container *named* like a visible one's ID prefix; /info's container counts; /system/df's
counts of what uses each image and volume; /images/json's containers (counted, and named by their
manifests); a network's verbose Services and libpod's `containers`; libpod pods' containers; the
container a committed image names.

The model: porthole's answer through a scope must be the daemon's answer in a world where the
hidden objects do not exist (dockerd's GetContainer: full ID, then name, then a unique prefix;
swarm's getService: full ID, name, prefix)."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings, strategies as st

from porthole.core.filters import Filtering, ObjectHidden, ResponseFilter, TransformError, plan_response_filter, resolved_object
from porthole.core.target import canonicalize_target

SCOPED = Filtering(visible=(("team", "a"),))
SECRET = "hunter2-SECRET"


def run(filtering, kind, doc, name="x"):
    f = ResponseFilter(filtering, kind, name)
    return f.document(copy.deepcopy(doc)), f


def plan(filtering, target, method="GET"):
    return plan_response_filter(filtering, method, canonicalize_target(target.encode()))


# ---------------------------------------------------------------------------------------------
# names: the daemon's answer about a name, when it depends on hidden objects

AMBIGUOUS_ANSWERS = [
    ("container", 500, {"message": "Multiple IDs found with provided prefix: 9"}),  # dockerd 20.10 (API 1.41)
    ("container", 400, {"message": "multiple IDs found with provided prefix: 9"}),  # dockerd 23 and later
    ("container", 404, {"cause": "container already exists", "response": 404,    # Podman 4.3, both APIs
                        "message": "more than one result for container ID 9: container already exists"}),
    ("service", 400, {"message": "service 9 is ambiguous (2 matches found)"}),
    ("task", 400, {"message": "task 9 is ambiguous (3 matches found)"}),
]


@pytest.mark.parametrize("kind, status, answer", AMBIGUOUS_ANSWERS)
def test_an_ambiguous_name_is_never_passed_on_through_a_scope(kind, status, answer):
    """Before: the daemon's ambiguity (it counts and reveals hidden objects) was the answer."""
    with pytest.raises(ObjectHidden) as raised:
        resolved_object(kind, "9", status, answer, SCOPED)
    assert raised.value.status == 404  # asked again among the visible objects, else as missing
    from porthole.core.filters import AmongVisible
    assert isinstance(raised.value, AmongVisible) and raised.value.ambiguous


def test_an_invisible_object_is_asked_again_among_the_visible_ones():
    """dockerd resolves a name before an ID prefix: a hidden container named `abc` would hide the
    visible one whose ID starts with abc."""
    from porthole.core.filters import AmongVisible
    hidden = {"Id": "f" * 64, "Name": "/abc", "Config": {"Labels": {"team": "b"}}}
    with pytest.raises(AmongVisible) as raised:
        resolved_object("container", "abc", 200, hidden, SCOPED)
    assert not raised.value.ambiguous and (raised.value.status, raised.value.message) == (404, "No such container: abc")
    with pytest.raises(ObjectHidden) as missing:  # missing: the daemon's own answer
        resolved_object("container", "abc", 404, {"message": "No such container: abc"}, SCOPED)
    assert not isinstance(missing.value, AmongVisible)
    with pytest.raises(ObjectHidden) as error:  # another error is the daemon's
        resolved_object("container", "abc", 500, {"message": "boom"}, SCOPED)
    assert (error.value.status, error.value.message) == (500, "boom")


def test_visible_listing_asks_for_the_scope_and_the_answer_is_checked_again():
    from porthole.core.filters import resolve_among_visible, visible_listing
    listing = visible_listing("container", False, "1.41", SCOPED)
    assert listing.forward_form() == "/v1.41/containers/json?all=true&filters=%7B%22label%22%3A%5B%22team%3Da%22%5D%7D"
    assert visible_listing("container", True, "4.3.1", SCOPED).path == "/libpod/containers/json"
    assert visible_listing("service", False, None, SCOPED).forward_form().startswith("/services?filters=")
    assert visible_listing("task", False, None, SCOPED).forward_form() == "/tasks"
    # a daemon that ignored the filter: its hidden containers still mean nothing
    daemon_ignored_it = [{"Id": "ab1" + "0" * 61, "Names": ["/v"], "Labels": {"team": "a"}},
                         {"Id": "ab2" + "0" * 61, "Names": ["/h"], "Labels": {"team": "b"}}]
    assert resolve_among_visible("container", "ab", 200, daemon_ignored_it, SCOPED) == "ab1" + "0" * 61
    with pytest.raises(ObjectHidden) as hidden:
        resolve_among_visible("container", "h", 200, daemon_ignored_it, SCOPED)
    assert (hidden.value.status, hidden.value.message) == (404, "No such container: h")
    for status, doc, why in [(500, {"message": "x"}, "answered 500"), (200, {"x": 1}, "not a JSON array"),
                             (200, [{"Id": "../x", "Labels": {"team": "a"}}], "no usable ID"),
                             (200, [{"Id": "ab", "Names": [1], "Labels": {"team": "a"}}], "Names")]:
        with pytest.raises(TransformError, match=why):
            resolve_among_visible("container", "ab", status, doc, SCOPED)


# The model: dockerd (and Podman, and swarm for services) resolving a name over a world.
ids = st.text(alphabet="ab9", min_size=3, max_size=5)  # short IDs from 3 letters: prefixes collide


@st.composite
def worlds(draw):
    """[(id, name, visible)] with unique IDs and names; names may look like other IDs' prefixes."""
    objects = draw(st.lists(st.tuples(ids, st.one_of(ids, st.sampled_from(["web", "db", "a", "9"])), st.booleans()),
                            max_size=7, unique_by=(lambda o: o[0], lambda o: o[1])))
    return [o for o in objects if o[0] != o[1]]


def daemon_resolves(world, name):
    for ident, _, _ in world:
        if ident == name:
            return ("found", ident)
    for ident, own, _ in world:
        if own == name:
            return ("found", ident)
    matches = [ident for ident, _, _ in world if ident.startswith(name)]
    return ("found", matches[0]) if len(matches) == 1 else ("missing",) if not matches else ("ambiguous", len(matches))


def daemon_answer(kind, world, name, flavour):
    """The daemon's (status, body) for GET /containers/{name}/json or /services/{name}."""
    outcome = daemon_resolves(world, name)
    if outcome[0] == "found":
        visible = next(v for i, _, v in world if i == outcome[1])
        labels = {"team": "a" if visible else "b"}
        if kind == "container":
            return 200, {"Id": outcome[1], "Config": {"Labels": labels}}
        return 200, {"ID": outcome[1], "Spec": {"Labels": labels}}
    if outcome[0] == "missing":
        return 404, {"message": f"No such container: {name}" if kind == "container" else f"service {name} not found"}
    if kind == "service":
        return 400, {"message": f"service {name} is ambiguous ({outcome[1]} matches found)"}
    return {"dockerd-20.10": (500, {"message": f"Multiple IDs found with provided prefix: {name}"}),
            "dockerd": (400, {"message": f"multiple IDs found with provided prefix: {name}"}),
            "podman": (404, {"cause": "container already exists", "response": 404,
                             "message": f"more than one result for container ID {name}: container already exists"})}[flavour]


def listing(kind, world, flavour, daemon_filters):
    """The answer to visible_listing: the daemon may or may not have applied the label filter."""
    items = []
    for ident, name, visible in world:
        if daemon_filters and not visible:
            continue
        labels = {"team": "a" if visible else "b"}
        if kind == "container":
            items.append({"Id": ident, "Names": [name if flavour == "podman" else "/" + name], "Labels": labels})
        else:
            items.append({"ID": ident, "Spec": {"Name": name, "Labels": labels}})
    return items


def porthole_resolves(kind, world, name, flavour, daemon_filters):
    """What dispatch.look_up decides from the daemon's answers (resolved_object, then
    resolve_among_visible when the answer depends on hidden objects)."""
    from porthole.core.filters import Ambiguous, AmongVisible, resolve_among_visible
    status, answer = daemon_answer(kind, world, name, flavour)
    try:
        return ("found", resolved_object(kind, name, status, answer, SCOPED))
    except AmongVisible:
        try:
            return ("found", resolve_among_visible(kind, name, 200, listing(kind, world, flavour, daemon_filters), SCOPED))
        except Ambiguous as ambiguous:
            return ("ambiguous", ambiguous.count)
        except ObjectHidden:
            return ("missing",)
    except ObjectHidden:
        assert status == 404
        return ("missing",)


@settings(max_examples=1500, deadline=None)
@given(worlds(), st.one_of(ids, st.sampled_from(["web", "db", "a", "9", "a9", "b"])),
       st.sampled_from(["dockerd-20.10", "dockerd", "podman"]), st.booleans(), st.sampled_from(["container", "service"]))
def test_property_a_name_means_what_it_would_if_the_hidden_objects_did_not_exist(world, name, flavour, daemon_filters, kind):
    if kind == "service" and flavour != "dockerd":
        return
    visible_world = [o for o in world if o[2]]
    assert porthole_resolves(kind, world, name, flavour, daemon_filters) == daemon_resolves(visible_world, name)


# ---------------------------------------------------------------------------------------------
# the answer to a hidden name: the daemon's own bytes

def test_daemon_error_is_the_daemons_missing_or_ambiguous_answer_byte_for_byte():
    from porthole.core.filters import Ambiguous, daemon_error
    missing = ObjectHidden(404, "No such container: web")
    dockerd = {"api-version": "1.41", "server": "Docker/20.10.24+dfsg1 (linux)"}
    podman = {"api-version": "1.41", "libpod-api-version": "4.3.1"}
    assert daemon_error(missing, "container", "web", dockerd) == (404, b'{"message":"No such container: web"}\n')
    assert daemon_error(missing, "container", "web", podman) == (
        404, b'{"cause":"no such container","message":"no container with name or ID \\"web\\" found: no such container",'
             b'"response":404}\n')
    assert daemon_error(ObjectHidden(404, ""), "service", "s", dockerd) == (404, b'{"message":"service s not found"}\n')
    two = Ambiguous("container", "9", 2)
    assert daemon_error(two, "container", "9", dockerd) == (500, b'{"message":"Multiple IDs found with provided prefix: 9"}\n')
    assert daemon_error(two, "container", "9", {"api-version": "1.43"}) == (
        400, b'{"message":"multiple IDs found with provided prefix: 9"}\n')
    assert daemon_error(two, "container", "9", podman)[0] == 404
    assert daemon_error(Ambiguous("service", "9", 2), "service", "9", dockerd) == (
        400, b'{"message":"service 9 is ambiguous (2 matches found)"}\n')


# ---------------------------------------------------------------------------------------------
# answers about other objects that name or count hidden ones

def test_scoped_inspects_and_info_ask_the_daemon_first():
    for target, kind in [("/v1.41/containers/web/json", "container"), ("/libpod/containers/web/json", "container"),
                         ("/services/s", "service"), ("/tasks/t", "task")]:
        p = plan(SCOPED, target, "HEAD")
        assert p.ask_first == kind and p.filter.kind == kind and p.method == "GET", target
    assert plan(SCOPED, "/v1.41/info").ask_first == "visible containers"
    assert plan(SCOPED, "/v4.3.1/libpod/info").ask_first == "visible containers"
    for target in ("/containers/web/json", "/info", "/images/json", "/networks/n"):
        assert getattr(plan(Filtering(), target), "ask_first", None) is None  # no scope: as before


def test_info_counts_visible_containers_only():
    from porthole.core.filters import visible_counts
    listed = [{"Id": "1", "State": "running", "Labels": {"team": "a"}}, {"Id": "2", "State": "paused", "Labels": {"team": "a"}},
              {"Id": "3", "State": "exited", "Labels": {"team": "a"}}, {"Id": "4", "State": "restarting", "Labels": {"team": "a"}},
              {"Id": "5", "State": "running", "Labels": {"team": "b"}}]  # a daemon that ignored the filter
    counts = visible_counts(200, listed, SCOPED)
    assert counts == (4, 1, 1, 2)
    p = plan(SCOPED, "/info")
    assert p.filter is not None and p.filter.kind == "info"
    p.filter.counts = counts
    docker = {"Containers": 9, "ContainersRunning": 5, "ContainersPaused": 1, "ContainersStopped": 3, "Images": 4}
    assert p.filter.document(dict(docker)) == {"Containers": 4, "ContainersRunning": 1, "ContainersPaused": 1,
                                               "ContainersStopped": 2, "Images": 4}
    libpod = {"host": {}, "store": {"containerStore": {"number": 9, "paused": 0, "running": 1, "stopped": 8}}}
    assert p.filter.document(copy.deepcopy(libpod))["store"]["containerStore"] == {"number": 4, "paused": 1,
                                                                                  "running": 1, "stopped": 2}
    with pytest.raises(TransformError, match="not counted"):
        ResponseFilter(SCOPED, "info").document(dict(docker))
    with pytest.raises(TransformError, match="answered 500"):
        visible_counts(500, {"message": "x"}, SCOPED)


def test_disk_usage_counts_what_visible_containers_use():
    df = {"LayersSize": 1,
          "Images": [{"Id": "sha256:i1", "Containers": 3}, {"Id": "sha256:i2", "Containers": 1}],
          "Containers": [{"Id": "c1", "ImageID": "sha256:i1", "Labels": {"team": "a"},
                          "Mounts": [{"Type": "volume", "Name": "v1"}]},
                         {"Id": "c2", "ImageID": "sha256:i1", "Labels": {"team": "b"},
                          "Mounts": [{"Type": "volume", "Name": "v1"}, {"Type": "volume", "Name": "v2"}]},
                         {"Id": "c3", "ImageID": "sha256:i2", "Labels": {"team": "b"}, "Mounts": []}],
          "Volumes": [{"Name": "v1", "UsageData": {"Size": 1, "RefCount": 2}},
                      {"Name": "v2", "UsageData": {"Size": 1, "RefCount": 1}}],
          "BuildCache": []}
    out, f = run(SCOPED, "disk usage", df)
    assert [c["Id"] for c in out["Containers"]] == ["c1"] and f.hidden == 2
    assert [i["Containers"] for i in out["Images"]] == [1, 0]
    assert [v["UsageData"]["RefCount"] for v in out["Volumes"]] == [1, 0]
    only_images = {"Images": [{"Id": "sha256:i1", "Containers": 3}], "Volumes": [{"Name": "v1", "UsageData": {"RefCount": 2}}]}
    out, _ = run(SCOPED, "disk usage", only_images)  # ?type=image: nothing to count by: not computed
    assert out["Images"][0]["Containers"] == -1 and out["Volumes"][0]["UsageData"]["RefCount"] == -1
    libpod = {"Images": [{"ImageID": "i1", "Containers": 2}], "Containers": [{"ContainerID": "c", "Names": "n"}],
              "Volumes": [{"VolumeName": "v", "Links": 1}]}
    out, _ = run(SCOPED, "disk usage", libpod)
    assert out == {"Images": [{"ImageID": "i1", "Containers": 0}], "Containers": [], "Volumes": [{"VolumeName": "v", "Links": 0}]}
    assert run(Filtering(), "disk usage", df)[0]["Images"][0]["Containers"] == 3  # no scope: as the daemon says


def test_image_list_neither_counts_nor_names_containers_under_a_scope():
    images = [{"Id": "sha256:i1", "Containers": 2, "Manifests": [{"ImageData": {"Containers": ["c1", "c2"]}}]},
              {"Id": "sha256:i2", "Containers": -1}]
    p = plan(SCOPED, "/images/json?manifests=1")
    assert p.filter is not None and p.filter.kind == "image list"
    out = p.filter.document(copy.deepcopy(images))
    assert out == [{"Id": "sha256:i1", "Containers": -1, "Manifests": [{"ImageData": {"Containers": []}}]},
                   {"Id": "sha256:i2", "Containers": -1}]
    assert plan(Filtering(), "/images/json").filter is None  # no scope: relayed untouched


def test_network_services_and_libpod_containers_are_hidden():
    verbose = {"Name": "ingress", "Containers": {"c1": {"Name": "web"}},
               "Services": {"secret-svc": {"VIP": "10.0.0.2", "Tasks": [{"Name": "secret-svc.1.x", "EndpointIP": "10.0.0.3"}]}},
               "Peers": [{"Name": "node1", "IP": "192.0.2.1"}]}
    p = plan(SCOPED, "/v1.41/networks/ingress?verbose=true")
    out = p.filter.document(copy.deepcopy(verbose))
    assert out["Containers"] == {} and out["Services"] == {} and out["Peers"] == verbose["Peers"] and p.filter.hidden == 2
    libpod = {"name": "podman", "containers": {"c1": {"name": "web", "interfaces": {}}}}
    p = plan(SCOPED, "/v5.0.0/libpod/networks/podman/json")
    assert p.filter.kind == "network" and p.filter.document(copy.deepcopy(libpod))["containers"] == {}
    p = plan(SCOPED, "/v5.0.0/libpod/networks/json")
    assert p.filter.kind == "network list" and p.filter.document([copy.deepcopy(libpod)])[0]["containers"] == {}
    assert run(Filtering(), "network", verbose)[0] == verbose


def test_pods_under_a_scope_name_no_container():
    pod = {"Id": "p", "Name": "pod", "NumContainers": 2, "Containers": [{"Id": "c1", "Name": "web"}, {"Id": "c2", "Name": "x"}]}
    p = plan(SCOPED, "/libpod/pods/pod/json")
    out = p.filter.document(copy.deepcopy(pod))
    assert out["Containers"] == [] and out["NumContainers"] == 0 and out["Name"] == "pod"
    listed = plan(SCOPED, "/libpod/pods/json")
    assert listed.filter.document([{"Id": "p", "Containers": [{"Id": "c1", "Names": "web"}]}])[0]["Containers"] == []


def test_a_committed_images_container_is_not_named_under_a_scope():
    image = {"Id": "sha256:i", "Container": "c" * 64, "ContainerConfig": {"Hostname": "cccccccccccc", "Labels": {"team": "b"}},
             "Config": {"Env": [f"A={SECRET}"]}}
    out, f = run(SCOPED, "image", image)
    assert "Container" not in out and "ContainerConfig" not in out and f.hidden == 1
    assert run(Filtering(), "image", image)[0]["Container"] == "c" * 64
