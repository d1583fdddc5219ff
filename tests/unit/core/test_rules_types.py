"""A rules file with null where an object, a list or a string belongs is refused with its JSON
path (issue "(2 of 5)", item 7): `--check` used to accept `"extends": null`, `"query": null` and
`"redact": null`, reading null as "absent", which loosens a rule (any query) or a filter."""
from __future__ import annotations

import json

import pytest

from porthole.core.policy import PolicyError, load_policy

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
