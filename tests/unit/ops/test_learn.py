"""porthole/ops/learn.py and the warn mode of profiles: load_policy's "mode", decide_with_mode,
learn_template and the Learner, with a property test that whatever is recorded makes a rules
document load_policy accepts and that allows exactly what was recorded. (The proxy in front of the
fake daemon, and the docker CLI against the real daemon learning then enforcing:
tests/daemon/test_learn.py.)"""

import ipaddress
import json
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policies import REPO, SHIPPED, facts, load_document
from policies import WARN_RULES as RULES

from porthole.app.settings import parse_settings
from porthole.core.clients import ClientFacts, choose_profile
from porthole.core.decide import RequestFacts, decide, decide_with_mode
from porthole.core.objects import REDACTIONS
from porthole.core.guards import (
    NEVER_FORWARDED,
    dangerous_overlaps,
    dangerous_reason,
    parse_template,
    template_matches,
    templates_overlap,
)
from porthole.core.policy import PolicyError, describe_policy, load_policy
from porthole.core.target import Refusal, canonicalize_target
from porthole.ops.learn import ENGINE_API_TEMPLATES, LEARN_MAX_VALUES, Learner, learn_template, learned_client

pytestmark = pytest.mark.timeout(90)

LOCALHOST = [(b"host", b"localhost")]  # the Host header docker clients send


def test_learn_path_from_the_command_line_or_the_environment():
    assert parse_settings([], {}).learn_path is None
    assert str(parse_settings(["--learn", "/tmp/a.json"], {"PORTHOLE_LEARN": "/tmp/b.json"}).learn_path) == "/tmp/a.json"
    assert str(parse_settings([], {"PORTHOLE_LEARN": "/tmp/b.json"}).learn_path) == "/tmp/b.json"


# ---- "mode" in rules.json (pure) --------------------------------------------------------------

def test_mode_is_enforce_by_default_and_warn_when_asked():
    policy = load_document(RULES)
    assert policy.modes == {"default": "enforce", "watcher": "warn"}
    assert "mode warn: what these rules refuse is forwarded anyway" in describe_policy(policy)
    assert "mode warn" not in describe_policy(SHIPPED)


@pytest.mark.parametrize("mode", ["audit", "", True, None, ["warn"]])
def test_other_modes_are_refused(mode):
    document = json.loads(json.dumps(RULES))
    document["profiles"]["watcher"]["mode"] = mode
    # (null is refused as null, as everywhere in the file: tests/unit/core/test_rules_types.py)
    expected = "must not be null" if mode is None else "must be \"enforce\""
    with pytest.raises(PolicyError, match=r"\$\.profiles\.watcher\.mode: " + expected):
        load_document(document)


def test_the_schema_knows_mode():
    import jsonschema

    schema = json.loads((REPO / "rules.schema.json").read_text())
    jsonschema.validate(RULES, schema)
    bad = json.loads(json.dumps(RULES))
    bad["profiles"]["watcher"]["mode"] = "audit"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# ---- decide_with_mode (pure) ------------------------------------------------------------------

@pytest.mark.parametrize("profile, learning", [("watcher", False), ("default", True), ("watcher", True)])
def test_what_the_rules_refuse_is_a_would_deny(profile, learning):
    policy = load_document(RULES)
    cases = [("/v1.47/info", f"no rule in profile '{profile}' allows GET /info"),
             ("/v1.47/version?x=1", "query parameter 'x' is not allowed by rule default[1] GET /version")]
    if profile == "watcher":
        cases = [("/v1.47/info", "no rule in profile 'watcher' allows GET /info"),
                 ("/v1.47/containers/json?all=1&size=1", "query parameter 'size' is not allowed by rule watcher[1] GET /containers/json"),
                 ("/containers/abc/logs?stdout=1&follow=1", "query parameter 'follow' is not allowed by rule watcher[2] GET /containers/{id}/logs")]
        assert decide_with_mode(policy, facts("GET", "/containers/abc/logs?follow=1", LOCALHOST, profile=profile),
                                learning=learning).streaming  # a stream keeps its stream handling
    for target, why in cases:
        decision = decide_with_mode(policy, facts("GET", target, LOCALHOST, profile=profile), learning=learning)
        assert decision.would_deny == why
        assert decision.target == canonicalize_target(target.encode())
    allowed = decide_with_mode(policy, facts("HEAD", "/_ping", LOCALHOST, profile=profile), learning=learning)
    assert allowed.would_deny is None and allowed.rule.index == 0


@pytest.mark.parametrize("profile, learning", [("watcher", False), ("default", True)])
def test_what_porthole_always_refuses_stays_refused(profile, learning):
    policy = load_document(RULES)
    cases = [("POST", "/containers/abc/start", "never forwarded: porthole is read-only"),
             ("DELETE", "/containers/abc", "never forwarded"),
             ("GET", "/containers/abc/top", "is a dangerous read"),
             ("GET", "/containers/abc/archive?path=/etc", "is a dangerous read"),
             ("GET", "/images/get?names=x", "is a dangerous read"),
             ("GET", "/debug/pprof", "is never forwarded"),
             ("GET", "/containers/abc/attach/ws", "is never forwarded"),
             ("GET", "/a//b", "empty")]
    if profile == "default":  # the logs it does not acknowledge
        cases.append(("GET", "/containers/abc/logs?stdout=1", "is a dangerous read"))
    for method, target, why in cases:
        with pytest.raises(Refusal, match=why):
            decide_with_mode(policy, facts(method, target, LOCALHOST, profile=profile), learning=learning)
    with pytest.raises(Refusal, match="requests from web pages"):
        decide_with_mode(policy, RequestFacts("GET", b"/info", [(b"host", b"localhost"), (b"origin", b"http://x")],
                                              "tcp", profile), learning=learning)
    with pytest.raises(Refusal, match="is not in rules.json"):
        decide_with_mode(policy, facts("GET", "/info", LOCALHOST, profile="gone"), learning=learning)


def test_an_enforcing_profile_still_refuses_without_learn_mode():
    policy = load_document(RULES)
    with pytest.raises(Refusal, match="no rule in profile 'default' allows GET /info") as refused:
        decide_with_mode(policy, facts("GET", "/info", LOCALHOST, profile="default"))
    assert refused.value.kind == "rule"
    with pytest.raises(Refusal) as refused:
        decide(policy, facts("GET", "/containers/x/top", LOCALHOST, profile="default"))
    assert refused.value.kind == "dangerous"


# ---- templates (pure) -------------------------------------------------------------------------

@pytest.mark.parametrize("path, template", [
    ("/containers/4f1c0d2e9a3b/json", "/containers/{id}/json"),
    ("/containers/json", "/containers/json"),
    ("/images/library/busybox:1.36/json", "/images/{name*}/json"),
    ("/images/json", "/images/json"),
    ("/images/sha256:abc/history", "/images/{name*}/history"),
    ("/containers/web/logs", "/containers/{id}/logs"),
    ("/networks/bridge", "/networks/{id}"),
    ("/plugins/vieux/sshfs:latest/json", "/plugins/{name*}/json"),
    ("/libpod/containers/web/json", "/libpod/containers/{name}/json"),  # the shipped podman profile's
    ("/libpod/images/a/b/exists", "/libpod/images/{name*}/exists"),
    ("/containers/a/b/logs", None),  # a container name never holds '/': no template, not learned
    ("/frobnicate/x", None),
])


def test_a_path_is_learned_as_a_template_never_a_raw_id(path, template):
    assert learn_template(SHIPPED, canonicalize_target(path.encode()).segments) == template


def test_the_template_table_is_loadable_and_never_guesses_danger():
    """Every table template could be a rule; it is a dangerous read exactly when its paths are."""
    nevers = [parse_template(t) for t in NEVER_FORWARDED]
    for text in ENGINE_API_TEMPLATES:
        template = parse_template(text)
        assert not any(templates_overlap(template, never) for never in nevers), text
        example = tuple("x" if not isinstance(t, str) else t for t in template)
        assert bool(dangerous_overlaps(template)) == (dangerous_reason(example) is not None), text
        assert learn_template(SHIPPED, example) == text


# ---- the Learner (pure) -----------------------------------------------------------------------

def record(learner, policy, client, target, method="GET", forwarded=True, profile="default"):
    return learner.record(policy, client, method, canonicalize_target(target.encode()), forwarded, profile=profile)


def test_one_minimal_profile_per_client_with_its_clients_entry():
    base = dict(RULES, clients=[{"match": {"uid": 1000}, "profile": "watcher"},
                                {"match": {"address": "10.1.0.0/16"}, "profile": "watcher"}])
    policy = load_document(base)
    learner = Learner()
    uid, local, cn = (ClientFacts(uid=1000, gid=5), ClientFacts(address=ipaddress.ip_address("127.0.0.1")),
                      ClientFacts(address=ipaddress.ip_address("127.0.0.1"), cert_cn="Traefik Proxy"))
    assert record(learner, policy, uid, "/v1.47/containers/3f2a/json") == ("new", "/containers/{id}/json")
    assert record(learner, policy, uid, "/v1.47/containers/9b1c/json") == ("seen", "/containers/{id}/json")
    assert record(learner, policy, uid, "/_ping", "HEAD")[0] == "new"
    assert record(learner, policy, uid, "/containers/json?all=1&filters=%7B%7D")[0] == "new"
    assert record(learner, policy, uid, "/containers/json?all=1&filters=other")[0] == "seen"
    assert record(learner, policy, uid, "/containers/json?all=0")[0] == "new"
    assert record(learner, policy, uid, "/containers/web/logs?stdout=1", forwarded=False) == \
        ("new", "/containers/{id}/logs")
    assert record(learner, policy, local, "/info") == ("new", "/info")
    assert record(learner, policy, local, "/containers/web/logs?follow=1")[0] == "new"  # acknowledged
    assert record(learner, policy, cn, "/events?filters=x") == ("new", "/events")
    assert record(learner, policy, local, "/nowhere")[0] == "no_template"
    assert record(learner, policy, ClientFacts(), "/info")[0] == "no_identity"

    document, notes = learner.document(policy)
    learned = load_policy(json.dumps(document), "learned.json")
    assert learned.profiles.keys() == {"default", "watcher", "learned-uid-1000", "learned-127-0-0-1",
                                       "learned-cn-traefik-proxy"}
    assert document["profiles"]["default"] == RULES["profiles"]["default"]  # the originals are kept
    assert document["profiles"]["learned-uid-1000"]["rules"] == [
        {"method": ["HEAD"], "path": "/_ping", "query": {}},
        {"method": ["GET"], "path": "/containers/json", "query": {"all": ["0", "1"], "filters": "*"}},
        {"method": ["GET"], "path": "/containers/{id}/json", "query": {}}]
    assert document["profiles"]["learned-127-0-0-1"]["rules"][0] == {
        "method": ["GET"], "path": "/containers/{id}/logs", "query": {"follow": ["1"]}, "dangerous": True}
    # cert_cn entries first (a certificate client also has an address), the shadowed original dropped
    assert document["clients"] == [
        {"match": {"cert_cn": "Traefik Proxy"}, "profile": "learned-cn-traefik-proxy", "comment": "learned by porthole --learn"},
        {"match": {"uid": 1000}, "profile": "learned-uid-1000", "comment": "learned by porthole --learn"},
        {"match": {"address": "127.0.0.1", "certificate": False}, "profile": "learned-127-0-0-1",
         "comment": "learned by porthole --learn"},
        {"match": {"address": "10.1.0.0/16"}, "profile": "watcher"}]
    assert any("$.clients[0] (uid=1000) left out" in note for note in notes)
    # the refused dangerous read is named, never acknowledged
    assert any("uid=1000: GET /containers/{id}/logs (logs can hold secrets" in note for note in notes)
    assert "need a deliberate \"dangerous\": true: GET /containers/{id}/logs" in \
        document["profiles"]["learned-uid-1000"]["description"]
    for client, profile in ((uid, "learned-uid-1000"), (local, "learned-127-0-0-1"), (cn, "learned-cn-traefik-proxy")):
        assert choose_profile(learned.clients, client, "default")[0] == profile
    assert choose_profile(learned.clients, ClientFacts(uid=1000, gid=5), "default")[0] == "learned-uid-1000"
    with pytest.raises(Refusal, match="dangerous read"):
        decide(learned, facts("GET", "/containers/web/logs?stdout=1", LOCALHOST, profile="learned-uid-1000"))
    with pytest.raises(Refusal, match="no rule"):
        decide(learned, facts("GET", "/_ping", LOCALHOST, profile="learned-uid-1000"))  # only HEAD was used


def test_a_client_with_only_refused_reads_gets_no_profile_and_names_collide_safely():
    policy = load_document(RULES)
    learner = Learner()
    record(learner, policy, ClientFacts(uid=7), "/containers/x/top", forwarded=False)
    for cn in ("a.b", "a-b", "A_B"):
        record(learner, policy, ClientFacts(cert_cn=cn), "/info")
    document, notes = learner.document(policy)
    load_policy(json.dumps(document))
    assert "learned-uid-7" not in document["profiles"]
    assert "uid=7: no profile learned: nothing it asked for was forwarded" in notes
    assert sorted((e["match"]["cert_cn"], e["profile"]) for e in document["clients"] if "cert_cn" in e["match"]) == [
        ("A_B", "learned-cn-a-b"), ("a-b", "learned-cn-a-b-2"), ("a.b", "learned-cn-a-b-3")]
    assert [e["profile"] for e in document["clients"] if e["match"] == {"uid": 7}] == ["default"]  # kept as it was


def test_a_client_that_learned_nothing_is_not_taken_over_by_a_learned_address():
    """A mutual-TLS client (CN web) at 127.0.0.1 whose reads were all refused, and a plain client
    at the same address that learned /info: the CN client keeps the profile it was served under,
    rather than falling through to the address's learned profile (Learner Rule 3)."""
    policy = load_document(RULES)
    learner = Learner()
    tls_client = ClientFacts(address=ipaddress.ip_address("127.0.0.1"), cert_cn="web")
    record(learner, policy, tls_client, "/containers/x/top", forwarded=False)
    record(learner, policy, ClientFacts(address=ipaddress.ip_address("127.0.0.1")), "/info")
    document, _ = learner.document(policy)
    learned = load_policy(json.dumps(document))
    assert choose_profile(learned.clients, tls_client, "default")[0] == "default"


def test_a_learned_address_is_only_for_clients_without_a_certificate():
    """The plain client at 127.0.0.1 was learned; a mutual-TLS client from the same address that
    was never seen (CN a.b, or a certificate without a single CN) keeps what it got before: its
    listener's profile, or the original entry for that address, which is no longer left out as
    shadowed. (Found by the property test below: the learned address entry matched it too.)"""
    plain = ClientFacts(address=ipaddress.ip_address("127.0.0.1"))
    original_entry = {"match": {"address": "127.0.0.1"}, "profile": "default"}
    for original, expected in (([], "watcher"), ([original_entry], "default")):
        policy = load_document(dict(RULES, clients=original))
        learner = Learner()
        record(learner, policy, plain, "/_ping", "HEAD")
        document, notes = learner.document(policy)
        learned = load_policy(json.dumps(document))
        assert choose_profile(learned.clients, plain, "watcher")[0] == "learned-127-0-0-1"
        for cn in ("a.b", ""):
            tls_client = ClientFacts(address=ipaddress.ip_address("127.0.0.1"), cert_cn=cn)
            assert choose_profile(learned.clients, tls_client, "watcher")[0] == expected, (original, cn)
        assert document["clients"][0]["match"] == {"address": "127.0.0.1", "certificate": False}
        assert not notes


def test_values_of_a_value_key_are_bounded():
    policy = load_document(RULES)
    learner = Learner()
    for i in range(LEARN_MAX_VALUES + 1):
        record(learner, policy, ClientFacts(uid=1), f"/containers/json?all={i}")
    document, _ = learner.document(policy)
    assert document["profiles"]["learned-uid-1"]["rules"][0]["query"] == {"all": "*"}


# A property: whatever is recorded, the document loads and allows exactly what was recorded.

_CLIENTS = st.one_of(
    st.builds(ClientFacts, uid=st.integers(0, 3), gid=st.integers(0, 3)),
    st.builds(ClientFacts, address=st.sampled_from([ipaddress.ip_address(a) for a in ("127.0.0.1", "127.0.0.2", "::1")])),
    st.builds(ClientFacts, address=st.just(ipaddress.ip_address("127.0.0.1")), cert_cn=st.sampled_from(["a.b", "a-b", "web"])),
)
_SEGMENT = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,8}", fullmatch=True).filter(lambda s: s not in (".", ".."))
_KEYS = st.sampled_from(["all", "size", "stream", "filters", "since", "follow", "tail", "x-y"])


@st.composite
def _requests(draw):
    """(client, method, raw target, forwarded): a path of the Engine API's shapes, filled in."""
    template = draw(st.sampled_from(ENGINE_API_TEMPLATES + ("/libpod/containers/{name}/json",)))
    parts = []
    for part in template[1:].split("/"):
        if part.endswith("*}"):
            parts += draw(st.lists(_SEGMENT, min_size=1, max_size=2))
        elif part.startswith("{"):
            parts.append(draw(_SEGMENT))
        else:
            parts.append(part)
    query = draw(st.dictionaries(_KEYS, st.sampled_from(["1", "0", "true", "{}", "x y"]), max_size=3))
    target = "/" + "/".join(parts)
    if draw(st.booleans()):
        target = "/v1.47" + target
    if query:
        target += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    danger = dangerous_reason(tuple(parts)) is not None
    return (draw(_CLIENTS), draw(st.sampled_from(["GET", "HEAD"])), target,
            not danger or draw(st.booleans()))  # a dangerous read is forwarded when acknowledged


def _covered(learner, client, method, target):
    """What the Learner holds covers the request (worked out from its records, not from rules)."""
    uses = learner.used.get(learned_client(client), {})
    for template, use in uses.items():
        if template_matches(parse_template(template), target.segments) and method in use.methods and all(
                key in use.query and (use.query[key] is None or value in use.query[key]) for key, value in target.query):
            return True
    return False


@settings(max_examples=100, deadline=None)
@given(st.lists(_requests(), min_size=1, max_size=12), st.lists(_requests(), max_size=12))
def test_the_learned_document_allows_exactly_what_was_recorded(recorded, others):
    profiles = dict(RULES["profiles"], pod={"rules": [{"method": "GET", "path": "/libpod/containers/{name}/json"}]})
    base = load_document(dict(RULES, profiles=profiles, clients=[{"match": {"uid": 2}, "profile": "watcher"}]))
    learner = Learner()
    for client, method, target, forwarded in recorded:
        outcome, template = learner.record(base, client, method, canonicalize_target(target.encode()), forwarded,
                                           profile="default")
        assert outcome in ("new", "seen") and template is not None
    document, _ = learner.document(base)
    learned = load_policy(json.dumps(document), "learned.json")  # never raises
    near = []  # one step away from what was recorded: the other method, another key or value
    for client, method, target, _ in recorded:
        near.append((client, "HEAD" if method == "GET" else "GET", target, False))
        near.append((client, method, target + ("&" if "?" in target else "?") + "extra=1", False))
        near.append((client, method, target.replace("all=", "all=2"), False))
    for client, method, target, forwarded in recorded + others + near:
        profile, _ = choose_profile(learned.clients, client, "default")
        canonical = canonicalize_target(target.encode())
        covered = _covered(learner, client, method, canonical)
        if (client, method, target, True) in recorded:
            assert covered
        if not profile.startswith("learned-"):
            continue  # a client nothing was forwarded for: its listener's profile, as before
        try:
            decide(learned, facts(method, target, LOCALHOST, profile=profile))
            allowed = True
        except Refusal:
            allowed = False
        assert allowed == covered, (client, method, target, document["profiles"][profile])


# ---- Adopting the file --learn wrote never widens what a client sees, and one client that cannot be
# written never stops the others from being written (issue "(2 of 5)", item 15: learned profiles
# dropped the original profile's scope and extra redactions, and one bad entry made every write
# fail, SIGTERM's too).

PING = {"method": ["GET", "HEAD"], "path": "/_ping"}


def policy(**profiles):
    return load_policy(json.dumps({"version": 1, "profiles": {"default": {"rules": [PING]}, **profiles}}), "rules.json")


def learned(base, *requests):
    learner = Learner()
    for facts, profile, target in requests:
        outcome, _ = learner.record(base, facts, "GET", canonicalize_target(target), True, profile=profile)
        assert outcome in ("new", "seen")
    document, notes = learner.document(base)
    return load_policy(json.dumps(document), "learned.json"), document, notes


def test_a_learned_profile_keeps_the_scope_redactions_and_mode_of_its_client_s_profile():
    base = policy(scoped={"redact": ["env", "commands", "host-paths"], "visible": {"labels": ["team=a", "tier"]},
                          "mode": "enforce", "coalesce": False,
                          "rules": [PING, {"method": "GET", "path": "/containers/{id}/json"}]})
    after, document, _ = learned(base, (ClientFacts(uid=1000), "scoped", b"/v1.41/containers/web/json"))
    profile = document["clients"][0]["profile"]
    assert after.filtering[profile].redact == frozenset({"env", "commands", "host-paths"})
    assert after.filtering[profile].visible == (("team", "a"), ("tier", None))
    assert after.modes.get(profile) == "enforce" and profile in after.uncoalesced


def test_a_client_served_under_two_profiles_keeps_both_restrictions():
    base = policy(a={"redact": ["env"], "visible": {"labels": ["team=a"]}, "mode": "warn", "rules": [PING]},
                  b={"redact": ["commands"], "mode": "enforce", "rules": [PING]})
    client = ClientFacts(uid=7)
    after, document, _ = learned(base, (client, "a", b"/_ping"), (client, "b", b"/_ping"))
    profile = document["clients"][0]["profile"]
    assert after.filtering[profile].redact == frozenset({"env", "commands"})
    assert after.filtering[profile].visible == (("team", "a"),)
    assert after.modes.get(profile) == "enforce"


def test_a_learned_profile_keeps_only_the_variables_every_profile_of_its_client_keeps():
    """(issue 21: item 3) netdata's client keeps its NOMAD_* values in the profile learned for it."""
    nomad = ["NOMAD_JOB_NAME", "NOMAD_TASK_NAME"]
    base = policy(n={"redact": ["env"], "keep": {"env": nomad}, "rules": [PING]},
                  m={"redact": ["env"], "keep": {"env": ["NOMAD_JOB_NAME", "OTHER_*"]}, "rules": [PING]})
    after, document, _ = learned(base, (ClientFacts(uid=7), "n", b"/_ping"), (ClientFacts(uid=8), "n", b"/_ping"),
                                 (ClientFacts(uid=8), "m", b"/_ping"))
    profiles = {entry["match"]["uid"]: entry["profile"] for entry in document["clients"]}
    assert after.filtering[profiles[7]].keep_env == tuple(nomad)
    assert after.filtering[profiles[8]].keep_env == ("NOMAD_JOB_NAME",)


def test_warn_is_kept_only_where_it_was():
    base = policy(w={"mode": "warn", "rules": [PING]})
    after, document, _ = learned(base, (ClientFacts(uid=7), "w", b"/_ping"))
    assert after.modes.get(document["clients"][0]["profile"]) == "warn"


def test_a_client_that_cannot_be_written_leaves_the_others_written():
    base = policy()
    after, document, notes = learned(base, (ClientFacts(cert_cn=""), "default", b"/_ping"),  # no CN: no entry
                                     (ClientFacts(uid=1000), "default", b"/_ping"))
    assert [entry["match"] for entry in document["clients"]] == [{"uid": 1000}]
    assert any(note.startswith("cert_cn=: left out") for note in notes)


LABELS = st.lists(st.sampled_from(["team=a", "team=b", "tier", "env=prod"]), unique=True, min_size=1, max_size=2)
PROFILE = st.fixed_dictionaries({"redact": st.lists(st.sampled_from(sorted(REDACTIONS)), unique=True),
                                 "mode": st.sampled_from(["enforce", "warn"])},
                                optional={"visible": LABELS.map(lambda labels: {"labels": labels}),
                                          "keep": st.lists(st.sampled_from(["A", "B_*", "C?"]), unique=True,
                                                           min_size=1).map(lambda names: {"env": names})}).map(
    lambda body: body if "env" in body["redact"] else {k: v for k, v in body.items() if k != "keep"})


@settings(max_examples=60, deadline=None)
@given(st.lists(PROFILE, min_size=1, max_size=3))
def test_property_never_less_restricted_than_any_profile_it_was_served_under(profiles):
    names = [f"p{i}" for i in range(len(profiles))]
    base = policy(**{name: {**body, "rules": [PING]} for name, body in zip(names, profiles)})
    client = ClientFacts(uid=42)
    after, document, _ = learned(base, *((client, name, b"/_ping") for name in names))
    mine = document["clients"][0]["profile"]
    for name in names:
        assert after.filtering[mine].redact >= base.filtering[name].redact
        if "env" in base.filtering[name].redact:
            assert set(after.filtering[mine].keep_env) <= set(base.filtering[name].keep_env)
        assert set(after.filtering[mine].visible) >= set(base.filtering[name].visible)
        if base.modes.get(name) == "enforce":
            assert after.modes.get(mine) == "enforce"
