"""decide: one request's facts in, a Decision to forward or a Refusal out; and
forwarded_request, the one place a request for the daemon is built.

Invariants:
  1. Only GET and HEAD are ever forwarded: decide refuses any other method first, and
     forwarded_request asserts it again, so no path through the proxy can build anything else.
  2. No request body, no protocol upgrade, no second Host header, no control byte in a header
     is forwarded.
  3. On TCP listeners, requests from web pages (Origin, Sec-Fetch-Site) and Host names that
     could be rebound (a dotted name not given with --allow-host) are refused.
  4. The guards are checked before any rule; a rule then allows the path only with its method
     and its query keys and values.
  5. What the daemon is sent is rebuilt: the canonical target, Host: docker, and only the
     FORWARDED_REQUEST_HEADERS the client sent. Nothing else of the client's bytes reaches it.
  6. Learn and warn modes forward only refusals by the profile's rules (kind "rule"), never
     what decide refuses for any other reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import h11

from porthole.core.filters import DEFAULT_FILTERING
from porthole.core.guards import dangerous_reason, never_forwarded_reason
from porthole.core.policy import ALLOWED_METHODS, Policy, Rule
from porthole.core.target import CONTROL_BYTES, Refusal, Target, canonicalize_target


WOULD_DENY_PATH = "(none)"  # the stand-in rule's path: no rule allowed it
FORWARDED_REQUEST_HEADERS = (b"user-agent", b"accept")


@dataclass(frozen=True)
class RequestFacts:
    """What the policy needs to know about one request: no sockets."""

    method: str
    target: bytes
    headers: Sequence[tuple[bytes, bytes]]  # lowercase names, as h11 gives them
    listener_kind: str  # "tcp" or "unix"
    profile: str
    http_version: bytes = b"1.1"


@dataclass(frozen=True)
class Decision:
    target: Target
    rule: Rule  # for a would_deny, a stand-in for the rule that does not exist (index -1, WOULD_DENY_PATH)
    streaming: bool
    would_deny: str | None = None  # learn or warn mode: why the profile's rules refuse it


_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_HOST_SYNTAX = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._~-]*)(:[0-9]{1,5})?")


def host_is_acceptable(host: str, allow_hosts: frozenset[str]) -> bool:
    """Refuse DNS-rebinding: a dotted name is only accepted when listed. IP literals,
    single-label names and *.localhost are fine: no attacker controls what they resolve to."""
    host = host.strip().lower()
    if not _HOST_SYNTAX.fullmatch(host):
        return False
    if host.startswith("["):
        return host.partition("]")[0].count(":") >= 2
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    if not name or _IPV4.fullmatch(name) or "." not in name:
        return True
    return name == "localhost" or name.endswith(".localhost") or name in allow_hosts


def is_truthy(value: str | None) -> bool:
    """How the daemon reads boolean query parameters ('follow=on' is true)."""
    return value is not None and value.strip().lower() not in ("", "0", "no", "false", "none")


def is_shareable(method: str, target: Target) -> bool:
    """/events without since/until: every watcher of the same target gets the same bytes from
    the moment it joins, so one upstream subscription can serve them all."""
    return (method == "GET" and target.segments == ("events",)
            and not any(key in ("since", "until") for key, _ in target.query))


def is_streaming(target: Target) -> bool:
    """Responses with no natural end, in Docker's API and in Podman's own (libpod): they get
    back-pressure but no write-stall or body-inactivity timeout, count against
    --max-streams-per-client, end at once on shutdown, and are never coalesced.

    Streams unless told otherwise: /events (Docker's always; libpod's unless stream=false) and
    container stats unless stream=false (Docker's /containers/{id}/stats, libpod's
    /libpod/containers/stats and /libpod/containers/{id}/stats). Streams when asked, in either
    API: any GET with a true `follow` (logs) or `stream` (libpod's containers/{id}/top,
    pods/{id}/top and pods/stats, whose default is false). So says Podman's swagger
    (pkg/api/server/register_*.go: the GETs with a `stream` or `follow` parameter, and their
    defaults).

    This must stay exact both ways, for it decides more than coalescing: a finite answer taken
    for a stream loses its write-stall and body timeouts and takes a stream slot; a stream taken
    for a finite answer is cut by them. What may be coalesced is decided by is_known_finite,
    which asks more."""
    segments = target.segments
    libpod = segments[0] == "libpod"
    api = segments[1:] if libpod else segments  # the same shapes under /libpod
    if not api:
        return False
    stream = target.query_value("stream")
    if api == ("events",):
        return not libpod or stream is None or is_truthy(stream)
    if api[-1] == "stats" and api[0] == "containers":  # one container's, or libpod's for all
        return stream is None or is_truthy(stream)
    return is_truthy(stream) or is_truthy(target.query_value("follow"))


# The last path segments (in either API) of answers known to be one finite document the daemon
# builds and sends at once: lists, inspects, info, version, top, changes, history, one-shot
# stats, logs not followed. And the swarm-era collections, listed or inspected (/networks,
# /volumes/{name}, ...).
_FINITE_LAST_SEGMENTS = frozenset({
    "_ping", "version", "info", "json", "df", "top", "changes", "history", "exists", "stats", "logs",
    "healthcheck", "search", "tree", "resolve", "showmounted",
})
_FINITE_COLLECTIONS = frozenset({"networks", "volumes", "nodes", "services", "tasks", "secrets", "configs",
                                 "plugins", "swarm"})


def is_known_finite(target: Target) -> bool:
    """Whether the answer is known to be one finite document (_FINITE_LAST_SEGMENTS,
    _FINITE_COLLECTIONS) and not a stream. Only these are coalesced: a coalesced read holds
    every identical request that arrives after it was sent until it ends, so for coalescing
    what is not known to be finite counts as a stream. Tarballs (export, archive, images/get),
    shapes added to either API later, and anything else unknown get a daemon request each, as
    streams do, while keeping the timeouts of a finite answer (is_streaming)."""
    if is_streaming(target):
        return False
    segments = target.segments
    api = segments[1:] if segments[0] == "libpod" else segments
    if not api:
        return False
    return api[-1] in _FINITE_LAST_SEGMENTS or (api[0] in _FINITE_COLLECTIONS and len(api) <= 2)


def decide(policy: Policy, facts: RequestFacts, allow_hosts: frozenset[str] = frozenset()) -> Decision:
    """Return the Decision to forward, or raise Refusal with the reason."""
    if facts.method not in ALLOWED_METHODS:
        raise Refusal(403, f"method {facts.method} is never forwarded: porthole is read-only", close=True)
    if facts.http_version not in (b"1.0", b"1.1"):
        raise Refusal(505, f"HTTP/{facts.http_version.decode('latin-1')} is not supported", close=True)
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in facts.headers:
        if CONTROL_BYTES.search(value):
            raise Refusal(400, f"control character in the {name.decode('latin-1')} header", close=True)
        by_name.setdefault(name, []).append(value)

    def values(name: bytes) -> list[bytes]:
        return by_name.get(name, [])

    upgrade = values(b"upgrade")
    connection = b",".join(values(b"connection")).lower()
    if upgrade or b"upgrade" in connection:
        raise Refusal(403, "protocol upgrades (websocket, h2c, hijack) are never forwarded", close=True)
    lengths = values(b"content-length")
    if values(b"transfer-encoding") or any(v.strip() not in (b"0", b"") for v in lengths):
        raise Refusal(403, "requests with a body are never forwarded", close=True)
    if len(values(b"host")) > 1:
        raise Refusal(400, "more than one Host header", close=True)
    if facts.listener_kind == "tcp":
        fetch_site = values(b"sec-fetch-site")
        if values(b"origin") or (fetch_site and fetch_site != [b"none"]):
            raise Refusal(403, "requests from web pages (Origin, Sec-Fetch-Site) are refused on TCP listeners")
        host = (values(b"host") or [b""])[0].decode("latin-1")
        if not host_is_acceptable(host, allow_hosts):
            raise Refusal(403, f"Host {host!r} is not an IP address or an allowed name (--allow-host)")
    target = canonicalize_target(facts.target)
    never = never_forwarded_reason(target.segments)
    if never:
        raise Refusal(403, f"{facts.method} {target.path} is never forwarded: {never}")
    index = policy.indexes.get(facts.profile)  # type: ignore[attr-defined]
    if index is None:
        raise Refusal(403, f"the listener's profile {facts.profile!r} is not in {policy.source}")
    # (a REDACTED_READS path is dangerous unless this profile redacts it: guards.py invariant 3)
    danger = dangerous_reason(target.segments, policy.filtering.get(facts.profile, DEFAULT_FILTERING).redact)
    query_problem = None
    for rule in index.matches(target.segments):
        if facts.method in rule.methods:
            if danger and not rule.dangerous:  # defence in depth: load_policy refuses such rules
                break
            problem = rule.query_problem(target)
            if problem:
                query_problem = query_problem or problem
                continue
            return Decision(target, rule, is_streaming(target))
    # A rule took the path (and, for a dangerous read, acknowledged it) but refused the query:
    # the query is the reason, so say which key or value.
    if query_problem:
        raise Refusal(403, query_problem, kind="rule")
    if danger:
        raise Refusal(403, f"{facts.method} {target.path} is a dangerous read ({danger}) "
                           f"and no rule in profile {facts.profile!r} acknowledges it", kind="dangerous")
    raise Refusal(403, f"no rule in profile {facts.profile!r} allows {facts.method} {target.path}", kind="rule")


def decide_with_mode(policy: Policy, facts: RequestFacts, allow_hosts: frozenset[str] = frozenset(),
                     learning: bool = False) -> Decision:
    """decide(), except that while learning (--learn) or for a profile in "mode": "warn" a
    refusal by the profile's rules (kind "rule") is forwarded as a would_deny Decision that
    carries the reason. Whatever else decide refuses stays refused: other methods, bodies,
    upgrades, never-forwarded paths and unacknowledged dangerous reads."""
    try:
        return decide(policy, facts, allow_hosts)
    except Refusal as refusal:
        if refusal.kind != "rule" or not (learning or policy.modes.get(facts.profile) == "warn"):
            raise
        target = canonicalize_target(facts.target)  # decide got this far, so it canonicalizes
        # The stand-in names no path: a client's path never becomes a label or any other state
        # that outlives the request (the metrics label a would_deny by its learned template).
        rule = Rule(facts.profile, -1, frozenset({facts.method}), WOULD_DENY_PATH, (), None,
                    dangerous_reason(target.segments, policy.filtering.get(facts.profile, DEFAULT_FILTERING).redact)
                    is not None)
        return Decision(target, rule, is_streaming(target), would_deny=refusal.reason)


class NotReadOnly(AssertionError):
    """forwarded_request was asked for a method other than GET or HEAD: a bug in porthole. Nothing
    is forwarded; the loop logs it and aborts the client (Loop Rule 1)."""


def forwarded_request(method: str, target: Target, headers: Sequence[tuple[bytes, bytes]]) -> h11.Request:
    """The request porthole sends upstream: canonical target, fixed Host, allowlisted headers.
    Every request the daemon is sent is built here, so the read-only promise is checked here
    too, whatever decide said (invariant 1): not an assert statement, which `python -O` drops."""
    if method not in ALLOWED_METHODS:
        raise NotReadOnly(f"refusing to build a {method!r} request for the daemon: porthole is read-only")
    kept = [(name, value) for name, value in headers if name in FORWARDED_REQUEST_HEADERS]
    # _parsed: the header values were validated by h11 when it parsed the client's request and
    # the target is built from safe characters only, so h11 need not run its regexes again.
    return h11.Request(method=method.encode("ascii"), target=target.forward_form_text.encode("ascii"),
                       headers=[(b"Host", b"docker"), *kept], _parsed=True)
