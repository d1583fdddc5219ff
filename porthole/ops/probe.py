"""One blocking GET, outside the event loop, with h11: for --doctor (--healthcheck reads its own
listener's answer by hand, without loading h11: app/healthcheck.py)."""
from __future__ import annotations

from typing import Any

import h11

from porthole.core.wire import READ_CHUNK


def blocking_get(sock: Any, target: str, host: str, limit: int = 4 * 1024 * 1024) -> tuple[int, bytes]:
    """One GET on a connected blocking socket, outside the event loop (--doctor):
    (status, body, at most about `limit` bytes of it). Raises OSError or h11.ProtocolError."""
    conn = h11.Connection(h11.CLIENT)
    sock.sendall(conn.send(h11.Request(method="GET", target=target, headers=[("Host", host), ("Connection", "close")])))
    sock.sendall(conn.send(h11.EndOfMessage()))
    status, body = 0, bytearray()
    while len(body) < limit:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(READ_CHUNK))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    return status, bytes(body)
