"""The proxy (Proxy): listeners, clients and the daemon pool around one loop; signals, reload,
shutdown. Each parsed request goes to app.dispatch.

Invariants:
Rule 1: a client's connection count goes up in one place (admit) and down in one place
        (client_closed); its stream count is Dispatch's (Dispatch Rule 2).
Rule 2: admission never waits for a client and never pauses a listener (only running out of
        descriptors does: Listener): a new connection is served, answered with a 503 or closed
        at once, in this order (admit, make_room):
        a. at --max-connections-per-client, the client's own quietest connection is closed to
           make room. Quiet (connections.client.quiet_since): an idle keep-alive, part of a
           head, a TLS handshake, a lingering close; the quietest is the one quiet longest;
        b. at --max-connections, the quietest connection of the client with the most
           connections (among those with a quiet one) is closed to make room;
        c. a connection with a request in progress (ACTIVE, a stream) or an answer still
           being delivered is never closed for this. With none quiet, the new connection gets
           a 503 that says why, written at once, never after waiting for its request;
        d. at most REJECT_SLACK such 503s are on their way at once; past that a connection
           over a cap is closed at once, unanswered (RST).
        The client is whom the caps count: the TCP address, or the uid on a unix listener.
        A slowloris sharing the victim's address or uid thus only ever takes room from quiet
        connections (its own, and the victim's idle keep-alives), and the victim's new
        connection takes it back from the slowloris's (what came with a new connection is read
        at once: a request sent with it never looks quiet).
Rule 3: after SIGTERM/SIGINT nothing new is accepted; idle clients close, streams end now,
        finite answers get --shutdown-grace to be delivered; then whatever is left is aborted.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import time
from typing import TYPE_CHECKING, Any, Callable

import h11

from porthole import VERSION
from porthole.app.admission import Served
from porthole.app.dispatch import Dispatch
from porthole.connections.client import ClientConnection, start
from porthole.connections.exchange import Exchange
from porthole.connections.listeners import Listener, bind
from porthole.connections.pool import UpstreamPool
from porthole.core.clients import ClientFacts, choose_profile, peer_address
from porthole.core.policy import Policy, PolicyError, load_policy
from porthole.ops.learn import LearnFile
from porthole.ops.metrics_server import MetricsServer
from porthole.ops.reload import RulesWatcher
from porthole.runtime.config import Endpoint, Settings, UsageError, rules_label
from porthole.runtime.log import Log
from porthole.runtime.loop import Loop, SignalPipe, Timer
from porthole.runtime.metrics import Metrics

if TYPE_CHECKING:  # runtime.tls, and ssl with it, are imported only for a TLS listener (bind)
    import ssl

    from porthole.runtime.tls import TlsTransport


REJECT_SLACK = 64  # connections over a cap whose 503 may be on its way at once (Rule 2d)


class Proxy:
    """Listeners, clients and the daemon pool around one Loop: enforces this module's Rules 1-3."""

    def __init__(self, settings: Settings, policy: Policy, log: Log,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.log = log
        self.loop = Loop(log, clock)
        self.metrics = Metrics()
        self.metrics_server: MetricsServer | None = None
        self.pool = UpstreamPool(self.loop, settings, log, self.metrics)
        self.listeners: list[Listener] = []
        self.clients: set[ClientConnection] = set()
        self.served = Served(settings, self.loop, log)  # the clients not over a cap (Rule 2a-c)
        self.request_heads: dict[str, dict[bytes, h11.Request]] = {}  # profile -> RequestReader.remembered
        self.signals: SignalPipe | None = None
        self.stopping = False
        self.grace_timer = Timer(self.grace_over)
        self.rules_watcher: RulesWatcher | None = None
        if settings.watch_rules > 0 and not settings.dropin:
            self.rules_watcher = RulesWatcher(self.loop, settings.rules_path, settings.watch_rules,
                                              self.rules_changed, log)
        self.tls_contexts: dict[str, ssl.SSLContext] = {}  # listener URL -> the context new connections get
        self.learning = None if settings.learn_path is None else LearnFile(settings.learn_path, self.loop, log,
                                                                           lambda: self.policy)
        self.dispatch = Dispatch(settings, policy, self.loop, self.pool, log, self.metrics, self.learning)

    @property
    def policy(self) -> Policy:
        return self.dispatch.policy

    # ClientConnection's owner: a parsed request, and the end of its exchange, go to Dispatch.

    def on_request(self, client: ClientConnection, exchange: Exchange) -> None:
        self.dispatch.on_request(client, exchange)

    def exchange_done(self, exchange: Exchange) -> None:
        self.dispatch.exchange_done(exchange)

    # ---- set-up and the loop -------------------------------------------------------------------

    def bind(self) -> None:
        for endpoint in self.settings.listeners:
            if endpoint.profile not in self.policy.profiles:
                raise UsageError(f"{endpoint.url}: no profile {endpoint.profile!r} in {self.policy.source}")
            if endpoint.tls:
                from porthole.runtime.tls import TlsConfigError, tls_server_context  # (ssl only here)
                try:
                    self.tls_contexts[endpoint.url] = tls_server_context(endpoint)
                except TlsConfigError as exc:
                    raise UsageError(f"{endpoint.url}: {exc}") from None
            sock, identity = bind(endpoint)
            self.listeners.append(Listener(sock, endpoint, self.loop, self.accept, identity))
        metrics = self.settings.metrics
        if metrics is not None:
            sock, identity = bind(metrics)
            self.metrics_server = MetricsServer(sock, metrics, self.loop, self.settings, self.log, self.metrics_text,
                                                identity)
        if self.learning is not None and not os.access(self.learning.path.parent, os.W_OK | os.X_OK):
            raise UsageError(f"--learn {self.learning.path}: porthole (uid {os.geteuid()}) cannot write to "
                             f"{self.learning.path.parent}")
        self.signals = SignalPipe(self.loop, self.on_signal)
        if self.rules_watcher is not None:
            self.rules_watcher.start()
        self.write_state_file()
        self.log("info", "listening", listeners=[l.endpoint.url for l in self.listeners],
                 upstream=self.settings.upstream.url, rules=self.policy.source,
                 profiles=sorted(self.policy.profiles), version=VERSION, pid=os.getpid(),
                 metrics=metrics.url if metrics else None)
        if self.learning is not None:
            self.log("warning", "learn_mode", path=str(self.learning.path),
                     note="what the rules refuse is forwarded and logged as would_deny; do not leave it on")

    def run(self) -> int:
        self.log.pending = []
        while not self.stopping or self.clients:
            self.log.flush()
            self.loop.run_once()  # until I/O, a signal or the next deadline: no tick (Loop Rule 4)
        return self.wind_down("all connections closed")

    def wind_down(self, reason: str) -> int:
        """The loop is over: close the pool, write what was learned, log the end. Returns 0."""
        self.pool.close()
        if self.learning is not None and self.learning.pending:  # learned during the grace period
            self.learning.write("shutdown")
        self.remove_state_file()
        if self.signals is not None:
            self.signals.close()
        self.log("info", "shutdown", reason=reason)
        self.log.flush()
        self.log.pending = None
        return 0

    def write_state_file(self) -> None:
        """Record our listeners for --healthcheck, which runs as a separate process (the image's
        HEALTHCHECK) and otherwise could not know which --listen the container was given."""
        path = self.settings.state_file
        if path is None:
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            temporary.write_text(json.dumps({"pid": os.getpid(), "listen": [l.endpoint.url for l in self.listeners]}))
            os.replace(temporary, path)
        except OSError as exc:
            self.log("warning", "state_file_failed", path=str(path), error=exc.strerror)

    def metrics_text(self) -> str:
        return self.metrics.render(open_connections=len(self.clients),
                                   open_streams=sum(self.dispatch.streams_per_client.values()))

    def remove_state_file(self) -> None:
        if self.settings.state_file is not None:
            with contextlib.suppress(OSError):
                self.settings.state_file.unlink()

    # ---- signals -------------------------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            try:
                self.reload()
            finally:  # what was learned is written even if the reload failed
                if self.learning is not None:
                    self.learning.write("SIGHUP")
        elif signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            self.begin_shutdown(signal.Signals(signum).name)

    def reload(self) -> None:
        """SIGHUP: swap in the new rules and certificates, each only if valid; otherwise keep
        the old ones."""
        self.log("info", "reload_requested", signal="SIGHUP")
        if self.rules_watcher is not None:
            self.rules_watcher.remember()
        self.reload_rules()
        self.reload_certificates()

    def rules_changed(self) -> None:
        """The rules watcher saw a new rules file: the same as SIGHUP, for the rules."""
        self.log("info", "reload_requested", reason="the rules file changed", rules=rules_label(self.settings.rules_path))
        self.reload_rules()

    def reload_certificates(self) -> None:
        """New connections get the new context; open ones keep theirs. (From the settings, not the
        listeners: those are gone once shutdown began, and a SIGHUP may still come then.)"""
        for endpoint in self.settings.listeners:
            url = endpoint.url
            if url not in self.tls_contexts:
                continue
            from porthole.runtime.tls import TlsConfigError, tls_server_context  # (bind loaded it)
            try:
                self.tls_contexts[url] = tls_server_context(endpoint)
            except TlsConfigError as exc:
                self.log("error", "tls_reload_failed", listener=url, error=str(exc),
                         kept="the certificates loaded before")
                continue
            self.log("info", "tls_reload", listener=url, tlscert=endpoint.tlscert,
                     tlscacert=endpoint.tlscacert)

    def reload_rules(self) -> None:
        if self.settings.dropin:
            self.log("info", "reload", rules=self.policy.source, kept=self.policy.source,
                     note="the policy comes from environment variables, which cannot change")
            return
        path = self.settings.rules_path
        try:
            policy = load_policy(path.read_text(encoding="utf-8"), rules_label(path))
            missing = sorted({l.endpoint.profile for l in self.listeners} - policy.profiles.keys())
            if missing:
                raise PolicyError(rules_label(path), "$.profiles", f"a listener uses profile {missing[0]!r}, which is gone")
        except (OSError, UnicodeDecodeError, PolicyError) as exc:
            self.metrics.reloaded(ok=False)
            self.log("error", "reload_failed", error=str(exc), kept=self.policy.source)
            return
        old, self.dispatch.policy = self.policy, policy
        self.metrics.reloaded(ok=True)
        for client in self.clients:
            self.assign_profile(client)
        ended = self.dispatch.rules_changed(self.clients, old)
        self.log("info", "reload", rules=policy.source, profiles=sorted(policy.profiles),
                 clients=len(policy.clients), streams_ended=ended)

    def begin_shutdown(self, why: str) -> None:
        self.stopping = True
        if self.rules_watcher is not None:
            self.rules_watcher.stop()
        self.log("info", "stopping", signal=why, open_connections=len(self.clients),
                 grace_seconds=self.settings.shutdown_grace)
        if self.learning is not None:
            self.learning.write(why)
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.pool.close()
        self.loop.set_deadline(self.grace_timer, self.loop.clock() + self.settings.shutdown_grace)
        for client in list(self.clients):
            if client.exchange is None:
                client.close()
            else:
                client.exchange.stop()

    def grace_over(self) -> None:
        for client in list(self.clients):
            client.abort("shutdown grace period over")

    # ---- clients -------------------------------------------------------------------------------

    def accept(self, sock: socket.socket, endpoint: Endpoint, address: Any) -> None:
        if endpoint.kind == "unix":
            pid, uid, gid = struct.unpack("iII", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            peer, identity = f"uid={uid} gid={gid} pid={pid}", f"uid={uid}"
            facts = ClientFacts(uid=uid, gid=gid)
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
            identity = address[0]
            facts = ClientFacts(address=peer_address(address[0]))
        context = self.tls_contexts.get(endpoint.url)
        tls = None
        if context is not None:
            from porthole.runtime.tls import TlsTransport  # (bind loaded it)
            tls = TlsTransport(sock, context)
        self.admit(sock, endpoint, peer, identity, facts, tls)

    def client_identified(self, client: ClientConnection) -> None:
        """A TLS handshake completed: a verified certificate's CN may choose the profile."""
        tls = client.tls
        assert tls is not None
        if tls.cert_cn is not None:
            client.facts = ClientFacts(address=client.facts.address, cert_cn=tls.cert_cn)
            client.peer = f"{client.peer} cn={tls.cert_cn}"
        self.assign_profile(client)
        self.log("debug", "tls_established", listener=client.listener.url, client=client.peer,
                 version=tls.version, profile=client.profile,
                 client_rule=client.client_rule.label if client.client_rule else None)

    def handshake_failed(self, client: ClientConnection, reason: str) -> None:
        self.log("warning", "tls_handshake_failed", listener=client.listener.url, client=client.peer,
                 reason=reason)

    def assign_profile(self, client: ClientConnection) -> None:
        """Per connection: at accept, once a TLS handshake named the client, and on every
        reload (an open connection's next request is decided under the new mapping)."""
        client.profile, client.client_rule = choose_profile(self.policy.clients, client.facts,
                                                            client.listener.profile)
        # heads h11 parsed are shared within a profile, as its decisions are (RequestReader Rule 1)
        client.reader.remembered = self.request_heads.setdefault(client.profile, {})

    def admit(self, sock: socket.socket, endpoint: Endpoint, peer: str, identity: str,
              facts: ClientFacts = ClientFacts(), tls: TlsTransport | None = None) -> ClientConnection | None:
        """A new client connection: served, answered with a 503, or closed (Rule 2)."""
        rejection = self.served.make_room(identity, peer)
        if rejection is not None and len(self.clients) - self.served.count >= REJECT_SLACK:
            self.log("warning", "connection_rejected", client=peer, reason=rejection,
                     answered=False, note=f"{REJECT_SLACK} 503s are on their way already: closed at once")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return None
        client = ClientConnection(sock, self.loop, self, self.settings, endpoint, peer, identity, rejection,
                                  facts, tls)
        self.assign_profile(client)
        self.clients.add(client)
        if rejection is None:  # the rejected are bounded by REJECT_SLACK, not counted
            self.served.add(client)
        else:
            self.log("warning", "connection_rejected", client=peer, reason=rejection)
        start(client)  # over a cap: its 503 now (ClientConnection Rule 7)
        return client

    def client_closed(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        if client.rejection is None:
            self.served.remove(client)
