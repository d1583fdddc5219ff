"""Learn mode (--learn PATH) and profiles in "mode": "warn".

Pure parts first (load_policy's "mode", decide_with_mode, learn_template, Learner, with a property
test that whatever is recorded makes a rules document load_policy accepts and that allows exactly
what was recorded), then the proxy in front of the fake daemon (would_deny logging, writes on the
timer and SIGHUP), then the docker CLI against the real daemon: learn, stop, run on the learned
file."""

import ipaddress
import json
import signal
import stat
import uuid
from urllib.parse import quote

import pytest
from hypothesis import given, settings, strategies as st

import support
import fake_upstream as fu
from proxy import (ENGINE_API_TEMPLATES, LEARN_MAX_VALUES, NEVER_FORWARDED, ClientFacts, Learner, PolicyError,
                   Refusal, RequestFacts, canonicalize_target, choose_profile, dangerous_overlaps, dangerous_reason,
                   decide, decide_with_mode, describe_policy, learn_template, load_policy, parse_settings,
                   parse_template, template_matches, templates_overlap)

pytestmark = pytest.mark.timeout(90)

PING = {"method": ["GET", "HEAD"], "path": "/_ping"}
RULES = {"version": 1, "profiles": {
    "default": {"rules": [PING, {"method": "GET", "path": "/version", "query": {}}]},
    "watcher": {"mode": "warn", "rules": [PING, {"method": "GET", "path": "/containers/json", "query": {"all": "*"}},
                                          {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True,
                                           "query": {"stdout": "*"}}]},
}}
SHIPPED = load_policy((support.REPO / "rules.json").read_text(), "rules.json")


def policy_of(document):
    return load_policy(json.dumps(document), "rules.json")


def facts(method, target, profile, kind="unix"):
    return RequestFacts(method, target.encode(), [(b"host", b"localhost")], kind, profile)


def test_learn_path_from_the_command_line_or_the_environment():
    assert parse_settings([], {}).learn_path is None
    assert str(parse_settings(["--learn", "/tmp/a.json"], {"PORTHOLE_LEARN": "/tmp/b.json"}).learn_path) == "/tmp/a.json"
    assert str(parse_settings([], {"PORTHOLE_LEARN": "/tmp/b.json"}).learn_path) == "/tmp/b.json"


# ---- "mode" in rules.json (pure) --------------------------------------------------------------

def test_mode_is_enforce_by_default_and_warn_when_asked():
    policy = policy_of(RULES)
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
        policy_of(document)


def test_the_schema_knows_mode():
    import jsonschema

    schema = json.loads((support.REPO / "rules.schema.json").read_text())
    jsonschema.validate(RULES, schema)
    bad = json.loads(json.dumps(RULES))
    bad["profiles"]["watcher"]["mode"] = "audit"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# ---- decide_with_mode (pure) ------------------------------------------------------------------

@pytest.mark.parametrize("profile, learning", [("watcher", False), ("default", True), ("watcher", True)])
def test_what_the_rules_refuse_is_a_would_deny(profile, learning):
    policy = policy_of(RULES)
    cases = [("/v1.47/info", f"no rule in profile '{profile}' allows GET /info"),
             ("/v1.47/version?x=1", "query parameter 'x' is not allowed by rule default[1] GET /version")]
    if profile == "watcher":
        cases = [("/v1.47/info", "no rule in profile 'watcher' allows GET /info"),
                 ("/v1.47/containers/json?all=1&size=1", "query parameter 'size' is not allowed by rule watcher[1] GET /containers/json"),
                 ("/containers/abc/logs?stdout=1&follow=1", "query parameter 'follow' is not allowed by rule watcher[2] GET /containers/{id}/logs")]
        assert decide_with_mode(policy, facts("GET", "/containers/abc/logs?follow=1", profile),
                                learning=learning).streaming  # a stream keeps its stream handling
    for target, why in cases:
        decision = decide_with_mode(policy, facts("GET", target, profile), learning=learning)
        assert decision.would_deny == why
        assert decision.target == canonicalize_target(target.encode())
    allowed = decide_with_mode(policy, facts("HEAD", "/_ping", profile), learning=learning)
    assert allowed.would_deny is None and allowed.rule.index == 0


@pytest.mark.parametrize("profile, learning", [("watcher", False), ("default", True)])
def test_what_porthole_always_refuses_stays_refused(profile, learning):
    policy = policy_of(RULES)
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
            decide_with_mode(policy, facts(method, target, profile), learning=learning)
    with pytest.raises(Refusal, match="requests from web pages"):
        decide_with_mode(policy, RequestFacts("GET", b"/info", [(b"host", b"localhost"), (b"origin", b"http://x")],
                                              "tcp", profile), learning=learning)
    with pytest.raises(Refusal, match="is not in rules.json"):
        decide_with_mode(policy, facts("GET", "/info", "gone"), learning=learning)


def test_an_enforcing_profile_still_refuses_without_learn_mode():
    policy = policy_of(RULES)
    with pytest.raises(Refusal, match="no rule in profile 'default' allows GET /info") as refused:
        decide_with_mode(policy, facts("GET", "/info", "default"))
    assert refused.value.kind == "rule"
    with pytest.raises(Refusal) as refused:
        decide(policy, facts("GET", "/containers/x/top", "default"))
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
    policy = policy_of(base)
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
        {"match": {"address": "127.0.0.1"}, "profile": "learned-127-0-0-1", "comment": "learned by porthole --learn"},
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
        decide(learned, facts("GET", "/containers/web/logs?stdout=1", "learned-uid-1000"))
    with pytest.raises(Refusal, match="no rule"):
        decide(learned, facts("GET", "/_ping", "learned-uid-1000"))  # only HEAD was used


def test_a_client_with_only_refused_reads_gets_no_profile_and_names_collide_safely():
    policy = policy_of(RULES)
    learner = Learner()
    record(learner, policy, ClientFacts(uid=7), "/containers/x/top", forwarded=False)
    for cn in ("a.b", "a-b", "A_B"):
        record(learner, policy, ClientFacts(cert_cn=cn), "/info")
    document, notes = learner.document(policy)
    load_policy(json.dumps(document))
    assert "learned-uid-7" not in document["profiles"]
    assert "uid=7: no profile learned: nothing it asked for was forwarded" in notes
    assert sorted((e["match"]["cert_cn"], e["profile"]) for e in document["clients"]) == [
        ("A_B", "learned-cn-a-b"), ("a-b", "learned-cn-a-b-2"), ("a.b", "learned-cn-a-b-3")]


def test_values_of_a_value_key_are_bounded():
    policy = policy_of(RULES)
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
    from proxy import learned_client

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
    base = policy_of(dict(RULES, profiles=profiles, clients=[{"match": {"uid": 2}, "profile": "watcher"}]))
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
            decide(learned, facts(method, target, profile))
            allowed = True
        except Refusal:
            allowed = False
        assert allowed == covered, (client, method, target, document["profiles"][profile])


# ---- the proxy in front of the fake daemon ----------------------------------------------------

def learn_dir():
    return support.short_tmpdir("ph-learn-", mode=0o777)


def test_warn_mode_forwards_and_logs_what_it_would_deny(start_proxy, upstream):
    p = start_proxy(listen=["tcp://127.0.0.1:%d?profile=watcher" % support.free_port()])
    assert fu.get(p.addr, "/v1.47/containers/json?all=1").status == 200
    assert fu.get(p.addr, "/v1.47/info").status == 200
    assert fu.get(p.addr, "/v1.47/containers/json?size=1").status == 200
    assert fu.get(p.addr, "/v1.47/containers/x/top").status == 403
    assert fu.get(p.addr, "/v1.47/containers/x/start", method="POST").status == 403
    assert support.wait_until(lambda: len(p.requests_logged()) >= 5, 5)
    lines = {l["target"]: l for l in p.requests_logged()}
    assert lines["/v1.47/containers/json?all=1"]["decision"] == "allow"
    assert lines["/v1.47/info"]["decision"] == "would_deny"
    assert lines["/v1.47/info"]["reason"] == "no rule in profile 'watcher' allows GET /info"
    assert lines["/v1.47/info"]["rule"] is None and lines["/v1.47/info"]["status"] == 200
    assert "query parameter 'size' is not allowed" in lines["/v1.47/containers/json?size=1"]["reason"]
    assert lines["/v1.47/containers/x/top"]["decision"] == "deny"
    assert lines["/v1.47/containers/x/start"]["decision"] == "deny"
    assert sorted(r.path for r in upstream.requests) == ["/containers/json", "/containers/json", "/info"]
    assert not [l for l in p.logs() if l.get("event", "").startswith("learn")]  # warn records nothing


def test_learn_writes_a_valid_file_on_its_timer_and_on_sighup(start_proxy, upstream):
    path = learn_dir() / "learned.json"
    p = start_proxy("--learn", path)
    assert p.wait_for_log(lambda l: l.get("event") == "learn_mode")
    assert fu.get(p.addr, "/v1.47/containers/4f1c/json").status == 200  # would_deny, forwarded
    assert fu.get(p.addr, "/v1.47/containers/4f1c/logs?stdout=1").status == 403  # dangerous
    assert fu.get(p.addr, "/v1.47/containers/4f1c/start", method="POST").status == 403
    assert support.wait_until(path.exists, 10), p.stderr_text()  # the timer, no signal
    written = p.wait_for_log(lambda l: l.get("event") == "learn_written")
    assert written["why"] == "learned" and written["clients"] == ["address=127.0.0.1"]
    document = json.loads(path.read_text())
    load_policy(path.read_text())
    assert document["profiles"]["learned-127-0-0-1"]["rules"] == [
        {"method": ["GET"], "path": "/containers/{id}/json", "query": {}}]
    assert "GET /containers/{id}/logs" in document["profiles"]["learned-127-0-0-1"]["description"]
    left = p.wait_for_log(lambda l: l.get("event") == "learn_left_out")
    assert "address=127.0.0.1: GET /containers/{id}/logs (logs can hold secrets" in left["note"]
    assert fu.get(p.addr, "/v1.47/info").status == 200
    p.send_signal(signal.SIGHUP)
    assert p.wait_for_log(lambda l: l.get("event") == "learn_written" and l["why"] == "SIGHUP")
    assert [r["path"] for r in json.loads(path.read_text())["profiles"]["learned-127-0-0-1"]["rules"]] == [
        "/containers/{id}/json", "/info"]
    assert not [f for f in path.parent.iterdir() if f.name != "learned.json"]  # no temporary file left
    check = support.ProxyProcess(rules=path, args=["--check"]).run()
    assert check.returncode == 0, check.stderr
    assert "profile learned-127-0-0-1: learned by porthole --learn" in check.stdout


def test_an_unwritable_learn_path_stops_the_start_or_is_logged_later(start_proxy, upstream):
    directory = support.short_tmpdir("ph-learn-ro-", mode=0o755)  # root's: the proxy runs as 65532
    result = support.ProxyProcess(listen=["tcp://127.0.0.1:%d" % support.free_port()], upstream=upstream.url,
                                  args=["--learn", directory / "learned.json"]).run()
    assert result.returncode == 2
    assert f"--learn {directory}/learned.json: porthole (uid 65532) cannot write to {directory}" in result.stderr
    directory.chmod(0o777)
    p = start_proxy("--learn", directory / "learned.json")
    directory.chmod(0o755)  # taken away while it runs: each write fails, is logged, and it goes on
    assert fu.get(p.addr, "/v1.47/info").status == 200
    failed = p.wait_for_log(lambda l: l.get("event") == "learn_write_failed", timeout=10)
    assert failed and "Permission denied" in failed["error"]
    assert fu.get(p.addr, "/v1.47/info").status == 200
    assert not list(directory.iterdir())


def test_a_verified_certificate_is_learned_by_its_cn(start_proxy, upstream):
    import ssl

    import tls_certs

    pki = tls_certs.make_pki(support.short_tmpdir("ph-pki-"))
    path = learn_dir() / "learned.json"
    port = support.free_port()
    p = start_proxy("--learn", path, listen=[pki.listen_url(port)])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki.ca))
    context.load_cert_chain(str(pki.clients["dozzle"].cert), str(pki.clients["dozzle"].key))
    sock = context.wrap_socket(fu.connect(("127.0.0.1", port)), server_hostname="localhost")
    with fu.HttpClient(sock) as http:
        http.request("GET", "/v1.47/info")
        assert http.read_response().status == 200
    assert p.stop() == 0
    document = json.loads(path.read_text())
    assert document["clients"][0] == {"match": {"cert_cn": "dozzle"}, "profile": "learned-cn-dozzle",
                                      "comment": "learned by porthole --learn"}
    assert document["profiles"]["learned-cn-dozzle"]["rules"] == [{"method": ["GET"], "path": "/info", "query": {}}]


# ---- the docker CLI against the real daemon: learn, then enforce the learned file ----------------

LEARN_BASE = {"version": 1, "profiles": {"default": {"rules": [
    {"method": ["GET", "HEAD"], "path": "/_ping"},
    {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True, "query": {"stdout": "*"},
     "comment": "acknowledged, but not every key docker logs sends: those are would_deny while learning"}]}}}


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_docker_cli_learned_then_enforced(proxy_factory, dockerd, busybox_image, containers):
    name = "ph-learn-" + uuid.uuid4().hex[:8]
    container = containers(busybox_image, name=name, command=["sh", "-c", "echo learned-line; sleep 600"])
    assert support.wait_until(lambda: b"learned-line" in container.logs(), 10)
    path = learn_dir() / "learned.json"
    unix_url, unix_path = support.unix_listen_url("learn.sock", "mode=0660")
    port = support.free_port()
    hosts = ("tcp://127.0.0.1:%d" % port, "unix://" + unix_path)

    def used(host):  # what the application does
        return [support.docker_cli(host, "version", "--format", "{{.Server.Version}}"),
                support.docker_cli(host, "ps", "-a", "--no-trunc", "--format", "{{.Names}}"),
                support.docker_cli(host, "inspect", "--format", "{{.Name}}", name),
                support.docker_cli(host, "logs", name)]

    learning = proxy_factory(listen=["tcp://127.0.0.1:%d" % port, unix_url], rules=support.write_rules(LEARN_BASE),
                             args=["--learn", str(path)])
    expected = None
    for host in hosts:
        results = used(host)
        assert all(r.returncode == 0 for r in results), [(r.args, r.stderr) for r in results]
        outputs = [r.stdout for r in results]
        assert name in outputs[1] and outputs[2].strip() == "/" + name and "learned-line" in outputs[3]
        assert expected in (None, outputs)
        expected = outputs
        top = support.docker_cli(host, "top", name)  # a dangerous read nobody acknowledged
        assert top.returncode != 0 and "dangerous read" in top.stderr
    would = [l for l in learning.requests_logged(decision="would_deny")]
    assert any(l["path"].endswith("/version") and "no rule in profile 'default'" in l["reason"] for l in would)
    assert any("/logs?" in l["path"] and "is not allowed by rule default[1]" in l["reason"] for l in would)
    assert learning.stop() == 0
    assert any(l.get("event") == "learn_written" and l["why"] == "SIGTERM" for l in learning.logs())

    document = json.loads(path.read_text())
    load_policy(path.read_text(), str(path))
    assert set(document["profiles"]) == {"default", "learned-127-0-0-1", "learned-uid-0"}  # the CLI runs as root
    assert [e["match"] for e in document["clients"]] == [{"uid": 0}, {"address": "127.0.0.1"}]
    for profile in ("learned-127-0-0-1", "learned-uid-0"):
        rules = {r["path"]: r for r in document["profiles"][profile]["rules"]}
        assert {"/_ping", "/version", "/containers/json", "/containers/{id}/json", "/containers/{id}/logs"} <= set(rules)
        assert rules["/containers/{id}/logs"]["dangerous"] is True  # acknowledged by the base profile
        assert not [p for p in rules if name in p or container.id[:12] in p]  # templates, never raw names
        assert "GET /containers/{id}/top" in document["profiles"][profile]["description"]

    enforcing = proxy_factory(listen=["tcp://127.0.0.1:%d" % port, unix_url], rules=path)
    for host in hosts:
        results = used(host)
        assert [r.returncode for r in results] == [0, 0, 0, 0], [(r.args, r.stderr) for r in results]
        assert [r.stdout for r in results] == expected
        for command in (["images"], ["network", "ls"], ["top", name], ["volume", "ls"]):
            refused = support.docker_cli(host, *command)
            assert refused.returncode != 0 and "porthole:" in refused.stderr, (command, refused.stdout)
    assert not enforcing.requests_logged(decision="would_deny")
    denied = enforcing.requests_logged(decision="deny")
    assert {l["profile"] for l in denied} == {"learned-127-0-0-1", "learned-uid-0"}
    assert all(l["status"] == 403 for l in denied)
    assert any(l["target"].endswith("/images/json") for l in denied)
    assert any(l["target"].endswith("/networks") for l in denied)
    assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0
