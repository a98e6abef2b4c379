"""Frozen data shared by the core and the shell.

The unit of probing is the (target, address) pair: a ``Target`` names what to
probe, ``probe`` resolves it to addresses and makes two handshakes per
address.  Today one address is probed per target (the configured one, or the
first the resolver returns); the data already carries the address so that
probing every A/AAAA record only adds pairs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from exporter.reasons import Reason

DEFAULT_PORT = 443

#: Label names a target's configured labels may not use: the exporter's own
#: series labels, the exporter metrics' labels, ``address`` (kept for probing
#: every address behind a name), and what Prometheus sets at scrape time.
#: Config rejects them; the renderer drops them too, because a duplicate label
#: name makes Prometheus reject the whole scrape.
RESERVED_LABELS: Final = frozenset(
    {
        "target",
        "sni",
        "reason",
        "subject",
        "issuer",
        "serial",
        "fingerprint_sha256",
        "version",
        "address",
        "job",
        "instance",
        "index",
        "count",
        "result",
    }
)
DEFAULT_INTERVAL = 60.0
DEFAULT_TIMEOUT = 5.0


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 literal (no brackets).  Such hosts get no SNI (RFC 6066)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def target_name(host: str, port: int) -> str:
    """The ``target`` label: ``host:port``, with IPv6 literals bracketed."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One endpoint to watch.

    ``host`` is the name sent as SNI and checked against certificates; it is
    resolved unless ``address`` is given.  ``labels`` are extra labels added
    to every series of this target, sorted by name.
    """

    host: str
    port: int = DEFAULT_PORT
    address: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    ca_file: str | None = None

    @property
    def name(self) -> str:
        """The ``target`` label value, ``host:port``."""
        return target_name(self.host, self.port)

    @property
    def key(self) -> tuple[str, int, str | None]:
        """Identity for duplicate detection and reload diffing."""
        return (self.host.lower(), self.port, self.address)


@dataclasses.dataclass(frozen=True, slots=True)
class Handshake:
    """What one handshake over a fresh TCP connection saw.  Raw, unanalysed.

    ``chain_der`` is the peer chain as sent, leaf first (DER).  It is empty
    when the handshake failed.  Times are in seconds; ``connect_seconds``
    covers TCP connect, ``handshake_seconds`` the TLS handshake after it.
    """

    sni: bool
    server_name: str | None  # the SNI value actually sent, None when none was
    address: str  # the IP connected to; "" when resolution failed
    port: int
    ok: bool
    reason: Reason | None = None  # set exactly when not ok
    detail: str = ""  # human-readable error detail, for logs and the CLI
    tls_version: str | None = None  # e.g. "TLSv1.3"
    cipher: str | None = None
    connect_seconds: float = 0.0
    handshake_seconds: float = 0.0
    chain_der: tuple[bytes, ...] = ()

    @property
    def duration_seconds(self) -> float:
        return self.connect_seconds + self.handshake_seconds

    @property
    def leaf_der(self) -> bytes | None:
        return self.chain_der[0] if self.chain_der else None


@dataclasses.dataclass(frozen=True, slots=True)
class CertFacts:
    """Facts of one certificate, parsed once per distinct DER.

    Times are POSIX seconds (UTC).  ``fingerprint_sha256`` is lowercase hex
    without separators.  ``dns_names`` and ``ip_addresses`` come from the
    subjectAltName extension; ``has_san`` tells whether that extension exists
    at all (RFC 6125: the CN is consulted only when it does not).
    """

    subject: str  # RFC 4514 string
    issuer: str
    common_name: str | None
    serial: str  # lowercase hex
    not_before: float
    not_after: float
    fingerprint_sha256: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    has_san: bool
    self_issued: bool
    is_ca: bool

    @property
    def sans(self) -> tuple[str, ...]:
        return self.dns_names + self.ip_addresses


@dataclasses.dataclass(frozen=True, slots=True)
class ChainCheck:
    """Whether the served chain leads to a trusted root.

    ``valid`` follows OpenSSL's verifier (X509_STORE_CTX with the served
    intermediates as untrusted chain), which is what OpenSSL- and Java-based
    clients accept, including internal PKIs whose CAs lack keyUsage or whose
    leaves lack an authority key identifier.  ``strict_valid`` is
    cryptography's web-PKI verifier (CA/B Forum profile); it is reported
    separately because it fails such chains although clients accept them.
    Neither checks the hostname: that is ``hostname_match``.
    """

    valid: bool
    error: str | None = None  # OpenSSL's verify error, e.g. "certificate has expired"
    strict_valid: bool = False
    strict_error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateReport:
    """The leaf served in one handshake, judged against the target."""

    facts: CertFacts
    hostname_match: bool
    chain: ChainCheck
    expired: bool  # at the time of the probe


@dataclasses.dataclass(frozen=True, slots=True)
class HandshakeReport:
    handshake: Handshake
    certificate: CertificateReport | None  # None when the handshake failed


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The findings for one (target, address) pair.

    ``sni_required``: the SNI handshake succeeded and the no-SNI one failed or
    served a certificate that does not match the host name.
    ``certificate_mismatch``: both succeeded and the leaves differ.
    ``explanation``: one line for people, with the remedy.
    """

    sni_required: bool
    certificate_mismatch: bool
    explanation: str


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeResult:
    """Everything known about one (target, address) pair after one probe."""

    target: Target
    address: str
    sni: HandshakeReport
    no_sni: HandshakeReport
    verdict: Verdict
    started_at: float  # POSIX seconds
    duration_seconds: float

    @property
    def reports(self) -> tuple[HandshakeReport, HandshakeReport]:
        return (self.sni, self.no_sni)
