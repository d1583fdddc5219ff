"""The default listener, and a quick reading of plain listener URLs, for --healthcheck.

--healthcheck runs every 30 s in the image (app/healthcheck.py), and what it costs is mostly what
it imports: parse_endpoint (runtime/config.py) needs urllib.parse, and with it re and enum, which
would cost the probe more CPU than all the rest of it. quick_listener reads the URLs people write
(tcp://0.0.0.0:2375, tcp://[::1]:2375, unix:///run/porthole/docker.sock?mode=0666, with TLS files
or a profile) with str methods alone, and leaves every other URL to parse_endpoint, the one
reading of a listener URL:

Rule 1: quick_listener answers only for a URL parse_endpoint reads without an error, and then
        with the same kind, host, port, path and TLS files (tests/unit/runtime/test_listen_url.py
        checks it against parse_endpoint, also for generated URLs); for any other, it answers None.
Rule 2: so it answers None for anything unusual: characters outside printable ASCII and a small
        safe set (no percent-escapes, no '+', which parse_qsl would decode), upper-case letters,
        user information, an unknown, repeated or empty option, a bad mode, gid or port.

This module imports nothing: it is what the probe loads besides app/healthcheck.py.
"""
from __future__ import annotations


DEFAULT_LISTEN = "tcp://127.0.0.1:2375"  # runtime.config re-exports it

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_HOST_CHARS = frozenset(_LOWER + _DIGITS + ".-")
_IPV6_CHARS = frozenset("0123456789abcdef:")
_PATH_CHARS = frozenset(_LOWER + _LOWER.upper() + _DIGITS + "-._~/:@,")  # the unix socket's path
_VALUE_CHARS = _PATH_CHARS  # an option's value: a file, a profile's name, a number
_OPTIONS = {"unix": frozenset({"mode", "gid", "profile"}),
            "tcp": frozenset({"profile", "tlscert", "tlskey", "tlscacert"})}


class Listener:
    """What the probe needs of a listener: the fields of runtime.config.Endpoint it uses."""

    __slots__ = ("url", "kind", "host", "port", "path", "tlscert", "tlskey", "tlscacert")

    def __init__(self, url: str, kind: str, host: str = "", port: int = 0, path: str = "",
                 tlscert: str | None = None, tlskey: str | None = None, tlscacert: str | None = None) -> None:
        self.url, self.kind, self.host, self.port, self.path = url, kind, host, port, path
        self.tlscert, self.tlskey, self.tlscacert = tlscert, tlskey, tlscacert

    @property
    def tls(self) -> bool:
        return self.tlscert is not None

    def __repr__(self) -> str:
        return f"Listener({self.url!r})"


def quick_listener(url: str) -> Listener | None:
    """url as parse_endpoint(url, listener=True) reads it, or None: ask parse_endpoint (Rule 1)."""
    if url.startswith("unix://"):
        kind, rest = "unix", url[7:]
    elif url.startswith("tcp://"):
        kind, rest = "tcp", url[6:]
    else:
        return None
    rest, _, query = rest.partition("?")
    options = _options(query, _OPTIONS[kind])
    if options is None:
        return None
    if kind == "unix":
        if not rest.startswith("/") or not _PATH_CHARS.issuperset(rest):
            return None
        mode, gid = options.get("mode"), options.get("gid")
        if mode is not None and (not set(mode) <= set("01234567") or int(mode, 8) > 0o777):
            return None
        if gid is not None and not set(gid) <= set(_DIGITS):
            return None
        return Listener(url, "unix", path=rest)
    netloc, slash, path = rest.partition("/")
    if path or "@" in netloc:
        return None
    if netloc.startswith("["):
        host, bracket, port = netloc[1:].partition("]")
        if not bracket or not port.startswith(":") or not _IPV6_CHARS.issuperset(host) or not _is_ipv6(host):
            return None
        port = port[1:]
    else:
        host, _, port = netloc.partition(":")
        if not _HOST_CHARS.issuperset(host):
            return None
    if not host or not port or len(port) > 5 or not set(port) <= set(_DIGITS) or int(port) > 65535:
        return None
    tls = {key: options[key] for key in ("tlscert", "tlskey", "tlscacert") if key in options}
    if tls and not {"tlscert", "tlskey"} <= tls.keys():
        return None
    return Listener(url, "tcp", host=host, port=int(port), **tls)


def _options(query: str, allowed: frozenset[str]) -> dict[str, str] | None:
    """The query's options, or None for anything parse_qsl might read otherwise (Rule 2)."""
    options: dict[str, str] = {}
    for field in query.split("&") if query else ():
        key, equals, value = field.partition("=")
        if not equals or key not in allowed or key in options or not value or not _VALUE_CHARS.issuperset(value):
            return None
        options[key] = value
    return options


def _is_ipv6(host: str) -> bool:
    """An IPv6 address in brackets, as urlsplit checks it (ipaddress), without importing it."""
    import _socket  # the C module under socket: loaded already by the probe that asks
    try:
        _socket.inet_pton(_socket.AF_INET6, host)
    except OSError:
        return False
    return True
