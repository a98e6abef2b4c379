"""The alerting rules: promtool checks them and runs their unit tests; the rest is structure.

``promtool check rules`` validates syntax and templates; ``promtool test rules``
runs tests/rules/*.yaml, which cover every alert firing and not firing, one
replica and two.  The structural tests below pin what promtool cannot see:
the required alerts exist with severity, summary and a description that says
what to do; every expression aggregates replicas away; every metric is in the
contract; and the unit tests do cover every alert both ways.  A mutation test
shows the two-replica unit tests fail when the aggregation is removed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from tests.promql import AGGREGATIONS, analyse, duration_seconds, in_contract

ROOT: Final = Path(__file__).resolve().parent.parent
RULES: Final = ROOT / "dashboards" / "sni-exporter.rules.yaml"
UNIT_TESTS: Final = sorted((ROOT / "tests" / "rules").glob("*.yaml"))
PROMTOOL: Final = shutil.which("promtool") or "/usr/bin/promtool"

REQUIRED_ALERTS: Final = frozenset(
    {
        "SNIRequired",
        "CertificateMismatch",
        "HandshakeFailing",
        "CertificateExpiringSoon",
        "CertificateExpired",
        "CertificateHostnameMismatch",
        "CertificateChainUntrusted",
        "ProbesStale",
        "ConfigReloadFailed",
        "SNIExporterDown",
    }
)
SEVERITIES: Final = frozenset({"info", "warning", "critical"})
#: Labels that differ between replicas of one exporter deployment.
REPLICA_LABELS: Final = frozenset({"instance", "pod"})
#: Phrases from the support article's remedies that the SNI alerts must give.
SNI_REMEDIES: Final = (
    "glide.outbound.tls_sni.enabled=true",
    "MID Server",
    "restart the MID Server",
    "dedicated IP address and certificate",
    "default certificate",
)


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def alerting_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def unit_test_cases() -> list[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(file, test group, alert_rule_test case) of every promtool unit test."""
    return [
        (path, group, case)
        for path in UNIT_TESTS
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
        for case in group.get("alert_rule_test", [])
    ]


def instances(group: dict[str, Any]) -> set[str]:
    """The distinct instance labels of a unit-test group's input series."""
    return set(re.findall(r'instance="([^"]*)"', yaml.safe_dump(group.get("input_series", []))))


class TestPromtool:
    def test_check_rules_passes(self) -> None:
        """promtool check rules accepts the rule file (syntax, templates, durations)."""
        result = promtool("check", "rules", str(RULES))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_unit_tests_pass(self) -> None:
        """promtool test rules passes every file in tests/rules/."""
        assert UNIT_TESTS, "no promtool unit tests found"
        result = promtool("test", "rules", *map(str, UNIT_TESTS))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "FAILED" not in result.stdout + result.stderr
        assert result.stdout.count("SUCCESS") == len(UNIT_TESTS)

    def test_replica_tests_fail_without_aggregation(self, tmp_path: Path) -> None:
        """Removing the replica aggregation from the rules makes the two-replica tests fail."""
        mutated = re.sub(
            r"\b(?:min|max|count) without \(instance, pod\) ",
            "",
            RULES.read_text(encoding="utf-8"),
        )
        assert mutated != RULES.read_text(encoding="utf-8")
        (tmp_path / "rules.yaml").write_text(mutated, encoding="utf-8")
        check = promtool("check", "rules", str(tmp_path / "rules.yaml"))
        assert check.returncode == 0, "the mutant must still be valid: " + check.stdout
        replicas = yaml.safe_load((ROOT / "tests/rules/replicas.yaml").read_text(encoding="utf-8"))
        replicas["rule_files"] = ["rules.yaml"]
        (tmp_path / "replicas.yaml").write_text(yaml.safe_dump(replicas), encoding="utf-8")
        result = promtool("test", "rules", "replicas.yaml", cwd=tmp_path)
        assert result.returncode != 0
        assert "FAILED" in result.stdout + result.stderr


class TestAlertDefinitions:
    def test_required_alerts_exist_in_one_group(self) -> None:
        """All the required alerts are defined, in the group named sni-exporter."""
        document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
        assert [g["name"] for g in document["groups"]] == ["sni-exporter"]
        assert {r["alert"] for r in alerting_rules()} == REQUIRED_ALERTS

    @pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: str(r["alert"]))
    def test_alert_shape(self, rule: dict[str, Any]) -> None:
        """CamelCase name, a known severity, summary and description, a sensible `for`."""
        assert re.fullmatch(r"(?:[A-Z][a-z]*|SNI)+", rule["alert"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES
        assert set(rule["annotations"]) >= {"summary", "description"}
        assert len(rule["annotations"]["description"]) > len(rule["annotations"]["summary"])
        seconds = duration_seconds(str(rule.get("for", "")))
        assert seconds is not None, f"{rule['alert']}: `for` is missing"
        assert 60 <= seconds <= 3600, f"{rule['alert']}: `for` {rule['for']} outside 1m..1h"

    def test_duplicate_names_differ_in_severity(self) -> None:
        """An alert defined twice (warning and critical thresholds) differs in severity."""
        pairs = [(r["alert"], r["labels"]["severity"]) for r in alerting_rules()]
        assert len(pairs) == len(set(pairs))

    @pytest.mark.parametrize("name", ["SNIRequired"])
    def test_sni_alert_gives_the_kb_remedies(self, name: str) -> None:
        """The SNI alert tells how to fix either side, with the support article's remedies."""
        (rule,) = [r for r in alerting_rules() if r["alert"] == name]
        description = " ".join(rule["annotations"]["description"].split())
        missing = [phrase for phrase in SNI_REMEDIES if phrase not in description]
        assert missing == []

    def test_chain_alert_uses_the_openssl_verdict_only(self) -> None:
        """CertificateChainUntrusted reads chain_valid (what OpenSSL/Java clients accept), never
        the strict web-PKI verdict, which internal PKIs fail by design; its description says
        how to fix the chain and how to trust an internal CA."""
        (rule,) = [r for r in alerting_rules() if r["alert"] == "CertificateChainUntrusted"]
        metrics = {s.metric for s in analyse(rule["expr"]).selectors}
        assert "sni_certificate_chain_valid" in metrics
        assert "sni_certificate_chain_strict_valid" not in metrics
        description = " ".join(rule["annotations"]["description"].split())
        assert all(p in description for p in ("full chain", "intermediate", "`ca_file`"))

    @pytest.mark.parametrize(
        ("job", "matches"),
        [
            ("sni-exporter", True),  # a plain scrape config's job_name
            ("sni-sni-exporter", True),  # the chart's ServiceMonitor: RELEASE-sni-exporter
            ("sni-exporter-prod", True),  # ... or RELEASE when it contains the chart name
            ("monitoring/sni-sni-exporter", True),  # the chart's PodMonitor: NAMESPACE/NAME
            ("node-exporter", False),
            ("blackbox", False),
        ],
    )
    def test_exporter_down_job_selector(self, job: str, matches: bool) -> None:
        """SNIExporterDown's job regex (anchored, as PromQL's) matches the jobs the chart and
        a plain scrape config give the exporter, and no other exporter's."""
        (rule,) = [r for r in alerting_rules() if r["alert"] == "SNIExporterDown"]
        (selector,) = analyse(rule["expr"]).selectors
        assert selector.metric == "up"
        matcher = selector.matcher("job")
        assert matcher is not None
        assert matcher[0] == "=~"
        assert (re.fullmatch(matcher[1], job) is not None) == matches

    def test_expiry_thresholds(self) -> None:
        """CertificateExpiringSoon warns at 14 days and is critical at 3 days."""
        thresholds = {
            r["labels"]["severity"]: re.search(r"< (\d+) \* 86400", r["expr"])
            for r in alerting_rules()
            if r["alert"] == "CertificateExpiringSoon"
        }
        assert {k: m.group(1) if m else None for k, m in thresholds.items()} == {
            "warning": "14",
            "critical": "3",
        }


class TestExpressions:
    @pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: str(r["alert"]))
    def test_metrics_are_in_the_contract(self, rule: dict[str, Any]) -> None:
        """Every metric an alert reads is one the exporter exports."""
        names = {s.metric for s in analyse(rule["expr"]).selectors}
        assert None not in names
        assert {n for n in names if n and not in_contract(n)} == set()

    @pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: str(r["alert"]))
    def test_replicas_are_aggregated_away(self, rule: dict[str, Any]) -> None:
        """Each selector sits directly in an aggregation `without (instance, pod)`, never `by`
        (which would drop the targets' configured labels that alerts are routed on)."""
        analysis = analyse(rule["expr"])
        assert analysis.selectors
        assert all(s.function in AGGREGATIONS for s in analysis.selectors), analysis.selectors
        aggregations = [
            (kw, set(labels)) for kw, labels in analysis.groupings if kw in {"by", "without"}
        ]
        assert aggregations
        assert all(kw == "without" and labels == REPLICA_LABELS for kw, labels in aggregations)


class TestUnitTestCoverage:
    @pytest.mark.parametrize("name", sorted(REQUIRED_ALERTS))
    def test_every_alert_is_tested_firing_and_not_firing(self, name: str) -> None:
        """For each alert there is a unit test where it fires and one where it does not."""
        cases = [case for _, _, case in unit_test_cases() if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in cases), f"{name} never tested firing"
        assert any(not case.get("exp_alerts") for case in cases), f"{name} never tested quiet"

    @pytest.mark.parametrize("name", sorted(REQUIRED_ALERTS))
    def test_every_alert_is_tested_with_two_replicas(self, name: str) -> None:
        """Each alert fires in a test whose input has two replicas, so single alerting is pinned."""
        assert any(
            case["alertname"] == name and case.get("exp_alerts") and len(instances(group)) >= 2
            for _, group, case in unit_test_cases()
        )

    def test_every_severity_variant_is_tested_firing(self) -> None:
        """Both the warning and the critical CertificateExpiringSoon are seen firing."""
        fired = {
            (case["alertname"], alert["exp_labels"]["severity"])
            for _, _, case in unit_test_cases()
            for alert in case.get("exp_alerts") or []
        }
        defined = {(r["alert"], r["labels"]["severity"]) for r in alerting_rules()}
        assert defined <= fired
