"""The verdict: two handshakes in, findings and one line for people out.

Pure.  The rules, as a table over (SNI handshake, no-SNI handshake):

================  ==========================  ============  ========
SNI handshake     no-SNI handshake            sni_required  mismatch
================  ==========================  ============  ========
failed            anything                    no            no
ok                failed                      yes           no
ok, cert matches  ok, cert does not match     yes           if leaves differ
ok, cert matches  ok, cert matches            no            if leaves differ
ok, no match      ok, any cert                no            if leaves differ
================  ==========================  ============  ========

The last row refines the plain definition ("the no-SNI certificate does not
match"): when even the SNI answer does not match the host name, sending SNI
does not fix anything, so the problem is the certificate, not SNI.  That is
reported by ``hostname_match`` instead, and no SNI alert pages anybody for it.
When the SNI handshake fails, SNI is not the cause either: the handshake
errors say why.
"""

from __future__ import annotations

from exporter.model import HandshakeReport, Verdict
from exporter.reasons import Reason

# Remedies from the support article, in the order people usually can act on them.
REMEDY_CLIENT = (
    "make the client send SNI (ServiceNow: set glide.outbound.tls_sni.enabled=true on the "
    "instance, and on each MID Server followed by a restart; SOAPUI >= 5.3.0; Java >= 7)"
)
REMEDY_SERVER = (
    "or give the service a dedicated IP and certificate, "
    "or make the server's default certificate cover the name"
)


def _matches(report: HandshakeReport) -> bool:
    return report.certificate is not None and report.certificate.hostname_match


def _fingerprint(report: HandshakeReport) -> str | None:
    return report.certificate.facts.fingerprint_sha256 if report.certificate else None


def decide(host: str, sni: HandshakeReport, no_sni: HandshakeReport) -> Verdict:
    """Judge one (target, address) pair from its two handshakes."""
    s, n = sni.handshake, no_sni.handshake
    if not s.ok:
        why = s.reason.value if s.reason else Reason.OTHER.value
        return Verdict(
            sni_required=False,
            certificate_mismatch=False,
            explanation=f"the handshake with SNI fails ({why}), so SNI is not the cause: "
            "fix the endpoint first",
        )
    if not n.ok:
        why = n.reason.value if n.reason else Reason.OTHER.value
        return Verdict(
            sni_required=True,
            certificate_mismatch=False,
            explanation=f"needs SNI: without it the handshake fails ({why}); "
            f"{REMEDY_CLIENT}, {REMEDY_SERVER}",
        )
    mismatch = _fingerprint(sni) != _fingerprint(no_sni)
    if _matches(sni) and not _matches(no_sni):
        return Verdict(
            sni_required=True,
            certificate_mismatch=mismatch,
            explanation="needs SNI: without it the server presents a certificate "
            f"that does not cover {host}; {REMEDY_CLIENT}, {REMEDY_SERVER}",
        )
    if not _matches(sni):
        return Verdict(
            sni_required=False,
            certificate_mismatch=mismatch,
            explanation=f"the certificate served with SNI does not cover {host} either, "
            "so SNI is not the cause: fix the certificate",
        )
    if mismatch:
        return Verdict(
            sni_required=False,
            certificate_mismatch=True,
            explanation="does not need SNI, but serves a different certificate without it "
            f"(both cover {host}); watch both for expiry",
        )
    return Verdict(
        sni_required=False,
        certificate_mismatch=False,
        explanation="does not need SNI: the same certificate is served with and without it",
    )
