"""--healthcheck: GET /_ping through our own listener, as the image's HEALTHCHECK runs it."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import h11

from porthole.app.settings import parse_settings
from porthole.ops.probe import blocking_get
from porthole.runtime.config import Endpoint, Settings, UsageError, parse_endpoint


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
