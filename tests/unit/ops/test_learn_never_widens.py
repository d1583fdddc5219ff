"""Adopting the file --learn wrote never widens what a client sees, and one client that cannot be
written never stops the others from being written (issue "(2 of 5)", item 15: learned profiles
dropped the original profile's scope and extra redactions, and one bad entry made every write
fail, SIGTERM's too)."""
from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from porthole.core.clients import ClientFacts
from porthole.core.filters import REDACTIONS
from porthole.core.policy import load_policy
from porthole.core.target import canonicalize_target
from porthole.ops.learn import Learner

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
                                optional={"visible": LABELS.map(lambda labels: {"labels": labels})})


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
        assert set(after.filtering[mine].visible) >= set(base.filtering[name].visible)
        if base.modes.get(name) == "enforce":
            assert after.modes.get(mine) == "enforce"
