"""The one reading of a request target: canonicalize_target.

What is matched against the rules is exactly what is forwarded: a target is decoded once and
checked, and the daemon is sent Target.forward_form(), rebuilt from the decoded parts, never
the client's bytes.

Invariants (each breach is a Refusal(400) that closes the connection; nothing is normalised):
  1. Only origin-form targets (/path?query); no '#', ';' or '\\' anywhere.
  2. Each path segment is percent-decoded exactly once and must then be a SAFE_SEGMENT: no
     encoded '/', '\\' or '%', no control byte, nothing outside ASCII survives decoding.
  3. No empty, '.' or '..' segment ('//', a trailing '/', dot segments): the daemon would
     normalise them differently from what was matched.
  4. An API version prefix is /v<major>.<minor> (with a patch part only before /libpod); it is
     kept apart from the segments the rules match.
  5. Query keys are QUERY_KEY names, each at most once; values are UTF-8 without control bytes.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import quote


class Refusal(Exception):
    """A request porthole will not forward: HTTP status, reason, and whether to close after.

    `kind` says who refuses: "request" (the request itself: method, framing, never-forwarded
    paths, whatever the rules say), "rule" (the profile's rules: no rule, or a query key or
    value no rule allows) or "dangerous" (a dangerous read the profile does not acknowledge).
    Learn and warn modes forward "rule" refusals only (decide_with_mode)."""

    def __init__(self, status: int, reason: str, *, close: bool = False, kind: str = "request") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.close = close
        self.kind = kind


# Characters a decoded path segment may hold. Container, image, volume, network, node and
# plugin names, IDs, tags and digests all fit; anything else is refused before matching.
SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]*")
QUERY_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
API_VERSION = re.compile(r"v(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})(\.(?:0|[1-9][0-9]{0,3}))?")
_VERSION_LIKE = re.compile(r"[vV][0-9.]+")
_HEX = "0123456789abcdefABCDEF"


def _percent_decode(text: str, *, in_path: bool) -> str:
    """Strict single percent-decoding. Refuses malformed escapes, NUL and control bytes; in a
    path also '/', '\\' and anything outside ASCII. (A decoded '%', or any other character a
    name never holds, is refused by the caller: a segment must be a SAFE_SEGMENT.)"""
    if "%" not in text:
        raw = text.encode("ascii")
    else:
        out = bytearray()
        i = 0
        while i < len(text):
            char = text[i]
            if char == "%":
                pair = text[i + 1:i + 3]
                if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                    raise Refusal(400, f"malformed percent-escape {text[i:i + 3]!r} in the request target", close=True)
                out.append(int(pair, 16))
                i += 3
            else:
                out.append(ord(char))
                i += 1
        raw = bytes(out)
    if any(b < 0x20 or b == 0x7F for b in raw):
        raise Refusal(400, "control byte in the request target", close=True)
    if in_path:
        if any(b > 0x7E for b in raw):
            raise Refusal(400, "non-ASCII byte in the request path", close=True)
        if b"/" in raw or b"\\" in raw:
            raise Refusal(400, "encoded slash or backslash in a path segment", close=True)
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, "query value is not valid UTF-8", close=True) from None


@dataclass(frozen=True)
class Target:
    """A request target in canonical form: what is matched is exactly what is forwarded."""

    version: str | None  # "1.41" or None
    segments: tuple[str, ...]  # decoded path segments, version prefix removed
    query: tuple[tuple[str, str], ...]  # decoded (key, value) pairs, in request order

    @property
    def path(self) -> str:
        return "/" + "/".join(self.segments)

    def query_value(self, key: str) -> str | None:
        return next((v for k, v in self.query if k == key), None)

    @functools.cached_property
    def forward_form_text(self) -> str:
        return self.forward_form()

    def forward_form(self) -> str:
        """The origin-form target sent upstream, rebuilt from the decoded parts."""
        prefix = f"/v{self.version}" if self.version else ""
        text = prefix + self.path
        if self.query:
            text += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in self.query)
        return text


def canonicalize_target(raw: bytes) -> Target:
    """Turn a raw request target into a Target, or raise Refusal(400).

    Only origin-form is accepted. The path is split at the first '?', each segment is
    percent-decoded once and must be a safe segment; empty, '.' and '..' segments ('//',
    trailing '/', dot segments) are refused rather than normalised, because the daemon would
    normalise them differently (redirects) from what we matched.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise Refusal(400, "non-ASCII byte in the request target", close=True) from None
    if not text.startswith("/"):
        raise Refusal(400, "only origin-form request targets (/path?query) are accepted", close=True)
    for char in "#;\\":
        if char in text:
            raise Refusal(400, f"{char!r} is not accepted in a request target", close=True)
    path_text, _, query_text = text.partition("?")
    raw_segments = path_text[1:].split("/")
    segments = []
    for raw_segment in raw_segments:
        segment = _percent_decode(raw_segment, in_path=True)
        if segment in ("", ".", ".."):
            raise Refusal(400, "empty, '.' or '..' path segment (no '//', trailing '/' or dot segments)", close=True)
        if not SAFE_SEGMENT.fullmatch(segment):
            raise Refusal(400, f"path segment {segment!r} holds characters porthole does not accept", close=True)
        segments.append(segment)
    version = None
    if segments and _VERSION_LIKE.fullmatch(segments[0]):  # the daemon routes /v{version:[0-9.]+}
        match = API_VERSION.fullmatch(segments[0])
        # Podman's own API (libpod) is versioned /v<major>.<minor>.<patch>/libpod/...: the
        # patch part is accepted there only; the Docker API never sends one.
        if not match or (match.group(3) and segments[1:2] != ["libpod"]):
            raise Refusal(400, f"API version prefix {segments[0]!r} is not of the form /v<major>.<minor> "
                               "(or /v<major>.<minor>.<patch>/libpod)", close=True)
        version = f"{match.group(1)}.{match.group(2)}{match.group(3) or ''}"
        segments.pop(0)
    if not segments:
        raise Refusal(400, "the request target names no endpoint", close=True)
    query: list[tuple[str, str]] = []
    seen: set[str] = set()
    if query_text:
        for pair in query_text.split("&"):
            raw_key, _, raw_value = pair.partition("=")
            key = _percent_decode(raw_key.replace("+", " "), in_path=False)
            value = _percent_decode(raw_value.replace("+", " "), in_path=False)
            if not QUERY_KEY.fullmatch(key):
                raise Refusal(400, f"query parameter name {key!r} is not accepted", close=True)
            if key in seen:
                raise Refusal(400, f"query parameter {key!r} is repeated", close=True)
            seen.add(key)
            query.append((key, value))
    return Target(version, tuple(segments), tuple(query))


CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
