#!/usr/bin/env python3
"""Porthole: a read-only proxy for the Docker Engine API.

Clients (Traefik, dashboards, the docker CLI) talk to porthole instead of the Docker socket.
Porthole parses every request with h11, decides it against rules.json and forwards only
allowed GET/HEAD requests, rebuilt in canonical form, to the daemon.

The file reads in the order a request flows:
  1. settings      command line, environment, listener URLs
  2. policy        canonical targets, rules.json, decisions (pure functions, no I/O)
  3. logging       one line per request, safe against hostile values
  4. connections   client and upstream state machines
  5. event loop    one selectors loop, timers, signals
  6. entry point   --check, --healthcheck, --version, run
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import os
import re
import selectors
import signal
import socket
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import parse_qsl, quote, urlsplit

import h11

VERSION = "0.1.0"

# --------------------------------------------------------------------------------------------
# 1. Settings
# --------------------------------------------------------------------------------------------

DEFAULT_LISTEN = "tcp://127.0.0.1:2375"
DEFAULT_UPSTREAM = "unix:///var/run/docker.sock"
READ_CHUNK = 65536
CLIENT_HIGH_WATER = 256 * 1024  # stop reading upstream while this much is queued for a client
CLIENT_LOW_WATER = 64 * 1024  # ... and resume once it drains below this
UPSTREAM_MAX_HEAD = 64 * 1024  # a Docker response head is a few hundred bytes
MAX_INFORMATIONAL = 8  # 1xx responses tolerated before the real one
MAX_IDLE_UPSTREAMS = 16
LINGER_SECONDS = 2.0  # how long a closing client may keep sending before we drop it


class UsageError(Exception):
    """A bad command line, environment variable or listener URL (exit status 2)."""


@dataclass(frozen=True)
class Endpoint:
    """Where to listen or connect: a TCP host/port or a unix socket path."""

    url: str
    kind: str  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""
    mode: int | None = None  # unix listeners: file mode of the socket
    gid: int | None = None  # unix listeners: group of the socket
    profile: str = "default"

    @property
    def family(self) -> int:
        if self.kind == "unix":
            return socket.AF_UNIX
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def address(self) -> Any:
        return self.path if self.kind == "unix" else (self.host, self.port)


def parse_endpoint(url: str, *, listener: bool) -> Endpoint:
    """Parse tcp://HOST:PORT or unix:///path, with listener options in the query."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.fragment or parts.username or parts.password:
        raise UsageError(f"{url}: unexpected user, password or fragment")
    allowed = {"mode", "gid", "profile"} if parts.scheme == "unix" else {"profile"}
    if not listener:
        allowed = set()
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UsageError(f"{url}: unknown option(s) {', '.join(unknown)}")
    profile = options.get("profile", "default")
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise UsageError(f"{url}: a unix URL is unix:///absolute/path.sock")
        try:
            mode = int(options["mode"], 8) if "mode" in options else None
            gid = int(options["gid"]) if "gid" in options else None
        except ValueError as exc:
            raise UsageError(f"{url}: mode is octal (0660), gid a number: {exc}") from None
        if mode is not None and not 0 <= mode <= 0o777:
            raise UsageError(f"{url}: mode must be between 0000 and 0777")
        return Endpoint(url, "unix", path=parts.path, mode=mode, gid=gid, profile=profile)
    if parts.scheme == "tcp":
        if parts.path not in ("", "/"):
            raise UsageError(f"{url}: a tcp URL has no path")
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise UsageError(f"{url}: {exc}") from None
        if not host or port is None:
            raise UsageError(f"{url}: a tcp URL is tcp://HOST:PORT or tcp://[::1]:PORT")
        return Endpoint(url, "tcp", host=host, port=port, profile=profile)
    raise UsageError(f"{url}: the scheme must be tcp:// or unix://")


@dataclass(frozen=True)
class Settings:
    listeners: tuple[Endpoint, ...]
    upstream: Endpoint
    rules_path: Path
    log_format: str = "json"
    log_level: str = "info"
    allow_root: bool = False
    allow_hosts: frozenset[str] = frozenset()
    max_connections: int = 1024
    max_streams_per_client: int = 64
    max_head_bytes: int = 16384
    head_timeout: float = 10.0
    idle_timeout: float = 60.0
    write_timeout: float = 30.0
    connect_timeout: float = 5.0
    shutdown_grace: float = 10.0
    state_file: Path | None = None  # where the running proxy records its listeners
    listeners_given: bool = False  # --listen or PORTHOLE_LISTEN was set (else the default)
    mode: str = "run"  # run, check, healthcheck, version


def default_rules_path() -> Path:
    """The rules.json shipped with the program: beside proxy.py, or bundled into the binary."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle and (Path(bundle) / "rules.json").is_file():
        return Path(bundle) / "rules.json"
    if getattr(sys, "frozen", False):
        return Path(sys.executable).resolve().parent / "rules.json"
    return Path(__file__).resolve().parent / "rules.json"


# (option, type, default, help). Each option also reads PORTHOLE_<OPTION> from the environment.
_NUMERIC_OPTIONS = (
    ("max-connections", int, 1024, "most client connections open at once"),
    ("max-streams-per-client", int, 64, "most concurrent streaming requests per client"),
    ("max-head-bytes", int, 16384, "largest request head accepted, in bytes"),
    ("head-timeout", float, 10.0, "seconds a client has to send a whole request head"),
    ("idle-timeout", float, 60.0, "seconds an idle keep-alive connection is kept"),
    ("write-timeout", float, 30.0, "seconds a finite response may stall on a client not reading"),
    ("connect-timeout", float, 5.0, "seconds to connect to the upstream"),
    ("shutdown-grace", float, 10.0, "seconds finite requests get to finish on SIGTERM"),
)
_TRUE = {"1", "true", "yes", "on"}


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Command line first, then PORTHOLE_* environment variables, then defaults."""
    parser = argparse.ArgumentParser(
        prog="porthole",
        description="Read-only proxy for the Docker Engine API. Only GET and HEAD are ever forwarded.",
    )
    parser.add_argument("--listen", action="append", metavar="URL",
                        help=f"tcp://HOST:PORT or unix:///path.sock?mode=0660&gid=N, repeatable; "
                             f"?profile=NAME picks the rules profile (default {DEFAULT_LISTEN})")
    parser.add_argument("--upstream", metavar="URL", help=f"the Docker API (default {DEFAULT_UPSTREAM})")
    parser.add_argument("--rules", metavar="PATH", help="rules file (default: the shipped rules.json)")
    parser.add_argument("--log-format", choices=("json", "text"))
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--allow-host", action="append", metavar="NAME",
                        help="a DNS name accepted in the Host header on TCP listeners, repeatable")
    parser.add_argument("--allow-root", action="store_true", default=None,
                        help="run even as uid 0 (not recommended)")
    parser.add_argument("--state-file", metavar="PATH",
                        help="record the listeners here, so --healthcheck finds them without --listen")
    for name, kind, default, text in _NUMERIC_OPTIONS:
        parser.add_argument(f"--{name}", type=kind, metavar="N", help=f"{text} (default {default})")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--check", action="store_const", dest="mode", const="check",
                       help="validate the rules, print the effective policy and exit")
    modes.add_argument("--healthcheck", action="store_const", dest="mode", const="healthcheck",
                       help="GET /_ping through the first listener; exit 0 if the daemon answered")
    modes.add_argument("--version", action="store_const", dest="mode", const="version")
    args = parser.parse_args(list(argv))

    def env(name: str) -> str | None:
        value = environ.get("PORTHOLE_" + name.upper().replace("-", "_"))
        return value if value not in (None, "") else None

    def env_list(name: str) -> list[str]:
        return [item.strip() for item in (env(name) or "").split(",") if item.strip()]

    given_urls = args.listen or env_list("listen")
    listen_urls = given_urls or [DEFAULT_LISTEN]
    numbers: dict[str, Any] = {}
    for name, kind, default, _ in _NUMERIC_OPTIONS:
        value = getattr(args, name.replace("-", "_"))
        if value is None and env(name) is not None:
            try:
                value = kind(env(name))
            except ValueError:
                raise UsageError(f"PORTHOLE_{name.upper().replace('-', '_')}: not a number") from None
        value = default if value is None else value
        if value <= 0:
            raise UsageError(f"--{name} must be positive")
        numbers[name.replace("-", "_")] = value
    allow_root = args.allow_root if args.allow_root is not None else (env("allow-root") or "").lower() in _TRUE
    log_format = args.log_format or env("log-format") or "json"
    log_level = args.log_level or env("log-level") or "info"
    if log_format not in ("json", "text"):
        raise UsageError("PORTHOLE_LOG_FORMAT must be json or text")
    if log_level not in LOG_LEVELS:
        raise UsageError("PORTHOLE_LOG_LEVEL must be debug, info, warning or error")
    listeners = tuple(parse_endpoint(url, listener=True) for url in listen_urls)
    upstream = parse_endpoint(args.upstream or env("upstream") or DEFAULT_UPSTREAM, listener=False)
    hosts = frozenset(h.lower() for h in (args.allow_host or env_list("allow-hosts")))
    state_file = args.state_file or env("state-file")
    return Settings(
        listeners=listeners, upstream=upstream,
        rules_path=Path(args.rules or env("rules") or default_rules_path()),
        log_format=log_format, log_level=log_level, allow_root=allow_root, allow_hosts=hosts,
        state_file=Path(state_file) if state_file else None, listeners_given=bool(given_urls),
        mode=args.mode or "run", **numbers,
    )


# --------------------------------------------------------------------------------------------
# 2. Policy: pure functions, no I/O
# --------------------------------------------------------------------------------------------

class Refusal(Exception):
    """A request porthole will not forward: HTTP status, reason, and whether to close after."""

    def __init__(self, status: int, reason: str, *, close: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.close = close


# Characters a decoded path segment may hold. Container, image, volume, network, node and
# plugin names, IDs, tags and digests all fit; anything else is refused before matching.
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]*")
_QUERY_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"v(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})")
_VERSION_LIKE = re.compile(r"[vV][0-9.]+")
_HEX = "0123456789abcdefABCDEF"


def _percent_decode(text: str, *, in_path: bool) -> str:
    """Strict single percent-decoding. Refuses malformed escapes, NUL and control bytes;
    in a path also '/', '%', '\\' and anything outside ASCII."""
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
        if not _SAFE_SEGMENT.fullmatch(segment):
            raise Refusal(400, f"path segment {segment!r} holds characters porthole does not accept", close=True)
        segments.append(segment)
    version = None
    if segments and _VERSION_LIKE.fullmatch(segments[0]):  # the daemon routes /v{version:[0-9.]+}
        match = _VERSION.fullmatch(segments[0])
        if not match:
            raise Refusal(400, f"API version prefix {segments[0]!r} is not of the form /v<major>.<minor>", close=True)
        version = f"{match.group(1)}.{match.group(2)}"
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
            if not _QUERY_KEY.fullmatch(key):
                raise Refusal(400, f"query parameter name {key!r} is not accepted", close=True)
            if key in seen:
                raise Refusal(400, f"query parameter {key!r} is repeated", close=True)
            seen.add(key)
            query.append((key, value))
    return Target(version, tuple(segments), tuple(query))


# Path templates: '/containers/{id}/json'. '{name}' matches one safe segment, '{name*}' one or
# more (image and plugin names hold '/'). No regular expressions, by design.
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
        elif _SAFE_SEGMENT.fullmatch(part) and part not in (".", ".."):
            tokens.append(part)
        else:
            raise ValueError(f"bad segment {part!r}: use literal names, '{{id}}' or '{{name*}}'")
    if tokens.count(MANY) > 1:
        raise ValueError("at most one '{name*}' placeholder per template")
    if isinstance(tokens[0], str) and _VERSION.fullmatch(tokens[0]):
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
}
# Reads that are not harmless: forwarded only by a rule that says "dangerous": true.
DANGEROUS_READS = {
    "/containers/{name*}/export": "export streams the container's whole filesystem",
    "/containers/{name*}/archive": "archive reads files out of the container",
    "/containers/{name*}/logs": "logs can hold secrets the workload printed",
    "/services/{name*}/logs": "logs can hold secrets the workload printed",
    "/tasks/{name*}/logs": "logs can hold secrets the workload printed",
    "/containers/{name*}/top": "process command lines can hold secrets",
    "/images/get": "images/get dumps whole images",
    "/images/{name*}/get": "images/get dumps whole images",
    "/swarm": "GET /swarm returns the swarm join tokens",
    "/swarm/unlockkey": "the swarm unlock key decrypts the raft log",
    "/configs": "config objects carry their data",
    "/configs/{id*}": "config objects carry their data",
    "/exec/{id*}/json": "exec inspect reveals command lines of other clients",
    "/distribution/{name*}/json": "distribution asks registries with the daemon's credentials",
    "/images/search": "image search makes the daemon query registries",
    "/plugins/privileges": "plugin privileges makes the daemon query registries",
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


_NEVER = [(parse_template(t), why) for t, why in NEVER_FORWARDED.items()]
_DANGEROUS = [(parse_template(t), why) for t, why in DANGEROUS_READS.items()]
_NEVER_INDEX = TemplateIndex(_NEVER)
_DANGEROUS_INDEX = TemplateIndex(_DANGEROUS)


def never_forwarded_reason(segments: Sequence[str]) -> str | None:
    return next(iter(_NEVER_INDEX.matches(segments)), None)


def dangerous_reason(segments: Sequence[str]) -> str | None:
    return next(iter(_DANGEROUS_INDEX.matches(segments)), None)


@dataclass(frozen=True)
class Rule:
    profile: str
    index: int
    methods: frozenset[str]
    path: str
    template: Template
    query: Mapping[str, frozenset[str] | None] | None  # None: any query; value None: any value
    dangerous: bool

    @property
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

    def __post_init__(self) -> None:
        indexes = {name: TemplateIndex((rule.template, rule) for rule in rules)
                   for name, rules in self.profiles.items()}
        object.__setattr__(self, "indexes", indexes)


class PolicyError(ValueError):
    def __init__(self, source: str, where: str, message: str) -> None:
        super().__init__(f"{source}: {where}: {message}")


ALLOWED_METHODS = ("GET", "HEAD")
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
    except json.JSONDecodeError as exc:
        raise fail("$", f"not valid JSON: {exc}") from None
    check_keys(document, "$", {"version", "profiles"}, {"$schema", "description"})
    if document["version"] != 1 or isinstance(document["version"], bool):
        raise fail("$.version", "must be 1")
    raw_profiles = document["profiles"]
    if not isinstance(raw_profiles, dict) or not raw_profiles:
        raise fail("$.profiles", "must be a non-empty object")
    own_rules: dict[str, list[Rule]] = {}
    parents: dict[str, str | None] = {}
    descriptions: dict[str, str] = {}
    for name, body in raw_profiles.items():
        where = f"$.profiles.{name}"
        if not _PROFILE_NAME.fullmatch(name):
            raise fail(where, "profile names are lowercase letters, digits, '-' and '_'")
        check_keys(body, where, {"rules"}, {"description", "extends"})
        if not isinstance(body.get("description", ""), str):
            raise fail(where + ".description", "must be a string")
        descriptions[name] = body.get("description", "")
        parents[name] = body.get("extends")
        if parents[name] is not None and parents[name] not in raw_profiles:
            raise fail(where + ".extends", f"no profile named {parents[name]!r}")
        if not isinstance(body["rules"], list):
            raise fail(where + ".rules", "must be a list")
        own_rules[name] = [_load_rule(raw, name, i, f"{where}.rules[{i}]", fail)
                           for i, raw in enumerate(body["rules"])]
    profiles: dict[str, tuple[Rule, ...]] = {}
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
    if "default" not in profiles:
        raise fail("$.profiles", "a profile named 'default' is required")
    return Policy(source, profiles, descriptions)


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
            if not _QUERY_KEY.fullmatch(key):
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
    for guard, why in _NEVER:
        if templates_overlap(template, guard):
            raise fail(where + ".path", f"matches a path that is never forwarded ({why})")
    risky = [why for guard, why in _DANGEROUS if templates_overlap(template, guard)]
    if risky and not dangerous:
        raise fail(where, f"{raw['path']} is a dangerous read ({risky[0]}); "
                          "add \"dangerous\": true to acknowledge it")
    if dangerous and not risky:
        raise fail(where + ".dangerous", f"{raw['path']} is not a dangerous read; remove the flag")
    return Rule(profile, index, frozenset(methods), raw["path"], template, query, dangerous)


def describe_policy(policy: Policy) -> str:
    lines = [f"policy from {policy.source}"]
    for name, rules in policy.profiles.items():
        lines.append(f"profile {name}: {policy.descriptions.get(name, '')}".rstrip(": "))
        for rule in rules:
            query = "any query" if rule.query is None else (
                "no query" if not rule.query else "query " + ", ".join(
                    f"{k}={'*' if v is None else '|'.join(sorted(v))}" for k, v in rule.query.items()))
            flag = "  [dangerous read, acknowledged]" if rule.dangerous else ""
            lines.append(f"  {'|'.join(sorted(rule.methods)):<8} {rule.path}  ({query}){flag}")
    lines.append("never forwarded: any method but GET/HEAD, Upgrade, request bodies, "
                 + ", ".join(NEVER_FORWARDED))
    return "\n".join(lines)


_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding", b"upgrade"})
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
    rule: Rule
    streaming: bool


def _header_values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_HOST_SYNTAX = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._~-]*)(:[0-9]{1,5})?")
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


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
    """Responses with no natural end: they get back-pressure but no write-stall timeout."""
    last = target.segments[-1]
    if target.segments == ("events",):
        return True
    if last == "logs":
        return is_truthy(target.query_value("follow"))
    if last == "stats" and target.segments[0] == "containers":
        stream = target.query_value("stream")
        return stream is None or is_truthy(stream)
    return False


def decide(policy: Policy, facts: RequestFacts, allow_hosts: frozenset[str] = frozenset()) -> Decision:
    """Return the Decision to forward, or raise Refusal with the reason."""
    if facts.method not in ALLOWED_METHODS:
        raise Refusal(403, f"method {facts.method} is never forwarded: porthole is read-only", close=True)
    if facts.http_version not in (b"1.0", b"1.1"):
        raise Refusal(505, f"HTTP/{facts.http_version.decode('latin-1')} is not supported", close=True)
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in facts.headers:
        if _CONTROL_BYTES.search(value):
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
    danger = dangerous_reason(target.segments)
    query_problem = None
    for rule in index.matches(target.segments):
        if facts.method in rule.methods:
            problem = rule.query_problem(target)
            if problem:
                query_problem = query_problem or problem
                continue
            if danger and not rule.dangerous:  # defence in depth: load_policy refuses such rules
                break
            return Decision(target, rule, is_streaming(target))
    if danger:
        raise Refusal(403, f"{facts.method} {target.path} is a dangerous read ({danger}) "
                           f"and no rule in profile {facts.profile!r} acknowledges it")
    if query_problem:
        raise Refusal(403, query_problem)
    raise Refusal(403, f"no rule in profile {facts.profile!r} allows {facts.method} {target.path}")


def forwarded_request(method: str, target: Target, headers: Sequence[tuple[bytes, bytes]]) -> h11.Request:
    """The request porthole sends upstream: canonical target, fixed Host, allowlisted headers."""
    kept = [(name, value) for name, value in headers if name in FORWARDED_REQUEST_HEADERS]
    # _parsed: the header values were validated by h11 when it parsed the client's request and
    # the target is built from safe characters only, so h11 need not run its regexes again.
    return h11.Request(method=method.encode("ascii"), target=target.forward_form_text.encode("ascii"),
                       headers=[(b"Host", b"docker"), *kept], _parsed=True)


def has_both_framings(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """A response with Content-Length and Transfer-Encoding is a smuggling shape: refuse it."""
    names = {name.lower() for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


def relayed_response_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones (h11 re-frames the body itself)."""
    headers = list(headers)
    listed = {token.strip().lower() for name, value in headers
              if name.lower() == b"connection" for token in value.split(b",")}
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower not in _HOP_BY_HOP and lower not in listed and not lower.startswith(b"proxy-"):
            kept.append((name, value))
    return kept


def error_body(message: str) -> bytes:
    return json.dumps({"message": f"porthole: {message}"}).encode() + b"\n"


# --------------------------------------------------------------------------------------------
# 3. Logging: one line per event on stderr. json.dumps escapes every control character, so a
#    hostile target or header can never start a new line.
# --------------------------------------------------------------------------------------------

LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_TEXT_SAFE = re.compile(r"[A-Za-z0-9_./:@{}|\[\]=+-]+")


class Log:
    def __init__(self, fmt: str = "json", level: str = "info", stream: Any = None) -> None:
        self.fmt = fmt
        self.threshold = LOG_LEVELS[level]
        self.stream = stream or sys.stderr
        self.pending: list[str] | None = None  # set by the event loop: one write per loop pass
        self.second, self.second_text = -1, ""

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        if LOG_LEVELS[level] < self.threshold:
            return
        now = time.time()
        second = int(now)
        if second != self.second:  # strftime once a second, not once a line
            self.second, self.second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = f"{self.second_text}.{int(now % 1 * 1000):03d}Z"
        record = {"time": stamp, "level": level, "event": event, **fields}
        if self.fmt == "json":
            line = json.dumps(record, ensure_ascii=True, default=str)
        else:
            line = " ".join(f"{k}={self._text(v)}" for k, v in record.items())
        if self.pending is not None:
            self.pending.append(line)
        else:
            self.write([line])

    def enabled(self, level: str) -> bool:
        return LOG_LEVELS[level] >= self.threshold

    def flush(self) -> None:
        if self.pending:
            lines, self.pending = self.pending, []
            self.write(lines)

    def write(self, lines: list[str]) -> None:
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not take the proxy down

    @staticmethod
    def _text(value: Any) -> str:
        text = "-" if value is None else str(value)
        return text if _TEXT_SAFE.fullmatch(text) else json.dumps(text, ensure_ascii=True)


# --------------------------------------------------------------------------------------------
# 4. Connections
# --------------------------------------------------------------------------------------------

def upstream_error_message(upstream: Endpoint, exc: OSError) -> str:
    """Say what is wrong with the daemon socket, and for EACCES which group to add."""
    if exc.errno in (errno.EACCES, errno.EPERM) and upstream.kind == "unix":
        try:
            info = os.stat(upstream.path)
            owner = f"owned by uid {info.st_uid} gid {info.st_gid}, mode {stat.S_IMODE(info.st_mode):04o}"
            hint = (f"add the socket's group {info.st_gid} to porthole "
                    f"(docker run --group-add {info.st_gid}, or SupplementaryGroups={info.st_gid})")
        except OSError:
            owner, hint = "owner unknown", "add the socket's group to porthole"
        groups = sorted(set(os.getgroups()) | {os.getgid()})
        return (f"permission denied connecting to {upstream.path} ({owner}); porthole runs as "
                f"uid {os.getuid()} with groups {groups}: {hint}")
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return f"cannot reach the Docker daemon at {upstream.url}: {os.strerror(exc.errno)} (is dockerd running?)"
    return f"cannot reach the Docker daemon at {upstream.url}: {exc.strerror or exc}"


def set_interest(selector: selectors.BaseSelector, sock: socket.socket, mask: int, data: Any) -> None:
    """Register, modify or unregister a socket so the selector watches exactly `mask`."""
    try:
        key = selector.get_key(sock)
    except KeyError:
        if mask:
            selector.register(sock, mask, data)
        return
    if not mask:
        selector.unregister(sock)
    elif key.events != mask:
        selector.modify(sock, mask, data)


class Upstream:
    """One connection to the daemon, with its own h11 client state machine."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=UPSTREAM_MAX_HEAD)
        self.outbuf = bytearray()
        self.connecting = False
        self.connect_deadline = 0.0
        self.reused = False  # came from the idle pool: a failure before any byte may be retried
        self.received_any = False
        self.informational = 0
        self.paused = False  # back-pressure: the client has too much queued
        self.exchange: Exchange | None = None
        self.owner: Client | None = None  # the client of the latest exchange, for error handling
        self.stream: SharedStream | None = None  # set when this connection feeds a shared stream
        self.closed = False

    def start_connect(self, timeout: float) -> None:
        """Raises OSError at once for the usual unix-socket failures (ENOENT, EACCES, ...)."""
        code = self.sock.connect_ex(self.endpoint.address)
        if code == errno.EINPROGRESS and self.endpoint.kind == "tcp":
            self.connecting = True
            self.connect_deadline = time.monotonic() + timeout
        elif code == errno.EAGAIN:
            raise OSError(errno.EAGAIN, "the daemon's socket backlog is full")
        elif code:
            raise OSError(code, os.strerror(code))
        if self.endpoint.kind == "tcp":
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish_connect(self) -> None:
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))
        self.connecting = False

    def reusable(self) -> bool:
        """Only a connection that ended its exchange cleanly with nothing extra goes back."""
        return (not self.closed and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE
                and not self.h11.trailing_data[0])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


@dataclass
class Exchange:
    """One request/response on a client connection, from request head to its log line."""

    client: Client
    facts: RequestFacts
    started: float
    decision: Decision | None = None
    status: int | None = None
    outcome: str = "allow"  # allow, deny or error
    reason: str | None = None
    body_bytes: int = 0
    upstream: Upstream | None = None
    response_started: bool = False
    retried: bool = False
    stream: SharedStream | None = None


@dataclass
class SharedStream:
    """One upstream /events subscription fanned out to every client asking for the same
    canonical target: the daemon serves one subscriber, and an event costs porthole one parse
    plus one send per watcher. A lone watcher that falls CLIENT_HIGH_WATER behind pauses the
    upstream, as an unshared stream would; with others sharing it, it is disconnected instead
    (it must not hold them up)."""

    key: str
    upstream: Upstream
    exchanges: list[Exchange] = field(default_factory=list)
    head: h11.Response | None = None


class Client:
    """One client connection: an h11 server state machine plus bounded buffers.

    state: "reading"  waiting for (or parsing) a request head
           "waiting"  request forwarded, no response head yet
           "relaying" response body flowing from upstream
           "closing"  flushing the last bytes; what the client still sends is discarded
    """

    def __init__(self, sock: socket.socket, listener: Endpoint, peer: str, identity: str,
                 max_head_bytes: int) -> None:
        self.sock = sock
        self.listener = listener
        self.peer = peer
        self.identity = identity  # whom per-client limits count against
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.backlog_limit = 4 * max_head_bytes
        self.state = "reading"
        self.inbuf = bytearray()  # bytes that arrived while a request was in flight
        self.outbuf = bytearray()
        self.exchange: Exchange | None = None
        self.cycle_started = time.monotonic()
        self.first_byte_at: float | None = None
        self.last_progress = time.monotonic()
        self.eof = False  # the client sent FIN
        self.eof_fed = False  # ... and h11 has been told
        self.parsing = False  # inside Proxy.process_client for this client
        self.cycle_bytes = 0  # bytes h11 has been given since this request cycle began
        self.close_after_response = False
        self.linger_until = 0.0
        self.closed = False

    def queue(self, data: bytes) -> None:
        if not self.outbuf:
            self.last_progress = time.monotonic()  # the write-stall clock starts now
        self.outbuf += data


# --------------------------------------------------------------------------------------------
# 5. Event loop
# --------------------------------------------------------------------------------------------

class Proxy:
    def __init__(self, settings: Settings, policy: Policy, log: Log) -> None:
        self.settings = settings
        self.policy = policy
        self.log = log
        self.selector = selectors.DefaultSelector()
        self.listeners: list[tuple[socket.socket, Endpoint]] = []
        self.clients: set[Client] = set()
        self.idle_upstreams: list[Upstream] = []
        self.streams_per_client: dict[str, int] = {}
        self.shared_streams: dict[str, SharedStream] = {}
        self.accepting = False
        self.accept_paused_until = 0.0
        self.stopping_since: float | None = None
        self.signals_received: list[int] = []
        self.wakeup_r, self.wakeup_w = socket.socketpair()

    # ---- set-up ------------------------------------------------------------------------------

    def bind(self) -> None:
        for endpoint in self.settings.listeners:
            if endpoint.profile not in self.policy.profiles:
                raise UsageError(f"{endpoint.url}: no profile {endpoint.profile!r} in {self.policy.source}")
            sock = bind_unix(endpoint) if endpoint.kind == "unix" else bind_tcp(endpoint)
            sock.setblocking(False)
            self.listeners.append((sock, endpoint))
        self.set_accepting(True)
        self.wakeup_r.setblocking(False)
        self.wakeup_w.setblocking(False)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, "wakeup")
        signal.set_wakeup_fd(self.wakeup_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda num, frame: self.signals_received.append(num))
        self.write_state_file()
        self.log("info", "listening", listeners=[e.url for _, e in self.listeners],
                 upstream=self.settings.upstream.url, rules=self.policy.source,
                 profiles=sorted(self.policy.profiles), version=VERSION, pid=os.getpid())

    def write_state_file(self) -> None:
        """Record our listeners for --healthcheck, which runs as a separate process (the image's
        HEALTHCHECK) and otherwise could not know which --listen the container was given."""
        path = self.settings.state_file
        if path is None:
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            temporary.write_text(json.dumps({"pid": os.getpid(), "listen": [e.url for _, e in self.listeners]}))
            os.replace(temporary, path)
        except OSError as exc:
            self.log("warning", "state_file_failed", path=str(path), error=exc.strerror)

    def remove_state_file(self) -> None:
        if self.settings.state_file is not None:
            with contextlib.suppress(OSError):
                self.settings.state_file.unlink()

    def set_accepting(self, on: bool) -> None:
        if on != self.accepting:
            for sock, endpoint in self.listeners:
                set_interest(self.selector, sock, selectors.EVENT_READ if on else 0, ("listener", endpoint))
            self.accepting = on

    def maybe_resume_accepting(self, now: float) -> None:
        if (not self.accepting and self.stopping_since is None and now >= self.accept_paused_until
                and len(self.clients) < self.settings.max_connections):
            self.set_accepting(True)

    # ---- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        last_sweep = 0.0
        self.log.pending = []
        while self.stopping_since is None or self.clients:
            self.log.flush()
            for key, mask in self.selector.select(timeout=0.25):
                tag = key.data
                try:
                    if tag == "wakeup":
                        self.drain_wakeup()
                    elif isinstance(tag, tuple):
                        self.accept(key.fileobj, tag[1])  # type: ignore[arg-type]
                    elif isinstance(tag, Client):
                        self.on_client_event(tag, mask)
                    elif isinstance(tag, Upstream):
                        self.on_upstream_event(tag, mask)
                except Exception as exc:  # a bug on one connection must not stop the others
                    self.log("error", "internal_error", error=repr(exc))
                    owner = tag if isinstance(tag, Client) else getattr(tag, "owner", None)
                    if isinstance(tag, Upstream) and tag.stream is not None:
                        self.fail_stream(tag.stream, "internal error")
                    elif isinstance(tag, Upstream):
                        self.drop_upstream(tag)
                    if isinstance(owner, Client):
                        self.close_client(owner, abort=True)
            self.log.flush()
            self.handle_signals()
            now = time.monotonic()
            if now - last_sweep >= 0.25:
                last_sweep = now
                self.sweep_timers(now)
        self.remove_state_file()
        # The onefile bootloaders forward a signal sent to the whole process group, so a late
        # copy can arrive while we exit, after Python has put the default handlers back.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        self.log("info", "shutdown", reason="all connections closed")
        self.log.flush()
        self.log.pending = None
        return 0

    def drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.wakeup_r.recv(4096):
                pass

    def handle_signals(self) -> None:
        while self.signals_received:
            signum = self.signals_received.pop(0)
            if signum == signal.SIGHUP:
                self.reload()
            elif self.stopping_since is None:
                self.begin_shutdown(signal.Signals(signum).name)

    def reload(self) -> None:
        """SIGHUP: swap in the new rules only if they are valid; otherwise keep the old ones."""
        try:
            policy = load_policy(self.settings.rules_path.read_text(encoding="utf-8"), str(self.settings.rules_path))
            missing = sorted({e.profile for _, e in self.listeners} - policy.profiles.keys())
            if missing:
                raise PolicyError(str(self.settings.rules_path), "$.profiles",
                                  f"a listener uses profile {missing[0]!r}, which is gone")
        except (OSError, UnicodeDecodeError, PolicyError) as exc:
            self.log("error", "reload_failed", error=str(exc), kept=self.policy.source)
            return
        self.policy = policy
        self.log("info", "reload", rules=policy.source, profiles=sorted(policy.profiles))

    def begin_shutdown(self, why: str) -> None:
        """Stop accepting; finite requests get the grace period, streams end now."""
        self.stopping_since = time.monotonic()
        self.log("info", "stopping", signal=why, open_connections=len(self.clients),
                 grace_seconds=self.settings.shutdown_grace)
        self.set_accepting(False)
        for sock, endpoint in self.listeners:
            sock.close()
            if endpoint.kind == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(endpoint.path)
        self.listeners.clear()
        for upstream in list(self.idle_upstreams):
            self.drop_upstream(upstream)
        for client in list(self.clients):
            exchange = client.exchange
            if exchange is None:
                self.start_closing(client)
            elif exchange.decision and exchange.decision.streaming:
                self.end_stream_for_shutdown(client, exchange)
            else:
                client.close_after_response = True

    def sweep_timers(self, now: float) -> None:
        settings = self.settings
        self.maybe_resume_accepting(now)
        if self.stopping_since is not None and now - self.stopping_since > settings.shutdown_grace:
            for client in list(self.clients):
                self.close_client(client, abort=True, reason="shutdown grace period over")
            return
        for client in list(self.clients):
            exchange = client.exchange
            streaming = exchange is not None and exchange.decision is not None and exchange.decision.streaming
            if client.outbuf and not streaming and now - client.last_progress > settings.write_timeout:
                self.close_client(client, abort=True, reason="client stopped reading the response")
            elif client.state == "closing":
                if now > client.linger_until:
                    self.close_client(client)
            elif client.state == "reading" and exchange is None and not client.outbuf:
                if client.first_byte_at is not None:
                    if now - client.first_byte_at > settings.head_timeout:
                        self.refuse(client, Refusal(408, "request head not received in time", close=True))
                elif now - client.cycle_started > settings.idle_timeout:
                    self.start_closing(client)
            upstream = exchange.upstream if exchange else None
            if upstream and upstream.connecting and now > upstream.connect_deadline:
                self.upstream_failed(upstream, OSError(errno.ETIMEDOUT, "connect timed out"))

    # ---- accepting ---------------------------------------------------------------------------

    def accept(self, listener: socket.socket, endpoint: Endpoint) -> None:
        for _ in range(64):  # bounded, so one busy listener cannot starve the others
            if len(self.clients) >= self.settings.max_connections:
                self.set_accepting(False)
                return
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop polling the listeners briefly instead of spinning.
                    self.log("warning", "accept_paused", error=os.strerror(exc.errno))
                    self.set_accepting(False)
                    self.accept_paused_until = time.monotonic() + 0.1
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            sock.setblocking(False)
            if endpoint.kind == "unix":
                pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                peer, identity = f"uid={uid} gid={gid} pid={pid}", f"uid={uid}"
            else:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
                identity = address[0]
            client = Client(sock, endpoint, peer, identity, self.settings.max_head_bytes)
            self.clients.add(client)
            self.selector.register(sock, selectors.EVENT_READ, client)

    # ---- client side -------------------------------------------------------------------------

    def on_client_event(self, client: Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.write_client(client)
            self.resume_upstream(client)
            if client.state == "reading" and not client.closed and len(client.outbuf) < CLIENT_LOW_WATER:
                self.process_client(client)  # parsing paused while our answers were unread
        if client.closed or not mask & selectors.EVENT_READ:
            return
        try:
            data = client.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self.close_client(client, abort=True)
            return
        if client.state == "closing":
            if not data:
                self.close_client(client)
            return  # discarded: we only wait until the client has read our last answer
        if not data:
            client.eof = True
            if client.exchange is not None:
                # Gone mid-exchange (as nginx reads it): free the upstream at once rather than
                # hold a daemon connection, a stream slot and a connection slot for nobody.
                self.close_client(client, reason="client went away")
                return
        elif client.first_byte_at is None:
            client.first_byte_at = time.monotonic()
        client.inbuf += data  # h11 gets it only when it asks for more (see process_client)
        if client.state == "reading":
            self.process_client(client)
        else:
            self.update_client_interest(client)

    def process_client(self, client: Client) -> None:
        """Parse and handle the client's requests while it is waiting for one.

        Re-entrant calls (a locally answered request finishing inside this loop) return at
        once: the outer loop picks up the next pipelined request, so a long pipeline costs no
        stack depth."""
        if client.parsing:
            return
        client.parsing = True
        try:
            self.parse_requests(client)
        finally:
            client.parsing = False
        self.update_client_interest(client)

    def parse_requests(self, client: Client) -> None:
        while client.state == "reading" and not client.closed:
            if len(client.outbuf) >= CLIENT_HIGH_WATER:
                self.write_client(client)
                if client.closed or len(client.outbuf) >= CLIENT_HIGH_WATER:
                    break  # answers pile up unread: parse more once the client drains them
            try:
                event = client.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self.refuse(client, Refusal(exc.error_status_hint, f"malformed request: {exc}", close=True))
                return
            if event is h11.NEED_DATA:
                # Feed h11 one chunk at a time, only when it asks: so what h11 holds stays
                # bounded and the backlog in inbuf is what stops us reading a flooding client.
                if client.inbuf:
                    chunk = bytes(client.inbuf[:READ_CHUNK])
                    del client.inbuf[:READ_CHUNK]
                    client.h11.receive_data(chunk)
                    client.cycle_bytes += len(chunk)
                    continue
                if client.eof and not client.eof_fed:
                    client.eof_fed = True
                    client.h11.receive_data(b"")
                    continue
                break
            if isinstance(event, h11.Request):
                self.on_request(client, event)
            elif isinstance(event, h11.ConnectionClosed):
                self.start_closing(client)
                return
            else:  # a refused request's body is never read: we close instead
                break

    def on_request(self, client: Client, request: h11.Request) -> None:
        headers = list(request.headers)
        facts = RequestFacts(request.method.decode("latin-1"), request.target, headers,
                             client.listener.kind, client.listener.profile, request.http_version)
        exchange = Exchange(client, facts, time.monotonic())
        client.exchange = exchange
        has_body = bool(_header_values(headers, b"transfer-encoding")) or any(
            v.strip() != b"0" for v in _header_values(headers, b"content-length"))
        if not has_body and client.h11.their_state is h11.SEND_BODY:
            client.h11.next_event()  # the EndOfMessage of a body-less request, already framed
        # Exact raw size, whitespace included, however the bytes arrived: what h11 was given
        # this cycle minus what it has left over after the head.
        head_size = client.cycle_bytes - len(client.h11.trailing_data[0])
        try:
            if head_size > self.settings.max_head_bytes:
                raise Refusal(431, f"request head of {head_size} bytes exceeds "
                                   f"--max-head-bytes {self.settings.max_head_bytes}", close=True)
            decision = decide(self.policy, facts, self.settings.allow_hosts)
            if decision.streaming:
                active = self.streams_per_client.get(client.identity, 0)
                if active >= self.settings.max_streams_per_client:
                    raise Refusal(429, f"this client already has {active} streams open "
                                       f"(--max-streams-per-client {self.settings.max_streams_per_client})")
        except Refusal as refusal:
            self.refuse(client, refusal)
            return
        exchange.decision = decision
        if decision.streaming:
            self.streams_per_client[client.identity] = self.streams_per_client.get(client.identity, 0) + 1
        client.state = "waiting"
        if is_shareable(facts.method, decision.target):
            self.join_stream(exchange)
        else:
            self.forward(exchange)

    def refuse(self, client: Client, refusal: Refusal) -> None:
        """Answer locally with a Docker-style JSON error."""
        exchange = client.exchange
        if exchange is None:  # the request head never parsed: log what we know
            exchange = Exchange(client, RequestFacts("-", b"", [], client.listener.kind, client.listener.profile),
                                time.monotonic())
            client.exchange = exchange
        exchange.outcome = "deny" if refusal.status in (403, 429) else "error"
        exchange.reason = refusal.reason
        self.respond_locally(exchange, refusal.status, refusal.reason, close=refusal.close)

    def respond_locally(self, exchange: Exchange, status: int, message: str, close: bool) -> None:
        client = exchange.client
        body = error_body(message)
        exchange.status = status
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
        if close:
            headers.append((b"Connection", b"close"))
            client.close_after_response = True
        try:
            self.send_to_client(client, h11.Response(status_code=status, headers=headers))
            if exchange.facts.method != "HEAD":
                self.send_to_client(client, h11.Data(data=body))
            self.send_to_client(client, h11.EndOfMessage())
        except h11.LocalProtocolError:  # h11 cannot answer in this state (e.g. after an error)
            client.close_after_response = True
        self.finish_exchange(client)

    def send_to_client(self, client: Client, event: Any) -> None:
        data = client.h11.send(event)
        if data:
            client.queue(data)
        if isinstance(event, h11.Data) and client.exchange:
            client.exchange.body_bytes += len(event.data)

    def finish_exchange(self, client: Client) -> None:
        """The response is fully queued: log it, and get ready for the next request."""
        exchange = client.exchange
        if exchange is not None:
            self.end_exchange(exchange)
        if (client.close_after_response or self.stopping_since is not None
                or client.h11.our_state is not h11.DONE or client.h11.their_state is not h11.DONE):
            self.start_closing(client)
            return
        client.h11.start_next_cycle()
        client.state = "reading"
        client.cycle_started = time.monotonic()
        client.cycle_bytes = len(client.h11.trailing_data[0])  # pipelined bytes h11 already holds
        client.first_byte_at = client.cycle_started if client.inbuf or client.cycle_bytes else None
        self.write_client(client)
        if not client.closed:
            self.process_client(client)

    def end_exchange(self, exchange: Exchange) -> None:
        """Log the exchange exactly once and give back what it held."""
        client = exchange.client
        if exchange.upstream is not None:
            self.drop_upstream(exchange.upstream)
            exchange.upstream = None
        if exchange.stream is not None:
            self.leave_stream(exchange)
        if exchange.decision and exchange.decision.streaming:
            count = self.streams_per_client.get(client.identity, 0) - 1
            if count > 0:
                self.streams_per_client[client.identity] = count
            else:
                self.streams_per_client.pop(client.identity, None)
        facts, decision = exchange.facts, exchange.decision
        if self.log.enabled("info"):
            self.log("info", "request", listener=client.listener.url, client=client.peer,
                     method=facts.method, target=facts.target.decode("latin-1"),
                     path=decision.target.forward_form_text if decision else None,
                     decision=exchange.outcome, rule=decision.rule.label if decision else None,
                     reason=exchange.reason, status=exchange.status, bytes=exchange.body_bytes,
                     duration_ms=round((time.monotonic() - exchange.started) * 1000, 3))
        client.exchange = None

    def start_closing(self, client: Client) -> None:
        """Send what is queued, then close. Reading goes on (discarded) meanwhile so the kernel
        does not reset the connection before the client has read our answer."""
        client.state = "closing"
        client.linger_until = time.monotonic() + LINGER_SECONDS
        client.inbuf.clear()
        self.write_client(client)

    def write_client(self, client: Client) -> None:
        if client.closed:
            return
        if client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close_client(client, abort=True, reason="client went away")
                return
            if sent:
                del client.outbuf[:sent]
                client.last_progress = time.monotonic()
        if client.state == "closing" and not client.outbuf:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_WR)
            if client.eof:
                self.close_client(client)
                return
        self.update_client_interest(client)

    def update_client_interest(self, client: Client) -> None:
        if client.closed:
            return
        mask = selectors.EVENT_WRITE if client.outbuf else 0
        if not client.eof and len(client.inbuf) < client.backlog_limit:
            mask |= selectors.EVENT_READ  # a full pipelining backlog stops reading this client
        set_interest(self.selector, client.sock, mask, client)

    def close_client(self, client: Client, abort: bool = False, reason: str | None = None) -> None:
        if client.closed:
            return
        exchange = client.exchange
        if exchange is not None:
            if exchange.outcome == "allow" and (abort or exchange.status is None):
                exchange.outcome = "error"
            exchange.reason = exchange.reason or reason or "client went away"
            self.end_exchange(exchange)
        client.closed = True
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        if abort:
            # RST instead of FIN: a truncated response must not look like a clean end.
            with contextlib.suppress(OSError):
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.sock.close()
        self.clients.discard(client)
        self.maybe_resume_accepting(time.monotonic())

    def end_stream_for_shutdown(self, client: Client, exchange: Exchange) -> None:
        if not exchange.response_started:
            self.close_client(client, reason="proxy shutting down")
            return
        exchange.reason = "stream ended: proxy shutting down"
        try:
            self.send_to_client(client, h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.close_client(client, abort=True)
            return
        client.close_after_response = True
        self.finish_exchange(client)

    # ---- upstream side -----------------------------------------------------------------------

    def forward(self, exchange: Exchange) -> None:
        decision = exchange.decision
        assert decision is not None
        upstream = self.idle_upstreams.pop() if self.idle_upstreams else None
        if upstream is not None:
            upstream.reused = True
        else:
            upstream = self.connect_upstream(exchange)
            if upstream is None:
                return
        upstream.exchange = exchange
        upstream.owner = exchange.client
        upstream.received_any = False
        upstream.informational = 0
        upstream.paused = False
        exchange.upstream = upstream
        self.send_request(upstream, exchange)

    def send_request(self, upstream: Upstream, exchange: Exchange) -> None:
        """Queue the canonical request on the upstream connection and send what it takes."""
        assert exchange.decision is not None
        request = forwarded_request(exchange.facts.method, exchange.decision.target, exchange.facts.headers)
        upstream.outbuf += upstream.h11.send(request) + upstream.h11.send(h11.EndOfMessage())
        if upstream.connecting:
            self.update_upstream_interest(upstream)
        else:
            self.write_upstream(upstream)

    def connect_upstream(self, exchange: Exchange) -> Upstream | None:
        """A new daemon connection, or None after answering the client with the reason (daemon
        down, socket permission, or no file descriptor left for the socket)."""
        upstream = None
        try:
            upstream = Upstream(self.settings.upstream)
            upstream.start_connect(self.settings.connect_timeout)
            return upstream
        except OSError as exc:
            if upstream is not None:
                upstream.close()
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                message = f"porthole is out of file descriptors ({exc.strerror}); try again"
            else:
                message = upstream_error_message(self.settings.upstream, exc)
            self.answer_upstream_error(exchange, message)
            return None

    def answer_upstream_error(self, exchange: Exchange, message: str) -> None:
        self.log("warning", "upstream_error", error=message, client=exchange.client.peer)
        exchange.outcome, exchange.reason = "error", message
        if exchange.response_started:
            self.close_client(exchange.client, abort=True)  # never end a broken stream cleanly
        else:
            self.respond_locally(exchange, 502, message, close=False)

    def on_upstream_event(self, upstream: Upstream, mask: int) -> None:
        if upstream.exchange is None and upstream.stream is None:  # idle in the pool: closed, or junk
            self.drop_upstream(upstream)
            return
        if mask & selectors.EVENT_WRITE:
            if upstream.connecting:
                try:
                    upstream.finish_connect()
                except OSError as exc:
                    self.upstream_failed(upstream, exc)
                    return
            self.write_upstream(upstream)
        if upstream.closed or not mask & selectors.EVENT_READ:
            return
        try:
            data = upstream.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self.upstream_failed(upstream, exc)
            return
        upstream.received_any = upstream.received_any or bool(data)
        upstream.h11.receive_data(data)
        self.process_upstream(upstream)

    def write_upstream(self, upstream: Upstream) -> None:
        if upstream.outbuf:
            try:
                sent = upstream.sock.send(upstream.outbuf)
                del upstream.outbuf[:sent]
            except BlockingIOError:
                pass
            except OSError as exc:
                self.upstream_failed(upstream, exc)
                return
        self.update_upstream_interest(upstream)

    def update_upstream_interest(self, upstream: Upstream) -> None:
        if upstream.closed:
            return
        if upstream.exchange is None and upstream.stream is None:
            mask = selectors.EVENT_READ  # idle: only to notice the daemon closing it
        elif upstream.connecting:
            mask = selectors.EVENT_WRITE
        else:
            mask = selectors.EVENT_WRITE if upstream.outbuf else 0
            if not upstream.paused:
                mask |= selectors.EVENT_READ
        set_interest(self.selector, upstream.sock, mask, upstream)

    def process_upstream(self, upstream: Upstream) -> None:
        """Relay h11 events from the daemon to the client, pausing when the client lags."""
        if upstream.stream is not None:
            self.process_stream(upstream.stream)
            return
        exchange = upstream.exchange
        if exchange is None:
            return
        client = exchange.client
        while not upstream.closed and upstream.exchange is exchange:
            if len(client.outbuf) >= CLIENT_HIGH_WATER:
                self.write_client(client)
                if client.closed or len(client.outbuf) >= CLIENT_HIGH_WATER:
                    upstream.paused = True  # resumed by resume_upstream when the client drains
                    break
            event, problem = self.next_upstream_event(upstream)
            if problem:
                self.upstream_failed(upstream, None, problem)
                return
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.Response):
                exchange.status = event.status_code
                exchange.response_started = True
                client.state = "relaying"
                self.send_to_client(client, event)
            elif isinstance(event, h11.Data):
                self.send_to_client(client, event)
            elif isinstance(event, h11.EndOfMessage):
                self.send_to_client(client, h11.EndOfMessage())
                self.release_upstream(upstream)
                self.finish_exchange(client)
                return
            else:  # ConnectionClosed or PAUSED before the response ended
                self.upstream_failed(upstream, None, "the daemon closed the connection mid-response")
                return
        if client.closed:
            return
        self.write_client(client)
        self.update_upstream_interest(upstream)

    def next_upstream_event(self, upstream: Upstream) -> tuple[Any, str | None]:
        """The daemon's next event worth relaying, with 1xx skipped and the response head
        rebuilt for the client; or (None, why the response is unusable)."""
        while True:
            try:
                event = upstream.h11.next_event()
            except h11.RemoteProtocolError as exc:
                closed = upstream.h11.their_state is h11.ERROR and upstream.h11.trailing_data[1]
                return None, ("the daemon closed the connection before the response was complete"
                              if closed else f"malformed response from the daemon: {exc}")
            if isinstance(event, h11.InformationalResponse):
                upstream.informational += 1
                if upstream.informational > MAX_INFORMATIONAL:
                    return None, "the daemon sent too many 1xx responses"
                continue  # never relayed: porthole sends no bodies, so never waits for 100
            if isinstance(event, h11.Response):
                raw_headers = event.headers.raw_items()
                if has_both_framings(raw_headers):
                    return None, "the daemon's response has both Content-Length and Transfer-Encoding"
                return h11.Response(  # headers as h11 parsed them
                    status_code=event.status_code, reason=event.reason, http_version=b"1.1",
                    headers=relayed_response_headers(raw_headers), _parsed=True), None
            return event, None

    def resume_upstream(self, client: Client) -> None:
        """The client drained its queue: let a paused upstream flow again."""
        exchange = client.exchange
        upstream = exchange and (exchange.upstream or (exchange.stream and exchange.stream.upstream))
        if upstream and upstream.paused and len(client.outbuf) < CLIENT_LOW_WATER:
            upstream.paused = False
            self.process_upstream(upstream)  # first what h11 already holds, then read again

    def release_upstream(self, upstream: Upstream) -> None:
        """Back to the idle pool if the exchange ended cleanly, else closed."""
        exchange, upstream.exchange = upstream.exchange, None
        if exchange is not None:
            exchange.upstream = None
        if upstream.reusable() and len(self.idle_upstreams) < MAX_IDLE_UPSTREAMS and self.stopping_since is None:
            upstream.h11.start_next_cycle()
            upstream.reused = False
            self.idle_upstreams.append(upstream)
            self.update_upstream_interest(upstream)
        else:
            self.drop_upstream(upstream)

    def drop_upstream(self, upstream: Upstream) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(upstream.sock)
        if upstream in self.idle_upstreams:
            self.idle_upstreams.remove(upstream)
        upstream.close()

    def upstream_failed(self, upstream: Upstream, exc: OSError | None, message: str = "") -> None:
        if upstream.stream is not None:
            if exc is not None:
                message = upstream_error_message(self.settings.upstream, exc)
            self.fail_stream(upstream.stream, message)
            return
        exchange, upstream.exchange = upstream.exchange, None
        self.drop_upstream(upstream)
        if exchange is None:
            return
        exchange.upstream = None
        if upstream.reused and not upstream.received_any and not exchange.retried:
            # A pooled connection the daemon had already closed: retry once on a fresh one
            # (the request is a body-less GET or HEAD, so sending it again is safe).
            exchange.retried = True
            self.forward(exchange)
            return
        if exc is not None:
            message = upstream_error_message(self.settings.upstream, exc)
        self.answer_upstream_error(exchange, message)


    # ---- shared event streams ----------------------------------------------------------------

    def join_stream(self, exchange: Exchange) -> None:
        decision = exchange.decision
        assert decision is not None
        key = decision.target.forward_form_text
        stream = self.shared_streams.get(key)
        if stream is None:
            upstream = self.connect_upstream(exchange)
            if upstream is None:
                return
            stream = SharedStream(key, upstream)
            upstream.stream = stream
            self.shared_streams[key] = stream
            self.send_request(upstream, exchange)
            if upstream.closed:  # failed at once; fail_stream has answered this watcher
                return
        stream.exchanges.append(exchange)
        exchange.stream = stream
        if stream.head is not None:
            self.start_shared_response(exchange, stream.head)
        if stream.upstream.paused:  # paused by a lone slow watcher: no longer alone
            self.resume_stream(stream)

    def resume_stream(self, stream: SharedStream) -> None:
        stream.upstream.paused = False
        self.process_stream(stream)

    def start_shared_response(self, exchange: Exchange, head: h11.Response) -> None:
        exchange.status = head.status_code
        exchange.response_started = True
        exchange.client.state = "relaying"
        self.send_to_client(exchange.client, head)
        self.write_client(exchange.client)

    def process_stream(self, stream: SharedStream) -> None:
        upstream = stream.upstream
        while not upstream.closed and not upstream.paused:
            event, problem = self.next_upstream_event(upstream)
            if problem:
                self.fail_stream(stream, problem)
                return
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.Response):
                stream.head = event
                for exchange in list(stream.exchanges):
                    self.start_shared_response(exchange, stream.head)
            elif isinstance(event, h11.Data):
                for exchange in list(stream.exchanges):
                    client = exchange.client
                    if len(client.outbuf) >= CLIENT_HIGH_WATER and len(stream.exchanges) > 1:
                        self.close_client(client, abort=True, reason="too slow for a shared event stream")
                        continue
                    self.send_to_client(client, event)
                    self.write_client(client)
                    if len(stream.exchanges) == 1 and len(client.outbuf) >= CLIENT_HIGH_WATER:
                        upstream.paused = True  # resumed by resume_upstream when it drains
            elif isinstance(event, h11.EndOfMessage):
                self.retire_stream(stream)
                for exchange in list(stream.exchanges):
                    exchange.stream = None
                    self.send_to_client(exchange.client, h11.EndOfMessage())
                    self.finish_exchange(exchange.client)
                return
            else:
                self.fail_stream(stream, "the daemon closed the event stream")
                return
        self.update_upstream_interest(upstream)

    def leave_stream(self, exchange: Exchange) -> None:
        stream, exchange.stream = exchange.stream, None
        if stream is not None and exchange in stream.exchanges:
            stream.exchanges.remove(exchange)
            if not stream.exchanges:
                self.retire_stream(stream)  # the last watcher left: unsubscribe

    def retire_stream(self, stream: SharedStream) -> None:
        if self.shared_streams.get(stream.key) is stream:
            del self.shared_streams[stream.key]
        stream.upstream.stream = None
        self.drop_upstream(stream.upstream)

    def fail_stream(self, stream: SharedStream, message: str) -> None:
        self.retire_stream(stream)
        watchers, stream.exchanges = stream.exchanges, []
        for exchange in watchers:
            exchange.stream = None
            self.answer_upstream_error(exchange, message)


def bind_tcp(endpoint: Endpoint) -> socket.socket:
    sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if endpoint.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind(endpoint.address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"{endpoint.url}: cannot listen: {exc.strerror}") from None
    sock.listen(512)
    return sock


def bind_unix(endpoint: Endpoint) -> socket.socket:
    """Bind a unix socket. A stale socket file (nobody accepting) is replaced; a live one is not."""
    path = endpoint.path
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if not stat.S_ISSOCK(info.st_mode):
            raise UsageError(f"{endpoint.url}: {path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: the process that made it is gone
        else:
            raise UsageError(f"{endpoint.url}: {path} is served by a live process; not replacing it")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # never world-accessible, not even for an instant
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise UsageError(f"{endpoint.url}: cannot listen: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    try:
        if endpoint.gid is not None:
            os.chown(path, -1, endpoint.gid)
        os.chmod(path, endpoint.mode if endpoint.mode is not None else 0o660)
    except OSError as exc:
        sock.close()
        os.unlink(path)
        raise UsageError(f"{endpoint.url}: cannot set owner or mode: {exc.strerror}") from None
    sock.listen(512)
    return sock


# --------------------------------------------------------------------------------------------
# 6. Entry point
# --------------------------------------------------------------------------------------------

def healthcheck(settings: Settings) -> int:
    """GET /_ping through our own first listener: proves listener, policy and daemon all work."""
    endpoint = settings.listeners[0]
    if not settings.listeners_given and settings.state_file is not None:
        try:
            endpoint = parse_endpoint(json.loads(settings.state_file.read_text())["listen"][0], listener=True)
        except (OSError, ValueError, KeyError, IndexError, TypeError, UsageError) as exc:
            print(f"porthole healthcheck: cannot read {settings.state_file}: {exc}", file=sys.stderr)
            return 1
    address: Any = endpoint.address
    host = "localhost"
    if endpoint.kind == "tcp":
        connect_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(endpoint.host, endpoint.host)
        address = (connect_host, endpoint.port)
        host = f"[{connect_host}]" if ":" in connect_host else connect_host
    conn = h11.Connection(h11.CLIENT)
    status = 0
    try:
        with socket.socket(endpoint.family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(address)
            sock.sendall(conn.send(h11.Request(method="GET", target="/_ping",
                                               headers=[("Host", host), ("Connection", "close")])))
            sock.sendall(conn.send(h11.EndOfMessage()))
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(READ_CHUNK))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
    except (OSError, h11.ProtocolError) as exc:
        print(f"porthole healthcheck: {endpoint.url}: {exc}", file=sys.stderr)
        return 1
    if status == 200:
        return 0
    print(f"porthole healthcheck: {endpoint.url}: HTTP {status}: {body[:300].decode('utf-8', 'replace')}",
          file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ)
    except UsageError as exc:
        print(f"porthole: {exc}", file=sys.stderr)
        return 2
    if settings.mode == "version":
        print(f"porthole {VERSION} (h11 {h11.__version__}, Python {sys.version.split()[0]})")
        return 0
    if settings.mode == "healthcheck":
        return healthcheck(settings)
    try:
        policy = load_policy(settings.rules_path.read_text(encoding="utf-8"), str(settings.rules_path))
    except (OSError, UnicodeDecodeError) as exc:
        print(f"porthole: {settings.rules_path}: cannot read: {exc}", file=sys.stderr)
        return 2
    except PolicyError as exc:
        print(f"porthole: {exc}", file=sys.stderr)
        return 2
    if settings.mode == "check":
        print(describe_policy(policy))
        return 0
    if os.geteuid() == 0 and not settings.allow_root:
        print("porthole: refusing to run as root. Run it as an unprivileged user that has the Docker "
              "socket's group, e.g. docker run --user 65532:65532 --group-add $(stat -c %g "
              "/var/run/docker.sock) ..., or setpriv --reuid 65532 --regid 65532 "
              "--groups <socket gid>. Pass --allow-root to override.", file=sys.stderr)
        return 2
    log = Log(settings.log_format, settings.log_level)
    proxy = Proxy(settings, policy, log)
    try:
        proxy.bind()
    except UsageError as exc:
        print(f"porthole: {exc}", file=sys.stderr)
        return 2
    return proxy.run()


if __name__ == "__main__":
    sys.exit(main())
