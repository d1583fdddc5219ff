"""porthole/core/decide.py: what decide() makes of a request under a policy (the shipped
rules.json, or policies made on the spot), host acceptance, streaming, and the request forwarded
upstream. Pure functions, no sockets."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policies import SHIPPED, allowed, facts, policy_of

from porthole.core.decide import (
    NotReadOnly,
    RequestFacts,
    decide,
    decide_with_mode,
    forwarded_request,
    host_is_acceptable,
    is_known_finite,
    is_streaming,
)
from porthole.core.guards import DANGEROUS_READS, NEVER_FORWARDED, parse_template, template_matches
from porthole.core.objects import Filtering, REDACTIONS
from porthole.core.policy import Policy, PolicyError, Rule, load_policy
from porthole.core.target import Refusal, canonicalize_target

# ---- the shipped default profile ------------------------------------------------------------

@pytest.mark.parametrize("method, target", [
    ("GET", "/_ping"), ("HEAD", "/_ping"), ("GET", "/v1.41/version"), ("GET", "/info"),
    ("GET", "/v1.41/events?filters=%7B%7D"), ("GET", "/v1.41/containers/json?all=1&limit=-1&size=0&trunc_cmd=0"),
    ("GET", "/containers/c1/json"), ("GET", "/images/json"), ("GET", "/images/porthole-test/busybox:latest/json"),
    ("GET", "/networks"), ("GET", "/networks/none"), ("GET", "/volumes"), ("GET", "/volumes/data"),
    ("GET", "/services"), ("GET", "/services/web"), ("GET", "/tasks"), ("GET", "/tasks/t1"),
    ("GET", "/nodes"), ("GET", "/nodes/n1"),
])
def test_default_profile_allows_reads(method, target):
    assert allowed(method, target)


@pytest.mark.parametrize("method, target", [
    ("POST", "/containers/create"), ("DELETE", "/containers/c1"), ("PUT", "/containers/c1/archive"),
    ("GET", "/containers/c1/export"), ("GET", "/containers/c1/archive?path=/etc"),
    ("HEAD", "/containers/c1/archive?path=/etc"), ("GET", "/containers/c1/logs"),
    ("GET", "/containers/c1/top"), ("GET", "/images/get"), ("GET", "/images/busybox/get"),
    ("GET", "/swarm"), ("GET", "/swarm/unlockkey"), ("GET", "/configs/c"), ("GET", "/configs"),
    ("GET", "/exec/e1/json"), ("GET", "/distribution/busybox/json"), ("GET", "/images/search?term=x"),
    ("GET", "/plugins/privileges?remote=x"), ("GET", "/services/s/logs"), ("GET", "/tasks/t/logs"),
    ("GET", "/containers/c1/attach/ws"), ("GET", "/debug/pprof/"), ("GET", "/debug/vars"),
    ("GET", "/containers/%65xport"), ("GET", "/containers/c1/%65xport"), ("GET", "/containers/c1/attach/%77s"),
    ("GET", "/containers/web/db/export"), ("GET", "/CONTAINERS/json"), ("GET", "/containers/c1/changes"),
    ("GET", "/secrets"), ("GET", "/plugins"), ("GET", "/containers/c1/stats"), ("get", "/_ping"),
    ("OPTIONS", "/_ping"), ("CONNECT", "/_ping"), ("PRI", "/_ping"), ("TRACE", "/_ping"),
])
def test_default_profile_refuses(method, target):
    assert not allowed(method, target)


def test_refusal_reasons_are_specific():
    with pytest.raises(Refusal) as info:
        decide(SHIPPED, facts("GET", "/v1.41/containers/abc/export"))
    assert info.value.status == 403 and "dangerous read" in info.value.reason and "export" in info.value.reason
    with pytest.raises(Refusal) as info:
        decide(SHIPPED, facts("POST", "/containers/create"))
    assert "read-only" in info.value.reason and info.value.close
    with pytest.raises(Refusal) as info:
        decide(SHIPPED, facts("GET", "/containers/c/attach/ws"))
    assert "never forwarded" in info.value.reason
    with pytest.raises(Refusal) as info:
        decide(SHIPPED, facts("GET", "/plugins"))
    assert "no rule in profile 'default' allows GET /plugins" in info.value.reason


@pytest.mark.parametrize("headers, why", [
    ([("Upgrade", "websocket"), ("Connection", "Upgrade")], "upgrade"),
    ([("Upgrade", "h2c")], "upgrade"),
    ([("Connection", "keep-alive, Upgrade")], "upgrade"),
    ([("Content-Length", "2")], "body"),
    ([("Transfer-Encoding", "chunked")], "body"),
    ([("Host", "a"), ("Host", "b")], "Host"),
])
def test_framing_and_upgrade_refused_on_allowed_paths(headers, why):
    with pytest.raises(Refusal) as info:
        decide(SHIPPED, facts("GET", "/_ping", headers))
    assert why.lower() in info.value.reason.lower() and info.value.close


def test_content_length_zero_is_no_body():
    assert allowed("GET", "/_ping", [("Content-Length", "0")])


def test_browser_and_rebinding_protection_on_tcp_only():
    assert not allowed("GET", "/_ping", [("Host", "127.0.0.1"), ("Origin", "http://evil.example")], kind="tcp")
    assert allowed("GET", "/_ping", [("Host", "127.0.0.1"), ("Origin", "http://evil.example")], kind="unix")
    assert not allowed("GET", "/_ping", [("Host", "evil.example:2375")], kind="tcp")
    assert allowed("GET", "/_ping", [("Host", "evil.example:2375")], kind="unix")
    with pytest.raises(Refusal):
        decide(SHIPPED, facts("GET", "/_ping", [("Host", "evil.example")], "tcp"))
    decide(SHIPPED, facts("GET", "/_ping", [("Host", "docker.internal.example")], "tcp"),
           frozenset({"docker.internal.example"}))


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:2375", True), ("[::1]:2375", True), ("[::1]", True), ("localhost", True),
    ("localhost:2375", True), ("api.moby.localhost", True), ("proxy", True), ("proxy:2375", True),
    ("10.1.2.3", True), ("evil.example", False), ("evil.example:80", False), ("127.0.0.1.nip.io", False),
    ("EVIL.example", False), ("[evil]", False), ("", True),
])
def test_host_acceptance(host, ok):
    assert host_is_acceptable(host, frozenset()) is ok


def test_streaming_classification():
    def streaming(raw):
        return is_streaming(canonicalize_target(raw.encode()))
    assert streaming("/v1.41/events")
    assert streaming("/containers/c/logs?follow=1") and streaming("/containers/c/logs?follow=on")
    assert not streaming("/containers/c/logs?follow=0") and not streaming("/containers/c/logs")
    assert streaming("/containers/c/stats") and not streaming("/containers/c/stats?stream=false")
    assert not streaming("/containers/json")


def test_forwarded_request_keeps_only_allowlisted_headers():
    target = canonicalize_target(b"/v1.41/%63ontainers/json?all=1")
    headers = [(b"host", b"evil"), (b"user-agent", b"Docker-Client/28"), (b"accept", b"*/*"),
               (b"x-registry-auth", b"secret"), (b"cookie", b"c"), (b"proxy-authorization", b"p"),
               (b"x-http-method-override", b"DELETE"), (b"expect", b"100-continue"), (b"connection", b"close")]
    request = forwarded_request("GET", target, headers)
    assert request.target == b"/v1.41/containers/json?all=1"
    assert [(n, v) for n, v in request.headers] == [(b"host", b"docker"), (b"user-agent", b"Docker-Client/28"),
                                                     (b"accept", b"*/*")]


# ---- no configuration can make it forward a write -------------------------------------------

PATH_PIECES = ["containers", "images", "json", "export", "logs", "archive", "attach", "ws", "debug",
               "swarm", "_ping", "{id}", "{name*}", "get", "create", "exec", "start", "session"]
any_template = st.lists(st.sampled_from(PATH_PIECES), min_size=1, max_size=4).map(lambda p: "/" + "/".join(p))
rule_strategy = st.fixed_dictionaries(
    {"method": st.sampled_from(["GET", "HEAD", ["GET", "HEAD"]]), "path": any_template},
    optional={"dangerous": st.booleans()})
request_methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT",
                                   "get", "TRACE", "PRI"])
request_paths = st.lists(st.sampled_from(["containers", "images", "json", "export", "logs", "archive",
                                          "attach", "ws", "debug", "swarm", "_ping", "c1", "get", "%65xport",
                                          "%77s", "create", "exec", "start", "session", "v1.41"]),
                         min_size=1, max_size=5).map(lambda p: "/" + "/".join(p))
request_headers = st.lists(st.sampled_from([("Content-Length", "5"), ("Transfer-Encoding", "chunked"),
                                            ("Upgrade", "websocket"), ("Connection", "upgrade"),
                                            ("Content-Length", "0"), ("Accept", "*/*")]), max_size=2)


@settings(max_examples=600, deadline=None)
@given(st.lists(rule_strategy, min_size=1, max_size=6), request_methods, request_paths, request_headers)
def test_no_policy_forwards_a_write_or_a_guarded_path(rules, method, path, headers):
    """Generate arbitrary rule sets; whatever validates, a forwarded request is always a body-less,
    non-upgrade GET/HEAD that is neither never-forwarded nor an unacknowledged dangerous read."""
    try:
        policy = policy_of(*rules)
    except PolicyError:
        return
    try:
        decision = decide(policy, facts(method, path, headers))
    except Refusal:
        return
    assert method in ("GET", "HEAD")
    names = {k.lower() for k, v in headers if not (k == "Content-Length" and v == "0") and k != "Accept"}
    assert not names
    segments = decision.target.segments
    assert not any(template_matches(parse_template(t), segments) for t in NEVER_FORWARDED)
    if any(template_matches(parse_template(t), segments) for t in DANGEROUS_READS):
        assert decision.rule.dangerous


# ---- GET /swarm: dangerous unless the profile redacts its join tokens (issue 21: item 2) -------

def swarm_policy(redact: frozenset, dangerous: bool = False, mode: str = "enforce") -> Policy:
    """A policy built by hand, past load_policy's checks: what decide does on its own."""
    rules = {"p": (Rule("p", 0, frozenset({"GET"}), "/swarm", parse_template("/swarm"), None, dangerous),),
             "w": (Rule("w", 0, frozenset({"GET"}), "/_ping", parse_template("/_ping"), None, False),)}
    return Policy("test", rules, filtering={"p": Filtering(redact), "w": Filtering(redact)}, modes={"w": mode})


def test_get_swarm_is_forwarded_by_a_plain_rule_only_where_the_tokens_are_redacted():
    assert decide(swarm_policy(frozenset({"swarm-tokens"})), facts("GET", "/v1.41/swarm", profile="p"))
    assert decide(swarm_policy(frozenset(), dangerous=True), facts("GET", "/swarm", profile="p"))
    for redact in (frozenset(), frozenset(REDACTIONS) - {"swarm-tokens"}):
        with pytest.raises(Refusal, match="dangerous read .GET /swarm returns the swarm join tokens") as info:
            decide(swarm_policy(redact), facts("GET", "/v1.41/swarm", profile="p"))  # defence in depth
        assert info.value.kind == "dangerous"


def test_warn_mode_forwards_get_swarm_only_where_the_tokens_are_redacted():
    """A warn profile forwards what its rules refuse, never a dangerous read: GET /swarm is one
    for a profile that does not redact swarm-tokens."""
    forwarded = decide_with_mode(swarm_policy(frozenset({"swarm-tokens"}), mode="warn"), facts("GET", "/swarm", profile="w"))
    assert forwarded.would_deny and not forwarded.rule.dangerous
    with pytest.raises(Refusal, match="dangerous read"):
        decide_with_mode(swarm_policy(frozenset(), mode="warn"), facts("GET", "/swarm", profile="w"))
    with pytest.raises(Refusal, match="never forwarded"):
        decide_with_mode(swarm_policy(frozenset({"swarm-tokens"}), mode="warn"), facts("GET", "/swarm/unlockkey", profile="w"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries({"method": st.just("GET"),
                                       "path": st.sampled_from(["/swarm", "/{x}", "/swarm/{x}", "/_ping", "/info"])},
                                      optional={"dangerous": st.booleans()}), min_size=1, max_size=3),
       st.none() | st.lists(st.sampled_from(sorted(REDACTIONS)), unique=True),
       st.sampled_from(["enforce", "warn"]), st.sampled_from(["/swarm", "/v1.41/swarm", "/swarm/unlockkey", "/SWARM"]))
def test_no_policy_hands_out_the_swarm_join_tokens_or_unlock_key(rules, redact, mode, target):
    profile = {"rules": rules, "mode": mode, **({} if redact is None else {"redact": redact})}
    try:
        policy = load_policy(json.dumps({"version": 1, "profiles": {"default": profile}}))
    except PolicyError:
        return
    try:
        decision = decide_with_mode(policy, facts("GET", target))
    except Refusal:
        return
    assert decision.target.segments != ("swarm", "unlockkey")
    if decision.target.segments == ("swarm",):  # ("SWARM",): not a path dockerd routes (a would_deny)
        assert "swarm-tokens" in policy.filtering["default"].redact or decision.rule.dangerous


def test_only_http_1_0_and_1_1():
    for version, ok in ((b"1.1", True), (b"1.0", True), (b"1.2", False), (b"2.0", False), (b"0.9", False)):
        request = RequestFacts("GET", b"/_ping", [], "unix", "default", version)
        if ok:
            decide(SHIPPED, request)
        else:
            with pytest.raises(Refusal) as info:
                decide(SHIPPED, request)
            assert info.value.status == 505 and info.value.close


@pytest.mark.parametrize("value", ["evil\x01agent", "a\x1b[2Jb", "x\x7fy", "a\x08b"])
def test_control_bytes_in_any_header_are_refused(value):
    with pytest.raises(Refusal) as info:
        decide(SHIPPED, facts("GET", "/_ping", [("User-Agent", value)]))
    assert info.value.status == 400 and "control character" in info.value.reason


def test_tab_in_a_header_value_is_fine():
    assert allowed("GET", "/_ping", [("User-Agent", "a\tb")])


@pytest.mark.parametrize("host", ["http://evil.example", "evil.example:80:80", "a b", "evil.example/x",
                                  "user@127.0.0.1", "[::1", "127.0.0.1:99999999"])
def test_host_syntax_is_strict(host):
    assert not host_is_acceptable(host, frozenset())


def test_cross_site_fetches_refused_on_tcp():
    assert not allowed("GET", "/_ping", [("Host", "127.0.0.1"), ("Sec-Fetch-Site", "cross-site")], kind="tcp")
    assert not allowed("GET", "/_ping", [("Host", "127.0.0.1"), ("Sec-Fetch-Site", "same-site")], kind="tcp")
    assert allowed("GET", "/_ping", [("Host", "127.0.0.1"), ("Sec-Fetch-Site", "none")], kind="tcp")
    assert allowed("GET", "/_ping", [("Sec-Fetch-Site", "cross-site")], kind="unix")


# ---- forwarded_request, the one place a request for the daemon is built, builds GET and HEAD only
# (decide.py invariant 1), whatever its caller asks: no path through the proxy can build a write.

TARGET = canonicalize_target(b"/v1.41/containers/json?all=1")
HEADERS = [(b"user-agent", b"t"), (b"accept", b"*/*"), (b"x-registry-auth", b"secret"), (b"cookie", b"c")]
TOKEN = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&'*+-.^_`|~0123456789",
                min_size=1, max_size=12)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_reads_are_built_canonical_with_allowlisted_headers(method):
    request = forwarded_request(method, TARGET, HEADERS)
    assert request.method == method.encode()
    assert request.target == b"/v1.41/containers/json?all=1"
    assert list(request.headers) == [(b"host", b"docker"), (b"user-agent", b"t"), (b"accept", b"*/*")]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "CONNECT", "OPTIONS", "TRACE", "get", "head"])
def test_anything_else_is_never_built(method):
    with pytest.raises(NotReadOnly, match="read-only"):
        forwarded_request(method, TARGET, HEADERS)


@given(TOKEN)
def test_no_method_but_get_and_head_is_ever_built(method):
    if method in ("GET", "HEAD"):
        assert forwarded_request(method, TARGET, HEADERS).method == method.encode()
    else:
        with pytest.raises(NotReadOnly):
            forwarded_request(method, TARGET, HEADERS)


# ---- Which answers are streams, in Docker's API and in Podman's own (libpod), and which are known
# to be finite and so may be coalesced (issue "(2 of 5)", item 3). libpod's streams used to be
# taken for finite answers: coalesced, a second `podman events` watcher got its first byte only
# when the first one left.

def target(raw: str):
    return canonicalize_target(raw.encode())


# What Podman's swagger (pkg/api/server/register_*.go) says streams by default, or when asked.
STREAMS = [
    "/v1.41/events", "/events?since=1m",
    "/v4.0.0/libpod/events", "/v4.3.1/libpod/events?filters=%7B%7D&since=1m&stream=true&until=",
    "/containers/c/stats", "/v1.41/containers/c/stats?stream=1",
    "/v4.0.0/libpod/containers/c/stats", "/v4.0.0/libpod/containers/stats",
    "/v4.0.0/libpod/containers/stats?interval=2&containers=c",
    "/containers/c/logs?follow=1", "/v4.0.0/libpod/containers/c/logs?follow=true&stdout=true",
    "/v4.0.0/libpod/containers/c/top?stream=true", "/v4.0.0/libpod/pods/p/top?stream=1",
    "/v4.0.0/libpod/pods/stats?stream=true", "/containers/c/top?stream=1",
]

# Finite, and known to be one document the daemon builds at once: coalesced.
KNOWN_FINITE = [
    "/_ping", "/v1.41/version", "/info", "/containers/json?all=1", "/containers/c/json",
    "/images/json", "/images/library/busybox/json", "/system/df", "/networks", "/networks/n",
    "/volumes", "/volumes/v", "/containers/c/top", "/containers/c/changes", "/images/i/history",
    "/containers/c/stats?stream=false", "/containers/c/logs?stdout=1", "/services/s/logs",
    "/v4.0.0/libpod/_ping", "/v4.0.0/libpod/info", "/v4.0.0/libpod/containers/json",
    "/v4.0.0/libpod/containers/c/json", "/v4.0.0/libpod/containers/c/exists",
    "/v4.0.0/libpod/containers/stats?stream=false",
    "/v4.0.0/libpod/pods/stats", "/v4.0.0/libpod/pods/p/top", "/v4.0.0/libpod/images/json",
]

# Finite, but not known to be one document: not coalesced, and still finite for the timeouts.
UNKNOWN = [
    "/containers/c/export", "/containers/c/archive?path=/etc", "/images/get?names=x",
    "/images/i/get", "/v4.0.0/libpod/generate/kube?names=c", "/v4.0.0/libpod/images/export",
    "/v4.0.0/libpod/volumes/v/export", "/v4.0.0/libpod/events?stream=false", "/some/future/shape",
    "/libpod",
]


@pytest.mark.parametrize("raw", STREAMS)
def test_streams_of_both_apis_are_streams(raw):
    assert is_streaming(target(raw))
    assert not is_known_finite(target(raw))


@pytest.mark.parametrize("raw", KNOWN_FINITE)
def test_known_finite_documents_are_finite_and_coalescable(raw):
    assert not is_streaming(target(raw))
    assert is_known_finite(target(raw))


@pytest.mark.parametrize("raw", UNKNOWN)
def test_what_is_not_known_finite_is_not_coalesced_but_keeps_its_timeouts(raw):
    """Unknown is a stream for coalescing only: is_streaming stays false, so the answer keeps
    its write-stall and body timeouts and takes no stream slot."""
    assert not is_streaming(target(raw))
    assert not is_known_finite(target(raw))
