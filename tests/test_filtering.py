"""Response filtering without the daemon: the profile keys, the pure filters (examples,
property tests), planning (which answers are filtered, label filters added), and a hostile
upstream (the fake daemon) whose answers cannot be filtered: each gets a 502 and nothing
unfiltered. tests/test_filtering_docker.py does the same against the real daemon."""
from __future__ import annotations

import copy
import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fake_upstream as fu
import support

sys.path.insert(0, str(support.REPO))
import proxy as porthole  # noqa: E402

SECRET = "hunter2-SECRET"


def policy_with(profile: dict, extra: dict | None = None) -> porthole.Policy:
    profiles = {"default": {"rules": [{"method": "GET", "path": "/_ping"}]}, "p": profile, **(extra or {})}
    return porthole.load_policy(json.dumps({"version": 1, "profiles": profiles}))


RULE = [{"method": "GET", "path": "/containers/json"}]


# ---------------------------------------------------------------------------------------------
# the profile keys


def test_a_profile_without_redact_redacts_the_defaults():
    policy = policy_with({"rules": RULE})
    assert policy.filtering["p"].redact == porthole.DEFAULT_REDACTIONS
    assert policy.filtering["default"].redact >= {"env", "log-options", "volume-options", "exec-commands"}
    assert policy.filtering["p"].visible == ()


def test_redact_lists_are_explicit_and_checked():
    assert policy_with({"rules": RULE, "redact": []}).filtering["p"].redact == frozenset()
    assert policy_with({"rules": RULE, "redact": ["env", "host-paths"]}).filtering["p"].redact == {"env", "host-paths"}
    for bad, message in [("env", "must be a list"), (["env", "env"], "twice"), (["secrets"], "unknown redaction"),
                         ([1], "must be a list")]:
        with pytest.raises(porthole.PolicyError, match=message):
            policy_with({"rules": RULE, "redact": bad})


def test_visible_takes_docker_label_filters():
    filtering = policy_with({"rules": RULE, "visible": {"labels": ["team", "tier=web", "a=b=c"]}}).filtering["p"]
    assert filtering.visible == (("team", None), ("tier", "web"), ("a", "b=c"))
    assert filtering.label_filters() == ["team", "tier=web", "a=b=c"]
    for bad in [{"labels": []}, {"labels": "team"}, {"label": ["x"]}, {"labels": ["=x"]}, {"labels": [" x"]},
                ["team"], {"labels": ["x"], "names": ["y"]}, {"labels": ["x\ny"]}]:
        with pytest.raises(porthole.PolicyError, match="visible"):
            policy_with({"rules": RULE, "visible": bad})


def test_visible_is_inherited_and_redact_is_not():
    """Leaving a key out never widens what a profile sees."""
    policy = policy_with({"rules": RULE, "redact": [], "visible": {"labels": ["team=a"]}},
                         {"child": {"extends": "p", "rules": [{"method": "GET", "path": "/info"}]},
                          "own": {"extends": "p", "rules": [{"method": "GET", "path": "/info"}],
                                  "visible": {"labels": ["team=b"]}}})
    assert policy.filtering["child"].visible == (("team", "a"),)
    assert policy.filtering["child"].redact == porthole.DEFAULT_REDACTIONS
    assert policy.filtering["own"].visible == (("team", "b"),)


def test_shipped_rules_load_and_every_preset_redacts_at_least_the_defaults():
    policy = porthole.load_policy((support.REPO / "rules.json").read_text(), "rules.json")
    for name, filtering in policy.filtering.items():
        assert filtering.redact >= porthole.DEFAULT_REDACTIONS, name


# ---------------------------------------------------------------------------------------------
# the filters, by example


def inspect_doc(secret: str = SECRET) -> dict:
    """The fields of a container inspect that hold secrets or host paths (dockerd's shape)."""
    return {
        "Id": "a" * 64, "Name": "/web", "Path": "sh", "Args": ["-c", f"run --password={secret}"],
        "ResolvConfPath": f"/var/lib/docker/{secret}/resolv.conf", "LogPath": f"/var/lib/{secret}.log",
        "HostnamePath": "", "HostsPath": None,
        "Config": {"Env": [f"DB_PASSWORD={secret}", "PATH=/bin", "EMPTY=", "UNSET"],
                   "Labels": {"team": "a", "tier": "web"}, "Cmd": ["run", secret], "Entrypoint": None,
                   "Healthcheck": {"Test": ["CMD-SHELL", f"curl -u admin:{secret} localhost"]}},
        "HostConfig": {"LogConfig": {"Type": "splunk", "Config": {"splunk-token": secret, "splunk-url": "x"}},
                       "Binds": [f"/srv/{secret}:/data:ro"],
                       "Mounts": [{"Type": "volume", "Source": f"{secret}-vol", "Target": "/v",
                                   "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {
                                       "type": "cifs", "o": f"username=u,password={secret}"}}}}]},
        "Mounts": [{"Type": "bind", "Source": f"/srv/{secret}", "Destination": "/data"}],
        "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": f"/var/lib/docker/overlay2/{secret}"}},
    }


def run(filtering: porthole.Filtering, kind: str, doc, name="web"):
    f = porthole.ResponseFilter(filtering, kind, name)
    return f.document(copy.deepcopy(doc)), f


def test_container_inspect_keeps_names_and_drops_values():
    out, f = run(porthole.Filtering(), "container", inspect_doc())
    assert out["Config"]["Env"] == ["DB_PASSWORD=", "PATH=", "EMPTY=", "UNSET"]
    assert out["HostConfig"]["LogConfig"] == {"Type": "splunk", "Config": {"splunk-token": "", "splunk-url": ""}}
    assert out["HostConfig"]["Mounts"][0]["VolumeOptions"]["DriverConfig"]["Options"] == {"type": "", "o": ""}
    assert f.redacted == 2 + 2 + 2
    # commands and host paths are opt-in: still there by default
    assert SECRET in json.dumps(out["Args"]) and SECRET in out["Mounts"][0]["Source"]


def test_everything_redacted_leaves_no_secret_anywhere():
    out, f = run(porthole.Filtering(frozenset(porthole.REDACTIONS)), "container", inspect_doc())
    assert SECRET not in json.dumps(out)
    assert out["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL"]
    assert out["HostConfig"]["Binds"] == [":/data:ro"]
    assert out["Name"] == "/web" and out["Config"]["Labels"] == {"team": "a", "tier": "web"}


def test_nothing_redacted_changes_nothing():
    out, f = run(porthole.Filtering(frozenset()), "container", inspect_doc())
    assert out == inspect_doc() and f.redacted == 0


def test_swarm_volume_plugin_and_config_shapes():
    spec = {"ContainerSpec": {"Env": [f"TOKEN={SECRET}"], "Labels": {"team": "a"},
                              "Mounts": [{"VolumeOptions": {"DriverConfig": {"Options": {"password": SECRET}}}}]},
            "LogDriver": {"Name": "splunk", "Options": {"splunk-token": SECRET}}}
    service = {"ID": "s1", "Spec": {"Name": "svc", "Labels": {"team": "a"}, "TaskTemplate": copy.deepcopy(spec)},
               "PreviousSpec": {"TaskTemplate": copy.deepcopy(spec)}}
    task = {"ID": "t1", "ServiceID": "s1", "Spec": copy.deepcopy(spec)}
    volume = {"Name": "v", "Driver": "local", "Options": {"o": f"password={SECRET}"}, "Mountpoint": "/x"}
    plugin = {"Name": "p", "Settings": {"Env": [f"KEY={SECRET}"]},
              "Config": {"Env": [{"Name": "KEY", "Value": SECRET, "Settable": ["value"]}]}}
    config = {"ID": "c1", "Spec": {"Name": "cfg", "Data": "aHVudGVyMg=="}}
    everything = porthole.Filtering()
    for kind, doc in [("service", service), ("service list", [service]), ("task", task), ("task list", [task]),
                      ("volume", volume), ("volume list", {"Volumes": [volume], "Warnings": None}),
                      ("plugin", plugin), ("plugin list", [plugin]), ("config", config), ("config list", [config]),
                      ("disk usage", {"Volumes": [volume], "Containers": [], "Images": []})]:
        out, f = run(everything, kind, doc)
        text = json.dumps(out)
        assert SECRET not in text and "aHVudGVyMg" not in text, kind
        assert f.redacted > 0, kind
    out, _ = run(everything, "service", service)
    assert out["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["TOKEN="]


def test_image_inspect_env():
    out, f = run(porthole.Filtering(), "image", {"Config": {"Env": [f"A={SECRET}"]}, "ContainerConfig": None})
    assert out["Config"]["Env"] == ["A="] and f.redacted == 1


def test_visible_scope_on_lists_and_objects():
    scoped = porthole.Filtering(visible=(("team", "a"),))
    listed = [{"Id": "1", "Labels": {"team": "a"}}, {"Id": "2", "Labels": {"team": "b"}},
              {"Id": "3", "Labels": None}, {"Id": "4", "Labels": {"team": "a", "x": "y"}}]
    out, f = run(scoped, "container list", listed)
    assert [c["Id"] for c in out] == ["1", "4"] and f.hidden == 2
    doc = inspect_doc()
    doc["Config"]["Labels"] = {"team": "b"}
    with pytest.raises(porthole.ObjectHidden) as hidden:
        run(scoped, "container", doc, name="abc")
    assert (hidden.value.status, hidden.value.message) == (404, "No such container: abc")
    with pytest.raises(porthole.ObjectHidden, match="service svc not found"):
        run(scoped, "service", {"Spec": {"Labels": {}}}, name="svc")
    key_only = porthole.Filtering(visible=(("team", None),))
    assert [c["Id"] for c in run(key_only, "container list", listed)[0]] == ["1", "2", "4"]
    network = {"Name": "n", "Containers": {"1" * 64: {"Name": "secret-app"}}}
    assert run(scoped, "network", network)[0]["Containers"] == {}
    assert run(porthole.Filtering(), "network", network)[0]["Containers"] != {}


def test_events_exec_commands_and_scope():
    f = porthole.ResponseFilter(porthole.Filtering(visible=(("team", "a"),)), "events")
    exec_event = {"status": f"exec_create: sh -c echo {SECRET}", "id": "1" * 64, "Type": "container",
                  "Action": f"exec_start: sh -c echo {SECRET}",
                  "Actor": {"ID": "1" * 64, "Attributes": {"execID": "e", "team": "a", "name": "web"}}}
    out = f.event(copy.deepcopy(exec_event))
    assert out["Action"] == "exec_start" and out["status"] == "exec_create" and SECRET not in json.dumps(out)
    other = copy.deepcopy(exec_event)
    other["Actor"]["Attributes"]["team"] = "b"
    assert f.event(other) is None
    assert f.event({"Type": "service", "Action": "create", "Actor": {"Attributes": {"name": "s"}}}) is None
    assert f.event({"Type": "network", "Action": "connect",
                    "Actor": {"Attributes": {"container": "2" * 64, "name": "none"}}}) is None
    image = {"Type": "image", "Action": "pull", "Actor": {"ID": "busybox", "Attributes": {"name": "busybox"}}}
    assert f.event(copy.deepcopy(image)) == image
    assert f.hidden == 3 and f.redacted == 2
    unscoped = porthole.ResponseFilter(porthole.Filtering(), "events")
    assert unscoped.event(copy.deepcopy(other))["Action"] == "exec_start"


def test_watchers_of_one_profile_share_the_filtering_of_each_event(monkeypatch):
    """ResponseFilter.event_line: the first watcher filters an event line, the next ones of the
    same filtering get the same bytes and the same counts without filtering it again; another
    filtering, or an event that fails, is never taken from the first one's work."""
    porthole._FILTERED_EVENTS.clear()
    scoped = porthole.Filtering(visible=(("team", "a"),))
    watchers = [porthole.ResponseFilter(scoped, "events") for _ in range(3)]
    unscoped = porthole.ResponseFilter(porthole.Filtering(), "events")
    calls = []
    real = porthole.ResponseFilter.event
    monkeypatch.setattr(porthole.ResponseFilter, "event", lambda self, e: (calls.append(self), real(self, e))[1])
    exec_line = json.dumps({"status": f"exec_start: sh -c {SECRET}", "Type": "container", "Action": f"exec_start: sh -c {SECRET}",
                            "Actor": {"ID": "1", "Attributes": {"team": "a", "execCommand": SECRET}}}).encode()
    hidden_line = json.dumps({"Type": "container", "Action": "start", "Actor": {"ID": "2", "Attributes": {"team": "b"}}}).encode()
    outs = [[w.event_line(bytearray(line)) for w in watchers] for line in (exec_line, hidden_line)]  # (as split)
    assert calls == [watchers[0], watchers[0]]  # once per line, by the first watcher
    assert len(set(outs[0])) == 1 and SECRET.encode() not in outs[0][0] and outs[1] == [b""] * 3
    assert all((w.redacted, w.hidden) == (watchers[0].redacted, watchers[0].hidden) == (3, 1) for w in watchers)
    assert SECRET.encode() not in unscoped.event_line(exec_line) and calls[-1] is unscoped
    assert unscoped.event_line(hidden_line) != b"" and unscoped.hidden == 0
    for _ in range(2):  # a line that cannot be filtered fails for every watcher: nothing is kept
        with pytest.raises(porthole.TransformError):
            watchers[1].event_line(b'{"Type": "container", "Actor": []}')


EVENT_FILTERINGS = [porthole.Filtering(), porthole.Filtering(redact=frozenset()),
                    porthole.Filtering(visible=(("team", "a"),)), porthole.Filtering(visible=(("team", None),))]
event_dicts = st.fixed_dictionaries({
    "Type": st.sampled_from(["container", "network", "service", "image"]),
    "Action": st.sampled_from(["start", "exec_start: sh -c " + SECRET, "exec_create: id", "connect"]),
    "Actor": st.fixed_dictionaries({"ID": st.sampled_from(["1", "2"]), "Attributes": st.dictionaries(
        st.sampled_from(["team", "execCommand", "container", "name"]), st.sampled_from(["a", "b", SECRET]), max_size=3)})})


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, len(EVENT_FILTERINGS) - 1), event_dicts), max_size=12))
def test_shared_event_filtering_gives_each_watcher_what_its_own_filter_gives(steps):
    """Any sequence of watchers (of any profile) and events, through the shared table: every
    watcher gets the bytes and the counts its own filter gives on its own."""
    porthole._FILTERED_EVENTS.clear()
    for index, event in steps:
        line = json.dumps(event).encode()
        shared, alone = (porthole.ResponseFilter(EVENT_FILTERINGS[index], "events") for _ in range(2))
        assert shared.event_line(line) == porthole.event_bytes(alone.event, line)
        assert (shared.redacted, shared.hidden) == (alone.redacted, alone.hidden)


@pytest.mark.parametrize("kind, doc, where", [
    ("container", {"Config": {"Env": "A=b"}}, "Config.Env"),
    ("container", {"Config": {"Env": [1]}}, r"Config.Env\[0\]"),
    ("container", {"Config": []}, "Config"),
    ("container", ["not", "an", "object"], "the answer"),
    ("container", {"HostConfig": {"LogConfig": {"Config": ["x"]}}}, "LogConfig.Config"),
    ("container list", {"Id": "x"}, "array"),
    ("container list", [{"Labels": ["team=a"]}], "Labels"),
    ("volume list", {"Volumes": {"v": {}}}, "Volumes"),
    ("service", {"Spec": {"TaskTemplate": {"ContainerSpec": {"Env": {"A": "b"}}}}}, "Env"),
])
def test_unexpected_shapes_fail_closed(kind, doc, where):
    scoped = porthole.Filtering(visible=(("team", "a"),))
    with pytest.raises(porthole.TransformError, match=where):
        porthole.ResponseFilter(scoped if "list" in kind else porthole.Filtering(), kind, "x").document(doc)


# ---------------------------------------------------------------------------------------------
# property tests: no redacted value survives anywhere; filtering is idempotent

secret_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789=:/, -", min_size=1, max_size=12).map(
    lambda s: "ZQX" + s)  # every generated secret carries a marker no key or fixed value holds
names = st.sampled_from(["A", "PATH", "DB_PASSWORD", "TOKEN", "X_1"])
env_list = st.lists(st.builds(lambda n, v: f"{n}={v}", names, secret_text), max_size=4)
options = st.dictionaries(names, secret_text, max_size=3)
junk = st.recursive(st.none() | st.booleans() | st.integers() | st.sampled_from(["x", "y", ""]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["k", "Name", "Id"]),
                                                                                 inner, max_size=3),
                    max_leaves=8)


@st.composite
def inspects(draw):
    mounts = draw(st.lists(st.fixed_dictionaries({
        "Type": st.just("volume"), "Target": st.just("/t"), "Source": secret_text,
        "VolumeOptions": st.fixed_dictionaries({"DriverConfig": st.fixed_dictionaries({"Options": options})})}),
        max_size=2))
    doc = {"Id": "a" * 64, "Extra": draw(junk), "Path": draw(secret_text), "Args": draw(st.lists(secret_text, max_size=3)),
           "Config": {"Env": draw(env_list), "Labels": {"team": "a"}, "Cmd": draw(st.lists(secret_text, max_size=2)),
                      "Healthcheck": {"Test": ["CMD-SHELL", draw(secret_text)]}, "Junk": draw(junk)},
           "HostConfig": {"LogConfig": {"Type": "x", "Config": draw(options)}, "Mounts": mounts,
                          "Binds": [f"/{draw(secret_text)}:/d"]},
           "Mounts": [{"Source": draw(secret_text), "Destination": "/d"}],
           "GraphDriver": {"Data": draw(options)}, "LogPath": draw(secret_text)}
    if draw(st.booleans()):
        doc["Config"]["Env"] = None
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inspects())
def test_property_no_redacted_value_survives_and_filtering_is_idempotent(doc):
    everything = porthole.Filtering(frozenset(porthole.REDACTIONS))
    once, _ = run(everything, "container", doc)
    assert "ZQX" not in json.dumps(once)
    twice, second = run(everything, "container", once)
    assert twice == once and second.redacted == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({"Id": st.text(max_size=4),
                                       "Labels": st.dictionaries(st.sampled_from(["team", "tier"]),
                                                                 st.sampled_from(["a", "b"]), max_size=2),
                                       "Command": secret_text}), max_size=6),
       st.lists(st.tuples(st.sampled_from(["team", "tier"]), st.none() | st.sampled_from(["a", "b"])),
                min_size=1, max_size=2))
def test_property_lists_keep_exactly_the_matching_objects(items, wanted):
    filtering = porthole.Filtering(frozenset(porthole.REDACTIONS), tuple(wanted))
    out, f = run(filtering, "container list", items)
    expected = [i["Id"] for i in items
                if all(k in i["Labels"] and (v is None or i["Labels"][k] == v) for k, v in wanted)]
    assert [i["Id"] for i in out] == expected and f.hidden == len(items) - len(out)
    assert "ZQX" not in json.dumps(out)
    assert run(filtering, "container list", out)[0] == out


# ---------------------------------------------------------------------------------------------
# planning


def plan(filtering, target, method="GET"):
    return porthole.plan_response_filter(filtering, method, porthole.canonicalize_target(target.encode()))


def test_unfiltered_answers_are_relayed_untouched():
    """The default profile buffers nothing it has nothing to remove from."""
    default = porthole.Filtering()
    for target in ["/v1.41/containers/json?all=1", "/_ping", "/info", "/containers/x/logs", "/images/json",
                   "/networks/n"]:
        p = plan(default, target)
        assert p.filter is None and p.lookup is None, target
    assert plan(porthole.Filtering(frozenset()), "/containers/x/json").filter is None
    assert plan(porthole.Filtering(frozenset()), "/events").filter is None


def test_filtered_answers_and_head_as_get():
    default = porthole.Filtering()
    p = plan(default, "/v1.41/containers/web/json", "HEAD")
    assert p.filter.kind == "container" and p.filter.name == "web" and p.method == "GET"
    assert plan(default, "/libpod/containers/web/json").filter.kind == "container"
    assert plan(default, "/images/library/busybox/json").filter.kind == "image"
    e = plan(default, "/events", "HEAD")
    assert e.filter.kind == "events" and e.method == "HEAD"


def test_scoped_lists_get_the_label_filter_added():
    scoped = porthole.Filtering(visible=(("team", "a"), ("app", None)))
    p = plan(scoped, "/v1.41/containers/json?all=1")
    assert p.filter.kind == "container list"
    assert json.loads(p.target.query_value("filters")) == {"label": ["team=a", "app"]}
    assert p.target.forward_form().startswith("/v1.41/containers/json?all=1&filters=")
    listed = plan(scoped, '/containers/json?filters={"label":["x=1","app"],"status":["running"]}')
    assert json.loads(listed.target.query_value("filters")) == {"label": ["x=1", "app", "team=a"], "status": ["running"]}
    other_map = plan(scoped, '/containers/json?filters={"name":{"web":true}}')  # the CLI's form
    assert json.loads(other_map.target.query_value("filters")) == {"name": {"web": True},
                                                                   "label": {"team=a": True, "app": True}}
    mapped = plan(scoped, '/services?filters={"label":{"x=1":true}}')
    assert json.loads(mapped.target.query_value("filters")) == {"label": {"x=1": True, "team=a": True, "app": True}}
    assert plan(scoped, "/tasks").target.query == ()  # tasks: filtered by their containers' labels only
    for bad in ["/containers/json?filters=nope", "/containers/json?filters=[1]",
                '/containers/json?filters={"label":"x"}']:
        with pytest.raises(porthole.Refusal) as refused:
            plan(scoped, bad)
        assert refused.value.status == 400


def test_per_object_requests_are_looked_up_first():
    scoped = porthole.Filtering(visible=(("team", "a"),))
    for target, kind in [("/containers/web/logs?follow=1", "container"), ("/containers/web/stats", "container"),
                         ("/containers/web/top", "container"), ("/libpod/containers/web/logs", "container"),
                         ("/services/s/logs", "service"), ("/tasks/t/logs", "task")]:
        assert plan(scoped, target).lookup == kind, target
    assert plan(scoped, "/containers/web/json").lookup is None  # its own answer says


def test_resolved_object():
    scoped = porthole.Filtering(visible=(("team", "a"),))
    visible = {"Id": "b" * 64, "Config": {"Labels": {"team": "a"}}}
    assert porthole.resolved_object("container", "web", 200, visible, scoped) == "b" * 64
    for status, doc in [(404, {"message": "No such container: web"}),
                        (200, {"Id": "c" * 64, "Config": {"Labels": {"team": "b"}}})]:
        with pytest.raises(porthole.ObjectHidden) as hidden:
            porthole.resolved_object("container", "web", status, doc, scoped)
        assert (hidden.value.status, hidden.value.message) == (404, "No such container: web")
    with pytest.raises(porthole.ObjectHidden) as error:
        porthole.resolved_object("container", "web", 500, {"message": "boom"}, scoped)
    assert (error.value.status, error.value.message) == (500, "boom")
    with pytest.raises(porthole.TransformError, match="no usable ID"):
        porthole.resolved_object("container", "web", 200, {"Id": "../x", "Config": {"Labels": {"team": "a"}}}, scoped)
    assert porthole.resolved_object("service", "s", 200, {"ID": "s" * 25, "Spec": {"Labels": {"team": "a"}}},
                                    scoped) == "s" * 25


# ---------------------------------------------------------------------------------------------
# a hostile daemon: answers that cannot be filtered give a 502 and nothing unfiltered

RULES = {"version": 1, "profiles": {
    "default": {"rules": [{"method": ["GET", "HEAD"], "path": "/containers/{id}/json"},
                          {"method": "GET", "path": "/containers/json"},
                          {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True},
                          {"method": "GET", "path": "/events"}],
                "visible": {"labels": ["team=a"]}}}}


def serve(body: bytes, chunked: bool = False, status: int = 200):
    def handler(conn, req):
        if chunked:
            head = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n").encode()
            conn.send(head + fu.chunk(body) + fu.LAST_CHUNK)
        else:
            conn.send(fu.response(status, body))
        return True
    return handler


HOSTILE = {
    "not JSON": b"<html>" + SECRET.encode() + b"</html>",
    "truncated": json.dumps({"Config": {"Env": [f"A={SECRET}"], "Labels": {"team": "a"}}}).encode()[:-5],
    "deeply nested": b'{"Config": {"Labels": {"team": "a"}, "Env": ["A=' + SECRET.encode() + b'"]}, "x": '
                     + b"[" * 100000 + b"]" * 100000 + b"}",
    "wrongly typed": json.dumps({"Config": {"Labels": {"team": "a"}, "Env": f"A={SECRET}"}}).encode(),
    "huge": json.dumps({"Config": {"Labels": {"team": "a"}, "Env": [f"A={SECRET}"]},
                        "pad": "x" * 300_000}).encode(),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_hostile_answers_get_a_502_and_nothing_unfiltered(start_proxy, upstream, case, chunked):
    upstream.route("/containers/web/json", serve(HOSTILE[case], chunked))
    p = start_proxy("--max-filter-bytes", 200_000)
    r = fu.get(p.addr, "/v1.41/containers/web/json")
    assert r.status == 502, r
    assert SECRET.encode() not in r.body and r.json()["message"].startswith("porthole: response filter failed")
    assert support.wait_until(lambda: any(l.get("event") == "request" and l.get("status") == 502
                                          for l in p.logs()), 5)


def test_daemon_errors_pass_through_untouched(start_proxy, upstream):
    body = json.dumps({"message": "No such container: web"}).encode()
    upstream.route("/containers/web/json", serve(body, status=404))
    p = start_proxy()
    r = fu.get(p.addr, "/containers/web/json")
    assert (r.status, r.body) == (404, body)


def test_head_gets_the_filtered_content_length(start_proxy, upstream):
    doc = {"Id": "a" * 64, "Config": {"Env": [f"A={SECRET}"], "Labels": {"team": "a"}}}
    upstream.route("/containers/web/json", serve(json.dumps(doc).encode()))
    p = start_proxy()
    got, head = fu.get(p.addr, "/containers/web/json"), fu.get(p.addr, "/containers/web/json", method="HEAD")
    assert got.status == head.status == 200 and SECRET.encode() not in got.body
    assert int(head.header("content-length")) == len(got.body) and head.body == b""
    assert [r.method for r in upstream.requests[-1:]] == ["GET"]  # HEAD went as GET, to be filtered


def test_a_hostile_event_aborts_the_stream_without_passing_it(start_proxy, upstream):
    good = {"Type": "container", "Action": "start", "Actor": {"ID": "1", "Attributes": {"team": "a"}}}
    events = (json.dumps(good) + "\n" + '{"Type": "container", "Action": "exec_start: ' + SECRET + '"\n').encode()

    def handler(conn, req):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + fu.chunk(events) + fu.LAST_CHUNK)
        return True
    upstream.route("/events", handler)
    p = start_proxy()
    with fu.HttpClient(p.addr) as c:
        c.request("GET", "/events")
        try:
            r = c.read_response("GET")
            body, complete = r.body, r.complete
        except fu.ConnectionClosed as closed:
            body, complete = getattr(closed, "partial", b""), False
    assert SECRET.encode() not in body and not complete


def test_watchers_with_different_profiles_share_one_subscription(proxy_factory, upstream):
    """The fan-out happens before filtering: one daemon subscription, a view per profile."""
    def event(i):
        team = "a" if i % 2 == 0 else "b"
        return json.dumps({"status": f"exec_create: echo {SECRET}", "id": f"c{i:06d}", "Type": "container",
                           "Action": f"exec_create: echo {SECRET}",
                           "Actor": {"ID": f"c{i:06d}", "Attributes": {"team": team, "n": str(i)}}}) + "\n"
    upstream.route("/events", lambda conn, req: _stream(conn, event))
    rules = support.write_rules({"version": 1, "profiles": {
        "default": {"rules": [{"method": "GET", "path": "/events"}]},
        "team-a": {"rules": [{"method": "GET", "path": "/events"}], "visible": {"labels": ["team=a"]}}}})
    ports = support.free_port(), support.free_port()
    proxy_factory(listen=[f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}?profile=team-a"],
                  upstream=upstream.url, rules=rules)
    views = {}
    clients = []
    try:
        for port in ports:
            c = fu.HttpClient(("127.0.0.1", port), timeout=5)
            c.request("GET", "/v1.41/events")
            clients.append((port, c, c.read_head()))
        for port, c, r in clients:
            seen = []
            while len(seen) < 6:
                chunk = c.read_chunk(r, timeout=5)
                seen += [json.loads(line) for line in chunk.splitlines() if line.strip()]
            views[port] = seen
    finally:
        for _, c, _ in clients:
            c.close()
    everyone, team_a = views[ports[0]], views[ports[1]]
    assert {e["Actor"]["Attributes"]["team"] for e in everyone} == {"a", "b"}
    assert {e["Actor"]["Attributes"]["team"] for e in team_a} == {"a"}
    for e in everyone + team_a:
        assert e["Action"] == "exec_create" and SECRET not in json.dumps(e)
    assert len([q for q in upstream.requests if q.path == "/events"]) == 1


def _stream(conn, event):
    if not conn.send(fu.response(200, content_type="application/json",
                                 headers=[("Transfer-Encoding", "chunked")], content_length=False)):
        return False
    for i in range(100000):
        if not conn.send(fu.chunk(event(i))) or not conn.sleep(0.02):
            return False
    return True
