"""Policies and request facts for the tests of porthole's decisions (porthole/core): the shipped
rules.json, small policies made on the spot, RequestFacts as a listener hands them over, and the
rules documents that a unit test and a test of the running proxy share.

Public API
----------
SHIPPED                                  the shipped rules.json, loaded (source "rules.json")
shipped_document() -> dict               a fresh copy of the shipped rules.json, to edit
load_document(document, source="rules.json") -> Policy
policy_of(*rules, extra_profiles=None, source="test.json") -> Policy   `rules` in profile default
facts(method="GET", target="/_ping", headers=(), kind="unix", profile="default", http_version=b"1.1")
refusal(<the arguments of facts>, policy=SHIPPED) -> reason or None
allowed(<the arguments of facts>, policy=SHIPPED) -> bool
CLIENT_PROFILES, CLIENTS, CLIENTS_RULES  the per-client profiles example (rules.json's `clients`)
COALESCE_RULES                           coalescing on, and off in profile "solo"
WARN_RULES                               a profile in "mode": "warn" beside an enforcing default
DOCTOR_RULES                             two small profiles, one acknowledging logs
FANOUT_RULES                             a few reads, nothing redacted: framing, fan-out and limits
"""

from __future__ import annotations

import json
from pathlib import Path

from porthole.core.decide import RequestFacts, decide
from porthole.core.policy import load_policy
from porthole.core.target import Refusal

REPO = Path(__file__).resolve().parents[2]  # tests/lib/policies.py
SHIPPED_TEXT = (REPO / "rules.json").read_text()
SHIPPED = load_policy(SHIPPED_TEXT, "rules.json")


def shipped_document() -> dict:
    """A fresh copy of the shipped rules.json (a dict), to edit or to write for a proxy."""
    return json.loads(SHIPPED_TEXT)


def load_document(document: dict, source: str = "rules.json"):
    """load_policy of a rules document given as a dict."""
    return load_policy(json.dumps(document), source)


def policy_of(*rules, extra_profiles=None, source: str = "test.json"):
    """A policy whose profile `default` has `rules` (dicts as in rules.json), beside
    `extra_profiles` (name -> profile)."""
    return load_document({"version": 1, "profiles": {"default": {"rules": list(rules)}, **(extra_profiles or {})}},
                         source)


def facts(method: str = "GET", target: str = "/_ping", headers=(), kind: str = "unix", profile: str = "default",
          http_version: bytes = b"1.1") -> RequestFacts:
    """The RequestFacts of one request on a `kind` listener ("unix" or "tcp") of `profile`.
    headers: (name, value) pairs of str (the name lower-cased, as h11 hands it over) or of bytes
    (taken as they are)."""
    raw = [(name, value) if isinstance(name, bytes) else (name.lower().encode(), value.encode())
           for name, value in headers]
    return RequestFacts(method, target.encode("latin-1"), raw, kind, profile, http_version)


def refusal(method: str = "GET", target: str = "/_ping", headers=(), kind: str = "unix", profile: str = "default",
            http_version: bytes = b"1.1", policy=SHIPPED) -> str | None:
    """Why `policy` refuses the request (the Refusal's reason), or None when it is allowed."""
    try:
        decide(policy, facts(method, target, headers, kind, profile, http_version))
    except Refusal as refused:
        return refused.reason
    return None


def allowed(*args, **kw) -> bool:
    """Whether the policy (SHIPPED unless policy=) allows the request: refusal(...) is None."""
    return refusal(*args, **kw) is None


# ---- rules documents shared by a unit test and a test of the running proxy ----------------------

# The per-client profiles of the example (unit/core/test_clients.py, daemon/test_clients.py).
CLIENT_PROFILES = {
    "default": {"rules": [{"method": ["GET", "HEAD"], "path": "/_ping"}]},
    "traefik": {"extends": "default", "rules": [{"method": "GET", "path": "/containers/json"}]},
    "homepage": {"extends": "default", "rules": [{"method": "GET", "path": "/version"}]},
    "prometheus": {"extends": "default", "rules": [{"method": "GET", "path": "/info"}]},
    "dozzle": {"extends": "default", "rules": [{"method": "GET", "path": "/events"}]},
}
CLIENTS = [
    {"match": {"uid": 1000}, "profile": "traefik"},
    {"match": {"gid": 2001}, "profile": "homepage"},
    {"match": {"address": "127.0.0.2/32"}, "profile": "prometheus"},
    {"match": {"cert_cn": "dozzle"}, "profile": "dozzle"},
]
CLIENTS_RULES = {"version": 1, "profiles": CLIENT_PROFILES, "clients": CLIENTS}

# Coalescing on, and off in profile "solo" (unit/core/test_policy.py, daemon/test_coalesce.py).
COALESCE_RULES = {
    "version": 1,
    "profiles": {
        "default": {"rules": [{"method": "GET", "path": "/_ping"},
                              {"method": "GET", "path": "/containers/json"},
                              {"method": "GET", "path": "/containers/{id}/json"}]},
        "open": {"extends": "default", "rules": [], "redact": []},
        "solo": {"extends": "default", "rules": [], "coalesce": False},
    },
}

# A profile in "mode": "warn" beside an enforcing default (unit/ops/test_learn.py, daemon/test_learn.py).
_PING = {"method": ["GET", "HEAD"], "path": "/_ping"}
WARN_RULES = {"version": 1, "profiles": {
    "default": {"rules": [_PING, {"method": "GET", "path": "/version", "query": {}}]},
    "watcher": {"mode": "warn", "rules": [_PING, {"method": "GET", "path": "/containers/json", "query": {"all": "*"}},
                                          {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True,
                                           "query": {"stdout": "*"}}]},
}}

# Two small profiles, one acknowledging logs (unit/ops/test_doctor.py, daemon/test_doctor.py).
DOCTOR_RULES = {"version": 1, "profiles": {
    "default": {"rules": [{"method": ["GET", "HEAD"], "path": "/_ping"}, {"method": "GET", "path": "/info"}]},
    "logs": {"extends": "default", "rules": [
        {"method": "GET", "path": "/containers/{id}/logs", "dangerous": True}]}}}


FANOUT_RULES = {
    "version": 1,
    "profiles": {
        "default": {
            "rules": [
                {"method": "GET", "path": "/_ping"},
                {"method": "GET", "path": "/version"},
                {"method": "GET", "path": "/events"},
                {"method": "GET", "path": "/containers/json"},
            ],
            # framing, fan-out and limits, not filtering (tests/daemon/test_filtering*.py): the fake
            # daemon's filler events are not JSON, so they pass only unfiltered
            "redact": [],
        }
    },
}
