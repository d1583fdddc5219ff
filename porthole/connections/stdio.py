"""--stdio: the relay between stdin/stdout and one end of a socketpair (StdioBridge), whose other
end is an ordinary client connection, as if a listener had accepted it.

sshd gives a forced command pipes or sockets (which, depends on how it was built): the bridge
takes either, and a file or /dev/null too (those cannot be polled: they are read and written in
turns, which never block on them).

Invariants (StdioBridge):
Rule 1: bytes keep their order each way, and at most BRIDGE_BUFFER bytes wait each way: the side
        they come from is not read while they do. Back-pressure thus reaches the client
        connection, whose own rules (write stalls, paused streams) apply as on any socket.
Rule 2: stdin's end reaches the client connection (shutdown SHUT_WR) only through end_input(),
        which the owner calls once the connection may see it (input_may_end): between
        requests, so that a client that closes its input after its request still gets the
        whole answer (a socket's client that half-closes mid-exchange is taken as gone), or
        during a stream, which then ends as when its client leaves: as `docker system
        dial-stdio` and dockerd do, so a stream whose client was killed is not kept for nobody.
Rule 3: stdout failing (EPIPE, or a hang-up seen while idle: the SSH session ended) closes the
        pair at once: the client connection sees its client leave.
Rule 4: the bridge is finished once the pair ended and everything it sent went to stdout, or
        stdout failed, or the client connection closed (its owner calls client_closed) and
        stdout took nothing for --write-timeout since (while it lives, a stalled stdout is its
        business: a finite answer times out there, a stream pauses); then
        stdin, stdout and its end of the pair are closed (stdin's and stdout's blocking mode
        restored first: a terminal is shared).
"""
from __future__ import annotations

import contextlib
import os
import select
import selectors
import socket
import stat

from porthole.connections.client import ClientConnection
from porthole.core.wire import READ_CHUNK
from porthole.runtime.loop import Loop


BRIDGE_BUFFER = 256 * 1024  # bytes held each way before the side they come from is not read (Rule 1)


class _Fd:
    """One descriptor the bridge watches (stdin or stdout): the loop's part for it."""

    def __init__(self, bridge: StdioBridge, fd: int, name: str) -> None:
        self.bridge, self.fd, self.name = bridge, fd, name
        self.was_blocking = os.get_blocking(fd)
        os.set_blocking(fd, False)
        mode = os.fstat(fd).st_mode
        self.fifo = stat.S_ISFIFO(mode)
        # epoll takes pipes, sockets and terminals; files and /dev/null are always ready
        self.pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))
        self.mask = 0
        self.open = True

    def on_io(self, mask: int) -> None:
        self.bridge.fd_ready(self)

    def abort(self, reason: str) -> None:
        self.bridge.finish()

    def watch(self, mask: int) -> None:
        if self.pollable and self.open and mask != self.mask:
            self.mask = mask
            self.bridge.loop.watch(self.fd, mask, self)  # type: ignore[arg-type]

    def close(self) -> None:
        if self.open:
            self.open = False
            self.bridge.loop.forget(self.fd)  # type: ignore[arg-type]
            with contextlib.suppress(OSError):
                os.set_blocking(self.fd, self.was_blocking)
            with contextlib.suppress(OSError):  # /dev/null in its place: the number is never reused
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, self.fd)
                os.close(null)

    def hung_up(self) -> bool:
        """Whether the other end of this descriptor is gone (POLLERR, POLLHUP)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


class StdioBridge:
    """Relays stdin -> the pair and the pair -> stdout: enforces this module's Rules 1-4."""

    def __init__(self, loop: Loop, pair: socket.socket, write_timeout: float,
                 stdin: int = 0, stdout: int = 1) -> None:
        self.loop = loop
        self.pair = pair  # the bridge's end; the client connection has the other
        self.pair.setblocking(False)
        self.write_timeout = write_timeout
        self.stdin = _Fd(self, stdin, "stdin")
        self.stdout = _Fd(self, stdout, "stdout")
        self.to_pair = bytearray()  # read from stdin, for the client connection
        self.to_stdout = bytearray()  # the client connection's answers, for stdout
        self.stdin_ended = False  # stdin gave EOF (or failed)
        self.input_shut = False  # ... and the pair was told (Rule 2)
        self.pair_ended = False  # the client connection closed or reset its end, and we read all it sent
        self.client_gone = False  # the client connection is closed (client_closed)
        self.stdout_failed = False
        self.finished = False
        self.stdout_progress = loop.clock()
        self.update()

    # ---- the loop's callbacks ------------------------------------------------------------------

    def on_io(self, mask: int) -> None:  # the pair
        self.pump()

    def fd_ready(self, fd: _Fd) -> None:
        if fd is self.stdout and not self.to_stdout and self.stdout.hung_up():  # watched idle only for this (Rule 3)
            self.stdout_failed = True
        self.pump()

    def on_turn(self) -> None:
        self.pump()

    def on_deadline(self, now: float) -> None:
        if self.client_gone and self.to_stdout and now - self.stdout_progress >= self.write_timeout:
            self.finish()  # Rule 4: nobody reads what is left
        else:
            self.update()

    def client_closed(self) -> None:
        """The owner's word that the client connection is closed: what is left for stdout now has
        --write-timeout to move (Rule 4)."""
        if not self.client_gone:
            self.client_gone = True
            self.stdout_progress = max(self.stdout_progress, self.loop.clock())
            self.pump()

    def abort(self, reason: str) -> None:
        self.finish()

    # ---- moving bytes --------------------------------------------------------------------------

    def pump(self) -> None:
        if self.finished:
            return
        self.read_stdin()
        self.write_pair()
        self.read_pair()
        self.write_stdout()
        if self.stdout_failed or (self.pair_ended and not self.to_stdout):
            self.finish()
            return
        self.update()

    def read_stdin(self) -> None:
        while not self.stdin_ended and not self.pair_ended and len(self.to_pair) < BRIDGE_BUFFER:
            try:
                data = os.read(self.stdin.fd, min(READ_CHUNK, BRIDGE_BUFFER - len(self.to_pair)))
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.stdin_ended = True
                if self.stdout.hung_up():  # the whole session is gone, not just its input
                    self.stdout_failed = True
                return
            self.to_pair += data

    def write_pair(self) -> None:
        if not self.to_pair or self.pair_ended:
            return
        try:
            sent = self.pair.send(self.to_pair)
        except BlockingIOError:
            return
        except OSError:  # the client connection is gone: read_pair sees it
            self.to_pair.clear()
            return
        del self.to_pair[:sent]

    def read_pair(self) -> None:
        while not self.pair_ended and len(self.to_stdout) < BRIDGE_BUFFER:
            try:
                data = self.pair.recv(min(READ_CHUNK, BRIDGE_BUFFER - len(self.to_stdout)))
            except BlockingIOError:
                return
            except OSError:  # reset: the answer was cut, and stdout shows it by ending
                data = b""
            if not data:
                self.pair_ended = True
                self.to_pair.clear()
                return
            self.to_stdout += data

    def write_stdout(self) -> None:
        while self.to_stdout and not self.stdout_failed:
            try:
                written = os.write(self.stdout.fd, self.to_stdout)
            except BlockingIOError:
                return
            except OSError:  # EPIPE: the SSH session is gone (Rule 3)
                self.stdout_failed = True
                return
            del self.to_stdout[:written]
            self.stdout_progress = self.loop.clock()

    # ---- the end -------------------------------------------------------------------------------

    @property
    def input_done(self) -> bool:
        """stdin ended and all of it went to the client connection: end_input() may follow."""
        return self.stdin_ended and not self.to_pair and not self.input_shut and not self.finished

    def end_input(self) -> None:
        """The client connection is between requests (Rule 2): it may now see stdin's end."""
        self.input_shut = True
        with contextlib.suppress(OSError):
            self.pair.shutdown(socket.SHUT_WR)

    def update(self) -> None:
        """Watch what can move (Rule 1); turns for what cannot be polled; the deadline (Rule 4)."""
        if self.finished:
            return
        wants_stdin = not self.stdin_ended and not self.pair_ended and len(self.to_pair) < BRIDGE_BUFFER
        self.stdin.watch(selectors.EVENT_READ if wants_stdin else 0)
        mask = selectors.EVENT_WRITE if self.to_pair and not self.pair_ended else 0
        if not self.pair_ended and len(self.to_stdout) < BRIDGE_BUFFER:
            mask |= selectors.EVENT_READ
        self.loop.watch(self.pair, mask, self)
        if self.to_stdout:
            self.stdout.watch(selectors.EVENT_WRITE)
        else:  # a pipe's reader leaving shows as EPOLLERR (a socket would be readable: stdin's EOF tells)
            self.stdout.watch(selectors.EVENT_READ if self.stdout.fifo else 0)
        if (wants_stdin and not self.stdin.pollable) or (self.to_stdout and not self.stdout.pollable):
            self.loop.soon(self)
        self.loop.set_deadline(self, self.stdout_progress + self.write_timeout
                               if self.client_gone and self.to_stdout else None)

    def finish(self) -> None:
        """Rule 4: close everything; the client connection, if still open, sees its client leave."""
        if self.finished:
            return
        self.finished = True
        self.loop.cancel(self)
        self.loop.forget(self.pair)
        self.pair.close()
        self.stdout.close()  # (stdin last: on a terminal both share one blocking mode, and stdin saw it first)
        self.stdin.close()


def input_may_end(client: ClientConnection) -> bool:
    """Whether `client` may see its input end now (Rule 2): it streams (the stream ends), or no
    finite answer would be cut: no exchange, no request waiting to be parsed, nothing unread on
    its socket."""
    if client.exchange is not None:
        return client.exchange.streaming
    if client.reader.pending or client in client.loop.turns:
        return False
    try:
        return not client.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"": closed anyway
    except OSError:  # (BlockingIOError: nothing unread)
        return True
