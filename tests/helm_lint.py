"""Lint and render the Helm chart with Helm's own Go library (helm-sdkpy).

Runs under ``.venv-helm/bin/python`` (helm-sdkpy needs Python >= 3.12; the
venv comes from ``make helm-venv``); tests/test_helm.py drives it.

For each case (the chart's defaults, every ``ci/*-values.yaml``, and any
extra cases given as JSON on stdin with ``--json``):

1. **lint**: a temporary copy of the chart whose ``values.yaml`` is the
   chart's defaults merged with the case's values, as ``helm install -f``
   would merge them, goes through Helm's linter.  Helm's messages carry no
   text through the bindings, so a failure names the template and the
   values file instead.
2. **render**: helm-sdkpy offers no ``helm template``, so the chart is
   installed into a fake Kubernetes API server on loopback that answers
   discovery and accepts every object.  Helm renders with its real engine,
   schema validation included, and returns the release: its manifest and
   NOTES are the rendered output.

Without ``--json`` it prints one line per case and exits 1 when any lint or
render fails.  With ``--json`` it reads extra cases from stdin
(``[{"name", "values", "kube_version"}]``) and prints a JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Final

import yaml
from helm_sdkpy import Configuration, Install, Lint

# Run as a script under .venv-helm: make the repository importable for the shared merge.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helm_values import merge_values

CHART: Final = Path(__file__).resolve().parent.parent / "helm" / "sni-exporter"
RELEASE: Final = "demo"
NAMESPACE: Final = "monitoring"
DEFAULT_KUBE_VERSION: Final = "v1.31.0"
SEVERITY_ERROR: Final = 3
SEVERITY_NAMES: Final = {0: "unknown", 1: "info", 2: "warning", 3: "error"}


# --- A fake Kubernetes API server, just enough for `helm install` -------------

_GROUPS: Final = {
    "v1": [
        ("configmaps", "ConfigMap"),
        ("secrets", "Secret"),
        ("services", "Service"),
        ("serviceaccounts", "ServiceAccount"),
        ("pods", "Pod"),
    ],
    "apps/v1": [("deployments", "Deployment"), ("statefulsets", "StatefulSet")],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy")],
    "monitoring.coreos.com/v1": [
        ("servicemonitors", "ServiceMonitor"),
        ("podmonitors", "PodMonitor"),
        ("prometheusrules", "PrometheusRule"),
    ],
}


def _resource_list(group_version: str, resources: list[tuple[str, str]]) -> dict[str, Any]:
    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {"name": name, "singularName": "", "namespaced": True, "kind": kind, "verbs": verbs}
            for name, kind in resources
        ],
    }


def _discovery() -> dict[str, dict[str, Any]]:
    """Legacy (non-aggregated) discovery documents by path; client-go accepts them."""
    documents: dict[str, dict[str, Any]] = {
        "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    }
    groups = []
    for group_version, resources in _GROUPS.items():
        if group_version == "v1":
            documents["/api/v1"] = _resource_list(group_version, resources)
            continue
        group, version = group_version.split("/")
        entry = {"groupVersion": group_version, "version": version}
        groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
        documents[f"/apis/{group_version}"] = _resource_list(group_version, resources)
    documents["/apis"] = {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    return documents


class _FakeApi(BaseHTTPRequestHandler):
    """Answers discovery, lists nothing, finds nothing, and accepts every write."""

    discovery: ClassVar[dict[str, dict[str, Any]]] = _discovery()
    kube_version: ClassVar[str] = DEFAULT_KUBE_VERSION

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        """Quiet: the report says what matters."""

    def _send(self, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/version":
            major, minor = self.kube_version.lstrip("v").split(".")[:2]
            self._send(200, {"major": major, "minor": minor, "gitVersion": self.kube_version})
        elif path in self.discovery:
            self._send(200, self.discovery[path])
        elif "labelSelector=" in query:  # Helm's release history: none yet
            self._send(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []})
        else:
            self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "NotFound", "code": 404})  # fmt: skip

    def _accept(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        status = 201 if self.command == "POST" else 200
        if self.headers.get("Content-Type", "").startswith("application/json"):
            self._send(status, json.loads(body))
        else:
            # Helm writes its release record (a Secret) as protobuf; any
            # well-formed Secret will do as the answer.
            metadata = {"name": "release", "namespace": NAMESPACE}
            self._send(status, {"kind": "Secret", "apiVersion": "v1", "metadata": metadata})

    def do_POST(self) -> None:
        self._accept()

    def do_PUT(self) -> None:
        self._accept()

    def do_PATCH(self) -> None:
        self._accept()

    def do_DELETE(self) -> None:
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def _kubeconfig(port: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
    )


# --- Cases ------------------------------------------------------------------


@dataclass(slots=True)
class Case:
    name: str
    values: dict[str, Any]
    kube_version: str = DEFAULT_KUBE_VERSION
    lint: list[dict[str, Any]] = field(default_factory=list)
    lint_failure: str | None = None
    render_error: str | None = None
    manifests: list[dict[str, Any]] = field(default_factory=list)
    notes: str | None = None

    def report(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "values": self.values,
            "kube_version": self.kube_version,
            "lint": self.lint,
            "lint_failure": self.lint_failure,
            "render_error": self.render_error,
            "manifests": self.manifests,
            "notes": self.notes,
        }


def _chart_copy(workdir: Path, values: dict[str, Any]) -> Path:
    chart = workdir / "sni-exporter"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("ci"))
    (chart / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    return chart


def lint_case(case: Case, defaults: dict[str, Any]) -> None:
    merged = merge_values(defaults, case.values)
    with tempfile.TemporaryDirectory(prefix="helm-lint-") as workdir:
        chart = _chart_copy(Path(workdir), merged)
        try:
            result = asyncio.run(Lint(Configuration()).run(str(chart)))
        except Exception as error:  # the bindings raise ChartError and friends
            case.lint_failure = f"{type(error).__name__}: {error}"
            return
    case.lint = [
        {"severity": message.get("Severity", 0), "path": message.get("Path", "")}
        for message in result.get("Messages") or []
    ]
    errors = [m for m in case.lint if m["severity"] >= SEVERITY_ERROR]
    if errors or result.get("Errors"):
        # The bindings drop Helm's message text: say where, and with which values.
        paths = ", ".join(sorted({m["path"] for m in errors})) or "(no path)"
        case.lint_failure = f"helm lint: error in {paths} with values {case.name}"


def render_case(case: Case, api_port: int) -> None:
    # The chart is installed as a plain directory with the case's values given
    # as user values, like `helm install -f`, so Helm does the merging.
    _FakeApi.kube_version = case.kube_version
    config = Configuration(namespace=NAMESPACE, kubeconfig=_kubeconfig(api_port))
    try:
        release = asyncio.run(
            Install(config).run(RELEASE, str(CHART), values=case.values, wait=False, timeout=60)
        )
    except Exception as error:
        # Unlike lint, a failed install keeps Helm's message (file, line, reason).
        case.render_error = f"helm install (render): {error}"
        return
    case.manifests = [doc for doc in yaml.safe_load_all(release.get("manifest", "")) if doc]
    case.notes = (release.get("info") or {}).get("notes")


def ci_cases() -> list[Case]:
    return [Case("defaults", {})] + [
        Case(f"ci/{path.name}", yaml.safe_load(path.read_text()) or {})
        for path in sorted((CHART / "ci").glob("*-values.yaml"))
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="read extra cases on stdin")
    args = parser.parse_args()

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    cases = ci_cases()
    if args.json:
        cases += [
            Case(raw["name"], raw.get("values", {}), raw.get("kube_version", DEFAULT_KUBE_VERSION))
            for raw in json.load(sys.stdin)
        ]

    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for case in cases:
            lint_case(case, defaults)
            render_case(case, server.server_address[1])
    finally:
        server.shutdown()

    if args.json:
        json.dump([case.report() for case in cases], sys.stdout)
        return 0
    failed = False
    for case in cases:
        problems = [p for p in (case.lint_failure, case.render_error) if p]
        failed = failed or bool(problems)
        print(f"{case.name}: {'; '.join(problems) or 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
