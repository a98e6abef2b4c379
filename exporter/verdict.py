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

import functools

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


# Explanations do not name the host (the target label and the table row do), so
# each is one of a bounded set of strings, built once: the service keeps one
# verdict per target, and 10,000 distinct strings cost 4 MB (measured by bench/).
_SNI_FAILS = "the handshake with SNI fails ({}), so SNI is not the cause: fix the endpoint first"
_NO_SNI_FAILS = (
    "needs SNI: without it the handshake fails ({}); " + REMEDY_CLIENT + ", " + REMEDY_SERVER
)
NEEDS_SNI_WRONG_CERT = (
    "needs SNI: without it the server presents a certificate that does not cover the name; "
    + REMEDY_CLIENT
    + ", "
    + REMEDY_SERVER
)
SNI_CERT_WRONG = (
    "the certificate served with SNI does not cover the name either, "
    "so SNI is not the cause: fix the certificate"
)
DIFFERENT_BUT_COVERS = (
    "does not need SNI, but serves a different certificate without it "
    "(both cover the name); watch both for expiry"
)
ALL_GOOD = "does not need SNI: the same certificate is served with and without it"


@functools.cache
def _explain(template: str, reason: Reason | None) -> str:
    return template.format((reason or Reason.OTHER).value)


def _matches(report: HandshakeReport) -> bool:
    return report.certificate is not None and report.certificate.hostname_match


def _fingerprint(report: HandshakeReport) -> str | None:
    return report.certificate.facts.fingerprint_sha256 if report.certificate else None


def decide(host: str, sni: HandshakeReport, no_sni: HandshakeReport) -> Verdict:  # noqa: ARG001
    """Judge one (target, address) pair from its two handshakes.

    ``host`` is the name the certificates were matched against; the reports
    already carry that judgement (``hostname_match``), so the decision needs
    only them.  It stays in the signature: it is what the verdict is about.
    """
    s, n = sni.handshake, no_sni.handshake
    if not s.ok:
        return Verdict(False, False, _explain(_SNI_FAILS, s.reason))
    if not n.ok:
        return Verdict(True, False, _explain(_NO_SNI_FAILS, n.reason))
    mismatch = _fingerprint(sni) != _fingerprint(no_sni)
    if _matches(sni) and not _matches(no_sni):
        return Verdict(True, mismatch, NEEDS_SNI_WRONG_CERT)
    if not _matches(sni):
        return Verdict(False, mismatch, SNI_CERT_WRONG)
    if mismatch:
        return Verdict(False, True, DIFFERENT_BUT_COVERS)
    return Verdict(False, False, ALL_GOOD)
