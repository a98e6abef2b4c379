"""The verdict's truth table, on in-memory handshakes."""

from __future__ import annotations

import pytest

from exporter.model import HandshakeReport
from exporter.reasons import Reason
from exporter.verdict import decide
from tests.factories import facts, failed, ok

A = facts("a.test")
OTHER = facts("default.test")
A_TOO = facts("a.test", fingerprint="f" * 64)  # another certificate that also covers a.test

CASES: list[tuple[str, HandshakeReport, HandshakeReport, bool, bool]] = [
    # name, sni, no_sni, sni_required, certificate_mismatch
    ("same cert both ways", ok(True, A), ok(False, A), False, False),
    ("default cert for another name", ok(True, A), ok(False, OTHER, matches=False), True, True),
    ("no-SNI alert 112", ok(True, A), failed(False, Reason.UNRECOGNIZED_NAME), True, False),
    ("no-SNI alert 40", ok(True, A), failed(False, Reason.HANDSHAKE_FAILURE), True, False),
    ("no-SNI reset (errno 54)", ok(True, A), failed(False, Reason.RESET), True, False),
    ("no-SNI timeout", ok(True, A), failed(False, Reason.TIMEOUT), True, False),
    ("default cert also covers the name", ok(True, A), ok(False, A_TOO), False, True),
    ("SNI fails, no-SNI works", failed(True, Reason.RESET), ok(False, A), False, False),
    ("both fail", failed(True, Reason.REFUSED), failed(False, Reason.REFUSED), False, False),
    (
        "SNI answer wrong too, same cert",
        ok(True, OTHER, matches=False),
        ok(False, OTHER, matches=False),
        False,
        False,
    ),
    (
        "SNI answer wrong, other wrong cert",
        ok(True, OTHER, matches=False),
        ok(False, A_TOO, matches=False),
        False,
        True,
    ),
    (
        "SNI answer wrong, no-SNI fails",
        ok(True, OTHER, matches=False),
        failed(False, Reason.UNRECOGNIZED_NAME),
        True,
        False,
    ),
    ("expired but same cert", ok(True, A, expired=True), ok(False, A, expired=True), False, False),
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
        v = decide("a.test", ok(True, A), failed(False, Reason.UNRECOGNIZED_NAME))
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
