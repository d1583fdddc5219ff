"""porthole/core/clients.py: per-client profiles. The `clients` list of rules.json maps a client
(unix peer uid/gid, TCP peer address, verified certificate CN) to a profile: matching, validation,
shadowed entries, with property tests. (Through the proxy, with clients connecting as other uids
and from other loopback addresses: tests/daemon/test_clients.py; certificate CNs with the TLS
listener: tests/daemon/test_tls.py.)"""

import ipaddress
import itertools
import json

import pytest
from hypothesis import given, settings, strategies as st

from policies import CLIENT_PROFILES as PROFILES, CLIENTS, CLIENTS_RULES as RULES, REPO
from porthole.core.clients import ClientFacts, ClientRule, choose_profile, peer_address
from porthole.core.decide import RequestFacts, decide
from porthole.core.policy import PolicyError, describe_policy, load_policy
from porthole.core.target import Refusal

pytestmark = pytest.mark.timeout(60)


def document(clients, profiles=PROFILES):
    return json.dumps({"version": 1, "profiles": profiles, "clients": clients})


def policy(clients):
    return load_policy(document(clients), "rules.json")


def ip(text):
    return ipaddress.ip_address(text)


# ---- matching (pure) --------------------------------------------------------------------------

@pytest.mark.parametrize("facts, profile, rule", [
    (ClientFacts(uid=1000, gid=1000), "traefik", "clients[0]"),
    (ClientFacts(uid=1000, gid=2001), "traefik", "clients[0]"),  # first match wins
    (ClientFacts(uid=5, gid=2001), "homepage", "clients[1]"),
    (ClientFacts(uid=5, gid=5), "default", None),  # the listener's
    (ClientFacts(address=ip("127.0.0.2")), "prometheus", "clients[2]"),
    (ClientFacts(address=ip("127.0.0.1")), "default", None),
    (ClientFacts(address=ip("127.0.0.2"), cert_cn="dozzle"), "prometheus", "clients[2]"),
    (ClientFacts(address=ip("127.0.0.1"), cert_cn="dozzle"), "dozzle", "clients[3]"),
    (ClientFacts(address=ip("127.0.0.1"), cert_cn="Dozzle"), "default", None),  # exact, case and all
    (ClientFacts(address=ip("::1"), cert_cn=None), "default", None),
    (ClientFacts(), "default", None),
])
def test_issue_example_mapping(facts, profile, rule):
    chosen, entry = choose_profile(policy(CLIENTS).clients, facts, "default")
    assert chosen == profile
    assert (entry.label if entry else None) == rule


def test_unmatched_client_gets_its_listeners_profile():
    assert choose_profile(policy(CLIENTS).clients, ClientFacts(uid=7, gid=7), "homepage") == ("homepage", None)
    assert choose_profile((), ClientFacts(uid=1000), "prometheus") == ("prometheus", None)


def test_conditions_in_one_entry_must_all_hold():
    rules = policy([{"match": {"uid": 1000, "gid": 50}, "profile": "traefik"},
                    {"match": {"address": "10.1.0.0/16", "cert_cn": "x"}, "profile": "dozzle"}]).clients
    assert choose_profile(rules, ClientFacts(uid=1000, gid=50), "default")[0] == "traefik"
    assert choose_profile(rules, ClientFacts(uid=1000, gid=51), "default")[0] == "default"
    assert choose_profile(rules, ClientFacts(address=ip("10.1.2.3"), cert_cn="x"), "default")[0] == "dozzle"
    assert choose_profile(rules, ClientFacts(address=ip("10.1.2.3")), "default")[0] == "default"
    assert choose_profile(rules, ClientFacts(address=ip("10.2.2.3"), cert_cn="x"), "default")[0] == "default"


def test_certificate_false_matches_only_tcp_clients_without_a_verified_certificate():
    """What --learn writes for an address (issue 19 follow-up): a mutual-TLS client from that
    address, even one whose certificate has no single CN (""), is not the plain client there."""
    rules = policy([{"match": {"address": "127.0.0.1", "certificate": False}, "profile": "traefik"},
                    {"match": {"certificate": True}, "profile": "dozzle"},
                    {"match": {"certificate": False}, "profile": "homepage"}]).clients
    local = ip("127.0.0.1")
    for client, profile in [(ClientFacts(address=local), "traefik"),
                            (ClientFacts(address=local, cert_cn="a.b"), "dozzle"),
                            (ClientFacts(address=local, cert_cn=""), "dozzle"),
                            (ClientFacts(address=ip("::1")), "homepage"),
                            (ClientFacts(address=ip("::1"), cert_cn="a.b"), "dozzle"),
                            (ClientFacts(uid=0, gid=0), "default"),  # a unix peer: no TCP condition holds
                            (ClientFacts(), "default")]:
        assert choose_profile(rules, client, "default")[0] == profile, client
    assert "clients[0]   address=127.0.0.1/32 certificate=false -> profile traefik" in describe_policy(
        policy([{"match": {"address": "127.0.0.1", "certificate": False}, "profile": "traefik"}]))


def test_ipv6_networks_and_peer_addresses():
    rules = policy([{"match": {"address": "fd00:1::/64"}, "profile": "traefik"},
                    {"match": {"address": "::1"}, "profile": "homepage"},
                    {"match": {"address": "10.0.0.0/8"}, "profile": "prometheus"}]).clients
    assert choose_profile(rules, ClientFacts(address=peer_address("fd00:1::5")), "default")[0] == "traefik"
    assert choose_profile(rules, ClientFacts(address=peer_address("fd00:2::5")), "default")[0] == "default"
    assert choose_profile(rules, ClientFacts(address=peer_address("::1")), "default")[0] == "homepage"
    # an IPv4-mapped peer is matched as the IPv4 address it is; a scope id is ignored
    assert peer_address("::ffff:10.1.2.3") == ip("10.1.2.3")
    assert choose_profile(rules, ClientFacts(address=peer_address("::ffff:10.1.2.3")), "default")[0] == "prometheus"
    assert peer_address("fe80::1%lo") == ip("fe80::1")
    assert peer_address("not an address") is None


def test_request_is_decided_under_the_chosen_profile():
    p = policy(CLIENTS)
    chosen, _ = choose_profile(p.clients, ClientFacts(uid=1000), "default")
    decide(p, RequestFacts("GET", b"/v1.41/containers/json", [], "unix", chosen))
    with pytest.raises(Refusal) as info:
        decide(p, RequestFacts("GET", b"/v1.41/containers/json", [], "unix", "homepage"))
    assert "profile 'homepage'" in info.value.reason


def test_check_prints_the_mapping():
    text = describe_policy(policy(CLIENTS))
    assert "clients (first match wins; any other client gets its listener's profile):" in text
    for line in ["clients[0]   uid=1000 -> profile traefik", "clients[1]   gid=2001 -> profile homepage",
                 "clients[2]   address=127.0.0.2/32 -> profile prometheus",
                 "clients[3]   cert_cn='dozzle' -> profile dozzle"]:
        assert line in text, text
    assert "clients" not in describe_policy(load_policy(json.dumps({"version": 1, "profiles": PROFILES})))


# ---- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("clients, where, message", [
    ({}, "$.clients", "must be a list"),
    ("uid=1000", "$.clients", "must be a list"),
    ([1000], "$.clients[0]", "must be an object"),
    ([{"match": {"uid": 1}}], "$.clients[0]", "missing key 'profile'"),
    ([{"profile": "traefik"}], "$.clients[0]", "missing key 'match'"),
    ([{"match": {"uid": 1}, "profile": "traefik", "priority": 1}], "$.clients[0]", "unknown key 'priority'"),
    ([{"match": {"uid": 1}, "profile": "nope"}], "$.clients[0].profile", "no profile named 'nope'"),
    ([{"match": {"uid": 1}, "profile": ["traefik"]}], "$.clients[0].profile", "must be the name of a profile"),
    ([{"match": {"uid": 1}, "profile": "traefik", "comment": 5}], "$.clients[0].comment", "must be a string"),
    ([{"match": [1000], "profile": "traefik"}], "$.clients[0].match", "must be an object"),
    ([{"match": {}, "profile": "traefik"}], "$.clients[0].match", "needs at least one of"),
    ([{"match": {"user": "root"}, "profile": "traefik"}], "$.clients[0].match", "unknown key 'user'"),
    ([{"match": {"uid": "1000"}, "profile": "traefik"}], "$.clients[0].match.uid", "must be a number"),
    ([{"match": {"uid": True}, "profile": "traefik"}], "$.clients[0].match.uid", "must be a number"),
    ([{"match": {"uid": -1}, "profile": "traefik"}], "$.clients[0].match.uid", "must be a number"),
    ([{"match": {"gid": 2 ** 32 - 1}, "profile": "traefik"}], "$.clients[0].match.gid", "must be a number"),
    ([{"match": {"gid": 1.5}, "profile": "traefik"}], "$.clients[0].match.gid", "must be a number"),
    ([{"match": {"address": "127.0.0.1/8"}, "profile": "traefik"}], "$.clients[0].match.address", "host bits set"),
    ([{"match": {"address": "127.0.0.0/33"}, "profile": "traefik"}], "$.clients[0].match.address", "CIDR"),
    ([{"match": {"address": "localhost"}, "profile": "traefik"}], "$.clients[0].match.address", "CIDR"),
    ([{"match": {"address": 2130706433}, "profile": "traefik"}], "$.clients[0].match.address", "must be an IPv4"),
    ([{"match": {"address": "::ffff:127.0.0.1"}, "profile": "traefik"}], "$.clients[0].match.address", "as IPv4"),
    ([{"match": {"cert_cn": ""}, "profile": "traefik"}], "$.clients[0].match.cert_cn", "non-empty string"),
    ([{"match": {"cert_cn": ["a"]}, "profile": "traefik"}], "$.clients[0].match.cert_cn", "non-empty string"),
    ([{"match": {"uid": 1000, "address": "127.0.0.1"}, "profile": "traefik"}], "$.clients[0].match",
     "never hold for the same client"),
    ([{"match": {"gid": 1, "cert_cn": "x"}, "profile": "traefik"}], "$.clients[0].match", "never hold"),
    ([{"match": {"uid": 1, "certificate": False}, "profile": "traefik"}], "$.clients[0].match", "never hold"),
    ([{"match": {"certificate": "no"}, "profile": "traefik"}], "$.clients[0].match.certificate", "true or false"),
    ([{"match": {"certificate": 0}, "profile": "traefik"}], "$.clients[0].match.certificate", "true or false"),
    ([{"match": {"certificate": None}, "profile": "traefik"}], "$.clients[0].match.certificate", "must not be null"),
    ([{"match": {"cert_cn": "x", "certificate": False}, "profile": "traefik"}], "$.clients[0].match",
     "never holds with \"certificate\": false"),
    # entries that can never be the first match name both JSON paths
    ([{"match": {"uid": 1000}, "profile": "traefik"}, {"match": {"uid": 1000}, "profile": "homepage"}],
     "$.clients[1]", "can never match: every client it matches is matched first by $.clients[0]"),
    ([{"match": {"uid": 1000}, "profile": "traefik"}, {"match": {"uid": 1000, "gid": 5}, "profile": "homepage"}],
     "$.clients[1]", "matched first by $.clients[0]"),
    ([{"match": {"address": "10.0.0.0/8"}, "profile": "traefik"}, {"match": {"gid": 1}, "profile": "traefik"},
      {"match": {"address": "10.9.0.0/16"}, "profile": "homepage"}],
     "$.clients[2]", "matched first by $.clients[0]"),
    ([{"match": {"address": "10.0.0.0/8"}, "profile": "traefik"},
      {"match": {"address": "10.1.0.0/16", "cert_cn": "x"}, "profile": "homepage"}],
     "$.clients[1]", "matched first by $.clients[0]"),
    ([{"match": {"cert_cn": "x"}, "profile": "traefik"},
      {"match": {"address": "10.1.0.0/16", "cert_cn": "x"}, "profile": "homepage"}],
     "$.clients[1]", "matched first by $.clients[0]"),
    ([{"match": {"address": "127.0.0.0/25"}, "profile": "traefik"},
      {"match": {"address": "127.0.0.128/25"}, "profile": "homepage"},
      {"match": {"address": "127.0.0.0/24"}, "profile": "prometheus"}],
     "$.clients[2]", "matched first by $.clients[0] and $.clients[1]"),
    ([{"match": {"address": "0.0.0.0/0"}, "profile": "traefik"}, {"match": {"address": "::/0"}, "profile": "homepage"},
      {"match": {"cert_cn": "dozzle"}, "profile": "dozzle"}],
     "$.clients[2]", "matched first by $.clients[0] and $.clients[1]"),
    ([{"match": {"address": "10.0.0.0/8"}, "profile": "traefik"},
      {"match": {"address": "10.1.0.0/16", "certificate": False}, "profile": "homepage"}],
     "$.clients[1]", "matched first by $.clients[0]"),
    ([{"match": {"certificate": False}, "profile": "traefik"},
      {"match": {"address": "10.1.0.0/16", "certificate": False}, "profile": "homepage"}],
     "$.clients[1]", "matched first by $.clients[0]"),
    ([{"match": {"certificate": True}, "profile": "traefik"}, {"match": {"cert_cn": "x"}, "profile": "homepage"}],
     "$.clients[1]", "matched first by $.clients[0]"),
    ([{"match": {"address": "0.0.0.0/0", "certificate": False}, "profile": "traefik"},
      {"match": {"address": "::/0", "certificate": False}, "profile": "homepage"},
      {"match": {"certificate": False}, "profile": "dozzle"}],
     "$.clients[2]", "matched first by $.clients[0] and $.clients[1]"),
    ([{"match": {"uid": 0}, "profile": "traefik"}, {"match": {"certificate": False}, "profile": "traefik"},
      {"match": {"certificate": True}, "profile": "homepage"},
      {"match": {"address": "10.0.0.0/30"}, "profile": "dozzle"}],
     "$.clients[3]", "matched first by $.clients[1] and $.clients[2]"),
    ([{"match": {"address": "10.0.0.0/8", "certificate": True}, "profile": "traefik"},
      {"match": {"address": "10.0.0.0/9"}, "profile": "homepage"},
      {"match": {"address": "10.128.0.0/9", "certificate": False}, "profile": "homepage"},
      {"match": {"address": "10.0.0.0/8"}, "profile": "dozzle"}],
     "$.clients[3]", "matched first by $.clients[0] and $.clients[1] and $.clients[2]"),
])
def test_validation_errors_name_the_json_path(clients, where, message):
    with pytest.raises(PolicyError) as info:
        load_policy(document(clients), "rules.json")
    text = str(info.value)
    assert text.startswith(f"rules.json: {where}: "), text
    assert message in text, text


@pytest.mark.parametrize("clients", [
    [],
    [{"match": {"uid": 0}, "profile": "traefik", "comment": "root's own tools"}],
    [{"match": {"uid": 1000, "gid": 5}, "profile": "traefik"}, {"match": {"uid": 1000}, "profile": "homepage"}],
    [{"match": {"address": "10.1.0.0/16"}, "profile": "traefik"}, {"match": {"address": "10.0.0.0/8"}, "profile": "homepage"}],
    [{"match": {"address": "10.0.0.0/8"}, "profile": "traefik"}, {"match": {"address": "fd00::/8"}, "profile": "homepage"}],
    [{"match": {"address": "127.0.0.0/25"}, "profile": "traefik"}, {"match": {"address": "127.0.0.0/24"}, "profile": "homepage"}],
    [{"match": {"address": "0.0.0.0/0"}, "profile": "traefik"}, {"match": {"cert_cn": "dozzle"}, "profile": "dozzle"}],
    [{"match": {"uid": 4294967294}, "profile": "traefik"}, {"match": {"address": "127.0.0.2"}, "profile": "traefik"}],
    # "certificate": false never covers a certificate's client, nor a cert_cn a client without one
    [{"match": {"address": "127.0.0.1", "certificate": False}, "profile": "traefik"},
     {"match": {"address": "127.0.0.1"}, "profile": "homepage"}],
    [{"match": {"certificate": False}, "profile": "traefik"}, {"match": {"cert_cn": "x"}, "profile": "homepage"},
     {"match": {"certificate": True}, "profile": "dozzle"}],
    [{"match": {"cert_cn": "x"}, "profile": "traefik"}, {"match": {"certificate": False}, "profile": "homepage"}],
    [{"match": {"certificate": False}, "profile": "traefik"}, {"match": {"uid": 1}, "profile": "homepage"}],
    [{"match": {"cert_cn": "x", "certificate": True}, "profile": "traefik"}],
])
def test_valid_mappings_load(clients):
    assert len(policy(clients).clients) == len(clients)


def test_schema_describes_clients():
    schema = json.loads((REPO / "rules.schema.json").read_text())
    assert "clients" in schema["properties"]
    entry = schema["$defs"]["client"]
    assert set(entry["properties"]) == {"match", "profile", "comment"}
    assert set(entry["properties"]["match"]["properties"]) == {"uid", "gid", "address", "cert_cn", "certificate",
                                                               "ssh_user"}


# ---- properties ---------------------------------------------------------------------------------
# A small universe with one client per equivalence class of the conditions below: every uid/gid
# value used plus an unused one, every address inside the networks used plus one outside them per
# family, every CN plus an unknown one, a certificate without a single CN ("") and none. "No
# client of the universe reaches entry j first" then means "no client at all does".

UIDS = [0, 1, 2]
NETWORKS = ["10.0.0.0/30", "10.0.0.0/31", "10.0.0.2/31", "10.0.0.1/32", "10.0.0.3/32", "0.0.0.0/0",
            "::1/128", "::/0"]
CNS = ["a", "b"]
SSH_USERS = ["monitor", "ci"]
UNIVERSE = (
    [ClientFacts(ssh_user=u) for u in SSH_USERS + ["zz"]] + [ClientFacts()] +
    [ClientFacts(uid=u, gid=g) for u, g in itertools.product(UIDS + [99], UIDS + [99])]
    + [ClientFacts(address=ip(a), cert_cn=c) for a, c in itertools.product(
        ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "192.0.2.1", "::1", "2001:db8::1"], CNS + ["zz", "", None])]
)
unix_match = st.fixed_dictionaries({}, optional={"uid": st.sampled_from(UIDS), "gid": st.sampled_from(UIDS)})
tcp_match = st.fixed_dictionaries({}, optional={"address": st.sampled_from(NETWORKS), "cert_cn": st.sampled_from(CNS),
                                                "certificate": st.booleans()}).filter(
    lambda match: not ("cert_cn" in match and match.get("certificate") is False))  # refused: never holds
ssh_match = st.fixed_dictionaries({"ssh_user": st.sampled_from(SSH_USERS)})
entries = st.lists(st.fixed_dictionaries({"match": unix_match.filter(bool) | tcp_match.filter(bool) | ssh_match,
                                          "profile": st.sampled_from(sorted(PROFILES))}), max_size=7)


def first_entry(rules, facts):
    return next((rule.index for rule in rules if rule.matches(facts)), None)


@settings(max_examples=400, deadline=None)
@given(entries)
def test_property_an_entry_is_refused_exactly_when_no_client_can_reach_it(clients):
    try:
        rules = policy(clients).clients
    except PolicyError as exc:
        where = str(exc).split(": ")[1]
        j = int(where.removeprefix("$.clients[").removesuffix("]"))
        prefix = policy(clients[:j]).clients  # everything before it was fine
        later = ClientRule(j, "x", **{"network" if k == "address" else k:
                                      ipaddress.ip_network(v) if k == "address" else v
                                      for k, v in clients[j]["match"].items()})
        assert not any(first_entry((*prefix, later), facts) == j for facts in UNIVERSE), (clients, str(exc))
        for named in str(exc).split("matched first by ")[1].split(" and "):
            assert int(named.removeprefix("$.clients[").removesuffix("]")) < j
        return
    reached = {first_entry(rules, facts) for facts in UNIVERSE}
    assert set(range(len(rules))) <= reached, clients


@settings(max_examples=300, deadline=None)
@given(entries, st.sampled_from(UNIVERSE), st.sampled_from(sorted(PROFILES)))
def test_property_first_match_wins(clients, facts, listener_profile):
    try:
        rules = policy(clients).clients
    except PolicyError:
        return
    profile, rule = choose_profile(rules, facts, listener_profile)
    if rule is None:
        assert not any(r.matches(facts) for r in rules) and profile == listener_profile
    else:
        assert rule.matches(facts) and profile == rule.profile
        assert not any(r.matches(facts) for r in rules[:rule.index])


def test_schema_accepts_the_issue_example_and_refuses_mixed_kinds():
    import jsonschema

    schema = json.loads((REPO / "rules.schema.json").read_text())
    jsonschema.validate(RULES, schema)
    plain_client = {"match": {"address": "127.0.0.1", "certificate": False}, "profile": "traefik"}
    jsonschema.validate(dict(RULES, clients=[plain_client]), schema)
    for bad in ({"match": {"uid": 1, "address": "10.0.0.1"}, "profile": "traefik"},
                {"match": {"uid": 1, "certificate": False}, "profile": "traefik"},
                {"match": {"cert_cn": "x", "certificate": False}, "profile": "traefik"},
                {"match": {"certificate": "no"}, "profile": "traefik"},
                {"match": {}, "profile": "traefik"}, {"match": {"uid": -1}, "profile": "traefik"},
                {"match": {"ssh_user": "ci", "uid": 1}, "profile": "traefik"},
                {"match": {"ssh_user": "ci", "address": "10.0.0.1"}, "profile": "traefik"},
                {"match": {"ssh_user": "a b"}, "profile": "traefik"},
                {"match": {"uid": 1}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(dict(RULES, clients=[bad]), schema)


# ---- ssh_user: --stdio sessions under sshd ------------------------------------------------------

SSH_CLIENTS = [{"match": {"ssh_user": "monitor"}, "profile": "prometheus"},
               {"match": {"uid": 1000}, "profile": "traefik"},
               {"match": {"ssh_user": "ci"}, "profile": "homepage"}]


@pytest.mark.parametrize("facts, profile, rule", [
    (ClientFacts(ssh_user="monitor"), "prometheus", "clients[0]"),
    (ClientFacts(ssh_user="ci"), "homepage", "clients[2]"),
    (ClientFacts(ssh_user="Monitor"), "dozzle", None),  # exact: the session's --profile
    (ClientFacts(), "dozzle", None),  # --stdio not under sshd
    (ClientFacts(uid=1000), "traefik", "clients[1]"),  # a unix peer is never an SSH user
])
def test_ssh_user_picks_the_profile_of_a_stdio_session(facts, profile, rule):
    chosen, entry = choose_profile(policy(SSH_CLIENTS).clients, facts, "dozzle")
    assert (chosen, entry.label if entry else None) == (profile, rule)


@pytest.mark.parametrize("match, message", [
    ({"ssh_user": "ci", "uid": 5}, "ssh_user (--stdio sessions under sshd) never holds with uid"),
    ({"ssh_user": "ci", "cert_cn": "ci"}, "never holds with"),
    ({"ssh_user": ""}, "must be a user name"),
    ({"ssh_user": "ci\nroot"}, "must be a user name"),
    ({"ssh_user": 5}, "must be a user name"),
])
def test_bad_ssh_user_entries_are_refused(match, message):
    with pytest.raises(PolicyError) as info:
        policy([{"match": match, "profile": "traefik"}])
    assert message in str(info.value)


def test_a_repeated_ssh_user_entry_can_never_match():
    with pytest.raises(PolicyError) as info:
        policy([{"match": {"ssh_user": "ci"}, "profile": "traefik"}, {"match": {"ssh_user": "ci"}, "profile": "homepage"}])
    assert "$.clients[1]: can never match: every client it matches is matched first by $.clients[0]" in str(info.value)
    assert "ssh_user='ci'" in describe_policy(policy(SSH_CLIENTS))
