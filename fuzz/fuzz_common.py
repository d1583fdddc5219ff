"""Shared pieces of Porthole's fuzz targets: the shipped policy and invariant checks.

Nothing here imports atheris, so the pytest suite (tests/hostile/test_fuzz_corpus.py) can replay the
corpus through exactly the same checks with the normal .venv.

The checks deliberately do not reuse porthole.core.guards' template_matches /
never_forwarded_reason / dangerous_reason: templates are translated to regular expressions
here, independently, so a bug in the proxy's matcher shows up as a disagreement instead of
agreeing with itself.

`proxy` is the namespace the targets reach the proxy's code through (proxy.decide(...),
proxy.Proxy(...)): the names they use, taken from the porthole/ modules that define them. A test
may replace one there for every target (monkeypatch.setattr(fuzz_common.proxy, "decide", ...));
that does not reach into the package, whose modules call what they imported themselves (patch
porthole.core.decide.dangerous_reason, porthole.app.dispatch.forwarded_request, ... for those).
"""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from porthole.app.wiring import Proxy  # noqa: E402
from porthole.connections.client import ClientConnection, ClientState  # noqa: E402
from porthole.connections.exchange import MAX_REFUSALS_IN_A_ROW  # noqa: E402
from porthole.core.decide import (  # noqa: E402
    Decision, FORWARDED_REQUEST_HEADERS, RequestFacts, decide, forwarded_request,
)
from porthole.core.guards import DANGEROUS_READS, NEVER_FORWARDED, parse_template  # noqa: E402
from porthole.core.policy import Policy, Rule, load_policy  # noqa: E402
from porthole.core.target import Refusal, Target, canonicalize_target  # noqa: E402
from porthole.runtime.config import Endpoint, Settings  # noqa: E402
from porthole.runtime.log import Log  # noqa: E402

proxy = types.SimpleNamespace(
    ClientConnection=ClientConnection, ClientState=ClientState, DANGEROUS_READS=DANGEROUS_READS,
    Decision=Decision, Endpoint=Endpoint, FORWARDED_REQUEST_HEADERS=FORWARDED_REQUEST_HEADERS, Log=Log,
    MAX_REFUSALS_IN_A_ROW=MAX_REFUSALS_IN_A_ROW, NEVER_FORWARDED=NEVER_FORWARDED, Policy=Policy, Proxy=Proxy,
    Refusal=Refusal, RequestFacts=RequestFacts, Rule=Rule, Settings=Settings, Target=Target,
    canonicalize_target=canonicalize_target, decide=decide, forwarded_request=forwarded_request,
    load_policy=load_policy, parse_template=parse_template,
)

RULES_PATH = REPO / "rules.json"
POLICY = proxy.load_policy(RULES_PATH.read_text(encoding="utf-8"), str(RULES_PATH))
PROFILES = tuple(sorted(POLICY.profiles))

# What may appear in the path part of a forwarded target (segments are [A-Za-z0-9_.:@-]).
_FORWARD_PATH = re.compile(r"(/[A-Za-z0-9_][A-Za-z0-9_.:@-]*)+")
_VERSION_TEXT = re.compile(r"(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})")
# The daemon's router: "/v{version:[0-9.]+}" in front of every route (moby api/server).
_DAEMON_VERSION_SEGMENT = re.compile(r"v[0-9.]+")


_FACTS_HAVE_VERSION = "http_version" in getattr(proxy.RequestFacts, "__dataclass_fields__", {})


def request_facts(method: str, target: bytes, headers, listener_kind: str, profile: str,
                  http_version: bytes = b"1.1") -> proxy.RequestFacts:
    """proxy.RequestFacts, with the request's HTTP version when this porthole decides on it."""
    extra = {"http_version": http_version} if _FACTS_HAVE_VERSION else {}
    return proxy.RequestFacts(method, target, headers, listener_kind, profile, **extra)


def self_command(argv: list[str]) -> list[str]:
    """argv for atheris.Setup with argv[0] = "<this python> <this script>": libFuzzer re-runs
    argv[0] through the shell for -jobs, -fork and -minimize_crash, and the script itself is
    neither executable nor would its shebang find the fuzzing venv."""
    return [f"{sys.executable} {Path(argv[0]).resolve()}", *argv[1:]]


class InvariantViolation(AssertionError):
    """An invariant of the proxy does not hold: a finding."""


def require(condition: bool, message: str, *context: object) -> None:
    if not condition:
        raise InvariantViolation(message + ("" if not context else ": " + " | ".join(map(repr, context))))


def template_regex(template: str) -> re.Pattern[str]:
    """'/containers/{id}/json' -> a regex over '/'-joined decoded segments (independent of
    porthole.core.guards.parse_template/template_matches)."""
    parts = []
    for part in template[1:].split("/"):
        if part.startswith("{") and part.endswith("*}"):
            parts.append(r"[^/]+(?:/[^/]+)*")
        elif part.startswith("{") and part.endswith("}"):
            parts.append(r"[^/]+")
        else:
            parts.append(re.escape(part))
    return re.compile("/" + "/".join(parts))


_NEVER_RE = [(template_regex(t), t) for t in proxy.NEVER_FORWARDED]
_DANGEROUS_RE = [(template_regex(t), t) for t in proxy.DANGEROUS_READS]
_RULE_RE: dict[str, re.Pattern[str]] = {}


def _rule_regex(path: str) -> re.Pattern[str]:
    if path not in _RULE_RE:
        _RULE_RE[path] = template_regex(path)
    return _RULE_RE[path]


def check_target(raw: bytes, target: proxy.Target) -> None:
    """Invariants of an accepted (canonical) target."""
    require(isinstance(target, proxy.Target), "canonicalize_target returned a non-Target", raw, target)
    require(len(target.segments) >= 1, "accepted target names no endpoint", raw, target)
    for segment in target.segments:
        require(segment not in ("", ".", ".."), "empty or dot segment accepted", raw, target)
        require(not any(c in segment for c in "/%\\"), "segment holds '/', '%' or '\\'", raw, target)
        require(segment.isascii() and segment.isprintable(), "segment not printable ASCII", raw, target)
    if target.version is not None:
        require(bool(_VERSION_TEXT.fullmatch(target.version)), "odd API version", raw, target)
    keys = [k for k, _ in target.query]
    require(len(keys) == len(set(keys)), "repeated query key accepted", raw, target)
    form = target.forward_form()
    require(form.isascii(), "forward form is not ASCII", raw, form)
    path_part = form.partition("?")[0]
    require(bool(_FORWARD_PATH.fullmatch(path_part)), "forward path has unexpected characters", raw, form)
    require(not any(c in form for c in "#;\\ \t\r\n"), "forward form holds #, ;, \\ or whitespace", raw, form)
    try:
        again = proxy.canonicalize_target(form.encode("ascii"))
    except proxy.Refusal as refusal:
        raise InvariantViolation(f"forward form {form!r} of {raw!r} is refused: {refusal.reason}") from None
    require(again == target, "forward form does not round-trip", raw, form, target, again)
    require(again.forward_form() == form, "forward form is not a fixed point", raw, form)


def daemon_segments(target: proxy.Target) -> tuple[str, ...]:
    """The path the daemon routes on for target.forward_form(): its router strips one leading
    '/v[0-9.]+' segment."""
    segments = list(target.segments)
    if target.version is None and segments and _DAEMON_VERSION_SEGMENT.fullmatch(segments[0]):
        segments.pop(0)
    return tuple(segments)


def check_decision(facts: proxy.RequestFacts, decision: proxy.Decision, policy=None) -> None:
    """Invariants of a request the proxy decided to forward (policy: default the shipped one)."""
    policy = POLICY if policy is None else policy
    target = decision.target
    require(facts.method in ("GET", "HEAD"), "forwarding a method other than GET/HEAD", facts.method)
    path = target.path
    daemon_path = "/" + "/".join(daemon_segments(target))
    for text in {path, daemon_path}:
        for regex, template in _NEVER_RE:
            require(not regex.fullmatch(text), f"forwarding {text} which matches never-forwarded {template}",
                    facts.target)
    rule = decision.rule
    require(rule in policy.profiles[facts.profile], "decision names a rule outside the listener's profile",
            facts.profile, rule.label)
    require(facts.method in rule.methods, "rule does not allow the method", rule.label, facts.method)
    require(bool(_rule_regex(rule.path).fullmatch(path)), "rule's template does not match the path",
            rule.label, path)
    require(daemon_path == path, "the daemon would route a different path than was matched",
            facts.target, path, daemon_path)
    for regex, template in _DANGEROUS_RE:
        if regex.fullmatch(path):
            require(rule.dangerous, f"dangerous read {template} forwarded by a rule that does not "
                                    "acknowledge it", rule.label, facts.target)
    if rule.query is not None:
        for key, value in target.query:
            require(key in rule.query, "query key not allowed by the rule", rule.label, key)
            allowed = rule.query[key]
            require(allowed is None or value in allowed, "query value not allowed by the rule",
                    rule.label, key, value)
