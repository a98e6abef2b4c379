"""``sni-exporter check`` and ``validate`` as a user runs them, against the real fleet."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from exporter.demo.fleet import Fleet, Scenario
from tests.exporter_proc import EXPORTER, cli, one_error_line

pytestmark = pytest.mark.slow


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return cli("check", *args)


def scenario_args(s: Scenario, fleet: Fleet) -> list[str]:
    host = f"[{s.host}]" if ":" in s.host else s.host
    return [
        f"{host}:{s.port}",
        "--address",
        s.address,
        "--timeout",
        "1",
        "--ca-file",
        str(fleet.ca_file),
    ]


def expect_findings(s: Scenario) -> bool:
    """What the issue says sets exit status 1, from the scenario's expectations."""
    sni = s.sni
    return (
        s.sni_required
        or s.certificate_mismatch
        or not sni.ok
        or not s.no_sni.ok
        or bool(sni.expired)
        or sni.hostname_match is False
        or sni.chain_valid is False
    )


@pytest.fixture(scope="module")
def all_json(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """One check --json per scenario (each with its own --address), keyed by scenario name."""
    out: dict[str, dict[str, Any]] = {}
    for s in fleet.scenarios:
        done = check(*scenario_args(s, fleet), "--json")
        assert done.returncode in {0, 1}, done.stderr
        doc = json.loads(done.stdout)
        doc["_exit"] = done.returncode
        out[s.name] = doc
    return out


class TestCheckVerdicts:
    def test_verdicts_and_exit_codes(
        self, fleet: Fleet, all_json: dict[str, dict[str, Any]]
    ) -> None:
        """Every scenario gets the predicted verdict, reasons and exit status."""
        for s in fleet.scenarios:
            doc = all_json[s.name]
            assert doc["target"] == s.target.name, s.name
            assert doc["sni_required"] is s.sni_required, s.name
            assert doc["certificate_mismatch"] is s.certificate_mismatch, s.name
            for key, expected in (("sni", s.sni), ("no_sni", s.no_sni)):
                got = doc[key]
                assert got["ok"] is expected.ok, (s.name, key)
                assert got["error"] == (str(expected.reason) if expected.reason else None), (
                    s.name,
                    key,
                )
            assert doc["_exit"] == (1 if expect_findings(s) else 0), s.name

    def test_certificate_fields(self, fleet: Fleet, all_json: dict[str, dict[str, Any]]) -> None:
        """Certificates carry subject, SANs, ISO expiry, fingerprint and both checks."""
        for s in fleet.scenarios:
            cert = all_json[s.name]["sni"]["certificate"]
            if not s.sni.ok:
                assert cert is None, s.name
                continue
            assert len(cert["fingerprint_sha256"]) == 64
            assert cert["not_after"].endswith("Z")
            if s.sni.hostname_match is not None:
                assert cert["hostname_match"] is s.sni.hostname_match, s.name
            if s.sni.chain_valid is not None:
                assert cert["chain_valid"] is s.sni.chain_valid, s.name
            if s.sni.chain_strict_valid is not None:
                assert cert["chain_strict_valid"] is s.sni.chain_strict_valid, s.name

    def test_table_for_people(self, fleet: Fleet) -> None:
        """Without --json: a table with both modes and a verdict line naming the remedy."""
        s = next(x for x in fleet.scenarios if x.name == "nginx-reject")
        done = check(*scenario_args(s, fleet))
        assert done.returncode == 1
        assert "FAIL unrecognized_name" in done.stdout
        assert f"{s.target.name}: NEEDS SNI" in done.stdout
        assert "glide.outbound.tls_sni.enabled" in done.stdout

    def test_several_targets_give_an_array(self, fleet: Fleet) -> None:
        """Two targets: a JSON array in argument order; the worst status wins."""
        by_name = {s.name: s for s in fleet.scenarios}
        good, bad = by_name["nginx-single"], by_name["nginx-reject"]
        # No --address with several targets: these names are not in DNS, so use
        # 127.0.0.1 literals whose certificates then cannot match: only the shape is checked.
        done = check(f"127.0.0.1:{good.port}", f"127.0.0.1:{bad.port}", "--json", "--timeout", "1")
        docs = json.loads(done.stdout)
        assert [d["target"] for d in docs] == [f"127.0.0.1:{good.port}", f"127.0.0.1:{bad.port}"]
        assert done.returncode == 1


class TestBadInput:
    @pytest.mark.parametrize(
        ("args", "expect"),
        [
            (["a.test:70000"], "70000"),
            (["a.test:0"], "port"),
            (["a.test:443", "--address", "300.1.2.3"], "300.1.2.3"),
            (["a.test", "b.test", "--address", "127.0.0.1"], "single target"),
            (["bad host!"], "bad host!"),
            (["a.test", "--timeout", "-1"], "timeout"),
            (["a.test", "--ca-file", "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
            ([], "HOST"),
        ],
        ids=[
            "port-too-big",
            "port-zero",
            "bad-address",
            "address-with-two",
            "bad-host",
            "bad-timeout",
            "missing-ca-file",
            "no-target",
        ],
    )
    def test_one_line_exit_2(self, args: list[str], expect: str) -> None:
        """Bad input: exit 2 and one line saying what is wrong, never a traceback."""
        done = check(*args)
        assert expect in one_error_line(done)
        assert not done.stdout

    def test_unknown_host(self) -> None:
        """An unresolvable host is bad input (exit 2, one line).

        Run in a private network namespace: this machine's resolver is not on
        loopback, and tests send no traffic off loopback.  With no network at all
        resolution fails at once, as it does for an unknown name.
        """
        unshare = shutil.which("unshare")
        assert unshare, "util-linux unshare is required"
        done = subprocess.run(
            [unshare, "--net", EXPORTER, "check", "nosuch.example.invalid"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "cannot resolve 'nosuch.example.invalid'" in one_error_line(done)


class TestValidate:
    def test_good_file(self, tmp_path: Path) -> None:
        """validate prints the target count and exits 0."""
        f = tmp_path / "t.yaml"
        f.write_text("targets:\n  - a.test\n  - b.test:8443\n")
        done = cli("validate", str(f))
        assert done.returncode == 0
        assert "2 targets" in done.stdout

    def test_bad_file_lists_every_problem(self, tmp_path: Path) -> None:
        """validate reports each problem as FILE:LINE:COL and exits 2."""
        f = tmp_path / "t.yaml"
        f.write_text(
            "targets:\n  - host: a.test\n    port: 0\n  - host: b.test\n    interval: 5x\n"
        )
        done = cli("validate", str(f))
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 2, done.stderr
        assert lines[0].startswith(f"{f}:3:")
        assert lines[1].startswith(f"{f}:5:")
        assert "Traceback" not in done.stderr
