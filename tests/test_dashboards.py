"""A dashboard linter: the structural rules of Grafana's dashboard-linter, as tests.

Grafana's Go dashboard-linter cannot be installed here, so its rules that
matter for sidecar-provisioned, multi-replica dashboards are checked below
(template-datasource, template-job, template-on-time-change-reload,
panel-datasource, panel-title-description, panel-units, panel-no-targets,
target-job, target-rate-interval), plus this project's own: the target
variable is used, every metric is in the exporter's metric contract, per-target
queries aggregate instance/pod away, and joined tables stay joinable.

Each lint function returns a list of problems, one readable line each; the
tests assert the real dashboards have none, and that each rule does catch a
broken example.  Whether the queries parse and return data is proven against a
real Prometheus in test_e2e_prometheus.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Final

import pytest

from tests.promql import (
    AGGREGATIONS,
    FUNCTIONS,
    PER_TARGET_METRICS,
    PromQLSyntaxError,
    Selector,
    analyse,
    duration_seconds,
    in_contract,
)

DASHBOARDS_DIR: Final = Path(__file__).resolve().parent.parent / "dashboards"

#: File name -> uid.  Stable: links, bookmarks and the Helm chart refer to these.
EXPECTED_UIDS: Final = {
    "sni-fleet-overview.json": "sni-fleet-overview",
    "sni-endpoint-detail.json": "sni-endpoint-detail",
    "sni-exporter-health.json": "sni-exporter-health",
}
#: Dashboards about one endpoint have a single-select target variable.
SINGLE_TARGET: Final = frozenset({"sni-endpoint-detail"})

MIN_SCHEMA_VERSION: Final = 39
#: The scrape interval we design for; a literal rate window must cover 4 scrapes.
ASSUMED_SCRAPE_INTERVAL_S: Final = 60
#: Variables a query may use.  test_e2e_prometheus fills in exactly these.
QUERY_VARIABLES: Final = frozenset({"job", "target", "__rate_interval", "__range", "__interval"})
PANEL_TYPES: Final = frozenset({"stat", "table", "timeseries", "state-timeline"})
#: Subset of Grafana's unit ids (dashboard-linter's list) that fits this domain.
VALID_UNITS: Final = frozenset(
    {
        "none",
        "string",
        "short",
        "percent",
        "percentunit",
        "bool",
        "bool_yes_no",
        "bytes",
        "decbytes",
        "ns",
        "µs",
        "ms",
        "s",
        "m",
        "h",
        "d",
        "dtdurationms",
        "dtdurations",
        "dateTimeAsIso",
        "dateTimeAsLocal",
        "dateTimeFromNow",
        "ops",
        "reqps",
        "cps",
    }
)
DATASOURCE_REF: Final = {"type": "prometheus", "uid": "${datasource}"}
EXPECTED_VARIABLE_QUERIES: Final = {
    # The job is found from the exporter's build info, present even with no targets.
    "job": "label_values(sni_exporter_build_info, job)",
    "target": 'label_values(sni_probe_success{job=~"$job"}, target)',
}
_VAR_NAME = re.compile(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)")

Dashboard = dict[str, Any]


def load_dashboards() -> dict[str, Dashboard]:
    """Every dashboard JSON file in dashboards/, by file name."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


def panels(dashboard: Dashboard) -> list[dict[str, Any]]:
    """All panels, including those nested in rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: Dashboard) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of every non-row panel."""
    return [
        (p, t) for p in panels(dashboard) if p.get("type") != "row" for t in p.get("targets", [])
    ]


def variable(dashboard: Dashboard, name: str) -> dict[str, Any] | None:
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("name") == name:
            return dict(var)
    return None


def _where(dashboard: Dashboard, panel: dict[str, Any] | None = None) -> str:
    where = f"dashboard {dashboard.get('uid')!r}"
    return f"{where}, panel {panel.get('title')!r}" if panel else where


# --- Rules --------------------------------------------------------------------------


def lint_dashboard(dashboard: Dashboard) -> list[str]:
    """Dashboard-level rules: provisioning, schema, variables."""
    return [
        *_rule_provisioning(dashboard),
        *_rule_datasource_variable(dashboard),
        *_rule_query_variable(dashboard, "job"),
        *_rule_query_variable(dashboard, "target"),
        *_rule_variables_used(dashboard),
    ]


def _rule_provisioning(dashboard: Dashboard) -> list[str]:
    where = _where(dashboard)
    problems: list[str] = []
    if dashboard.get("__inputs", None) != []:
        problems.append(f"{where}: __inputs must be present and empty (sidecar provisioning)")
    schema = dashboard.get("schemaVersion")
    if not isinstance(schema, int) or schema < MIN_SCHEMA_VERSION:
        problems.append(f"{where}: schemaVersion must be >= {MIN_SCHEMA_VERSION}")
    if not dashboard.get("uid") or not dashboard.get("title"):
        problems.append(f"{where}: uid and title are required")
    if "DS_PROMETHEUS" in json.dumps(dashboard):
        problems.append(f"{where}: uses ${{DS_PROMETHEUS}}; use the datasource variable")
    ids = [p.get("id") for p in panels(dashboard)]
    if len(ids) != len(set(ids)) or None in ids:
        problems.append(f"{where}: panel ids must be set and unique, got {ids}")
    return problems


def _rule_datasource_variable(dashboard: Dashboard) -> list[str]:
    where = _where(dashboard)
    ds = variable(dashboard, "datasource")
    if ds is None:
        return [f"{where}: no 'datasource' variable"]
    problems: list[str] = []
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append(f"{where}: 'datasource' variable must be type datasource, query prometheus")
    if ds.get("label") != "Data source":
        problems.append(f"{where}: 'datasource' variable should be labelled 'Data source'")
    return problems


def _rule_query_variable(dashboard: Dashboard, name: str) -> list[str]:
    """job and target: label_values() queries on ${datasource}, refreshed on time change."""
    where = _where(dashboard)
    var = variable(dashboard, name)
    if var is None:
        return [f"{where}: no {name!r} variable"]
    problems: list[str] = []
    query = var.get("query")
    text = query.get("query") if isinstance(query, dict) else query
    if var.get("type") != "query" or var.get("datasource") != DATASOURCE_REF:
        problems.append(f"{where}: {name!r} must be a query variable on ${{datasource}}")
    if var.get("refresh") != 2:
        problems.append(f"{where}: {name!r} must refresh on time range change (refresh: 2)")
    if var.get("label") != name.title():
        problems.append(f"{where}: {name!r} should be labelled {name.title()!r}")
    multi = dashboard.get("uid") not in SINGLE_TARGET or name == "job"
    if multi and (not var.get("multi") or var.get("allValue") != ".+"):
        problems.append(f"{where}: {name!r} must be multi-select with allValue '.+'")
    if not multi and (var.get("multi") or var.get("includeAll")):
        problems.append(f"{where}: {name!r} must be single-select on a one-endpoint dashboard")
    expected = EXPECTED_VARIABLE_QUERIES[name]
    if text != expected:
        problems.append(f"{where}: {name!r} query must be {expected!r}, got {text!r}")
    return problems


def _rule_variables_used(dashboard: Dashboard) -> list[str]:
    where = _where(dashboard)
    variables = dashboard.get("templating", {}).get("list", [])
    text = json.dumps([dashboard.get("panels", []), variables])
    used = set(_VAR_NAME.findall(text))
    return [
        f"{where}: variable {v.get('name')!r} is never used"
        for v in variables
        if v.get("name") not in used
    ]


def lint_panel(dashboard: Dashboard, panel: dict[str, Any]) -> list[str]:
    """Panel-level rules: type, datasource, title, description, unit, targets."""
    if panel.get("type") == "row":
        return []
    problems = [
        *_rule_panel_basics(dashboard, panel),
        *_rule_panel_units(dashboard, panel),
        *_rule_panel_targets(dashboard, panel),
    ]
    if panel.get("type") == "table":
        problems += _rule_table(dashboard, panel)
    return problems


def _rule_panel_basics(dashboard: Dashboard, panel: dict[str, Any]) -> list[str]:
    where = _where(dashboard, panel)
    problems: list[str] = []
    if panel.get("type") not in PANEL_TYPES:
        problems.append(f"{where}: panel type {panel.get('type')!r} not in {sorted(PANEL_TYPES)}")
    if panel.get("datasource") != DATASOURCE_REF:
        problems.append(f"{where}: datasource must be {DATASOURCE_REF}")
    if not str(panel.get("title", "")).strip():
        problems.append(f"{where}: no title")
    if not str(panel.get("description", "")).strip():
        problems.append(f"{where}: no description")
    return problems


def _rule_panel_units(dashboard: Dashboard, panel: dict[str, Any]) -> list[str]:
    where = _where(dashboard, panel)
    field_config = panel.get("fieldConfig", {})
    unit = field_config.get("defaults", {}).get("unit")
    problems: list[str] = []
    if unit not in VALID_UNITS:
        problems.append(f"{where}: fieldConfig.defaults.unit {unit!r} is missing or not valid")
    problems += [
        f"{where}: override unit {prop.get('value')!r} is not valid"
        for override in field_config.get("overrides", [])
        for prop in override.get("properties", [])
        if prop.get("id") == "unit" and prop.get("value") not in VALID_UNITS
    ]
    return problems


def _rule_panel_targets(dashboard: Dashboard, panel: dict[str, Any]) -> list[str]:
    where = _where(dashboard, panel)
    targets = panel.get("targets", [])
    problems: list[str] = []
    if not targets:
        problems.append(f"{where}: no queries")
    refs = [t.get("refId") for t in targets]
    if len(refs) != len(set(refs)) or None in refs:
        problems.append(f"{where}: refIds must be set and unique, got {refs}")
    for target in targets:
        if target.get("datasource") != DATASOURCE_REF:
            problems.append(
                f"{where}: query {target.get('refId')} datasource must be {DATASOURCE_REF}"
            )
        if not str(target.get("expr", "")).strip():
            problems.append(f"{where}: query {target.get('refId')} has no expr")
    return problems


def _rule_table(dashboard: Dashboard, panel: dict[str, Any]) -> list[str]:
    """Tables are instant table queries; joined ones aggregate by the join label."""
    where = _where(dashboard, panel)
    targets = panel.get("targets", [])
    problems = [
        f"{where}: query {t.get('refId')} must be an instant table query"
        for t in targets
        if t.get("format") != "table" or not t.get("instant") or t.get("range")
    ]
    joins = [t for t in panel.get("transformations", []) if t.get("id") == "joinByField"]
    if len(targets) > 1 and not joins:
        problems.append(f"{where}: several queries need a joinByField transformation")
    for join in joins:
        field = join.get("options", {}).get("byField")
        # Every query must keep the join label through its aggregation, or its
        # rows cannot be joined; with no instance/pod in any by-clause (a query
        # rule), that leaves one row per join key.
        problems += [
            f"{where}: query {t.get('refId')} must aggregate by the join field {field!r}"
            for t in targets
            if not any(field in labels for kw, labels in analyse(t["expr"]).groupings if kw == "by")
        ]
    # Overrides and organize options that name "Value #X" must name a real query.
    refs = {t.get("refId") for t in targets}
    config = json.dumps([panel.get("fieldConfig"), panel.get("transformations")])
    named = set(re.findall(r"Value #([A-Z]+)", config))
    problems += [f"{where}: 'Value #{ref}' names no query" for ref in sorted(named - refs)]
    return problems


def lint_query(dashboard: Dashboard, panel: dict[str, Any], target: dict[str, Any]) -> list[str]:
    """Query-level rules: functions, variables, matchers, windows, contract, aggregation."""
    where = f"{_where(dashboard, panel)}, query {target.get('refId')}"
    try:
        analysis = analyse(str(target.get("expr", "")))
    except PromQLSyntaxError as error:
        return [f"{where}: {error}"]
    problems = [
        f"{where}: unknown function {f!r}" for f in analysis.functions if f not in FUNCTIONS
    ]
    names = {m for v in analysis.variables for m in _VAR_NAME.findall(v)}
    problems += [
        f"{where}: variable ${n} is not one the e2e test fills in"
        for n in sorted(names - QUERY_VARIABLES)
    ]
    for sel in analysis.selectors:
        problems += _rule_selector(where, sel)
    if any(s.metric in PER_TARGET_METRICS for s in analysis.selectors):
        if not set(analysis.functions) & AGGREGATIONS:
            problems.append(f"{where}: per-target query must aggregate (replicas would add series)")
        problems += [
            f"{where}: per-target query must not split by instance/pod"
            for keyword, labels in analysis.groupings
            if keyword == "by" and {"instance", "pod"} & set(labels)
        ]
    return problems


def _rule_selector(where: str, sel: Selector) -> list[str]:
    if sel.metric is None:
        return [f"{where}: selector without a metric name"]
    problems: list[str] = []
    if not in_contract(sel.metric):
        problems.append(f"{where}: {sel.metric} is not in the metric contract")
    if sel.matcher("job") != ("=~", "$job"):
        problems.append(f'{where}: {sel.metric} must have job=~"$job"')
    if sel.metric in PER_TARGET_METRICS and sel.matcher("target") != ("=~", "$target"):
        problems.append(f'{where}: {sel.metric} must have target=~"$target"')
    return problems + _rule_window(where, sel)


def _rule_window(where: str, sel: Selector) -> list[str]:
    window, function = sel.range, sel.function
    if window is None or window == "$__rate_interval":
        return []
    if function in {"rate", "irate"}:
        return [f"{where}: {function}({sel.metric}[{window}]) must use $__rate_interval"]
    if window == "$__range":
        return []  # the whole dashboard range: always many scrapes long
    seconds = duration_seconds(window)
    minimum = 4 * ASSUMED_SCRAPE_INTERVAL_S
    if seconds is None or seconds < minimum:
        what = f"window [{window}] of {sel.metric}"
        return [f"{where}: {what} must be $__rate_interval, $__range or >= {minimum}s (4 scrapes)"]
    return []


def lint_all(dashboards: dict[str, Dashboard]) -> list[str]:
    problems: list[str] = []
    for dashboard in dashboards.values():
        problems += lint_dashboard(dashboard)
        for panel in panels(dashboard):
            problems += lint_panel(dashboard, panel)
        for panel, target in queries(dashboard):
            problems += lint_query(dashboard, panel, target)
    return problems


# --- Tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboards() -> dict[str, Dashboard]:
    return load_dashboards()


class TestDashboardSet:
    def test_the_three_dashboards_exist_with_stable_uids(
        self, dashboards: dict[str, Dashboard]
    ) -> None:
        """Exactly the three dashboards ship, each with its fixed uid."""
        assert {name: d.get("uid") for name, d in dashboards.items()} == EXPECTED_UIDS

    def test_uids_and_titles_are_unique(self, dashboards: dict[str, Dashboard]) -> None:
        """No two dashboards share a uid or a title (Grafana would overwrite one)."""
        uids = [d["uid"] for d in dashboards.values()]
        titles = [d["title"] for d in dashboards.values()]
        assert len(set(uids)) == len(uids)
        assert len(set(titles)) == len(titles)

    def test_files_are_canonical_json(self, dashboards: dict[str, Dashboard]) -> None:
        """Files are 2-space indented JSON with a final newline, so diffs stay readable."""
        for name, dashboard in dashboards.items():
            text = (DASHBOARDS_DIR / name).read_text(encoding="utf-8")
            assert text == json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n", name

    def test_all_panel_kinds_are_used(self, dashboards: dict[str, Dashboard]) -> None:
        """The set uses stat, table, timeseries and state-timeline panels."""
        used = {p["type"] for d in dashboards.values() for p in panels(d)}
        assert used == PANEL_TYPES


class TestLinterOnShippedDashboards:
    def test_dashboard_rules(self, dashboards: dict[str, Dashboard]) -> None:
        """Every dashboard passes the provisioning, schema and variable rules."""
        assert [p for d in dashboards.values() for p in lint_dashboard(d)] == []

    def test_panel_rules(self, dashboards: dict[str, Dashboard]) -> None:
        """Every panel has the templated datasource, a title, a description, a unit and queries."""
        assert [
            p for d in dashboards.values() for panel in panels(d) for p in lint_panel(d, panel)
        ] == []

    def test_query_rules(self, dashboards: dict[str, Dashboard]) -> None:
        """Every query filters on $job (and $target), uses contract metrics and sound windows."""
        problems = [
            p
            for d in dashboards.values()
            for panel, t in queries(d)
            for p in lint_query(d, panel, t)
        ]
        assert problems == []

    def test_every_dashboard_filters_on_target(self, dashboards: dict[str, Dashboard]) -> None:
        """The target variable is used by at least one query of every dashboard."""
        for dashboard in dashboards.values():
            exprs = [t["expr"] for _, t in queries(dashboard)]
            assert any('target=~"$target"' in e for e in exprs), dashboard["uid"]


def _fleet(dashboards: dict[str, Dashboard]) -> Dashboard:
    return copy.deepcopy(dashboards["sni-fleet-overview.json"])


class TestLinterCatchesMistakes:
    """Each rule, fed a broken copy of a real dashboard, reports it."""

    def test_inputs_with_ds_prometheus(self, dashboards: dict[str, Dashboard]) -> None:
        """A dashboard exported 'for sharing' (__inputs, ${DS_PROMETHEUS}) is rejected."""
        broken = _fleet(dashboards)
        broken["__inputs"] = [{"name": "DS_PROMETHEUS", "type": "datasource"}]
        broken["panels"][0]["datasource"] = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert any("__inputs" in p for p in lint_dashboard(broken))
        assert any("datasource must be" in p for p in lint_panel(broken, broken["panels"][0]))

    def test_old_schema(self, dashboards: dict[str, Dashboard]) -> None:
        """A schemaVersion below 39 is rejected."""
        broken = _fleet(dashboards)
        broken["schemaVersion"] = 27
        assert any("schemaVersion" in p for p in lint_dashboard(broken))

    def test_missing_or_wrong_variables(self, dashboards: dict[str, Dashboard]) -> None:
        """Missing datasource/job variables and a single-select job are reported."""
        broken = _fleet(dashboards)
        broken["templating"]["list"] = [
            v for v in broken["templating"]["list"] if v["name"] != "datasource"
        ]
        assert any("no 'datasource' variable" in p for p in lint_dashboard(broken))
        broken = _fleet(dashboards)
        job = next(v for v in broken["templating"]["list"] if v["name"] == "job")
        job["multi"] = False
        job["refresh"] = 1
        problems = lint_dashboard(broken)
        assert any("multi-select" in p for p in problems)
        assert any("refresh" in p for p in problems)

    def test_unused_variable(self, dashboards: dict[str, Dashboard]) -> None:
        """A variable no panel or variable refers to is reported."""
        broken = _fleet(dashboards)
        broken["templating"]["list"].append({"name": "orphan", "type": "custom", "query": "a,b"})
        assert any("'orphan' is never used" in p for p in lint_dashboard(broken))

    def test_panel_without_unit_or_description(self, dashboards: dict[str, Dashboard]) -> None:
        """A panel without unit or description is reported."""
        broken = _fleet(dashboards)
        panel = broken["panels"][0]
        del panel["fieldConfig"]["defaults"]["unit"]
        panel["description"] = ""
        problems = lint_panel(broken, panel)
        assert any("unit" in p for p in problems)
        assert any("no description" in p for p in problems)

    def test_query_without_job_or_target_matcher(self, dashboards: dict[str, Dashboard]) -> None:
        """Selectors without job=~"$job", or per-target ones without target=~"$target", fail."""
        broken = _fleet(dashboards)
        panel = broken["panels"][0]
        panel["targets"][0]["expr"] = 'count(max by (target) (sni_required{job="x"}))'
        problems = lint_query(broken, panel, panel["targets"][0])
        assert any('job=~"$job"' in p for p in problems)
        assert any('target=~"$target"' in p for p in problems)

    @pytest.mark.parametrize(
        ("expr", "needle"),
        [
            ('sum(rate(sni_exporter_probes_total{job=~"$job"}[5m]))', "$__rate_interval"),
            ('sum(increase(sni_exporter_probes_total{job=~"$job"}[1m]))', "4 scrapes"),
            ('sum(increase(sni_exporter_probes_total{job=~"$job"}[$__interval]))', "4 scrape"),
        ],
    )
    def test_unsound_windows(
        self, dashboards: dict[str, Dashboard], expr: str, needle: str
    ) -> None:
        """rate() without $__rate_interval and short literal windows are reported."""
        broken = _fleet(dashboards)
        panel = broken["panels"][0]
        panel["targets"][0]["expr"] = expr
        assert any(needle in p for p in lint_query(broken, panel, panel["targets"][0]))

    def test_sound_windows_pass(self, dashboards: dict[str, Dashboard]) -> None:
        """$__rate_interval, $__range and a 10m literal window in increase() are fine."""
        fleet = _fleet(dashboards)
        panel = fleet["panels"][0]
        for expr in (
            'sum(rate(sni_exporter_probes_total{job=~"$job"}[$__rate_interval]))',
            'sum(increase(sni_exporter_probes_total{job=~"$job"}[$__range]))',
            'sum(increase(sni_exporter_probes_total{job=~"$job"}[10m]))',
        ):
            panel["targets"][0]["expr"] = expr
            assert lint_query(fleet, panel, panel["targets"][0]) == [], expr

    def test_metric_outside_the_contract(self, dashboards: dict[str, Dashboard]) -> None:
        """A metric the exporter does not export (e.g. blackbox's) is reported."""
        broken = _fleet(dashboards)
        panel = broken["panels"][0]
        panel["targets"][0]["expr"] = 'max(probe_ssl_earliest_cert_expiry{job=~"$job"})'
        assert any(
            "not in the metric contract" in p
            for p in lint_query(broken, panel, panel["targets"][0])
        )

    def test_per_target_query_split_by_instance(self, dashboards: dict[str, Dashboard]) -> None:
        """Per-target queries that keep instance, or do not aggregate, are reported."""
        broken = _fleet(dashboards)
        panel = broken["panels"][0]
        for expr, needle in (
            (
                'max by (target, instance) (sni_required{job=~"$job", target=~"$target"})',
                "instance",
            ),
            ('sni_required{job=~"$job", target=~"$target"}', "must aggregate"),
        ):
            panel["targets"][0]["expr"] = expr
            assert any(needle in p for p in lint_query(broken, panel, panel["targets"][0])), expr

    def test_unknown_function_and_unbalanced_parens(self, dashboards: dict[str, Dashboard]) -> None:
        """A misspelt function or unbalanced parentheses are reported."""
        broken = _fleet(dashboards)
        panel = broken["panels"][0]
        for expr, needle in (
            (
                'sum(rat(sni_exporter_probes_total{job=~"$job"}[$__rate_interval]))',
                "unknown function",
            ),
            ('sum(max by (target) (sni_required{job=~"$job", target=~"$target"})', "unbalanced"),
        ):
            panel["targets"][0]["expr"] = expr
            assert any(needle in p for p in lint_query(broken, panel, panel["targets"][0])), expr

    def test_table_join_on_a_label_a_query_lacks(self, dashboards: dict[str, Dashboard]) -> None:
        """A joined table whose query does not aggregate by the join label is reported."""
        broken = _fleet(dashboards)
        table = next(p for p in panels(broken) if p["title"] == "Endpoints")
        table["targets"][1]["expr"] = (
            'max by (sni_subject) (label_replace(sni_certificate_info{job=~"$job", '
            'target=~"$target", sni="true"}, "sni_subject", "$1", "subject", "(.*)"))'
        )
        assert any("join field 'target'" in p for p in lint_panel(broken, table))

    def test_override_naming_a_missing_query(self, dashboards: dict[str, Dashboard]) -> None:
        """An override for 'Value #X' whose query was removed is reported."""
        broken = _fleet(dashboards)
        table = next(p for p in panels(broken) if p["title"] == "Endpoints")
        table["targets"] = [t for t in table["targets"] if t["refId"] != "H"]
        assert any("'Value #H' names no query" in p for p in lint_panel(broken, table))
