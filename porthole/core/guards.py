"""Path templates, and the two guards no rules file can lift.

A template ('/containers/{id}/json') is literal segments, '{name}' (one safe segment) and at
most one '{name*}' (one or more: image and plugin names hold '/'). No regular expressions,
by design: templates_overlap can then decide, for any two templates, whether some path
matches both.

Invariants:
  1. A NEVER_FORWARDED path is refused whatever the rules say (decide checks it before any
     rule), and load_policy refuses any rule whose template overlaps one.
  2. A DANGEROUS_READS path is forwarded only by a rule that says "dangerous": true: load_policy
     refuses a rule overlapping a dangerous read without it (and one that says it needlessly),
     and decide checks it again for every request.
  3. A REDACTED_READS path is dangerous unless the profile's "redact" names its redaction: for
     such a profile it is an ordinary read (the filter removes what made it dangerous, failing
     closed); for any other it is a DANGEROUS_READS path (invariant 2). Callers that do not
     name the profile's redactions get the stricter answer.
  4. The guards' placeholders are '{name*}' because the daemon routes names with '.*':
     'web/db' is one container name to it.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from porthole.core.target import API_VERSION, SAFE_SEGMENT


ONE = object()
MANY = object()
Template = tuple  # of str (literal), ONE or MANY
_TEMPLATE_VAR = re.compile(r"\{([a-z][a-z0-9_]*)(\*?)\}")


def parse_template(text: str) -> Template:
    if not text.startswith("/") or text == "/":
        raise ValueError("a path template starts with '/' and names an endpoint")
    tokens: list[Any] = []
    for part in text[1:].split("/"):
        match = _TEMPLATE_VAR.fullmatch(part)
        if match:
            tokens.append(MANY if match.group(2) else ONE)
        elif SAFE_SEGMENT.fullmatch(part) and part not in (".", ".."):
            tokens.append(part)
        else:
            raise ValueError(f"bad segment {part!r}: use literal names, '{{id}}' or '{{name*}}'")
    if tokens.count(MANY) > 1:
        raise ValueError("at most one '{name*}' placeholder per template")
    if isinstance(tokens[0], str) and API_VERSION.fullmatch(tokens[0]):
        raise ValueError("templates match the path without the /v1.xx version prefix")
    return tuple(tokens)


def template_matches(template: Template, segments: Sequence[str]) -> bool:
    if MANY not in template:
        return len(template) == len(segments) and all(
            t is ONE or t == s for t, s in zip(template, segments))
    star = template.index(MANY)
    head, tail = template[:star], template[star + 1:]
    if len(segments) < len(head) + len(tail) + 1:
        return False
    tail_segments = segments[len(segments) - len(tail):] if tail else ()
    return template_matches(head, segments[:len(head)]) and template_matches(tail, tail_segments)


def templates_overlap(a: Template, b: Template) -> bool:
    """True when some path matches both templates (used to validate rules against the guards)."""
    seen: set[tuple[int, int]] = set()
    frontier = [(0, 0)]
    while frontier:
        i, j = frontier.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(a) and j == len(b):
            return True
        if i == len(a) or j == len(b):
            continue
        x, y = a[i], b[j]
        if isinstance(x, str) and isinstance(y, str) and x != y:
            continue
        for ni in ((i, i + 1) if x is MANY else (i + 1,)):
            for nj in ((j, j + 1) if y is MANY else (j + 1,)):
                frontier.append((ni, nj))
    return False


# Never forwarded, whatever rules.json says. Placeholders are '{*}' because the daemon routes
# container and image names with '.*', so 'web/db' is one name to it.
NEVER_FORWARDED = {
    "/containers/{name*}/attach/ws": "attach/ws is a websocket that writes to the container's stdin",
    "/debug": "/debug exposes the daemon's profiler",
    "/debug/{path*}": "/debug exposes the daemon's profiler",
    "/session": "/session hijacks the connection for BuildKit",
    "/grpc": "/grpc hijacks the connection for BuildKit",
    "/swarm/unlockkey": "the swarm unlock key decrypts the raft log",
}
# Reads that are not harmless: forwarded only by a rule that says "dangerous": true.
DANGEROUS_READS = {
    "/containers/{name*}/export": "export streams the container's whole filesystem",
    "/containers/{name*}/archive": "archive reads files out of the container",
    "/containers/{name*}/logs": "logs can hold secrets the workload printed",
    "/services/{name*}/logs": "logs can hold secrets the workload printed",
    "/tasks/{name*}/logs": "logs can hold secrets the workload printed",
    "/containers/{name*}/top": "process command lines can hold secrets",
    "/containers/{name*}/changes": "changes lists every path the container wrote or deleted",
    "/images/get": "images/get dumps whole images",
    "/images/{name*}/get": "images/get dumps whole images",
    "/configs": "config objects carry their data",
    "/configs/{id*}": "config objects carry their data",
    "/exec/{id*}/json": "exec inspect reveals command lines of other clients",
    "/distribution/{name*}/json": "distribution asks registries with the daemon's credentials",
    "/images/search": "image search makes the daemon query registries",
    "/plugins/privileges": "plugin privileges makes the daemon query registries",
    # Podman's own API (libpod) has the same reads under /libpod.
    "/libpod/containers/{name*}/export": "export streams the container's whole filesystem",
    "/libpod/containers/{name*}/archive": "archive reads files out of the container",
    "/libpod/containers/{name*}/logs": "logs can hold secrets the workload printed",
    "/libpod/containers/{name*}/top": "process command lines can hold secrets",
    "/libpod/containers/{name*}/changes": "changes lists every path the container wrote or deleted",
    "/libpod/pods/{name*}/top": "process command lines can hold secrets",
    "/libpod/images/export": "images/export dumps whole images",
    "/libpod/images/{name*}/get": "images/get dumps whole images",
    "/libpod/images/search": "image search makes the daemon query registries",
    "/libpod/exec/{id*}/json": "exec inspect reveals command lines of other clients",
    "/libpod/secrets/{name*}/json": "secret inspect returns the secret's data with showsecret=true",
    "/libpod/volumes/{name*}/export": "volume export streams the volume's content",
}
# Dangerous unless the profile redacts what makes them so (invariant 3): path -> (redaction, why).
REDACTED_READS = {
    "/swarm": ("swarm-tokens", "GET /swarm returns the swarm join tokens"),
}


class TemplateIndex:
    """(template, payload) pairs grouped by first path segment, order kept: a request is
    matched against the few templates that can match it rather than against all of them."""

    def __init__(self, items: Iterable[tuple[Template, Any]]) -> None:
        self.items = tuple(items)
        self.wildcard_first = tuple(item for item in self.items if not isinstance(item[0][0], str))
        self.by_first = {first: tuple(item for item in self.items if item[0][0] in (first, ONE, MANY))
                         for first in {item[0][0] for item in self.items if isinstance(item[0][0], str)}}

    def matches(self, segments: Sequence[str]) -> Iterable[Any]:
        """Payloads of the templates that match, in their original order."""
        for template, payload in self.by_first.get(segments[0], self.wildcard_first):
            if template_matches(template, segments):
                yield payload


NEVER_TEMPLATES = [(parse_template(t), why) for t, why in NEVER_FORWARDED.items()]
DANGEROUS_TEMPLATES = [(parse_template(t), why) for t, why in DANGEROUS_READS.items()]
REDACTED_TEMPLATES = [(parse_template(t), guard) for t, guard in REDACTED_READS.items()]
_NEVER_INDEX = TemplateIndex(NEVER_TEMPLATES)
_DANGEROUS_INDEX = TemplateIndex(DANGEROUS_TEMPLATES)
_REDACTED_INDEX = TemplateIndex(REDACTED_TEMPLATES)
NOT_REDACTING: frozenset[str] = frozenset()  # the stricter answer: every REDACTED_READS path is dangerous


def never_forwarded_reason(segments: Sequence[str]) -> str | None:
    return next(iter(_NEVER_INDEX.matches(segments)), None)


def dangerous_reason(segments: Sequence[str], redact: frozenset[str] = NOT_REDACTING) -> str | None:
    """Why the path is a dangerous read for a profile that redacts `redact`, or None."""
    why = next(iter(_DANGEROUS_INDEX.matches(segments)), None)
    if why is None:
        why = next((why for redaction, why in _REDACTED_INDEX.matches(segments) if redaction not in redact), None)
    return why


def dangerous_overlaps(template: Template, redact: frozenset[str] = NOT_REDACTING) -> list[str]:
    """Why each dangerous read a rule's template can match is dangerous, for a profile that
    redacts `redact` ([] for none)."""
    return ([why for guard, why in DANGEROUS_TEMPLATES if templates_overlap(template, guard)]
            + [why for redaction, why in redacted_overlaps(template) if redaction not in redact])


def redacted_overlaps(template: Template) -> list[tuple[str, str]]:
    """(redaction, why) of each REDACTED_READS path a rule's template can match ([] for none)."""
    return [guard for read, guard in REDACTED_TEMPLATES if templates_overlap(template, read)]
