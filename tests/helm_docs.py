"""Keep the Helm chart's generated parts in step with their sources.

Generated, and checked by tests/test_helm.py:

- ``files/dashboards/*.json`` and ``files/rules/sni-exporter.rules.yaml``:
  byte-equal copies of the repository's ``dashboards/`` files (Helm cannot
  read files outside the chart, so the chart carries copies);
- the values table in the chart's README, from the ``# --`` comments of
  values.yaml (helm-docs style: ``# -- text`` documents the next key, and
  ``# @default -- text`` replaces the shown default);
- the alerts table in the README and the ``prometheusRule.alerts`` part of
  values.schema.json, from the rule file and ``files/rules/thresholds.yaml``.

``python -m tests.helm_docs`` reports what is out of date (exit 1);
``--write`` regenerates it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parent.parent
CHART: Final = ROOT / "helm" / "sni-exporter"
SOURCE_DASHBOARDS: Final = ROOT / "dashboards"
RULES_NAME: Final = "sni-exporter.rules.yaml"
SEVERITIES: Final = ("critical", "warning", "info")

_KEY_LINE: Final = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")
_DOC_LINE: Final = re.compile(r"^\s*# -- ?(?P<text>.*)$")
_DEFAULT_LINE: Final = re.compile(r"^\s*# @default -- ?(?P<text>.*)$")


# --- values.yaml -> table -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValueDoc:
    key: str  # dotted path
    value: Any
    description: str
    default: str | None  # from "@default", else rendered from the value


def _lookup(values: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def value_docs(values_text: str) -> tuple[list[ValueDoc], list[str]]:
    """The documented keys of values.yaml, and the keys nothing documents."""
    values = yaml.safe_load(values_text)
    docs: list[ValueDoc] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    description: str | None = None
    default: str | None = None
    documented: set[str] = set()
    seen: list[str] = []
    for line in values_text.splitlines():
        if (match := _DEFAULT_LINE.match(line)) and description is not None:
            default = match["text"].strip()
            continue
        if match := _DOC_LINE.match(line):
            description, default = match["text"].strip(), None
            continue
        match = _KEY_LINE.match(line)
        if match is None:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([key for _, key in stack] + [match["key"]])
        try:
            _lookup(values, dotted)
        except (KeyError, TypeError):
            continue  # a key inside a list item (e.g. `cidr:` under `- ipBlock:`)
        stack.append((indent, match["key"]))
        seen.append(dotted)
        if description is not None:
            docs.append(ValueDoc(dotted, _lookup(values, dotted), description, default))
            documented.add(dotted)
        description = default = None

    def covered(dotted: str) -> bool:
        parts = dotted.split(".")
        return any(".".join(parts[:n]) in documented for n in range(1, len(parts) + 1))

    def is_section(value: Any) -> bool:
        return isinstance(value, dict) and bool(value)

    leaves = [key for key in seen if not is_section(_lookup(values, key))]
    return docs, [key for key in leaves if not covered(key)]


_TYPE_NAMES: Final = ((bool, "bool"), (int, "int"), (float, "float"), (str, "string"),
                      (list, "list"), (dict, "object"))  # fmt: skip


def _type_name(value: Any) -> str:
    # bool before int: True is an int to isinstance.
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)), "null")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def values_table(values_text: str) -> str:
    docs, _ = value_docs(values_text)
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for doc in docs:
        default = doc.default or f"`{json.dumps(doc.value, separators=(',', ':'))}`"
        cells = [f"`{doc.key}`", _type_name(doc.value), _cell(default), _cell(doc.description)]
        rows.append(f"| {' | '.join(cells)} |")
    return "\n".join(rows)


# --- rule file -> alerts table and schema -------------------------------------


@dataclass(frozen=True, slots=True)
class AlertRule:
    name: str
    severity: str
    duration: str
    summary: str
    expr: str
    settings_key: str  # where its values live under prometheusRule.alerts


def alert_rules(rules_text: str) -> list[AlertRule]:
    rules = [
        rule
        for group in yaml.safe_load(rules_text)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    names = [rule["alert"] for rule in rules]
    found = []
    for rule in rules:
        severity = rule.get("labels", {}).get("severity", "")
        key = rule["alert"] if names.count(rule["alert"]) == 1 else f"{rule['alert']}.{severity}"
        found.append(
            AlertRule(
                name=rule["alert"],
                severity=severity,
                duration=rule.get("for", "0s"),
                summary=rule.get("annotations", {}).get("summary", ""),
                expr=rule["expr"],
                settings_key=key,
            )
        )
    return found


def thresholds() -> dict[str, dict[str, dict[str, str]]]:
    loaded: dict[str, dict[str, dict[str, str]]] = yaml.safe_load(
        (CHART / "files" / "rules" / "thresholds.yaml").read_text()
    )
    return loaded


def threshold_defaults(rule: AlertRule) -> dict[str, str]:
    """The threshold values written in the rule's expression, by threshold name."""
    found = {}
    for name, spec in thresholds().get(rule.name, {}).items():
        match = re.search(spec["pattern"], rule.expr)
        found[name] = match.group(2) if match else "?"
    return found


def alerts_table(rules_text: str) -> str:
    rows = [
        "| Alert | Severity | For | Thresholds | Values key | Summary |",
        "|-------|----------|-----|------------|------------|---------|",
    ]
    for rule in alert_rules(rules_text):
        limits = ", ".join(f"`{k}`: {v}" for k, v in threshold_defaults(rule).items()) or "-"
        rows.append(
            f"| {rule.name} | {rule.severity} | {rule.duration} | {limits} "
            f"| `prometheusRule.alerts.{rule.settings_key}` | {_cell(rule.summary)} |"
        )
    return "\n".join(rows)


def alerts_schema(rules_text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON schema of prometheusRule.alerts and .alertExprOverrides."""
    rules = alert_rules(rules_text)

    def settings(name: str, *, nested: list[str]) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "enabled": {"type": "boolean", "description": "false drops the alert"},
            "severity": {"type": "string", "minLength": 1},
            "for": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"},
        }
        for threshold, spec in thresholds().get(name, {}).items():
            properties[threshold] = {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": spec["description"],
            }
        for severity in nested:
            properties[severity] = settings(name, nested=[])
        return {"type": "object", "additionalProperties": False, "properties": properties}

    names = sorted({rule.name for rule in rules})
    alerts = {
        "type": "object",
        "description": "Per-alert settings (generated from the rule file by tests/helm_docs.py)",
        "additionalProperties": False,
        "properties": {
            name: settings(
                name,
                nested=[r.severity for r in rules if r.name == name and r.settings_key != name],
            )
            for name in names
        },
    }
    overrides = {
        "type": "object",
        "description": "PromQL replacing an alert's expression (generated by tests/helm_docs.py)",
        "additionalProperties": False,
        "properties": {name: {"type": "string", "minLength": 1} for name in names},
    }
    return alerts, overrides


# --- putting it together --------------------------------------------------------


def _replace_section(text: str, marker: str, body: str) -> str:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, found, rest = text.partition(start)
    if not found or end not in rest:
        raise SystemExit(f"{CHART / 'README.md'}: markers {start} ... {end} are missing")
    return f"{head}{start}\n{body}\n{end}{rest.partition(end)[2]}"


def expected_files() -> dict[Path, bytes | None]:
    """Every generated file's expected content; None means it must not exist."""
    expected: dict[Path, bytes | None] = {}
    copies = CHART / "files" / "dashboards"
    sources = {path.name: path for path in sorted(SOURCE_DASHBOARDS.glob("*.json"))}
    for stale in copies.glob("*.json"):
        if stale.name not in sources:
            expected[stale] = None
    for name, path in sources.items():
        expected[copies / name] = path.read_bytes()
    rules_bytes = (SOURCE_DASHBOARDS / RULES_NAME).read_bytes()
    expected[CHART / "files" / "rules" / RULES_NAME] = rules_bytes
    rules_text = rules_bytes.decode()

    readme = (CHART / "README.md").read_text()
    readme = _replace_section(
        readme, "values-table", values_table((CHART / "values.yaml").read_text())
    )
    readme = _replace_section(readme, "alerts-table", alerts_table(rules_text))
    expected[CHART / "README.md"] = readme.encode()

    schema = json.loads((CHART / "values.schema.json").read_text())
    rule_props = schema["properties"]["prometheusRule"]["properties"]
    rule_props["alerts"], rule_props["alertExprOverrides"] = alerts_schema(rules_text)
    expected[CHART / "values.schema.json"] = (json.dumps(schema, indent=2) + "\n").encode()
    return expected


def out_of_date() -> list[Path]:
    stale = []
    for path, content in expected_files().items():
        current = path.read_bytes() if path.exists() else None
        if current != content:
            stale.append(path)
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="regenerate what is out of date")
    args = parser.parse_args()
    if not args.write:
        stale = out_of_date()
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)}")
        return 1 if stale else 0
    for path, content in expected_files().items():
        if content is None:
            path.unlink()
        elif not path.exists() or path.read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
