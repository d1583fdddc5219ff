"""Settings: where to listen, where the daemon is, the limits; listener and upstream URLs."""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlsplit

from porthole.runtime.listen_url import DEFAULT_LISTEN  # (defined there for --healthcheck, which loads only that)

DEFAULT_UPSTREAM = "unix:///var/run/docker.sock"
# --watch-rules' default: one look (a stat) at the rules file every 30 s, the loop's only timer on
# an idle proxy. A Kubernetes ConfigMap update takes a minute or more to reach the pod anyway;
# SIGHUP reloads at once (docs/command-line.md).
WATCH_RULES_SECONDS = 30.0


class UsageError(Exception):
    """A bad command line, environment variable or listener URL (exit status 2)."""


@dataclass(frozen=True)
class Endpoint:
    """Where to listen or connect: a TCP host/port or a unix socket path."""

    url: str
    kind: str  # "tcp" or "unix"; "stdio" for --stdio's one connection
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
    """Parse tcp://HOST:PORT or unix:///path, with listener options in the query. (The one
    reading of these URLs: runtime.listen_url's quick one for --healthcheck gives the same.)"""
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
    watch_rules: float = WATCH_RULES_SECONDS  # seconds between looks at the rules file (0: never, SIGHUP only)
    coalesce: bool = True  # identical concurrent finite GETs share one daemon request
    state_file: Path | None = None  # where the running proxy records its listeners
    listeners_given: bool = False  # --listen or PORTHOLE_LISTEN was set (else the default)
    rules_given: bool = False  # --rules or PORTHOLE_RULES was set (else the shipped rules)
    # Tecnativa-style variables (name, value) when they make the policy: no rules were given and
    # one of them opens or closes part of the API (ops.tecnativa.dropin_variables).
    dropin: tuple[tuple[str, str], ...] = ()
    policy_reason: str = ""  # why the policy comes from where it does (logged at start)
    mode: str = "run"  # run, check, healthcheck, version, doctor
    metrics: Endpoint | None = None  # --metrics: where GET /metrics is served
    log_format_given: bool = False  # --log-format or PORTHOLE_LOG_FORMAT was set (--doctor: JSON only then)
    learn_path: Path | None = None  # --learn: every profile would-denies, the rules used are written here
    stdio: Endpoint | None = None  # --stdio: one connection on stdin/stdout with this profile; no listeners
    log_file: Path | None = None  # --log-file: the log goes here, not to stderr (nor, with --stdio, syslog)


def default_rules_path(environ: Mapping[str, str] | None = None) -> Path:
    """The rules.json shipped with the program: beside proxy.py; for the executable, a
    rules.json beside it (the image's /rules.json, which a user may mount over), else the
    copy bundled into it."""
    if not getattr(sys, "frozen", False):
        return Path(__file__).resolve().parents[2] / "rules.json"  # porthole/runtime/ -> the checkout
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
