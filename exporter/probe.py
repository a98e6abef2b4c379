"""The probe: two TLS handshakes per target, one with SNI and one without.

This is the only module that opens sockets.  Everything it learns goes into
frozen ``Handshake`` records; judging them is the pure core's job
(``certs.certificate_report`` and ``verdict.decide``).

The TLS engine is pyOpenSSL on memory BIOs, with the bytes moved over a raw
non-blocking socket driven by the event loop's readiness callbacks, not
asyncio's SSL transport: it costs about 0.7-0.8 ms of CPU per handshake
instead of 1.1 ms (see FIELD-NOTES), it exposes the whole peer chain as
public API, and its info callback reports received alerts by number.  So
every failure maps to a reason from numbers and bytes: alert numbers, errnos,
an empty read (FIN), the first bytes of the answer, never message text.

Each handshake runs on a fresh TCP connection with a client context that has
no session cache and asks for no tickets, so nothing is ever resumed: a
resumed session would hide the very difference between the two handshakes
that we look for.  Certificates are not verified during the handshake, so a
bad certificate is still captured and judged afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import socket
import struct
import time
from typing import TYPE_CHECKING, Final

from OpenSSL import SSL
from OpenSSL.crypto import FILETYPE_ASN1, dump_certificate

from exporter import certs, verdict
from exporter.model import Handshake, HandshakeReport, ProbeResult, is_ip_literal
from exporter.reasons import (
    AlertError,
    ConnectError,
    HandshakeError,
    ProbeError,
    Reason,
    ResolveError,
    reason_for_alert,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from exporter.certs import TrustStore
    from exporter.model import Target

__all__ = ["handshake", "handshakes", "probe", "resolve"]

# Socket errnos by what they mean for the endpoint.  Anything not listed is
# reported as ``other`` with the errno name in the detail.
_ERRNO_REASONS: Final[dict[int, Reason]] = {
    errno.ECONNREFUSED: Reason.REFUSED,
    errno.ECONNRESET: Reason.RESET,
    errno.ECONNABORTED: Reason.RESET,
    errno.EPIPE: Reason.RESET,
    errno.EHOSTUNREACH: Reason.UNREACHABLE,
    errno.ENETUNREACH: Reason.UNREACHABLE,
    errno.EADDRNOTAVAIL: Reason.UNREACHABLE,
    errno.ENETDOWN: Reason.UNREACHABLE,
    errno.EHOSTDOWN: Reason.UNREACHABLE,
    errno.ETIMEDOUT: Reason.TIMEOUT,
}

# TLS record content types a server may open with (RFC 8446 section 5.1):
# handshake (its ServerHello) or alert (a rejection).  Any first byte else
# means the peer does not speak TLS at all.
_TLS_FIRST_BYTES: Final = frozenset({0x15, 0x16})
_TLS_MAJOR_VERSION: Final = 0x03
_CLOSE_NOTIFY: Final = 0
_CHUNK: Final = 65536  # bytes per recv and per BIO read: a whole flight, mostly
_ALERT_LEVEL_FATAL: Final = 2

# SO_LINGER on with a zero timeout: close() sends RST and frees the port at
# once.  A prober makes thousands of short connections; TIME_WAIT for each
# would only eat ephemeral ports, and we never wait for close_notify.
_ABORTIVE_LINGER: Final = struct.pack("ii", 1, 0)


class _Alert:
    """The last TLS alert the server sent on one connection (the info callback writes it)."""

    __slots__ = ("description", "level")

    def __init__(self) -> None:
        self.level = -1
        self.description = -1


def _on_info(connection: SSL.Connection, where: int, ret: int) -> None:
    # OpenSSL calls this on every state change; only received alerts matter.
    # ``ret`` packs the alert as (level << 8) | description (SSL_CTX_set_info_callback(3)).
    if where & SSL.SSL_CB_READ_ALERT:
        alert = connection.get_app_data()
        if isinstance(alert, _Alert):
            alert.level = ret >> 8
            alert.description = ret & 0xFF


def _new_client_context() -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    # Never verify here: a handshake with a bad certificate must still
    # complete so that the certificate can be captured and judged.
    context.set_verify(SSL.VERIFY_NONE)
    # Offer every version the library still implements, and accept weak
    # parameters (@SECLEVEL=0): the probe observes what a server serves, it
    # does not judge cipher strength, and old servers are the ones most
    # likely to need checking.
    context.set_min_proto_version(SSL.TLS1_VERSION)
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    # No session cache, no tickets: every handshake is a full one.
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    # Free the read/write buffers when idle: less memory per connection in flight.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_info_callback(_on_info)
    _prefer_classic_key_share(context)
    return context


# Groups to offer, best first.  "*" marks the only key share sent in the
# ClientHello (OpenSSL 3.5+ syntax): X25519 alone.  OpenSSL 3.5+ by default
# also sends an X25519MLKEM768 share, which costs about 0.12 ms of CPU per
# handshake (16 %; measured against nginx here) and matters to no server
# that also takes X25519; ML-KEM stays offered, so a server that insists on
# it asks for it with a HelloRetryRequest.  The second entry is for older
# OpenSSL, which knows neither "*" nor ML-KEM.
_GROUPS: Final = (b"*X25519:P-256:P-384:P-521:X25519MLKEM768", b"X25519:P-256:P-384:P-521")


def _prefer_classic_key_share(context: SSL.Context) -> None:
    # pyOpenSSL has no public setter for the client's groups; use the
    # binding it ships, and keep OpenSSL's defaults if that is not there.
    from OpenSSL._util import lib  # noqa: PLC0415 - see above

    set_groups = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if set_groups is None:
        return
    for groups in _GROUPS:
        if set_groups(context._context, groups) == 1:  # noqa: SLF001
            return
        # A refused list leaves an error queued; pyOpenSSL would blame a later call for it.
        lib.ERR_clear_error()


_context: SSL.Context | None = None


def _client_context() -> SSL.Context:
    """The one shared client context, built on first use (contexts are costly to build)."""
    global _context  # noqa: PLW0603 - a lazily built, process-wide constant
    if _context is None:
        _context = _new_client_context()
    return _context


def _family(address: str) -> socket.AddressFamily | None:
    """AF_INET or AF_INET6 for an IP literal, None for anything else."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        socket.inet_pton(family, address.partition("%")[0])
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None
    return family


def _sni_name(server_name: str | None) -> str | None:
    """The SNI value to send for ``server_name``: no trailing dot, None for IP literals."""
    if not server_name:
        return None
    name = server_name.rstrip(".")
    # inet_pton is much cheaper than ipaddress for the common case, a host name.
    return None if _family(name) is not None else name


def _errno_error(cls: type[ProbeError], error: OSError | int, what: str) -> ProbeError:
    number = error if isinstance(error, int) else (error.errno or 0)
    name = errno.errorcode.get(number, str(number))
    reason = _ERRNO_REASONS.get(number, Reason.OTHER)
    return cls(f"{what}: {name}", reason)


def _check_tls(data: bytes) -> None:
    """The server's first bytes must open a TLS record (handshake or alert, version 3.x).

    Anything else means the port speaks another protocol, e.g. an HTTP server
    answering the ClientHello with a 400 (``not_tls``).
    """
    if data[0] not in _TLS_FIRST_BYTES or (len(data) > 1 and data[1] != _TLS_MAJOR_VERSION):
        raise HandshakeError(f"server answered with non-TLS bytes {data[:16]!r}", Reason.NOT_TLS)


def _pending_output(connection: SSL.Connection) -> bytes:
    """What OpenSSL wrote into its outgoing memory BIO (usually one flight, one call)."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = connection.bio_read(_CHUNK)
        except SSL.WantReadError:  # the BIO is empty
            break
        chunks.append(chunk)
        if len(chunk) < _CHUNK:
            break
    return b"".join(chunks)


def _failed_handshake(connection: SSL.Connection, error: SSL.Error) -> ProbeError:
    """Name a failure that OpenSSL reported, by the alert number.

    Transport failures never get here: ``_receive`` and ``_send`` see them first.
    """
    alert = connection.get_app_data()
    if isinstance(alert, _Alert):
        if alert.description == _CLOSE_NOTIFY:
            return HandshakeError("server sent close_notify during the handshake", Reason.EOF)
        # A warning (e.g. TLS 1.2's warning unrecognized_name) does not end a
        # handshake, so it is not why this one failed.
        if alert.level == _ALERT_LEVEL_FATAL:
            number = alert.description
            return AlertError(
                number, f"server sent fatal alert {number} ({reason_for_alert(number)})"
            )
    if isinstance(error, SSL.ZeroReturnError):
        return HandshakeError("server closed the TLS session during the handshake", Reason.EOF)
    return HandshakeError(f"TLS handshake failed: {error}", Reason.OTHER)


def _warning(connection: SSL.Connection) -> str:
    """A warning alert the server sent during a handshake that still succeeded, for people.

    TLS 1.2 servers send a warning unrecognized_name for an SNI they do not
    know; OpenSSL carries on, Java 7 and later abort.
    """
    alert = connection.get_app_data()
    if not isinstance(alert, _Alert) or alert.description <= _CLOSE_NOTIFY:
        return ""
    reason = reason_for_alert(alert.description)
    note = "; Java clients treat it as fatal" if reason is Reason.UNRECOGNIZED_NAME else ""
    return f"server sent warning alert {alert.description} ({reason}){note}"


def _chain_der(connection: SSL.Connection) -> tuple[bytes, ...]:
    # X509 objects dumped with i2d: about 0.1 ms per handshake cheaper than
    # get_peer_cert_chain(as_cryptography=True) and public_bytes (measured).
    # Interned: results live until the next probe, and most chains repeat.
    chain = connection.get_peer_cert_chain()
    if chain:
        return tuple(certs.intern_der(dump_certificate(FILETYPE_ASN1, cert)) for cert in chain)
    leaf = connection.get_peer_certificate()
    return (certs.intern_der(dump_certificate(FILETYPE_ASN1, leaf)),) if leaf is not None else ()


class _Together:
    """Handshakes that run side by side: one timer bounds them all, one future ends the wait.

    A probe's two handshakes start together and share the timeout, so one
    timer handle and one future per probe do what a task, a gather and an
    ``asyncio.timeout`` per handshake did.  At the service's pace, where a
    wake-up finds one probe's events and cold caches, that took the engine
    from 1.42 to 1.35-1.39 ms of CPU per endpoint (10k targets / 60 s, two
    runs each; ``make bench`` prints the engine paced figure).
    """

    __slots__ = ("done", "exchanges", "left", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, count: int) -> None:
        self.left = count
        self.done: asyncio.Future[None] = loop.create_future()
        self.exchanges: list[_Exchange] = []
        self.timer = loop.call_later(timeout, self._expire)

    def settled_one(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.timer.cancel()
            if not self.done.done():
                self.done.set_result(None)

    def _expire(self) -> None:
        for exchange in self.exchanges:
            exchange.expire()


class _Exchange:
    """One handshake's byte mover, driven by the event loop's readiness callbacks.

    OpenSSL works on memory BIOs; the callbacks move the bytes between them
    and the socket.  Every byte from the server passes through
    ``_on_readable`` first: a reset or a FIN is named by its errno or by an
    empty read, and the first bytes are checked for TLS before OpenSSL
    parses them.  (With the socket handed to OpenSSL, its first
    ``do_handshake`` writes the ClientHello and reads at once; on this
    machine the answer of a fast plain-HTTP server was already there in a
    quarter of the attempts, and only OpenSSL's error text was left.)

    Callbacks, not a coroutine awaiting each read: the work for a readiness
    event runs in the loop iteration that reports it, with no future, no
    task step and no re-registration of the descriptor in between.  That
    took 13 % off the engine's CPU per endpoint (0.99 -> 0.86 ms, 50 in
    flight against nginx).  The outcome is ``error`` (None for success) at
    ``settled``; ``result()`` turns it into a ``Handshake``.
    """

    __slots__ = (
        "checked",
        "connected",
        "connection",
        "error",
        "fd",
        "finished",
        "idna",
        "loop",
        "record",
        "settled",
        "sock",
        "started",
        "together",
        "unsent",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, record: Handshake, together: _Together
    ) -> None:
        self.loop = loop
        self.record = record  # what to do, and the failure to report by default
        self.together = together
        self.sock: socket.socket | None = None
        self.fd = -1
        self.idna: bytes | None = None  # the SNI as sent, once encoded
        self.connection: SSL.Connection | None = None
        self.started = time.perf_counter()
        self.connected: float | None = None  # perf_counter() when TCP connected
        self.settled: float | None = None  # perf_counter() when the outcome was known
        self.error: BaseException | None = None  # what ended the handshake, if it failed
        self.unsent = b""  # output the socket did not take yet
        self.checked = False  # the first bytes from the server were checked for TLS
        self.finished = False  # OpenSSL finished the handshake

    def start(self, family: socket.AddressFamily) -> None:
        """Open the socket and start connecting; what fails settles the exchange."""
        self._guarded(self._open, family)

    def expire(self) -> None:
        """The shared timeout ran out: an exchange still running failed with ``timeout``."""
        if self.settled is None:
            self._settle(TimeoutError())

    def close(self) -> None:
        """Stop watching the socket and close it (idempotent)."""
        if self.fd >= 0:
            # Forget the descriptor: once closed, its number may be another socket's.
            self.loop.remove_writer(self.fd)
            self.loop.remove_reader(self.fd)
            self.fd = -1
        if self.sock is not None:
            self.sock.close()

    def result(self, timeout: float) -> Handshake:
        """The finished exchange as a ``Handshake`` record (it must have settled)."""
        record, error, ended = self.record, self.error, self.settled
        assert ended is not None
        if error is None:
            connection, connected = self.connection, self.connected
            assert connection is not None  # the handshake finished, so it connected
            assert connected is not None
            return dataclasses.replace(
                record,
                ok=True,
                tls_version=connection.get_protocol_version_name(),
                cipher=connection.get_cipher_name(),
                connect_seconds=connected - self.started,
                handshake_seconds=ended - connected,
                chain_der=_chain_der(connection),
                detail=_warning(connection),
            )
        if isinstance(error, ProbeError):
            failed = error
        elif isinstance(error, TimeoutError):
            stage = "TCP connect" if self.connected is None else "TLS handshake"
            failed = HandshakeError(f"{stage} timed out after {timeout:g}s", Reason.TIMEOUT)
        elif isinstance(error, OSError):
            failed = _errno_error(ConnectError, error, "socket")
        elif isinstance(error, SSL.Error):  # e.g. a server name OpenSSL refuses to send
            failed = HandshakeError(f"TLS setup failed: {error}")
        else:  # a bug, not a finding about the server: let the caller see it
            raise error
        return _failure(record, failed, self.started, self.connected, ended)

    def _open(self, family: socket.AddressFamily) -> None:
        address, port, name = self.record.address, self.record.port, self.record.server_name
        try:
            self.idna = name.encode("idna") if name is not None else None
        except UnicodeError:
            raise HandshakeError(f"cannot encode {name!r} as an IDNA name") from None
        try:
            sock = self.sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as error:  # EMFILE and friends
            raise _errno_error(ConnectError, error, "cannot open a socket") from None
        self.fd = sock.fileno()
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORTIVE_LINGER)
        try:
            code = sock.connect_ex((address, port))
        except (OverflowError, ValueError) as error:  # a port out of range
            raise ConnectError(f"cannot connect to {address} port {port}: {error}") from None
        if code in (errno.EINPROGRESS, errno.EAGAIN):
            self.loop.add_writer(self.fd, self._guarded, self._on_connect)
        elif code == 0:
            self._connected()
        else:
            raise _errno_error(ConnectError, code, f"connect to {address} port {port}")

    def _settle(self, error: BaseException | None = None) -> None:
        if self.settled is not None:
            return
        self.settled = time.perf_counter()
        self.error = error
        # Close now, not when the other handshake is done too: a server that
        # serves one connection at a time (openssl s_server) waits for this
        # one to end before it answers the next.
        self.close()
        self.together.settled_one()

    def _guarded(self, callback: Callable[..., None], *args: object) -> None:
        """Run a step; what it raises ends the handshake (the loop never sees it)."""
        try:
            callback(*args)
        except Exception as error:  # result() names it
            self._settle(error)

    def _on_connect(self) -> None:
        self.loop.remove_writer(self.fd)
        assert self.sock is not None  # watched only once open
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            record = self.record
            raise _errno_error(
                ConnectError, code, f"connect to {record.address} port {record.port}"
            )
        self._connected()

    def _connected(self) -> None:
        self.connected = time.perf_counter()
        connection = self.connection = SSL.Connection(_client_context(), None)  # memory BIOs
        connection.set_app_data(_Alert())
        if self.idna is not None:
            connection.set_tlsext_host_name(self.idna)
        connection.set_connect_state()
        self.loop.add_reader(self.fd, self._guarded, self._on_readable)
        self._step(connection)

    def _on_readable(self) -> None:
        assert self.sock is not None  # watched only once open
        try:
            data = self.sock.recv(_CHUNK)
        except BlockingIOError:  # readiness reported twice; nothing new
            return
        except OSError as error:
            raise _errno_error(
                HandshakeError, error, "connection failed during the handshake"
            ) from None
        if not data:
            raise HandshakeError("server closed the connection during the handshake", Reason.EOF)
        if not self.checked:
            _check_tls(data)
            self.checked = True
        connection = self.connection
        assert connection is not None  # reading starts once connected
        connection.bio_write(data)
        self._step(connection)

    def _step(self, connection: SSL.Connection) -> None:
        """Let OpenSSL take what it has, send what it wrote; settle when finished."""
        try:
            connection.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as error:
            raise _failed_handshake(connection, error) from None
        else:
            self.finished = True
        output = _pending_output(connection)
        if output:
            self._send(output)
        self._settle_if_done()

    def _send(self, data: bytes) -> None:
        if self.unsent:  # keep the order: after what is still waiting
            self.unsent += data
            return
        assert self.sock is not None  # sending starts once connected
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            raise _errno_error(HandshakeError, error, "sending to the server failed") from None
        if sent < len(data):
            self.unsent = data[sent:]
            self.loop.add_writer(self.fd, self._guarded, self._on_writable)

    def _on_writable(self) -> None:
        data, self.unsent = self.unsent, b""
        self.loop.remove_writer(self.fd)
        self._send(data)
        self._settle_if_done()

    def _settle_if_done(self) -> None:
        """Done once OpenSSL finished and the socket took every byte it wrote."""
        if self.finished and not self.unsent:
            self._settle()


async def handshake(
    address: str,
    port: int,
    server_name: str | None,
    timeout: float,  # noqa: ASYNC109 - the contract: the bound is per handshake
) -> Handshake:
    """One TLS handshake on a fresh TCP connection to ``address``:``port``.

    ``server_name`` is sent as SNI unless it is None or an IP literal
    (RFC 6066 forbids literals in SNI); ``Handshake.server_name`` records
    what was actually sent.  TCP connect plus handshake take at most
    ``timeout`` seconds.  Never raises for network or TLS failures: they come
    back as ``Handshake(ok=False, reason=..., detail=...)``.
    """
    (shake,) = await handshakes(address, port, (server_name,), timeout)
    return shake


async def handshakes(
    address: str,
    port: int,
    server_names: Sequence[str | None],
    timeout: float,  # noqa: ASYNC109 - the contract: the bound is per round
) -> list[Handshake]:
    """One ``handshake`` per server name, side by side, each on its own connection.

    They start together and share the ``timeout``; the records come back in
    the order of ``server_names``.
    """
    records = [
        Handshake(
            sni=name is not None, server_name=_sni_name(name), address=address, port=port, ok=False
        )
        for name in server_names
    ]
    family = _family(address)
    if family is None:
        not_ip = ConnectError(f"not an IP address: {address!r}")
        return [_failure(record, not_ip) for record in records]
    loop = asyncio.get_running_loop()
    together = _Together(loop, timeout, len(records))
    exchanges = together.exchanges
    try:
        for record in records:
            exchange = _Exchange(loop, record, together)
            exchanges.append(exchange)
            exchange.start(family)
        await together.done
        return [exchange.result(timeout) for exchange in exchanges]
    finally:
        # No reference cycle may outlive the probe: the cyclic GC would free
        # its SSL objects (native memory, unseen by the GC's thresholds) only
        # when it runs, and at 10k targets that took RSS from 184 to 332 MB.
        together.timer.cancel()
        for exchange in exchanges:
            exchange.close()  # after a cancellation; a settled one is closed already
            exchange.error = None  # its traceback's frames hold the exchange
            if exchange.connection is not None:
                exchange.connection.set_app_data(None)  # the info callback's _Alert
        exchanges.clear()  # each exchange holds ``together``


def _failure(
    record: Handshake,
    error: ProbeError,
    started: float | None = None,
    connected: float | None = None,
    ended: float | None = None,
) -> Handshake:
    """``record`` as a failed handshake carrying ``error``'s reason, detail and timings."""
    now = time.perf_counter() if ended is None else ended
    connect_seconds = handshake_seconds = 0.0
    if started is not None and connected is None:
        connect_seconds = now - started
    elif started is not None and connected is not None:
        connect_seconds = connected - started
        handshake_seconds = now - connected
    return dataclasses.replace(
        record,
        ok=False,
        reason=error.reason,
        detail=error.detail,
        connect_seconds=connect_seconds,
        handshake_seconds=handshake_seconds,
    )


async def resolve(host: str, port: int, timeout: float) -> str:  # noqa: ASYNC109 - contract
    """The first address ``host`` resolves to; IP literals come back unchanged.

    Raises ``ResolveError`` (reason ``dns``) when the name does not resolve
    within ``timeout`` seconds.
    """
    if is_ip_literal(host):
        return host
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise ResolveError(f"resolving {host} timed out after {timeout:g}s") from None
    except (OSError, UnicodeError) as error:
        raise ResolveError(f"cannot resolve {host}: {error}") from None
    if not infos:
        raise ResolveError(f"{host} has no address")
    return str(infos[0][4][0])  # (family, type, proto, canonname, sockaddr)


async def probe(
    target: Target, trust: TrustStore, *, now: Callable[[], float] = time.time
) -> ProbeResult:
    """Resolve ``target`` (unless it has an address), handshake twice, judge both.

    The two handshakes, with SNI = host and with no SNI, run concurrently on
    separate fresh connections.  A DNS failure fails both with reason ``dns``.
    """
    started_at = now()
    clock = time.perf_counter()
    try:
        address = target.address or await resolve(target.host, target.port, target.timeout)
    except ResolveError as error:
        sni = _unresolved(target, error, sni=True)
        no_sni = _unresolved(target, error, sni=False)
    else:
        sni, no_sni = await handshakes(address, target.port, (target.host, None), target.timeout)
    sni_report = _report(sni, target.host, trust, started_at)
    no_sni_report = _report(no_sni, target.host, trust, started_at)
    return ProbeResult(
        target=target,
        address=sni.address,
        sni=sni_report,
        no_sni=no_sni_report,
        verdict=verdict.decide(target.host, sni_report, no_sni_report),
        started_at=started_at,
        duration_seconds=time.perf_counter() - clock,
    )


def _unresolved(target: Target, error: ResolveError, *, sni: bool) -> Handshake:
    return Handshake(
        sni=sni,
        server_name=_sni_name(target.host) if sni else None,
        address="",
        port=target.port,
        ok=False,
        reason=error.reason,
        detail=error.detail,
    )


def _report(shake: Handshake, host: str, trust: TrustStore, at: float) -> HandshakeReport:
    if not (shake.ok and shake.chain_der):
        return HandshakeReport(handshake=shake, certificate=None)
    try:
        certificate = certs.certificate_report(shake.chain_der, host, trust, at)
    except certs.CertificateError as error:
        # The handshake did succeed; there are just no facts to report.
        detail = f"the served certificate does not parse: {error}"
        return HandshakeReport(
            handshake=dataclasses.replace(shake, detail=detail), certificate=None
        )
    return HandshakeReport(handshake=shake, certificate=certificate)
