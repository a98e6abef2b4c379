"""The verdict's truth table, on in-memory handshakes."""

from __future__ import annotations

import pytest

from exporter.model import HandshakeReport
from exporter.reasons import Reason
from exporter.verdict import decide
from tests.factories import cert_facts, failed, succeeded

A = cert_facts("a.test")
OTHER = cert_facts("default.test")
A_TOO = cert_facts("a.test", fingerprint_sha256="f" * 64)  # another cert that covers a.test

CASES: list[tuple[str, HandshakeReport, HandshakeReport, bool, bool]] = [
    # name, sni, no_sni, sni_required, certificate_mismatch
    ("same cert both ways", succeeded(True, A), succeeded(False, A), False, False),
    (
        "default cert for another name",
        succeeded(True, A),
        succeeded(False, OTHER, hostname_match=False),
        True,
        True,
    ),
    ("no-SNI alert 112", succeeded(True, A), failed(False, Reason.UNRECOGNIZED_NAME), True, False),
    ("no-SNI alert 40", succeeded(True, A), failed(False, Reason.HANDSHAKE_FAILURE), True, False),
    ("no-SNI reset (errno 54)", succeeded(True, A), failed(False, Reason.RESET), True, False),
    ("no-SNI timeout", succeeded(True, A), failed(False, Reason.TIMEOUT), True, False),
    ("default cert also covers the name", succeeded(True, A), succeeded(False, A_TOO), False, True),
    ("SNI fails, no-SNI works", failed(True, Reason.RESET), succeeded(False, A), False, False),
    ("both fail", failed(True, Reason.REFUSED), failed(False, Reason.REFUSED), False, False),
    (
        "SNI answer wrong too, same cert",
        succeeded(True, OTHER, hostname_match=False),
        succeeded(False, OTHER, hostname_match=False),
        False,
        False,
    ),
    (
        "SNI answer wrong, other wrong cert",
        succeeded(True, OTHER, hostname_match=False),
        succeeded(False, A_TOO, hostname_match=False),
        False,
        True,
    ),
    (
        "SNI answer wrong, no-SNI fails",
        succeeded(True, OTHER, hostname_match=False),
        failed(False, Reason.UNRECOGNIZED_NAME),
        True,
        False,
    ),
    (
        "expired but same cert",
        succeeded(True, A, expired=True),
        succeeded(False, A, expired=True),
        False,
        False,
    ),
]


class TestTruthTable:
    @pytest.mark.parametrize(
        ("sni", "no_sni", "required", "mismatch"),
        [c[1:] for c in CASES],
        ids=[c[0] for c in CASES],
    )
    def test_row(
        self, sni: HandshakeReport, no_sni: HandshakeReport, required: bool, mismatch: bool
    ) -> None:
        """Each row of the table in exporter/verdict.py's docstring holds."""
        v = decide("a.test", sni, no_sni)
        assert (v.sni_required, v.certificate_mismatch) == (required, mismatch)
        assert v.explanation


class TestExplanation:
    def test_remedies_when_sni_required(self) -> None:
        """An SNI-required verdict names the article's three remedies."""
        v = decide("a.test", succeeded(True, A), failed(False, Reason.UNRECOGNIZED_NAME))
        assert "glide.outbound.tls_sni.enabled=true" in v.explanation
        assert "MID Server" in v.explanation
        assert "dedicated IP" in v.explanation
        assert "default certificate cover the name" in v.explanation
        assert "unrecognized_name" in v.explanation

    def test_sni_failure_is_not_blamed_on_sni(self) -> None:
        """A failing SNI handshake is not blamed on SNI, and its reason is named."""
        v = decide("a.test", failed(True, Reason.TIMEOUT), failed(False, Reason.TIMEOUT))
        assert "not the cause" in v.explanation
        assert "timeout" in v.explanation

    def test_single_line(self) -> None:
        """Every explanation is one line, for logs and tables."""
        for _, sni, no_sni, _, _ in CASES:
            assert "\n" not in decide("a.test", sni, no_sni).explanation

    def test_explanations_are_shared(self) -> None:
        """Equal findings share one explanation object: the service keeps one per target."""
        first = decide("a.test", succeeded(True, A), failed(False, Reason.RESET))
        second = decide("b.test", succeeded(True, A), failed(False, Reason.RESET))
        assert first.explanation is second.explanation
