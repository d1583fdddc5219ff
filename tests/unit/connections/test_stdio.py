"""porthole/connections/stdio.py: StdioBridge between pipes (stdin, stdout) and a socketpair, on
a Loop with a fake clock; between_requests on a real ClientConnection."""
from __future__ import annotations

import os
import socket

import pytest
from parts import GET, finite_answer, read_available

from porthole.connections.stdio import BRIDGE_BUFFER, StdioBridge, between_requests


class Pipes:
    """stdin and stdout as pipes, and the far end of the bridge's socketpair: what sshd and the
    client connection would hold."""

    def __init__(self, env) -> None:
        self.env = env
        self.stdin_r, self.stdin_w = os.pipe()
        self.stdout_r, self.stdout_w = os.pipe()
        os.set_blocking(self.stdout_r, False)
        ours, self.far = socket.socketpair()
        self.far.setblocking(False)
        env.sockets += [self.far]
        self.bridge = StdioBridge(env.loop, ours, env.settings.write_timeout, self.stdin_r, self.stdout_w)

    def run(self, passes: int = 5) -> None:
        for _ in range(passes):
            self.env.loop.run_once(0)

    def stdout(self) -> tuple[bytes, bool]:
        """What stdout's reader can read now, and whether it saw EOF."""
        data = bytearray()
        while True:
            try:
                chunk = os.read(self.stdout_r, 65536)
            except BlockingIOError:
                return bytes(data), False
            if not chunk:
                return bytes(data), True
            data += chunk

    def close(self) -> None:
        self.bridge.finish()
        for fd in (self.stdin_w, self.stdout_r):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def pipes(env):
    p = Pipes(env)
    yield p
    p.close()


def test_bytes_go_both_ways_in_order(pipes):
    os.write(pipes.stdin_w, b"GET /_ping HTTP/1.1\r\n")
    os.write(pipes.stdin_w, b"Host: x\r\n\r\n")
    pipes.run()
    assert read_available(pipes.far) == (b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n", None)
    pipes.far.sendall(b"HTTP/1.1 200 OK\r\n")
    pipes.far.sendall(b"Content-Length: 2\r\n\r\nOK")
    pipes.run()
    assert pipes.stdout() == (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK", False)
    assert not pipes.bridge.finished


def test_stdin_eof_reaches_the_pair_only_through_end_input(pipes):
    """Rule 2: a client that closes its input after its request still gets its answer."""
    os.write(pipes.stdin_w, GET)
    os.close(pipes.stdin_w)
    pipes.run()
    assert read_available(pipes.far) == (GET, None)  # no EOF yet: the answer may still come
    assert pipes.bridge.input_done
    pipes.far.sendall(b"answer")
    pipes.run()
    assert pipes.stdout() == (b"answer", False)
    pipes.bridge.end_input()
    assert not pipes.bridge.input_done
    assert read_available(pipes.far) == (b"", "eof")


def test_the_pair_closing_flushes_stdout_then_finishes(pipes):
    """Rule 4: what the client connection sent before closing all reaches stdout, then EOF."""
    body = bytes(range(256)) * 2048  # 512 KiB: more than a pipe and the bridge hold at once
    view = memoryview(body)
    got = bytearray()
    eof = False
    for _ in range(400):
        if view:
            try:
                view = view[pipes.far.send(view):]
            except BlockingIOError:
                pass
            if not view:
                pipes.far.close()
        pipes.run(1)
        data, eof = pipes.stdout()
        got += data
        if eof:
            break
    assert eof and bytes(got) == body
    assert pipes.bridge.finished


def test_stdout_failing_closes_the_pair(pipes):
    """Rule 3: the SSH session is gone (its end of stdout closed): the client connection sees
    its client leave."""
    os.close(pipes.stdout_r)
    pipes.far.sendall(b"HTTP/1.1 200 OK\r\n")
    pipes.run()
    assert pipes.bridge.finished
    assert read_available(pipes.far) == (b"", "eof")


def test_a_hang_up_is_seen_while_idle(pipes):
    """Rule 3: nothing to write, and stdout's reader leaves: the bridge notices without waiting for
    an answer to fail (a stream may be silent for hours)."""
    pipes.run()
    assert not pipes.bridge.finished
    os.close(pipes.stdout_r)
    pipes.run()
    assert pipes.bridge.finished


def test_stdin_is_not_read_while_the_pair_is_full(pipes):
    """Rule 1: at most BRIDGE_BUFFER bytes wait for a client connection that does not read."""
    os.set_blocking(pipes.stdin_w, False)
    written = 0
    for _ in range(200):
        try:
            written += os.write(pipes.stdin_w, b"x" * 65536)
        except BlockingIOError:
            pass
        pipes.run(1)
    assert len(pipes.bridge.to_pair) <= BRIDGE_BUFFER
    assert written < 200 * 65536  # the writer was held back


def test_left_over_bytes_are_dropped_after_the_write_timeout(pipes):
    """Rule 4: once the client connection closed, stdout gets --write-timeout to take what is left."""
    os.set_blocking(pipes.far.fileno(), False)
    for _ in range(100):  # fill stdout's pipe and the bridge, nobody reading stdout
        try:
            pipes.far.send(b"y" * 65536)
        except BlockingIOError:
            pass
        pipes.run(1)
    pipes.far.close()
    pipes.env.clock.now += pipes.env.settings.write_timeout + 1
    pipes.run()
    assert not pipes.bridge.finished and pipes.bridge.to_stdout  # a stalled stream is not the bridge's to cut
    pipes.bridge.client_closed()
    pipes.env.clock.now += pipes.env.settings.write_timeout - 1
    pipes.run()
    assert not pipes.bridge.finished
    pipes.env.clock.now += 2
    pipes.run()
    assert pipes.bridge.finished


def test_devnull_and_files_are_read_in_turns(env, tmp_path):
    """Not pollable (epoll refuses files and /dev/null): read and written in turns."""
    request = tmp_path / "in"
    request.write_bytes(GET)
    out = tmp_path / "out"
    stdin = os.open(request, os.O_RDONLY)
    stdout = os.open(out, os.O_WRONLY | os.O_CREAT)
    ours, far = socket.socketpair()
    env.sockets.append(far)
    bridge = StdioBridge(env.loop, ours, 30.0, stdin, stdout)
    for _ in range(5):
        env.loop.run_once(0)
    assert far.recv(100) == GET and bridge.input_done
    far.sendall(b"answer")
    far.close()
    for _ in range(5):
        env.loop.run_once(0)
    assert bridge.finished and out.read_bytes() == b"answer"


def test_between_requests(env):
    """Rule 2's condition: no exchange, nothing parsed or unread waiting."""
    client, peer = env.client()
    assert between_requests(client)
    peer.sendall(GET[:10])
    assert not between_requests(client)  # unread on its socket
    env.run()
    assert not between_requests(client)  # part of a head
    peer.sendall(GET[10:])
    env.run()
    assert client.exchange is not None and not between_requests(client)
    finite_answer(b"ok")(client, client.exchange)
    env.run()
    assert between_requests(client)
