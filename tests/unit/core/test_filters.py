"""porthole/core/filters.py: response filtering without the daemon: the profile keys, the pure
filters (examples, property tests), planning (which answers are filtered, label filters added).
(A hostile fake daemon whose answers cannot be filtered: tests/daemon/test_filtering.py; the real
daemon: tests/daemon/test_filtering_docker.py.)"""
from __future__ import annotations

import copy
import json

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policies import REPO

from porthole.core.filters import (KEPT, Kept, ResponseFilter, filter_transform, plan_response_filter,
                                   resolved_object)
from porthole.core.objects import DEFAULT_REDACTIONS, REDACTIONS, Filtering, ObjectHidden
from porthole.core.policy import Policy, PolicyError, load_policy
from porthole.core.rewrite import ResponseRewriter, TransformError, document_bytes, event_bytes
from porthole.core.target import Refusal, canonicalize_target

SECRET = "hunter2-SECRET"


def policy_with(profile: dict, extra: dict | None = None) -> Policy:
    profiles = {"default": {"rules": [{"method": "GET", "path": "/_ping"}]}, "p": profile, **(extra or {})}
    return load_policy(json.dumps({"version": 1, "profiles": profiles}))


RULE = [{"method": "GET", "path": "/containers/json"}]


# ---------------------------------------------------------------------------------------------
# the profile keys


def test_a_profile_without_redact_redacts_the_defaults():
    policy = policy_with({"rules": RULE})
    assert policy.filtering["p"].redact == DEFAULT_REDACTIONS
    assert policy.filtering["default"].redact >= {"env", "log-options", "volume-options", "exec-commands"}
    assert policy.filtering["p"].visible == ()


def test_redact_lists_are_explicit_and_checked():
    assert policy_with({"rules": RULE, "redact": []}).filtering["p"].redact == frozenset()
    assert policy_with({"rules": RULE, "redact": ["env", "host-paths"]}).filtering["p"].redact == {"env", "host-paths"}
    for bad, message in [("env", "must be a list"), (["env", "env"], "twice"), (["secrets"], "unknown redaction"),
                         ([1], "must be a list")]:
        with pytest.raises(PolicyError, match=message):
            policy_with({"rules": RULE, "redact": bad})


def test_visible_takes_docker_label_filters():
    filtering = policy_with({"rules": RULE, "visible": {"labels": ["team", "tier=web", "a=b=c"]}}).filtering["p"]
    assert filtering.visible == (("team", None), ("tier", "web"), ("a", "b=c"))
    assert filtering.label_filters() == ["team", "tier=web", "a=b=c"]
    for bad in [{"labels": []}, {"labels": "team"}, {"label": ["x"]}, {"labels": ["=x"]}, {"labels": [" x"]},
                ["team"], {"labels": ["x"], "names": ["y"]}, {"labels": ["x\ny"]}]:
        with pytest.raises(PolicyError, match="visible"):
            policy_with({"rules": RULE, "visible": bad})


def test_visible_is_inherited_and_redact_is_not():
    """Leaving a key out never widens what a profile sees."""
    policy = policy_with({"rules": RULE, "redact": [], "visible": {"labels": ["team=a"]}},
                         {"child": {"extends": "p", "rules": [{"method": "GET", "path": "/info"}]},
                          "own": {"extends": "p", "rules": [{"method": "GET", "path": "/info"}],
                                  "visible": {"labels": ["team=b"]}}})
    assert policy.filtering["child"].visible == (("team", "a"),)
    assert policy.filtering["child"].redact == DEFAULT_REDACTIONS
    assert policy.filtering["own"].visible == (("team", "b"),)


def test_shipped_rules_load_and_every_preset_redacts_at_least_the_defaults():
    policy = load_policy((REPO / "rules.json").read_text(), "rules.json")
    for name, filtering in policy.filtering.items():
        assert filtering.redact >= DEFAULT_REDACTIONS, name


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


def run(filtering: Filtering, kind: str, doc, name="web"):
    f = ResponseFilter(filtering, kind, name)
    return f.document(copy.deepcopy(doc)), f


def test_container_inspect_keeps_names_and_drops_values():
    out, f = run(Filtering(), "container", inspect_doc())
    assert out["Config"]["Env"] == ["DB_PASSWORD=", "PATH=", "EMPTY=", "UNSET"]
    assert out["HostConfig"]["LogConfig"] == {"Type": "splunk", "Config": {"splunk-token": "", "splunk-url": ""}}
    assert out["HostConfig"]["Mounts"][0]["VolumeOptions"]["DriverConfig"]["Options"] == {"type": "", "o": ""}
    assert f.redacted == 2 + 2 + 2
    # commands and host paths are opt-in: still there by default
    assert SECRET in json.dumps(out["Args"]) and SECRET in out["Mounts"][0]["Source"]


def test_everything_redacted_leaves_no_secret_anywhere():
    out, f = run(Filtering(frozenset(REDACTIONS)), "container", inspect_doc())
    assert SECRET not in json.dumps(out)
    assert out["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL"]
    assert out["HostConfig"]["Binds"] == [":/data:ro"]
    assert out["Name"] == "/web" and out["Config"]["Labels"] == {"team": "a", "tier": "web"}


def test_nothing_redacted_changes_nothing():
    out, f = run(Filtering(frozenset()), "container", inspect_doc())
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
    everything = Filtering()
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
    out, f = run(Filtering(), "image", {"Config": {"Env": [f"A={SECRET}"]}, "ContainerConfig": None})
    assert out["Config"]["Env"] == ["A="] and f.redacted == 1


def test_visible_scope_on_lists_and_objects():
    scoped = Filtering(visible=(("team", "a"),))
    listed = [{"Id": "1", "Labels": {"team": "a"}}, {"Id": "2", "Labels": {"team": "b"}},
              {"Id": "3", "Labels": None}, {"Id": "4", "Labels": {"team": "a", "x": "y"}}]
    out, f = run(scoped, "container list", listed)
    assert [c["Id"] for c in out] == ["1", "4"] and f.hidden == 2
    doc = inspect_doc()
    doc["Config"]["Labels"] = {"team": "b"}
    with pytest.raises(ObjectHidden) as hidden:
        run(scoped, "container", doc, name="abc")
    assert (hidden.value.status, hidden.value.message) == (404, "No such container: abc")
    with pytest.raises(ObjectHidden, match="service svc not found"):
        run(scoped, "service", {"Spec": {"Labels": {}}}, name="svc")
    key_only = Filtering(visible=(("team", None),))
    assert [c["Id"] for c in run(key_only, "container list", listed)[0]] == ["1", "2", "4"]
    network = {"Name": "n", "Containers": {"1" * 64: {"Name": "secret-app"}}}
    assert run(scoped, "network", network)[0]["Containers"] == {}
    assert run(Filtering(), "network", network)[0]["Containers"] != {}


def test_events_exec_commands_and_scope():
    f = ResponseFilter(Filtering(visible=(("team", "a"),)), "events")
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
    unscoped = ResponseFilter(Filtering(), "events")
    assert unscoped.event(copy.deepcopy(other))["Action"] == "exec_start"


def test_watchers_of_one_profile_share_the_filtering_of_each_event(monkeypatch):
    """ResponseFilter.event_line: the first watcher filters an event line, the next ones of the
    same filtering get the same bytes and the same counts without filtering it again; another
    filtering, or an event that fails, is never taken from the first one's work."""
    KEPT.clear()
    scoped = Filtering(visible=(("team", "a"),))
    watchers = [ResponseFilter(scoped, "events") for _ in range(3)]
    unscoped = ResponseFilter(Filtering(), "events")
    calls = []
    real = ResponseFilter.event
    monkeypatch.setattr(ResponseFilter, "event", lambda self, e: (calls.append(self), real(self, e))[1])
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
        with pytest.raises(TransformError):
            watchers[1].event_line(b'{"Type": "container", "Actor": []}')


EVENT_FILTERINGS = [Filtering(), Filtering(redact=frozenset()),
                    Filtering(visible=(("team", "a"),)), Filtering(visible=(("team", None),))]
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
    KEPT.clear()
    for index, event in steps:
        line = json.dumps(event).encode()
        shared, alone = (ResponseFilter(EVENT_FILTERINGS[index], "events") for _ in range(2))
        assert shared.event_line(line) == event_bytes(alone.event, line)
        assert (shared.redacted, shared.hidden) == (alone.redacted, alone.hidden)


def test_an_answer_the_daemon_sends_again_is_not_filtered_again(monkeypatch):
    """ResponseFilter.document_bytes: the same bytes under the same filtering give the kept
    result (bytes and counts) without being parsed and filtered again; other bytes, another
    filtering, other /info counts, or an answer that fails (a hidden object) are never taken
    from it."""
    KEPT.clear()
    calls = []
    real = ResponseFilter.document
    monkeypatch.setattr(ResponseFilter, "document", lambda self, doc: (calls.append(self), real(self, doc))[1])
    answer = json.dumps(inspect_doc()).encode()
    first, again = ResponseFilter(Filtering(), "container", "web"), ResponseFilter(Filtering(), "container", "web")
    filtered = first.document_bytes(answer)
    assert again.document_bytes(answer) == filtered and f"DB_PASSWORD={SECRET}".encode() not in filtered
    assert calls == [first] and again.redacted == first.redacted > 0
    other = ResponseFilter(Filtering(frozenset(REDACTIONS)), "container", "web")
    assert other.document_bytes(answer) != first.document_bytes(answer) and calls[-1] is other
    changed = answer.replace(b'"/web"', b'"/web2"')
    assert b"/web2" in ResponseFilter(Filtering(), "container", "web").document_bytes(changed) and len(calls) == 3
    scoped = Filtering(visible=(("team", "b"),))
    for _ in range(2):  # hidden each time: nothing kept
        with pytest.raises(ObjectHidden):
            ResponseFilter(scoped, "container", "web").document_bytes(answer)
    assert len(calls) == 5
    info = json.dumps({"Containers": 9, "ContainersRunning": 9, "ContainersPaused": 0, "ContainersStopped": 0}).encode()
    counted = []
    for counts in ((1, 1, 0, 0), (2, 1, 0, 1), (1, 1, 0, 0)):
        f = ResponseFilter(Filtering(visible=(("team", "a"),)), "info")
        f.counts = counts
        counted.append(json.loads(f.document_bytes(info))["Containers"])
    assert counted == [1, 2, 1] and len(calls) == 7


docs_to_filter = st.sampled_from([inspect_doc(), inspect_doc("other-SECRET"), {**inspect_doc(), "Config": {"Labels": {}}},
                                  {"Config": {"Env": "not a list"}}])


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, len(EVENT_FILTERINGS) - 1), docs_to_filter), max_size=12),
       budget=st.sampled_from([0, 4096, 1 << 20]))
def test_property_kept_answers_give_each_request_what_its_own_filter_gives(steps, budget):
    """Any sequence of requests (of any profile, hidden and failing answers included) through
    the kept answers, whatever their budget: each gets the bytes, the counts or the error its
    own filter gives on its own."""
    KEPT.clear()
    monkeypatched = KEPT.budget
    KEPT.budget = budget
    try:
        for index, doc in steps:
            data = json.dumps(doc).encode()
            shared, alone = (ResponseFilter(EVENT_FILTERINGS[index], "container", "web") for _ in range(2))
            try:
                expected = document_bytes(alone.document, data)
            except TransformError as error:
                with pytest.raises(type(error)):
                    shared.document_bytes(data)
            else:
                assert shared.document_bytes(data) == expected
            assert (shared.redacted, shared.hidden) == (alone.redacted, alone.hidden)
            assert KEPT.size == sum(size for _, size in KEPT.entries.values()) <= budget
    finally:
        KEPT.budget = monkeypatched
        KEPT.clear()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(1, 300)), max_size=40))
def test_property_kept_stays_within_its_budget_and_drops_the_oldest_first(puts):
    """Kept holds at most its budget in bytes, never an entry over a sixteenth of it, and when it
    must make room it drops the entries put longest ago."""
    kept, order = Kept(1600), []
    for name, size in puts:
        key = (name, size)
        kept.put(key, (b"x", 0, 0), size)
        if size <= 100 and key not in order:
            order.append(key)
            while sum(k[1] for k in order) > 1600:
                order.pop(0)
        assert list(kept.entries) == order and kept.size == sum(k[1] for k in order) <= 1600
        assert all(kept.get(k) == (b"x", 0, 0) for k in order)


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
    ("swarm", ["not", "an", "object"], "the answer"),
    ("swarm", {"JoinTokens": "SWMTKN-1-x"}, "JoinTokens"),
    ("swarm", {"JoinTokens": {}, "Spec": {"CAConfig": {"SigningCAKey": {"pem": "x"}}}}, "SigningCAKey"),
])
def test_unexpected_shapes_fail_closed(kind, doc, where):
    scoped = Filtering(visible=(("team", "a"),))
    with pytest.raises(TransformError, match=where):
        ResponseFilter(scoped if "list" in kind else Filtering(), kind, "x").document(doc)


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
    everything = Filtering(frozenset(REDACTIONS))
    once, _ = run(everything, "container", doc)
    assert "ZQX" not in json.dumps(once)
    twice, second = run(everything, "container", once)
    assert twice == once and second.redacted == 0


@st.composite
def default_secrets(draw):
    """A container inspect with generated secrets only where the default redactions remove them:
    env values (in Env, a classic builder's Cmd, ONBUILD triggers, Podman's CreateCommand), log
    driver options and volume driver options; and other members around them."""
    secret = draw(secret_text)
    cmd = draw(st.sampled_from([["|1", f"K={secret}", "/bin/sh", "-c", "make"],
                                ["/bin/sh", "-c", "#(nop) ", f"ENV K={secret}"], ["run", "--flag"], [], None]))
    config = {"Env": draw(env_list), "Cmd": cmd, "OnBuild": draw(st.sampled_from([None, [], [f"ENV K={secret}"]])),
              "Labels": {"team": "a"}, "Junk": draw(junk)}
    if draw(st.booleans()):
        config["CreateCommand"] = ["podman", "run", "-e", f"K={secret}", f"--env=L={secret}", "img"]
    mounts = [{"Type": "volume", "Target": "/t",
               "VolumeOptions": {"DriverConfig": {"Options": draw(options)}}}] * draw(st.integers(0, 2))
    members = [("Id", "a" * 64), ("State", {"Status": "running", "Extra": draw(junk)}), ("Config", config),
               ("HostConfig", {"LogConfig": {"Type": "x", "Config": draw(options)}, "Mounts": mounts}),
               ("NetworkSettings", draw(junk))]
    return dict(draw(st.permutations(members)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(default_secrets(), st.sampled_from([None, frozenset(REDACTIONS)]))
def test_property_an_answers_bytes_lose_every_secret_and_say_what_the_filter_made(doc, redact):
    """The relay's whole path for a container inspect (plan, ResponseRewriter, head and body):
    no secret in the bytes, a Content-Length that is the body's, the value ResponseFilter.document
    makes of the answer, and the same bytes again when filtered twice."""
    filtering = Filtering() if redact is None else Filtering(redact)

    def relayed(body: bytes) -> tuple[h11.Response, bytes]:
        target = canonicalize_target(b"/v1.47/containers/web/json")
        p = plan_response_filter(filtering, "GET", target)
        head = h11.Response(status_code=200, headers=[(b"Content-Type", b"application/json"),
                                                      (b"Transfer-Encoding", b"chunked")], _parsed=True)
        rewriter = ResponseRewriter(filter_transform(p.filter, 1 << 20), head, "GET")
        assert rewriter.head() is None and rewriter.feed(body) == b""
        return rewriter.finish()

    head, body = relayed(json.dumps(doc, indent=1).encode())
    assert "ZQX" not in body.decode()
    assert head.headers.raw_items() == [(b"Content-Type", b"application/json"),
                                        (b"Content-Length", str(len(body)).encode())]
    assert json.loads(body) == run(filtering, "container", doc)[0]
    assert relayed(body)[1] == body


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({"Id": st.text(max_size=4),
                                       "Labels": st.dictionaries(st.sampled_from(["team", "tier"]),
                                                                 st.sampled_from(["a", "b"]), max_size=2),
                                       "Command": secret_text}), max_size=6),
       st.lists(st.tuples(st.sampled_from(["team", "tier"]), st.none() | st.sampled_from(["a", "b"])),
                min_size=1, max_size=2))
def test_property_lists_keep_exactly_the_matching_objects(items, wanted):
    filtering = Filtering(frozenset(REDACTIONS), tuple(wanted))
    out, f = run(filtering, "container list", items)
    expected = [i["Id"] for i in items
                if all(k in i["Labels"] and (v is None or i["Labels"][k] == v) for k, v in wanted)]
    assert [i["Id"] for i in out] == expected and f.hidden == len(items) - len(out)
    assert "ZQX" not in json.dumps(out)
    assert run(filtering, "container list", out)[0] == out


# ---------------------------------------------------------------------------------------------
# planning


def plan(filtering, target, method="GET"):
    return plan_response_filter(filtering, method, canonicalize_target(target.encode()))


def test_unfiltered_answers_are_relayed_untouched():
    """The default profile buffers nothing it has nothing to remove from."""
    default = Filtering()
    for target in ["/v1.41/containers/json?all=1", "/_ping", "/containers/x/logs", "/images/json",
                   "/networks/n"]:
        p = plan(default, target)
        assert p.filter is None and p.lookup is None, target
    assert plan(Filtering(frozenset()), "/containers/x/json").filter is None
    assert plan(Filtering(frozenset()), "/events").filter is None
    assert plan(Filtering(frozenset({"env"})), "/info").filter is None  # only log-options reaches /info


SWARM_INFO = {"ID": "x", "Containers": 2, "Swarm": {"NodeID": "n", "LocalNodeState": "active", "Cluster": {
    "ID": "c", "Spec": {"Name": "default", "TaskDefaults": {"LogDriver": {
        "Name": "splunk", "Options": {"splunk-token": "hunter2", "splunk-url": "https://splunk:8088"}}},
        "CAConfig": {"NodeCertExpiry": 7776000000000000}}}}}


def test_a_swarm_managers_default_log_driver_options_are_redacted_from_info():
    """Issue "(2 of 5)", a sibling of item 1 (the hunt the issue asks for): /info on a swarm
    manager carries Swarm.Cluster.Spec.TaskDefaults.LogDriver.Options, the log driver options
    every task gets (a splunk-token), and the default profile relayed /info untouched."""
    p = plan(Filtering(), "/v1.41/info")
    assert p.filter is not None and p.filter.kind == "info"
    out = p.filter.document(copy.deepcopy(SWARM_INFO))
    options = out["Swarm"]["Cluster"]["Spec"]["TaskDefaults"]["LogDriver"]["Options"]
    assert options == {"splunk-token": "", "splunk-url": ""} and p.filter.redacted == 2
    assert out["Swarm"]["Cluster"]["Spec"]["TaskDefaults"]["LogDriver"]["Name"] == "splunk"
    again = plan(Filtering(), "/v1.41/info").filter
    assert again.document(copy.deepcopy(out)) == out and again.redacted == 0  # idempotent


def test_info_of_a_daemon_outside_a_swarm_is_unchanged():
    plain = {"ID": "x", "Containers": 2, "Swarm": {"NodeID": "", "LocalNodeState": "inactive"}}
    f = plan(Filtering(), "/info").filter
    assert f.document(copy.deepcopy(plain)) == plain and f.redacted == 0


SWARM_TOKEN = "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx"
SWARM_INSPECT = {  # dockerd's GET /swarm on a manager (api/types/swarm.Swarm)
    "ID": "abajmipo7b4xz5ip2nrla6b11", "Version": {"Index": 10}, "CreatedAt": "2026-12-01T10:00:00Z",
    "Spec": {"Name": "default", "Labels": {}, "Orchestration": {"TaskHistoryRetentionLimit": 5},
             "Raft": {"SnapshotInterval": 10000}, "Dispatcher": {"HeartbeatPeriod": 5000000000},
             "CAConfig": {"NodeCertExpiry": 7776000000000000, "SigningCACert": "-----BEGIN CERTIFICATE-----x"},
             "TaskDefaults": {"LogDriver": {"Name": "splunk", "Options": {"splunk-token": "hunter2"}}},
             "EncryptionConfig": {"AutoLockManagers": False}},
    "TLSInfo": {"TrustRoot": "-----BEGIN CERTIFICATE-----y", "CertIssuerSubject": "MBMxETAP",
                "CertIssuerPublicKey": "MFkwEwYH"},
    "RootRotationInProgress": False, "DataPathPort": 4789, "DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 24,
    "JoinTokens": {"Worker": SWARM_TOKEN + "-worker", "Manager": SWARM_TOKEN + "-manager"},
}


def test_get_swarm_loses_its_join_tokens_and_keeps_the_rest():
    """(issue 21: item 2) swarm-tokens, on by default, removes JoinTokens.Worker and .Manager (keys
    kept, as every redaction); log-options the task defaults' options, as in /info."""
    for method in ("GET", "HEAD"):
        p = plan(Filtering(), "/v1.41/swarm", method)
        assert p.filter is not None and p.filter.kind == "swarm" and p.method == "GET"
    f = plan(Filtering(), "/swarm").filter
    out = f.document(copy.deepcopy(SWARM_INSPECT))
    assert out["JoinTokens"] == {"Worker": "", "Manager": ""}
    assert "SWMTKN" not in json.dumps(out) and "hunter2" not in json.dumps(out)
    expected = copy.deepcopy(SWARM_INSPECT)
    expected["JoinTokens"] = {"Worker": "", "Manager": ""}
    expected["Spec"]["TaskDefaults"]["LogDriver"]["Options"] = {"splunk-token": ""}
    assert out == expected and f.redacted == 3
    again = plan(Filtering(), "/swarm").filter
    assert again.document(copy.deepcopy(out)) == out and again.redacted == 0  # idempotent


def test_get_swarm_loses_a_ca_signing_key_should_the_spec_carry_one():
    doc = copy.deepcopy(SWARM_INSPECT)
    doc["Spec"]["CAConfig"]["SigningCAKey"] = "-----BEGIN EC PRIVATE KEY-----" + SECRET
    out, _ = run(Filtering(frozenset({"swarm-tokens"})), "swarm", doc)
    assert out["Spec"]["CAConfig"]["SigningCAKey"] == "" and SECRET not in json.dumps(out)
    assert out["Spec"]["TaskDefaults"]["LogDriver"]["Options"] == {"splunk-token": "hunter2"}  # not log-options


EXTERNAL_CA = {"Protocol": "cfssl", "URL": "https://ca.example:8888", "CACert": "-----BEGIN CERTIFICATE-----z",
               "Options": {"auth-key": SECRET}}


def test_get_swarm_and_info_lose_the_external_cas_options():
    """An external CA's Options are what its CFSSL signer is reached with: swarm-tokens blanks
    them in GET /swarm and in /info on a manager (the same spec), keeping URL and certificate."""
    doc = copy.deepcopy(SWARM_INSPECT)
    doc["Spec"]["CAConfig"]["ExternalCAs"] = [copy.deepcopy(EXTERNAL_CA), {"Protocol": "cfssl", "URL": "u"}]
    out, f = run(Filtering(frozenset({"swarm-tokens"})), "swarm", doc)
    assert out["Spec"]["CAConfig"]["ExternalCAs"] == [dict(EXTERNAL_CA, Options={"auth-key": ""}),
                                                      {"Protocol": "cfssl", "URL": "u"}]
    assert SECRET not in json.dumps(out) and f.redacted == 3  # two join tokens, one option
    info = copy.deepcopy(SWARM_INFO)
    info["Swarm"]["Cluster"]["Spec"]["CAConfig"]["ExternalCAs"] = [copy.deepcopy(EXTERNAL_CA)]
    p = plan(Filtering(frozenset({"swarm-tokens"})), "/v1.41/info")
    assert p.filter is not None and p.filter.kind == "info"
    out = p.filter.document(info)
    assert out["Swarm"]["Cluster"]["Spec"]["CAConfig"]["ExternalCAs"][0]["Options"] == {"auth-key": ""}
    assert SECRET not in json.dumps(out)
    for wrong in ({"x": 1}, "ca"):  # fail closed on a shape it cannot read
        doc = copy.deepcopy(SWARM_INSPECT)
        doc["Spec"]["CAConfig"]["ExternalCAs"] = wrong
        with pytest.raises(TransformError):
            run(Filtering(frozenset({"swarm-tokens"})), "swarm", doc)


def test_get_swarm_is_relayed_untouched_only_without_swarm_tokens_and_log_options():
    assert plan(Filtering(frozenset()), "/swarm").filter is None
    assert plan(Filtering(frozenset({"env", "commands"})), "/swarm").filter is None
    assert plan(Filtering(frozenset({"log-options"})), "/swarm").filter is not None
    assert plan(Filtering(), "/swarm/unlockkey").filter is None  # (never forwarded: decide refuses it)
    assert plan(Filtering(), "/libpod/swarm").filter is None  # (no such libpod endpoint)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["Worker", "Manager", "Other"]), secret_text, max_size=3), junk,
       st.none() | secret_text, options)
def test_property_no_join_token_survives_get_swarm_and_filtering_is_idempotent(tokens, extra, key, log_options):
    doc = copy.deepcopy(SWARM_INSPECT)
    doc["JoinTokens"], doc["Extra"] = tokens, extra
    doc["Spec"]["TaskDefaults"]["LogDriver"]["Options"] = log_options
    if key is not None:
        doc["Spec"]["CAConfig"]["SigningCAKey"] = key
        doc["Spec"]["CAConfig"]["ExternalCAs"] = [{"Protocol": "cfssl", "URL": "u", "Options": {"k": key}}]
    once, _ = run(Filtering(), "swarm", doc)
    assert "ZQX" not in json.dumps(once) and set(once["JoinTokens"]) == set(tokens)
    twice, second = run(Filtering(), "swarm", once)
    assert twice == once and second.redacted == 0


def test_filtered_answers_and_head_as_get():
    default = Filtering()
    p = plan(default, "/v1.41/containers/web/json", "HEAD")
    assert p.filter.kind == "container" and p.filter.name == "web" and p.method == "GET"
    assert plan(default, "/libpod/containers/web/json").filter.kind == "container"
    assert plan(default, "/images/library/busybox/json").filter.kind == "image"
    e = plan(default, "/events", "HEAD")
    assert e.filter.kind == "events" and e.method == "HEAD"


def test_scoped_lists_get_the_label_filter_added():
    scoped = Filtering(visible=(("team", "a"), ("app", None)))
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
        with pytest.raises(Refusal) as refused:
            plan(scoped, bad)
        assert refused.value.status == 400


def test_per_object_requests_are_looked_up_first():
    scoped = Filtering(visible=(("team", "a"),))
    for target, kind in [("/containers/web/logs?follow=1", "container"), ("/containers/web/stats", "container"),
                         ("/containers/web/top", "container"), ("/libpod/containers/web/logs", "container"),
                         ("/services/s/logs", "service"), ("/tasks/t/logs", "task")]:
        assert plan(scoped, target).lookup == kind, target
    assert plan(scoped, "/containers/web/json").lookup is None  # its own answer says


def test_resolved_object():
    scoped = Filtering(visible=(("team", "a"),))
    visible = {"Id": "b" * 64, "Config": {"Labels": {"team": "a"}}}
    assert resolved_object("container", "web", 200, visible, scoped) == "b" * 64
    for status, doc in [(404, {"message": "No such container: web"}),
                        (200, {"Id": "c" * 64, "Config": {"Labels": {"team": "b"}}})]:
        with pytest.raises(ObjectHidden) as hidden:
            resolved_object("container", "web", status, doc, scoped)
        assert (hidden.value.status, hidden.value.message) == (404, "No such container: web")
    with pytest.raises(ObjectHidden) as error:
        resolved_object("container", "web", 500, {"message": "boom"}, scoped)
    assert (error.value.status, error.value.message) == (500, "boom")
    with pytest.raises(TransformError, match="no usable ID"):
        resolved_object("container", "web", 200, {"Id": "../x", "Config": {"Labels": {"team": "a"}}}, scoped)
    assert resolved_object("service", "s", 200, {"ID": "s" * 25, "Spec": {"Labels": {"team": "a"}}},
                                    scoped) == "s" * 25


# ---- A hidden object is indistinguishable from a missing one through every door (issue "(2 of 5)",
# item 16): an ID prefix several containers share, some of them hidden (dockerd 20.10 answers 500
# "Multiple IDs found with provided prefix", later dockerd 400, Podman 404 "more than one result");
# a hidden container *named* like a visible one's ID prefix; /info's container counts; /system/df's
# counts of what uses each image and volume; /images/json's containers (counted, and named by their
# manifests); a network's verbose Services and libpod's `containers`; libpod pods' containers; the
# container a committed image names.
#
# The model: porthole's answer through a scope must be the daemon's answer in a world where the
# hidden objects do not exist (dockerd's GetContainer: full ID, then name, then a unique prefix;
# swarm's getService: full ID, name, prefix).

SCOPED = Filtering(visible=(("team", "a"),))
SCOPED_SECRET = "hunter2-SECRET"


def run_scoped(filtering, kind, doc, name="x"):
    f = ResponseFilter(filtering, kind, name)
    return f.document(copy.deepcopy(doc)), f


def plan_scoped(filtering, target, method="GET"):
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
        p = plan_scoped(SCOPED, target, "HEAD")
        assert p.ask_first == kind and p.filter.kind == kind and p.method == "GET", target
    assert plan_scoped(SCOPED, "/v1.41/info").ask_first == "visible containers"
    assert plan_scoped(SCOPED, "/v4.3.1/libpod/info").ask_first == "visible containers"
    for target in ("/containers/web/json", "/info", "/images/json", "/networks/n"):
        assert getattr(plan_scoped(Filtering(), target), "ask_first", None) is None  # no scope: as before


def test_info_counts_visible_containers_only():
    from porthole.core.filters import visible_counts
    listed = [{"Id": "1", "State": "running", "Labels": {"team": "a"}}, {"Id": "2", "State": "paused", "Labels": {"team": "a"}},
              {"Id": "3", "State": "exited", "Labels": {"team": "a"}}, {"Id": "4", "State": "restarting", "Labels": {"team": "a"}},
              {"Id": "5", "State": "running", "Labels": {"team": "b"}}]  # a daemon that ignored the filter
    counts = visible_counts(200, listed, SCOPED)
    assert counts == (4, 1, 1, 2)
    p = plan_scoped(SCOPED, "/info")
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
    out, f = run_scoped(SCOPED, "disk usage", df)
    assert [c["Id"] for c in out["Containers"]] == ["c1"] and f.hidden == 2
    assert [i["Containers"] for i in out["Images"]] == [1, 0]
    assert [v["UsageData"]["RefCount"] for v in out["Volumes"]] == [1, 0]
    only_images = {"Images": [{"Id": "sha256:i1", "Containers": 3}], "Volumes": [{"Name": "v1", "UsageData": {"RefCount": 2}}]}
    out, _ = run_scoped(SCOPED, "disk usage", only_images)  # ?type=image: nothing to count by: not computed
    assert out["Images"][0]["Containers"] == -1 and out["Volumes"][0]["UsageData"]["RefCount"] == -1
    libpod = {"Images": [{"ImageID": "i1", "Containers": 2}], "Containers": [{"ContainerID": "c", "Names": "n"}],
              "Volumes": [{"VolumeName": "v", "Links": 1}]}
    out, _ = run_scoped(SCOPED, "disk usage", libpod)
    assert out == {"Images": [{"ImageID": "i1", "Containers": 0}], "Containers": [], "Volumes": [{"VolumeName": "v", "Links": 0}]}
    assert run_scoped(Filtering(), "disk usage", df)[0]["Images"][0]["Containers"] == 3  # no scope: as the daemon says


def test_image_list_neither_counts_nor_names_containers_under_a_scope():
    images = [{"Id": "sha256:i1", "Containers": 2, "Manifests": [{"ImageData": {"Containers": ["c1", "c2"]}}]},
              {"Id": "sha256:i2", "Containers": -1}]
    p = plan_scoped(SCOPED, "/images/json?manifests=1")
    assert p.filter is not None and p.filter.kind == "image list"
    out = p.filter.document(copy.deepcopy(images))
    assert out == [{"Id": "sha256:i1", "Containers": -1, "Manifests": [{"ImageData": {"Containers": []}}]},
                   {"Id": "sha256:i2", "Containers": -1}]
    assert plan_scoped(Filtering(), "/images/json").filter is None  # no scope: relayed untouched


def test_network_services_and_libpod_containers_are_hidden():
    verbose = {"Name": "ingress", "Containers": {"c1": {"Name": "web"}},
               "Services": {"secret-svc": {"VIP": "10.0.0.2", "Tasks": [{"Name": "secret-svc.1.x", "EndpointIP": "10.0.0.3"}]}},
               "Peers": [{"Name": "node1", "IP": "192.0.2.1"}]}
    p = plan_scoped(SCOPED, "/v1.41/networks/ingress?verbose=true")
    out = p.filter.document(copy.deepcopy(verbose))
    assert out["Containers"] == {} and out["Services"] == {} and out["Peers"] == verbose["Peers"] and p.filter.hidden == 2
    libpod = {"name": "podman", "containers": {"c1": {"name": "web", "interfaces": {}}}}
    p = plan_scoped(SCOPED, "/v5.0.0/libpod/networks/podman/json")
    assert p.filter.kind == "network" and p.filter.document(copy.deepcopy(libpod))["containers"] == {}
    p = plan_scoped(SCOPED, "/v5.0.0/libpod/networks/json")
    assert p.filter.kind == "network list" and p.filter.document([copy.deepcopy(libpod)])[0]["containers"] == {}
    assert run_scoped(Filtering(), "network", verbose)[0] == verbose


def test_pods_under_a_scope_name_no_container():
    pod = {"Id": "p", "Name": "pod", "NumContainers": 2, "Containers": [{"Id": "c1", "Name": "web"}, {"Id": "c2", "Name": "x"}]}
    p = plan_scoped(SCOPED, "/libpod/pods/pod/json")
    out = p.filter.document(copy.deepcopy(pod))
    assert out["Containers"] == [] and out["NumContainers"] == 0 and out["Name"] == "pod"
    listed = plan_scoped(SCOPED, "/libpod/pods/json")
    assert listed.filter.document([{"Id": "p", "Containers": [{"Id": "c1", "Names": "web"}]}])[0]["Containers"] == []


def test_a_committed_images_container_is_not_named_under_a_scope():
    image = {"Id": "sha256:i", "Container": "c" * 64, "ContainerConfig": {"Hostname": "cccccccccccc", "Labels": {"team": "b"}},
             "Config": {"Env": [f"A={SCOPED_SECRET}"]}}
    out, f = run_scoped(SCOPED, "image", image)
    assert "Container" not in out and "ContainerConfig" not in out and f.hidden == 1
    assert run_scoped(Filtering(), "image", image)[0]["Container"] == "c" * 64


# ---------------------------------------------------------------------------------------------
# "keep": {"env": [...]}: the values a consumer needs (issue 21: item 3)

def test_keep_env_loads_patterns_and_is_not_inherited():
    policy = policy_with({"rules": RULE, "keep": {"env": ["NOMAD_JOB_NAME", "NOMAD_*", "X?[0-9]"]}},
                         {"child": {"extends": "p", "rules": [{"method": "GET", "path": "/info"}]}})
    assert policy.filtering["p"].keep_env == ("NOMAD_JOB_NAME", "NOMAD_*", "X?[0-9]")
    assert policy.filtering["child"].keep_env == ()  # goes with "redact": a child redacts the defaults, all of them


@pytest.mark.parametrize("keep, message", [
    ({"env": []}, "non-empty list"), ({"env": "NOMAD_*"}, "non-empty list"), ({"env": [1]}, "non-empty list"),
    ({"env": [""]}, "not a variable name"), ({"env": ["A=B"]}, "not a variable name"),
    ({"env": ["A B"]}, "not a variable name"), ({"env": ["A\nB"]}, "not a variable name"),
    ({"env": ["*"]}, "keeps every variable"), ({"env": ["**?"]}, "keeps every variable"),
    ({"env": ["A", "A"]}, "twice"), ({"log-options": ["x"]}, "must be"), (["NOMAD_*"], "must be"),
    ({}, "must be"),
])
def test_keep_env_patterns_are_checked(keep, message):
    with pytest.raises(PolicyError, match=message) as info:
        policy_with({"rules": RULE, "keep": keep})
    assert "$.profiles.p.keep" in str(info.value)


def test_keep_env_needs_env_redacted():
    with pytest.raises(PolicyError, match="does not redact env"):
        policy_with({"rules": RULE, "redact": ["log-options"], "keep": {"env": ["NOMAD_*"]}})


def test_kept_variables_keep_their_values_and_no_other_does():
    doc = inspect_doc()
    doc["Config"]["Env"] = ["NOMAD_JOB_NAME=cons2job", "NOMAD_TASK_NAME=api", f"NOMAD_TOKEN_x={SECRET}",
                            f"NOMAD={SECRET}", f"nomad_job_name={SECRET}", f"XNOMAD_JOB_NAME={SECRET}",
                            f"NOMAD_JOB_NAMES={SECRET}", f"DB_PASSWORD={SECRET}", "UNSET"]
    filtering = Filtering(keep_env=("NOMAD_JOB_NAME", "NOMAD_TASK_*"))
    out, f = run(filtering, "container", doc)
    assert out["Config"]["Env"] == ["NOMAD_JOB_NAME=cons2job", "NOMAD_TASK_NAME=api", "NOMAD_TOKEN_x=", "NOMAD=",
                                    "nomad_job_name=", "XNOMAD_JOB_NAME=", "NOMAD_JOB_NAMES=", "DB_PASSWORD=", "UNSET"]
    assert SECRET not in json.dumps(out["Config"]["Env"]) and f.redacted == 6 + 2 + 2  # (+ log and volume options)
    assert run(filtering, "container", out)[0] == out  # idempotent


def test_keep_env_reaches_every_name_value_list_and_no_recorded_text():
    """Services' and tasks' ContainerSpec.Env keep the same names; build steps (text the daemon
    recorded) lose their values whatever "keep" says."""
    filtering = Filtering(keep_env=("KEEP",))
    service = {"Spec": {"TaskTemplate": {"ContainerSpec": {"Env": ["KEEP=v", f"OTHER={SECRET}"]}}}}
    out, _ = run(filtering, "service", service)
    assert out["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["KEEP=v", "OTHER="]
    image = {"Config": {"Env": ["KEEP=v"], "OnBuild": [f"ENV KEEP={SECRET}"]},
             "History": [{"created_by": f"/bin/sh -c #(nop)  ENV KEEP={SECRET}"}]}
    out, _ = run(filtering, "image", image)
    assert out["Config"]["Env"] == ["KEEP=v"] and SECRET not in json.dumps(out)


def _glob(pattern: str, name: str) -> bool:
    """The oracle, written out: * any run, ? one character, anything else itself."""
    if not pattern:
        return not name
    if pattern[0] == "*":
        return any(_glob(pattern[1:], name[i:]) for i in range(len(name) + 1))
    return bool(name) and pattern[0] in ("?", name[0]) and _glob(pattern[1:], name[1:])


env_names = st.text(alphabet="ABNOMD_a1", min_size=1, max_size=6)
env_patterns = st.text(alphabet="ABNOMD_a1*?", min_size=1, max_size=5).filter(lambda p: p.strip("*?") or "*" not in p)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(env_names, secret_text), max_size=6), st.lists(env_patterns, min_size=1, max_size=3, unique=True))
def test_property_a_kept_name_keeps_its_value_and_no_other_value_passes(variables, patterns):
    filtering = Filtering(keep_env=tuple(patterns))
    doc = {"Config": {"Env": [f"{name}={value}" for name, value in variables], "Labels": {}}}
    out, _ = run(filtering, "container", doc)
    for (name, value), item in zip(variables, out["Config"]["Env"]):
        kept = any(_glob(pattern, name) for pattern in patterns)
        assert item == (f"{name}={value}" if kept else f"{name}="), (patterns, name)
    assert run(filtering, "container", out)[0] == out
