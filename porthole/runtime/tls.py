"""TLS for listeners: the server context, and a transport a client connection reads and writes
through (an SSLObject over memory BIOs, so the loop stays non-blocking). Imported only when a
TLS listener is configured (app.wiring), and with it `ssl`: a plain proxy never loads OpenSSL.
Its plain counterpart, PlainTransport, is in connections/client.py.
"""
from __future__ import annotations

import contextlib
import enum
import errno
import socket
import ssl
from typing import Any, Mapping

from porthole.core.wire import READ_CHUNK
from porthole.runtime.config import Endpoint
from porthole.runtime.loop import illegal_transition


TLS_RECORD = 16384  # plaintext per TLS record: the unit TlsTransport.send encrypts and reports


class TlsError(Exception):
    """A TLS handshake failed; the message says why, in words."""


_TLS_REASONS = {
    "HTTP_REQUEST": "plain HTTP on a TLS listener",
    "HTTPS_PROXY_REQUEST": "plain HTTP (a proxy CONNECT) on a TLS listener",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client presented no certificate, and this listener "
                                         "requires one signed by its tlscacert",
    "UNSUPPORTED_PROTOCOL": "the client offered only TLS versions below 1.2",
    "WRONG_VERSION_NUMBER": "the client does not speak TLS (or only a version below 1.2)",
    "NO_SHARED_CIPHER": "no cipher suite in common with the client",
    "NO_PROTOCOLS_AVAILABLE": "no TLS version in common with the client (1.2 at least)",
}


def tls_failure_reason(exc: Exception) -> str:
    """Why a handshake failed, for the log line."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate rejected: {exc.verify_message}"
    reason = getattr(exc, "reason", None) or ""
    if reason in _TLS_REASONS:
        return _TLS_REASONS[reason]
    if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")):
        return f"the client aborted the handshake ({reason.split('ALERT_', 1)[1].lower().replace('_', ' ')})"
    return f"TLS handshake failed: {reason or exc}"


def certificate_cn(certificate: Mapping[str, Any] | None) -> str | None:
    """The subject's common name of a verified certificate; "" when it has none or several
    (ambiguous: no `cert_cn` entry should match it, nor a `"certificate": false` one, which is
    for clients without a certificate); None without a certificate."""
    if not certificate:
        return None
    names = [value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names[0] if len(names) == 1 else ""


class TlsState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"  # the handshake completed: plaintext moves both ways
    CLOSING = "closing"  # our close_notify is queued: no plaintext goes out any more
    FAILED = "failed"

    __hash__ = object.__hash__


_T = TlsState
TLS_TRANSITIONS: Mapping[TlsState, frozenset[TlsState]] = {
    _T.HANDSHAKE: frozenset({_T.OPEN, _T.FAILED}),
    _T.OPEN: frozenset({_T.CLOSING, _T.FAILED}),
    _T.CLOSING: frozenset({_T.FAILED}),
    _T.FAILED: frozenset(),
}


class TlsTransport:
    """TLS between one client's socket and its ClientConnection, in the loop and sans-I/O:
    ciphertext moves between the socket and two ssl.MemoryBIOs here, and an ssl.SSLObject turns
    it into plaintext and back, as h11 turns bytes into HTTP. recv() and send() keep the meaning
    they have on a non-blocking socket (bytes, b"" at EOF, BlockingIOError when nothing can move
    now, OSError when the client is gone), so the connection and its OutputQueue use a
    TlsTransport where they would use the socket.

    Rule 1: no plaintext moves before the handshake completed; handshake() moves it on, and
            raises TlsError with the reason when it fails (after trying to send the alert).
    Rule 2: send() reports plaintext as accepted only once the socket accepted all of the
            ciphertext it became. Plaintext encrypted but not yet reported is the front of the
            next offer (as with SSL_write's retry rule), so the OutputQueue's ledger means the
            same on TLS as on a plain socket: a byte is delivered once its ciphertext was sent.
    Rule 3: at most one record of ciphertext (plus handshake, ticket or alert bytes) waits for
            the socket: nothing new is encrypted before it went.
    Rule 4: decrypted plaintext, or read ciphertext, that the SSLObject still holds is reported
            by `buffered`: the socket will not signal it again.
    """

    Error = TlsError  # what handshake() raises (Rule 1): a ClientConnection catches it without importing us

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.state = TlsState.HANDSHAKE
        self.ciphertext = bytearray()  # for the socket, not yet accepted by it
        self.ahead = 0  # plaintext encrypted into self.ciphertext, not yet reported (Rule 2)
        self.peer_closed = False
        self.unread = False  # recv() stopped with bytes perhaps left in the SSLObject (Rule 4)
        self.cert_cn: str | None = None
        self.version: str | None = None

    def enter(self, state: TlsState) -> None:
        if state not in TLS_TRANSITIONS[self.state]:
            raise illegal_transition(self.state, state)
        self.state = state

    def fail(self, exc: Exception) -> str:
        self.enter(TlsState.FAILED)
        with contextlib.suppress(OSError):
            self.push()  # the alert that tells the client why, if its socket takes it now
        return tls_failure_reason(exc)

    def handshake(self) -> bool:
        """Move the handshake on with what the socket has; True once it completed."""
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.push()
                try:
                    data = self.sock.recv(READ_CHUNK)
                except BlockingIOError:
                    return False
                if not data:
                    self.enter(TlsState.FAILED)
                    raise TlsError("the client closed the connection during the handshake") from None
                self.incoming.write(data)
                continue
            except ssl.SSLError as exc:
                raise TlsError(self.fail(exc)) from None
            self.enter(TlsState.OPEN)
            self.cert_cn = certificate_cn(self.tls.getpeercert())
            self.version = self.tls.version()
            self.unread = bool(self.incoming.pending)  # request bytes sent with the handshake
            self.push()  # the end of the handshake, and session tickets
            return True

    @property
    def buffered(self) -> bool:
        return self.unread and self.state is not TlsState.HANDSHAKE

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes of plaintext; reads the socket at most once."""
        out = bytearray()
        pulled = False
        while len(out) < size and not self.peer_closed:
            try:
                chunk = self.tls.read(size - len(out))
                if chunk:
                    out += chunk
                    continue
                self.peer_closed = True  # the client's close_notify (SSLObject reads it as b"")
                break
            except ssl.SSLWantReadError:
                if out or pulled:
                    break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.peer_closed = True  # close_notify, or the socket's EOF without it
                break
            except ssl.SSLError as exc:
                if self.state is TlsState.CLOSING:  # only waiting for the client to close
                    self.peer_closed = True
                    break
                raise ConnectionError(self.fail(exc)) from None
            data = self.sock.recv(READ_CHUNK)  # BlockingIOError: nothing to read yet
            pulled = True
            if data:
                self.incoming.write(data)
            else:
                self.incoming.write_eof()
        self.unread = len(out) >= size  # it stopped for `size`, not for want of a record
        if self.outgoing.pending:  # a read can produce bytes to send (a key update)
            self.push()
        if out or self.peer_closed:
            return bytes(out)
        raise BlockingIOError(errno.EAGAIN, "no complete TLS record yet")

    def send(self, data: bytes | bytearray) -> int:
        """How many bytes at the front of `data` are delivered (Rule 2); offer the same front
        again after a short count."""
        if self.state is not TlsState.OPEN:
            raise BrokenPipeError(errno.EPIPE, "TLS connection closing")
        assert len(data) >= self.ahead, "a TLS send must offer again what it was offered"
        self.push()
        if self.ciphertext:
            return 0
        reported, self.ahead = self.ahead, 0
        while reported < len(data):
            record = data[reported:reported + TLS_RECORD]
            try:
                self.tls.write(record)
            except ssl.SSLError as exc:
                raise ConnectionError(self.fail(exc)) from None
            self.push()
            if self.ciphertext:
                self.ahead = len(record)
                break
            reported += len(record)
        return reported

    def push(self) -> None:
        """Move ciphertext to the socket as far as it takes it (OSError: the client is gone)."""
        if self.outgoing.pending:
            self.ciphertext += self.outgoing.read()
        while self.ciphertext:
            try:
                sent = self.sock.send(self.ciphertext)
            except BlockingIOError:
                return
            del self.ciphertext[:sent]

    def close_write(self) -> bool:
        """close_notify, then FIN once every byte of ciphertext went; True when done."""
        if self.state is TlsState.OPEN:
            self.enter(TlsState.CLOSING)
            with contextlib.suppress(ssl.SSLError):
                self.tls.unwrap()  # queues close_notify; the client's own is not awaited
        self.push()
        if self.ciphertext:
            return False
        self.sock.shutdown(socket.SHUT_WR)
        return True


class TlsConfigError(Exception):
    """A TLS listener's certificate, key or CA file cannot be used; the message says which and why."""


def tls_server_context(endpoint: Endpoint) -> ssl.SSLContext:
    """The TLS context of a listener, its files read now: TLS 1.2 at least, HTTP/1.1 only, and
    with tlscacert a client certificate signed by it is required (CERT_REQUIRED)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    try:  # (ssl.SSLError is an OSError: it comes first)
        context.load_cert_chain(endpoint.tlscert, endpoint.tlskey)  # type: ignore[arg-type]
    except ssl.SSLError as exc:
        raise TlsConfigError(f"tlscert {endpoint.tlscert} and tlskey {endpoint.tlskey} are not a "
                             f"PEM certificate and its matching key: {exc}") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot read {exc.filename or endpoint.tlscert}: {exc.strerror or exc}") from None
    if endpoint.tlscacert is not None:
        try:
            context.load_verify_locations(cafile=endpoint.tlscacert)
        except ssl.SSLError as exc:
            raise TlsConfigError(f"tlscacert {endpoint.tlscacert} holds no usable PEM certificate: {exc}") from None
        except OSError as exc:
            raise TlsConfigError(f"cannot read {endpoint.tlscacert}: {exc.strerror or exc}") from None
        if not context.get_ca_certs():
            raise TlsConfigError(f"tlscacert {endpoint.tlscacert} holds no CA certificate")
        context.verify_mode = ssl.CERT_REQUIRED
    return context
