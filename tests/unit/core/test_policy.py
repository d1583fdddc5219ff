"""porthole/core/policy.py: loading rules.json. Every mistake is a PolicyError that names the JSON
path, whatever the file holds; the schema file describes the keys the loader knows."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policies import COALESCE_RULES, REPO, allowed, refusal, shipped_document

from porthole.core.policy import PolicyError, load_policy


def test_log_reader_profile_acknowledges_logs():
    assert allowed("GET", "/containers/c1/logs?follow=1&stdout=1", profile="log-reader")
    assert allowed("GET", "/containers/c1/logs?details=1", profile="log-reader")  # docker logs --details
    assert not allowed("GET", "/containers/c1/logs?ps_args=aux", profile="log-reader")  # not listed
    assert not allowed("GET", "/containers/c1/export", profile="log-reader")
    assert not allowed("GET", "/containers/c1/logs", profile="monitoring")


@pytest.mark.parametrize("document, where, message", [
    ("{", "$", "not valid JSON"),
    ('{"version": 1, "profiles": {"default": {"rules": []}}, "extra": 1}', "$", "unknown key 'extra'"),
    ('{"version": 2, "profiles": {"default": {"rules": [{"method": "GET", "path": "/_ping"}]}}}', "$.version", "must be 1"),
    ('{"version": 1, "profiles": {}}', "$.profiles", "non-empty"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/_ping"}]},'
     ' "default": {"rules": [{"method": "GET", "path": "/info"}]}}}', "$", "duplicate key 'default'"),
    ('{"version": 1, "profiles": {"other": {"rules": [{"method": "GET", "path": "/_ping"}]}}}', "$.profiles", "'default' is required"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "POST", "path": "/containers/create"}]}}}',
     "$.profiles.default.rules[0].method", "must be GET or HEAD"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "get", "path": "/_ping"}]}}}',
     "$.profiles.default.rules[0].method", "must be GET or HEAD"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": ["GET", "DELETE"], "path": "/_ping"}]}}}',
     "$.profiles.default.rules[0].method", "must be GET or HEAD"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/containers/.*/json"}]}}}',
     "$.profiles.default.rules[0].path", "bad segment"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/containers/{id}/json", "regex": "x"}]}}}',
     "$.profiles.default.rules[0]", "unknown key 'regex'"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/containers/{id}/export"}]}}}',
     "$.profiles.default.rules[0]", "dangerous read"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/containers/{id}/{what}"}]}}}',
     "$.profiles.default.rules[0]", "dangerous read"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/containers/{id}/json", "dangerous": true}]}}}',
     "$.profiles.default.rules[0].dangerous", "not a dangerous read"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/containers/{id}/attach/ws", "dangerous": true}]}}}',
     "$.profiles.default.rules[0].path", "never forwarded"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/{any*}", "dangerous": true}]}}}',
     "$.profiles.default.rules[0].path", "never forwarded"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/debug/{x*}"}]}}}',
     "$.profiles.default.rules[0].path", "never forwarded"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/v1.41/info"}]}}}',
     "$.profiles.default.rules[0].path", "version prefix"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/a/{x*}/{y*}"}]}}}',
     "$.profiles.default.rules[0].path", "at most one"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/info", "query": {"a": []}}]}}}',
     "$.profiles.default.rules[0].query.a", "non-empty list"),
    ('{"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/info"}, {"method": "GET", "path": "/info"}]}}}',
     "$.profiles.default", "duplicates"),
    ('{"version": 1, "profiles": {"default": {"extends": "x", "rules": [{"method": "GET", "path": "/info"}]}}}',
     "$.profiles.default.extends", "no profile named 'x'"),
    ('{"version": 1, "profiles": {"default": {"extends": "b", "rules": [{"method": "GET", "path": "/info"}]},'
     ' "b": {"extends": "default", "rules": [{"method": "GET", "path": "/version"}]}}}',
     "$.profiles.default.extends", "cycle"),
    ('{"version": 1, "profiles": {"Bad Name": {"rules": []}}}', "$.profiles.Bad Name", "profile names"),
])
def test_validation_errors_name_the_json_path(document, where, message):
    with pytest.raises(PolicyError) as info:
        load_policy(document, "rules.json")
    text = str(info.value)
    assert text.startswith(f"rules.json: {where}: "), text
    assert message in text, text


def test_schema_file_is_valid_json_and_describes_the_shipped_keys():
    schema = json.loads((REPO / "rules.schema.json").read_text())
    rule = schema["$defs"]["rule"]
    assert set(rule["properties"]) == {"method", "path", "query", "dangerous", "comment"}
    assert rule["additionalProperties"] is False
    assert schema["$defs"]["method"]["enum"] == ["GET", "HEAD"]


SHIPPED_RULES = shipped_document()


_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["GET", "HEAD", "POST", "/_ping", "/containers/{id}/json", "*", "default"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["rules", "extends", "method", "path", "query", "dangerous", "comment",
                         "description", "version", "profiles", "x"]), inner, max_size=3),
    max_leaves=8)


def _places(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _places(item, path + (index,))


_SHIPPED_PLACES = list(_places(SHIPPED_RULES))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_SHIPPED_PLACES), _ANY_JSON, st.booleans()), min_size=1, max_size=3))
def test_any_mistyped_rules_file_is_a_policy_error(edits):
    """Whatever value stands wherever in rules.json, load_policy returns a policy or raises
    PolicyError: never TypeError, RecursionError or anything else (a SIGHUP with a broken file
    must not take the proxy down, and --check must exit 2)."""
    document = json.loads(json.dumps(SHIPPED_RULES))
    for path, value, add_key in edits:
        if not path:
            document = value
            continue
        target = document
        try:
            for step in path[:-1]:
                target = target[step]
            if add_key and isinstance(target, dict):
                target["extends" if isinstance(path[-1], int) else path[-1]] = value
            else:
                target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the container
    try:
        load_policy(json.dumps(document))
    except PolicyError:
        pass


@pytest.mark.parametrize("text", ["[" * 100000, "{" * 50000, '{"version": 1' + "0" * 5000 + "}",
                                  '{"version": 1, "profiles": {"default": {"rules": [], "extends": []}}}',
                                  '{"version": 1, "profiles": {"default": {"rules": [], "extends": {}}}}'])
def test_pathological_rules_files_are_policy_errors(text):
    with pytest.raises(PolicyError):
        load_policy(text)


# ---- "coalesce" --------------------------------------------------------------------------------

def test_coalesce_must_be_a_boolean():
    bad = json.loads(json.dumps(COALESCE_RULES))
    bad["profiles"]["solo"]["coalesce"] = "no"
    with pytest.raises(PolicyError, match=r"\$\.profiles\.solo\.coalesce: must be true or false"):
        load_policy(json.dumps(bad))
    policy = load_policy(json.dumps({**COALESCE_RULES, "profiles": {
        **COALESCE_RULES["profiles"], "child": {"extends": "solo", "rules": []}}}))
    assert policy.uncoalesced == {"solo", "child"}  # inherited through extends


# ---- A rules file with null where an object, a list or a string belongs is refused with its JSON
# path (issue "(2 of 5)", item 7): `--check` used to accept `"extends": null`, `"query": null` and
# `"redact": null`, reading null as "absent", which loosens a rule (any query) or a filter.

RULE = {"method": "GET", "path": "/containers/{id}/json", "query": {"size": ["0"]}}


def document(profile_extra=None, rule_extra=None, top_extra=None):
    profile = {"rules": [{**RULE, **(rule_extra or {})}], **(profile_extra or {})}
    return json.dumps({"version": 1, "profiles": {"base": {"rules": [{"method": "GET", "path": "/_ping"}]}, "default": profile}, **(top_extra or {})})


@pytest.mark.parametrize("text, where", [
    (document(profile_extra={"extends": None}), "$.profiles.default.extends"),
    (document(profile_extra={"redact": None}), "$.profiles.default.redact"),
    (document(profile_extra={"visible": None}), "$.profiles.default.visible"),
    (document(profile_extra={"description": None}), "$.profiles.default.description"),
    (document(profile_extra={"mode": None}), "$.profiles.default.mode"),
    (document(profile_extra={"coalesce": None}), "$.profiles.default.coalesce"),
    (document(rule_extra={"query": None}), "$.profiles.default.rules[0].query"),
    (document(rule_extra={"query": {"size": None}}), "$.profiles.default.rules[0].query.size"),
    (document(rule_extra={"dangerous": None}), "$.profiles.default.rules[0].dangerous"),
    (document(rule_extra={"comment": None}), "$.profiles.default.rules[0].comment"),
    (document(profile_extra={"redact": ["env", None]}), "$.profiles.default.redact[1]"),
    (document(top_extra={"clients": None}), "$.clients"),
    (document(top_extra={"description": None}), "$.description"),
    (json.dumps({"version": 1, "profiles": {"default": None}}), "$.profiles.default"),
    (json.dumps({"version": 1, "profiles": {"default": {"rules": [None]}}}), "$.profiles.default.rules[0]"),
])
def test_null_is_refused_with_its_path(text, where):
    with pytest.raises(PolicyError) as caught:
        load_policy(text, "rules.json")
    assert str(caught.value).startswith(f"rules.json: {where}: must not be null")


def test_the_same_keys_with_values_of_their_type_load():
    policy = load_policy(document(profile_extra={"extends": "base", "redact": ["env"], "description": "d"},
                                  rule_extra={"comment": "c"}), "rules.json")
    assert policy.profiles["default"][-1].query == {"size": frozenset({"0"})}


# ---- GET /swarm: an ordinary read only where the join tokens are redacted (issue 21: item 2) ----

SWARM_RULE = {"method": "GET", "path": "/swarm"}


def swarm_profiles(**profiles) -> str:
    return json.dumps({"version": 1, "profiles": {"default": {"rules": [{"method": "GET", "path": "/_ping"}]},
                                                  **profiles}})


def test_get_swarm_needs_no_flag_where_the_profile_redacts_swarm_tokens():
    policy = load_policy(swarm_profiles(p={"rules": [SWARM_RULE]}))
    assert "swarm-tokens" in policy.filtering["p"].redact
    assert allowed("GET", "/v1.41/swarm", profile="p", policy=policy)
    policy = load_policy(swarm_profiles(p={"rules": [SWARM_RULE], "redact": ["swarm-tokens"]}))
    assert allowed("GET", "/swarm", profile="p", policy=policy)
    # A profile that turns swarm-tokens off may still read GET /swarm, acknowledged as dangerous;
    # the flag is allowed (not "needless") on a profile that redacts the tokens too.
    acknowledged = dict(SWARM_RULE, dangerous=True)
    policy = load_policy(swarm_profiles(p={"rules": [acknowledged], "redact": []}, q={"rules": [acknowledged]}))
    assert allowed("GET", "/swarm", profile="p", policy=policy)
    assert allowed("GET", "/swarm", profile="q", policy=policy)


@pytest.mark.parametrize("profiles, where", [
    ({"p": {"rules": [SWARM_RULE], "redact": ["env"]}}, "$.profiles.p"),
    ({"p": {"rules": [SWARM_RULE], "redact": []}}, "$.profiles.p"),
    # inherited: the rule is checked against the redactions of the profile it ends up in
    ({"p": {"rules": [SWARM_RULE]}, "child": {"extends": "p", "rules": [{"method": "GET", "path": "/info"}],
                                             "redact": ["env"]}}, "$.profiles.child"),
])
def test_get_swarm_without_swarm_tokens_is_a_dangerous_read(profiles, where):
    with pytest.raises(PolicyError) as info:
        load_policy(swarm_profiles(**profiles), "rules.json")
    text = str(info.value)
    assert text.startswith(f"rules.json: {where}: ") and "join tokens" in text and "'swarm-tokens'" in text, text


@pytest.mark.parametrize("rule", [
    {"method": "GET", "path": "/swarm/unlockkey"}, {"method": "GET", "path": "/swarm/unlockkey", "dangerous": True},
    {"method": "GET", "path": "/swarm/{what}"}, {"method": ["GET", "HEAD"], "path": "/swarm/{a*}", "dangerous": True},
])
def test_the_swarm_unlock_key_is_never_forwarded_whatever_the_rules_say(rule):
    with pytest.raises(PolicyError, match="never forwarded .the swarm unlock key"):
        load_policy(swarm_profiles(p={"rules": [rule], "redact": []}))
    assert "never forwarded" in refusal("GET", "/v1.41/swarm/unlockkey", profile="docker-cli")
