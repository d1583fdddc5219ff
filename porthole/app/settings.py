"""The command line and PORTHOLE_* variables, parsed into Settings."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from porthole.ops.tecnativa import dropin_variables, tecnativa_log_level, tecnativa_upstream
from porthole.runtime.config import (DEFAULT_LISTEN, DEFAULT_UPSTREAM, WATCH_RULES_SECONDS, Endpoint, Settings, UsageError,
                                     default_rules_path, parse_endpoint, parse_metrics_endpoint)
from porthole.runtime.log import LOG_LEVELS


# (option, type, default, help). Each option also reads PORTHOLE_<OPTION> from the environment.
_NUMERIC_OPTIONS = (
    ("max-connections", int, 1024, "most client connections open at once"),
    ("max-streams-per-client", int, 64, "most concurrent streaming requests per client"),
    ("max-head-bytes", int, 16384, "largest request head accepted, in bytes"),
    ("head-timeout", float, 10.0, "seconds a client has to send a whole request head"),
    ("idle-timeout", float, 60.0, "seconds an idle keep-alive connection is kept"),
    ("write-timeout", float, 30.0, "seconds a finite response may stall on a client not reading"),
    ("connect-timeout", float, 5.0, "seconds to connect to the upstream"),
    ("response-timeout", float, 120.0, "seconds the daemon has to start answering, and at most between two bytes "
                                       "of a finite answer's body"),
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
                             f"as on SIGHUP (default {WATCH_RULES_SECONDS:g}; 0: only on SIGHUP)")
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
    parser.add_argument("--stdio", action="store_true",
                        help="serve one client connection on stdin and stdout, e.g. as an SSH forced command "
                             "(docs/ssh.md); no --listen")
    parser.add_argument("--profile", metavar="NAME", help="--stdio: the rules profile (default 'default')")
    parser.add_argument("--log-file", metavar="PATH",
                        help="append the log to PATH instead of stderr (with --stdio: instead of syslog)")
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
        if not 0 < value < math.inf:  # NaN fails both: a NaN deadline would break the loop's heap
            raise UsageError(f"--{name} must be a positive, finite number, not {value!r}")
        numbers[name.replace("-", "_")] = value
    allow_root = args.allow_root if args.allow_root is not None else (env("allow-root") or "").lower() in _TRUE
    coalesce = args.coalesce if args.coalesce is not None else (env("coalesce") or "on").lower() in _TRUE
    rules_given = bool(args.rules or env("rules"))
    if rules_given:
        dropin, policy_reason = (), "--rules" if args.rules else "PORTHOLE_RULES"
    else:
        dropin, policy_reason = dropin_variables(environ)
    dropin_values = dict(dropin)
    log_format = args.log_format or env("log-format") or "json"
    log_level = args.log_level or env("log-level") or tecnativa_log_level(dropin_values.get("LOG_LEVEL")) or "info"
    if log_format not in ("json", "text"):
        raise UsageError("PORTHOLE_LOG_FORMAT must be json or text")
    if log_level not in LOG_LEVELS:
        raise UsageError("PORTHOLE_LOG_LEVEL must be debug, info, warning or error")
    stdio = stdio_endpoint(args, env("profile"))
    metrics_url = None if stdio else args.metrics or env("metrics")
    listeners = () if stdio else tuple(parse_endpoint(url, listener=True) for url in listen_urls)
    upstream = parse_endpoint(args.upstream or env("upstream") or tecnativa_upstream(dropin_values.get("SOCKET_PATH"))
                              or DEFAULT_UPSTREAM, listener=False)
    hosts = frozenset(h.lower() for h in (args.allow_host or env_list("allow-hosts")))
    state_file = None if stdio else args.state_file or env("state-file")  # a session must not replace the proxy's
    learn_path = args.learn or env("learn")
    log_file = args.log_file or env("log-file")
    watch_rules = args.watch_rules
    if watch_rules is None and env("watch-rules") is not None:
        try:
            watch_rules = float(env("watch-rules") or "")
        except ValueError:
            raise UsageError("PORTHOLE_WATCH_RULES: not a number") from None
    watch_rules = WATCH_RULES_SECONDS if watch_rules is None else watch_rules
    if not 0 <= watch_rules < float("inf"):
        raise UsageError("--watch-rules must be 0 (off) or a number of seconds")
    return Settings(
        listeners=listeners, upstream=upstream,
        rules_path=Path(args.rules or env("rules") or default_rules_path(environ)), rules_given=rules_given,
        dropin=dropin, policy_reason=policy_reason,
        log_format=log_format, log_level=log_level, allow_root=allow_root, allow_hosts=hosts, coalesce=coalesce,
        state_file=Path(state_file) if state_file else None, listeners_given=bool(given_urls),
        watch_rules=watch_rules,
        mode=args.mode or "run", log_format_given=bool(args.log_format or env("log-format")),
        metrics=parse_metrics_endpoint(metrics_url) if metrics_url else None,
        learn_path=Path(learn_path) if learn_path else None, stdio=stdio,
        log_file=Path(log_file) if log_file else None, **numbers,
    )


def stdio_endpoint(args: argparse.Namespace, profile_variable: str | None) -> Endpoint | None:
    """--stdio: the one client connection's stand-in for a listener (its profile), or None.
    A process serving one SSH session has no listener of its own: --listen and --metrics are
    refused with it; PORTHOLE_LISTEN and PORTHOLE_METRICS, which may be set for the whole
    host, are ignored."""
    if not args.stdio:
        if args.profile is not None:
            raise UsageError("--profile is for --stdio; a listener takes ?profile=NAME")
        return None
    if args.listen:
        raise UsageError("--stdio serves stdin and stdout: it takes no --listen")
    if args.metrics:
        raise UsageError("--stdio serves one connection and exits: it takes no --metrics")
    if args.mode == "healthcheck":
        raise UsageError("--healthcheck asks a listener; --stdio has none")
    return Endpoint("stdio:", "stdio", profile=args.profile or profile_variable or "default")
