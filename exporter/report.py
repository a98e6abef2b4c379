"""Results for people and programs: JSON objects, a text table, findings.

Pure.  The CLI prints these; the status page will reuse them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from exporter.model import CertificateReport, HandshakeReport, ProbeResult


def iso8601(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def findings(result: ProbeResult) -> list[str]:
    """What is wrong with this endpoint, one short phrase each.  Empty when all is well.

    These set the CLI's exit status: SNI required, a certificate mismatch, a failed
    handshake, or a problem with the certificate served with SNI.
    """
    found: list[str] = []
    v = result.verdict
    if v.sni_required:
        found.append("SNI required")
    if v.certificate_mismatch:
        found.append("certificate differs without SNI")
    for label, report in (("with SNI", result.sni), ("without SNI", result.no_sni)):
        hs = report.handshake
        if not hs.ok:
            found.append(f"handshake {label} fails: {hs.reason}")
    cert = result.sni.certificate
    if cert is not None:
        if cert.expired:
            found.append("certificate expired")
        if not cert.hostname_match:
            found.append("certificate does not match the host name")
        if not cert.chain.valid:
            found.append(f"untrusted chain: {cert.chain.error}")
    return found


def _certificate_json(cert: CertificateReport) -> dict[str, Any]:
    f = cert.facts
    return {
        "subject": f.subject,
        "issuer": f.issuer,
        "serial": f.serial,
        "sans": list(f.sans),
        "not_before": iso8601(f.not_before),
        "not_after": iso8601(f.not_after),
        "fingerprint_sha256": f.fingerprint_sha256,
        "hostname_match": cert.hostname_match,
        "expired": cert.expired,
        "chain_valid": cert.chain.valid,
        "chain_error": cert.chain.error,
        "chain_strict_valid": cert.chain.strict_valid,
        "chain_strict_error": cert.chain.strict_error,
    }


def _handshake_json(report: HandshakeReport) -> dict[str, Any]:
    hs = report.handshake
    return {
        "ok": hs.ok,
        "error": hs.reason.value if hs.reason else None,
        "detail": hs.detail or None,
        "server_name": hs.server_name,
        "address": hs.address or None,
        "tls_version": hs.tls_version,
        "cipher": hs.cipher,
        "duration_seconds": round(hs.duration_seconds, 6),
        "connect_seconds": round(hs.connect_seconds, 6),
        "handshake_seconds": round(hs.handshake_seconds, 6),
        "chain_length": len(hs.chain_der),
        "certificate": _certificate_json(report.certificate) if report.certificate else None,
    }


def to_json(result: ProbeResult) -> dict[str, Any]:
    """One target as a JSON-ready dict (the schema of ``check --json``)."""
    t = result.target
    return {
        "target": t.name,
        "host": t.host,
        "port": t.port,
        "address": result.address or None,
        "sni_required": result.verdict.sni_required,
        "certificate_mismatch": result.verdict.certificate_mismatch,
        "explanation": result.verdict.explanation,
        "findings": findings(result),
        "started_at": iso8601(result.started_at),
        "duration_seconds": round(result.duration_seconds, 6),
        "labels": dict(t.labels),
        "sni": _handshake_json(result.sni),
        "no_sni": _handshake_json(result.no_sni),
    }


def _yes(flag: bool, yes: str, no: str = "ok") -> str:
    return yes if flag else no


def _handshake_cells(report: HandshakeReport, now: float) -> list[str]:
    hs = report.handshake
    ms = f"{hs.duration_seconds * 1000:.1f} ms"
    if not hs.ok:
        return [f"FAIL {hs.reason}", "-", ms, hs.detail or "-", "-", "-", "-"]
    cert = report.certificate
    if cert is None:  # ok but no certificate: anonymous suites; never seen in practice
        return ["ok", hs.tls_version or "?", ms, "(no certificate)", "-", "-", "-"]
    days = (cert.facts.not_after - now) / 86400
    expires = iso8601(cert.facts.not_after)[:10] + (
        " (EXPIRED)" if cert.expired else f" ({days:.0f}d)"
    )
    return [
        "ok",
        hs.tls_version or "?",
        ms,
        cert.facts.common_name or cert.facts.subject,
        expires,
        _yes(not cert.hostname_match, "MISMATCH"),
        _yes(not cert.chain.valid, "UNTRUSTED"),
    ]


_HEADER = ["TARGET", "MODE", "RESULT", "TLS", "TIME", "CERTIFICATE", "EXPIRES", "NAME", "CHAIN"]


def table(results: list[ProbeResult], now: float) -> str:
    """A readable table: two rows per target (with and without SNI), then the verdicts."""
    rows: list[list[str]] = [_HEADER]
    for r in results:
        rows.append([r.target.name, "sni", *_handshake_cells(r.sni, now)])
        rows.append(["", "no-sni", *_handshake_cells(r.no_sni, now)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.append("")
    for r in results:
        verdict = "NEEDS SNI" if r.verdict.sni_required else "ok"
        if r.verdict.certificate_mismatch:
            verdict += ", certificate differs without SNI"
        lines.append(f"{r.target.name}: {verdict} — {r.verdict.explanation}")
    return "\n".join(lines) + "\n"
