"""Which client connections are served, by client, and the room a new one needs: a quiet
connection is closed to make it (the Invariants of app/wiring.py, Rule 2a-c)."""
from __future__ import annotations

import math
from typing import Iterable

from porthole.connections.client import ClientConnection, evict, quiet_since
from porthole.runtime.config import Settings
from porthole.runtime.log import Log
from porthole.runtime.loop import Loop


class Served:
    """The client connections served (not over a cap), by client in accept order: whom
    --max-connections-per-client and --max-connections count, and who makes room for whom."""

    def __init__(self, settings: Settings, loop: Loop, log: Log) -> None:
        self.settings = settings
        self.loop = loop
        self.log = log
        self.count = 0
        self.by_client: dict[str, dict[ClientConnection, None]] = {}  # identity -> its served, in accept order
        self.none_quiet_in_pass = -1  # the loop pass that found no quiet connection (quietest_of_the_busiest)

    def add(self, client: ClientConnection) -> None:
        self.count += 1
        self.by_client.setdefault(client.identity, {})[client] = None

    def remove(self, client: ClientConnection) -> None:
        self.count -= 1
        mine = self.by_client[client.identity]
        del mine[client]
        if not mine:
            del self.by_client[client.identity]

    def make_room(self, identity: str, peer: str) -> str | None:
        """Room for one more connection of `identity` under both caps, closing one quiet
        connection if that is what it takes (Rule 2a-c): None, or why there is none. A scan
        for 2b that found nothing is not repeated within the loop pass (a burst of accepts)."""
        settings, mine = self.settings, self.by_client.get(identity, {})
        if len(mine) >= settings.max_connections_per_client:
            cap = f"--max-connections-per-client {settings.max_connections_per_client}"
            victim = quietest(mine)
            if victim is None:
                return f"this client already has {len(mine)} connections open ({cap})"
            self.evict(victim, peer, cap)
        if self.count >= settings.max_connections:
            cap = f"--max-connections {settings.max_connections}"
            victim = None if self.none_quiet_in_pass == self.loop.passes else quietest_of_the_busiest(
                self.by_client)
            if victim is None:
                self.none_quiet_in_pass = self.loop.passes
                return f"porthole has {self.count} connections open ({cap})"
            self.evict(victim, peer, cap)
        return None

    def evict(self, victim: ClientConnection, newcomer: str, cap: str) -> None:
        since = quiet_since(victim)
        self.log("info", "connection_evicted", client=victim.peer, state=victim.state.value,
                 quiet_seconds=None if since is None else round(self.loop.clock() - since, 3),
                 reason=f"{cap}: room for a new connection from {newcomer}")
        evict(victim, f"closed to make room ({cap})")


def quietest(connections: Iterable[ClientConnection]) -> ClientConnection | None:
    """The connection quiet the longest (connections.client.quiet_since), or None if none is."""
    best, since = None, math.inf
    for connection in connections:
        when = quiet_since(connection)
        if when is not None and when < since:
            best, since = connection, when
    return best


def quietest_of_the_busiest(served_by_client: dict[str, dict[ClientConnection, None]]) -> ClientConnection | None:
    """The quietest connection of the client with the most connections, among the clients that
    have a quiet one (Rule 2b); ties go to the one quiet longest. None if none is quiet."""
    best, most, since = None, 0, math.inf
    for connections in served_by_client.values():
        if len(connections) < most:
            continue
        candidate = quietest(connections)
        when = None if candidate is None else quiet_since(candidate)
        if when is not None and (len(connections) > most or when < since):
            best, most, since = candidate, len(connections), when
    return best
