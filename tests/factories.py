"""In-memory results for the pure tests: no sockets, no certificates on disk."""

from __future__ import annotations

import dataclasses

from exporter.model import (
    CertFacts,
    CertificateReport,
    ChainCheck,
    Handshake,
    HandshakeReport,
    ProbeResult,
    Target,
    Verdict,
)
from exporter.reasons import Reason
from exporter.verdict import decide

NOW = 1_800_000_000.123456  # a start time (2027-01-15) with every digit significant
HOUR = 3600.0

TRUSTED = ChainCheck(valid=True, strict_valid=True)
UNTRUSTED = ChainCheck(
    valid=False,
    error="unable to get local issuer certificate",
    strict_valid=False,
    strict_error="candidates exhausted",
)


def cert_facts(name: str, **changes: object) -> CertFacts:
    """Facts of a leaf for ``name``; a distinct fingerprint per name."""
    facts = CertFacts(
        subject=f"CN={name},O=Test",
        issuer="CN=Test Issuing CA,O=Test",
        common_name=name,
        serial=f"{len(name):04x}0a1b",
        not_before=NOW - 30 * 24 * HOUR,
        not_after=NOW + 60 * 24 * HOUR,
        fingerprint_sha256=(name.encode(errors="replace").hex() * 64)[:64],
        dns_names=(name,),
        ip_addresses=(),
        has_san=True,
        self_issued=False,
        is_ca=False,
    )
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


def succeeded(
    sni: bool,
    facts: CertFacts,
    *,
    hostname_match: bool = True,
    chain: ChainCheck = TRUSTED,
    expired: bool = False,
    tls_version: str | None = "TLSv1.3",
    connect: float = 0.0011,
    handshake: float = 0.0023,
) -> HandshakeReport:
    """A handshake that worked and served ``facts``, judged as given."""
    return HandshakeReport(
        Handshake(
            sni=sni,
            server_name=facts.common_name if sni else None,
            address="127.0.0.1",
            port=443,
            ok=True,
            tls_version=tls_version,
            cipher="TLS_AES_256_GCM_SHA384",
            connect_seconds=connect,
            handshake_seconds=handshake,
            chain_der=(b"leaf",),
        ),
        CertificateReport(facts, hostname_match=hostname_match, chain=chain, expired=expired),
    )


def failed(
    sni: bool, reason: Reason, *, detail: str = "", connect: float = 0.0007
) -> HandshakeReport:
    """A handshake that failed for ``reason``."""
    return HandshakeReport(
        Handshake(
            sni=sni,
            server_name=None,
            address="127.0.0.1",
            port=443,
            ok=False,
            reason=reason,
            detail=detail or f"failed: {reason}",
            connect_seconds=connect,
        ),
        None,
    )


def probe_result(
    host: str = "a.test",
    *,
    port: int = 443,
    address: str = "127.0.0.1",
    labels: tuple[tuple[str, str], ...] = (),
    sni: HandshakeReport | None = None,
    no_sni: HandshakeReport | None = None,
    sni_required: bool = False,
    mismatch: bool = False,
    started_at: float = NOW,
    interval: float = 60.0,
) -> ProbeResult:
    """A result for ``host`` with the verdict as given; by default both handshakes succeed
    with the same leaf."""
    facts = cert_facts(host)
    return ProbeResult(
        target=Target(host=host, port=port, address=address, labels=labels, interval=interval),
        address=address,
        sni=sni or succeeded(True, facts),
        no_sni=no_sni or succeeded(False, facts),
        verdict=Verdict(sni_required, mismatch, "explanation"),
        started_at=started_at,
        duration_seconds=0.01,
    )


def judged(sni: HandshakeReport, no_sni: HandshakeReport, host: str = "a.test") -> ProbeResult:
    """A result for ``host`` whose verdict is the real one for these handshakes."""
    result = probe_result(host, sni=sni, no_sni=no_sni)
    return dataclasses.replace(result, verdict=decide(host, sni, no_sni))


def next_probe(result: ProbeResult, seconds: float | None = None) -> ProbeResult:
    """The next probe of the same target, ``seconds`` later (by default one interval):
    same findings, a new start time, and every handshake a little slower."""
    later_by = result.target.interval if seconds is None else seconds

    def later(report: HandshakeReport) -> HandshakeReport:
        handshake = report.handshake
        slower = handshake.handshake_seconds + later_by / 1e5
        return dataclasses.replace(
            report, handshake=dataclasses.replace(handshake, handshake_seconds=slower)
        )

    return dataclasses.replace(
        result,
        sni=later(result.sni),
        no_sni=later(result.no_sni),
        started_at=result.started_at + later_by,
    )
