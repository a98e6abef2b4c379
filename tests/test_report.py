"""JSON objects, findings (the CLI's exit status) and the table, on in-memory results."""

from __future__ import annotations

import json

from exporter.reasons import Reason
from exporter.report import findings, table, to_json
from tests.factories import NOW, UNTRUSTED, cert_facts, failed, judged, succeeded

A = cert_facts("a.test")


class TestFindings:
    def test_clean_endpoint_has_none(self) -> None:
        """Same valid certificate both ways: nothing found, so check exits 0."""
        assert findings(judged(succeeded(True, A), succeeded(False, A))) == []

    def test_sni_required(self) -> None:
        """A no-SNI alert is both an SNI finding and a failed handshake."""
        found = findings(judged(succeeded(True, A), failed(False, Reason.UNRECOGNIZED_NAME)))
        assert "SNI required" in found
        assert "handshake without SNI fails: unrecognized_name" in found

    def test_problems_with_the_sni_certificate(self) -> None:
        """Expired, wrong name and untrusted chain on the SNI answer are each findings."""
        bad = succeeded(True, A, hostname_match=False, chain=UNTRUSTED, expired=True)
        found = findings(judged(bad, bad))
        assert "certificate expired" in found
        assert "certificate does not match the host name" in found
        assert any(f.startswith("untrusted chain") for f in found)

    def test_mismatch_alone(self) -> None:
        """A different certificate without SNI that still covers the name is a finding."""
        found = findings(
            judged(
                succeeded(True, A),
                succeeded(False, cert_facts("a.test", fingerprint_sha256="e" * 64)),
            )
        )
        assert found == ["certificate differs without SNI"]


class TestJson:
    def test_schema(self) -> None:
        """check --json objects carry the documented keys and types."""
        doc = to_json(
            judged(succeeded(True, A), failed(False, Reason.RESET, detail="connection reset"))
        )
        json.dumps(doc)  # serialisable as is
        assert doc["target"] == "a.test:443"
        assert doc["sni_required"] is True
        assert doc["certificate_mismatch"] is False
        sni, no_sni = doc["sni"], doc["no_sni"]
        assert sni["ok"] is True
        assert sni["error"] is None
        assert sni["tls_version"] == "TLSv1.3"
        assert isinstance(sni["duration_seconds"], float)
        cert = sni["certificate"]
        assert set(cert) >= {
            "subject",
            "issuer",
            "sans",
            "not_after",
            "fingerprint_sha256",
            "hostname_match",
            "chain_valid",
        }
        assert cert["not_after"].endswith("Z")
        assert cert["not_after"][4] == "-"
        assert no_sni == no_sni | {"ok": False, "error": "reset", "certificate": None}


class TestTable:
    def test_rows_and_verdicts(self) -> None:
        """Two rows per target, then one verdict line per target."""
        text = table([judged(succeeded(True, A), failed(False, Reason.UNRECOGNIZED_NAME))], NOW)
        lines = text.splitlines()
        assert lines[0].split()[:3] == ["TARGET", "MODE", "RESULT"]
        assert lines[1].startswith("a.test:443")
        assert " sni " in lines[1]
        assert "FAIL unrecognized_name" in lines[2]
        assert lines[-1].startswith("a.test:443: NEEDS SNI")
