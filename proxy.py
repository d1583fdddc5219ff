#!/usr/bin/env python3
"""Porthole: a read-only proxy for the Docker Engine API.

Clients (Traefik, dashboards, the docker CLI) talk to porthole instead of the Docker socket.
Porthole parses every request with h11, decides it against rules.json and forwards only
allowed GET/HEAD requests, rebuilt in canonical form, to the daemon.

The file reads in the order a request flows:
  1. settings      command line, environment, listener URLs
  2. policy        canonical targets, rules.json, decisions (pure functions, no I/O)
  3. logging       one line per request, safe against hostile values; the metrics registry
  4. connections   the loop, and the client and upstream state machines, each a small part
  5. the proxy     the parts wired to the policy: accept, decide, relay or share, log
  6. entry point   --check, --healthcheck, --doctor, --version, run
"""
from __future__ import annotations

import argparse
import contextlib
import enum
import errno
import functools
import heapq
import ipaddress
import itertools
import json
import os
import re
import selectors
import signal
import socket
import ssl
import stat
import struct
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
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
MAX_REMEMBERED_HEADS = 256  # distinct heads h11 parsed kept per table, by their bytes (then all dropped)
MAX_REMEMBERED_REQUEST_HEAD = 2048  # longer request heads are parsed every time (a table stays small)
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
    tlscert: str | None = None  # TCP listeners: TLS with this certificate (chain) ...
    tlskey: str | None = None  # ... and key; with tlscacert, clients need a certificate it signed
    tlscacert: str | None = None

    @property
    def tls(self) -> bool:
        return self.tlscert is not None

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
    allowed = {"mode", "gid", "profile"} if parts.scheme == "unix" else {"profile", *TLS_OPTIONS}
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
        tls = {key: options[key] for key in TLS_OPTIONS if key in options}
        if any(not value for value in tls.values()):
            raise UsageError(f"{url}: tlscert, tlskey and tlscacert name files")
        if tls and not {"tlscert", "tlskey"} <= tls.keys():
            raise UsageError(f"{url}: TLS needs both tlscert and tlskey (and tlscacert to require "
                             f"client certificates)")
        return Endpoint(url, "tcp", host=host, port=port, profile=profile, **tls)
    raise UsageError(f"{url}: the scheme must be tcp:// or unix://")


TLS_OPTIONS = ("tlscert", "tlskey", "tlscacert")  # the names of docker's own flags


def parse_metrics_endpoint(url: str) -> Endpoint:
    """--metrics: a listener URL like --listen's, without a profile or TLS (it serves no rules)."""
    endpoint = parse_endpoint(url, listener=True)
    given = {key for key, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    if "profile" in given or endpoint.tls:
        raise UsageError(f"{url}: the metrics listener takes no profile and no TLS options")
    return endpoint


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
    response_timeout: float = 120.0
    max_connections_per_client: int = 256
    shutdown_grace: float = 10.0
    max_filter_bytes: int = 32 * 1024 * 1024
    watch_rules: float = 5.0  # seconds between looks at the rules file (0: never, SIGHUP only)
    coalesce: bool = True  # identical concurrent finite GETs share one daemon request
    state_file: Path | None = None  # where the running proxy records its listeners
    listeners_given: bool = False  # --listen or PORTHOLE_LISTEN was set (else the default)
    rules_given: bool = False  # --rules or PORTHOLE_RULES was set (else the shipped rules)
    # Tecnativa-style variables found in the environment (name, value), when no rules were given:
    # they then make the policy (see tecnativa_policy).
    dropin: tuple[tuple[str, str], ...] = ()
    mode: str = "run"  # run, check, healthcheck, version, doctor
    metrics: Endpoint | None = None  # --metrics: where GET /metrics is served
    log_format_given: bool = False  # --log-format or PORTHOLE_LOG_FORMAT was set (--doctor: JSON only then)
    learn_path: Path | None = None  # --learn: every profile would-denies, the rules used are written here


def default_rules_path(environ: Mapping[str, str] | None = None) -> Path:
    """The rules.json shipped with the program: beside proxy.py; for the executable, a
    rules.json beside it (the image's /rules.json, which a user may mount over), else the
    copy bundled into it."""
    if not getattr(sys, "frozen", False):
        return Path(__file__).resolve().parent / "rules.json"
    # staticx runs the real program from a temporary directory and names the original here.
    program = (environ if environ is not None else os.environ).get("STATICX_PROG_PATH") or sys.executable
    beside = Path(program).resolve().parent / "rules.json"
    bundle = getattr(sys, "_MEIPASS", None)
    if beside.is_file() or not bundle:
        return beside
    return Path(bundle) / "rules.json"


def rules_label(path: Path) -> str:
    """How messages name a rules file: its path, except the copy bundled into the executable,
    which sits in a temporary directory the user never chose (/tmp/_MEI.../rules.json)."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle and path.parent == Path(bundle):
        program = os.environ.get("STATICX_PROG_PATH") or sys.executable
        return f"{program} (its built-in rules.json)"
    return str(path)


# (option, type, default, help). Each option also reads PORTHOLE_<OPTION> from the environment.
_NUMERIC_OPTIONS = (
    ("max-connections", int, 1024, "most client connections open at once"),
    ("max-streams-per-client", int, 64, "most concurrent streaming requests per client"),
    ("max-head-bytes", int, 16384, "largest request head accepted, in bytes"),
    ("head-timeout", float, 10.0, "seconds a client has to send a whole request head"),
    ("idle-timeout", float, 60.0, "seconds an idle keep-alive connection is kept"),
    ("write-timeout", float, 30.0, "seconds a finite response may stall on a client not reading"),
    ("connect-timeout", float, 5.0, "seconds to connect to the upstream"),
    ("response-timeout", float, 120.0, "seconds the daemon has to start answering a finite request"),
    ("max-connections-per-client", int, 256, "most connections open at once from one client "
                                              "(a TCP address, or a uid on unix sockets)"),
    ("shutdown-grace", float, 10.0, "seconds finite requests get to finish on SIGTERM"),
    ("max-filter-bytes", int, 32 * 1024 * 1024, "largest response body buffered to filter it "
                                                 "(redaction, visible labels); larger ones get a 502"),
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
    parser.add_argument("--watch-rules", type=float, metavar="SECONDS",
                        help="look at the rules file this often and reload it when it changed, "
                             "as on SIGHUP (default 5; 0: only on SIGHUP)")
    parser.add_argument("--coalesce", action=argparse.BooleanOptionalAction, default=None,
                        help="identical concurrent reads share one daemon request (default on; "
                             "a profile turns it off with \"coalesce\": false)")
    parser.add_argument("--state-file", metavar="PATH",
                        help="record the listeners here, so --healthcheck finds them without --listen")
    parser.add_argument("--metrics", metavar="URL",
                        help="serve Prometheus metrics (GET /metrics) on tcp://HOST:PORT or unix:///path.sock")
    parser.add_argument("--learn", metavar="PATH",
                        help="learn mode: forward what the rules refuse (logged as would_deny; never what porthole "
                             "always refuses, nor unacknowledged dangerous reads) and write the rules each client "
                             "used to PATH")
    for name, kind, default, text in _NUMERIC_OPTIONS:
        parser.add_argument(f"--{name}", type=kind, metavar="N", help=f"{text} (default {default})")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--check", action="store_const", dest="mode", const="check",
                       help="validate the rules, print the effective policy and exit")
    modes.add_argument("--healthcheck", action="store_const", dest="mode", const="healthcheck",
                       help="GET /_ping through the first listener; exit 0 if the daemon answered")
    modes.add_argument("--version", action="store_const", dest="mode", const="version")
    modes.add_argument("--doctor", action="store_const", dest="mode", const="doctor",
                       help="audit this host (socket, dockerd, listeners, rules); exit 0 clean, 1 warnings, 2 critical")
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
    coalesce = args.coalesce if args.coalesce is not None else (env("coalesce") or "on").lower() in _TRUE
    rules_given = bool(args.rules or env("rules"))
    dropin = () if rules_given else tuple(
        (name, environ[name]) for name in sorted(TECNATIVA_VARIABLES) if name in environ)
    dropin_values = dict(dropin)
    log_format = args.log_format or env("log-format") or "json"
    log_level = args.log_level or env("log-level") or tecnativa_log_level(dropin_values.get("LOG_LEVEL")) or "info"
    if log_format not in ("json", "text"):
        raise UsageError("PORTHOLE_LOG_FORMAT must be json or text")
    if log_level not in LOG_LEVELS:
        raise UsageError("PORTHOLE_LOG_LEVEL must be debug, info, warning or error")
    listeners = tuple(parse_endpoint(url, listener=True) for url in listen_urls)
    upstream = parse_endpoint(args.upstream or env("upstream") or tecnativa_upstream(dropin_values.get("SOCKET_PATH"))
                              or DEFAULT_UPSTREAM, listener=False)
    hosts = frozenset(h.lower() for h in (args.allow_host or env_list("allow-hosts")))
    state_file = args.state_file or env("state-file")
    metrics_url = args.metrics or env("metrics")
    learn_path = args.learn or env("learn")
    watch_rules = args.watch_rules
    if watch_rules is None and env("watch-rules") is not None:
        try:
            watch_rules = float(env("watch-rules") or "")
        except ValueError:
            raise UsageError("PORTHOLE_WATCH_RULES: not a number") from None
    watch_rules = 5.0 if watch_rules is None else watch_rules
    if not 0 <= watch_rules < float("inf"):
        raise UsageError("--watch-rules must be 0 (off) or a number of seconds")
    return Settings(
        listeners=listeners, upstream=upstream,
        rules_path=Path(args.rules or env("rules") or default_rules_path(environ)), rules_given=rules_given,
        dropin=dropin,
        log_format=log_format, log_level=log_level, allow_root=allow_root, allow_hosts=hosts, coalesce=coalesce,
        state_file=Path(state_file) if state_file else None, listeners_given=bool(given_urls),
        watch_rules=watch_rules,
        mode=args.mode or "run", log_format_given=bool(args.log_format or env("log-format")),
        metrics=parse_metrics_endpoint(metrics_url) if metrics_url else None,
        learn_path=Path(learn_path) if learn_path else None, **numbers,
    )


# --------------------------------------------------------------------------------------------
# 2. Policy: pure functions, no I/O
# --------------------------------------------------------------------------------------------

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
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]*")
_QUERY_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"v(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})(\.(?:0|[1-9][0-9]{0,3}))?")
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
    "/containers/{name*}/changes": "changes lists every path the container wrote or deleted",
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


def dangerous_overlaps(template: Template) -> list[str]:
    """Why each dangerous read a rule's template can match is dangerous ([] for none)."""
    return [why for guard, why in _DANGEROUS if templates_overlap(template, guard)]


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
    modes: dict[str, str] = {}
    for name, body in raw_profiles.items():
        where = f"$.profiles.{name}"
        if not _PROFILE_NAME.fullmatch(name):
            raise fail(where, "profile names are lowercase letters, digits, '-' and '_'")
        check_keys(body, where, {"rules"}, {"description", "extends", "redact", "visible", "mode", "coalesce"})
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
        filtering[name] = Filtering(redactions[name], scope)
        own = [raw_profiles[member]["coalesce"] for member in chain if "coalesce" in raw_profiles[member]]
        if own and own[0] is False:  # inherited through extends unless the profile sets it
            uncoalesced.add(name)
    if "default" not in profiles:
        raise fail("$.profiles", "a profile named 'default' is required")
    clients = load_client_rules(document.get("clients", []), profiles.keys(), fail)
    return Policy(source, profiles, descriptions, clients, filtering, modes=modes, document=document,
                  uncoalesced=frozenset(uncoalesced))


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
    risky = dangerous_overlaps(template)
    if risky and not dangerous:
        raise fail(where, f"{raw['path']} is a dangerous read ({risky[0]}); "
                          "add \"dangerous\": true to acknowledge it")
    if dangerous and not risky:
        raise fail(where + ".dangerous", f"{raw['path']} is not a dangerous read; remove the flag")
    return Rule(profile, index, frozenset(methods), raw["path"], template, query, dangerous)


# ---- per-client profiles ---------------------------------------------------------------------
#
# "clients": [{"match": {"uid": 1000}, "profile": "traefik"}, ...]. An entry's match holds one or
# more conditions and all of them must hold. uid and gid are a unix socket peer's (SO_PEERCRED:
# its effective uid and gid when it connected); address and cert_cn belong to TCP peers (the peer
# address; the common name of the client certificate a mutual-TLS listener verified). So uid and
# gid combine with each other, address and cert_cn with each other, never one kind with the other.
# The first entry that matches picks the profile; a client no entry matches gets its listener's.

UNIX_CONDITIONS = ("uid", "gid")
TCP_CONDITIONS = ("address", "cert_cn")
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel: never a real id
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ClientFacts:
    """Who is at the other end of one connection: what `clients` entries are matched against."""

    uid: int | None = None
    gid: int | None = None
    address: IPAddress | None = None
    cert_cn: str | None = None


def peer_address(host: str) -> IPAddress | None:
    """The TCP peer as an address (IPv4-mapped IPv6 as IPv4, any %scope dropped)."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


@dataclass(frozen=True)
class ClientRule:
    index: int
    profile: str
    uid: int | None = None
    gid: int | None = None
    network: IPNetwork | None = None
    cert_cn: str | None = None

    @property
    def label(self) -> str:
        return f"clients[{self.index}]"

    def matches(self, facts: ClientFacts) -> bool:
        return ((self.uid is None or self.uid == facts.uid)
                and (self.gid is None or self.gid == facts.gid)
                and (self.network is None or (facts.address is not None and facts.address in self.network))
                and (self.cert_cn is None or self.cert_cn == facts.cert_cn))

    def covers(self, later: ClientRule) -> bool:
        """Every client `later` matches is matched by this entry too."""
        if any(mine is not None and mine != theirs for mine, theirs in
               ((self.uid, later.uid), (self.gid, later.gid), (self.cert_cn, later.cert_cn))):
            return False
        return self.network is None or (later.network is not None and later.network.version == self.network.version
                                        and later.network.subnet_of(self.network))  # type: ignore[arg-type]

    def describe(self) -> str:
        parts = [f"uid={self.uid}" if self.uid is not None else "", f"gid={self.gid}" if self.gid is not None else "",
                 f"address={self.network}" if self.network is not None else "",
                 f"cert_cn={self.cert_cn!r}" if self.cert_cn is not None else ""]
        return " ".join(part for part in parts if part)


def choose_profile(clients: Sequence[ClientRule], facts: ClientFacts,
                   listener_profile: str) -> tuple[str, ClientRule | None]:
    """The profile for a connection: the first matching entry's, else the listener's."""
    for rule in clients:
        if rule.matches(facts):
            return rule.profile, rule
    return listener_profile, None


def shadowing_entries(earlier: Sequence[ClientRule], later: ClientRule) -> list[ClientRule]:
    """The earlier entries that together match every client `later` matches (so it can never
    be the first match), or [] when some client would reach it. One broader entry is enough;
    address entries whose other conditions `later` implies can also cover it together."""
    for rule in earlier:
        if rule.covers(later):
            return [rule]
    if later.network is None and later.cert_cn is None:
        return []  # a unix-peer entry: address entries never match unix peers
    remaining: list[IPNetwork] = ([later.network] if later.network is not None
                                  else [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")])
    used = []
    for rule in earlier:
        if rule.network is None or not ClientRule(rule.index, rule.profile, rule.uid, rule.gid, None,
                                                  rule.cert_cn).covers(later):
            continue
        left: list[IPNetwork] = []
        for net in remaining:
            if net.version != rule.network.version or not net.overlaps(rule.network):
                left.append(net)
            elif not net.subnet_of(rule.network):  # type: ignore[arg-type]
                left.extend(net.address_exclude(rule.network))  # type: ignore[arg-type]
        if left != remaining:
            used.append(rule)
        remaining = left
        if not remaining:
            return used
    return []


def load_client_rules(raw: Any, profiles: Iterable[str], fail: Any) -> tuple[ClientRule, ...]:
    """Validate the `clients` list (see above). Raises PolicyError naming the JSON path."""
    if not isinstance(raw, list):
        raise fail("$.clients", "must be a list of {\"match\": {...}, \"profile\": NAME}")
    known = set(profiles)
    rules: list[ClientRule] = []
    for index, entry in enumerate(raw):
        where = f"$.clients[{index}]"
        if not isinstance(entry, dict):
            raise fail(where, "must be an object")
        unknown = sorted(entry.keys() - {"match", "profile", "comment"})
        if unknown:
            raise fail(where, f"unknown key {unknown[0]!r}")
        for key in ("match", "profile"):
            if key not in entry:
                raise fail(where, f"missing key {key!r}")
        if not isinstance(entry.get("comment", ""), str):
            raise fail(where + ".comment", "must be a string")
        profile = entry["profile"]
        if not isinstance(profile, str):
            raise fail(where + ".profile", "must be the name of a profile")
        if profile not in known:
            raise fail(where + ".profile", f"no profile named {profile!r}")
        match = entry["match"]
        if not isinstance(match, dict):
            raise fail(where + ".match", "must be an object")
        unknown = sorted(match.keys() - {*UNIX_CONDITIONS, *TCP_CONDITIONS})
        if unknown:
            raise fail(where + ".match", f"unknown key {unknown[0]!r} (use uid, gid, address, cert_cn)")
        if not match:
            raise fail(where + ".match", "needs at least one of uid, gid, address, cert_cn")
        if match.keys() & set(UNIX_CONDITIONS) and match.keys() & set(TCP_CONDITIONS):
            raise fail(where + ".match", "uid/gid (unix socket peers) and address/cert_cn (TCP peers) never "
                                         "hold for the same client: use two entries")
        for key in UNIX_CONDITIONS:
            value = match.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_ID:
                raise fail(f"{where}.match.{key}", f"must be a number from 0 to {_MAX_ID}")
        network = None
        if "address" in match:
            if not isinstance(match["address"], str):
                raise fail(where + ".match.address", "must be an IPv4 or IPv6 address or CIDR network")
            try:
                network = ipaddress.ip_network(match["address"], strict=True)
            except ValueError as exc:
                raise fail(where + ".match.address", f"not an IPv4 or IPv6 address or CIDR network: {exc}") from None
            if network.version == 6 and network.network_address.ipv4_mapped is not None:
                raise fail(where + ".match.address", "write IPv4-mapped addresses as IPv4")
        cert_cn = match.get("cert_cn")
        if cert_cn is not None and (not isinstance(cert_cn, str) or not cert_cn):
            raise fail(where + ".match.cert_cn", "must be a non-empty string")
        rule = ClientRule(index, profile, match.get("uid"), match.get("gid"), network, cert_cn)
        shadows = shadowing_entries(rules, rule)
        if shadows:
            names = " and ".join(f"$.{earlier.label}" for earlier in shadows)
            raise fail(where, f"can never match: every client it matches is matched first by {names}")
        rules.append(rule)
    return tuple(rules)


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


# ---- learn mode ------------------------------------------------------------------------------
# --learn PATH records, per client, what it asked for, and writes it as the rules it needs: one
# minimal profile per client and the `clients` entries that give it to that client. The part
# here is pure (no sockets, no files): the proxy feeds it (Learner.record) and writes
# Learner.document. A concrete path is learned as a template, never as a raw id or name.

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
    "/swarm", "/swarm/unlockkey", "/nodes", "/nodes/{id}", "/services", "/services/{id}",
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
    TCP address. Not the gid: the same program is often started with another primary group."""

    kind: str  # "cert_cn", "uid" or "address"
    value: str

    @property
    def label(self) -> str:
        return f"{self.kind}={self.value}"

    def match(self) -> dict[str, Any]:
        return {self.kind: int(self.value) if self.kind == "uid" else self.value}

    def client_rule(self, index: int, profile: str) -> ClientRule:
        if self.kind == "uid":
            return ClientRule(index, profile, uid=int(self.value))
        if self.kind == "cert_cn":
            return ClientRule(index, profile, cert_cn=self.value)
        return ClientRule(index, profile, network=ipaddress.ip_network(self.value))

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
    """

    def __init__(self) -> None:
        self.used: dict[LearnedClient, dict[str, LearnedUse]] = {}
        self.refused: dict[LearnedClient, dict[tuple[str, str], str]] = {}  # (method, template) -> why

    def record(self, policy: Policy, facts: ClientFacts, method: str, target: Target,
               forwarded: bool = True) -> tuple[str, str | None]:
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
                continue
            name, number = client.profile_stem(), 2
            while name in names:
                name, number = f"{client.profile_stem()}-{number}", number + 1
            names.add(name)
            description = f"learned by porthole --learn from the requests of {client.label}"
            if left_out:
                description += ("; left out, dangerous reads that need a deliberate \"dangerous\": true: "
                                + "; ".join(left_out))
            profiles[name] = {"description": description,
                              "rules": [uses[template].rule(template) for template in sorted(uses)]}
            kept.append(client.client_rule(len(entries), name))
            entries.append({"match": client.match(), "profile": name, "comment": "learned by porthole --learn"})
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


# ---- Tecnativa drop-in -----------------------------------------------------------------------
# tecnativa/docker-socket-proxy and its linuxserver fork are configured by environment
# variables: each opens one path prefix of the API (HAProxy, `^(/v[\d.]+)?/containers` etc.)
# to GET and HEAD, or to every method with POST=1. With no rules file given, porthole turns
# those variables into the equivalent READ-ONLY policy, so swapping the image is the migration.
# Each section opens the reads listed here and no others; a read the guards call dangerous is
# forwarded only when its `gate` variable (linuxserver's ALLOW_LOGS and friends) is on too.

@dataclass(frozen=True)
class SectionRead:
    path: str
    methods: tuple[str, ...] = ("GET",)
    gate: str | None = None  # a variable that must also be on (it acknowledges the read)


_S = SectionRead
TECNATIVA_SECTIONS: dict[str, tuple[SectionRead, ...]] = {
    "PING": (_S("/_ping", ("GET", "HEAD")),),
    "VERSION": (_S("/version"),),
    "EVENTS": (_S("/events"),),
    "INFO": (_S("/info"),),
    "CONTAINERS": (_S("/containers/json"), _S("/containers/{id}/json"), _S("/containers/{id}/stats"),
                   _S("/containers/{id}/changes", gate="ALLOW_CHANGES"),
                   _S("/containers/{id}/top", gate="ALLOW_TOP"),
                   _S("/containers/{id}/logs", gate="ALLOW_LOGS"),
                   _S("/containers/{id}/export", gate="ALLOW_EXPORT"),
                   _S("/containers/{id}/archive", ("GET", "HEAD"), gate="ALLOW_ARCHIVE")),
    "IMAGES": (_S("/images/json"), _S("/images/{name*}/json"), _S("/images/{name*}/history"),
               _S("/images/get"), _S("/images/{name*}/get"), _S("/images/search")),
    "NETWORKS": (_S("/networks"), _S("/networks/{id}")),
    "VOLUMES": (_S("/volumes"), _S("/volumes/{name}")),
    "SERVICES": (_S("/services"), _S("/services/{id}"), _S("/services/{id}/logs", gate="ALLOW_LOGS")),
    "TASKS": (_S("/tasks"), _S("/tasks/{id}"), _S("/tasks/{id}/logs", gate="ALLOW_LOGS")),
    "NODES": (_S("/nodes"), _S("/nodes/{id}")),
    "SWARM": (_S("/swarm"), _S("/swarm/unlockkey")),
    "SECRETS": (_S("/secrets"), _S("/secrets/{id}")),
    "CONFIGS": (_S("/configs"), _S("/configs/{id}")),
    "PLUGINS": (_S("/plugins"), _S("/plugins/{name*}/json"), _S("/plugins/privileges")),
    "SYSTEM": (_S("/system/df"),),
    "DISTRIBUTION": (_S("/distribution/{name*}/json"),),
    "EXEC": (_S("/exec/{id}/json"),),
}
TECNATIVA_DEFAULTS_ON = frozenset({"EVENTS", "PING", "VERSION"})  # both images' defaults
TECNATIVA_GATES = frozenset({"ALLOW_ARCHIVE", "ALLOW_CHANGES", "ALLOW_EXPORT", "ALLOW_LOGS", "ALLOW_TOP"})
# Variables whose only effect is to let writes through (their endpoints are all POST, PUT or
# DELETE, or hijack the connection): porthole refuses to start with any of them on.
TECNATIVA_WRITES = {
    "POST": "every method, not only GET and HEAD",
    "ALLOW_START": "POST /containers/{id}/start",
    "ALLOW_STOP": "POST /containers/{id}/stop",
    "ALLOW_RESTARTS": "POST /containers/{id}/stop, restart and kill",
    "ALLOW_PAUSE": "POST /containers/{id}/pause",
    "ALLOW_UNPAUSE": "POST /containers/{id}/unpause",
    "ALLOW_KILL": "POST /containers/{id}/kill",
    "ALLOW_DELETE": "DELETE requests",
    "ALLOW_EXEC": "POST /containers/{id}/exec and /exec/{id}/start",
    "AUTH": "POST /auth (registry credentials)",
    "BUILD": "POST /build",
    "COMMIT": "POST /commit (a new image from a container)",
    "GRPC": "POST /grpc (hijacked by BuildKit)",
    "SESSION": "POST /session (hijacked by BuildKit)",
}
# Read by the drop-in for where to listen and log, not for the policy.
TECNATIVA_SETTINGS = frozenset({"LOG_LEVEL", "SOCKET_PATH", "DISABLE_IPV6"})
TECNATIVA_VARIABLES = frozenset(TECNATIVA_SECTIONS) | TECNATIVA_GATES | frozenset(TECNATIVA_WRITES) | TECNATIVA_SETTINGS
# HAProxy's syslog levels, as LOG_LEVEL takes them, to porthole's.
_HAPROXY_LOG_LEVELS = {"emerg": "error", "alert": "error", "crit": "error", "err": "error",
                       "warning": "warning", "notice": "info", "info": "info", "debug": "debug"}


def tecnativa_flag(name: str, value: str) -> bool:
    """On or off, as HAProxy's `env(NAME) -m bool` reads it: a number, non-zero is on; empty is
    off. HAProxy reads 'true' as 0 (no digits), so words are refused rather than guessed."""
    if value == "":
        return False
    if not re.fullmatch(r"[0-9]+", value):
        raise UsageError(f"{name}={value!r}: Tecnativa-style variables are 0 or 1")
    return int(value) != 0


def tecnativa_log_level(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in _HAPROXY_LOG_LEVELS:
        raise UsageError(f"LOG_LEVEL={value!r}: must be one of {', '.join(_HAPROXY_LOG_LEVELS)}")
    return _HAPROXY_LOG_LEVELS[value]


def tecnativa_upstream(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not value.startswith("/"):
        raise UsageError(f"SOCKET_PATH={value!r}: must be the absolute path of the Docker socket")
    return "unix://" + value


@dataclass(frozen=True)
class DropIn:
    document: dict[str, Any]  # a rules document, validated by load_policy like any other
    notes: tuple[str, ...]  # what the variables asked for that porthole leaves out, and why


def tecnativa_policy(variables: Mapping[str, str]) -> DropIn:
    """The read-only rules document equivalent to Tecnativa-style variables (pure).

    Raises UsageError if a variable asks for a write or a value is not a number."""
    on = {name for name in TECNATIVA_DEFAULTS_ON if name not in variables}
    for name, value in variables.items():
        if name in TECNATIVA_VARIABLES and name not in TECNATIVA_SETTINGS and tecnativa_flag(name, value):
            on.add(name)
    writes = sorted(on & TECNATIVA_WRITES.keys())
    if writes:
        raise UsageError(
            "porthole never forwards writes: " + "; ".join(f"{n}=1 asks for {TECNATIVA_WRITES[n]}" for n in writes)
            + ". Set them to 0 or remove them; a consumer that needs writes cannot use porthole.")
    rules: list[dict[str, Any]] = []
    notes: list[str] = []
    for section, reads in TECNATIVA_SECTIONS.items():
        if section not in on:
            continue
        for read in reads:
            if read.gate is not None and read.gate not in on:
                notes.append(f"{section}=1: GET {read.path} left out: it needs {read.gate}=1 too")
                continue
            template = parse_template(read.path)
            risky = dangerous_overlaps(template)
            if risky and read.gate is None:
                notes.append(f"{section}=1: GET {read.path} left out: a dangerous read ({risky[0]}) "
                             "that no variable acknowledges; use a rules file to allow it")
                continue
            rule: dict[str, Any] = {"method": list(read.methods), "path": read.path}
            if risky:
                rule["dangerous"] = True
            rule["comment"] = f"{section}=1" + (f" and {read.gate}=1" if read.gate else "")
            rules.append(rule)
    for gate in sorted(on & TECNATIVA_GATES):
        if not any(read.gate == gate and section in on for section, reads in TECNATIVA_SECTIONS.items()
                   for read in reads):
            notes.append(f"{gate}=1 opens nothing without the section it belongs to (CONTAINERS=1)")
    if not rules:
        raise UsageError("the Tecnativa-style variables allow nothing at all (PING, VERSION and EVENTS are off "
                         "and no other section is on)")
    summary = " ".join(f"{name}={variables[name]}" for name in sorted(variables) if name in TECNATIVA_VARIABLES)
    document = {
        "version": 1,
        "description": f"made from Tecnativa-style environment variables: {summary or 'their defaults'}",
        "profiles": {"default": {"description": "sections opened by the environment: " + ", ".join(sorted(
            on & TECNATIVA_SECTIONS.keys())), "rules": rules}},
    }
    return DropIn(document, tuple(notes))


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
    rule: Rule  # for a would_deny, a stand-in for the rule that does not exist (index -1)
    streaming: bool
    would_deny: str | None = None  # learn or warn mode: why the profile's rules refuse it


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
        rule = Rule(facts.profile, -1, frozenset({facts.method}), target.path, tuple(target.segments), None,
                    dangerous_reason(target.segments) is not None)
        return Decision(target, rule, is_streaming(target), would_deny=refusal.reason)


def forwarded_request(method: str, target: Target, headers: Sequence[tuple[bytes, bytes]]) -> h11.Request:
    """The request porthole sends upstream: canonical target, fixed Host, allowlisted headers."""
    kept = [(name, value) for name, value in headers if name in FORWARDED_REQUEST_HEADERS]
    # _parsed: the header values were validated by h11 when it parsed the client's request and
    # the target is built from safe characters only, so h11 need not run its regexes again.
    return h11.Request(method=method.encode("ascii"), target=target.forward_form_text.encode("ascii"),
                       headers=[(b"Host", b"docker"), *kept], _parsed=True)


def kept_for(table: dict[tuple, tuple[Any, Any]], obj: Any, key: tuple, compute: Callable[[], Any]) -> Any:
    """compute()'s result for this very object (and key), made once while the entry lives: for
    immutable objects used again and again (a cached forwarded request, a remembered head). The
    table holds the object, so its id cannot be reused while the entry is there."""
    known = table.get((id(obj), *key))
    if known is None or known[0] is not obj:
        if len(table) >= MAX_REMEMBERED_HEADS:
            table.clear()
        known = table[(id(obj), *key)] = (obj, compute())
    return known[1]


def request_bytes(request: h11.Request) -> bytes:
    """`request` as h11's writer puts it on the wire (Host first, names as given), written by
    porthole so that no h11 connection is needed to send it; tests/test_framing.py checks the
    two agree byte for byte. Everything in it was validated when the h11.Request was made. The
    forwarded requests of cached decisions are the same objects each time: written once."""
    return kept_for(_WRITTEN_REQUESTS, request, (), lambda: _request_bytes(request))


_WRITTEN_REQUESTS: dict[tuple, tuple[Any, Any]] = {}


def _request_bytes(request: h11.Request) -> bytes:
    items = request.headers.raw_items()
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method, request.target)]
    lines += [b"%s: %s\r\n" % item for item in items if item[0].lower() == b"host"]
    lines += [b"%s: %s\r\n" % item for item in items if item[0].lower() != b"host"]
    lines.append(b"\r\n")
    return b"".join(lines)


def has_both_framings(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """A response with Content-Length and Transfer-Encoding is a smuggling shape: refuse it."""
    names = {name.lower() for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The tokens of every Connection header, lowercase (`headers`' names already lowercase)."""
    return {token.strip() for name, value in headers if name == b"connection"
            for token in value.lower().split(b",") if token.strip()}


def relayed_response_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones (porthole frames the body itself)."""
    headers = list(headers)
    listed = connection_tokens((name.lower(), value) for name, value in headers)
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower not in _HOP_BY_HOP and lower not in listed and not lower.startswith(b"proxy-"):
            kept.append((name, value))
    return kept


def error_body(message: str, as_daemon: bool = False) -> bytes:
    """A Docker-style error; `as_daemon`: worded exactly as dockerd would (no "porthole:")."""
    return json.dumps({"message": message if as_daemon else f"porthole: {message}"}).encode() + b"\n"


# ---- response filters ------------------------------------------------------------------------
#
# Allowing an endpoint is not allowing everything it returns. A profile's "redact" names what is
# removed from responses (secrets: environment values, log and volume driver options, exec
# command lines, ...); its "visible" scopes which containers, services and tasks exist for it at
# all. These are pure functions over parsed JSON; the connection layer (ResponseRewriter)
# buffers, parses and re-serialises, and Lookup resolves an object before a request about it.
#
# Rule 1: a filter that cannot be applied (not JSON, an unexpected shape, over the bound) fails
#         the response: a 502, or an abort mid-stream. The unfiltered bytes never pass.
# Rule 2: redaction keeps names and keys (tools that read them still work) and removes values.
# Rule 3: an invisible object is answered as dockerd answers a missing one (404, same message).
# Rule 4: filtering is idempotent: a filtered answer filtered again is unchanged.

REDACTIONS: Mapping[str, str] = {
    "env": "environment variable values (containers, images, services, tasks, plugins): NAME= kept",
    "log-options": "log driver options (splunk-token, awslogs credentials, ...): keys kept",
    "volume-options": "volume driver options (a CIFS volume's password=), in volumes and in mounts",
    "exec-commands": "the command line of exec_create/exec_start events",
    "config-data": "the content of swarm configs (Spec.Data)",
    "commands": "container command lines (Path, Args, Cmd, Entrypoint, healthcheck test, Command)",
    "host-paths": "host paths: mount sources, binds, storage-driver directories, log and volume paths",
}
# What a profile without "redact" removes. "commands" and "host-paths" are opt-in: `docker ps`
# shows COMMAND and `docker inspect` mounts, and neither is usually a secret.
DEFAULT_REDACTIONS = frozenset({"env", "log-options", "volume-options", "exec-commands", "config-data"})
Label = tuple[str, str | None]  # docker's label filter: ("key", None) or ("key", "value")


@dataclass(frozen=True)
class Filtering:
    """A profile's response filtering."""

    redact: frozenset[str] = DEFAULT_REDACTIONS
    visible: tuple[Label, ...] = ()  # every label must match; () sees everything

    def label_filters(self) -> list[str]:
        return [key if value is None else f"{key}={value}" for key, value in self.visible]


def parse_label_filter(text: str) -> Label:
    """'key' or 'key=value', as docker's label filter; ValueError says what is wrong."""
    key, equals, value = text.partition("=")
    if not key or key != key.strip() or _CONTROL_BYTES.search(text.encode("utf-8", "replace")):
        raise ValueError(f"{text!r} is not a label filter (key or key=value)")
    return key, value if equals else None


def labels_match(labels: Any, wanted: Sequence[Label], where: str) -> bool:
    labels = _object(labels, where)
    return all(key in labels and (value is None or labels[key] == value) for key, value in wanted)


class TransformError(Exception):
    """A response could not be transformed: the client gets a 502 or an abort, never the
    untransformed bytes."""


class ObjectHidden(TransformError):
    """The object is outside the profile's visible labels: answered as missing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _object(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TransformError(f"{where} is not a JSON object")
    return value


def _array(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TransformError(f"{where} is not a JSON array")
    return value


def _at(value: Any, path: str) -> Any:
    """value['A']['B'] for path 'A.B'; None where a level is missing or null."""
    where = ""
    for key in path.split("."):
        where = f"{where}.{key}" if where else key
        value = _object(value, where or "the answer").get(key)
        if value is None:
            return None
    return value


class ResponseFilter:
    """One exchange's filter: what it removes, and counts of what it removed for the log line."""

    def __init__(self, filtering: Filtering, kind: str, name: str | None = None) -> None:
        self.redact = filtering.redact
        self.visible = filtering.visible
        self.kind = kind
        self.name = name  # the object as the client named it, for a 404's message
        self.redacted = 0  # values removed
        self.hidden = 0  # objects left out

    # -- redaction primitives: each removes values in place and counts them

    def _env(self, container: Any, key: str, where: str) -> None:
        values = _array(_object(container, where).get(key), f"{where}.{key}")
        for i, item in enumerate(values):
            if not isinstance(item, str):
                raise TransformError(f"{where}.{key}[{i}] is not a string")
            name, equals, value = item.partition("=")
            if equals and value:
                values[i] = name + "="
                self.redacted += 1

    def _values(self, container: Any, key: str, where: str) -> None:
        options = _object(_object(container, where).get(key), f"{where}.{key}")
        for name, value in options.items():
            if value not in ("", None):
                options[name] = ""
                self.redacted += 1

    def _blank(self, container: Any, key: str, where: str) -> None:
        """A string becomes "", an array [] (a command line; a host path)."""
        container = _object(container, where)
        value = container.get(key)
        if isinstance(value, str) and value:
            container[key] = ""
        elif isinstance(value, list) and value:
            container[key] = []
        elif value not in (None, "", []):
            raise TransformError(f"{where}.{key} is neither a string nor an array")
        else:
            return
        self.redacted += 1

    def _mounts(self, mounts: Any, where: str) -> None:
        for i, mount in enumerate(_array(mounts, where)):
            here = f"{where}[{i}]"
            if "volume-options" in self.redact:
                self._values(_at(mount, "VolumeOptions.DriverConfig"), "Options", here + ".VolumeOptions.DriverConfig")
            if "host-paths" in self.redact:
                self._blank(mount, "Source", here)

    def _container_spec(self, spec: Any, where: str) -> None:
        """A swarm service's or task's ContainerSpec."""
        if "env" in self.redact:
            self._env(spec, "Env", where)
        if "commands" in self.redact:
            self._blank(spec, "Command", where)
            self._blank(spec, "Args", where)
        self._mounts(_object(spec, where).get("Mounts"), where + ".Mounts")

    def _task_spec(self, spec: Any, where: str) -> None:
        self._container_spec(_object(spec, where).get("ContainerSpec"), where + ".ContainerSpec")
        if "log-options" in self.redact:
            self._values(_object(spec, where).get("LogDriver"), "Options", where + ".LogDriver")

    # -- per kind of object

    def container(self, doc: Any) -> Any:
        """GET /containers/{id}/json (Docker's and libpod's)."""
        if self.visible and not labels_match(_at(doc, "Config.Labels"), self.visible, "Config.Labels"):
            self.hidden += 1
            raise ObjectHidden(404, f"No such container: {self.name}")
        config, host = _object(doc, "the answer").get("Config"), _at(doc, "HostConfig")
        if "env" in self.redact:
            self._env(config, "Env", "Config")
        if "log-options" in self.redact:
            self._values(_at(host, "LogConfig"), "Config", "HostConfig.LogConfig")
        self._mounts(_object(host, "HostConfig").get("Mounts"), "HostConfig.Mounts")
        if "commands" in self.redact:
            for key in ("Path", "Args"):
                self._blank(doc, key, "the answer")
            for key in ("Cmd", "Entrypoint"):
                self._blank(config, key, "Config")
            test = _array(_at(config, "Healthcheck.Test"), "Config.Healthcheck.Test")
            if len(test) > 1:  # ["CMD-SHELL", "curl -u user:secret ..."]: keep the kind
                del test[1:]
                self.redacted += 1
        if "host-paths" in self.redact:
            self._mounts(_object(doc, "the answer").get("Mounts"), "Mounts")
            binds = _array(_object(host, "HostConfig").get("Binds"), "HostConfig.Binds")
            for i, bind in enumerate(binds):
                if not isinstance(bind, str):
                    raise TransformError(f"HostConfig.Binds[{i}] is not a string")
                if not bind.startswith(":"):
                    binds[i] = ":" + bind.partition(":")[2]
                    self.redacted += 1
            self._values(_at(doc, "GraphDriver"), "Data", "GraphDriver")
            for key in ("ResolvConfPath", "HostnamePath", "HostsPath", "LogPath"):
                self._blank(doc, key, "the answer")
        return doc

    def container_summary(self, item: Any, where: str) -> bool:
        """One entry of GET /containers/json (or /system/df's Containers); False: leave it out."""
        if self.visible and not labels_match(_object(item, where).get("Labels"), self.visible, where + ".Labels"):
            self.hidden += 1
            return False
        if "commands" in self.redact:
            self._blank(item, "Command", where)
        if "host-paths" in self.redact:
            for i, mount in enumerate(_array(_object(item, where).get("Mounts"), where + ".Mounts")):
                self._blank(mount, "Source", f"{where}.Mounts[{i}]")
        return True

    def image(self, doc: Any) -> Any:
        for key in ("Config", "ContainerConfig"):
            if "env" in self.redact:
                self._env(_object(doc, "the answer").get(key), "Env", key)
        if "host-paths" in self.redact:
            self._values(_at(doc, "GraphDriver"), "Data", "GraphDriver")
        return doc

    def service(self, doc: Any, where: str = "the answer") -> bool:
        if self.visible and not labels_match(_at(doc, "Spec.Labels"), self.visible, where + ".Spec.Labels"):
            self.hidden += 1
            return False
        for spec in ("Spec", "PreviousSpec"):
            template = _at(doc, spec + ".TaskTemplate")
            self._task_spec(template, f"{where}.{spec}.TaskTemplate")
        return True

    def task(self, doc: Any, where: str = "the answer") -> bool:
        labels = _at(doc, "Spec.ContainerSpec.Labels")
        if self.visible and not labels_match(labels, self.visible, where + ".Spec.ContainerSpec.Labels"):
            self.hidden += 1
            return False
        self._task_spec(_at(doc, "Spec"), where + ".Spec")
        return True

    def volume(self, doc: Any, where: str = "the answer") -> Any:
        if "volume-options" in self.redact:
            self._values(doc, "Options", where)
        if "host-paths" in self.redact:
            self._blank(doc, "Mountpoint", where)
        return doc

    def plugin(self, doc: Any, where: str = "the answer") -> Any:
        if "env" in self.redact:
            self._env(_at(doc, "Settings"), "Env", where + ".Settings")
            for i, variable in enumerate(_array(_at(doc, "Config.Env"), where + ".Config.Env")):
                if _object(variable, f"{where}.Config.Env[{i}]").get("Value") not in ("", None):
                    variable["Value"] = ""
                    self.redacted += 1
        return doc

    def config(self, doc: Any, where: str = "the answer") -> Any:
        if "config-data" in self.redact:
            self._blank(_at(doc, "Spec"), "Data", where + ".Spec")
        return doc

    def network(self, doc: Any, where: str = "the answer") -> Any:
        """A visible scope hides which containers use a network: the entries carry no labels to
        decide by, so all of them go (fail closed)."""
        attached = _object(_object(doc, where).get("Containers"), where + ".Containers")
        if self.visible and attached:
            self.hidden += len(attached)
            attached.clear()
        return doc

    # -- whole answers

    def _list(self, doc: Any, keep: Callable[[Any, str], Any]) -> list:
        items = doc if isinstance(doc, list) else None
        if items is None:
            raise TransformError(f"the answer to a {self.kind} is not a JSON array")
        return [item for i, item in enumerate(items) if keep(item, f"[{i}]") is not False]

    def document(self, doc: Any) -> Any:
        kind = self.kind
        if kind == "container":
            return self.container(doc)
        if kind == "container list":
            return self._list(doc, self.container_summary)
        if kind == "image":
            return self.image(doc)
        if kind in ("service", "task"):
            if not getattr(self, kind)(doc):
                raise ObjectHidden(404, f"{kind} {self.name} not found")
            return doc
        if kind == "service list":
            return self._list(doc, self.service)
        if kind == "task list":
            return self._list(doc, self.task)
        if kind == "volume":
            return self.volume(doc)
        if kind == "volume list":
            for i, volume in enumerate(_array(_object(doc, "the answer").get("Volumes"), "Volumes")):
                self.volume(volume, f"Volumes[{i}]")
            return doc
        if kind == "disk usage":
            body = _object(doc, "the answer")
            if body.get("Containers") is not None:
                body["Containers"] = [c for i, c in enumerate(_array(body["Containers"], "Containers"))
                                      if self.container_summary(c, f"Containers[{i}]")]
            for i, volume in enumerate(_array(body.get("Volumes"), "Volumes")):
                self.volume(volume, f"Volumes[{i}]")
            return doc
        if kind in ("plugin", "config", "network"):
            return getattr(self, kind)(doc)
        if kind in ("plugin list", "config list", "network list"):
            return self._list(doc, getattr(self, kind.split()[0]))
        raise TransformError(f"no filter for a {kind}")  # plan_response_filter names only the above

    def event_line(self, line: bytes) -> bytes:
        """event() on one line of /events, serialised. Its result depends on the line and this
        profile's filtering alone, so it is kept for the next watcher: SharedStream hands each
        event to every watcher in turn, and watchers of one profile share the work (counts
        included). Lines over MAX_SHARED_EVENT_BYTES, and events that fail, are not kept."""
        key = (self.redact, self.visible, bytes(line))  # (the rewriter's lines are bytearrays)
        known = _FILTERED_EVENTS.get(key)
        if known is None:
            redacted, hidden = self.redacted, self.hidden
            known = (event_bytes(self.event, line), self.redacted - redacted, self.hidden - hidden)
            if len(line) <= MAX_SHARED_EVENT_BYTES:
                if len(_FILTERED_EVENTS) >= MAX_SHARED_EVENTS:
                    _FILTERED_EVENTS.clear()
                _FILTERED_EVENTS[key] = known
            return known[0]
        self.redacted += known[1]
        self.hidden += known[2]
        return known[0]

    def event(self, event: Any) -> Any:
        """One /events object; None: not delivered."""
        event = _object(event, "an event")
        actor = _object(event.get("Actor"), "Actor")
        attributes = _object(actor.get("Attributes"), "Actor.Attributes")
        kind = event.get("Type")
        if self.visible:
            if kind == "container":
                if not labels_match(attributes, self.visible, "Actor.Attributes"):
                    self.hidden += 1
                    return None
            elif kind in ("service", "node") or "container" in attributes:
                # service events carry no labels, and network or volume events that name a
                # container cannot say whether it is visible: fail closed
                self.hidden += 1
                return None
        if "exec-commands" in self.redact:
            for key in ("Action", "status"):
                value = event.get(key)
                if isinstance(value, str) and value.startswith("exec_") and ":" in value:
                    event[key] = value.partition(":")[0]
                    self.redacted += 1
            for key in ("execCommand", "command"):
                if attributes.get(key) not in (None, ""):
                    attributes[key] = ""
                    self.redacted += 1
        return event


# Podman's /libpod/... twins answer in the same shapes for what is filtered here.
def classify_for_filter(segments: Sequence[str]) -> tuple[str | None, str | None]:
    """(kind of answer to filter, object kind to resolve before forwarding) for a path."""
    s = tuple(segments[1:]) if segments[:1] == ("libpod",) else tuple(segments)
    head, n = s[0], len(s)
    if head == "containers":
        if s == ("containers", "json"):
            return "container list", None
        if n == 3 and s[2] == "json":
            return "container", None
        return None, ("container" if n >= 3 else None)
    if head in ("services", "tasks"):
        single = head[:-1]
        if n == 1:
            return f"{single} list", None
        if n == 2:
            return single, None
        return None, (single if n >= 3 else None)
    if head == "images" and n >= 3 and s[-1] == "json":
        return "image", None
    if head == "plugins":
        return ("plugin list" if n == 1 else "plugin" if s[-1] == "json" else None), None
    if head in ("volumes", "configs", "networks"):
        single = head[:-1]
        return (f"{single} list" if n == 1 else single if n == 2 else None), None
    if s == ("system", "df"):
        return "disk usage", None
    if s == ("events",):
        return "events", None
    return None, None


# Which redactions can change each kind of answer: with none of them on, and no visible
# scope, the answer is relayed untouched (no buffering, no parsing).
_REDACTIONS_FOR = {
    "container": {"env", "log-options", "volume-options", "commands", "host-paths"},
    "container list": {"commands", "host-paths"},
    "image": {"env", "host-paths"},
    "service": {"env", "log-options", "volume-options", "commands", "host-paths"},
    "task": {"env", "log-options", "volume-options", "commands", "host-paths"},
    "volume": {"volume-options", "host-paths"},
    "disk usage": {"commands", "host-paths", "volume-options"},
    "plugin": {"env"},
    "config": {"config-data"},
    "network": set(),
    "events": {"exec-commands"},
}
_SCOPED = {"container", "container list", "service", "service list", "task", "task list", "disk usage",
           "network", "network list", "events"}


@dataclass(frozen=True)
class FilterPlan:
    target: Target  # what to forward: a list's label filters added
    method: str  # a filtered HEAD is forwarded as GET, so its Content-Length is the filtered one
    filter: ResponseFilter | None  # None: relay the answer untouched
    lookup: str | None = None  # resolve this kind of object (segment after the collection) first


def plan_response_filter(filtering: Filtering, method: str, target: Target) -> FilterPlan:
    """How one allowed request's answer is filtered. Raises Refusal if its filters query cannot
    take the profile's label scope."""
    kind, lookup = classify_for_filter(target.segments)
    if lookup is not None and filtering.visible:
        return FilterPlan(target, method, None, lookup)
    if kind is None:
        return FilterPlan(target, method, None)
    base = kind.removesuffix(" list")
    scoped = bool(filtering.visible) and (kind in _SCOPED or base in _SCOPED)
    if not scoped and not filtering.redact & _REDACTIONS_FOR.get(kind, _REDACTIONS_FOR.get(base, set())):
        return FilterPlan(target, method, None)
    name = target.segments[-2] if kind == "container" else target.segments[-1]
    if kind in ("container list", "service list") and filtering.visible:
        target = with_label_filters(target, filtering.label_filters())  # cheaper: dockerd filters too
    forwarded = "GET" if method == "HEAD" and kind != "events" else method
    return FilterPlan(target, forwarded, ResponseFilter(filtering, kind, name))


DEFAULT_FILTERING = Filtering()  # a profile without "redact" or "visible"
MAX_EVENT_BYTES = 1024 * 1024  # one /events object; dockerd's are a few hundred bytes
MAX_SHARED_EVENTS = 64  # filtered events kept for the next watcher (ResponseFilter.event_line)
MAX_SHARED_EVENT_BYTES = 16 * 1024  # ... each at most this long
_FILTERED_EVENTS: dict[tuple, tuple[bytes, int, int]] = {}


def filter_transform(response_filter: ResponseFilter, max_bytes: int) -> ResponseTransform:
    """The relay's transform stage for one filtered exchange."""
    if response_filter.kind == "events":
        return ResponseTransform(event_line=response_filter.event_line, max_bytes=min(max_bytes, MAX_EVENT_BYTES))
    return ResponseTransform(document=response_filter.document, max_bytes=max_bytes)


def with_label_filters(target: Target, labels: Sequence[str]) -> Target:
    """The target with `labels` added to its filters query (list or map form, as the client
    wrote it). The response is still filtered: the daemon is not trusted to have applied it."""
    raw = target.query_value("filters")
    try:
        filters = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        raise Refusal(400, "the filters query parameter is not valid JSON") from None
    if not isinstance(filters, dict):
        raise Refusal(400, "the filters query parameter is not a JSON object")
    current = filters.get("label")
    if current is None and any(isinstance(value, dict) for value in filters.values()):
        filters["label"] = {label: True for label in labels}  # dockerd refuses the two forms mixed
    elif current is None:
        filters["label"] = list(labels)
    elif isinstance(current, list):
        filters["label"] = current + [label for label in labels if label not in current]
    elif isinstance(current, dict):
        filters["label"] = {**current, **{label: True for label in labels}}
    else:
        raise Refusal(400, "the label filter is neither a list nor a map")
    text = json.dumps(filters, separators=(",", ":"))
    query = tuple((k, text if k == "filters" else v) for k, v in target.query)
    if raw is None:
        query += (("filters", text),)
    return Target(target.version, target.segments, query)


def resolved_object(kind: str, name: str, status: int, doc: Any, filtering: Filtering) -> str:
    """After Lookup asked the daemon about `name`: the full ID to forward the request with.
    Raises ObjectHidden for a missing or invisible object, TransformError for a bad answer."""
    if status == 404 or (status == 200 and not _visible_object(kind, doc, filtering)):
        raise ObjectHidden(404, f"No such container: {name}" if kind == "container" else f"{kind} {name} not found")
    if status != 200:
        message = _object(doc, "the answer").get("message") if isinstance(doc, dict) else None
        raise ObjectHidden(status if 400 <= status < 600 else 502,
                           message if isinstance(message, str) else f"the daemon answered {status}")
    full_id = _object(doc, "the answer").get("ID" if kind != "container" else "Id")
    if not isinstance(full_id, str) or not _SAFE_SEGMENT.fullmatch(full_id):
        raise TransformError(f"the daemon's {kind} has no usable ID")
    return full_id


def _visible_object(kind: str, doc: Any, filtering: Filtering) -> bool:
    labels = {"container": "Config.Labels", "service": "Spec.Labels", "task": "Spec.ContainerSpec.Labels"}[kind]
    return labels_match(_at(doc, labels), filtering.visible, labels)


# --------------------------------------------------------------------------------------------
# 3. Logging: one line per event on stderr. json.dumps escapes every control character, so a
#    hostile target or header can never start a new line.
# --------------------------------------------------------------------------------------------

LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_JSON_LINE = json.JSONEncoder(ensure_ascii=True, default=str).encode  # json.dumps(default=...) builds one a call
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
            line = _JSON_LINE(record)
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


# ---- metrics ---------------------------------------------------------------------------------
#
# Counters the proxy keeps as it works, rendered on demand in Prometheus' text exposition format
# (version 0.0.4) by the --metrics listener. Every label value comes from a bounded set: a
# profile name of the rules, a decision (allow, deny, error), a rule's path template (never the
# raw path), one of UPSTREAM_ERROR_REASONS, a reload result. So the number of series is bounded
# by the rules file, whatever clients send.

UPSTREAM_ERROR_REASONS = ("connect_failed", "timeout", "protocol_error", "closed")
RELOAD_RESULTS = ("ok", "failed")
NO_RULE = "(none)"  # the endpoint label of a request that matched no rule (refused before one)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed escaped, as the exposition format requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Metrics:
    """The proxy's counters and its one histogram: plain dictionaries, no I/O, no sockets.

    Rule 1: counting is a dictionary increment: it runs once per request, in the loop.
    Rule 2: a label value is never taken from a client's bytes (see the section comment).
    Rule 3: the fixed label sets (upstream error reasons, reload results) are rendered from the
            start, at 0, so rate() sees the first increment.
    """

    def __init__(self, version: str = VERSION) -> None:
        self.version = version
        self.requests: dict[tuple[str, str, str], int] = {}  # (profile, decision, endpoint) -> count
        self.duration_buckets = [0] * len(DURATION_BUCKETS)  # per bucket, not cumulative
        self.duration_count = 0
        self.duration_sum = 0.0
        self.upstream_errors = dict.fromkeys(UPSTREAM_ERROR_REASONS, 0)
        self.reloads = dict.fromkeys(RELOAD_RESULTS, 0)

    def request_done(self, profile: str, decision: str, endpoint: str | None, duration: float | None) -> None:
        """One exchange ended; `duration` is None for a stream (it has no meaningful one)."""
        key = (profile, decision, endpoint or NO_RULE)
        self.requests[key] = self.requests.get(key, 0) + 1
        if duration is not None:
            self.duration_count += 1
            self.duration_sum += duration
            for i, bound in enumerate(DURATION_BUCKETS):
                if duration <= bound:
                    self.duration_buckets[i] += 1
                    break

    def upstream_error(self, reason: str) -> None:
        if reason not in self.upstream_errors:
            raise ValueError(f"unknown upstream error reason {reason!r}")
        self.upstream_errors[reason] += 1

    def reloaded(self, ok: bool) -> None:
        self.reloads["ok" if ok else "failed"] += 1

    def render(self, open_connections: int, open_streams: int) -> str:
        """The exposition text, gauges as given (the proxy knows them; the registry does not)."""
        lines: list[str] = []

        def family(name: str, kind: str, text: str, samples: Iterable[tuple[str, Sequence[tuple[str, str]], float]]) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{sample}{_labels(labels)} {_number(value)}" for sample, labels, value in samples)

        name = "porthole_requests_total"
        family(name, "counter", "Requests answered, by profile, decision and the matching rule's path template.",
               ((name, (("profile", p), ("decision", d), ("endpoint", e)), n)
                for (p, d, e), n in sorted(self.requests.items())))
        name = "porthole_request_duration_seconds"
        cumulative, buckets = 0, []
        for bound, count in zip(DURATION_BUCKETS, self.duration_buckets):
            cumulative += count
            buckets.append((name + "_bucket", (("le", _number(bound)),), cumulative))
        buckets.append((name + "_bucket", (("le", "+Inf"),), self.duration_count))
        buckets.append((name + "_sum", (), self.duration_sum))
        buckets.append((name + "_count", (), self.duration_count))
        family(name, "histogram", "Time from request head to the answer's delivery, finite requests only (not streams).",
               buckets)
        family("porthole_open_connections", "gauge", "Client connections open now.",
               [("porthole_open_connections", (), open_connections)])
        family("porthole_open_streams", "gauge", "Streaming requests (events, followed logs, stats) open now.",
               [("porthole_open_streams", (), open_streams)])
        name = "porthole_upstream_errors_total"
        family(name, "counter", "Failures talking to the Docker daemon that reached a client, by reason.",
               ((name, (("reason", r),), n) for r, n in self.upstream_errors.items()))
        name = "porthole_reloads_total"
        family(name, "counter", "Rules reloads, by result (failed: the old policy was kept).",
               ((name, (("result", r),), n) for r, n in self.reloads.items()))
        family("porthole_info", "gauge", "Porthole's version.", [("porthole_info", (("version", self.version),), 1)])
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# 4. Connections
#
#    Small parts, each testable alone with a socketpair and a fake clock:
#      Loop                selector, deadline heap, turns (fairness), every callback guarded
#      OutputQueue         bytes queued for a client, and the ledger of what was delivered
#      ClientConnection    the h11 server side of one client: parse, answer, deliver, close
#      ResponseRewriter    an optional per-exchange transform of a response body
#      UpstreamConnection  the h11 client side of one daemon connection
#      UpstreamPool        fresh or pooled daemon connections, and the daemon's address
#      Relay               one exchange's response: daemon -> client, with back-pressure
#      SharedStream        one /events subscription fanned out to many watchers
#      CoalescedRead       one finite GET answered once for every client that asked before it was sent
#      Listener            accept with back-off
#    Section 5 (Proxy) wires them to the policy.
# --------------------------------------------------------------------------------------------

END_OF_MESSAGE = h11.EndOfMessage()  # events are immutable: one for every message (no per-request validation)
REQUESTS_PER_TURN = 4  # pipelined requests parsed per client per loop pass (fairness)
MAX_REFUSALS_IN_A_ROW = 100  # then the connection is closed: refusals are cheap, not free
ACCEPTS_PER_TURN = 64
REJECT_SLACK = 64  # connections over --max-connections that may wait for their 503 at once
POOL_IDLE_SECONDS = 30.0
ACCEPT_BACKOFF_SECONDS = 0.1


class StateError(RuntimeError):
    """An illegal state transition: a bug in porthole, never a client's doing."""


def illegal_transition(old: enum.Enum, new: enum.Enum) -> StateError:
    return StateError(f"illegal transition {old.name} -> {new.name}")


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
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return f"porthole is out of file descriptors ({exc.strerror}); try again"
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


class Loop:
    """One selectors loop. A part is any object with on_io(mask), on_turn(), on_deadline(now)
    and abort(reason), as it needs them.

    Rule 1: every callback runs under guard(): an exception is logged with its traceback, the
            part that raised is aborted, and the loop goes on.
    Rule 2: a part has at most one deadline; setting one replaces the last. The heap may hold
            stale entries: an entry fires only while it is the part's scheduled one, and a part
            whose deadline moved later is rescheduled, not fired.
    Rule 3: a part with more work than one pass allows asks for a turn (soon()). select() does
            not block while turns are pending, and each pass gives each pending part one turn.
    """

    def __init__(self, log: Log, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self.heap: list[tuple[float, int, Any]] = []
        self.wanted: dict[Any, float] = {}  # part -> when it wants its deadline
        self.scheduled: dict[Any, tuple[float, int]] = {}  # part -> its live heap entry
        self.turns: dict[Any, None] = {}  # an ordered set
        self.passes = 0  # run_once calls so far: per-pass budgets reset when it moves
        self.sequence = itertools.count()

    def watch(self, sock: socket.socket, mask: int, part: Any) -> None:
        set_interest(self.selector, sock, mask, part)

    def forget(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    def set_deadline(self, part: Any, when: float | None) -> None:
        """Replace the part's deadline (None: none for now; its heap entry may stay, and costs
        a wake-up at most, so that a deadline set again later needs no new entry)."""
        if when is None:
            self.wanted.pop(part, None)
            return
        self.wanted[part] = when
        live = self.scheduled.get(part)
        if live is None or when < live[0]:
            self._schedule(part, when)

    def _schedule(self, part: Any, when: float) -> None:
        entry = (when, next(self.sequence))
        self.scheduled[part] = entry
        heapq.heappush(self.heap, (*entry, part))
        if len(self.heap) > 2 * len(self.scheduled) + 64:  # drop stale entries now and then
            self.heap = [(*entry, p) for p, entry in self.scheduled.items()]
            heapq.heapify(self.heap)

    def cancel(self, part: Any) -> None:
        """The part is gone: forget its deadline entirely."""
        self.wanted.pop(part, None)
        self.scheduled.pop(part, None)

    def soon(self, part: Any) -> None:
        self.turns[part] = None

    def guard(self, part: Any, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:  # a bug on one connection must not stop the others
            self.log("error", "internal_error", part=type(part).__name__, error=repr(exc),
                     traceback=traceback.format_exc(limit=8))
            abort = getattr(part, "abort", None)
            if abort is not None:
                with contextlib.suppress(Exception):
                    abort("internal error")

    def run_once(self, max_wait: float) -> int:
        """One pass: ready I/O, then pending turns, then due deadlines. Returns how many
        callbacks ran (0: nothing was ready)."""
        timeout = 0.0 if self.turns else max_wait
        if self.heap:
            timeout = min(timeout, max(0.0, self.heap[0][0] - self.clock()))
        events = self.selector.select(timeout)
        self.passes += 1
        for key, mask in events:
            self.guard(key.data, key.data.on_io, mask)
        turns, self.turns = self.turns, {}
        for part in turns:
            self.guard(part, part.on_turn)
        return len(events) + len(turns) + self.fire_deadlines(self.clock())

    def fire_deadlines(self, now: float) -> int:
        fired = 0
        while self.heap and self.heap[0][0] <= now:
            when, seq, part = heapq.heappop(self.heap)
            if self.scheduled.get(part) != (when, seq):
                continue  # stale: replaced or cancelled
            del self.scheduled[part]
            wanted = self.wanted.get(part)
            if wanted is None:
                continue
            if wanted > now:
                self._schedule(part, wanted)
                continue
            del self.wanted[part]
            self.guard(part, part.on_deadline, now)
            fired += 1
        return fired


# ---- writing answers --------------------------------------------------------------------------
#
# h11 parses every head on both sides. The heads and bodies porthole sends are written by the
# two pieces below, from values h11 parsed and checked (or porthole made), framed exactly as
# h11's server side frames them: tests/test_framing.py checks, on generated heads, methods,
# HTTP versions and bodies, that they write the bytes h11 writes and close where h11 would.
# Writing is where h11 spent half its time, re-validating what it had validated already.

class FramingError(Exception):
    """A body that does not match its head's framing: never sent as if it did."""


class BodyWriter:
    """Frames one answer's body for the client: exactly Content-Length bytes, chunked, or (an
    HTTP/1.0 client) as it comes, ended by closing the connection."""

    __slots__ = ("chunked", "remaining")

    def __init__(self, chunked: bool, length: int | None) -> None:
        self.chunked = chunked
        self.remaining = length  # None: chunked, or until the connection closes

    def data(self, data: bytes) -> bytes:
        if self.chunked:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if self.remaining is not None:
            self.remaining -= len(data)
            if self.remaining < 0:
                raise FramingError("more body than the Content-Length announced")
        return data

    def end(self) -> bytes:
        if self.chunked:
            return b"0\r\n\r\n"
        if self.remaining:
            raise FramingError("less body than the Content-Length announced")
        return b""


def client_keeps_alive(version: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the client's request lets its connection stay open after the answer (h11:
    HTTP/1.1 and no "close" token in Connection)."""
    return version >= b"1.1" and b"close" not in connection_tokens(headers)


def response_head(head: h11.Response, method: str, version: bytes | None,
                  keep_alive: bool) -> tuple[bytes, BodyWriter, bool]:
    """response_head_parts, with a fresh BodyWriter. A head relayed again and again (the same
    h11.Response object: UpstreamPool.heads) is written once per kind of client, then reused."""
    data, chunked, length, close = kept_for(_WRITTEN_HEADS, head, (method, version, keep_alive),
                                            lambda: response_head_parts(head, method, version, keep_alive))
    return data, BodyWriter(chunked, length), close


_WRITTEN_HEADS: dict[tuple, tuple[Any, Any]] = {}


def response_head_parts(head: h11.Response, method: str, version: bytes | None,
                        keep_alive: bool) -> tuple[bytes, bool, int | None, bool]:
    """`head`'s bytes for a client that asked with `method` over HTTP `version` (None: its
    request never parsed), how its body is framed (chunked, Content-Length or None: neither)
    and whether the connection closes after it, as h11's server side decides them: a body of
    unknown length goes chunked to HTTP/1.1 and unframed to HTTP/1.0 (which then closes);
    Connection: close is added whenever the connection will close."""
    headers = head.headers.raw_items()
    names = [name.lower() for name, _ in headers]
    status = head.status_code
    unknown_length = status not in (204, 304) and (b"transfer-encoding" in names or b"content-length" not in names)
    close = not keep_alive
    if unknown_length:
        kept = [(n, v) for (n, v), low in zip(headers, names) if low not in (b"content-length", b"transfer-encoding")]
        if version is None or version < b"1.1":
            close = close or method != "HEAD"
        else:
            kept.append((b"Transfer-Encoding", b"chunked"))
        headers = kept
        names = [name.lower() for name, _ in headers]
    if close:
        tokens = connection_tokens(zip(names, (value for _, value in headers)))
        tokens.discard(b"keep-alive")
        tokens.add(b"close")
        headers = [(n, v) for (n, v), low in zip(headers, names) if low != b"connection"]
        headers += [(b"Connection", token) for token in sorted(tokens)]
        names = [name.lower() for name, _ in headers]
    elif b"connection" in names:  # the head's own "close" ends the connection too
        close = b"close" in connection_tokens(zip(names, (value for _, value in headers)))
    if status in (204, 304) or method == "HEAD":
        chunked, length = False, 0
    elif b"transfer-encoding" in names:
        chunked, length = True, None
    elif b"content-length" in names:
        chunked, length = False, int(headers[names.index(b"content-length")][1])
    else:
        chunked, length = False, None
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, head.reason)]
    lines += [b"%s: %s\r\n" % item for item, low in zip(headers, names) if low == b"host"]
    lines += [b"%s: %s\r\n" % item for item, low in zip(headers, names) if low != b"host"]
    lines.append(b"\r\n")
    return b"".join(lines), chunked, length, close


@dataclass(eq=False)
class Exchange:
    """One request/response on a client connection, from request head to its log line, and
    the sink its response is written into."""

    client: ClientConnection
    facts: RequestFacts
    started: float
    decision: Decision | None = None
    status: int | None = None
    outcome: str = "allow"  # allow, would_deny (learn or warn mode), deny or error
    reason: str | None = None
    body_bytes: int = 0  # body bytes queued for the client
    delivered: int = 0  # ... of which the client's socket accepted
    source: Any = None  # its one source of response bytes: a Relay or a SharedStream
    response_started: bool = False  # a response head is queued: failures now abort
    close_after: bool = False
    transform: ResponseTransform | None = None
    rewriter: ResponseRewriter | None = None
    filter: ResponseFilter | None = None  # the profile's response filter, for its counts
    client_rule: str | None = None  # the `clients` entry that chose facts.profile, if any
    writer: BodyWriter | None = None  # frames the body once the head is written

    def write_head(self, head: h11.Response) -> None:
        facts = self.facts
        data, self.writer, close = response_head(head, facts.method, facts.http_version,
                                                 client_keeps_alive(facts.http_version, facts.headers))
        self.close_after = self.close_after or close
        self.response_started = True
        self.client.out.write(data)

    def write_body(self, data: bytes) -> None:
        """Raises FramingError for more body than the head announced."""
        self.client.out.write_body(self.writer.data(data), len(data), self)  # type: ignore[union-attr]

    def write_end(self) -> None:
        """Raises FramingError for less body than the head announced."""
        self.client.out.write(self.writer.end())  # type: ignore[union-attr]

    @property
    def streaming(self) -> bool:
        return self.decision is not None and self.decision.streaming

    @property
    def active(self) -> bool:
        """Still the client's current exchange (not finished, not closed)."""
        return self.client.exchange is self

    # The response, written through the client's h11 into its OutputQueue. Relay and
    # SharedStream call send_head, send_body, end_body and fail; local answers call answer.

    def answer(self, status: int, message: str, close: bool = False, as_daemon: bool = False) -> None:
        """Answer locally with a Docker-style JSON error."""
        client, body = self.client, error_body(message, as_daemon)
        self.status = status
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
        if close:
            headers.append((b"Connection", b"close"))
            self.close_after = True
        self.rewriter = None  # a local answer is never transformed
        self.write_head(h11.Response(status_code=status, headers=headers, _parsed=True))  # (porthole's own)
        if self.facts.method != "HEAD":
            self.write_body(body)
        self.write_end()
        client.finish_exchange()

    def refuse(self, refusal: Refusal, last_straw: bool = False) -> None:
        """Answer with the refusal; `last_straw`: the client has had MAX_REFUSALS_IN_A_ROW of
        them in a row, so its connection closes after this one."""
        self.outcome = "deny" if refusal.status in (403, 429) else "error"
        self.reason = refusal.reason
        close = refusal.close
        if last_straw and not close:
            close = True
            self.reason += f" (closing the connection after {MAX_REFUSALS_IN_A_ROW} refusals in a row)"
        self.answer(refusal.status, refusal.reason, close=close)

    def send_head(self, head: h11.Response) -> None:
        client = self.client
        client.refusals_in_a_row = 0
        self.status = head.status_code
        if self.transform is not None and 200 <= head.status_code < 300:
            self.rewriter = ResponseRewriter(self.transform, head, self.facts.method)
            head = self.rewriter.head()
            if head is None:
                return  # held until the whole body is rewritten
        self.write_head(head)
        client.wake()

    def send_body(self, data: bytes) -> None:
        if self.rewriter is not None:
            try:
                data = self.rewriter.feed(data)
            except TransformError as exc:
                self.transform_failed(exc)
                return
        if data and self.facts.method != "HEAD":  # a filtered HEAD went as GET: its head answers
            try:
                self.write_body(data)
            except FramingError as exc:
                self.client.abort(f"the daemon's answer: {exc}")
                return
            self.client.wake()

    def end_body(self) -> None:
        client = self.client
        try:
            if self.rewriter is not None:
                try:
                    head, data = self.rewriter.finish()
                except TransformError as exc:
                    self.transform_failed(exc)
                    return
                if head is not None:
                    self.write_head(head)
                if data:
                    self.write_body(data)
            self.write_end()
        except FramingError as exc:
            client.abort(f"the daemon's answer: {exc}")
            return
        client.finish_exchange()

    def transform_failed(self, exc: TransformError) -> None:
        """Fail closed: never the untransformed bytes. A hidden object is answered as missing."""
        if self.source is not None:
            self.source.cancel(self)
        if isinstance(exc, ObjectHidden) and self.active and not self.response_started:
            self.source = None
            self.outcome = "deny" if exc.status == 404 else "error"
            self.reason = ("not visible to this profile, or missing" if exc.status == 404
                           else f"the daemon answered the lookup with {exc.status}")
            self.answer(exc.status, exc.message, as_daemon=True)
            return
        self.fail(502, f"response filter failed: {exc}")

    def fail(self, status: int, message: str) -> None:
        """The source could not deliver: answer if nothing was sent yet, else abort the client
        (a broken response never ends cleanly)."""
        if not self.active:
            return
        self.source = None
        self.outcome, self.reason = "error", message
        if self.response_started:
            self.client.abort(message)
        else:
            self.answer(status, message)

    def stop(self) -> None:
        """The proxy is stopping: a stream ends now (cleanly, if its head was sent); a finite
        answer is delivered, then the connection closes."""
        self.close_after = True
        if not self.streaming:
            return
        if self.source is not None:
            self.source.cancel(self)
            self.source = None
        if not self.response_started:
            self.answer(503, "porthole is shutting down", close=True)
            return
        self.reason = "stream ended: proxy shutting down"
        try:
            self.write_end()
        except FramingError:
            self.client.abort(self.reason)
            return
        self.client.finish_exchange()


class OutputQueue:
    """Bytes waiting for a client's socket, and a ledger of whose body bytes they are.

    Rule 1: an exchange's body bytes count as delivered only once the socket accepted them.
    Rule 2: an exchange is complete once the socket accepted its last byte.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.buffer = bytearray()
        self.queued = 0  # bytes ever queued
        self.sent = 0  # bytes ever accepted by the socket
        self.last_progress = clock()
        self.payloads: deque[tuple[int, int, Exchange]] = deque()  # (start, length, exchange)
        self.ends: deque[tuple[int, Exchange]] = deque()  # (offset after its last byte, exchange)

    def __len__(self) -> int:
        return len(self.buffer)

    def write(self, data: bytes) -> None:
        if not self.buffer:
            self.last_progress = self.clock()  # the write-stall clock starts now
        self.buffer += data
        self.queued += len(data)

    def write_body(self, wire: bytes, payload: int, exchange: Exchange) -> None:
        """Queue `wire`, which carries `payload` body bytes (framed by h11: chunked adds CRLF)."""
        trailer = 2 if len(wire) > payload else 0
        self.payloads.append((self.queued + len(wire) - payload - trailer, payload, exchange))
        exchange.body_bytes += payload
        self.write(wire)

    def end(self, exchange: Exchange) -> None:
        self.ends.append((self.queued, exchange))

    def send(self, sock: socket.socket) -> list[Exchange]:
        """Send what the socket takes; return the exchanges now completely delivered.
        Raises OSError when the client is gone."""
        if self.buffer:
            try:
                sent = sock.send(self.buffer)
            except BlockingIOError:
                sent = 0
            if sent:
                del self.buffer[:sent]
                self.sent += sent
                self.last_progress = self.clock()
        while self.payloads and self.payloads[0][0] + self.payloads[0][1] <= self.sent:
            _, length, exchange = self.payloads.popleft()
            exchange.delivered += length
        done = []
        while self.ends and self.ends[0][0] <= self.sent:
            done.append(self.ends.popleft()[1])
        return done

    def settle(self) -> list[Exchange]:
        """The connection is closing: credit partly sent payloads; return every exchange still
        in the ledger (each appears once)."""
        for start, length, exchange in self.payloads:
            exchange.delivered += max(0, min(length, self.sent - start))
        self.payloads.clear()
        pending = list(dict.fromkeys(exchange for _, exchange in self.ends))
        self.ends.clear()
        self.buffer.clear()
        return pending


class ClientState(enum.Enum):
    HANDSHAKE = "handshake"  # TLS listeners: the handshake is under way, no HTTP yet
    IDLE = "idle"  # between requests: waiting for the first byte of the next head
    HEAD = "head"  # part of a request head has arrived
    ACTIVE = "active"  # one request is being answered (forwarded, relayed or answered locally)
    DRAINING = "draining"  # the last answer is queued: deliver it, then send FIN
    LINGERING = "lingering"  # FIN sent: discard what the client still sends until it closes
    CLOSED = "closed"

    __hash__ = object.__hash__  # members are singletons; Enum's own __hash__ is Python code


_C = ClientState
CLIENT_TRANSITIONS: Mapping[ClientState, frozenset[ClientState]] = {
    _C.HANDSHAKE: frozenset({_C.IDLE, _C.HEAD, _C.DRAINING, _C.CLOSED}),
    _C.IDLE: frozenset({_C.HEAD, _C.ACTIVE, _C.DRAINING, _C.CLOSED}),
    _C.HEAD: frozenset({_C.ACTIVE, _C.DRAINING, _C.CLOSED}),
    _C.ACTIVE: frozenset({_C.IDLE, _C.HEAD, _C.DRAINING, _C.CLOSED}),
    _C.DRAINING: frozenset({_C.LINGERING, _C.CLOSED}),
    _C.LINGERING: frozenset({_C.CLOSED}),
    _C.CLOSED: frozenset(),
}


def client_deadline(state: ClientState, entered: float, head_since: float, out: OutputQueue,
                    streaming: bool, settings: Settings) -> tuple[float | None, bool]:
    """When a client's deadline falls, and whether it is the write-stall one. IDLE:
    --idle-timeout after the last answer was delivered; HANDSHAKE and HEAD: --head-timeout
    after the connection (TLS) or the head began; LINGERING: LINGER_SECONDS; in any open
    state, a finite answer queued but not moving for --write-timeout (a stream pauses its
    source instead)."""
    stall = None
    if out.buffer and state is not ClientState.CLOSED and not streaming:
        stall = out.last_progress + settings.write_timeout
    if state is ClientState.IDLE:
        own = None if out.buffer else max(entered, out.last_progress) + settings.idle_timeout
    elif state is ClientState.HEAD or state is ClientState.HANDSHAKE:
        own = head_since + settings.head_timeout
    elif state is ClientState.LINGERING:
        own = entered + LINGER_SECONDS
    else:
        own = None
    if stall is not None and (own is None or stall <= own):
        return stall, True
    return own, False


class RequestReader:
    """A client's bytes on their way to h11, which parses every request head: one fresh h11
    server connection a head (porthole writes the answers itself, see response_head), fed one
    chunk at a time, only when h11 asks, so what h11 holds stays bounded, the backlog is what
    stops us reading a flooding client, and the raw size of each request head is exact.

    Rule 1: a head byte for byte like one h11 has parsed is that same request (h11's parse
            depends on nothing else: each head gets a fresh h11 in the same state), so clients
            polling with the same requests are parsed by h11 once. `remembered` holds heads h11
            accepted, complete and body-less, by their exact bytes (one table per profile, as
            the decisions are kept). The candidate looked up runs to the backlog's first CRLF
            CRLF: if h11 would end the head sooner (a bare LF), no head it accepted is equal
            to the candidate, so a match is always exactly where h11 ends the head.
    Rule 2: bytes after a head (pipelined requests) go back to the backlog, for the next one.
    """

    def __init__(self, max_head_bytes: int, remembered: dict[bytes, h11.Request] | None = None) -> None:
        self.max_head_bytes = max_head_bytes
        self.remembered: dict[bytes, h11.Request] = {} if remembered is None else remembered
        self.parser: h11.Connection | None = None  # h11, parsing the head under way
        self.fed = bytearray()  # what it was given
        self.backlog = bytearray()  # read from the socket, not yet given to h11
        self.backlog_limit = 4 * max_head_bytes
        self.eof = False  # the client sent FIN
        self.eof_fed = False  # ... and the parser has been told
        self.head_bytes = 0  # raw size of the last head
        self.declares_body = False  # ... which announced a body (never read: the connection closes)

    def add(self, data: bytes) -> None:
        if data:
            self.backlog += data
        else:
            self.eof = True

    @property
    def pending(self) -> bool:
        """Bytes of a next request are waiting (in the backlog or inside h11)."""
        return bool(self.backlog or self.fed)

    @property
    def wants_more(self) -> bool:
        return not self.eof and len(self.backlog) < self.backlog_limit

    def next_event(self) -> Any:
        """The next request (h11.Request), NEED_DATA or ConnectionClosed; raises
        h11.RemoteProtocolError for a malformed head."""
        if not self.fed:
            end = self.backlog.find(b"\r\n\r\n", 0, MAX_REMEMBERED_REQUEST_HEAD) + 4
            request = self.remembered.get(bytes(self.backlog[:end])) if end > 3 else None
            if request is not None:  # (Rule 1)
                del self.backlog[:end]
                self.head_bytes, self.declares_body = end, False
                return request
            if not self.backlog and not self.eof:
                return h11.NEED_DATA  # nothing new: no need to ask h11
        if self.parser is None:
            self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes)
            self.eof_fed = False  # ... to this parser
        while True:
            event = self.parser.next_event()
            if event is not h11.NEED_DATA:
                break
            if self.backlog:
                chunk = bytes(self.backlog[:READ_CHUNK])
                del self.backlog[:READ_CHUNK]
                self.parser.receive_data(chunk)
                self.fed += chunk
            elif self.eof and not self.eof_fed:
                self.eof_fed = True
                self.parser.receive_data(b"")
            else:
                return event
        if isinstance(event, h11.Request):
            trailing = self.parser.trailing_data[0]
            self.head_bytes = len(self.fed) - len(trailing)
            self.declares_body = _declares_body(event.headers)
            if not self.declares_body and self.head_bytes <= min(self.max_head_bytes, MAX_REMEMBERED_REQUEST_HEAD):
                if len(self.remembered) >= MAX_REMEMBERED_HEADS:
                    self.remembered.clear()
                self.remembered[bytes(self.fed[:self.head_bytes])] = event
            self.backlog[:0] = trailing  # (Rule 2)
            self.parser = None
            self.fed.clear()
        return event


TLS_RECORD = 16384  # plaintext per TLS record: the unit TlsTransport.send encrypts and reports


class TlsError(Exception):
    """A TLS handshake failed; the message says why, in words."""


_TLS_REASONS = {
    "HTTP_REQUEST": "plain HTTP on a TLS listener",
    "HTTPS_PROXY_REQUEST": "plain HTTP (a proxy CONNECT) on a TLS listener",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client presented no certificate, and this listener "
                                         "requires one signed by its tlscacert",
    "UNSUPPORTED_PROTOCOL": "the client offered only TLS versions below 1.2",
    "WRONG_VERSION_NUMBER": "the client does not speak TLS (or only a version below 1.2)",
    "NO_SHARED_CIPHER": "no cipher suite in common with the client",
    "NO_PROTOCOLS_AVAILABLE": "no TLS version in common with the client (1.2 at least)",
}


def tls_failure_reason(exc: Exception) -> str:
    """Why a handshake failed, for the log line."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate rejected: {exc.verify_message}"
    reason = getattr(exc, "reason", None) or ""
    if reason in _TLS_REASONS:
        return _TLS_REASONS[reason]
    if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")):
        return f"the client aborted the handshake ({reason.split('ALERT_', 1)[1].lower().replace('_', ' ')})"
    return f"TLS handshake failed: {reason or exc}"


def certificate_cn(certificate: Mapping[str, Any] | None) -> str | None:
    """The subject's common name of a verified certificate; None when it has none or several
    (ambiguous: no `cert_cn` entry should match it)."""
    names = [value for rdn in (certificate or {}).get("subject", ()) for key, value in rdn if key == "commonName"]
    return names[0] if len(names) == 1 else None


class TlsState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"  # the handshake completed: plaintext moves both ways
    CLOSING = "closing"  # our close_notify is queued: no plaintext goes out any more
    FAILED = "failed"

    __hash__ = object.__hash__


_T = TlsState
TLS_TRANSITIONS: Mapping[TlsState, frozenset[TlsState]] = {
    _T.HANDSHAKE: frozenset({_T.OPEN, _T.FAILED}),
    _T.OPEN: frozenset({_T.CLOSING, _T.FAILED}),
    _T.CLOSING: frozenset({_T.FAILED}),
    _T.FAILED: frozenset(),
}


class PlainTransport:
    """A plain socket with TlsTransport's interface, so a ClientConnection has one code path."""

    ciphertext = b""  # nothing waits between us and the socket
    buffered = False  # nothing is held above it

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recv, self.send = sock.recv, sock.send  # bound: no call of ours in between

    def push(self) -> None:
        pass

    def close_write(self) -> bool:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        return True


class TlsTransport:
    """TLS between one client's socket and its ClientConnection, in the loop and sans-I/O:
    ciphertext moves between the socket and two ssl.MemoryBIOs here, and an ssl.SSLObject turns
    it into plaintext and back, as h11 turns bytes into HTTP. recv() and send() keep the meaning
    they have on a non-blocking socket (bytes, b"" at EOF, BlockingIOError when nothing can move
    now, OSError when the client is gone), so the connection and its OutputQueue use a
    TlsTransport where they would use the socket.

    Rule 1: no plaintext moves before the handshake completed; handshake() moves it on, and
            raises TlsError with the reason when it fails (after trying to send the alert).
    Rule 2: send() reports plaintext as accepted only once the socket accepted all of the
            ciphertext it became. Plaintext encrypted but not yet reported is the front of the
            next offer (as with SSL_write's retry rule), so the OutputQueue's ledger means the
            same on TLS as on a plain socket: a byte is delivered once its ciphertext was sent.
    Rule 3: at most one record of ciphertext (plus handshake, ticket or alert bytes) waits for
            the socket: nothing new is encrypted before it went.
    Rule 4: decrypted plaintext, or read ciphertext, that the SSLObject still holds is reported
            by `buffered`: the socket will not signal it again.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.state = TlsState.HANDSHAKE
        self.ciphertext = bytearray()  # for the socket, not yet accepted by it
        self.ahead = 0  # plaintext encrypted into self.ciphertext, not yet reported (Rule 2)
        self.peer_closed = False
        self.unread = False  # recv() stopped with bytes perhaps left in the SSLObject (Rule 4)
        self.cert_cn: str | None = None
        self.version: str | None = None

    def enter(self, state: TlsState) -> None:
        if state not in TLS_TRANSITIONS[self.state]:
            raise illegal_transition(self.state, state)
        self.state = state

    def fail(self, exc: Exception) -> str:
        self.enter(TlsState.FAILED)
        with contextlib.suppress(OSError):
            self.push()  # the alert that tells the client why, if its socket takes it now
        return tls_failure_reason(exc)

    def handshake(self) -> bool:
        """Move the handshake on with what the socket has; True once it completed."""
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.push()
                try:
                    data = self.sock.recv(READ_CHUNK)
                except BlockingIOError:
                    return False
                if not data:
                    self.enter(TlsState.FAILED)
                    raise TlsError("the client closed the connection during the handshake") from None
                self.incoming.write(data)
                continue
            except ssl.SSLError as exc:
                raise TlsError(self.fail(exc)) from None
            self.enter(TlsState.OPEN)
            self.cert_cn = certificate_cn(self.tls.getpeercert())
            self.version = self.tls.version()
            self.unread = bool(self.incoming.pending)  # request bytes sent with the handshake
            self.push()  # the end of the handshake, and session tickets
            return True

    @property
    def buffered(self) -> bool:
        return self.unread and self.state is not TlsState.HANDSHAKE

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes of plaintext; reads the socket at most once."""
        out = bytearray()
        pulled = False
        while len(out) < size and not self.peer_closed:
            try:
                chunk = self.tls.read(size - len(out))
                if chunk:
                    out += chunk
                    continue
                self.peer_closed = True  # the client's close_notify (SSLObject reads it as b"")
                break
            except ssl.SSLWantReadError:
                if out or pulled:
                    break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.peer_closed = True  # close_notify, or the socket's EOF without it
                break
            except ssl.SSLError as exc:
                if self.state is TlsState.CLOSING:  # only waiting for the client to close
                    self.peer_closed = True
                    break
                raise ConnectionError(self.fail(exc)) from None
            data = self.sock.recv(READ_CHUNK)  # BlockingIOError: nothing to read yet
            pulled = True
            if data:
                self.incoming.write(data)
            else:
                self.incoming.write_eof()
        self.unread = len(out) >= size  # it stopped for `size`, not for want of a record
        if self.outgoing.pending:  # a read can produce bytes to send (a key update)
            self.push()
        if out or self.peer_closed:
            return bytes(out)
        raise BlockingIOError(errno.EAGAIN, "no complete TLS record yet")

    def send(self, data: bytes | bytearray) -> int:
        """How many bytes at the front of `data` are delivered (Rule 2); offer the same front
        again after a short count."""
        if self.state is not TlsState.OPEN:
            raise BrokenPipeError(errno.EPIPE, "TLS connection closing")
        assert len(data) >= self.ahead, "a TLS send must offer again what it was offered"
        self.push()
        if self.ciphertext:
            return 0
        reported, self.ahead = self.ahead, 0
        while reported < len(data):
            record = data[reported:reported + TLS_RECORD]
            try:
                self.tls.write(record)
            except ssl.SSLError as exc:
                raise ConnectionError(self.fail(exc)) from None
            self.push()
            if self.ciphertext:
                self.ahead = len(record)
                break
            reported += len(record)
        return reported

    def push(self) -> None:
        """Move ciphertext to the socket as far as it takes it (OSError: the client is gone)."""
        if self.outgoing.pending:
            self.ciphertext += self.outgoing.read()
        while self.ciphertext:
            try:
                sent = self.sock.send(self.ciphertext)
            except BlockingIOError:
                return
            del self.ciphertext[:sent]

    def close_write(self) -> bool:
        """close_notify, then FIN once every byte of ciphertext went; True when done."""
        if self.state is TlsState.OPEN:
            self.enter(TlsState.CLOSING)
            with contextlib.suppress(ssl.SSLError):
                self.tls.unwrap()  # queues close_notify; the client's own is not awaited
        self.push()
        if self.ciphertext:
            return False
        self.sock.shutdown(socket.SHUT_WR)
        return True


class ClientConnection:
    """The server side of one client connection.

    Rule 1: a client is closed exactly once: gracefully (queue delivered, FIN, then closed
            when it closes or LINGER_SECONDS pass) or aborted on purpose (RST, with a reason).
            A queued byte is never dropped behind a clean FIN.
    Rule 2: at most one exchange is active; the next request is parsed only once the answer to
            the last one is completely queued.
    Rule 3: what is read but not parsed is bounded (RequestReader), and so is the work of one
            turn (REQUESTS_PER_TURN requests); a client whose answers pile up unread
            (CLIENT_HIGH_WATER) is not parsed until it reads.
    Rule 4: every exchange is reported to the owner exactly once (exchange_done), when its
            last byte is delivered or the connection closes, with the body bytes delivered.
    Rule 5: a finite answer stalled longer than --write-timeout aborts the client; a stream
            never times out on writes (it pauses its source instead).
    Rule 6: on a TLS listener all bytes go through its TlsTransport (`wire`), and the TLS
            handshake counts against the head deadline: it must complete within --head-timeout
            of the accept, and a request whose bytes came with it continues that deadline. A
            failed handshake is reported to the owner (handshake_failed) and the connection
            closed: no HTTP is ever read from it.
    """

    def __init__(self, sock: socket.socket, loop: Loop, owner: Any, settings: Settings,
                 listener: Endpoint, peer: str, identity: str, rejection: str | None = None,
                 facts: ClientFacts = ClientFacts(), tls: TlsTransport | None = None) -> None:
        self.sock = sock
        self.tls = tls
        self.wire: Any = tls if tls is not None else PlainTransport(sock)  # recv() and send() go through it
        self.loop = loop
        self.owner = owner  # on_request(client, request), exchange_done(exchange), client_closed(client)
        self.settings = settings
        self.listener = listener
        self.peer = peer
        self.identity = identity  # whom per-client limits count against
        self.rejection = rejection  # over a connection cap: every request gets this 503
        self.facts = facts  # who the peer is, for the `clients` entries of rules.json
        self.profile = listener.profile  # the owner assigns it (choose_profile), per connection
        self.client_rule: ClientRule | None = None  # ... and the entry that chose it
        self.reader = RequestReader(settings.max_head_bytes)
        self.out = OutputQueue(loop.clock)
        self.exchange: Exchange | None = None
        self.state = ClientState.IDLE if tls is None else ClientState.HANDSHAKE
        self.entered = self.head_since = loop.clock()
        self.head_size = 0  # raw size of the last request head
        self.mask = 0  # the events the loop watches for
        self.budget_pass, self.budget = -1, 0  # requests this pass may still parse (Rule 3)
        self.refusals_in_a_row = 0
        self.rearm()

    # ---- state ---------------------------------------------------------------------------------

    def enter(self, state: ClientState) -> None:
        """The one place a client changes state (and so its deadline)."""
        if state not in CLIENT_TRANSITIONS[self.state]:
            raise illegal_transition(self.state, state)
        old, self.state = self.state, state
        self.entered = self.loop.clock()
        if state is ClientState.HEAD and old is not ClientState.HANDSHAKE:
            self.head_since = self.entered  # (Rule 6) after a handshake, the head goes on from it
        self.rearm()

    def rearm(self) -> None:
        self.loop.set_deadline(self, self.deadline()[0])

    def deadline(self) -> tuple[float | None, bool]:
        streaming = self.exchange is not None and self.exchange.streaming
        return client_deadline(self.state, self.entered, self.head_since, self.out, streaming, self.settings)

    def on_deadline(self, now: float) -> None:
        when, stalled = self.deadline()
        if when is None:
            return
        if when > now:
            self.loop.set_deadline(self, when)  # progress since it was set: not yet
        elif stalled:
            self.abort("client stopped reading the response")
        elif self.state is ClientState.HANDSHAKE:
            self.handshake_failed(f"TLS handshake not completed within --head-timeout "
                                  f"{self.settings.head_timeout:g}s")
        elif self.state is ClientState.HEAD:
            self.refuse(Refusal(408, "request head not received in time", close=True))
        elif self.state is ClientState.IDLE:
            self.close()
        elif self.state is ClientState.LINGERING:
            self.finish_close(rst=False, reason=None)

    # ---- reading and parsing -------------------------------------------------------------------

    def on_io(self, mask: int) -> None:
        if self.state is ClientState.HANDSHAKE:
            self.handshake()
            return
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if self.state is ClientState.CLOSED or not mask & selectors.EVENT_READ:
            return
        self.read()

    def handshake(self) -> None:
        try:
            done = self.tls.handshake()  # type: ignore[union-attr]
        except TlsError as exc:
            self.handshake_failed(str(exc))
            return
        except OSError:
            self.handshake_failed("the client went away during the TLS handshake")
            return
        if not done:
            self.update_interest()
            return
        self.owner.client_identified(self)  # its certificate may choose its profile
        if self.tls.buffered:  # type: ignore[union-attr]
            self.enter(ClientState.HEAD)  # request bytes came with the handshake (Rule 6)
            self.read()
        else:
            self.enter(ClientState.IDLE)
            self.update_interest()

    def handshake_failed(self, reason: str) -> None:
        self.owner.handshake_failed(self, reason)
        self.finish_close(rst=False, reason=reason)

    def read(self) -> None:
        try:
            data = self.wire.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self.abort("client went away")
            return
        if self.state in (ClientState.DRAINING, ClientState.LINGERING):
            if not data:
                self.reader.eof = True
                if self.state is ClientState.LINGERING:
                    self.finish_close(rst=False, reason=None)
                else:
                    self.update_interest()
            return  # discarded: we only wait until the client has read our last answer
        if not data and self.exchange is not None:
            # Gone mid-exchange (as nginx reads it): free the upstream at once rather than
            # hold a daemon connection, a stream slot and a connection slot for nobody.
            self.abort("client went away")
            return
        self.reader.add(data)
        if self.exchange is None:
            self.parse()  # at most REQUESTS_PER_TURN a pass, turns included
            if self.state is ClientState.IDLE and self.reader.pending:
                self.enter(ClientState.HEAD)  # part of a head (or a turn's worth): its deadline runs
        else:
            self.update_interest()

    def wake(self) -> None:
        """Something was queued or may be parsed: one turn later in this pass sends it all with
        one system call, however many events were queued."""
        self.loop.turns[self] = None  # Loop.soon, inlined: this is the hottest call there is

    def on_turn(self) -> None:
        if self.out.buffer or self.wire.ciphertext:
            self.flush()
        if self.wire.buffered and self.reader.wants_more and self.state is not ClientState.CLOSED:
            self.read()  # (TlsTransport Rule 4) the socket will not tell us again
        if self.exchange is None and self.state in (ClientState.IDLE, ClientState.HEAD):
            self.parse()

    def parse(self) -> None:
        if self.budget_pass != self.loop.passes:  # a new pass: a new budget (Rule 3)
            self.budget_pass, self.budget = self.loop.passes, REQUESTS_PER_TURN
        while True:
            if self.exchange is not None or self.state not in (ClientState.IDLE, ClientState.HEAD):
                break
            if not self.budget:
                self.loop.soon(self)  # more may be waiting: the next pass, after everyone else
                break
            if len(self.out.buffer) >= CLIENT_HIGH_WATER:
                break  # answers pile up unread: on_io parses on once the client drains them
            try:
                event = self.reader.next_event()
            except h11.RemoteProtocolError as exc:
                self.refuse(Refusal(exc.error_status_hint, f"malformed request: {exc}", close=True))
                break
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.Request):
                self.budget -= 1
                self.begin(event)
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                break
            else:  # a refused request's body is never read: we close instead
                break
        self.update_interest()

    def begin(self, request: h11.Request) -> None:
        facts = RequestFacts(request.method.decode("latin-1"), request.target, list(request.headers),
                             self.listener.kind, self.profile, request.http_version)
        self.exchange = Exchange(self, facts, self.loop.clock(),
                                 client_rule=self.client_rule.label if self.client_rule else None)
        self.enter(ClientState.ACTIVE)
        if self.reader.declares_body:
            self.exchange.close_after = True  # a body is never read: the connection closes instead
        self.head_size = self.reader.head_bytes
        if self.rejection is not None:
            self.refuse(Refusal(503, self.rejection, close=True))
        else:
            self.owner.on_request(self, self.exchange)

    # ---- answering -----------------------------------------------------------------------------

    def refuse(self, refusal: Refusal) -> None:
        """Answer locally with a Docker-style JSON error."""
        if self.exchange is None:  # the request head never parsed: log what we know
            self.exchange = Exchange(self, RequestFacts("-", b"", [], self.listener.kind, self.profile, b""),
                                     self.loop.clock(), client_rule=self.client_rule.label if self.client_rule else None)
            if self.state is ClientState.IDLE:
                self.enter(ClientState.HEAD)
        self.refusals_in_a_row += 1
        self.exchange.refuse(refusal, last_straw=self.refusals_in_a_row >= MAX_REFUSALS_IN_A_ROW)

    def finish_exchange(self) -> None:
        """The answer is completely queued: the ledger logs it once delivered."""
        exchange, self.exchange = self.exchange, None
        assert exchange is not None
        exchange.source = None
        self.out.end(exchange)
        if exchange.close_after or self.owner.stopping:
            self.close()
            return
        self.enter(ClientState.HEAD if self.reader.pending else ClientState.IDLE)
        self.flush()  # the answer's last bytes leave now
        if self.reader.pending:
            self.wake()  # the next pipelined request, in a turn (no recursion)

    # ---- delivering and closing ----------------------------------------------------------------

    @property
    def has_room(self) -> bool:
        return len(self.out.buffer) < CLIENT_HIGH_WATER

    def flush(self) -> None:
        if self.state is ClientState.CLOSED:
            return
        try:
            self.wire.push()  # TLS handshake, ticket or alert bytes first
            done = self.out.send(self.wire)
        except OSError:
            self.abort("client went away")
            return
        for exchange in done:
            self.owner.exchange_done(exchange)
        if self.state is ClientState.DRAINING and not self.out.buffer:
            try:
                closed = self.wire.close_write()
            except OSError:
                closed = True
            if not closed:  # TLS: close_notify still waits for the socket
                self.update_interest()
                return
            if self.reader.eof:
                self.finish_close(rst=False, reason=None)
                return
            self.enter(ClientState.LINGERING)
        if self.exchange is not None and self.exchange.source is not None and len(self.out.buffer) < CLIENT_LOW_WATER:
            self.exchange.source.resume(self.exchange)
        elif (self.exchange is None and self.state in (ClientState.IDLE, ClientState.HEAD)
              and self.reader.pending and len(self.out.buffer) < CLIENT_LOW_WATER):
            self.loop.soon(self)  # parsing was paused while our answers were unread
        self.rearm()  # the write-stall deadline moves with the queue
        self.update_interest()

    def update_interest(self) -> None:
        if self.state is ClientState.CLOSED:
            return
        mask = selectors.EVENT_WRITE if self.out.buffer or self.wire.ciphertext else 0
        if self.reader.wants_more:
            mask |= selectors.EVENT_READ  # a full pipelining backlog stops reading this client
            if self.wire.buffered:
                self.loop.soon(self)  # read in a turn: what the SSLObject holds never polls ready
        if mask != self.mask:
            self.mask = mask
            self.loop.watch(self.sock, mask, self)

    def close(self) -> None:
        """Graceful: deliver what is queued, send FIN, linger, close."""
        if self.state in (ClientState.DRAINING, ClientState.LINGERING, ClientState.CLOSED):
            return
        if self.exchange is not None:  # shutting down: a request never answered
            self.abort("proxy closing the connection")
            return
        self.reader.backlog.clear()
        self.enter(ClientState.DRAINING)
        self.flush()

    def abort(self, reason: str) -> None:
        """On purpose: RST, so a truncated response never looks like a clean end."""
        exchange = self.exchange
        if exchange is not None:
            if exchange.outcome == "allow":
                exchange.outcome = "error"
            exchange.reason = exchange.reason or reason
        self.finish_close(rst=True, reason=reason)

    def finish_close(self, rst: bool, reason: str | None) -> None:
        if self.state is ClientState.CLOSED:
            return
        self.enter(ClientState.CLOSED)
        self.loop.cancel(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            if exchange.source is not None:
                exchange.source.cancel(exchange)
                exchange.source = None
            self.out.end(exchange)
        for pending in self.out.settle():
            if pending.delivered < pending.body_bytes or pending is exchange:
                if pending.outcome == "allow":
                    pending.outcome = "error"
                pending.reason = pending.reason or reason or "client went away before the answer was delivered"
            self.owner.exchange_done(pending)
        self.loop.forget(self.sock)
        if rst:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        self.owner.client_closed(self)


def _declares_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return any(name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
               for name, value in headers)


@dataclass(frozen=True)
class ResponseTransform:
    """How to rewrite one exchange's successful (2xx) response body on its way to the client.
    `document` rewrites a finite JSON body (a parsed value in, a value out); `event` rewrites
    each event of a stream of JSON lines (None drops the event). Each buffers at most
    `max_bytes` (the whole document, or one event)."""

    document: Callable[[Any], Any] | None = None
    event: Callable[[Any], Any] | None = None
    event_line: Callable[[bytes], bytes] | None = None  # a line in, its bytes out (made from `event`)
    max_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.event is not None and self.event_line is None:  # one form for ResponseRewriter
            object.__setattr__(self, "event_line", functools.partial(event_bytes, self.event))


def event_bytes(event: Callable[[Any], Any], line: bytes) -> bytes:
    """One event line through `event` (parsed value in, value or None out), serialised; b"": not
    delivered. Raises TransformError where it cannot be applied (fail closed)."""
    parsed = ResponseRewriter._parse(line)
    try:
        value = event(parsed)
    except Exception as exc:  # the filter could not be applied: fail closed
        raise TransformError(f"{type(exc).__name__}: {exc}") from None
    return b"" if value is None else json.dumps(value, separators=(",", ":")).encode() + b"\n"


class ResponseRewriter:
    """Applies a ResponseTransform to one response. A document's head is held back until the
    whole body is rewritten, so its Content-Length is right and a failure can still be a 502."""

    def __init__(self, transform: ResponseTransform, head: h11.Response, method: str) -> None:
        self.transform = transform
        self.original = head
        self.method = method
        self.buffer = bytearray()

    def _head(self, length: int | None) -> h11.Response:
        headers = [(n, v) for n, v in self.original.headers.raw_items()
                   if n.lower() not in (b"content-length", b"transfer-encoding")]
        if length is not None:
            headers.append((b"Content-Length", str(length).encode()))
        return h11.Response(status_code=self.original.status_code, reason=self.original.reason,
                            headers=headers, _parsed=True)

    def head(self) -> h11.Response | None:
        if self.transform.document is not None:
            return None  # (a HEAD's was forwarded as GET: its length is the rewritten body's)
        return self._head(None)  # re-framed by h11 (chunked for HTTP/1.1)

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        if self.transform.document is not None:
            if len(self.buffer) > self.transform.max_bytes:
                raise TransformError(f"the response is over {self.transform.max_bytes} bytes")
            return b""
        if self.transform.event_line is None:
            out, self.buffer = bytes(self.buffer), bytearray()
            return out
        *events, rest = self.buffer.split(b"\n")
        if max(map(len, events), default=0) > self.transform.max_bytes or len(rest) > self.transform.max_bytes:
            raise TransformError(f"an event is over {self.transform.max_bytes} bytes")
        self.buffer = bytearray(rest)
        return b"".join(self._event(line) for line in events if line.strip())

    def _event(self, line: bytes) -> bytes:
        return self.transform.event_line(line)  # type: ignore[misc]

    @staticmethod
    def _parse(data: bytes) -> Any:
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise TransformError(f"the daemon's answer is not JSON ({str(exc)[:80]})") from None

    def finish(self) -> tuple[h11.Response | None, bytes]:
        if self.transform.document is not None:
            try:
                value = self.transform.document(self._parse(bytes(self.buffer)))
                body = json.dumps(value, separators=(",", ":")).encode() + b"\n"
            except TransformError:
                raise
            except Exception as exc:  # the filter could not be applied: fail closed
                raise TransformError(f"{type(exc).__name__}: {exc}") from None
            return self._head(len(body)), b"" if self.method == "HEAD" else body
        if self.buffer.strip():
            if self.transform.event_line is None:
                return None, bytes(self.buffer)
            return None, self._event(bytes(self.buffer))
        return None, b""


def relayed_head(event: h11.Response) -> h11.Response:
    """The daemon's response head as porthole relays it; ValueError says why it is refused
    (smuggling shapes, control bytes)."""
    raw_headers = event.headers.raw_items()
    if has_both_framings(raw_headers):
        raise ValueError("the daemon's response has both Content-Length and Transfer-Encoding")
    if _CONTROL_BYTES.search(b" ".join([event.reason, *(v for _, v in raw_headers)])):  # one search, not one a header
        raise ValueError("the daemon's response head holds control characters")
    headers = relayed_response_headers(raw_headers)
    if event.status_code in (204, 304):  # never a body, so never framing headers (RFC 9110 8.6)
        headers = [(n, v) for n, v in headers if n.lower() not in (b"content-length", b"transfer-encoding")]
    return h11.Response(status_code=event.status_code, reason=event.reason, http_version=b"1.1",
                        headers=headers, _parsed=True)  # values as h11 parsed and we checked them


_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
MAX_CHUNK_LINE = 18  # 16 hex digits and CRLF: Go's net/http sends bare sizes, no extensions


class BodyFraming:
    """A daemon response body framed by Content-Length or chunked, parsed by porthole instead
    of one h11 event per chunk (h11 has parsed and checked the head). It is STRICTER than h11,
    never more lenient: no chunk extensions, no trailers, no whitespace, 16 hex digits at most;
    any of those is an error (a 502), as is a chunk not followed by CRLF. Fuzzed and
    differential-tested against h11 (tests/test_framing.py): wherever it accepts, h11
    accepts the same body and leaves the same bytes after it."""

    def __init__(self, length: int | None) -> None:
        self.chunked = length is None
        self.remaining = length or 0  # body bytes still to come (of the body, or of this chunk)
        self.state = "size" if self.chunked else "data"  # chunked: size, data, crlf, last
        self.partial = b""  # a chunk line or CRLF split across reads
        self.done = length == 0
        self.extra = b""  # bytes after the body's end (the connection is then not reused)

    def feed(self, data: bytes) -> bytes:
        """The body bytes in `data`. Raises ValueError on a framing error."""
        if self.done:
            self.extra += data
            return b""
        if not self.chunked:
            body, self.remaining = data[:self.remaining], self.remaining - min(len(data), self.remaining)
            if not self.remaining:
                self.done, self.extra = True, data[len(body):]
            return body
        data, self.partial = self.partial + data, b""
        body: list[bytes] = []
        at, size = 0, len(data)
        while at < size:
            if self.done:
                self.extra = data[at:]
                break
            if self.state == "data":
                piece = data[at:at + self.remaining]
                body.append(piece)
                at += len(piece)
                self.remaining -= len(piece)
                if not self.remaining:
                    self.state = "crlf"
            elif self.state == "size":
                end = data.find(b"\r\n", at, at + MAX_CHUNK_LINE)
                if end < 0:
                    if size - at >= MAX_CHUNK_LINE:
                        raise ValueError(f"chunk header too long or malformed: {data[at:at + 24]!r}")
                    self.partial = data[at:]
                    break
                if not _CHUNK_SIZE.fullmatch(data, at, end):
                    raise ValueError(f"malformed chunk header {data[at:end][:24]!r}")
                self.remaining = int(data[at:end], 16)
                self.state = "data" if self.remaining else "last"
                at = end + 2
            else:  # "crlf" ends a chunk's data; "last" ends the body (porthole takes no trailers)
                piece = data[at:at + 2]
                if piece != b"\r\n"[:len(piece)]:
                    raise ValueError("chunk data not followed by CRLF" if self.state == "crlf"
                                     else "the chunked body has trailers or junk after its last chunk")
                if len(piece) < 2:
                    self.partial = piece
                    break
                at += 2
                if self.state == "last":
                    self.done = True
                else:
                    self.state = "size"
        return body[0] if len(body) == 1 else b"".join(body)


def body_framing(method: bytes, head: h11.Response) -> BodyFraming | None:
    """Porthole frames the body itself for a GET answered with Content-Length or chunked; None
    leaves it to h11 (HEAD, 204/304, or a body read until the daemon closes)."""
    if method != b"GET" or head.status_code in (204, 304):
        return None
    for name, value in head.headers:  # h11 checked both: one valid length, or exactly "chunked"
        if name == b"content-length":
            return BodyFraming(int(value))
        if name == b"transfer-encoding":
            return BodyFraming(None)
    return None


@dataclass(frozen=True)
class ParsedHead:
    """What h11 made of one daemon response head to a GET whose body porthole frames, kept by
    the head's exact bytes (UpstreamPool.heads): the same bytes parse the same way, so a head
    seen before needs no h11 connection at all. Only heads h11 accepted are kept, and a lookup
    hits only bytes that h11 itself ended the head at (a candidate running past h11's end of
    head is never a key)."""

    head: h11.Response  # as relayed (relayed_head)
    length: int | None  # the body's Content-Length; None: chunked
    keep_alive: bool  # h11 would reuse the connection after it

    def framing(self) -> BodyFraming:
        return BodyFraming(self.length)




class UpstreamState(enum.Enum):
    CONNECTING = "connecting"  # a non-blocking connect is under way; the request waits queued
    AWAITING = "awaiting"  # the request is sent (or being sent); no response head yet
    RECEIVING = "receiving"  # the head went to the consumer; the body flows
    IDLE = "idle"  # in the pool, between exchanges
    CLOSED = "closed"

    __hash__ = object.__hash__  # members are singletons; Enum's own __hash__ is Python code


_U = UpstreamState
UPSTREAM_TRANSITIONS: Mapping[UpstreamState, frozenset[UpstreamState]] = {
    _U.CONNECTING: frozenset({_U.AWAITING, _U.CLOSED}),
    _U.AWAITING: frozenset({_U.RECEIVING, _U.CLOSED}),
    _U.RECEIVING: frozenset({_U.IDLE, _U.CLOSED}),
    _U.IDLE: frozenset({_U.AWAITING, _U.CLOSED}),
    _U.CLOSED: frozenset(),
}


class UpstreamConnection:
    """One connection to the daemon, with its own h11 client state machine.

    Rule 1: it serves one consumer at a time (a Relay or a SharedStream), or none while IDLE.
    Rule 2: it reads only while its consumer has not paused it; on resume() it first hands on
            what h11 already holds, in a turn of its own.
    Rule 3: a failure reaches the consumer exactly once (upstream_failed), then it is closed.
    Rule 4: 1xx heads are skipped (at most MAX_INFORMATIONAL); a head with both framings or
            with control bytes is a failure (502), never relayed.
    Deadlines: CONNECTING --connect-timeout (502), AWAITING --response-timeout (504),
    IDLE POOL_IDLE_SECONDS (closed), RECEIVING none (the client side owns write stalls).
    """

    def __init__(self, pool: UpstreamPool, sock: socket.socket, reused: bool = False) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.sock = sock
        self.h11: h11.Connection | None = None  # made when a head is not one seen before (ParsedHead)
        self.request: h11.Request | None = None  # under way
        self.first_read = b""  # the exchange's first bytes from the daemon, while h11 holds only them
        self.keep_alive = True  # ... as h11 saw the response head, when porthole frames the body
        self.outbuf = bytearray()
        self.state = UpstreamState.CONNECTING
        self.entered = self.loop.clock()
        self.consumer: Any = None
        self.reused = reused  # came from the idle pool: a failure before any byte may be retried
        self.received_any = False
        self.informational = 0
        self.paused = False
        self.method = b"GET"  # of the request under way
        self.body: BodyFraming | None = None  # set when porthole frames the body itself
        self.unread = b""  # body bytes read while paused, not yet framed
        self.send_error: OSError | None = None
        self.address: tuple[int, Any] = (sock.family, None)  # what it connects to
        self.candidates: list[tuple[int, Any]] = []  # the daemon's other addresses, to try next
        self.mask = 0  # the events the loop watches for

    def enter(self, state: UpstreamState) -> None:
        """The one place an upstream connection changes state (and so its deadline)."""
        if state not in UPSTREAM_TRANSITIONS[self.state]:
            raise illegal_transition(self.state, state)
        self.state = state
        self.arm()

    def arm(self) -> None:
        self.entered = now = self.loop.clock()
        state = self.state
        if state is UpstreamState.AWAITING:
            self.loop.set_deadline(self, now + self.pool.settings.response_timeout)
        elif state is UpstreamState.CONNECTING:
            self.loop.set_deadline(self, now + self.pool.settings.connect_timeout)
        elif state is UpstreamState.IDLE:
            self.loop.set_deadline(self, now + POOL_IDLE_SECONDS)
        else:
            self.loop.set_deadline(self, None)
        self.update_interest()

    def start(self, consumer: Any, request: h11.Request, connected: bool) -> None:
        """Send one request for `consumer`; a connection still connecting sends it once connected."""
        self.consumer = consumer
        self.send_error = None
        self.received_any = False
        self.informational = 0
        self.paused = False
        self.method = request.method
        self.request = request
        self.outbuf += request_bytes(request)  # h11 is only asked to parse the answer
        if not connected:
            self.arm()  # a new connection: CONNECTING since __init__
            return
        try:  # most requests leave at once; a failure is reported in a turn of its own, so
            # that the consumer learns of it after acquire() has returned
            del self.outbuf[:self.sock.send(self.outbuf)]
        except BlockingIOError:
            pass
        except OSError as exc:
            self.send_error = exc
            self.loop.soon(self)
        self.enter(UpstreamState.AWAITING)  # watches for what is left to send, and the answer

    def on_deadline(self, now: float) -> None:
        if self.state is UpstreamState.CONNECTING:
            self.fail(502, upstream_error_message(self.pool.endpoint, OSError(errno.ETIMEDOUT, "connect timed out")),
                      "connect_failed")
        elif self.state is UpstreamState.AWAITING:
            self.fail(504, f"the daemon did not start answering within --response-timeout "
                           f"{self.pool.settings.response_timeout:g} s", "timeout")
        elif self.state is UpstreamState.IDLE:
            self.close()

    def on_io(self, mask: int) -> None:
        if self.state is UpstreamState.IDLE:  # the daemon closed it, or sent junk: either way, gone
            self.close()
            return
        if mask & selectors.EVENT_WRITE:
            if self.state is UpstreamState.CONNECTING:
                code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    self.connect_next(OSError(code, os.strerror(code)))
                    return
                self.enter(UpstreamState.AWAITING)
            self.flush()
        if self.state is UpstreamState.CLOSED or not mask & selectors.EVENT_READ:
            return
        try:
            data = self.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(502, upstream_error_message(self.pool.endpoint, exc), "closed")
            return
        self.received_any = self.received_any or bool(data)
        if self.body is None:
            if self.h11 is None:
                if self.state is UpstreamState.AWAITING and self.remembered_head(data):
                    return
                self.h11 = self.parser()
                self.first_read = data
            else:
                self.first_read = b""
            self.h11.receive_data(data)
        elif data:
            self.unread += data  # porthole frames this body: h11 sees nothing more of it
        else:
            self.fail(502, "the daemon closed the connection before the response was complete", "closed")
            return
        self.pump()

    def parser(self) -> h11.Connection:
        """An h11 client connection in the state the request left it (its bytes are already
        sent, by request_bytes), to parse the daemon's answer."""
        parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=UPSTREAM_MAX_HEAD)
        parser.send(self.request)
        parser.send(END_OF_MESSAGE)
        return parser

    def remembered_head(self, data: bytes) -> bool:
        """A response head byte for byte like one h11 parsed before, for the same method: relay
        it as h11 parsed it then (ParsedHead), and frame its body."""
        end = data.find(b"\r\n\r\n")
        seen = self.pool.heads.get((self.method, data[:end + 4])) if end >= 0 else None
        if seen is None:
            return False
        self.enter(UpstreamState.RECEIVING)
        self.body, self.keep_alive, self.unread = seen.framing(), seen.keep_alive, data[end + 4:]
        self.consumer.upstream_head(self, seen.head)
        self.pump_body()
        return True

    def connect_next(self, exc: OSError) -> None:
        """The connect failed: on to the daemon's next address, if it has another."""
        self.pool.connect_failed(*self.address, exc)
        if not self.candidates:
            self.fail(502, upstream_error_message(self.pool.endpoint, exc), "connect_failed")
            return
        try:
            sock, connected, self.address = self.pool.connect(self.candidates)
        except OSError as last:
            self.fail(502, upstream_error_message(self.pool.endpoint, last), "connect_failed")
            return
        self.loop.forget(self.sock)
        self.sock.close()
        self.sock, self.mask = sock, 0
        if connected:
            self.enter(UpstreamState.AWAITING)
            self.flush()
        else:
            self.update_interest()

    def on_turn(self) -> None:
        if self.send_error is not None:
            self.fail(502, upstream_error_message(self.pool.endpoint, self.send_error), "closed")
        elif not self.paused and self.state in (UpstreamState.AWAITING, UpstreamState.RECEIVING):
            self.pump()

    def pump(self) -> None:
        """Hand what h11 holds to the consumer while it is not paused."""
        if self.body is not None:
            self.pump_body()
            return
        while self.h11 is not None and self.state in (UpstreamState.AWAITING, UpstreamState.RECEIVING) and not self.paused:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                closed = self.h11.their_state is h11.ERROR and self.h11.trailing_data[1]
                self.fail(502, "the daemon closed the connection before the response was complete"
                          if closed else f"malformed response from the daemon: {exc}",
                          "closed" if closed else "protocol_error")
                return
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.InformationalResponse):
                self.informational += 1
                if self.informational > MAX_INFORMATIONAL:
                    self.fail(502, "the daemon sent too many 1xx responses", "protocol_error")
                    return
                continue  # never relayed: porthole sends no bodies, so never waits for 100
            if isinstance(event, h11.Response):
                try:
                    head = relayed_head(event)
                except ValueError as exc:
                    self.fail(502, str(exc), "protocol_error")
                    return
                self.enter(UpstreamState.RECEIVING)
                self.body = body_framing(self.method, event)
                if self.body is not None:  # the bytes after the head are body: ours from now on
                    self.unread = self.h11.trailing_data[0]
                    self.keep_alive = self.h11.our_state is h11.DONE  # (not MUST_CLOSE: no "close", not HTTP/1.0)
                    if self.first_read and not self.informational:  # the head is the read's start
                        self.pool.remember_head(self.method, self.first_read[:len(self.first_read) - len(self.unread)],
                                                ParsedHead(head, None if self.body.chunked else self.body.remaining,
                                                           self.keep_alive))
                self.consumer.upstream_head(self, head)
                if self.body is not None:
                    self.pump_body()
                    return
            elif isinstance(event, h11.Data):  # (a body h11 frames: read until the daemon closes)
                self.consumer.upstream_data(self, event.data)
            elif isinstance(event, h11.EndOfMessage):
                consumer, self.consumer = self.consumer, None
                self.pool.release(self)
                consumer.upstream_end(self)
                return
            else:  # ConnectionClosed or PAUSED before the response ended
                self.fail(502, "the daemon closed the connection mid-response", "closed")
                return
        self.update_interest()

    def pump_body(self) -> None:
        """A body porthole frames (BodyFraming): what was read goes on in one piece."""
        body = self.body
        assert body is not None
        if self.state is UpstreamState.RECEIVING and not self.paused and (self.unread or body.done):
            data, self.unread = self.unread, b""
            try:
                chunk = body.feed(data)
            except ValueError as exc:
                self.fail(502, f"malformed response from the daemon: {exc}", "protocol_error")
                return
            if chunk:
                self.consumer.upstream_data(self, chunk)
                if self.state is not UpstreamState.RECEIVING:
                    return  # the consumer closed us (its client went away)
            if body.done:
                consumer, self.consumer = self.consumer, None
                self.pool.release(self)
                consumer.upstream_end(self)
                return
        self.update_interest()

    def next_cycle(self) -> None:
        """Ready for the next exchange: the next answer gets an h11 parser of its own, if any."""
        self.h11, self.body, self.first_read, self.request = None, None, b"", None

    def pause(self) -> None:
        self.paused = True
        self.update_interest()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.loop.soon(self)  # first what h11 already holds, then read again
            self.update_interest()

    def flush(self) -> None:
        if self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
                del self.outbuf[:sent]
            except BlockingIOError:
                pass
            except OSError as exc:
                self.fail(502, upstream_error_message(self.pool.endpoint, exc), "closed")
                return
        self.update_interest()

    def update_interest(self) -> None:
        state = self.state
        if state is UpstreamState.CLOSED:
            return
        if state is UpstreamState.IDLE:
            mask = selectors.EVENT_READ  # only to notice the daemon closing it
        elif state is UpstreamState.CONNECTING:
            mask = selectors.EVENT_WRITE
        else:
            mask = (selectors.EVENT_WRITE if self.outbuf else 0) | (0 if self.paused else selectors.EVENT_READ)
        if mask != self.mask:
            self.mask = mask
            self.loop.watch(self.sock, mask, self)

    @property
    def reusable(self) -> bool:
        """Only a connection that ended its exchange cleanly with nothing extra goes back."""
        if self.body is not None:
            return (self.state is UpstreamState.RECEIVING and self.keep_alive
                    and self.body.done and not self.body.extra and not self.unread)
        return (self.state is UpstreamState.RECEIVING and self.h11 is not None and self.h11.our_state is h11.DONE
                and self.h11.their_state is h11.DONE and not self.h11.trailing_data[0])

    def fail(self, status: int, message: str, reason: str | None) -> None:
        """`reason`: one of UPSTREAM_ERROR_REASONS, counted when the failure reaches a consumer
        that will not retry it (None: porthole's own doing, not the daemon's)."""
        consumer, self.consumer = self.consumer, None
        retryable = self.reused and not self.received_any
        self.close()
        if consumer is not None:
            if reason is not None and not retryable:
                self.pool.metrics.upstream_error(reason)
            consumer.upstream_failed(self, status, message, retryable)

    def abort(self, reason: str) -> None:
        self.fail(502, f"porthole {reason}", None)

    def close(self) -> None:
        if self.state is UpstreamState.CLOSED:
            return
        self.enter(UpstreamState.CLOSED)
        self.loop.cancel(self)
        self.consumer = None
        self.loop.forget(self.sock)
        self.sock.close()
        self.pool.discard(self)


class UpstreamPool:
    """Daemon connections: fresh ones, and idle ones kept for reuse.

    Rule 1: a connection is in exactly one place: the idle list, one consumer, or closed.
    Rule 2: only a connection whose exchange ended cleanly goes back (UpstreamConnection.reusable).
    Rule 3: acquire(fresh=True) never takes an idle one: a retry must not meet another stale
            connection.
    Rule 4: a TCP daemon's name is resolved outside the loop: before it starts, and again in a
            helper thread after a failure; the loop only ever reads the last answer.
    """

    def __init__(self, loop: Loop, settings: Settings, log: Log, metrics: Metrics | None = None) -> None:
        self.loop = loop
        self.settings = settings
        self.endpoint = settings.upstream
        self.log = log
        self.metrics = metrics if metrics is not None else Metrics()  # upstream failures are counted here
        self.idle: list[UpstreamConnection] = []
        self.heads: dict[tuple[bytes, bytes], ParsedHead] = {}  # (method, head bytes): see ParsedHead
        self.addresses: list[tuple[int, Any]] = []  # (family, sockaddr), for TCP daemons
        self.resolving = False
        self.closed = False
        if self.endpoint.kind == "tcp":
            self.resolve()

    def resolve(self) -> None:
        """getaddrinfo, which blocks: called before the loop runs, or from a helper thread."""
        try:
            found = socket.getaddrinfo(self.endpoint.host, self.endpoint.port, type=socket.SOCK_STREAM)
            self.addresses = [(family, address) for family, _, _, _, address in found]
        except OSError as exc:
            self.log("warning", "upstream_resolve_failed", upstream=self.endpoint.url, error=str(exc))
        finally:
            self.resolving = False

    def re_resolve(self) -> None:
        if self.endpoint.kind == "tcp" and not self.resolving and not _is_ip_literal(self.endpoint.host):
            self.resolving = True
            threading.Thread(target=self.resolve, name="porthole-resolve", daemon=True).start()

    def acquire(self, consumer: Any, request: h11.Request, fresh: bool = False) -> UpstreamConnection:
        """A connection already sending `request` for `consumer`. Raises OSError (with a
        message for the client) when no connection can be made at once; counted here, for every
        kind of consumer."""
        try:
            return self._acquire(consumer, request, fresh)
        except OSError:
            self.metrics.upstream_error("connect_failed")
            raise

    def _acquire(self, consumer: Any, request: h11.Request, fresh: bool) -> UpstreamConnection:
        if self.idle and not fresh:
            conn = self.idle.pop()
            conn.reused = True
            conn.start(consumer, request, connected=True)
            return conn
        if self.endpoint.kind == "unix":
            candidates = [(socket.AF_UNIX, self.endpoint.path)]
        elif self.addresses:
            candidates = list(self.addresses)
        else:
            self.re_resolve()
            raise OSError(errno.EHOSTUNREACH, f"cannot resolve {self.endpoint.host}")
        sock, connected, address = self.connect(candidates)
        conn = UpstreamConnection(self, sock)
        conn.address, conn.candidates = address, candidates
        conn.start(consumer, request, connected=connected)
        return conn

    def remember_head(self, method: bytes, raw: bytes, parsed: ParsedHead) -> None:
        if len(self.heads) >= MAX_REMEMBERED_HEADS:
            self.heads.clear()
        self.heads[(method, raw)] = parsed

    def connect(self, candidates: list[tuple[int, Any]]) -> tuple[socket.socket, bool, tuple[int, Any]]:
        """Start connecting to the first candidate address that does not fail at once (each
        tried is taken off the list): (socket, connected already, the address). Raises the
        last OSError."""
        while True:
            family, address = candidates.pop(0)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                code = sock.connect_ex(address)
                if code == errno.EAGAIN:
                    raise OSError(errno.EAGAIN, "the daemon's socket backlog is full")
                if code not in (0, errno.EINPROGRESS):
                    raise OSError(code, os.strerror(code))
                if family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock, code == 0, (family, address)
            except OSError as exc:
                sock.close()
                self.connect_failed(family, address, exc)
                if not candidates:
                    raise

    def connect_failed(self, family: int, address: Any, exc: OSError) -> None:
        """Try that address last from now on, and ask DNS again."""
        if family != socket.AF_UNIX:
            if (family, address) in self.addresses and len(self.addresses) > 1:
                self.addresses = [a for a in self.addresses if a != (family, address)] + [(family, address)]
            self.re_resolve()

    def release(self, conn: UpstreamConnection) -> None:
        """An exchange ended: keep the connection if it is clean and there is room."""
        if conn.reusable and len(self.idle) < MAX_IDLE_UPSTREAMS and not self.closed:
            conn.next_cycle()
            conn.reused = False
            conn.enter(UpstreamState.IDLE)
            self.idle.append(conn)
        else:
            conn.close()

    def discard(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        self.closed = True
        for conn in list(self.idle):
            conn.close()


def _is_ip_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return True
    except OSError:
        return False


class Relay:
    """One exchange's response, from its own daemon connection to its client.

    Rule 1: an exchange has exactly one source (exchange.source): its Relay or one SharedStream.
    Rule 2: the daemon is read only while the client has room (CLIENT_HIGH_WATER); the client
            resumes it once its queue is under CLIENT_LOW_WATER.
    Rule 3: a pooled connection that fails before any response byte is retried once, on a fresh
            connection (a body-less GET or HEAD is safe to repeat).
    Rule 4: before the response head a failure is answered (502, or 504 for the head timeout);
            after it, the client is aborted.
    """

    def __init__(self, pool: UpstreamPool, exchange: Exchange, request: h11.Request) -> None:
        self.pool = pool
        self.exchange = exchange
        self.request = request
        self.conn: UpstreamConnection | None = None
        self.retried = False
        exchange.source = self

    def start(self, fresh: bool = False) -> None:
        try:
            self.conn = self.pool.acquire(self, self.request, fresh=fresh)
        except OSError as exc:
            self.exchange.fail(502, upstream_error_message(self.pool.endpoint, exc))

    def upstream_head(self, conn: UpstreamConnection, head: h11.Response) -> None:
        self.exchange.send_head(head)
        self.apply_backpressure(conn)

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        self.exchange.send_body(data)
        self.apply_backpressure(conn)

    def apply_backpressure(self, conn: UpstreamConnection) -> None:
        client = self.exchange.client
        if not self.exchange.active:
            conn.close()  # the client is gone (cancel() ran) or moved on
        elif not client.has_room:
            conn.pause()

    def upstream_end(self, conn: UpstreamConnection) -> None:
        self.conn = None
        if self.exchange.active:
            self.exchange.end_body()

    def upstream_failed(self, conn: UpstreamConnection, status: int, message: str, retryable: bool) -> None:
        self.conn = None
        if retryable and not self.retried:
            self.retried = True  # a stale pooled connection: once more, on a fresh one
            self.start(fresh=True)
            return
        self.exchange.fail(status, message)

    def resume(self, exchange: Exchange) -> None:
        if self.conn is not None:
            self.conn.resume()

    def cancel(self, exchange: Exchange) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.consumer = None
            conn.close()


class Lookup(Relay):
    """Asks the daemon which object a per-object request (logs, stats, top, ...) names before
    forwarding it, so that a profile's visible scope is decided about the very object that will
    answer: a Relay whose answer is kept, not relayed (its connection, retry and cancel are the
    Relay's).

    Rule 1: until it resolves, the exchange's source is the Lookup; then its Relay, or an answer.
    Rule 2: the request is then forwarded with the object's full ID as the daemon resolved it, so
            a name, a short ID or a rename in between cannot swap in another object.
    Rule 3: the daemon's answer is bounded by --max-filter-bytes; a failure or an answer that is
            not JSON ends the exchange with a 502: nothing is forwarded unchecked.
    """

    def __init__(self, pool: UpstreamPool, exchange: Exchange, request: h11.Request,
                 resolved: Callable[[int, Any], None]) -> None:
        super().__init__(pool, exchange, request)
        self.resolved = resolved  # (status, parsed JSON or None), once the answer is complete
        self.status = 0
        self.body = bytearray()

    def upstream_head(self, conn: UpstreamConnection, head: h11.Response) -> None:
        self.status = head.status_code

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        self.body += data
        if len(self.body) > self.pool.settings.max_filter_bytes:
            self.cancel(self.exchange)
            self.exchange.fail(502, f"the daemon's answer about the object is over --max-filter-bytes "
                                    f"{self.pool.settings.max_filter_bytes}")

    def upstream_end(self, conn: UpstreamConnection) -> None:
        self.conn = None
        if not self.exchange.active:
            return
        try:
            document = json.loads(self.body) if self.body else None
        except (ValueError, RecursionError):
            self.exchange.fail(502, f"the daemon's answer about the object (status {self.status}) is not JSON")
            return
        self.exchange.source = None
        self.resolved(self.status, document)

    def resume(self, exchange: Exchange) -> None:
        pass  # nothing flows to the client while looking up


class SharedStream:
    """One /events subscription fanned out to every watcher of the same canonical target: the
    daemon serves one subscriber, and an event costs porthole one parse plus one send per watcher.

    Rule 1: a watcher joins at an event boundary only: before the head, or right after a newline
            of the body. Until then it is pending and receives nothing.
    Rule 2: an answer that is not an open-ended 200 stream (an error, a Content-Length body) is
            never shared with a late joiner: the stream leaves the registry at its head, so later
            watchers get their own subscription.
    Rule 3: a lone watcher that falls CLIENT_HIGH_WATER behind pauses the daemon, as an unshared
            stream would; with others sharing it, it is disconnected instead.
    Rule 4: every watcher is answered: the stream, a 502 when the subscription fails before its
            head (pending ones too), or an abort after.
    """

    def __init__(self, key: str, pool: UpstreamPool, registry: dict[str, SharedStream],
                 request: h11.Request, reopen: Callable[[Exchange], None]) -> None:
        self.key = key
        self.pool = pool
        self.registry = registry
        self.request = request
        self.reopen = reopen  # a pending watcher of a stream that ended gets a new subscription
        self.watchers: list[Exchange] = []
        self.pending: list[Exchange] = []
        self.head: h11.Response | None = None
        self.at_boundary = True
        self.conn: UpstreamConnection | None = None

    def open(self, first: Exchange) -> None:
        self.registry[self.key] = self
        self.watchers.append(first)
        first.source = self
        try:  # fresh: a stream outlives any pooled connection's staleness check
            self.conn = self.pool.acquire(self, self.request, fresh=True)
        except OSError as exc:
            self.upstream_failed(None, 502, upstream_error_message(self.pool.endpoint, exc), False)

    def join(self, exchange: Exchange) -> None:
        exchange.source = self
        if self.head is None:
            self.watchers.append(exchange)
            return
        self.pending.append(exchange)
        if self.at_boundary:
            self.admit_pending()
        elif self.conn is not None:
            self.conn.resume()  # a lone slow watcher may have paused it mid-event: not alone now

    def admit_pending(self) -> None:
        pending, self.pending = self.pending, []
        for exchange in pending:
            self.watchers.append(exchange)
            exchange.send_head(self.head)  # type: ignore[arg-type]
        if self.conn is not None and len(self.watchers) > 1:
            self.conn.resume()  # paused by a lone slow watcher: no longer alone

    def upstream_head(self, conn: UpstreamConnection, head: h11.Response) -> None:
        self.head = head
        open_ended = head.status_code == 200 and not any(
            name.lower() == b"content-length" for name, _ in head.headers.raw_items())
        if not open_ended:
            self.leave_registry()
        for exchange in list(self.watchers):
            exchange.send_head(head)

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        if self.pending:
            boundary = data.find(b"\n") + 1
            if boundary:
                self.fan_out(data[:boundary])
                self.at_boundary = True
                self.admit_pending()
                data = data[boundary:]
        if data:
            self.fan_out(data)
            self.at_boundary = data.endswith(b"\n")
        if len(self.watchers) == 1 and not self.pending and not self.watchers[0].client.has_room \
                and self.conn is not None:
            self.conn.pause()  # resumed by resume() when the lone watcher drains

    def fan_out(self, data: bytes) -> None:
        lone = len(self.watchers) == 1 and not self.pending
        for exchange in list(self.watchers):
            client = exchange.client
            if not lone and not client.has_room:
                client.abort("too slow for a shared event stream")
                continue
            exchange.send_body(data)

    def upstream_end(self, conn: UpstreamConnection) -> None:
        self.conn = None
        self.leave_registry()
        watchers, self.watchers = self.watchers, []
        for exchange in watchers:
            if exchange.active:
                exchange.end_body()
        pending, self.pending = self.pending, []
        for exchange in pending:
            exchange.source = None
            self.reopen(exchange)

    def upstream_failed(self, conn: UpstreamConnection | None, status: int, message: str, retryable: bool) -> None:
        self.conn = None
        self.leave_registry()
        everyone = self.watchers + self.pending
        self.watchers, self.pending = [], []
        for exchange in everyone:
            exchange.fail(status, message)

    def resume(self, exchange: Exchange) -> None:
        if self.conn is not None and len(self.watchers) == 1:
            self.conn.resume()

    def cancel(self, exchange: Exchange) -> None:
        for group in (self.watchers, self.pending):
            if exchange in group:
                group.remove(exchange)
        if not self.watchers and not self.pending:  # the last watcher left: unsubscribe
            self.leave_registry()
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.consumer = None
                conn.close()
        elif self.conn is not None:
            self.conn.resume()  # whoever paused it may have been the one who left

    def leave_registry(self) -> None:
        if self.registry.get(self.key) is self:
            del self.registry[self.key]


class CoalescedRead:
    """One finite GET sent once for every client that asked for it before it was sent: polled
    lists cost the daemon one answer per round trip, however many clients poll.

    Rule 1: a client joins a read only while nothing of it has been written to the daemon (not
            yet acquired, or its connection still CONNECTING). Otherwise it joins the read queued
            to follow, which is sent once the current one has ended. So no client ever gets an
            answer to a daemon request sent before its own request arrived.
    Rule 2: per key (method, forwarded target and headers) at most one read is in flight and
            at most one waits behind it: the daemon never serves the same read twice at once
            while it moves, and a newcomer waits for at most the rest of one answer before its
            own is sent. A read paused by a member that stopped reading (Rule 4) hands over at
            once: its follower is sent, and newcomers join that one, so a client that stops
            reading never holds up anyone else's identical read.
    Rule 3: each member gets the head and every body chunk through its own exchange
            (send_head, send_body, end_body), so its profile's ResponseTransform filters its
            copy; the bytes are immutable, so sharing them shares nothing mutable.
    Rule 4: the daemon is read only while every member has room (the slowest paces the rest;
            one that stops reading is cut by its own --write-timeout). A member that leaves
            is removed; when the last leaves, the daemon connection is closed.
    Rule 5: a failure before the head answers every member (502, 504); after it, every
            member is aborted. A stale pooled connection is retried once on a fresh one: that
            request, too, is sent after every member arrived.
    """

    def __init__(self, key: tuple, pool: UpstreamPool, registry: dict[tuple, CoalescedRead],
                 request: h11.Request) -> None:
        self.key = key
        self.pool = pool
        self.registry = registry  # key -> the read in flight (or about to be sent)
        self.request = request
        self.members: list[Exchange] = []
        self.follower: CoalescedRead | None = None  # who arrived after this one was sent
        self.conn: UpstreamConnection | None = None
        self.started = False
        self.retried = False

    @property
    def joinable(self) -> bool:
        """(Rule 1) Nothing of the request has reached the daemon yet."""
        return not self.started or (self.conn is not None and self.conn.state is UpstreamState.CONNECTING)

    def join(self, exchange: Exchange) -> None:
        if self.joinable:
            exchange.source = self
            self.members.append(exchange)
            return
        if self.follower is None:
            self.follower = CoalescedRead(self.key, self.pool, self.registry, self.request)
        self.follower.join(exchange)

    def start(self, fresh: bool = False) -> None:
        self.registry[self.key] = self
        self.started = True
        try:
            self.conn = self.pool.acquire(self, self.request, fresh=fresh)
        except OSError as exc:
            self.upstream_failed(None, 502, upstream_error_message(self.pool.endpoint, exc), False)

    def hand_over(self) -> None:
        """This read is over (or has nobody left): the follower, if anyone still waits in it,
        is sent now (Rule 2)."""
        if self.registry.get(self.key) is self:
            del self.registry[self.key]
        follower, self.follower = self.follower, None
        if follower is not None and follower.members:
            follower.start()

    def upstream_head(self, conn: UpstreamConnection, head: h11.Response) -> None:
        for exchange in list(self.members):
            exchange.send_head(head)
        self.apply_backpressure(conn)

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        for exchange in list(self.members):
            exchange.send_body(data)
        self.apply_backpressure(conn)

    def apply_backpressure(self, conn: UpstreamConnection) -> None:
        if any(not exchange.client.has_room for exchange in self.members):
            conn.pause()
            self.hand_over()  # (Rule 2) stalled: whoever comes next is not held up by it

    def upstream_end(self, conn: UpstreamConnection | None) -> None:
        self.conn = None
        members, self.members = self.members, []
        self.hand_over()
        for exchange in members:
            if exchange.active:
                exchange.end_body()

    def upstream_failed(self, conn: UpstreamConnection | None, status: int, message: str, retryable: bool) -> None:
        self.conn = None
        if retryable and not self.retried and self.members:
            self.retried = True  # a stale pooled connection: once more, on a fresh one
            self.start(fresh=True)
            return
        members, self.members = self.members, []
        self.hand_over()
        for exchange in members:
            exchange.fail(status, message)

    def resume(self, exchange: Exchange) -> None:
        if self.conn is not None and all(member.client.has_room for member in self.members):
            self.conn.resume()

    def cancel(self, exchange: Exchange) -> None:
        if exchange in self.members:
            self.members.remove(exchange)
        if self.members or not self.started:
            self.resume(exchange)  # whoever paused it may have been the one who left
            return
        conn, self.conn = self.conn, None  # nobody is left to answer: stop asking (Rule 4)
        if conn is not None:
            conn.consumer = None
            conn.close()
        self.hand_over()


class Listener:
    """A listening socket. Accepts at most ACCEPTS_PER_TURN connections a pass, so one busy
    listener cannot starve the others; out of descriptors, it pauses briefly instead of spinning.
    A socket that fails between accept() and its hand-over is closed, never leaked."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint, loop: Loop,
                 on_accept: Callable[[socket.socket, Endpoint, Any], None]) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.loop = loop
        self.on_accept = on_accept
        self.paused = False
        sock.setblocking(False)
        self.resume()

    def on_io(self, mask: int) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            if self.paused:
                return
            try:
                sock, address = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.loop.log("warning", "accept_paused", error=os.strerror(exc.errno))
                    self.pause()
                    self.loop.set_deadline(self, self.loop.clock() + ACCEPT_BACKOFF_SECONDS)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            try:
                sock.setblocking(False)
                self.on_accept(sock, self.endpoint, address)
            except BaseException:
                sock.close()
                raise

    def on_deadline(self, now: float) -> None:
        self.resume()

    def pause(self) -> None:
        self.paused = True
        self.loop.watch(self.sock, 0, self)

    def resume(self) -> None:
        self.paused = False
        self.loop.watch(self.sock, selectors.EVENT_READ, self)

    def close(self) -> None:
        self.loop.forget(self.sock)
        self.loop.cancel(self)
        self.sock.close()
        if self.endpoint.kind == "unix":
            with contextlib.suppress(OSError):
                os.unlink(self.endpoint.path)


class SignalPipe:
    """Signals arrive as bytes on a socketpair (signal.set_wakeup_fd): the loop handles them in
    order, guarded like any other I/O, never inside an arbitrary bytecode of a callback."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, loop: Loop, on_signal: Callable[[int], None]) -> None:
        self.loop = loop
        self.on_signal = on_signal
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            signal.signal(signum, lambda num, frame: None)  # the wakeup fd carries it
        loop.watch(self.reader, selectors.EVENT_READ, self)

    def on_io(self, mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            for signum in self.reader.recv(4096):
                self.on_signal(signum)

    def close(self) -> None:
        """After this a late signal is ignored: the onefile bootloaders forward a signal sent
        to the whole process group, so a copy can arrive while we exit."""
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        self.loop.forget(self.reader)
        self.reader.close()
        self.writer.close()


class Timer:
    """A deadline with a callback, for the loop's heap."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def on_deadline(self, now: float) -> None:
        self.callback()


FileIdentity = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size


class RulesWatcher:
    """Looks at the rules file every --watch-rules seconds and calls on_change when it is another
    file or was rewritten: a Kubernetes ConfigMap update swaps a symlink (..data) to a new
    directory, so the path then names a file with a new (st_dev, st_ino); an edit in place
    changes mtime or size.

    Rule 1: a change is reported once: the next look compares with what this one saw, so an
            invalid file is refused (and logged) once, not at every look.
    Rule 2: a path that cannot be stat'ed (gone, or mid-swap) is no change; it is logged once, and
            the file that then appears is a change.
    Rule 3: after a reload by other means (SIGHUP), remember() makes the current file the seen one.
    """

    def __init__(self, loop: Loop, path: Path, interval: float, on_change: Callable[[], None],
                 log: Log) -> None:
        self.loop = loop
        self.path = path
        self.interval = interval
        self.on_change = on_change
        self.log = log
        self.seen = self.identity()

    def identity(self) -> FileIdentity | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def start(self) -> None:
        self.loop.set_deadline(self, self.loop.clock() + self.interval)

    def remember(self) -> None:
        self.seen = self.identity()

    def on_deadline(self, now: float) -> None:
        self.loop.set_deadline(self, now + self.interval)
        current = self.identity()
        if current == self.seen:
            return
        self.seen = current
        if current is None:
            self.log("warning", "rules_missing", rules=rules_label(self.path),
                     kept="the rules loaded before", note="reloaded when the file is back")
            return
        self.on_change()

    def stop(self) -> None:
        self.loop.cancel(self)


# --------------------------------------------------------------------------------------------
# 5. The proxy: the parts above wired to the policy
# --------------------------------------------------------------------------------------------

MAX_METRICS_CONNECTIONS = 8  # scrapers served at once; past it the metrics listener pauses
METRICS_PATH = b"/metrics"


class MetricsServer:
    """The --metrics listener: GET and HEAD /metrics, rendered from the Metrics registry, on
    connections of its own (ClientConnection: the same head, idle and write-stall deadlines).

    Rule 1: its connections are its own: they never count against --max-connections or the
            per-client caps, and at most MAX_METRICS_CONNECTIONS are open at once (the listener
            pauses past it), so scrapers cannot exhaust the proxy, nor its clients a scrape.
    Rule 2: nothing here reaches the daemon: an answer is rendered and queued at once.
    Rule 3: any other path is a 404, any other method a 405, both Docker-style JSON.
    """

    def __init__(self, sock: socket.socket, endpoint: Endpoint, loop: Loop, settings: Settings, log: Log,
                 render: Callable[[], str]) -> None:
        self.loop = loop
        self.settings = settings
        self.log = log
        self.render = render
        self.clients: set[ClientConnection] = set()
        self.stopping = False
        self.listener = Listener(sock, endpoint, loop, self.accept)

    def accept(self, sock: socket.socket, endpoint: Endpoint, address: Any) -> None:
        if endpoint.kind == "unix":
            pid, uid, gid = struct.unpack("iII", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            peer = f"uid={uid} gid={gid} pid={pid}"
        else:
            peer = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
        client = ClientConnection(sock, self.loop, self, self.settings, endpoint, peer, peer)
        self.clients.add(client)
        client.update_interest()
        if len(self.clients) >= MAX_METRICS_CONNECTIONS:
            self.listener.pause()

    def on_request(self, client: ClientConnection, exchange: Exchange) -> None:
        method, target = exchange.facts.method, exchange.facts.target
        if method not in ALLOWED_METHODS:
            self.respond(exchange, 405, f"method {method} is not served here: GET {METRICS_PATH.decode()}",
                         [(b"Allow", b"GET, HEAD")])
        elif target.partition(b"?")[0] != METRICS_PATH:
            self.respond(exchange, 404, f"no such path: only {METRICS_PATH.decode()} is served here")
        else:
            body = self.render().encode("utf-8")
            exchange.send_head(h11.Response(status_code=200, headers=[
                (b"Content-Type", METRICS_CONTENT_TYPE), (b"Content-Length", str(len(body)).encode())]))
            if method == "GET":
                exchange.send_body(body)
            exchange.end_body()

    @staticmethod
    def respond(exchange: Exchange, status: int, message: str,
                headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        exchange.outcome, exchange.reason = "deny", message
        body = error_body(message)
        exchange.close_after = status == 405  # a refused method may have sent a body we never read
        exchange.send_head(h11.Response(status_code=status, headers=[
            (b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode()), *headers,
            *([(b"Connection", b"close")] if exchange.close_after else [])]))
        if exchange.facts.method != "HEAD":
            exchange.send_body(body)
        exchange.end_body()

    def exchange_done(self, exchange: Exchange) -> None:
        if self.log.enabled("debug"):
            self.log("debug", "metrics_request", listener=exchange.client.listener.url, client=exchange.client.peer,
                     method=exchange.facts.method, target=exchange.facts.target.decode("latin-1"),
                     status=exchange.status, reason=exchange.reason)

    def client_closed(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        if self.listener.paused and len(self.clients) < MAX_METRICS_CONNECTIONS and not self.stopping:
            self.listener.resume()

    def close(self) -> None:
        """The proxy is stopping: no new scrape; open connections deliver what is queued and close."""
        self.stopping = True
        self.listener.close()
        for client in list(self.clients):
            client.close()


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
        outcome, template = self.learner.record(self.policy(), client.facts, method, target, forwarded)
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


MAX_CACHED_DECISIONS = 256  # distinct requests whose decisions are kept (then all are dropped)


class Proxy:
    """Listeners, clients, the daemon pool and the shared streams, around one Loop.

    Rule 1: per-client counts (connections, streams) go up in one place (accept, on_request)
            and down in one place (client_closed, exchange_done).
    Rule 2: a connection over --max-connections-per-client or --max-connections is still
            accepted (up to REJECT_SLACK more) and gets a 503 that says why; past that the
            listeners pause until a connection closes.
    Rule 3: after SIGTERM/SIGINT nothing new is accepted; idle clients close, streams end now,
            finite answers get --shutdown-grace to be delivered; then whatever is left is aborted.
    """

    def __init__(self, settings: Settings, policy: Policy, log: Log,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.policy = policy
        self.log = log
        self.loop = Loop(log, clock)
        self.metrics = Metrics()
        self.metrics_server: MetricsServer | None = None
        self.pool = UpstreamPool(self.loop, settings, log, self.metrics)
        self.listeners: list[Listener] = []
        self.clients: set[ClientConnection] = set()
        self.served = 0  # clients not rejected by a cap
        self.connections_per_client: dict[str, int] = {}
        self.streams_per_client: dict[str, int] = {}
        self.shared_streams: dict[str, SharedStream] = {}
        self.coalesced: dict[tuple, CoalescedRead] = {}
        self.request_heads: dict[str, dict[bytes, h11.Request]] = {}  # profile -> RequestReader.remembered
        # decide() is a pure function of the policy and the request's facts: an identical
        # request (keep-alive pollers send the same bytes) reuses its Decision, and its plan and
        # forwarded request when nothing is filtered. Forgotten when the policy changes.
        self.decisions: dict[tuple, tuple[Decision, FilterPlan | None, h11.Request | None]] = {}
        self.decided_under = policy
        self.signals: SignalPipe | None = None
        self.stopping = False
        self.grace_timer = Timer(self.grace_over)
        self.rules_watcher: RulesWatcher | None = None
        if settings.watch_rules > 0 and not settings.dropin:
            self.rules_watcher = RulesWatcher(self.loop, settings.rules_path, settings.watch_rules,
                                              self.rules_changed, log)
        self.tls_contexts: dict[str, ssl.SSLContext] = {}  # listener URL -> the context new connections get
        self.learning = None if settings.learn_path is None else LearnFile(settings.learn_path, self.loop, log,
                                                                           lambda: self.policy)

    # ---- set-up and the loop -------------------------------------------------------------------

    def bind(self) -> None:
        for endpoint in self.settings.listeners:
            if endpoint.profile not in self.policy.profiles:
                raise UsageError(f"{endpoint.url}: no profile {endpoint.profile!r} in {self.policy.source}")
            if endpoint.tls:
                try:
                    self.tls_contexts[endpoint.url] = tls_server_context(endpoint)
                except TlsConfigError as exc:
                    raise UsageError(f"{endpoint.url}: {exc}") from None
            sock = bind_unix(endpoint) if endpoint.kind == "unix" else bind_tcp(endpoint)
            self.listeners.append(Listener(sock, endpoint, self.loop, self.accept))
        metrics = self.settings.metrics
        if metrics is not None:
            sock = bind_unix(metrics) if metrics.kind == "unix" else bind_tcp(metrics)
            self.metrics_server = MetricsServer(sock, metrics, self.loop, self.settings, self.log, self.metrics_text)
        if self.learning is not None and not os.access(self.learning.path.parent, os.W_OK | os.X_OK):
            raise UsageError(f"--learn {self.learning.path}: porthole (uid {os.geteuid()}) cannot write to "
                             f"{self.learning.path.parent}")
        self.signals = SignalPipe(self.loop, self.on_signal)
        if self.rules_watcher is not None:
            self.rules_watcher.start()
        self.write_state_file()
        self.log("info", "listening", listeners=[l.endpoint.url for l in self.listeners],
                 upstream=self.settings.upstream.url, rules=self.policy.source,
                 profiles=sorted(self.policy.profiles), version=VERSION, pid=os.getpid(),
                 metrics=metrics.url if metrics else None)
        if self.learning is not None:
            self.log("warning", "learn_mode", path=str(self.learning.path),
                     note="what the rules refuse is forwarded and logged as would_deny; do not leave it on")

    def run(self) -> int:
        self.log.pending = []
        while not self.stopping or self.clients:
            self.log.flush()
            self.loop.run_once(1.0)
        self.pool.close()
        if self.learning is not None and self.learning.pending:  # learned during the grace period
            self.learning.write("shutdown")
        self.remove_state_file()
        if self.signals is not None:
            self.signals.close()
        self.log("info", "shutdown", reason="all connections closed")
        self.log.flush()
        self.log.pending = None
        return 0

    def write_state_file(self) -> None:
        """Record our listeners for --healthcheck, which runs as a separate process (the image's
        HEALTHCHECK) and otherwise could not know which --listen the container was given."""
        path = self.settings.state_file
        if path is None:
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            temporary.write_text(json.dumps({"pid": os.getpid(), "listen": [l.endpoint.url for l in self.listeners]}))
            os.replace(temporary, path)
        except OSError as exc:
            self.log("warning", "state_file_failed", path=str(path), error=exc.strerror)

    def metrics_text(self) -> str:
        return self.metrics.render(open_connections=len(self.clients),
                                   open_streams=sum(self.streams_per_client.values()))

    def remove_state_file(self) -> None:
        if self.settings.state_file is not None:
            with contextlib.suppress(OSError):
                self.settings.state_file.unlink()

    # ---- signals -------------------------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload()
            if self.learning is not None:
                self.learning.write("SIGHUP")
        elif signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            self.begin_shutdown(signal.Signals(signum).name)

    def reload(self) -> None:
        """SIGHUP: swap in the new rules and certificates, each only if valid; otherwise keep
        the old ones."""
        self.log("info", "reload_requested", signal="SIGHUP")
        if self.rules_watcher is not None:
            self.rules_watcher.remember()
        self.reload_rules()
        self.reload_certificates()

    def rules_changed(self) -> None:
        """The rules watcher saw a new rules file: the same as SIGHUP, for the rules."""
        self.log("info", "reload_requested", reason="the rules file changed", rules=rules_label(self.settings.rules_path))
        self.reload_rules()

    def reload_certificates(self) -> None:
        """New connections get the new context; open ones keep theirs."""
        for url in self.tls_contexts:
            endpoint = next(l.endpoint for l in self.listeners if l.endpoint.url == url)
            try:
                self.tls_contexts[url] = tls_server_context(endpoint)
            except TlsConfigError as exc:
                self.log("error", "tls_reload_failed", listener=url, error=str(exc),
                         kept="the certificates loaded before")
                continue
            self.log("info", "tls_reload", listener=url, tlscert=endpoint.tlscert,
                     tlscacert=endpoint.tlscacert)

    def reload_rules(self) -> None:
        if self.settings.dropin:
            self.log("info", "reload", rules=self.policy.source, kept=self.policy.source,
                     note="the policy comes from environment variables, which cannot change")
            return
        path = self.settings.rules_path
        try:
            policy = load_policy(path.read_text(encoding="utf-8"), rules_label(path))
            missing = sorted({l.endpoint.profile for l in self.listeners} - policy.profiles.keys())
            if missing:
                raise PolicyError(rules_label(path), "$.profiles", f"a listener uses profile {missing[0]!r}, which is gone")
        except (OSError, UnicodeDecodeError, PolicyError) as exc:
            self.metrics.reloaded(ok=False)
            self.log("error", "reload_failed", error=str(exc), kept=self.policy.source)
            return
        self.policy = policy
        self.metrics.reloaded(ok=True)
        for client in self.clients:
            self.assign_profile(client)
        self.log("info", "reload", rules=policy.source, profiles=sorted(policy.profiles),
                 clients=len(policy.clients))

    def begin_shutdown(self, why: str) -> None:
        self.stopping = True
        if self.rules_watcher is not None:
            self.rules_watcher.stop()
        self.log("info", "stopping", signal=why, open_connections=len(self.clients),
                 grace_seconds=self.settings.shutdown_grace)
        if self.learning is not None:
            self.learning.write(why)
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.pool.close()
        self.loop.set_deadline(self.grace_timer, self.loop.clock() + self.settings.shutdown_grace)
        for client in list(self.clients):
            if client.exchange is None:
                client.close()
            else:
                client.exchange.stop()

    def grace_over(self) -> None:
        for client in list(self.clients):
            client.abort("shutdown grace period over")

    # ---- clients -------------------------------------------------------------------------------

    def accept(self, sock: socket.socket, endpoint: Endpoint, address: Any) -> None:
        if endpoint.kind == "unix":
            pid, uid, gid = struct.unpack("iII", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            peer, identity = f"uid={uid} gid={gid} pid={pid}", f"uid={uid}"
            facts = ClientFacts(uid=uid, gid=gid)
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
            identity = address[0]
            facts = ClientFacts(address=peer_address(address[0]))
        context = self.tls_contexts.get(endpoint.url)
        tls = TlsTransport(sock, context) if context is not None else None
        self.admit(sock, endpoint, peer, identity, facts, tls)

    def client_identified(self, client: ClientConnection) -> None:
        """A TLS handshake completed: a verified certificate's CN may choose the profile."""
        tls = client.tls
        assert tls is not None
        if tls.cert_cn is not None:
            client.facts = ClientFacts(address=client.facts.address, cert_cn=tls.cert_cn)
            client.peer = f"{client.peer} cn={tls.cert_cn}"
        self.assign_profile(client)
        self.log("debug", "tls_established", listener=client.listener.url, client=client.peer,
                 version=tls.version, profile=client.profile,
                 client_rule=client.client_rule.label if client.client_rule else None)

    def handshake_failed(self, client: ClientConnection, reason: str) -> None:
        self.log("warning", "tls_handshake_failed", listener=client.listener.url, client=client.peer,
                 reason=reason)

    def assign_profile(self, client: ClientConnection) -> None:
        """Per connection: at accept, once a TLS handshake named the client, and on every
        reload (an open connection's next request is decided under the new mapping)."""
        client.profile, client.client_rule = choose_profile(self.policy.clients, client.facts,
                                                            client.listener.profile)
        # heads h11 parsed are shared within a profile, as its decisions are (RequestReader Rule 1)
        client.reader.remembered = self.request_heads.setdefault(client.profile, {})

    def admit(self, sock: socket.socket, endpoint: Endpoint, peer: str, identity: str,
              facts: ClientFacts = ClientFacts(), tls: TlsTransport | None = None) -> ClientConnection:
        """A new client connection, served or (over a cap) answered with a 503."""
        settings, count = self.settings, self.connections_per_client.get(identity, 0)
        rejection = None
        if count >= settings.max_connections_per_client:
            rejection = (f"this client already has {count} connections open "
                         f"(--max-connections-per-client {settings.max_connections_per_client})")
        elif self.served >= settings.max_connections:
            rejection = f"porthole has {self.served} connections open (--max-connections {settings.max_connections})"
        client = ClientConnection(sock, self.loop, self, settings, endpoint, peer, identity, rejection, facts, tls)
        self.assign_profile(client)
        self.clients.add(client)
        if rejection is None:  # the rejected are bounded by REJECT_SLACK, not counted
            self.served += 1
            self.connections_per_client[identity] = count + 1
        else:
            self.log("warning", "connection_rejected", client=peer, reason=rejection)
        client.update_interest()
        if len(self.clients) >= settings.max_connections + REJECT_SLACK:
            for listener in self.listeners:
                listener.pause()
        return client

    def client_closed(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        if client.rejection is None:
            self.served -= 1
            _decrement(self.connections_per_client, client.identity)
        if len(self.clients) < self.settings.max_connections + REJECT_SLACK:
            for listener in self.listeners:
                if listener.paused and self.loop.wanted.get(listener) is None:
                    listener.resume()

    def on_request(self, client: ClientConnection, exchange: Exchange) -> None:
        facts = exchange.facts
        try:
            if client.head_size > self.settings.max_head_bytes:
                raise Refusal(431, f"request head of {client.head_size} bytes exceeds "
                                   f"--max-head-bytes {self.settings.max_head_bytes}", close=True)
            if self.decided_under is not self.policy:  # decided under another policy: forget them
                self.decisions.clear()
                self.decided_under = self.policy
            key = (facts.profile, facts.method, facts.target, tuple(facts.headers), facts.listener_kind,
                   facts.http_version)
            cached = self.decisions.get(key)
            decision = cached[0] if cached else decide_with_mode(self.policy, facts, self.settings.allow_hosts,
                                                              self.learning is not None)
            if decision.streaming:
                active = self.streams_per_client.get(client.identity, 0)
                if active >= self.settings.max_streams_per_client:
                    raise Refusal(429, f"this client already has {active} streams open "
                                       f"(--max-streams-per-client {self.settings.max_streams_per_client})")
        except Refusal as refusal:
            if self.learning is not None and refusal.kind == "dangerous":
                self.learning.record(client, facts.method, canonicalize_target(facts.target), forwarded=False)
            client.refuse(refusal)
            return
        filtering = self.policy.filtering.get(facts.profile, DEFAULT_FILTERING)
        if cached and cached[1] is not None:
            plan, request = cached[1], cached[2]
        else:
            try:
                plan = plan_response_filter(filtering, facts.method, decision.target)
            except Refusal as refusal:
                client.refuse(refusal)
                return
            request = forwarded_request(plan.method, plan.target, facts.headers)
            if len(self.decisions) >= MAX_CACHED_DECISIONS:
                self.decisions.clear()
            # a plan with a filter holds per-exchange counts: only its decision is kept
            self.decisions[key] = (decision, None, None) if plan.filter or plan.lookup else (decision, plan, request)
        exchange.decision = decision
        if decision.would_deny is not None:
            exchange.outcome, exchange.reason = "would_deny", decision.would_deny
        if self.learning is not None:
            self.learning.record(client, facts.method, decision.target, forwarded=True)
        if decision.streaming:
            self.streams_per_client[client.identity] = self.streams_per_client.get(client.identity, 0) + 1
        if plan.lookup is not None:
            self.look_up(exchange, plan.lookup, filtering)
            return
        if plan.filter is not None:
            exchange.filter = plan.filter
            exchange.transform = filter_transform(plan.filter, self.settings.max_filter_bytes)
        if is_shareable(facts.method, decision.target):
            self.join_stream(exchange, request)
        elif (self.settings.coalesce and plan.method == facts.method == "GET" and not decision.streaming
              and facts.profile not in self.policy.uncoalesced):
            self.coalesce(exchange, request)
        else:
            Relay(self.pool, exchange, request).start()

    def look_up(self, exchange: Exchange, kind: str, filtering: Filtering) -> None:
        """A per-object request under a visible scope: resolve the object, then forward by ID."""
        target, facts = exchange.decision.target, exchange.facts  # type: ignore[union-attr]
        at = 2 if target.segments[0] == "libpod" else 1  # the object's name, after its collection
        name = target.segments[at]
        exchange.filter = ResponseFilter(filtering, kind, name)
        about = target.segments[:at + 1] + (("json",) if kind == "container" else ())
        question = forwarded_request("GET", Target(target.version, about, ()), facts.headers)

        def resolved(status: int, document: Any) -> None:
            try:
                full_id = resolved_object(kind, name, status, document, filtering)
            except TransformError as exc:
                if isinstance(exc, ObjectHidden) and exc.status == 404:
                    exchange.filter.hidden += 1  # type: ignore[union-attr]
                exchange.transform_failed(exc)
                return
            forward = Target(target.version, target.segments[:at] + (full_id,) + target.segments[at + 1:], target.query)
            Relay(self.pool, exchange, forwarded_request(facts.method, forward, facts.headers)).start()

        Lookup(self.pool, exchange, question, resolved).start()

    def join_stream(self, exchange: Exchange, request: h11.Request | None = None) -> None:
        assert exchange.decision is not None
        if request is None:
            request = forwarded_request(exchange.facts.method, exchange.decision.target, exchange.facts.headers)
        key = exchange.decision.target.forward_form_text
        stream = self.shared_streams.get(key)
        if stream is not None:
            stream.join(exchange)
        else:
            SharedStream(key, self.pool, self.shared_streams, request, self.join_stream).open(exchange)

    def coalesce(self, exchange: Exchange, request: h11.Request) -> None:
        """A finite GET: joins an identical one not yet sent, or the one to follow it."""
        key = (request.target, tuple(request.headers.raw_items()))  # what the daemon is asked
        read = self.coalesced.get(key)
        if read is not None:
            read.join(exchange)
            return
        read = CoalescedRead(key, self.pool, self.coalesced, request)
        read.join(exchange)
        read.start()

    def exchange_done(self, exchange: Exchange) -> None:
        """Once per exchange: its answer was delivered, or its connection closed."""
        client, facts, decision = exchange.client, exchange.facts, exchange.decision
        if exchange.streaming:
            _decrement(self.streams_per_client, client.identity)
        self.metrics.request_done(facts.profile, exchange.outcome, decision.rule.path if decision else None,
                                  None if exchange.streaming else self.loop.clock() - exchange.started)
        if self.log.enabled("info"):
            filtered = {} if exchange.filter is None else {
                "redacted": exchange.filter.redacted, "hidden": exchange.filter.hidden}
            self.log("info", "request", listener=client.listener.url, client=client.peer,
                     method=facts.method, target=facts.target.decode("latin-1"),
                     path=decision.target.forward_form_text if decision else None,
                     profile=facts.profile, client_rule=exchange.client_rule,
                     decision=exchange.outcome,
                     rule=decision.rule.label if decision and decision.would_deny is None else None,
                     reason=exchange.reason, status=exchange.status, bytes=exchange.delivered,
                     duration_ms=int((self.loop.clock() - exchange.started) * 1e6) / 1000,  # (round() formats a string)
                     **filtered)


def _decrement(counts: dict[str, int], key: str) -> None:
    count = counts.get(key, 0) - 1
    if count > 0:
        counts[key] = count
    else:
        counts.pop(key, None)


class TlsConfigError(Exception):
    """A TLS listener's certificate, key or CA file cannot be used; the message says which and why."""


def tls_server_context(endpoint: Endpoint) -> ssl.SSLContext:
    """The TLS context of a listener, its files read now: TLS 1.2 at least, HTTP/1.1 only, and
    with tlscacert a client certificate signed by it is required (CERT_REQUIRED)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    try:  # (ssl.SSLError is an OSError: it comes first)
        context.load_cert_chain(endpoint.tlscert, endpoint.tlskey)  # type: ignore[arg-type]
    except ssl.SSLError as exc:
        raise TlsConfigError(f"tlscert {endpoint.tlscert} and tlskey {endpoint.tlskey} are not a "
                             f"PEM certificate and its matching key: {exc}") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot read {exc.filename or endpoint.tlscert}: {exc.strerror or exc}") from None
    if endpoint.tlscacert is not None:
        try:
            context.load_verify_locations(cafile=endpoint.tlscacert)
        except ssl.SSLError as exc:
            raise TlsConfigError(f"tlscacert {endpoint.tlscacert} holds no usable PEM certificate: {exc}") from None
        except OSError as exc:
            raise TlsConfigError(f"cannot read {endpoint.tlscacert}: {exc.strerror or exc}") from None
        if not context.get_ca_certs():
            raise TlsConfigError(f"tlscacert {endpoint.tlscacert} holds no CA certificate")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


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

def healthcheck_tls(endpoint: Endpoint) -> ssl.SSLContext:
    """TLS to our own listener: its certificate is not checked (we found the listener ourselves);
    on a mutual-TLS listener we present the listener's own certificate, which works when
    tlscacert signed it for client use too; otherwise probe another listener."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if endpoint.tlscacert is not None:
        with contextlib.suppress(OSError, ssl.SSLError):
            context.load_cert_chain(endpoint.tlscert, endpoint.tlskey)  # type: ignore[arg-type]
    return context


def init_process_listener() -> Endpoint | None:
    """In a container whose PID 1 is this same program (the image), the first listener it was
    started with: its command line (/proc/1/cmdline) with our environment, which `docker exec`
    and the HEALTHCHECK share with it. None when PID 1 is another program."""
    if not getattr(sys, "frozen", False):
        return None
    try:
        argv = [arg.decode("utf-8", "surrogateescape") for arg in Path("/proc/1/cmdline").read_bytes().split(b"\0")[:-1]]
        # Natively argv[0] is this program. Under emulation (an arm64 image on an amd64 host,
        # binfmt_misc) PID 1 is qemu, and the program follows it (twice, with binfmt's P flag).
        first = next((i for i, arg in enumerate(argv[:3]) if _is_this_program(arg)), None)
    except OSError:
        return None
    if first is None:
        return None
    args = argv[first + 1:]
    while args and _is_this_program(args[0]):
        args = args[1:]
    return parse_settings(args, os.environ).listeners[0]


def _is_this_program(path: str) -> bool:
    try:
        return path.startswith("/") and os.path.samefile(path, sys.executable)
    except OSError:
        return False


def blocking_get(sock: Any, target: str, host: str, limit: int = 4 * 1024 * 1024) -> tuple[int, bytes]:
    """One GET on a connected blocking socket, outside the event loop (--healthcheck, --doctor):
    (status, body, at most about `limit` bytes of it). Raises OSError or h11.ProtocolError."""
    conn = h11.Connection(h11.CLIENT)
    sock.sendall(conn.send(h11.Request(method="GET", target=target, headers=[("Host", host), ("Connection", "close")])))
    sock.sendall(conn.send(h11.EndOfMessage()))
    status, body = 0, bytearray()
    while len(body) < limit:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(READ_CHUNK))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    return status, bytes(body)


def healthcheck(settings: Settings) -> int:
    """GET /_ping through our own first listener: proves listener, policy and daemon all work.
    Without --listen: the listener recorded in the state file, else PID 1's (in the image)."""
    endpoint = settings.listeners[0]
    if not settings.listeners_given and settings.state_file is not None:
        try:
            endpoint = parse_endpoint(json.loads(settings.state_file.read_text())["listen"][0], listener=True)
        except (OSError, ValueError, KeyError, IndexError, TypeError, UsageError) as exc:
            print(f"porthole healthcheck: cannot read {settings.state_file}: {exc}", file=sys.stderr)
            return 1
    elif not settings.listeners_given:
        try:
            endpoint = init_process_listener() or endpoint
        except UsageError as exc:
            print(f"porthole healthcheck: PID 1's command line: {exc}", file=sys.stderr)
            return 1
    address: Any = endpoint.address
    host = "localhost"
    if endpoint.kind == "tcp":
        connect_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(endpoint.host, endpoint.host)
        address = (connect_host, endpoint.port)
        host = f"[{connect_host}]" if ":" in connect_host else connect_host
    try:
        with socket.socket(endpoint.family, socket.SOCK_STREAM) as plain:
            plain.settimeout(5)
            plain.connect(address)
            sock = healthcheck_tls(endpoint).wrap_socket(plain) if endpoint.tls else plain
            status, body = blocking_get(sock, "/_ping", host)
    except (OSError, h11.ProtocolError) as exc:
        print(f"porthole healthcheck: {endpoint.url}: {exc}", file=sys.stderr)
        return 1
    if status == 200:
        return 0
    print(f"porthole healthcheck: {endpoint.url}: HTTP {status}: {body[:300].decode('utf-8', 'replace')}",
          file=sys.stderr)
    return 1


# ---- --doctor: an audit of the host porthole runs on -----------------------------------------
#
# Facts are gathered once (gather_host_facts: the only I/O, its paths injectable for tests), then
# each check is a pure function of them returning findings. Severities: ok and info never change
# the exit status; a warning makes it 1, a critical finding 2.

SEVERITIES = ("ok", "info", "warning", "critical")
DEFAULT_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


@dataclass(frozen=True)
class Finding:
    severity: str  # one of SEVERITIES
    check: str
    message: str


@dataclass(frozen=True)
class DoctorPaths:
    """Where the audit looks; PORTHOLE_DOCTOR_* override them (tests, or a host mounted elsewhere)."""

    proc: str = "/proc"
    daemon_json: str = "/etc/docker/daemon.json"  # when dockerd names no --config-file
    group: str = "/etc/group"
    passwd: str = "/etc/passwd"  # users whose primary group is the socket's are members too

    @staticmethod
    def from_environment(environ: Mapping[str, str]) -> DoctorPaths:
        return DoctorPaths(proc=environ.get("PORTHOLE_DOCTOR_PROC") or "/proc",
                           daemon_json=environ.get("PORTHOLE_DOCTOR_DAEMON_JSON") or "/etc/docker/daemon.json",
                           group=environ.get("PORTHOLE_DOCTOR_GROUP_FILE") or "/etc/group",
                           passwd=environ.get("PORTHOLE_DOCTOR_PASSWD_FILE") or "/etc/passwd")


@dataclass(frozen=True)
class SocketFacts:
    path: str
    mode: int | None = None  # None: could not stat it (see error)
    uid: int = -1
    gid: int = -1
    group_name: str | None = None
    group_members: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class DaemonFacts:
    """One dockerd process serving the upstream: its command line and configuration file merged."""

    pid: int
    hosts: tuple[str, ...]
    tls: bool = False
    tlsverify: bool = False
    userns_remap: str | None = None
    config_file: str = ""
    config_error: str | None = None


@dataclass(frozen=True)
class HostFacts:
    upstream: Endpoint
    socket: SocketFacts | None  # None: the upstream is TCP
    daemons: tuple[DaemonFacts, ...]
    dockerd_processes: int  # dockerd processes seen in /proc, serving the upstream or not
    proc_root: str
    security_options: tuple[str, ...] | None  # the daemon's /info SecurityOptions (None: not asked)
    daemon_error: str | None  # why porthole could not ask the daemon
    euid: int
    allow_root: bool
    listeners: tuple[Endpoint, ...]
    policy: Policy


def _flag_value(argv: Sequence[str], i: int, names: Sequence[str]) -> tuple[str | None, int]:
    """(value, how many arguments it took) when argv[i] is one of the option `names`."""
    arg = argv[i]
    for name in names:
        if arg == name:
            return (argv[i + 1] if i + 1 < len(argv) else ""), 2
        if arg.startswith(name + "="):
            return arg[len(name) + 1:], 1
        if len(name) == 2 and arg.startswith(name) and len(arg) > 2:  # -Htcp://...
            return arg[2:], 1
    return None, 0


def _boolean_flag(argv: Sequence[str], name: str) -> bool | None:
    """--name or --name=true/false (the last one wins); None when absent."""
    value = None
    for arg in argv:
        if arg == name:
            value = True
        elif arg.startswith(name + "="):
            value = arg.partition("=")[2].lower() in ("1", "true", "t")
    return value


def parse_dockerd_command_line(argv: Sequence[str]) -> dict[str, Any]:
    """The options of dockerd's command line the audit reads: hosts, tls, tlsverify,
    userns-remap, config-file."""
    found: dict[str, Any] = {"hosts": []}
    i = 1
    while i < len(argv):
        value, used = _flag_value(argv, i, ("-H", "--host"))
        if used:
            found["hosts"].append(value)
            i += used
            continue
        for option in ("--userns-remap", "--config-file"):
            value, used = _flag_value(argv, i, (option,))
            if used:
                found[option[2:]] = value
                break
        i += max(used, 1)
    for option in ("--tls", "--tlsverify"):
        value = _boolean_flag(argv, option)
        if value is not None:
            found[option[2:]] = value
    return found


def _same_unix_socket(host: str, path: str) -> bool:
    if not host.startswith("unix://"):
        return False
    given = host[len("unix://"):] or "/var/run/docker.sock"
    return given == path or (given in DEFAULT_DOCKER_SOCKETS and path in DEFAULT_DOCKER_SOCKETS) \
        or os.path.realpath(given) == os.path.realpath(path)


def daemon_serves(hosts: Sequence[str], upstream: Endpoint) -> bool:
    """Whether a dockerd with these hosts serves the upstream porthole connects to."""
    if upstream.kind == "tcp":
        return any(h.startswith("tcp://") and h.rsplit(":", 1)[-1].rstrip("/") == str(upstream.port) for h in hosts)
    if not hosts or any(h.startswith("fd://") for h in hosts):  # dockerd's default, or systemd's socket
        return upstream.path in DEFAULT_DOCKER_SOCKETS or os.path.realpath(upstream.path) == "/run/docker.sock"
    return any(_same_unix_socket(h, upstream.path) for h in hosts)


def read_daemon_config(path: str) -> tuple[dict[str, Any], str | None]:
    """daemon.json: ({} and None when absent; {} and why when unreadable or invalid)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return {}, f"cannot read {path}: {exc}"
    if not isinstance(document, dict):
        return {}, f"{path} is not a JSON object"
    return document, None


def find_daemons(paths: DoctorPaths, upstream: Endpoint) -> tuple[list[DaemonFacts], int]:
    """The dockerd processes in paths.proc serving `upstream`, and how many dockerd there are."""
    daemons, seen = [], 0
    try:
        entries = sorted((e for e in os.listdir(paths.proc) if e.isdigit()), key=int)
    except OSError:
        return [], 0
    for entry in entries:
        try:
            argv = [a.decode("utf-8", "replace") for a in
                    Path(paths.proc, entry, "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "dockerd":
            continue
        seen += 1
        flags = parse_dockerd_command_line(argv)
        config_file = flags.get("config-file") or paths.daemon_json
        config, error = read_daemon_config(config_file)
        hosts = list(flags["hosts"]) or [h for h in config.get("hosts", []) if isinstance(h, str)]
        if not daemon_serves(hosts, upstream):
            continue
        userns = flags.get("userns-remap") or config.get("userns-remap") or None
        daemons.append(DaemonFacts(
            pid=int(entry), hosts=tuple(hosts),
            tls=bool(flags.get("tls", config.get("tls", False))),
            tlsverify=bool(flags.get("tlsverify", config.get("tlsverify", False))),
            userns_remap=userns if isinstance(userns, str) else None,
            config_file=config_file, config_error=error))
    return daemons, seen


def _colon_file(path: str) -> list[list[str]]:
    """The records of /etc/group or /etc/passwd ([] when unreadable)."""
    try:
        return [line.split(":") for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return []


def socket_facts(path: str, group_file: str, passwd_file: str = "/etc/passwd") -> SocketFacts:
    """The socket's owner and mode, its group's name and members: those /etc/group lists, then
    the users whose primary group it is (/etc/passwd)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return SocketFacts(path, error=exc.strerror or str(exc))
    gid, name, members = str(info.st_gid), None, []
    for fields in _colon_file(group_file):
        if len(fields) >= 4 and fields[2].strip() == gid:
            name, members = fields[0], [m for m in fields[3].strip().split(",") if m]
            break
    for fields in _colon_file(passwd_file):
        if len(fields) >= 4 and fields[3].strip() == gid and fields[0] not in members:
            members.append(fields[0])
    return SocketFacts(path, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, name, tuple(members))


def daemon_security_options(upstream: Endpoint) -> tuple[tuple[str, ...] | None, str | None]:
    """GET /info from the daemon: (its SecurityOptions, None), or (None, why not)."""
    try:
        with socket.socket(upstream.family, socket.SOCK_STREAM) as sock:
            sock.settimeout(15)  # a busy daemon answers /info slowly; --doctor can wait
            sock.connect(upstream.address)
            status, body = blocking_get(sock, "/info", "docker")
    except OSError as exc:
        return None, upstream_error_message(upstream, exc)
    except h11.ProtocolError as exc:
        return None, f"the daemon's answer to GET /info is not HTTP: {exc}"
    try:
        options = json.loads(body)["SecurityOptions"] if status == 200 else None
    except (ValueError, KeyError, TypeError):
        options = None
    if not isinstance(options, list):
        return None, f"GET /info answered {status} without SecurityOptions"
    return tuple(str(o) for o in options), None


def gather_host_facts(settings: Settings, policy: Policy, paths: DoctorPaths) -> HostFacts:
    upstream = settings.upstream
    daemons, seen = find_daemons(paths, upstream)
    options, error = daemon_security_options(upstream)
    return HostFacts(
        upstream=upstream, socket=socket_facts(upstream.path, paths.group, paths.passwd) if upstream.kind == "unix" else None,
        daemons=tuple(daemons), dockerd_processes=seen, proc_root=paths.proc,
        security_options=options, daemon_error=error, euid=os.geteuid(), allow_root=settings.allow_root,
        listeners=settings.listeners, policy=policy)


# The checks: pure functions of HostFacts.

def check_docker_socket(facts: HostFacts) -> list[Finding]:
    """Who can reach the daemon socket (connecting needs write permission): everyone with
    o+w is root on the host; so is every member of a group with g+w."""
    sock, name = facts.socket, "docker socket"
    if sock is None:
        return [Finding("critical", name, f"porthole reaches the daemon over TCP ({facts.upstream.url}): porthole "
                                          f"speaks no TLS upstream, so the daemon listens on TCP without it")]
    if sock.mode is None:
        return [Finding("warning", name, f"cannot stat {sock.path}: {sock.error}")]
    mode = f"{sock.path} (owner uid {sock.uid}, group {sock.group_name or sock.gid}, mode {sock.mode:04o})"
    if sock.mode & 0o002:  # everyone: its group no longer matters
        return [Finding("critical", name, f"{mode} is world-writable: every local user and every container "
                                          f"that mounts it is root on this host; chmod o-rw it")]
    if not sock.mode & 0o020:
        return [Finding("ok", name, f"{mode}: only its owner can use it")]
    if sock.group_members:
        return [Finding("warning", name, f"{mode}: members of group {sock.group_name} can use it directly, "
                                         f"bypassing porthole, and are root on this host: "
                                         f"{', '.join(sock.group_members)}")]
    return [Finding("ok", name, f"{mode}: its group has no listed members")]


def check_daemon_reachable(facts: HostFacts) -> list[Finding]:
    if facts.daemon_error is not None:
        return [Finding("warning", "daemon", f"porthole cannot ask the daemon: {facts.daemon_error}")]
    return [Finding("ok", "daemon", f"porthole reaches the daemon at {facts.upstream.url}")]


def check_daemon_tcp(facts: HostFacts) -> list[Finding]:
    """Docker Bench 2.6: a daemon on TCP without TLS client verification is root for whoever
    can reach the port, whatever porthole does."""
    name = "dockerd tcp"
    if not facts.daemons:
        seen = (f"{facts.dockerd_processes} dockerd process(es) in {facts.proc_root}, none serving "
                f"{facts.upstream.url}" if facts.dockerd_processes else
                f"no dockerd process in {facts.proc_root} (another PID namespace?)")
        return [Finding("info", name, f"{seen}: the daemon's own listeners were not checked; "
                                      f"run --doctor on the daemon's host")]
    findings = []
    for daemon in facts.daemons:
        if daemon.config_error:
            findings.append(Finding("warning", name, f"dockerd pid {daemon.pid}: {daemon.config_error}"))
        tcp = [h for h in daemon.hosts if h.startswith("tcp://")]
        if not tcp:
            findings.append(Finding("ok", name, f"dockerd pid {daemon.pid} listens on no TCP address "
                                                f"({', '.join(daemon.hosts) or 'its default socket'})"))
        elif not daemon.tlsverify:
            how = "TLS without client certificates" if daemon.tls else "no TLS"
            findings.append(Finding("critical", name, f"dockerd pid {daemon.pid} listens on {', '.join(tcp)} with "
                                                      f"{how}: whoever reaches the port is root on this host, "
                                                      f"bypassing porthole; remove the tcp:// host or set tlsverify"))
        else:
            findings.append(Finding("ok", name, f"dockerd pid {daemon.pid} listens on {', '.join(tcp)} "
                                                f"with TLS client verification"))
    return findings


def check_userns(facts: HostFacts) -> list[Finding]:
    """Docker Bench 2.8: with user-namespace remapping, root in a container is not root outside."""
    name = "userns-remap"
    options = facts.security_options or ()
    if any(o == "name=userns" or o.startswith("name=userns,") for o in options):
        return [Finding("ok", name, "the daemon remaps user namespaces (SecurityOptions name=userns)")]
    if any(o.startswith("name=rootless") for o in options):
        return [Finding("ok", name, "the daemon runs rootless")]
    configured = [d for d in facts.daemons if d.userns_remap]
    if configured:
        state = "but the daemon does not report it (restart dockerd?)" if facts.security_options is not None else ""
        return [Finding("info" if state else "ok", name,
                        f"dockerd pid {configured[0].pid} is configured with userns-remap "
                        f"{configured[0].userns_remap!r} {state}".rstrip())]
    return [Finding("info", name, "no user-namespace remapping: root in a container is root on the host "
                                  "(userns-remap in daemon.json, Docker Bench 2.8)")]


def check_root(facts: HostFacts) -> list[Finding]:
    if facts.euid == 0:
        return [Finding("warning", "porthole user",
                        "porthole runs as root" + (" (--allow-root)" if facts.allow_root else
                                                   ", which it refuses to serve as without --allow-root")
                        + ": run it as an unprivileged user with the socket's group")]
    return [Finding("ok", "porthole user", f"porthole runs as uid {facts.euid}, not root")]


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _acknowledged(policy: Policy, profile: str) -> list[Rule]:
    return [rule for rule in policy.profiles.get(profile, ()) if rule.dangerous]


def check_listeners(facts: HostFacts) -> list[Finding]:
    """A TCP listener off loopback answers whoever reaches it: without TLS client certificates
    anyone there reads what the listener's profile allows (critical if that includes dangerous
    reads). `clients` entries only pick profiles: a client they do not match still gets the
    listener's own."""
    findings, name = [], "listeners"
    tcp_entries = [c for c in facts.policy.clients if c.network is not None or c.cert_cn is not None]
    for endpoint in facts.listeners:
        dangerous = _acknowledged(facts.policy, endpoint.profile)
        if endpoint.kind == "unix":
            world = endpoint.mode is not None and endpoint.mode & 0o002
            findings.append(Finding("warning" if world and dangerous else "ok", name,
                                    f"{endpoint.url}: a unix socket" + (", world-writable, whose profile "
                                    f"{endpoint.profile!r} acknowledges dangerous reads" if world and dangerous else "")))
            continue
        if _is_loopback(endpoint.host):
            findings.append(Finding("ok", name, f"{endpoint.url}: loopback only"))
            continue
        if endpoint.tlscacert is not None:
            findings.append(Finding("ok", name, f"{endpoint.url}: mutual TLS (clients need a certificate "
                                                f"signed by {endpoint.tlscacert})"))
            continue
        how = "TLS without client certificates" if endpoint.tls else "no TLS"
        severity = "critical" if dangerous else "warning"
        what = (f"the dangerous reads profile {endpoint.profile!r} acknowledges "
                f"({', '.join(sorted({r.path for r in dangerous}))})" if dangerous
                else f"what profile {endpoint.profile!r} allows (container inspect shows environment variables)")
        note = (f"; the {len(tcp_entries)} TCP `clients` entries pick profiles, but a client they do not match "
                f"still gets {endpoint.profile!r}" if tcp_entries else "")
        findings.append(Finding(severity, name, f"{endpoint.url}: not loopback, {how}: whoever reaches it reads "
                                                f"{what}{note}; bind to 127.0.0.1 or a unix socket, or add tlscacert"))
    return findings


def check_dangerous_reads(facts: HostFacts) -> list[Finding]:
    """Which dangerous reads each profile acknowledges (the operator's choice, listed)."""
    findings = []
    used = {l.profile for l in facts.listeners}
    for profile, rules in sorted(facts.policy.profiles.items()):
        dangerous = [r for r in rules if r.dangerous]
        if dangerous:
            listed = "; ".join(f"{'|'.join(sorted(r.methods))} {r.path} ({dangerous_overlaps(r.template)[0]})"
                               for r in dangerous)
            findings.append(Finding("info", "dangerous reads", f"profile {profile!r}"
                                    + (" (a listener's)" if profile in used else "") + f" acknowledges: {listed}"))
    if not findings:
        findings.append(Finding("ok", "dangerous reads", "no profile acknowledges a dangerous read"))
    return findings


def check_redaction(facts: HostFacts) -> list[Finding]:
    """Which profiles hand out what redaction removes by default (environment values, log and
    volume driver options, exec command lines, config contents): a warning for a profile in use."""
    findings = []
    used = {l.profile for l in facts.listeners} | {c.profile for c in facts.policy.clients}
    for profile in sorted(facts.policy.profiles):
        filtering = facts.policy.filtering.get(profile, DEFAULT_FILTERING)
        missing = [r for r in REDACTIONS if r in DEFAULT_REDACTIONS and r not in filtering.redact]
        if not missing:
            continue
        scope = f" (it sees only containers labelled {', '.join(filtering.label_filters())})" if filtering.visible else ""
        in_use = profile in used
        findings.append(Finding("warning" if in_use else "info", "redaction",
                                f"profile {profile!r}{' (in use)' if in_use else ''} does not redact "
                                f"{', '.join(missing)}: its clients read those values{scope}"))
    if not findings:
        findings.append(Finding("ok", "redaction", "every profile redacts "
                                + ", ".join(r for r in REDACTIONS if r in DEFAULT_REDACTIONS)))
    return findings


DOCTOR_CHECKS: tuple[Callable[[HostFacts], list[Finding]], ...] = (
    check_docker_socket, check_daemon_reachable, check_daemon_tcp, check_userns, check_root,
    check_listeners, check_dangerous_reads, check_redaction)


def doctor_exit_status(findings: Sequence[Finding]) -> int:
    severities = {f.severity for f in findings}
    return 2 if "critical" in severities else 1 if "warning" in severities else 0


def format_findings(findings: Sequence[Finding], as_json: bool) -> str:
    status = doctor_exit_status(findings)
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    if as_json:
        return json.dumps({"findings": [vars(f) for f in findings], "counts": counts, "exit": status})
    width = max(len(f.check) for f in findings)
    lines = [f"{'SEVERITY':<9} {'CHECK':<{width}}  FINDING"]
    lines += [f"{f.severity:<9} {f.check:<{width}}  {f.message}" for f in findings]
    lines.append(f"porthole --doctor: {counts['critical']} critical, {counts['warning']} warning(s), "
                 f"{counts['info']} info, {counts['ok']} ok; exit {status}")
    return "\n".join(lines)


def doctor(settings: Settings, policy: Policy, paths: DoctorPaths) -> int:
    facts = gather_host_facts(settings, policy, paths)
    findings = [finding for check in DOCTOR_CHECKS for finding in check(facts)]
    print(format_findings(findings, as_json=settings.log_format_given and settings.log_format == "json"))
    return doctor_exit_status(findings)


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
    notes: tuple[str, ...] = ()
    try:
        if settings.dropin:
            dropin = tecnativa_policy(dict(settings.dropin))
            notes = dropin.notes
            policy = load_policy(json.dumps(dropin.document), "the Tecnativa-style environment variables")
        else:
            policy = load_policy(settings.rules_path.read_text(encoding="utf-8"), rules_label(settings.rules_path))
    except (OSError, UnicodeDecodeError) as exc:
        print(f"porthole: {rules_label(settings.rules_path)}: cannot read: {exc}", file=sys.stderr)
        return 2
    except (PolicyError, UsageError) as exc:
        print(f"porthole: {exc}", file=sys.stderr)
        return 2
    if settings.mode == "check":
        print(describe_policy(policy))
        for note in notes:
            print(f"note: {note}")
        return 0
    if settings.mode == "doctor":
        return doctor(settings, policy, DoctorPaths.from_environment(os.environ if environ is None else environ))
    if os.geteuid() == 0 and not settings.allow_root:
        print("porthole: refusing to run as root. Run it as an unprivileged user that has the Docker "
              "socket's group, e.g. docker run --user 65532:65532 --group-add $(stat -c %g "
              "/var/run/docker.sock) ..., or setpriv --reuid 65532 --regid 65532 "
              "--groups <socket gid>. Pass --allow-root to override.", file=sys.stderr)
        return 2
    log = Log(settings.log_format, settings.log_level)
    for note in notes:
        log("warning", "dropin_left_out", note=note)
    proxy = Proxy(settings, policy, log)
    try:
        proxy.bind()
    except UsageError as exc:
        print(f"porthole: {exc}", file=sys.stderr)
        return 2
    return proxy.run()


if __name__ == "__main__":
    sys.exit(main())
