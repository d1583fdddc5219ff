"""porthole/connections/stdio.py: StdioBridge between pipes (stdin, stdout) and a socketpair, on
a Loop with a fake clock; between_requests on a real ClientConnection."""
from __future__ import annotations

import json
import os
import socket

import pytest
from parts import EVENTS, GET, finite_answer, read_available, read_pipe, close_fds

from porthole.core.decide import decide
from porthole.core.policy import load_policy

from porthole.connections.stdio import BRIDGE_BUFFER, StdioBridge, input_may_end


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
        return read_pipe(self.stdout_r)

    def close(self) -> None:
        self.bridge.finish()
        close_fds(self.stdin_w, self.stdout_r)


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


def test_input_may_end(env):
    """Rule 2's condition: no exchange, nothing parsed or unread waiting; or a stream."""
    client, peer = env.client()
    assert input_may_end(client)
    peer.sendall(GET[:10])
    assert not input_may_end(client)  # unread on its socket
    env.run()
    assert not input_may_end(client)  # part of a head
    peer.sendall(GET[10:])
    env.run()
    assert client.exchange is not None and not input_may_end(client)
    finite_answer(b"ok")(client, client.exchange)
    env.run()
    assert input_may_end(client)
    peer.sendall(EVENTS)
    env.run()
    assert client.exchange is not None and not input_may_end(client)  # not known to stream yet
    client.exchange.decision = decide(load_policy(json.dumps({"version": 1, "profiles": {"default": {"rules": [
        {"method": "GET", "path": "/events"}]}}})), client.exchange.facts)
    assert client.exchange.streaming and input_may_end(client)


def test_stdin_and_stdout_as_one_socket(env):
    """sshd built without pipes gives a socketpair end as stdin and stdout: half-closed input
    still gets its answer; the other end closing ends the bridge."""
    sshd, ours = socket.socketpair()
    stdin, stdout = os.dup(ours.fileno()), os.dup(ours.fileno())
    ours.close()
    pair, far = socket.socketpair()
    far.setblocking(False)
    env.sockets += [sshd, far]
    bridge = StdioBridge(env.loop, pair, 30.0, stdin, stdout)
    sshd.sendall(GET)
    sshd.shutdown(socket.SHUT_WR)
    for _ in range(5):
        env.loop.run_once(0)
    assert read_available(far) == (GET, None) and bridge.input_done and not bridge.finished
    far.sendall(b"answer")
    for _ in range(5):
        env.loop.run_once(0)
    sshd.settimeout(2)
    assert sshd.recv(100) == b"answer"
    sshd.close()
    for _ in range(5):
        env.loop.run_once(0)
    far.sendall(b"more")  # the next write fails, if the hang-up was not seen already
    for _ in range(5):
        env.loop.run_once(0)
    assert bridge.finished


def test_a_shared_descriptions_blocking_mode_is_restored(env):
    """Rule 4: stdin and stdout on one terminal (or socket) share their blocking mode: it is
    blocking again once the bridge is done."""
    shared, other = socket.socketpair()
    env.sockets += [shared, other]
    stdin, stdout = os.dup(shared.fileno()), os.dup(shared.fileno())
    pair, far = socket.socketpair()
    env.sockets.append(far)
    bridge = StdioBridge(env.loop, pair, 30.0, stdin, stdout)
    assert not os.get_blocking(shared.fileno())
    bridge.finish()
    assert os.get_blocking(shared.fileno())
