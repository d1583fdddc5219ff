"""porthole/connections/listeners.py: a Listener accepts at most ACCEPTS_PER_TURN connections per
pass; bind_unix replaces a stale socket file, never a live socket or another file, and applies
the listener's mode and group."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from porthole.connections.listeners import ACCEPTS_PER_TURN, Listener, bind, bind_unix
from porthole.runtime.config import UsageError, parse_endpoint

pytestmark = pytest.mark.timeout(60)


def test_listener_accepts_at_most_accepts_per_turn(env):
    path = f"{env.dir}/l.sock"
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(512)
    endpoint = parse_endpoint(f"unix://{path}", listener=True)
    accepted = []
    listener = Listener(lsock, endpoint, env.loop, lambda sock, ep, addr: accepted.append(sock))
    clients = []
    for _ in range(ACCEPTS_PER_TURN + 6):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        clients.append(c)
    try:
        env.run()
        assert len(accepted) == ACCEPTS_PER_TURN
        env.run()
        assert len(accepted) == ACCEPTS_PER_TURN + 6
        assert all(not s.getblocking() for s in accepted)
    finally:
        for s in clients + accepted:
            s.close()
        listener.close()


# ---------------------------------------------------------------------------------------------
# unix listener files (bind_unix)


def test_stale_socket_is_replaced_and_mode_applied(tmp_path):
    path = tmp_path / "p.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody accepts: stale
    sock = bind_unix(parse_endpoint(f"unix://{path}?mode=0640&gid={os.getgid()}", listener=True))
    try:
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == os.getgid()
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        client.close()
    finally:
        sock.close()


def test_live_socket_is_not_replaced(tmp_path):
    path = tmp_path / "p.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(UsageError, match="live process"):
            bind_unix(parse_endpoint(f"unix://{path}", listener=True))
        assert path.exists()
    finally:
        live.close()


def test_regular_file_is_not_replaced(tmp_path):
    path = tmp_path / "p.sock"
    path.write_text("keep me")
    with pytest.raises(UsageError, match="not a socket"):
        bind_unix(parse_endpoint(f"unix://{path}", listener=True))
    assert path.read_text() == "keep me"


def test_default_socket_mode_is_0660(tmp_path):
    path = tmp_path / "p.sock"
    sock = bind_unix(parse_endpoint(f"unix://{path}", listener=True))
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    finally:
        sock.close()


# ---- Unix listener files are replaced only when stale, and unlinked only while they are ours
# (issue "(2 of 5)", items 9 and 10): a live listener with a full backlog used to be taken for
# stale, unlinked and its path silently stolen; Listener.close unlinked whatever the path named.

class NoLoop:
    """What a Listener needs of a loop, doing nothing."""

    def watch(self, sock, mask, part):
        pass

    def forget(self, sock):
        pass

    def cancel(self, part):
        pass


def full_backlog(path):
    """A live listener at `path` whose accept queue is full: connect() to it would block."""
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(0)
    waiting = []
    for _ in range(64):
        client = socket.socket(socket.AF_UNIX)
        client.setblocking(False)
        try:
            client.connect(str(path))
        except BlockingIOError:
            client.close()
            return live, waiting
        waiting.append(client)
    raise AssertionError("the backlog never filled")


def test_a_live_listener_with_a_full_backlog_is_not_stolen(tmp_path):
    path = tmp_path / "p.sock"
    live, waiting = full_backlog(path)
    try:
        before = os.lstat(path)
        with pytest.raises(UsageError, match="may be served by a live process"):
            bind_unix(parse_endpoint(f"unix://{path}", listener=True))
        after = os.lstat(path)
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    finally:
        for client in waiting:
            client.close()
        live.close()


def test_bind_gives_the_identity_of_the_file_it_made(tmp_path):
    path = tmp_path / "p.sock"
    sock, identity = bind(parse_endpoint(f"unix://{path}", listener=True))
    try:
        info = os.lstat(path)
        assert identity == (info.st_dev, info.st_ino)
    finally:
        sock.close()


def test_close_unlinks_only_its_own_file(tmp_path):
    path = tmp_path / "p.sock"
    endpoint = parse_endpoint(f"unix://{path}", listener=True)
    sock, identity = bind(endpoint)
    listener = Listener(sock, endpoint, NoLoop(), lambda *args: None, identity)
    os.unlink(path)
    successor = socket.socket(socket.AF_UNIX)  # another process took the path meanwhile
    successor.bind(str(path))
    try:
        listener.close()
        assert path.exists(), "Listener.close unlinked a socket it did not bind"
    finally:
        successor.close()


def test_close_unlinks_its_own_file(tmp_path):
    path = tmp_path / "p.sock"
    endpoint = parse_endpoint(f"unix://{path}", listener=True)
    sock, identity = bind(endpoint)
    Listener(sock, endpoint, NoLoop(), lambda *args: None, identity).close()
    assert not path.exists()


def test_an_unreachable_path_is_one_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot listen"):
        bind_unix(parse_endpoint(f"unix://{blocker}/p.sock", listener=True))  # ENOTDIR at lstat
