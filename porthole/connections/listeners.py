"""Listening sockets: binding TCP and unix listeners, and accepting with back-off."""
from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import stat
from typing import Any, Callable

from porthole.runtime.config import Endpoint, UsageError
from porthole.runtime.loop import Loop


ACCEPTS_PER_TURN = 64


ACCEPT_BACKOFF_SECONDS = 0.1


FileIdentity = tuple[int, int]  # (st_dev, st_ino): which file a path names


class Listener:
    """A listening socket. Accepts at most ACCEPTS_PER_TURN connections a pass, so one busy
    listener cannot starve the others; out of descriptors, it pauses briefly instead of spinning,
    and for nothing else (admission never waits: app.wiring Rule 2).
    A socket that fails between accept() and its hand-over is closed, never leaked. A unix
    listener's path is unlinked at close only while it still names the socket bound here
    (`identity`): another process may have replaced it since."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint, loop: Loop,
                 on_accept: Callable[[socket.socket, Endpoint, Any], None],
                 identity: FileIdentity | None = None) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.identity = identity
        self.loop = loop
        self.on_accept = on_accept
        self.paused = False
        sock.setblocking(False)
        self.resume()

    def on_io(self, mask: int) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            if self.paused:
                return
            try:
                sock, address = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.loop.log("warning", "accept_paused", error=os.strerror(exc.errno))
                    self.pause()
                    self.loop.set_deadline(self, self.loop.clock() + ACCEPT_BACKOFF_SECONDS)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            try:
                sock.setblocking(False)
                self.on_accept(sock, self.endpoint, address)
            except BaseException:
                sock.close()
                raise

    def on_deadline(self, now: float) -> None:
        self.resume()

    def pause(self) -> None:
        self.paused = True
        self.loop.watch(self.sock, 0, self)

    def resume(self) -> None:
        self.paused = False
        self.loop.watch(self.sock, selectors.EVENT_READ, self)

    def close(self) -> None:
        self.loop.forget(self.sock)
        self.loop.cancel(self)
        self.sock.close()
        if self.endpoint.kind == "unix" and self.identity is not None:
            with contextlib.suppress(OSError):
                info = os.lstat(self.endpoint.path)
                if (info.st_dev, info.st_ino) == self.identity:
                    os.unlink(self.endpoint.path)


def bind(endpoint: Endpoint) -> tuple[socket.socket, FileIdentity | None]:
    """A listening socket for `endpoint`, and for a unix socket the identity of the file it made,
    taken at once (Listener unlinks only that file)."""
    if endpoint.kind != "unix":
        return bind_tcp(endpoint), None
    sock = bind_unix(endpoint)
    try:
        info = os.lstat(endpoint.path)
    except OSError as exc:
        sock.close()
        raise UsageError(f"{endpoint.url}: the socket file vanished after the bind: {exc.strerror}") from None
    return sock, (info.st_dev, info.st_ino)


def bind_tcp(endpoint: Endpoint) -> socket.socket:
    sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if endpoint.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind(endpoint.address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"{endpoint.url}: cannot listen: {exc.strerror}") from None
    sock.listen(512)
    return sock


def bind_unix(endpoint: Endpoint) -> socket.socket:
    """Bind a unix socket. A stale socket file is replaced; any other is not. Stale means the
    kernel refused a connection (nobody listens) or the file is gone: a full backlog, a
    time-out or EACCES may be a live listener, never taken for stale."""
    path = endpoint.path
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:  # EACCES on the directory, ENOTDIR, ELOOP, ENAMETOOLONG
        raise UsageError(f"{endpoint.url}: cannot listen: {exc.strerror}") from None
    if info is not None:
        if not stat.S_ISSOCK(info.st_mode):
            raise UsageError(f"{endpoint.url}: {path} exists and is not a socket; not replacing it")
        _replace_if_stale(endpoint)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # never world-accessible, not even for an instant
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise UsageError(f"{endpoint.url}: cannot listen: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    try:
        if endpoint.gid is not None:
            os.chown(path, -1, endpoint.gid)
        os.chmod(path, endpoint.mode if endpoint.mode is not None else 0o660)
    except OSError as exc:
        sock.close()
        os.unlink(path)
        raise UsageError(f"{endpoint.url}: cannot set owner or mode: {exc.strerror}") from None
    sock.listen(512)
    return sock


def _replace_if_stale(endpoint: Endpoint) -> None:
    """Unlink the socket file at endpoint.path if nobody listens on it; UsageError otherwise."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a full backlog answers EAGAIN at once instead of blocking
    try:
        probe.connect(endpoint.path)
    except ConnectionRefusedError:
        try:
            os.unlink(endpoint.path)  # stale: the process that made it is gone
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise UsageError(f"{endpoint.url}: cannot replace the stale socket: {exc.strerror}") from None
        return
    except FileNotFoundError:
        return  # gone since we looked: nothing to replace
    except OSError as exc:
        raise UsageError(f"{endpoint.url}: {endpoint.path} may be served by a live process "
                         f"({exc.strerror}); not replacing it") from None
    finally:
        probe.close()
    raise UsageError(f"{endpoint.url}: {endpoint.path} is served by a live process; not replacing it")
