"""rules.json, strictly validated into a Policy of profiles of rules.

Invariants:
  1. A rule's methods are GET and/or HEAD (ALLOWED_METHODS); any other method refuses the
     whole file. Porthole forwards nothing else whatever the file says (decide, and
     forwarded_request, check again).
  2. Anything unknown, missing or mistyped refuses the whole file, with its JSON path in the
     message ($.profiles.NAME.rules[3].path): a policy is never half-loaded, and a reload that
     fails keeps the policy in force.
  3. Every rule is checked against the guards at load (guards.py invariants 1 to 3), a
     REDACTED_READS path against the redactions of every profile the rule ends up in.
  4. A profile's filtering defaults to DEFAULT_REDACTIONS: redaction is on unless a profile
     says otherwise. What it keeps ("keep") goes with its own "redact": neither is inherited.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from porthole.core.clients import ClientRule, load_client_rules
from porthole.core.objects import DEFAULT_REDACTIONS, Filtering, Label, REDACTIONS, parse_env_pattern, parse_label_filter
from porthole.core.filters import DEFAULT_FILTERING
from porthole.core.guards import (NEVER_FORWARDED, NEVER_TEMPLATES, Template, TemplateIndex, dangerous_overlaps,
                                  parse_template, redacted_overlaps, templates_overlap)
from porthole.core.target import QUERY_KEY, Target


@dataclass(frozen=True)
class Rule:
    profile: str
    index: int
    methods: frozenset[str]
    path: str
    template: Template
    query: Mapping[str, frozenset[str] | None] | None  # None: any query; value None: any value
    dangerous: bool

    @functools.cached_property  # built once: every request's log line names its rule
    def label(self) -> str:
        return f"{self.profile}[{self.index}] {'|'.join(sorted(self.methods))} {self.path}"

    def query_problem(self, target: Target) -> str | None:
        if self.query is None:
            return None
        for key, value in target.query:
            if key not in self.query:
                return f"query parameter {key!r} is not allowed by rule {self.label}"
            allowed = self.query[key]
            if allowed is not None and value not in allowed:
                return f"value {value!r} of query parameter {key!r} is not allowed by rule {self.label}"
        return None


@dataclass(frozen=True)
class Policy:
    source: str
    profiles: Mapping[str, tuple[Rule, ...]]
    descriptions: Mapping[str, str] = field(default_factory=dict)
    clients: tuple[ClientRule, ...] = ()  # which client gets which profile: first match wins
    filtering: Mapping[str, Filtering] = field(default_factory=dict)  # absent: Filtering()
    modes: Mapping[str, str] = field(default_factory=dict)  # profile -> "enforce" or "warn"
    document: Mapping[str, Any] = field(default_factory=dict)  # the parsed rules document
    uncoalesced: frozenset[str] = frozenset()  # profiles with "coalesce": false (own or inherited)

    def __post_init__(self) -> None:
        indexes = {name: TemplateIndex((rule.template, rule) for rule in rules)
                   for name, rules in self.profiles.items()}
        object.__setattr__(self, "indexes", indexes)


class PolicyError(ValueError):
    def __init__(self, source: str, where: str, message: str) -> None:
        super().__init__(f"{source}: {where}: {message}")


ALLOWED_METHODS = ("GET", "HEAD")
PROFILE_MODES = ("enforce", "warn")  # warn: what the rules refuse is forwarded and logged as would_deny
_PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def load_policy(text: str, source: str = "rules.json") -> Policy:
    """Parse and strictly validate rules.json. Raises PolicyError naming the JSON path."""

    def fail(where: str, message: str) -> PolicyError:
        return PolicyError(source, where, message)

    def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise fail("$", f"duplicate key {key!r}")
            result[key] = value
        return result

    def check_keys(obj: Any, where: str, required: set[str], optional: set[str]) -> None:
        if not isinstance(obj, dict):
            raise fail(where, "must be an object")
        missing = sorted(required - obj.keys())
        unknown = sorted(obj.keys() - required - optional)
        if missing:
            raise fail(where, f"missing key {missing[0]!r}")
        if unknown:
            raise fail(where, f"unknown key {unknown[0]!r}")

    try:
        document = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except RecursionError:
        raise fail("$", "nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise fail("$", f"not valid JSON: {exc}") from None
    null = _first_null(document, "$")
    if null is not None:  # no field takes null: read as "absent", it would loosen a rule or a filter
        raise fail(null, "must not be null: leave the key out, or give it a value of its type")
    check_keys(document, "$", {"version", "profiles"}, {"$schema", "description", "clients"})
    for key in ("$schema", "description"):
        if not isinstance(document.get(key, ""), str):
            raise fail(f"$.{key}", "must be a string")
    if document["version"] != 1 or isinstance(document["version"], bool):
        raise fail("$.version", "must be 1")
    raw_profiles = document["profiles"]
    if not isinstance(raw_profiles, dict) or not raw_profiles:
        raise fail("$.profiles", "must be a non-empty object")
    own_rules: dict[str, list[Rule]] = {}
    parents: dict[str, str | None] = {}
    descriptions: dict[str, str] = {}
    redactions: dict[str, frozenset[str]] = {}
    scopes: dict[str, tuple[Label, ...] | None] = {}
    keeps: dict[str, tuple[str, ...]] = {}
    modes: dict[str, str] = {}
    for name, body in raw_profiles.items():
        where = f"$.profiles.{name}"
        if not _PROFILE_NAME.fullmatch(name):
            raise fail(where, "profile names are lowercase letters, digits, '-' and '_'")
        check_keys(body, where, {"rules"}, {"description", "extends", "redact", "keep", "visible", "mode", "coalesce"})
        if not isinstance(body.get("coalesce", True), bool):
            raise fail(where + ".coalesce", "must be true or false")
        if not isinstance(body.get("description", ""), str):
            raise fail(where + ".description", "must be a string")
        descriptions[name] = body.get("description", "")
        modes[name] = body.get("mode", "enforce")
        if modes[name] not in PROFILE_MODES:
            raise fail(where + ".mode", "must be \"enforce\" (the default) or \"warn\"")
        parents[name] = body.get("extends")
        if parents[name] is not None and not isinstance(parents[name], str):
            raise fail(where + ".extends", "must be the name of another profile")
        if parents[name] is not None and parents[name] not in raw_profiles:
            raise fail(where + ".extends", f"no profile named {parents[name]!r}")
        if not isinstance(body["rules"], list):
            raise fail(where + ".rules", "must be a list")
        own_rules[name] = [_load_rule(raw, name, i, f"{where}.rules[{i}]", fail)
                           for i, raw in enumerate(body["rules"])]
        redactions[name], scopes[name] = _load_filtering(body, where, fail)
        keeps[name] = _load_keep(body, redactions[name], where, fail)
    profiles: dict[str, tuple[Rule, ...]] = {}
    filtering: dict[str, Filtering] = {}
    uncoalesced: set[str] = set()
    for name in raw_profiles:
        chain, current = [], name
        while current is not None:
            if current in chain:
                raise fail(f"$.profiles.{name}.extends", "profiles extend each other in a cycle")
            chain.append(current)
            current = parents[current]
        rules = [rule for member in reversed(chain) for rule in own_rules[member]]
        seen: dict[tuple, str] = {}
        for rule in rules:
            key = (rule.methods, rule.template, None if rule.query is None else tuple(sorted(rule.query.items(), key=lambda kv: kv[0])))
            if key in seen:
                raise fail(f"$.profiles.{name}", f"rule {rule.label} duplicates rule {seen[key]}")
            seen[key] = rule.label
        if not rules:
            raise fail(f"$.profiles.{name}.rules", "a profile needs at least one rule")
        profiles[name] = tuple(rules)
        # A visible scope is inherited (leaving it out never widens what a child sees); a
        # profile without "redact" redacts the defaults, whatever its parent turned off.
        scope = next((scopes[member] for member in chain if scopes[member] is not None), ())
        filtering[name] = Filtering(redactions[name], scope, keeps[name])  # "keep" goes with "redact"
        _check_redacted_reads(rules, filtering[name].redact, f"$.profiles.{name}", fail)
        own = [raw_profiles[member]["coalesce"] for member in chain if "coalesce" in raw_profiles[member]]
        if own and own[0] is False:  # inherited through extends unless the profile sets it
            uncoalesced.add(name)
    if "default" not in profiles:
        raise fail("$.profiles", "a profile named 'default' is required")
    clients = load_client_rules(document.get("clients", []), profiles.keys(), fail)
    return Policy(source, profiles, descriptions, clients, filtering, modes=modes, document=document,
                  uncoalesced=frozenset(uncoalesced))


def _first_null(document: Any, root: str) -> str | None:
    """The JSON path of the first null in a parsed document, or None (no recursion: a document
    json.loads accepted may be nested as deep as its own limit)."""
    stack = [(root, document)]
    while stack:
        where, value = stack.pop()
        if value is None:
            return where
        if isinstance(value, dict):
            stack += reversed([(f"{where}.{key}", item) for key, item in value.items()])
        elif isinstance(value, list):
            stack += reversed([(f"{where}[{i}]", item) for i, item in enumerate(value)])
    return None


def _load_filtering(body: dict, where: str, fail: Any) -> tuple[frozenset[str], tuple[Label, ...] | None]:
    """A profile's "redact" (default: DEFAULT_REDACTIONS) and "visible" (None: not set here)."""
    redact = body.get("redact")
    if redact is None:
        redactions = DEFAULT_REDACTIONS
    elif not isinstance(redact, list) or not all(isinstance(item, str) for item in redact):
        raise fail(where + ".redact", f"must be a list of: {', '.join(REDACTIONS)}")
    else:
        unknown = [item for item in redact if item not in REDACTIONS]
        if unknown:
            raise fail(where + ".redact", f"unknown redaction {unknown[0]!r}; known: {', '.join(REDACTIONS)}")
        if len(set(redact)) != len(redact):
            raise fail(where + ".redact", "lists a redaction twice")
        redactions = frozenset(redact)
    visible = body.get("visible")
    if visible is None:
        return redactions, None
    if not isinstance(visible, dict) or set(visible) != {"labels"}:
        raise fail(where + ".visible", 'must be {"labels": ["key" or "key=value", ...]}')
    labels = visible["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(item, str) for item in labels):
        raise fail(where + ".visible.labels", 'must be a non-empty list of "key" or "key=value"')
    try:
        return redactions, tuple(parse_label_filter(item) for item in labels)
    except ValueError as exc:
        raise fail(where + ".visible.labels", str(exc)) from None


def _check_redacted_reads(rules: list[Rule], redact: frozenset[str], where: str, fail: Any) -> None:
    """guards.py invariant 3: a rule (own or inherited) that can match a REDACTED_READS path is
    an ordinary read only where the profile redacts it; elsewhere it must say "dangerous"."""
    for rule in rules:
        missing = [] if rule.dangerous else [(r, why) for r, why in redacted_overlaps(rule.template) if r not in redact]
        if missing:  # (a rule overlapping a DANGEROUS_READS path says "dangerous" already: _load_rule)
            redaction, why = missing[0]
            raise fail(where, f"rule {rule.label}: {rule.path} is a dangerous read ({why}) unless the profile "
                              f"redacts {redaction!r}: add it to \"redact\", or add \"dangerous\": true to the rule")


def _load_keep(body: dict, redactions: frozenset[str], where: str, fail: Any) -> tuple[str, ...]:
    """A profile's "keep": {"env": [patterns]}: the variables whose values env redaction keeps."""
    keep = body.get("keep")
    if keep is None:
        return ()
    if not isinstance(keep, dict) or set(keep) != {"env"}:
        raise fail(where + ".keep", 'must be {"env": ["NAME" or "GLOB*", ...]}')
    patterns = keep["env"]
    if not isinstance(patterns, list) or not patterns or not all(isinstance(item, str) for item in patterns):
        raise fail(where + ".keep.env", 'must be a non-empty list of variable names or globs ("NOMAD_*")')
    if "env" not in redactions:
        raise fail(where + ".keep.env", "keeps nothing: the profile does not redact env")
    if len(set(patterns)) != len(patterns):
        raise fail(where + ".keep.env", "lists a pattern twice")
    try:
        return tuple(parse_env_pattern(item) for item in patterns)
    except ValueError as exc:
        raise fail(where + ".keep.env", str(exc)) from None


def _load_rule(raw: Any, profile: str, index: int, where: str, fail: Any) -> Rule:
    if not isinstance(raw, dict):
        raise fail(where, "must be an object")
    allowed = {"method", "path", "query", "dangerous", "comment"}
    unknown = sorted(raw.keys() - allowed)
    if unknown:
        raise fail(where, f"unknown key {unknown[0]!r}")
    for key in ("method", "path"):
        if key not in raw:
            raise fail(where, f"missing key {key!r}")
    methods = raw["method"] if isinstance(raw["method"], list) else [raw["method"]]
    if not methods or any(m not in ALLOWED_METHODS for m in methods):
        raise fail(where + ".method", f"must be GET or HEAD (or a list of them), not {raw['method']!r}: "
                                      "porthole never forwards anything else")
    if not isinstance(raw["path"], str):
        raise fail(where + ".path", "must be a string")
    try:
        template = parse_template(raw["path"])
    except ValueError as exc:
        raise fail(where + ".path", str(exc)) from None
    query = raw.get("query")
    if query is not None:
        if not isinstance(query, dict):
            raise fail(where + ".query", "must be an object of parameter name to \"*\" or a list of values")
        parsed: dict[str, frozenset[str] | None] = {}
        for key, values in query.items():
            if not QUERY_KEY.fullmatch(key):
                raise fail(f"{where}.query.{key}", "not a valid parameter name")
            if values == "*":
                parsed[key] = None
            elif isinstance(values, list) and values and all(isinstance(v, str) for v in values):
                parsed[key] = frozenset(values)
            else:
                raise fail(f"{where}.query.{key}", "must be \"*\" or a non-empty list of strings")
        query = parsed
    dangerous = raw.get("dangerous", False)
    if not isinstance(dangerous, bool):
        raise fail(where + ".dangerous", "must be true or false")
    if not isinstance(raw.get("comment", ""), str):
        raise fail(where + ".comment", "must be a string")
    for guard, why in NEVER_TEMPLATES:
        if templates_overlap(template, guard):
            raise fail(where + ".path", f"matches a path that is never forwarded ({why})")
    risky = dangerous_overlaps(template, frozenset(REDACTIONS))  # whatever the profile redacts
    if risky and not dangerous:
        raise fail(where, f"{raw['path']} is a dangerous read ({risky[0]}); "
                          "add \"dangerous\": true to acknowledge it")
    if dangerous and not dangerous_overlaps(template):  # (a REDACTED_READS path may say it)
        raise fail(where + ".dangerous", f"{raw['path']} is not a dangerous read; remove the flag")
    return Rule(profile, index, frozenset(methods), raw["path"], template, query, dangerous)


def describe_policy(policy: Policy) -> str:
    lines = [f"policy from {policy.source}"]
    for name, rules in policy.profiles.items():
        lines.append(f"profile {name}: {policy.descriptions.get(name, '')}".rstrip(": "))
        if policy.modes.get(name) == "warn":
            lines.append("  mode warn: what these rules refuse is forwarded anyway and logged as would_deny")
        for rule in rules:
            query = "any query" if rule.query is None else (
                "no query" if not rule.query else "query " + ", ".join(
                    f"{k}={'*' if v is None else '|'.join(sorted(v))}" for k, v in rule.query.items()))
            flag = "  [dangerous read, acknowledged]" if rule.dangerous else ""
            lines.append(f"  {'|'.join(sorted(rule.methods)):<8} {rule.path}  ({query}){flag}")
        filtering = policy.filtering.get(name, DEFAULT_FILTERING)
        lines.append("  redacts: " + (", ".join(r for r in REDACTIONS if r in filtering.redact) or "nothing"))
        if filtering.keep_env:
            lines.append("  keeps the values of environment variables: " + ", ".join(filtering.keep_env))
        if filtering.visible:
            lines.append("  sees only containers, services and tasks labelled: "
                         + ", ".join(filtering.label_filters()))
    if policy.clients:
        lines.append("clients (first match wins; any other client gets its listener's profile):")
        for client in policy.clients:
            lines.append(f"  {client.label:<12} {client.describe()} -> profile {client.profile}")
    lines.append("never forwarded: any method but GET/HEAD, Upgrade, request bodies, "
                 + ", ".join(NEVER_FORWARDED))
    return "\n".join(lines)
