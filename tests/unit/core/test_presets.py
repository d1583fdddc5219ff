"""The shipped presets (rules.json's profiles), decided by porthole/core/decide.py: each consumer's
own requests pass its preset, nothing more does (tests/lib/presets.py's CONSUMERS, replayed against
`decide` in every spelling a client uses: unversioned and /v1.NN, both `filters` JSON shapes, raw
unencoded JSON); the podman profile for Podman's own API. (End to end, through one proxy with a
unix listener per preset in front of the suite's real dockerd: tests/daemon/test_presets.py.)
"""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from policies import SHIPPED, facts, refusal, shipped_document
from porthole.core.decide import decide
from porthole.core.guards import DANGEROUS_READS, parse_template, templates_overlap
from porthole.core.policy import PolicyError, describe_policy, load_policy
from porthole.core.target import Refusal, canonicalize_target
from presets import ACKNOWLEDGED, CONSUMERS, LOG_READER_DOCKER_LOGS, PRESETS, F, render, spellings

RAW_RULES = shipped_document()["profiles"]


# ---- each consumer's requests pass its preset -------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_preset_allows_every_request_its_consumer_sends(preset):
    for method, path, query in CONSUMERS[preset]:
        for target in spellings(path, query):
            assert refusal(method, target, profile=preset) is None, (preset, method, target, refusal(method, target, profile=preset))


@pytest.mark.parametrize("preset", PRESETS + ["default", "monitoring", "log-reader"])
def test_ping_negotiation_passes_every_preset(preset):
    """HEAD /_ping before any versioned call (Go SDK, Traefik >= 3.6.1), GET as the fallback,
    also as HTTP/1.0 without a Host header on a unix listener."""
    for method in ("HEAD", "GET"):
        assert refusal(method, "/_ping", profile=preset) is None
        assert refusal(method, "/_ping", profile=preset, http_version=b"1.0") is None
        assert refusal(method, "/_ping", profile=preset, kind="tcp", headers=[(b"host", b"127.0.0.1:2375")]) is None


def test_fluent_bit_sends_http_1_0_without_host():
    assert refusal("GET", "/events", profile="fluent-bit", http_version=b"1.0") is None
    assert refusal("GET", "/events?filters=%7B%7D", profile="fluent-bit", http_version=b"1.0") is not None


def test_raw_unencoded_filters_json_is_matched_and_forwarded_canonically():
    """Autoheal sends ?filters={"health":["unhealthy"]} unencoded: it is the same query as the
    encoded one, and is forwarded in the one canonical (encoded) form."""
    query = {"filters": F(health=["unhealthy"], label=["autoheal=true"])}
    raw = render("/containers/json", query, version=None, shape="list", raw_json=True)
    assert raw == '/containers/json?filters={"health":["unhealthy"],"label":["autoheal=true"]}'
    encoded = render("/containers/json", query, version=None, shape="list")
    for preset in ("docker-cli", "netdata", "default"):
        decided = decide(SHIPPED, facts("GET", raw, profile=preset))
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
                reason = refusal(method, target, profile=preset)
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
    "/images/{name*}/get": "/images/busybox/get",
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
        assert refusal(method, target, profile=preset) is not None, (method, target)
    acknowledged = ACKNOWLEDGED.get(preset, set())
    for template, target in DANGEROUS_SAMPLES.items():
        for method in ("GET", "HEAD"):
            reason = refusal(method, target, profile=preset)
            allowed_here = method == "GET" and any(
                templates_overlap(parse_template(template), parse_template(a)) for a in acknowledged)
            if not allowed_here:
                assert reason is not None, (preset, method, target)


@pytest.mark.parametrize("preset", sorted(SHIPPED.profiles))
def test_get_swarm_passes_only_without_its_join_tokens_and_the_unlock_key_never(preset):
    """(issue 21: item 2) GET /swarm is an ordinary read where the profile redacts swarm-tokens
    (docker-cli, monitoring); /swarm/unlockkey is refused by every profile."""
    for method in ("GET", "HEAD"):
        assert "never forwarded" in refusal(method, "/v1.41/swarm/unlockkey", profile=preset)
    if refusal("GET", "/v1.41/swarm", profile=preset) is None:
        assert "swarm-tokens" in SHIPPED.filtering[preset].redact, preset
    assert (refusal("GET", "/swarm", profile=preset) is None) == (preset in ("docker-cli", "monitoring")), preset


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
        decision = decide(SHIPPED, facts(method, target, profile=preset))
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
    assert "dangerous read" in refusal("GET", "/v1.41/containers/c1/changes", profile="docker-cli")
    assert refusal("GET", "/v1.41/containers/c1/stats?stream=0", profile="docker-cli") is None


# ---- the refusal names the query key or value (regressions) -----------------------------------

def test_docker_logs_details_passes_log_reader():
    """`docker logs --details` sends details=1: log-reader refused it, naming the dangerous read."""
    for method, path, query in [LOG_READER_DOCKER_LOGS]:
        for target in spellings(path, query):
            assert refusal(method, target, profile="log-reader") is None, refusal(method, target, profile="log-reader")


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
    reason = refusal("GET", target, profile="default", policy=ACKNOWLEDGING)
    assert reason is not None and named in reason, reason
    assert "acknowledges" not in reason, reason


def test_an_unacknowledged_dangerous_read_still_says_so():
    reason = refusal("GET", "/containers/c1/logs?details=1", profile="docker-cli")
    assert "dangerous read" in reason and "no rule in profile 'docker-cli' acknowledges it" in reason


# ---- the shipped podman profile: what podman --remote sends (podman 4.3.1), the rest refused ---

PODMAN_REQUESTS = [
    "/v4.3.1/libpod/_ping",
    "/v4.3.1/libpod/version",
    "/v4.3.1/libpod/info",
    "/v4.3.1/libpod/containers/json?all=false&external=false&filters=%7B%7D&last=-1&namespace=false&size=false&sync=false",
    "/v4.3.1/libpod/containers/json?all=true&external=false&filters=%7B%22name%22%3A%5B%22pm1%22%5D%7D&last=-1&namespace=false&size=true&sync=false",
    "/v4.3.1/libpod/containers/pm1/json?size=false",
    "/v4.3.1/libpod/containers/pm1/exists?external=false",
    "/v4.3.1/libpod/images/json?all=false&filters=%7B%7D",
    "/v4.3.1/libpod/images/json?all=false&filters=%7B%22reference%22%3A%5B%22localhost%2Fpm-busybox%22%5D%7D",
    "/v4.3.1/libpod/images/b2dcab63df4f/json?size=false",
    "/v4.3.1/libpod/images/b2dcab63df4f/exists",
    "/v4.3.1/libpod/events?filters=%7B%7D&since=1m&stream=true&until=",
]


def test_profile_allows_what_podman_remote_sends():
    policy = load_policy(json.dumps(shipped_document()))
    for target in PODMAN_REQUESTS:
        assert refusal("GET", target, profile="podman", policy=policy) is None, target
        assert refusal("GET", target, profile="default", policy=policy) is not None, target


@pytest.mark.parametrize("target, why", [
    ("/v4.3.1/libpod/containers/pm1/logs?follow=false&stdout=true", "dangerous read"),
    ("/v4.3.1/libpod/containers/pm1/top?ps_args=", "dangerous read"),
    ("/v4.3.1/libpod/containers/pm1/export", "dangerous read"),
    ("/v4.3.1/libpod/containers/pm1/archive?path=/etc", "dangerous read"),
    ("/v4.3.1/libpod/images/export?references=busybox", "dangerous read"),
    ("/v4.3.1/libpod/secrets/s1/json?showsecret=true", "dangerous read"),
    ("/v4.3.1/libpod/containers/stats?stream=false", "no rule"),
    ("/v4.3.1/libpod/containers/json?all=true&bogus=1", "query parameter 'bogus'"),
])
def test_profile_refuses_the_rest(target, why):
    policy = load_policy(json.dumps(shipped_document()))
    assert why in str(refusal("GET", target, profile="podman", policy=policy)), target


def test_a_rules_file_cannot_open_libpod_dangerous_reads_unacknowledged():
    document = shipped_document()
    document["profiles"]["podman"]["rules"].append({"method": "GET", "path": "/libpod/containers/{name}/logs"})
    with pytest.raises(Exception, match="dangerous read"):
        load_policy(json.dumps(document))


# ---- netdata keeps the Nomad variables its name resolution reads (issue 21: item 3) -----------

# netdata's src/collectors/cgroups.plugin/cgroup-name.sh.in (parse_docker_like_inspect_output) and
# cgroup-name/container_runtime.go (parseDockerLikeInspectValues) read exactly these four from
# Config.Env, and name a container NAMESPACE-JOB-TASK-SHORT_ALLOC_ID when all four are set.
NETDATA_NOMAD = ("NOMAD_NAMESPACE", "NOMAD_JOB_NAME", "NOMAD_TASK_NAME", "NOMAD_SHORT_ALLOC_ID")


def test_netdata_keeps_exactly_the_nomad_variables_it_reads():
    filtering = SHIPPED.filtering["netdata"]
    assert filtering.keep_env == NETDATA_NOMAD and "env" in filtering.redact
    assert all(SHIPPED.filtering[name].keep_env == () for name in SHIPPED.profiles if name != "netdata")
    assert "keeps the values of environment variables: " + ", ".join(NETDATA_NOMAD) in describe_policy(SHIPPED)
