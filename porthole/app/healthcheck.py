"""--healthcheck: GET /_ping through our own listener, as the image's HEALTHCHECK runs it.

The image runs it every 30 s, and every second while a container starts, so a probe is lean:
proxy.py calls main() before anything else of porthole is imported, and a probe of a plain
listener loads nothing but this module, runtime/listen_url.py and `_socket` (the C module under
`socket`, whose own import costs more than the rest of the probe: enum). No h11, no policy, no
argparse, no json, no ssl, unless the probe needs them:

- its own command line: --healthcheck, --listen and --state-file (and PORTHOLE_LISTEN,
  PORTHOLE_STATE_FILE). Anything else goes to the whole command line (app.settings), which
  reads it as always: its mistakes exit 2, and the probe then runs as below;
- the listener: the first --listen or PORTHOLE_LISTEN; else the state file's first (json is
  imported for it); else, in the image, the first of the porthole that is PID 1
  (init_process_listener); else the default;
- a listener URL: runtime.listen_url's quick reading, or parse_endpoint (runtime.config) for
  what that leaves;
- TLS: ssl is imported for a TLS listener only;
- the answer: our own listener's, read by hand (read_answer): its status line decides, within
  MAX_ANSWER bytes and TIMEOUT seconds per step. Exit 0 only on 200; otherwise one line on
  stderr and exit 1.
"""
from __future__ import annotations

import _socket
import os
import sys

from porthole.runtime.listen_url import DEFAULT_LISTEN, Listener, quick_listener

TYPE_CHECKING = False  # not typing's: importing typing would cost the probe more than its own code
if TYPE_CHECKING:
    import ssl
    from typing import Any, Mapping, Sequence

    from porthole.runtime.config import Endpoint, Settings


MAX_ANSWER = 64 * 1024  # bytes of our listener's answer read, at most
TIMEOUT = 5.0  # seconds for the connection, the TLS handshake, each send and each read


class ProbeUsageError(Exception):
    """A listener URL or command line that cannot be used (runtime.config.UsageError's words)."""


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The lean entry (proxy.py): `porthole --healthcheck [--listen URL]... [--state-file PATH]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    own = own_arguments(args)
    if own is None:
        return whole_command_line(args, environ)
    listen, state_file = own
    try:
        given = [read_listener(url) for url in listen or env_list(environ, "PORTHOLE_LISTEN")]
    except ProbeUsageError as exc:  # each URL is read, as the command line reads them all
        print(f"porthole: {exc}", file=sys.stderr)
        return 2
    return probe(given[0] if given else None, state_file or environ.get("PORTHOLE_STATE_FILE") or None)


def healthcheck(settings: Settings) -> int:
    """--healthcheck as the whole command line read it (app.command_line)."""
    return probe(settings.listeners[0] if settings.listeners_given else None, settings.state_file)


def whole_command_line(args: list[str], environ: Mapping[str, str]) -> int:
    """What own_arguments does not read: app.settings reads it (argparse's errors exit 2)."""
    from porthole.app.settings import parse_settings
    from porthole.runtime.config import UsageError
    try:
        settings = parse_settings(args, environ)
    except UsageError as exc:
        print(f"porthole: {exc}", file=sys.stderr)
        return 2
    return healthcheck(settings)


def own_arguments(args: Sequence[str]) -> tuple[list[str], str | None] | None:
    """(the --listen URLs, the --state-file) of a probe's command line, or None when it holds
    anything else, or anything argparse might read otherwise (a value that starts with '-')."""
    listen: list[str] = []
    state_file = None
    i = 0
    while i < len(args):
        name, equals, value = args[i].partition("=")
        if args[i] == "--healthcheck":
            i += 1
            continue
        if name not in ("--listen", "--state-file"):
            return None
        if not equals:
            if i + 1 == len(args) or args[i + 1].startswith("-"):
                return None
            i, value = i + 1, args[i + 1]
        if name == "--listen":
            listen.append(value)
        else:
            state_file = value
        i += 1
    return listen, state_file


def env_list(environ: Mapping[str, str], name: str) -> list[str]:
    """A comma-separated variable, as app.settings reads it."""
    return [item.strip() for item in (environ.get(name) or "").split(",") if item.strip()]


def read_listener(url: str) -> Listener | Endpoint:
    """The one reading of a listener URL (parse_endpoint), quickly when it can (listen_url Rule 1)."""
    quick = quick_listener(url)
    if quick is not None:
        return quick
    from porthole.runtime.config import UsageError, parse_endpoint
    try:
        return parse_endpoint(url, listener=True)
    except UsageError as exc:
        raise ProbeUsageError(str(exc)) from None


def probe(given: Listener | Endpoint | None, state_file: Any) -> int:
    """GET /_ping through our own first listener: proves listener, policy and daemon all work.
    Without one given: the listener recorded in the state file, else PID 1's (in the image)."""
    endpoint = given
    if endpoint is None and state_file is not None:
        try:
            import json
            with open(state_file, encoding="utf-8") as f:
                endpoint = read_listener(json.load(f)["listen"][0])
        except (OSError, ValueError, KeyError, IndexError, TypeError, ProbeUsageError) as exc:
            print(f"porthole healthcheck: cannot read {state_file}: {exc}", file=sys.stderr)
            return 1
    elif endpoint is None:
        try:
            endpoint = init_process_listener() or read_listener(DEFAULT_LISTEN)
        except ProbeUsageError as exc:
            print(f"porthole healthcheck: PID 1's command line: {exc}", file=sys.stderr)
            return 1
    try:
        status, body = ping(endpoint)
    except (OSError, ValueError) as exc:  # (ssl.SSLError is an OSError)
        print(f"porthole healthcheck: {endpoint.url}: {exc}", file=sys.stderr)
        return 1
    if status == 200:
        return 0
    print(f"porthole healthcheck: {endpoint.url}: HTTP {status}: {body[:300].decode('utf-8', 'replace')}",
          file=sys.stderr)
    return 1


def ping(endpoint: Listener | Endpoint) -> tuple[int, bytes]:
    """(status, body) of GET /_ping through `endpoint`. Raises OSError, or ValueError for an
    answer that is not HTTP."""
    host = "localhost"
    if endpoint.kind == "unix":
        family, address = _socket.AF_UNIX, endpoint.path
    else:
        connect_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(endpoint.host, endpoint.host)
        family = _socket.AF_INET6 if ":" in connect_host else _socket.AF_INET
        address = (connect_host, endpoint.port)
        host = f"[{connect_host}]" if ":" in connect_host else connect_host
    sock: Any = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        if endpoint.tls:
            sock = tls_wrap(sock, endpoint)
        sock.sendall(f"GET /_ping HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return read_answer(sock)
    finally:
        sock.close()


def read_answer(sock: Any) -> tuple[int, bytes]:
    """Our listener's answer to a `Connection: close` request, read to its end (or MAX_ANSWER
    bytes): (status, what follows the head). Raises ValueError when it is not an HTTP answer."""
    data = b""
    while len(data) < MAX_ANSWER:
        chunk = sock.recv(MAX_ANSWER - len(data))
        if not chunk:
            break
        data += chunk
    head, end, body = data.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0]
    if not end:
        raise ValueError(f"no complete answer head in {len(data)} bytes: {line[:100]!r}")
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() or rest[3:4] not in (b"", b" "):
        raise ValueError(f"not an HTTP answer: {line[:100]!r}")
    return int(code), body


def tls_wrap(plain: Any, endpoint: Listener | Endpoint) -> ssl.SSLSocket:
    """The TLS connection to our own listener over the connected `plain` socket (imports ssl)."""
    import socket
    sock = socket.socket(fileno=plain.detach())
    sock.settimeout(TIMEOUT)
    try:
        return healthcheck_tls(endpoint).wrap_socket(sock)
    except BaseException:
        sock.close()
        raise


def healthcheck_tls(endpoint: Listener | Endpoint) -> ssl.SSLContext:
    """TLS to our own listener: its certificate is not checked (we found the listener ourselves);
    on a mutual-TLS listener we present the listener's own certificate, which works when
    tlscacert signed it for client use too; otherwise probe another listener."""
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if endpoint.tlscacert is not None:
        try:
            context.load_cert_chain(endpoint.tlscert, endpoint.tlskey)  # type: ignore[arg-type]
        except (OSError, ssl.SSLError):
            pass
    return context


def init_process_listener(cmdline: str = "/proc/1/cmdline", executable: str | None = None,
                          environ: Mapping[str, str] | None = None) -> Listener | Endpoint | None:
    """In a container whose PID 1 is this same program (the image), the first listener it was
    started with: its command line (/proc/1/cmdline) with our environment, which `docker exec`
    and the HEALTHCHECK share with it. None when PID 1 is another program, or when porthole
    runs from source."""
    if executable is None:
        if not getattr(sys, "frozen", False):
            return None
        executable = sys.executable
    try:
        with open(cmdline, "rb") as f:
            argv = [arg.decode("utf-8", "surrogateescape") for arg in f.read().split(b"\0")[:-1]]
        # Natively argv[0] is this program. Under emulation (an arm64 image on an amd64 host,
        # binfmt_misc) PID 1 is qemu, and the program follows it (twice, with binfmt's P flag).
        first = next((i for i, arg in enumerate(argv[:3]) if _is_this_program(arg, executable)), None)
    except OSError:
        return None
    if first is None:
        return None
    args = argv[first + 1:]
    while args and _is_this_program(args[0], executable):
        args = args[1:]
    environ = os.environ if environ is None else environ
    url = first_listen_url(args, environ)
    if url is not None:
        return read_listener(url)
    from porthole.app.settings import parse_settings  # what first_listen_url leaves to argparse
    from porthole.runtime.config import UsageError
    try:
        return parse_settings(args, environ).listeners[0]
    except UsageError as exc:
        raise ProbeUsageError(str(exc)) from None


def first_listen_url(args: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The first listener of a command line the running proxy (PID 1) was started with, then
    PORTHOLE_LISTEN's, then the default. That command line was read by argparse without an
    error, so each --listen has its value and no value starts with '--'. None (read it with
    app.settings) when it holds what only argparse may read for sure: an abbreviation of
    --listen (--lis URL), or '--'."""
    for i, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name == "--listen":
            if equals:
                return value
            return args[i + 1] if i + 1 < len(args) else None
        if arg == "--" or (len(name) > 3 and "--listen".startswith(name)):
            return None
    return (env_list(environ, "PORTHOLE_LISTEN") or [DEFAULT_LISTEN])[0]


def _is_this_program(path: str, executable: str) -> bool:
    try:
        return path.startswith("/") and os.path.samefile(path, executable)
    except OSError:
        return False
