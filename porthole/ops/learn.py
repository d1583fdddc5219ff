"""Learn mode (--learn PATH): what each client asked for, written as the rules it needs.

One minimal profile per client and the `clients` entries that give it to that client. Learner
is pure (no sockets, no files): the proxy feeds it (Learner.record), and LearnFile writes
Learner.document. A concrete path is learned as a template, never as a raw id or name.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from porthole.connections.client import ClientConnection
from porthole.core.clients import ClientFacts, ClientRule, shadowing_entries
from porthole.core.filters import DEFAULT_FILTERING
from porthole.core.guards import (Template, TemplateIndex, dangerous_overlaps, dangerous_reason,
                                  parse_template, template_matches)
from porthole.core.policy import Policy, PolicyError, load_policy
from porthole.core.target import Target
from porthole.runtime.log import Log
from porthole.runtime.loop import Loop


# The GET and HEAD paths of the Docker Engine API (docs.docker.com/reference/api/engine), as the
# templates learned rules use: a path is learned as the first that matches it. Paths that none
# matches (Podman's /libpod API, a newer endpoint) fall back to the templates of the rules
# loaded, e.g. the shipped podman profile's; a path that no template matches is not learned.
ENGINE_API_TEMPLATES = (
    "/_ping", "/version", "/info", "/events", "/system/df",
    "/containers/json", "/containers/{id}/json", "/containers/{id}/stats", "/containers/{id}/top",
    "/containers/{id}/logs", "/containers/{id}/changes", "/containers/{id}/export",
    "/containers/{id}/archive",
    "/images/json", "/images/search", "/images/get", "/images/{name*}/json", "/images/{name*}/history",
    "/images/{name*}/get",
    "/networks", "/networks/{id}", "/volumes", "/volumes/{name}",
    "/swarm", "/nodes", "/nodes/{id}", "/services", "/services/{id}",
    "/services/{id}/logs", "/tasks", "/tasks/{id}", "/tasks/{id}/logs", "/secrets", "/secrets/{id}",
    "/configs", "/configs/{id}", "/plugins", "/plugins/privileges", "/plugins/{name*}/json",
    "/exec/{id}/json", "/distribution/{name*}/json",
)
_ENGINE_API_INDEX = TemplateIndex((parse_template(text), text) for text in ENGINE_API_TEMPLATES)
# Query keys whose values are learned one by one, because the value changes what the daemon
# reveals or how long it answers (stopped containers too, sizes, an endless stream instead of
# one answer). Any other key is learned as "*" (filters, since, tail... hold names and times
# that differ at every call).
LEARN_VALUE_KEYS = frozenset({"all", "size", "stream", "follow", "one-shot", "verbose"})
LEARN_MAX_VALUES = 16  # then the key is learned as "*"
LEARN_MAX_KEYS = 64  # query keys per path template and client: more are not learned
LEARN_MAX_CLIENTS = 256  # client identities: more are not learned
_LEARN_KINDS = {"cert_cn": 0, "uid": 1, "address": 2}  # the order of their `clients` entries


@dataclass(frozen=True)
class LearnedClient:
    """Who asked, as a `clients` match: a verified certificate's CN, else the unix uid, else the
    TCP address, for clients without a certificate only ("certificate": false: a mutual-TLS
    client from that address that was never seen keeps its listener's profile). Not the gid:
    the same program is often started with another primary group."""

    kind: str  # "cert_cn", "uid" or "address"
    value: str

    @property
    def label(self) -> str:
        return f"{self.kind}={self.value}"

    def match(self) -> dict[str, Any]:
        if self.kind == "address":
            return {"address": self.value, "certificate": False}
        return {self.kind: int(self.value) if self.kind == "uid" else self.value}

    def client_rule(self, index: int, profile: str) -> ClientRule:
        if self.kind == "uid":
            return ClientRule(index, profile, uid=int(self.value))
        if self.kind == "cert_cn":
            return ClientRule(index, profile, cert_cn=self.value)
        return ClientRule(index, profile, network=ipaddress.ip_network(self.value), certificate=False)

    def profile_stem(self) -> str:
        """learned-uid-1000, learned-cn-traefik, learned-127-0-0-1, learned-ipv6-1."""
        prefix = {"uid": "learned-uid-", "cert_cn": "learned-cn-", "address": "learned-"}[self.kind]
        if self.kind == "address" and ":" in self.value:
            prefix = "learned-ipv6-"
        slug = re.sub(r"[^a-z0-9]+", "-", self.value.lower()).strip("-") or "x"
        return (prefix + slug)[:60].rstrip("-")


def learned_client(facts: ClientFacts) -> LearnedClient | None:
    if facts.cert_cn is not None:
        return LearnedClient("cert_cn", facts.cert_cn)
    if facts.uid is not None:
        return LearnedClient("uid", str(facts.uid))
    if facts.address is not None:
        return LearnedClient("address", str(facts.address))
    return None


@dataclass
class LearnedUse:
    """The methods and query keys (values, for LEARN_VALUE_KEYS) one client used on one template."""

    methods: set[str] = field(default_factory=set)
    query: dict[str, set[str] | None] = field(default_factory=dict)  # None: any value

    def add(self, method: str, target: Target) -> bool:
        """Record one request; True if it was not covered yet."""
        new = method not in self.methods
        self.methods.add(method)
        for key, value in target.query:
            if key not in self.query:
                if len(self.query) >= LEARN_MAX_KEYS:
                    continue
                self.query[key] = {value} if key in LEARN_VALUE_KEYS else None
                new = True
            values = self.query[key]
            if values is not None and value not in values:
                values.add(value)
                if len(values) > LEARN_MAX_VALUES:
                    self.query[key] = None
                new = True
        return new

    def rule(self, template: str) -> dict[str, Any]:
        rule: dict[str, Any] = {"method": sorted(self.methods), "path": template, "query": {
            key: "*" if values is None else sorted(values) for key, values in sorted(self.query.items())}}
        if dangerous_overlaps(parse_template(template)):
            rule["dangerous"] = True  # only ever recorded when the profile acknowledged the read
        return rule


def learn_template(policy: Policy, segments: Sequence[str]) -> str | None:
    """The template a concrete path is learned as (see ENGINE_API_TEMPLATES), or None. A
    template is only taken if it is a dangerous read exactly when the path is one, so a learned
    rule never acknowledges more than was acknowledged."""
    dangerous = dangerous_reason(segments) is not None

    def fits(template: Template) -> bool:
        return bool(dangerous_overlaps(template)) == dangerous

    for text in _ENGINE_API_INDEX.matches(segments):
        if fits(parse_template(text)):
            return text
    for rules in policy.profiles.values():
        for rule in rules:
            if template_matches(rule.template, segments) and fits(rule.template):
                return rule.path
    return None


class Learner:
    """What each client asked for, as the rules it needs. record() it, then document().

    Rule 1: only what was forwarded becomes a rule; a dangerous read that was refused (no
            profile acknowledged it) is only listed, in the profile's description and notes,
            so a learned file never acknowledges a dangerous read on its own.
    Rule 2: what is recorded is bounded (LEARN_MAX_CLIENTS, LEARN_MAX_KEYS, LEARN_MAX_VALUES;
            templates come from a fixed table and the rules loaded).
    Rule 3: adopting the learned file never widens what a client sees: its learned profile keeps
            every restriction of the profiles it was served under (their redactions, all of
            them; their visible scopes, all of them; enforce unless every one was warn).
    Rule 4: a client whose profile or `clients` entry would not load is left out, with a note;
            it never stops the document from being written for the others.
    """

    def __init__(self) -> None:
        self.used: dict[LearnedClient, dict[str, LearnedUse]] = {}
        self.refused: dict[LearnedClient, dict[tuple[str, str], str]] = {}  # (method, template) -> why
        self.profiles: dict[LearnedClient, set[str]] = {}  # the profiles each was served under

    def record(self, policy: Policy, facts: ClientFacts, method: str, target: Target,
               forwarded: bool = True, *, profile: str) -> tuple[str, str | None]:
        """One request: forwarded, or refused as an unacknowledged dangerous read. Returns
        (outcome, template): outcome "new" (something was learned), "seen", "no_template",
        "no_identity" or "too_many_clients"."""
        client = learned_client(facts)
        if client is None:
            return "no_identity", None
        template = learn_template(policy, target.segments)
        if template is None:
            return "no_template", None
        if client not in self.used and len(self.used) >= LEARN_MAX_CLIENTS:
            return "too_many_clients", template
        uses = self.used.setdefault(client, {})
        self.profiles.setdefault(client, set()).add(profile)  # (a few: one a listener, at most)
        if forwarded:
            use = uses.setdefault(template, LearnedUse())
            return ("new" if use.add(method, target) else "seen"), template
        refused = self.refused.setdefault(client, {})
        if (method, template) in refused:
            return "seen", template
        refused[(method, template)] = dangerous_reason(target.segments) or "a dangerous read"
        return "new", template

    def document(self, policy: Policy) -> tuple[dict[str, Any], list[str]]:
        """The rules document: the policy's own document (so every listener's profile is still
        there), plus a profile per client that was forwarded something, and `clients` entries
        for them before the original ones (an original entry they shadow is left out: a
        learned profile replaces a profile of the same name). And notes on what was left out."""
        document = json.loads(json.dumps(policy.document))  # a deep copy
        profiles = document["profiles"]
        notes: list[str] = []
        entries: list[dict[str, Any]] = []
        kept: list[ClientRule] = []
        names: set[str] = set()
        for client in sorted(self.used, key=lambda c: (_LEARN_KINDS[c.kind], c.value)):
            left_out = [f"{method} {template} ({why})"
                        for (method, template), why in sorted(self.refused.get(client, {}).items())]
            notes += [f"{client.label}: {item} is not in the learned rules: a dangerous read needs a "
                      "deliberate \"dangerous\": true in a rule" for item in left_out]
            uses = self.used[client]
            if not uses:
                notes.append(f"{client.label}: no profile learned: nothing it asked for was forwarded")
                served = sorted(self.profiles.get(client, ()))
                if len(served) == 1 and served[0] in profiles:  # Rule 3: it keeps what it had
                    kept.append(client.client_rule(len(entries), served[0]))
                    entries.append({"match": client.match(), "profile": served[0],
                                    "comment": "kept by porthole --learn: nothing it asked for was forwarded"})
                continue
            name, number = client.profile_stem(), 2
            while name in names:
                name, number = f"{client.profile_stem()}-{number}", number + 1
            names.add(name)
            description = f"learned by porthole --learn from the requests of {client.label}"
            if left_out:
                description += ("; left out, dangerous reads that need a deliberate \"dangerous\": true: "
                                + "; ".join(left_out))
            profile = {"description": description, **kept_restrictions(policy, self.profiles.get(client, set())),
                       "rules": [uses[template].rule(template) for template in sorted(uses)]}
            entry = {"match": client.match(), "profile": name, "comment": "learned by porthole --learn"}
            problem = loading_problem(name, profile, entry)
            if problem is not None:  # Rule 4
                notes.append(f"{client.label}: left out: its learned rules would not load ({problem})")
                continue
            profiles[name] = profile
            kept.append(client.client_rule(len(entries), name))
            entries.append(entry)
        originals = document.get("clients", [])
        for original in policy.clients:
            if shadowing_entries(kept, original):
                notes.append(f"$.clients[{original.index}] ({original.describe()}) left out: "
                             "a learned entry matches the same client first")
                continue
            kept.append(original)
            entries.append(originals[original.index])
        if entries:
            document["clients"] = entries
        return document, notes


def kept_restrictions(policy: Policy, served_under: set[str]) -> dict[str, Any]:
    """What a learned profile keeps of the profiles its client was served under (Learner Rule 3):
    every redaction of any of them, the environment variables all of them keep ("keep"), every
    label of their scopes (all must match), and warn mode only if all of them were in warn mode.
    With none known, the policy's own profiles' restrictions all together: never less than any
    of them."""
    names = sorted(served_under) or sorted(policy.profiles)
    filterings = [policy.filtering.get(name, DEFAULT_FILTERING) for name in names]
    kept: dict[str, Any] = {"redact": sorted(set().union(*(f.redact for f in filterings)))}
    kept_by_all = [p for p in filterings[0].keep_env if all(p in f.keep_env for f in filterings)]
    if kept_by_all:  # (each of them redacts env, so the union does)
        kept["keep"] = {"env": kept_by_all}
    labels = list(dict.fromkeys(label for f in filterings for label in f.label_filters()))
    if labels:
        kept["visible"] = {"labels": labels}
    if all(policy.modes.get(name) == "warn" for name in names):
        kept["mode"] = "warn"
    if any(name in policy.uncoalesced for name in names):
        kept["coalesce"] = False
    return kept


def loading_problem(name: str, profile: dict[str, Any], entry: dict[str, Any]) -> str | None:
    """Why a learned profile and its `clients` entry would not load on their own, or None."""
    try:
        document = {"version": 1, "profiles": {"default": profile, name: profile}, "clients": [entry]}
        load_policy(json.dumps(document), "learned")  # (a rules document always has a default profile)
    except PolicyError as exc:
        return str(exc).removeprefix("learned: ")
    return None


LEARN_WRITE_SECONDS = 2.0  # how soon after something new was learned the --learn file is written


class LearnFile:
    """--learn PATH: a Learner, and its rules document written to PATH.

    Rule 1: PATH is replaced atomically (a temporary file beside it, then os.replace), so a
            reader sees the old document or the new one, never half of one.
    Rule 2: it is written LEARN_WRITE_SECONDS after something new was learned, on SIGHUP and at
            shutdown; a document load_policy refuses is never written (an error is logged).
    """

    def __init__(self, path: Path, loop: Loop, log: Log, policy: Callable[[], Policy]) -> None:
        self.path = path
        self.loop = loop
        self.log = log
        self.policy = policy
        self.learner = Learner()
        self.pending = False  # something was learned since the last write
        self.noted: set[str] = set()  # notes already logged

    def record(self, client: ClientConnection, method: str, target: Target, forwarded: bool) -> None:
        outcome, template = self.learner.record(self.policy(), client.facts, method, target, forwarded,
                                                profile=client.profile)
        if outcome == "new":
            self.log("info", "learned", client=client.peer, method=method, template=template,
                     forwarded=forwarded)
            if not self.pending:
                self.pending = True
                self.loop.set_deadline(self, self.loop.clock() + LEARN_WRITE_SECONDS)
        elif outcome != "seen":
            self.log("warning", "not_learned", client=client.peer, method=method, path=target.path,
                     reason={"no_template": "no template of the Engine API or the rules matches the path",
                             "no_identity": "the client has no uid, address or certificate name",
                             "too_many_clients": f"already {LEARN_MAX_CLIENTS} clients learned"}[outcome])

    def on_deadline(self, now: float) -> None:
        self.write("learned")

    def write(self, why: str) -> None:
        self.pending = False
        self.loop.set_deadline(self, None)
        policy = self.policy()
        document, notes = self.learner.document(policy)
        text = json.dumps(document, indent=2) + "\n"
        try:
            load_policy(text, str(self.path))
        except PolicyError as exc:
            self.log("error", "learn_write_failed", path=str(self.path), error=str(exc))
            return
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            self.log("error", "learn_write_failed", path=str(self.path), error=exc.strerror or str(exc))
            return
        for note in notes:
            if note not in self.noted:
                self.noted.add(note)
                self.log("warning", "learn_left_out", note=note)
        self.log("info", "learn_written", path=str(self.path), why=why, base=policy.source,
                 clients=sorted(client.label for client in self.learner.used))
