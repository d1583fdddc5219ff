"""The Tecnativa drop-in: Tecnativa-style environment variables as a read-only policy.

tecnativa/docker-socket-proxy and its linuxserver fork are configured by environment
variables: each opens one path prefix of the API (HAProxy, `^(/v[\\d.]+)?/containers` etc.)
to GET and HEAD, or to every method with POST=1. With no rules file given, porthole turns
those variables into the equivalent READ-ONLY policy, so swapping the image is the migration.
Each section opens the reads listed here and no others; a read the guards call dangerous is
forwarded only when its `gate` variable (linuxserver's ALLOW_LOGS and friends) is on too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from porthole.core.guards import dangerous_overlaps, parse_template
from porthole.runtime.config import UsageError


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
    "SWARM": (_S("/swarm"),),  # its join tokens redacted (swarm-tokens); /swarm/unlockkey is never forwarded
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


def dropin_variables(environ: Mapping[str, str]) -> tuple[tuple[tuple[str, str], ...], str]:
    """The Tecnativa-style variables that make the policy when no rules file is given, and why.

    The drop-in is honoured only when a variable that opens part of the API (or closes one of
    the default sections) is set to a number, as Tecnativa's images read them. LOG_LEVEL,
    SOCKET_PATH and DISABLE_IPV6 alone are common in hosts' and systemd units' environments for
    other programs: they never switch the policy. Neither does a section's name set to a word
    (INFO=yes belongs to some other program): it is ignored, and the reason says so."""
    present = sorted(name for name in TECNATIVA_VARIABLES if name in environ)
    signals = [name for name in present
               if name not in TECNATIVA_SETTINGS and re.fullmatch(r"[0-9]+", environ[name])]
    if signals:
        return (tuple((name, environ[name]) for name in present),
                f"Tecnativa-style variables set to numbers: {', '.join(signals)}")
    ignored = f"; ignored {', '.join(present)}: no Tecnativa-style policy variable set to a number" if present else ""
    return (), "no --rules and no Tecnativa-style policy variables: the rules file" + ignored


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
    # (imported here: --healthcheck reads the settings, this module among them, and stays lean)
    from porthole.core.objects import DEFAULT_REDACTIONS
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
            risky = dangerous_overlaps(template, DEFAULT_REDACTIONS)  # (the policy's one profile redacts these)
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
