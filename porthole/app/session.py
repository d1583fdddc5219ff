"""--stdio: one client connection on stdin and stdout (StdioProxy), made for an SSH forced
command, and who its client is (session_facts: the SSH user and SSH_CONNECTION, from sshd).

The connection is an ordinary ClientConnection on one end of a socketpair, admitted as if a
listener had accepted it: the same policy, filters, limits and log. connections.stdio's
StdioBridge relays stdin and stdout to the other end.

Invariants:
Rule 1: nothing but the client connection's bytes reaches stdout, and the log never goes to
        stderr (which sshd hands to the SSH client): runtime.log.log_stream.
Rule 2: stdin's end reaches the client connection only between requests or during a stream
        (StdioBridge Rule 2): checked after every loop pass, the only time a connection's
        state changes.
Rule 3: the process ends once the client connection is closed and the bridge finished
        (StdioBridge Rule 4), exit status 0.
"""
from __future__ import annotations

import os
import pwd
import socket
import time
from typing import Callable, Mapping

from porthole import VERSION
from porthole.app.wiring import Proxy
from porthole.connections.client import ClientConnection
from porthole.connections.stdio import StdioBridge, input_may_end
from porthole.core.clients import ClientFacts
from porthole.core.policy import Policy
from porthole.runtime.config import Settings, UsageError
from porthole.runtime.log import Log
from porthole.runtime.loop import SignalPipe

MAX_LOGGED_COMMAND = 256  # characters of SSH_ORIGINAL_COMMAND kept in the log


def session_facts(environ: Mapping[str, str], uid: int | None = None) -> tuple[ClientFacts, str, dict[str, str | None]]:
    """Who is at the other end of stdin: (facts for `clients`, the peer as logged, log fields).
    Under sshd (SSH_CONNECTION is set) the SSH user is the name of the uid porthole runs as,
    which sshd chose from the key: $USER is not trusted (sshd can let a client set it)."""
    uid = os.getuid() if uid is None else uid
    connection = environ.get("SSH_CONNECTION")  # "client-address client-port server-address server-port"
    if not connection:
        return ClientFacts(), f"stdio uid={uid}", {"ssh_user": None, "ssh_connection": None, "ssh_command": None}
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    parts = connection.split()
    where = f"[{parts[0]}]:{parts[1]}" if len(parts) >= 2 and ":" in parts[0] else ":".join(parts[:2])
    peer = f"ssh {user if user is not None else f'uid={uid}'}@{where}"
    command = environ.get("SSH_ORIGINAL_COMMAND")
    return ClientFacts(ssh_user=user), peer, {
        "ssh_user": user, "ssh_connection": connection,
        "ssh_command": None if command is None else command[:MAX_LOGGED_COMMAND]}


class StdioProxy(Proxy):
    """The proxy with one client connection, on stdin and stdout, and no listener."""

    def __init__(self, settings: Settings, policy: Policy, log: Log, environ: Mapping[str, str],
                 stdin: int = 0, stdout: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(settings, policy, log, clock)
        self.environ = environ
        self.fds = (stdin, stdout)
        self.bridge: StdioBridge | None = None
        self.session: ClientConnection | None = None

    def bind(self) -> None:
        endpoint = self.settings.stdio
        assert endpoint is not None
        if endpoint.profile not in self.policy.profiles:
            raise UsageError(f"--profile {endpoint.profile}: no such profile in {self.policy.source}")
        self.signals = SignalPipe(self.loop, self.on_signal)
        if self.rules_watcher is not None:
            self.rules_watcher.start()
        facts, peer, fields = session_facts(self.environ)
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        self.bridge = StdioBridge(self.loop, ours, self.settings.write_timeout, *self.fds)
        self.log("info", "stdio_session", client=peer, profile=endpoint.profile, upstream=self.settings.upstream.url,
                 rules=self.policy.source, version=VERSION, pid=os.getpid(), **fields)
        self.session = self.admit(theirs, endpoint, peer, peer, facts)

    def run(self) -> int:
        self.log.pending = []
        while not self.ended:
            self.run_pass()
        return self.wind_down("the stdio session ended")

    @property
    def ended(self) -> bool:
        """Rule 3: the client connection closed and the bridge finished."""
        return not self.clients and (self.bridge is None or self.bridge.finished)

    def run_pass(self, max_wait: float | None = None) -> None:
        bridge, session = self.bridge, self.session
        if bridge is not None and bridge.input_done and session in self.clients and input_may_end(session):
            bridge.end_input()  # Rule 2
        self.log.flush()
        self.loop.run_once(max_wait)  # until I/O, a signal or the next deadline (Loop Rule 4)

    def client_closed(self, client: ClientConnection) -> None:
        super().client_closed(client)
        if self.bridge is not None:
            self.bridge.client_closed()

    def grace_over(self) -> None:
        super().grace_over()
        if self.bridge is not None:
            self.bridge.finish()
