"""Dashboards and alerts against a real Prometheus scraping real exporters probing the real fleet.

The stack, started once for this module:

* the demo fleet (session fixture ``fleet``): real TLS servers on loopback;
* two ``sni-exporter serve`` processes with the same targets file, as two HA
  replicas would run; Prometheus sees every per-target series twice, with
  different ``instance`` and ``pod`` labels, which is what the dashboards'
  and alerts' aggregation must absorb;
* a third, spare exporter in the same job with no targets (so it adds no
  per-target series), which the last alert test stops to see SNIExporterDown
  fire;
* ``/usr/bin/prometheus`` on a free loopback port with a temporary TSDB,
  scraping both every second and evaluating the shipped rules every second.

The rules are loaded from a copy in which every ``for:`` is rewritten to
``0s``: the shipped durations (5-15 minutes) are right for production and
are unit-tested with promtool (tests/rules/); here only the expressions and
their labels are under test, on live data.

Every query of every dashboard panel is run through /api/v1/query with the
dashboard variables filled in as Grafana would, and must parse and return
data.  Through /api/v1/alerts, SNIRequired and HandshakeFailing (and the
certificate alerts) must fire for exactly the targets the fleet's scenarios
say, once each despite the two replicas; SNIExporterDown stays quiet while
every exporter is scraped and fires once, for the job, when one stops.
Waits poll with deadlines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
import yaml

from tests.exporter_proc import Exporter, free_port, wait_for
from tests.promql import PER_TARGET_METRICS, analyse, in_contract
from tests.test_dashboards import load_dashboards, panels

if TYPE_CHECKING:
    from collections.abc import Iterator
    from collections.abc import Set as AbstractSet

    from exporter.demo.fleet import Fleet, Scenario

pytestmark = pytest.mark.slow

ROOT: Final = Path(__file__).resolve().parent.parent
RULES: Final = ROOT / "dashboards" / "sni-exporter.rules.yaml"
PROMETHEUS: Final = shutil.which("prometheus") or "/usr/bin/prometheus"
JOB: Final = "sni-exporter"
TEAM: Final = "e2e"  # a configured label: alerts must keep it
REPLICAS: Final = 2
PROBE_INTERVAL: Final = "2s"
PROBE_TIMEOUT: Final = "1s"
#: What Grafana would put in for its built-in variables at a 1s scrape interval.
BUILTINS: Final = {"__rate_interval": "15s", "__range": "1h", "__interval": "5s"}
DATA_DEADLINE: Final = 60.0  # seconds for every query to return data
ALERT_DEADLINE: Final = 60.0


class PrometheusError(RuntimeError):
    """Prometheus answered with status error (e.g. a query that does not parse)."""


@dataclasses.dataclass
class Prometheus:
    """A Prometheus server started by the test, with a tiny HTTP API client."""

    base: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _call(self, path: str, form: dict[str, str] | None = None) -> Any:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            msg = f"{path} {form}: {body.get('errorType')}: {body.get('error')}"
            raise PrometheusError(msg)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result as a list of {metric, value} (scalars become one item)."""
        data = self._call("/api/v1/query", {"query": expr})
        if data["resultType"] in {"scalar", "string"}:
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        query = urllib.parse.urlencode({"match[]": match})
        return list(self._call(f"/api/v1/label/{label}/values?{query}"))

    def metric_names(self) -> set[str]:
        return set(self._call("/api/v1/label/__name__/values"))

    def firing(self, name: str) -> list[dict[str, Any]]:
        """The firing alerts named ``name`` (labels, annotations, value, ...)."""
        return [
            a
            for a in self._call("/api/v1/alerts")["alerts"]
            if a["labels"].get("alertname") == name and a["state"] == "firing"
        ]

    def alerts(self, name: str) -> list[dict[str, str]]:
        """Label sets of the firing alerts named ``name``."""
        return [a["labels"] for a in self.firing(name)]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            msg = f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}"
            raise AssertionError(msg)
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(self.base + "/-/ready", timeout=2) as response,
        ):
            return bool(response.status == 200)
        return False


@dataclasses.dataclass
class Stack:
    prometheus: Prometheus
    exporters: list[Exporter]
    spare: Exporter  # in the job too, without targets; stopped by the exporter-down test
    scenarios: tuple[Scenario, ...]
    detail_target: str  # the endpoint the one-endpoint dashboard is shown for


# --- Setup ---------------------------------------------------------------------------


def target_name(scenario: Scenario) -> str:
    return scenario.target.name


def write_targets(path: Path, fleet: Fleet) -> None:
    """The exporter's targets file: every scenario, short interval, the fleet's CA."""
    targets = [{"host": s.host, "port": s.port, "address": s.address} for s in fleet.scenarios]
    config = {
        "defaults": {
            "interval": PROBE_INTERVAL,
            "timeout": PROBE_TIMEOUT,
            "ca_file": str(fleet.ca_file),
            "labels": {"team": TEAM},
        },
        "targets": targets,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def write_rules_without_for(path: Path) -> int:
    """A copy of the shipped rules with every ``for`` set to 0s; returns how many alerts."""
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    alerts = 0
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
                alerts += 1
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return alerts


def write_prometheus_config(path: Path, rules: Path, exporters: list[Exporter]) -> None:
    # One static group per exporter, each with its own `pod` label, as the
    # Prometheus operator would add: the rules must aggregate it away too.
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{exporter.port}"],
                        "labels": {"pod": f"sni-exporter-{i}"},
                    }
                    for i, exporter in enumerate(exporters)
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


@contextlib.contextmanager
def run_prometheus(workdir: Path, config: Path) -> Iterator[Prometheus]:
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        prometheus = Prometheus(f"http://127.0.0.1:{port}", proc, log_path)
        try:
            wait_for("prometheus /-/ready", prometheus.ready, timeout=30)
            yield prometheus
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def pick_detail_target(scenarios: tuple[Scenario, ...]) -> str:
    """An endpoint where both handshakes succeed with different certificates: every detail
    panel (TLS versions, both certificates) has data for it."""
    for scenario in scenarios:
        if scenario.sni.ok and scenario.no_sni.ok and scenario.certificate_mismatch:
            return target_name(scenario)
    msg = "the fleet has no endpoint with two successful handshakes and two certificates"
    raise AssertionError(msg)


@pytest.fixture(scope="module")
def stack(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("e2e-prometheus")
    targets = workdir / "targets.yaml"
    write_targets(targets, fleet)
    rules = workdir / "rules.yaml"
    assert write_rules_without_for(rules) >= 8
    no_targets = workdir / "no-targets.yaml"
    no_targets.write_text("targets: []\n", encoding="utf-8")
    with contextlib.ExitStack() as stack_:
        exporters = [stack_.enter_context(Exporter(targets)) for _ in range(REPLICAS)]
        spare = stack_.enter_context(Exporter(no_targets))
        for exporter in [*exporters, spare]:
            exporter.wait_ready()
        config = workdir / "prometheus.yml"
        write_prometheus_config(config, rules, [*exporters, spare])
        prometheus = stack_.enter_context(run_prometheus(workdir, config))
        yield Stack(
            prometheus, exporters, spare, fleet.scenarios, pick_detail_target(fleet.scenarios)
        )


# --- Grafana variable substitution -----------------------------------------------------


def regex_literal(value: str) -> str:
    """``value`` as a regex matching only itself, escaped for a PromQL double-quoted string
    (what Grafana's Prometheus data source does for a single selected value)."""
    return re.escape(value).replace("\\", "\\\\")


def fill(expr: str, *, job: str, target: str) -> str:
    """Replace Grafana variables the way Grafana would for the given selections."""
    values = {"job": job, "target": target, **BUILTINS}

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            msg = f"unknown variable ${name} in {expr!r}"
            raise AssertionError(msg)
        return values[name]

    return re.sub(r"\$\{([a-zA-Z_]\w*)\}|\$([a-zA-Z_]\w*)", one, expr)


def dashboard_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard uid, panel title, refId, expr) of every panel query."""
    return [
        (d["uid"], p["title"], t["refId"], t["expr"])
        for d in load_dashboards().values()
        for p in panels(d)
        for t in p.get("targets", [])
    ]


def selection(stack: Stack, uid: str) -> str:
    """The $target value: All (.+) on fleet-wide dashboards, one endpoint on the detail one."""
    if uid == "sni-endpoint-detail":
        return regex_literal(stack.detail_target)
    return ".+"


# --- Tests ----------------------------------------------------------------------------


class TestDashboardQueries:
    def test_every_panel_query_parses_and_returns_data(self, stack: Stack) -> None:
        """Every query of every panel, variables filled in, parses and returns data."""
        pending = {
            (uid, title, ref): fill(expr, job=regex_literal(JOB), target=selection(stack, uid))
            for uid, title, ref, expr in dashboard_queries()
        }

        def still_empty() -> dict[tuple[str, str, str], str]:
            # Parse errors raise at once (PrometheusError); only emptiness is retried,
            # because rate() windows and histograms need a few scrapes.
            for key, expr in list(pending.items()):
                if stack.prometheus.query(expr):
                    del pending[key]
            return pending

        with contextlib.suppress(AssertionError):
            wait_for(
                "every dashboard query to return data",
                lambda: not still_empty(),
                timeout=DATA_DEADLINE,
                every=0.5,
            )
        assert pending == {}, "queries without data"

    def test_queries_for_one_endpoint_parse_on_every_dashboard(self, stack: Stack) -> None:
        """With a single endpoint selected (escaped like Grafana does), every query parses."""
        target = regex_literal(stack.detail_target)
        errors = []
        for uid, title, ref, expr in dashboard_queries():
            try:
                stack.prometheus.query(fill(expr, job=regex_literal(JOB), target=target))
            except PrometheusError as error:
                errors.append(f"{uid} / {title} / {ref}: {error}")
        assert errors == []

    def test_per_target_queries_are_not_split_by_replica(self, stack: Stack) -> None:
        """Two replicas export every target, yet per-target queries give one series per key."""
        wait_for(
            "both replicas' series",
            lambda: (
                len(stack.prometheus.query(f'sni_required{{job="{JOB}"}}'))
                == REPLICAS * len(stack.scenarios)
            ),
            timeout=30,
        )
        problems = []
        for uid, title, ref, expr in dashboard_queries():
            if not any(s.metric in PER_TARGET_METRICS for s in analyse(expr).selectors):
                continue
            result = stack.prometheus.query(fill(expr, job=regex_literal(JOB), target=".+"))
            label_sets = [tuple(sorted(r["metric"].items())) for r in result]
            if any({"instance", "pod"} & set(r["metric"]) for r in result):
                problems.append(f"{uid} / {title} / {ref}: instance or pod label kept")
            if len(label_sets) != len(set(label_sets)):
                problems.append(f"{uid} / {title} / {ref}: duplicate series")
        assert problems == []

    def test_endpoint_table_has_one_row_per_endpoint(self, stack: Stack) -> None:
        """The fleet table's verdict and last-probe queries give exactly one row per endpoint."""
        fleet_board = load_dashboards()["sni-fleet-overview.json"]
        table = next(p for p in panels(fleet_board) if p["title"] == "Endpoints")
        expected = sorted(target_name(s) for s in stack.scenarios)
        for target in table["targets"]:
            if target["refId"] not in {"A", "F", "G", "H"}:
                continue  # certificate columns exist only where a certificate was captured
            expr = fill(target["expr"], job=regex_literal(JOB), target=".+")
            rows = sorted(r["metric"]["target"] for r in stack.prometheus.query(expr))
            assert rows == expected, target["refId"]

    def test_verdict_column_matches_the_fleet(self, stack: Stack) -> None:
        """The verdict code per endpoint is what the fleet's scenarios say."""
        fleet_board = load_dashboards()["sni-fleet-overview.json"]
        table = next(p for p in panels(fleet_board) if p["title"] == "Endpoints")
        verdict = next(t for t in table["targets"] if t["refId"] == "A")
        expr = fill(verdict["expr"], job=regex_literal(JOB), target=".+")
        got = {
            r["metric"]["target"]: int(float(r["value"][1])) for r in stack.prometheus.query(expr)
        }
        expected = {
            target_name(s): 3
            if not s.sni.ok
            else 2
            if s.sni_required
            else 1
            if s.certificate_mismatch
            else 0
            for s in stack.scenarios
        }
        assert got == expected

    def test_variable_queries_return_the_fleet(self, stack: Stack) -> None:
        """Each dashboard's job and target label_values() queries list the job and endpoints."""
        expected = {"job": [JOB], "target": sorted(target_name(s) for s in stack.scenarios)}
        seen = 0
        for dashboard in load_dashboards().values():
            for var in dashboard["templating"]["list"]:
                if var["type"] != "query":
                    continue
                match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"])
                assert match, var["query"]
                selector = fill(match.group(1), job=regex_literal(JOB), target=".+")
                values = stack.prometheus.label_values(match.group(2), selector)
                assert sorted(values) == expected[var["name"]], (dashboard["uid"], var["name"])
                seen += 1
        assert seen == 2 * len(load_dashboards())

    def test_every_metric_the_dashboards_and_rules_use_is_exported(self, stack: Stack) -> None:
        """Each metric name in a dashboard or rule is in the contract and really scraped."""
        used = {
            s.metric
            for _, _, _, expr in dashboard_queries()
            for s in analyse(expr).selectors
            if s.metric
        }
        rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
        used |= {
            s.metric
            for group in rules["groups"]
            for rule in group["rules"]
            for s in analyse(rule["expr"]).selectors
            if s.metric
        }
        assert {m for m in used if not in_contract(m)} == set()
        # Histograms and counters need a scrape after their first observation.
        wait_for(
            "every used metric to be scraped",
            lambda: used <= stack.prometheus.metric_names(),
            timeout=30,
        )


def expected_handshake_failures(scenarios: tuple[Scenario, ...]) -> set[tuple[str, str, str]]:
    """(target, sni, reason) HandshakeFailing must fire for: every failing handshake with SNI,
    and every failing one without SNI that SNIRequired does not already explain."""
    out: set[tuple[str, str, str]] = set()
    for s in scenarios:
        if s.sni.reason is not None:
            out.add((target_name(s), "true", str(s.sni.reason)))
        if s.no_sni.reason is not None and not s.sni_required:
            out.add((target_name(s), "false", str(s.no_sni.reason)))
    return out


def expected_untrusted_chains(scenarios: tuple[Scenario, ...]) -> set[tuple[str, str]]:
    """(target, sni) CertificateChainUntrusted must fire for: a captured chain that OpenSSL
    rejects and that is not merely expired (CertificateExpired's); without SNI only where the
    endpoint does not need SNI and the SNI chain is not already untrusted."""
    out: set[tuple[str, str]] = set()
    for s in scenarios:
        if s.sni.ok and s.sni.chain_valid is False and not s.sni.expired:
            out.add((target_name(s), "true"))
        if (
            s.no_sni.ok
            and s.no_sni.chain_valid is False
            and not s.no_sni.expired
            and not s.sni_required
            and s.sni.chain_valid is not False
        ):
            out.add((target_name(s), "false"))
    return out


def wait_for_alerts(
    stack: Stack, name: str, expected: AbstractSet[tuple[str, ...]], *keys: str
) -> None:
    """Poll until ``name`` fires exactly for ``expected``, each once; fail with the last view.

    Each alert must also keep the configured label (team) and drop instance and pod.
    """
    alerts: list[dict[str, str]] = []

    def counted() -> Counter[tuple[str, ...]]:
        return Counter(tuple(a.get(k, "") for k in keys) for a in alerts)

    def exact() -> bool:
        nonlocal alerts
        alerts = stack.prometheus.alerts(name)
        return dict(counted()) == dict.fromkeys(expected, 1)

    with contextlib.suppress(AssertionError):
        wait_for(
            f"{name} to fire for exactly the expected targets",
            exact,
            timeout=ALERT_DEADLINE,
            every=0.5,
        )
    assert dict(counted()) == dict.fromkeys(expected, 1), name
    assert [a for a in alerts if a.get("team") != TEAM or {"instance", "pod"} & set(a)] == []


class TestAlerts:
    def test_sni_required_fires_for_exactly_the_sni_dependent_endpoints(self, stack: Stack) -> None:
        """SNIRequired fires once per endpoint needing SNI, for no other, despite two replicas."""
        expected = {(target_name(s),) for s in stack.scenarios if s.sni_required}
        assert expected  # the fleet has such endpoints
        wait_for_alerts(stack, "SNIRequired", expected, "target")

    def test_handshake_failing_fires_per_mode_and_reason(self, stack: Stack) -> None:
        """HandshakeFailing fires once per failing (target, mode, reason), and not for failures
        without SNI that SNIRequired explains."""
        expected = expected_handshake_failures(stack.scenarios)
        assert any(sni == "true" for _, sni, _ in expected)
        wait_for_alerts(stack, "HandshakeFailing", expected, "target", "sni", "reason")

    def test_certificate_alerts_fire_for_the_right_endpoints(self, stack: Stack) -> None:
        """CertificateExpired, CertificateHostnameMismatch and CertificateMismatch fire for the
        scenarios that call for them, once each."""
        expired = {(target_name(s), "true") for s in stack.scenarios if s.sni.expired}
        wait_for_alerts(stack, "CertificateExpired", expired, "target", "sni")
        wrong = {
            (target_name(s),) for s in stack.scenarios if s.sni.ok and s.sni.hostname_match is False
        }
        wait_for_alerts(stack, "CertificateHostnameMismatch", wrong, "target")
        mismatch = {
            (target_name(s),)
            for s in stack.scenarios
            if s.certificate_mismatch and not s.sni_required
        }
        wait_for_alerts(stack, "CertificateMismatch", mismatch, "target")

    def test_chain_untrusted_fires_for_the_untrusted_endpoint_only(self, stack: Stack) -> None:
        """CertificateChainUntrusted fires once for the self-signed endpoint; not for the
        internal-PKI one (its CA is given with ca_file; only the strict web-PKI verdict fails),
        nor for the expired one (CertificateExpired's), despite two replicas."""
        expected = expected_untrusted_chains(stack.scenarios)
        by_name = {s.name: target_name(s) for s in stack.scenarios}
        assert (by_name["untrusted"], "true") in expected
        assert {target for target, _ in expected}.isdisjoint(
            {by_name["internal-pki"], by_name["expired"]}
        )
        wait_for_alerts(stack, "CertificateChainUntrusted", expected, "target", "sni")

    def test_quiet_alerts_stay_quiet(self, stack: Stack) -> None:
        """On a healthy exporter with fresh certificates, these alerts do not fire.

        Deliberately empty: the demo certificates are valid for months (only the expired
        one is not, and it is CertificateExpired's), probes run every 2s, reloads succeed.
        """
        wait_for(
            "rules to have been evaluated",
            lambda: stack.prometheus.alerts("SNIRequired"),
            timeout=ALERT_DEADLINE,
        )
        for name in ("CertificateExpiringSoon", "ProbesStale", "ConfigReloadFailed"):
            assert stack.prometheus.alerts(name) == [], name

    def test_exporter_down_fires_once_for_the_job_when_an_exporter_stops(
        self, stack: Stack
    ) -> None:
        """SNIExporterDown is quiet while every exporter is scraped; when one stops it fires
        once for the job, counting one process down, without instance or pod."""
        exporters = 1 + len(stack.exporters)
        wait_for(
            "every exporter scraped",
            lambda: len(stack.prometheus.query(f'up{{job="{JOB}"}} == 1')) == exporters,
            timeout=30,
        )
        wait_for(
            "rules to have been evaluated",
            lambda: stack.prometheus.alerts("SNIRequired"),
            timeout=ALERT_DEADLINE,
        )
        assert stack.prometheus.alerts("SNIExporterDown") == []
        stack.spare.stop()
        alerts: list[dict[str, Any]] = []

        def fired() -> bool:
            nonlocal alerts
            alerts = stack.prometheus.firing("SNIExporterDown")
            return len(alerts) == 1 and float(alerts[0]["value"]) == 1

        with contextlib.suppress(AssertionError):
            wait_for("SNIExporterDown to fire", fired, timeout=ALERT_DEADLINE, every=0.5)
        assert [(a["labels"], float(a["value"])) for a in alerts] == [
            ({"alertname": "SNIExporterDown", "job": JOB, "severity": "warning"}, 1.0)
        ]
        assert f'up{{job="{JOB}"}} == 0' in alerts[0]["annotations"]["description"]
