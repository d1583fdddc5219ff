"""Least-privilege presets: each consumer's own requests pass its preset, nothing more does.

CONSUMERS holds, per preset, the requests its consumer sends (read from the consumer's source and
the project's consumer survey; the rule comments in rules.json say where each comes from). They
are replayed against `decide` in every spelling a client uses (unversioned and /v1.NN, both
`filters` JSON shapes, raw unencoded JSON) and, end to end, through one proxy with a unix
listener per preset in front of the suite's real dockerd. The table is also the yardstick for
"nothing more": a preset's rules may name exactly the paths, methods and query keys its
consumer's requests use.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings, strategies as st

import fake_upstream as fu
import support
from proxy import (DANGEROUS_READS, PolicyError, Refusal, RequestFacts, canonicalize_target, decide,
                   is_streaming, load_policy, parse_template, templates_overlap)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = load_policy((REPO / "rules.json").read_text(), "rules.json")
RAW_RULES = json.loads((REPO / "rules.json").read_text())["profiles"]


class F(dict):
    """A `filters` value: {key: [values]}, rendered in the map or the list JSON shape."""

    def render(self, shape: str) -> str:
        if shape == "map":  # Go SDK: {"k":{"v":true}}
            return json.dumps({k: {v: True for v in vs} for k, vs in self.items()}, separators=(",", ":"))
        return json.dumps(dict(self), separators=(",", ":"))  # dockerode, bollard, curl: {"k":["v"]}


def req(path: str, method: str = "GET", **query):
    """One request of a consumer: `path` is the rule's template ({id}, {name*}, {name})."""
    return (method, path, {k.replace("__", "-"): v for k, v in query.items()})


PING = [req("/_ping", "HEAD"), req("/_ping")]
GO_DOCKER_SD = [req("/containers/json", filters=F(label=["prometheus.io/scrape=true"])),
                req("/containers/json", limit="0"), req("/networks")]

CONSUMERS = {
    "traefik": PING + [
        req("/version"), req("/containers/json", all="1"), req("/containers/json", all="1", limit="0"),
        req("/containers/{id}/json"), req("/events", filters=F(type=["container"])),
    ],
    "traefik-swarm": PING + [
        req("/version"), req("/services"), req("/networks", filters=F(scope=["swarm"])),
        req("/networks", filters=F(driver=["overlay"])),
        req("/tasks", filters=F(service=["web"], **{"desired-state": ["running"]})), req("/nodes/{id}"),
    ],
    "homepage": PING + [
        req("/containers/json", all="true"), req("/containers/{id}/json"),
        req("/containers/{id}/stats", stream="false"), req("/services", all="true"), req("/services/{id}"),
        req("/tasks", filters=F(service=["web"], **{"desired-state": ["running"]})),
    ],
    "dozzle": PING + [
        req("/info"), req("/version"), req("/containers/json", all="1", filters=F(label=["dozzle=1"])),
        req("/containers/json", all="1", limit="0"), req("/containers/{id}/json"),
        req("/containers/{id}/stats", stream="1"), req("/containers/{id}/stats", stream="true"),
        req("/containers/{id}/stats", stream="false", one__shot="true"),
        req("/containers/{id}/logs", follow="1", stdout="1", stderr="1", tail="100", timestamps="1",
            since="1761955200.950000000"),
        req("/containers/{id}/logs", stdout="1", stderr="1", timestamps="1", since="1700000000", until="1700000600"),
        req("/events"),
    ],
    "glances": PING + [
        req("/version"), req("/containers/json", limit="-1", all="1", size="0", trunc_cmd="0"),
        req("/containers/json", limit="-1", all="0", size="0", trunc_cmd="0", filters=F(status=["running"])),
        req("/containers/{id}/json"), req("/containers/{id}/stats", stream="True"),
        req("/containers/{id}/stats", stream="False", one__shot="True"), req("/images/{name*}/json"),
    ],
    "prometheus": PING + GO_DOCKER_SD,
    "prometheus-swarm": PING + [
        req("/services", filters=F(label=["prometheus.io/scrape=true"])), req("/services"),
        req("/tasks", filters=F(**{"desired-state": ["running"]})), req("/nodes", filters=F(role=["manager"])),
        req("/nodes"), req("/networks"), req("/containers/{id}/json"),
    ],
    "alloy": PING + GO_DOCKER_SD + [
        req("/containers/{id}/json"),
        req("/containers/{id}/logs", follow="1", stdout="1", stderr="1", timestamps="1", since="1700000000"),
    ],
    "uptime-kuma": PING + [req("/containers/json", all="true"), req("/containers/{id}/json")],
    "diun": PING + [
        req("/version"), req("/containers/json", filters=F(status=["running", "created", "exited"])),
        req("/containers/json", limit="0"), req("/containers/{id}/json"), req("/images/{name*}/json"),
        req("/services", filters=F(label=["diun.enable=true"])),
    ],
    "netdata": PING + [
        req("/info"), req("/containers/json", all="1", filters=F(health=["unhealthy"])),
        req("/containers/json", all="1", size="1", limit="0", filters=F(health=["none"])),
        req("/images/json"), req("/containers/{id}/json"),
    ],
    "cadvisor": PING + [req("/version"), req("/info"), req("/containers/{id}/json"), req("/images/json")],
    "crowdsec": PING + [
        req("/info"), req("/containers/json"), req("/containers/json", limit="0"), req("/containers/{id}/json"),
        req("/containers/{id}/logs", stdout="1", stderr="1", follow="1", since="1761955200.000000000"),
        req("/containers/{id}/logs", stdout="1", stderr="1", since="1700000000", until="1700000600"),
        req("/events", filters=F(type=["container", "service"])), req("/services"),
        req("/services/{id}", insertDefaults="false"), req("/services/{id}"),
        req("/services/{id}/logs", stdout="1", stderr="1", follow="1", since="1700000000", until="1700000600",
            timestamps="1", tail="10", details="1"),
    ],
    "vector": PING + [
        req("/version"), req("/events", since="1700000000", until="1800000000",
                             filters=F(type=["container"], label=["ship=1"], image=["busybox"])),
        req("/containers/json", all="false", limit="10", size="false",
            filters=F(label=["ship=1"], ancestor=["busybox"])),
        req("/containers/{id}/json"), req("/containers/{id}/json", size="false"),
        req("/containers/{id}/logs", follow="true", stdout="true", stderr="true", since="1700000000",
            until="0", timestamps="true", tail="all"),
    ],
    "fluent-bit": PING + [req("/events")],
    "compose": PING + [
        req("/version"), req("/info"),
        req("/containers/json", all="1", filters=F(label=["com.docker.compose.project=demo",
                                                          "com.docker.compose.oneoff=False"])),
        req("/containers/json", limit="-1", all="0", size="0", trunc_cmd="0",
            filters=F(label=["com.docker.compose.project=demo"])),
        req("/containers/{id}/json"), req("/images/{name*}/json"), req("/images/{name*}/json", manifests="1"),
        req("/images/{name*}/json", platform='{"architecture":"amd64","os":"linux"}'),
    ],
    "docker-cli": PING + [
        req("/version"), req("/info"), req("/events", filters=F(type=["container"])),
        req("/events", since="1700000000", until="1700000001"),
        req("/containers/json"), req("/containers/json", all="1", size="1"), req("/containers/json", limit="3"),
        req("/containers/json", filters=F(status=["running"], label=["a=b"])),
        req("/containers/{id}/json"), req("/containers/{id}/json", size="1"),
        req("/containers/{id}/stats", stream="0"), req("/containers/{id}/stats", stream="false", one__shot="true"),
        req("/images/json"), req("/images/json", all="1", filters=F(dangling=["true"])),
        req("/images/json", manifests="1"), req("/images/json", shared__size="1", manifests="1", identity="1"),
        req("/images/{name*}/json"), req("/images/{name*}/json", manifests="1", platform="linux/amd64"),
        req("/images/{name*}/history"), req("/images/{name*}/history", platform='{"os":"linux"}'),
        req("/system/df"), req("/system/df", verbose="1"), req("/system/df", type="container"),
        req("/networks"), req("/networks", filters=F(driver=["bridge"])), req("/networks/{id}"),
        req("/networks/{id}", verbose="true", scope="local"),
        req("/volumes"), req("/volumes", filters=F(dangling=["true"])), req("/volumes/{name}"),
        req("/plugins"), req("/plugins", filters=F(enabled=["true"])), req("/plugins/{name*}/json"),
        req("/services", status="true"), req("/services", filters=F(label=["com.docker.stack.namespace"])),
        req("/services/{id}", insertDefaults="true"), req("/tasks", filters=F(service=["web"])), req("/tasks/{id}"),
        req("/nodes"), req("/nodes", filters=F(role=["manager"])), req("/nodes/{id}"),
        req("/secrets"), req("/secrets", filters=F(name=["db"])), req("/secrets/{id}"),
        # the Python SDK (docker-py): containers.list(), images.list()
        req("/containers/json", all="1", limit="-1", size="0", trunc_cmd="0"),
        req("/images/json", all="0", only_ids="0"),
    ],
}
PRESETS = list(CONSUMERS)
LOG_READER_DOCKER_LOGS = req("/containers/{id}/logs", follow="1", stdout="1", stderr="1", since="1700000000",
                             until="1800000000", timestamps="1", tail="10", details="1")
# The presets that may read logs, and what they acknowledge (the issue: Dozzle, Alloy, CrowdSec, Vector).
ACKNOWLEDGED = {
    "dozzle": {"/containers/{id}/logs"}, "alloy": {"/containers/{id}/logs"}, "vector": {"/containers/{id}/logs"},
    "crowdsec": {"/containers/{id}/logs", "/services/{id}/logs"},
    "log-reader": {"/containers/{id}/logs"},
}
SAMPLE = {"{id}": "c1", "{name*}": "porthole-test/busybox:latest", "{name}": "data"}


def render(path: str, query: dict, *, version: str | None, shape: str, raw_json: bool = False,
           values: dict = SAMPLE) -> str:
    for placeholder, value in values.items():
        path = path.replace(placeholder, value)
    parts = []
    for key, value in query.items():
        text = value.render(shape) if isinstance(value, F) else value
        parts.append(f"{key}={text if raw_json and isinstance(value, F) else quote(text, safe='')}")
    return (f"/v{version}" if version else "") + path + ("?" + "&".join(parts) if parts else "")


def spellings(path: str, query: dict) -> list[str]:
    """Every way the consumers spell one request: unversioned and versioned, both filters shapes."""
    shapes = ("map", "list") if any(isinstance(v, F) for v in query.values()) else ("map",)
    return [render(path, query, version=v, shape=s) for v in (None, "1.41", "1.44", "1.51") for s in shapes]


def facts(method: str, target: str, profile: str, *, kind: str = "unix", headers=(), http_version=b"1.1"):
    return RequestFacts(method, target.encode("latin-1"), list(headers), kind, profile, http_version)


def refusal(method: str, target: str, profile: str, policy=SHIPPED, **kw) -> str | None:
    try:
        decide(policy, facts(method, target, profile, **kw))
        return None
    except Refusal as refused:
        return refused.reason


# ---- each consumer's requests pass its preset -------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_preset_allows_every_request_its_consumer_sends(preset):
    for method, path, query in CONSUMERS[preset]:
        for target in spellings(path, query):
            assert refusal(method, target, preset) is None, (preset, method, target, refusal(method, target, preset))


@pytest.mark.parametrize("preset", PRESETS + ["default", "monitoring", "log-reader"])
def test_ping_negotiation_passes_every_preset(preset):
    """HEAD /_ping before any versioned call (Go SDK, Traefik >= 3.6.1), GET as the fallback,
    also as HTTP/1.0 without a Host header on a unix listener."""
    for method in ("HEAD", "GET"):
        assert refusal(method, "/_ping", preset) is None
        assert refusal(method, "/_ping", preset, http_version=b"1.0") is None
        assert refusal(method, "/_ping", preset, kind="tcp", headers=[(b"host", b"127.0.0.1:2375")]) is None


def test_fluent_bit_sends_http_1_0_without_host():
    assert refusal("GET", "/events", "fluent-bit", http_version=b"1.0") is None
    assert refusal("GET", "/events?filters=%7B%7D", "fluent-bit", http_version=b"1.0") is not None


def test_raw_unencoded_filters_json_is_matched_and_forwarded_canonically():
    """Autoheal sends ?filters={"health":["unhealthy"]} unencoded: it is the same query as the
    encoded one, and is forwarded in the one canonical (encoded) form."""
    query = {"filters": F(health=["unhealthy"], label=["autoheal=true"])}
    raw = render("/containers/json", query, version=None, shape="list", raw_json=True)
    assert raw == '/containers/json?filters={"health":["unhealthy"],"label":["autoheal=true"]}'
    encoded = render("/containers/json", query, version=None, shape="list")
    for preset in ("docker-cli", "netdata", "default"):
        decided = decide(SHIPPED, facts("GET", raw, preset))
        assert decided.target.forward_form() == canonicalize_target(encoded.encode()).forward_form()
        assert decided.target.query_value("filters") == query["filters"].render("list")


# ---- nothing more -----------------------------------------------------------------------------

def endpoints_of(preset: str) -> dict:
    """{(method, path): query keys} the consumer table uses."""
    used: dict = {}
    for method, path, query in CONSUMERS[preset]:
        used.setdefault((method, path), set()).update(query)
    return used


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_names_exactly_the_paths_methods_and_query_keys_its_consumer_uses(preset):
    granted: dict = {}
    for rule in RAW_RULES[preset]["rules"]:
        assert "query" in rule, f"{preset}: {rule['path']} must list its query keys (absent means any)"
        methods = rule["method"] if isinstance(rule["method"], list) else [rule["method"]]
        for method in methods:
            granted[(method, rule["path"])] = set(rule["query"])
    assert "extends" not in RAW_RULES[preset], "a preset stands alone: what it grants is on its page"
    assert granted == endpoints_of(preset)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_refuses_other_consumers_endpoints_and_keys(preset):
    """Every request any other consumer sends is refused unless this consumer sends the same
    endpoint with no query key it does not use itself."""
    own = endpoints_of(preset)
    for reqs in [*CONSUMERS.values(), [LOG_READER_DOCKER_LOGS]]:
        for method, path, query in reqs:
            expected_ok = (method, path) in own and set(query) <= own[(method, path)]
            for target in spellings(path, query)[:2]:
                reason = refusal(method, target, preset)
                assert (reason is None) == expected_ok, (preset, method, target, reason)


WRITES = [("POST", "/containers/create"), ("POST", "/containers/c1/start"), ("POST", "/containers/c1/restart?t=10"),
          ("POST", "/containers/c1/stop"), ("POST", "/containers/c1/kill"), ("DELETE", "/containers/c1?force=1"),
          ("POST", "/images/create?fromImage=busybox"), ("DELETE", "/images/busybox"), ("POST", "/build"),
          ("POST", "/containers/c1/exec"), ("POST", "/exec/e1/start"), ("PUT", "/containers/c1/archive?path=/"),
          ("POST", "/networks/n1/connect"), ("POST", "/volumes/create"), ("POST", "/containers/prune"),
          ("POST", "/services/s1/update"), ("POST", "/swarm/init"), ("POST", "/commit?container=c1"),
          ("POST", "/auth"), ("PATCH", "/containers/c1"), ("OPTIONS", "/_ping")]
DANGEROUS_SAMPLES = {
    "/containers/{name*}/export": "/containers/c1/export", "/containers/{name*}/archive": "/containers/c1/archive?path=/",
    "/containers/{name*}/logs": "/containers/c1/logs?stdout=1", "/services/{name*}/logs": "/services/s1/logs?stdout=1",
    "/tasks/{name*}/logs": "/tasks/t1/logs?stdout=1", "/containers/{name*}/top": "/containers/c1/top",
    "/containers/{name*}/changes": "/containers/c1/changes", "/images/get": "/images/get?names=busybox",
    "/images/{name*}/get": "/images/busybox/get", "/swarm": "/swarm", "/swarm/unlockkey": "/swarm/unlockkey",
    "/configs": "/configs", "/configs/{id*}": "/configs/c1", "/exec/{id*}/json": "/exec/e1/json",
    "/distribution/{name*}/json": "/distribution/busybox/json", "/images/search": "/images/search?term=x",
    "/plugins/privileges": "/plugins/privileges?remote=x",
    "/libpod/containers/{name*}/export": "/libpod/containers/c1/export",
    "/libpod/containers/{name*}/archive": "/libpod/containers/c1/archive?path=/",
    "/libpod/containers/{name*}/logs": "/libpod/containers/c1/logs?stdout=true",
    "/libpod/containers/{name*}/top": "/libpod/containers/c1/top",
    "/libpod/containers/{name*}/changes": "/libpod/containers/c1/changes",
    "/libpod/pods/{name*}/top": "/libpod/pods/p1/top", "/libpod/images/export": "/libpod/images/export?references=x",
    "/libpod/images/{name*}/get": "/libpod/images/busybox/get", "/libpod/images/search": "/libpod/images/search?term=x",
    "/libpod/exec/{id*}/json": "/libpod/exec/e1/json", "/libpod/secrets/{name*}/json": "/libpod/secrets/s1/json",
    "/libpod/volumes/{name*}/export": "/libpod/volumes/v1/export",
}


def test_dangerous_samples_cover_every_dangerous_read():
    assert set(DANGEROUS_SAMPLES) == set(DANGEROUS_READS)


@pytest.mark.parametrize("preset", PRESETS + ["default", "monitoring", "log-reader"])
def test_writes_and_unacknowledged_dangerous_reads_are_refused(preset):
    for method, target in WRITES:
        assert refusal(method, target, preset) is not None, (method, target)
    acknowledged = ACKNOWLEDGED.get(preset, set())
    for template, target in DANGEROUS_SAMPLES.items():
        for method in ("GET", "HEAD"):
            reason = refusal(method, target, preset)
            allowed_here = method == "GET" and any(
                templates_overlap(parse_template(template), parse_template(a)) for a in acknowledged)
            if not allowed_here:
                assert reason is not None, (preset, method, target)


@pytest.mark.parametrize("preset", PRESETS + ["default", "monitoring", "log-reader"])
def test_dangerous_reads_appear_only_where_the_consumer_needs_them(preset):
    rules = RAW_RULES[preset]["rules"]
    flagged = {rule["path"] for rule in rules if rule.get("dangerous")}
    assert flagged == ACKNOWLEDGED.get(preset, set())
    for rule in rules:
        if rule.get("dangerous"):
            assert rule.get("comment", "").startswith("dangerous read, acknowledged:"), rule
            assert len(rule["comment"]) > 60, "say why the consumer cannot work without it"


@settings(max_examples=300, deadline=None)
@given(preset=st.sampled_from(sorted(SHIPPED.profiles)),
       method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"]),
       path=st.lists(st.sampled_from(["containers", "c1", "json", "logs", "images", "busybox", "events", "_ping",
                                      "exec", "archive", "services", "stats", "changes", "top", "export",
                                      "swarm", "configs", "system", "df", "tasks", "nodes", "start"]),
                     min_size=1, max_size=4),
       version=st.sampled_from(["", "/v1.41", "/v1.51"]))
def test_no_shipped_profile_forwards_a_write_or_an_unacknowledged_dangerous_read(preset, method, path, version):
    target = version + "/" + "/".join(path)
    try:
        decision = decide(SHIPPED, facts(method, target, preset))
    except Refusal:
        return
    assert method in ("GET", "HEAD")
    assert method in decision.rule.methods
    if any(templates_overlap(parse_template(t), decision.rule.template) for t in DANGEROUS_READS):
        assert decision.rule.dangerous and decision.rule.profile in ACKNOWLEDGED


def test_every_shipped_rule_is_get_or_head_and_every_preset_rule_says_why():
    for name, profile in RAW_RULES.items():
        for rule in profile["rules"]:
            methods = rule["method"] if isinstance(rule["method"], list) else [rule["method"]]
            assert set(methods) <= {"GET", "HEAD"}
            if name in CONSUMERS:
                assert rule.get("comment"), (name, rule)
            if rule.get("dangerous"):
                assert rule.get("comment"), (name, rule)


# ---- stats and changes (SECURITY.md) ----------------------------------------------------------

def test_changes_is_a_dangerous_read_and_stats_is_not():
    changes = {"version": 1, "profiles": {"default": {"rules": [
        {"method": "GET", "path": "/containers/{id}/changes"}]}}}
    with pytest.raises(PolicyError, match="dangerous read"):
        load_policy(json.dumps(changes))
    changes["profiles"]["default"]["rules"][0]["dangerous"] = True
    load_policy(json.dumps(changes))
    stats = {"version": 1, "profiles": {"default": {"rules": [
        {"method": "GET", "path": "/containers/{id}/stats", "dangerous": True}]}}}
    with pytest.raises(PolicyError, match="not a dangerous read"):
        load_policy(json.dumps(stats))
    assert "dangerous read" in refusal("GET", "/v1.41/containers/c1/changes", "docker-cli")
    assert refusal("GET", "/v1.41/containers/c1/stats?stream=0", "docker-cli") is None


# ---- the refusal names the query key or value (regressions) -----------------------------------

def test_docker_logs_details_passes_log_reader():
    """`docker logs --details` sends details=1: log-reader refused it, naming the dangerous read."""
    for method, path, query in [LOG_READER_DOCKER_LOGS]:
        for target in spellings(path, query):
            assert refusal(method, target, "log-reader") is None, refusal(method, target, "log-reader")


ACKNOWLEDGING = load_policy(json.dumps({"version": 1, "profiles": {"default": {"rules": [
    {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True,
     "query": {"follow": "*", "stdout": ["1"]}, "comment": "shipper"},
    {"method": "GET", "path": "/containers/{id}/json", "query": {"size": ["0"]}},
]}}}), "test.json")


@pytest.mark.parametrize("target, named", [
    ("/v1.41/containers/c1/logs?follow=1&details=1", "query parameter 'details'"),
    ("/containers/c1/logs?stdout=true", "value 'true' of query parameter 'stdout'"),
    ("/containers/c1/json?size=1", "value '1' of query parameter 'size'"),
    ("/containers/c1/json?all=1", "query parameter 'all'"),
])
def test_a_refused_query_is_the_reason_even_on_an_acknowledged_dangerous_read(target, named):
    reason = refusal("GET", target, "default", policy=ACKNOWLEDGING)
    assert reason is not None and named in reason, reason
    assert "acknowledges" not in reason, reason


def test_an_unacknowledged_dangerous_read_still_says_so():
    reason = refusal("GET", "/containers/c1/logs?details=1", "docker-cli")
    assert "dangerous read" in reason and "no rule in profile 'docker-cli' acknowledges it" in reason


# ---- end to end, against the real daemon ------------------------------------------------------

LISTENED = PRESETS + ["log-reader", "default"]


@pytest.fixture(scope="module")
def preset_proxy(dockerd):
    """One proxy with a unix listener per preset (profile=NAME), in front of the real dockerd."""
    listeners = {name: support.unix_listen_url(f"{name}.sock", f"mode=0666&profile={name}") for name in LISTENED}
    p = support.ProxyProcess(listen=[url for url, _ in listeners.values()], upstream=dockerd.url,
                             groups=[dockerd.sock_gid])
    with p.running():
        p.sockets = {name: path for name, (_, path) in listeners.items()}
        p.hosts = {name: "unix://" + path for name, path in p.sockets.items()}
        yield p


@pytest.fixture(scope="module")
def victim(docker_direct, busybox_image):
    """A running container that printed a line, with a label and a volume."""
    container = support.run_sleeper(docker_direct, busybox_image,
                                     command=["sh", "-c", "echo hello-from-preset; exec sleep 3600"],
                                     labels={"porthole.preset": "yes"})
    volume = docker_direct.volumes.create("porthole-preset-vol")
    try:
        yield container
    finally:
        container.remove(force=True)
        volume.remove(force=True)


def exchange(address, method: str, target: str, timeout: float = 15.0):
    """One request on a fresh connection; streams: the head only."""
    with fu.HttpClient(address, timeout) as client:
        client.request(method, target)
        if method == "GET" and is_streaming(canonicalize_target(target.encode())):
            return client.read_head()
        return client.read_response(method)


@pytest.mark.docker
@pytest.mark.timeout(300)
@pytest.mark.parametrize("preset", PRESETS)
def test_consumer_requests_work_end_to_end(preset, preset_proxy, victim, busybox_image):
    values = {"{id}": victim.id, "{name*}": busybox_image, "{name}": "porthole-preset-vol"}
    for method, path, query in CONSUMERS[preset]:
        concrete = dict(values)
        if path.startswith("/networks/"):
            concrete["{id}"] = "none"
        if path.split("/")[1] in ("services", "tasks", "nodes", "secrets", "plugins"):
            concrete["{id}"] = concrete["{name*}"] = "x1"  # no swarm here: the daemon answers 503/404
        for target in (render(path, query, version=None, shape="map", values=concrete),
                       render(path, query, version="1.41", shape="list", values=concrete)):
            answer = exchange(preset_proxy.sockets[preset], method, target)
            assert answer.status != 403, (preset, method, target, answer.body[:300])
            if concrete["{id}"] != "x1":  # swarm endpoints: 503 "not a swarm manager" is dockerd's answer
                assert answer.status in (200, 204), (preset, method, target, answer.status, answer.body[:300])


@pytest.mark.docker
def test_head_ping_through_every_preset(preset_proxy):
    for name, path in preset_proxy.sockets.items():
        answer = exchange(path, "HEAD", "/_ping")
        assert answer.status == 200 and answer.header("api-version"), (name, answer)


@pytest.mark.docker
def test_what_a_preset_does_not_need_is_refused_end_to_end(preset_proxy, victim):
    cases = [("traefik", "GET", f"/v1.41/containers/{victim.id}/stats?stream=0"),
             ("traefik", "GET", "/v1.41/info"),
             ("prometheus", "GET", f"/v1.41/containers/{victim.id}/json"),
             ("homepage", "GET", f"/containers/{victim.id}/logs?stdout=1"),
             ("glances", "GET", f"/v1.41/containers/{victim.id}/logs?stdout=1"),
             ("dozzle", "GET", f"/v1.41/containers/{victim.id}/top"),
             ("alloy", "GET", "/v1.41/events"),
             ("fluent-bit", "GET", "/v1.41/containers/json"),
             ("docker-cli", "GET", f"/v1.41/containers/{victim.id}/changes"),
             ("docker-cli", "POST", f"/v1.41/containers/{victim.id}/restart")]
    for preset, method, target in cases:
        answer = fu.get(preset_proxy.sockets[preset], target, method=method, timeout=15)
        assert answer.status == 403 and b"porthole: " in answer.body, (preset, target, answer)
    assert victim.attrs["State"]["StartedAt"] == victim.client.containers.get(victim.id).attrs["State"]["StartedAt"]


DOCKER_CLI_READS = [
    ("ps",), ("ps", "-a", "-s"), ("ps", "--filter", "label=porthole.preset=yes", "-q"), ("inspect", "{id}"),
    ("inspect", "-s", "{id}"), ("images",), ("images", "-a"), ("image", "inspect", "{image}"), ("info",),
    ("version",), ("events", "--since", "1h", "--until", "0s"), ("stats", "--no-stream"),
    ("stats", "--no-stream", "{id}"), ("system", "df"), ("system", "df", "-v"), ("image", "history", "{image}"),
    ("network", "ls"), ("network", "inspect", "none"), ("network", "inspect", "-v", "none"), ("volume", "ls"),
    ("volume", "inspect", "porthole-preset-vol"), ("inspect", "porthole-preset-vol"), ("port", "{id}"),
    ("context", "ls"), ("context", "show"), ("plugin", "ls"),
]


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_docker_cli_read_commands_on_the_docker_cli_preset(preset_proxy, victim, busybox_image):
    host = preset_proxy.hosts["docker-cli"]
    for command in DOCKER_CLI_READS:
        args = [a.replace("{id}", victim.name).replace("{image}", busybox_image) for a in command]
        result = support.docker_cli(host, *args)
        assert result.returncode == 0 and "porthole" not in result.stderr, (args, result.stderr)
        if args[0] == "ps" and "-q" in args:
            assert result.stdout.split() == [victim.id[:12]]
        if args[0] == "stats":
            assert victim.name in result.stdout


@pytest.mark.docker
@pytest.mark.parametrize("command", [("logs", "{id}"), ("top", "{id}"), ("diff", "{id}"),
                                     ("export", "{id}"), ("run", "--rm", "{image}", "true")])
def test_docker_cli_preset_refuses_dangerous_reads_and_writes(command, preset_proxy, victim, busybox_image):
    args = [a.replace("{id}", victim.name).replace("{image}", busybox_image) for a in command]
    result = support.docker_cli(preset_proxy.hosts["docker-cli"], *args)
    assert result.returncode != 0 and "porthole: " in result.stderr, (args, result.stderr)


@pytest.mark.docker
def test_docker_logs_with_every_option_through_log_reader(preset_proxy, victim):
    result = support.docker_cli(preset_proxy.hosts["log-reader"], "logs", "--details", "--timestamps",
                                "--tail", "5", "--since", "2000-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z",
                                victim.name)
    assert result.returncode == 0, result.stderr
    assert "hello-from-preset" in result.stdout


@pytest.mark.docker
def test_fluent_bit_raw_http_1_0_events_without_host(preset_proxy, docker_direct, busybox_image):
    """Fluent Bit's in_docker_events: raw 'GET /events HTTP/1.0', no Host, body until close."""
    with fu.HttpClient(preset_proxy.sockets["fluent-bit"], 15) as client:
        client.send(b"GET /events HTTP/1.0\r\n\r\n")
        head = client.read_head()
        assert head.status == 200, head
        made = docker_direct.containers.create(busybox_image, ["true"], network_mode="none",
                                               labels={"porthole.fluent": "yes"})
        try:
            deadline = time.monotonic() + 15
            while made.id.encode() not in client.buf and time.monotonic() < deadline:
                client.sock.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    data = client.sock.recv(65536)
                except socket.timeout:
                    break
                if not data:
                    break
                client.buf += data
            assert made.id.encode() in client.buf and b'"create"' in client.buf, bytes(client.buf[:500])
        finally:
            made.remove(force=True)


@pytest.mark.docker
def test_raw_unencoded_filters_reach_dockerd_as_the_same_query(preset_proxy, dockerd, victim, docker_direct,
                                                               busybox_image):
    """Autoheal's shape: the JSON in `filters` is sent raw. Through porthole it gives what the
    encoded query gives when asked of dockerd directly."""
    other = support.run_sleeper(docker_direct, busybox_image, labels={"porthole.preset": "no"})
    try:
        query = F(label=["porthole.preset=yes"], status=["running"])
        raw = render("/containers/json", {"filters": query}, version="1.41", shape="list", raw_json=True)
        assert '{"label":["porthole.preset=yes"],"status":["running"]}' in raw
        encoded = render("/containers/json", {"filters": query}, version="1.41", shape="list")
        direct = fu.get(dockerd.socket_path, encoded)
        for preset in ("docker-cli", "netdata", "default"):
            through = exchange(preset_proxy.sockets[preset], "GET", raw)
            assert through.status == 200, (preset, through.body[:300])
            assert [c["Id"] for c in through.json()] == [c["Id"] for c in direct.json()] == [victim.id]
        canonical = canonicalize_target(encoded.encode()).forward_form()

        def forwarded_lines():
            return [line for line in preset_proxy.logs() if line.get("event") == "request"
                    and line.get("target") == raw]

        support.wait_until(lambda: len(forwarded_lines()) == 3, 5)
        forwarded = forwarded_lines()
        assert len(forwarded) == 3 and all(line["path"] == canonical for line in forwarded), [
            line for line in preset_proxy.logs() if "porthole.preset" in str(line.get("target"))]
    finally:
        other.remove(force=True)
