"""A TLS client that stops reading cannot hold its connection in DRAINING (issue "(2 of 5)",
item 13): with only the close_notify left for a socket that takes nothing, no deadline ran, and
the slot was held until shutdown. The write-stall deadline now runs while TLS bytes wait for the
socket, not only while answer bytes do. A ClientConnection over a socketpair, a sans-I/O TLS
client and a fake clock."""
from __future__ import annotations

import socket

import pytest

import support
import tls_certs
from porthole.connections.client import ClientState
from test_parts import Env
from test_tls import BioClient, client_context, shake, tls_client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki():
    return tls_certs.make_pki(support.short_tmpdir("ph-pki-"))


def fill(sock: socket.socket) -> None:
    """What a client that stopped reading leaves: a socket that takes no byte more."""
    for size in (65536, 4096, 256, 16, 1):
        try:
            while True:
                sock.send(b"\0" * size)
        except BlockingIOError:
            pass


def draining_with_close_notify_queued(env: Env, pki):
    """A TLS client, idle after its handshake, whose socket is full when --idle-timeout closes
    it: DRAINING, with the close_notify waiting for the socket."""
    client, peer = tls_client(env, pki)
    bio = BioClient(peer, client_context(pki, "dozzle"))
    shake(env, bio)
    assert client.state is ClientState.IDLE and not client.tls.ciphertext
    fill(client.sock)
    env.clock.now += env.settings.idle_timeout
    env.run(2)
    assert client.state is ClientState.DRAINING and client.tls.ciphertext  # close_notify, queued
    return client, peer


def test_a_client_that_never_takes_the_close_notify_is_cut_at_write_timeout(pki):
    env = Env("--write-timeout", "5")
    try:
        client, peer = draining_with_close_notify_queued(env, pki)
        closing = env.clock.now
        env.clock.now = closing + 4.99
        env.run(2)
        assert client.state is ClientState.DRAINING
        env.clock.now = closing + 5.01
        env.run(2)
        assert client.state is ClientState.CLOSED, "DRAINING with only TLS bytes queued has no deadline"
        assert env.owner.closed == [client]
    finally:
        env.close()


def test_a_client_that_takes_the_close_notify_in_time_closes_gracefully(pki):
    env = Env("--write-timeout", "5")
    try:
        client, peer = draining_with_close_notify_queued(env, pki)
        aborts, abort = [], client.abort
        client.abort = lambda *args, **kw: (aborts.append(args), abort(*args, **kw))
        env.clock.now += 4
        env.run()
        for _ in range(1000):  # the client reads again
            try:
                if not peer.recv(65536):
                    break
            except BlockingIOError:
                env.run()
        env.run(2)
        assert client.state in (ClientState.LINGERING, ClientState.CLOSED) and not client.tls.ciphertext
        env.clock.now += 5
        env.run(2)
        peer.shutdown(socket.SHUT_WR)
        env.run(2)
        assert client.state is ClientState.CLOSED and env.owner.closed == [client]
        assert aborts == []  # a FIN after the close_notify, never a reset
    finally:
        env.close()
