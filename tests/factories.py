"""In-memory results for pure tests: no sockets, no certificates on disk."""

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

NOW = 1_800_000_000.0  # 2027-01-15, a fixed "now" for pure tests


def facts(name: str = "a.test", *, fingerprint: str | None = None, **changes: object) -> CertFacts:
    base = CertFacts(
        subject=f"CN={name},O=Test",
        issuer="CN=Test CA,O=Test",
        common_name=name,
        serial="0a1b2c",
        not_before=NOW - 86400,
        not_after=NOW + 30 * 86400,
        fingerprint_sha256=fingerprint or (name.encode().hex() * 8)[:64],
        dns_names=(name,),
        ip_addresses=(),
        has_san=True,
        self_issued=False,
        is_ca=False,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def ok(
    sni: bool,
    cert: CertFacts | None = None,
    *,
    matches: bool = True,
    chain_valid: bool = True,
    expired: bool = False,
    tls_version: str = "TLSv1.3",
) -> HandshakeReport:
    cert = cert or facts()
    return HandshakeReport(
        handshake=Handshake(
            sni=sni,
            server_name="a.test" if sni else None,
            address="127.0.0.1",
            port=443,
            ok=True,
            tls_version=tls_version,
            cipher="TLS_AES_256_GCM_SHA384",
            connect_seconds=0.001,
            handshake_seconds=0.002,
            chain_der=(b"leaf",),
        ),
        certificate=CertificateReport(
            facts=cert,
            hostname_match=matches,
            chain=ChainCheck(
                valid=chain_valid,
                error=None if chain_valid else "unable to get local issuer certificate",
                strict_valid=chain_valid,
            ),
            expired=expired,
        ),
    )


def failed(sni: bool, reason: Reason, detail: str = "") -> HandshakeReport:
    return HandshakeReport(
        handshake=Handshake(
            sni=sni,
            server_name="a.test" if sni else None,
            address="127.0.0.1",
            port=443,
            ok=False,
            reason=reason,
            detail=detail or f"failed: {reason}",
            connect_seconds=0.001,
        ),
        certificate=None,
    )


def result(
    sni: HandshakeReport,
    no_sni: HandshakeReport,
    verdict: Verdict | None = None,
    target: Target | None = None,
) -> ProbeResult:
    from exporter.verdict import decide  # noqa: PLC0415

    target = target or Target(host="a.test", address="127.0.0.1")
    return ProbeResult(
        target=target,
        address=sni.handshake.address,
        sni=sni,
        no_sni=no_sni,
        verdict=verdict or decide(target.host, sni, no_sni),
        started_at=NOW,
        duration_seconds=0.004,
    )
