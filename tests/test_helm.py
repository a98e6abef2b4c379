"""The Helm chart, linted and rendered by Helm's own library, and checked object by object.

tests/helm_lint.py runs under .venv-helm (helm-sdkpy needs Python >= 3.12): it
lints the chart with every values file and renders it by installing it into a
fake Kubernetes API server.  This module drives it once per session and
asserts on the rendered objects.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import jsonschema
import pytest
import yaml

import exporter
from exporter import cli
from exporter.shard import WHOLE_FLEET, Shard, parse_shard
from tests import helm_docs
from tests.helm_values import merge_values

ROOT: Final = Path(__file__).resolve().parent.parent
CHART: Final = ROOT / "helm" / "sni-exporter"
HELM_PYTHON: Final = ROOT / ".venv-helm" / "bin" / "python"
RULES: Final = ROOT / "dashboards" / "sni-exporter.rules.yaml"
FULLNAME: Final = "demo-sni-exporter"  # release "demo" in tests/helm_lint.py
NAMESPACE: Final = "monitoring"  # the release namespace in tests/helm_lint.py
PORT: Final = 9866
#: SNIExporterDown's selector in the rule file, which the chart sets to its release's job.
RULE_FILE_UP: Final = 'up{job=~".*sni-exporter.*"}'
#: A user's job regex with a backslash, to pin its escaping into a PromQL string.
JOB_SELECTOR: Final = r"(prod|staging)/tls-probe\.v2"

Manifest = dict[str, Any]
Case = dict[str, Any]


def _rule_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def _settings_keys() -> list[str]:
    return [rule.settings_key for rule in helm_docs.alert_rules(RULES.read_text())]


def _disable(settings_key: str) -> dict[str, Any]:
    """Values that switch off one alert (or one severity of an alert defined twice)."""
    settings: dict[str, Any] = {"enabled": False}
    for part in reversed(settings_key.split(".")):
        settings = {part: settings}
    return {"prometheusRule": {"alerts": settings}}


def _disable_all() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in _settings_keys():
        values = merge_values(values, _disable(key))
    return values


# Extra cases rendered next to the defaults and ci/*-values.yaml.
EXTRA_CASES: Final[list[dict[str, Any]]] = [
    {"name": "sharded-old-kube", "values": {"shards": 3}, "kube_version": "v1.27.9"},
    {"name": "both-monitors", "values": {"podMonitor": {"enabled": True}}},
    {"name": "sharded-with-replicas", "values": {"shards": 2, "replicas": 2}},
    {"name": "unknown-alert", "values": {"prometheusRule": {"alerts": {"SNIRequried": {}}}}},
    {
        "name": "bad-threshold",
        "values": {"prometheusRule": {"alerts": {"ProbesStale": {"intervals": -1}}}},
    },
    {
        "name": "expr-override",
        "values": {"prometheusRule": {"alertExprOverrides": {"SNIRequired": "vector(1)"}}},
    },
    {
        "name": "checksum-a",
        "values": {
            "configReloader": {"enabled": False},
            "config": {"targets": [{"host": "a.test"}]},
        },
    },
    {
        "name": "checksum-b",
        "values": {
            "configReloader": {"enabled": False},
            "config": {"targets": [{"host": "b.test"}]},
        },
    },
    {"name": "job-selector", "values": {"prometheusRule": {"jobSelector": JOB_SELECTOR}}},
    {"name": "own-scrape-config", "values": {"serviceMonitor": {"enabled": False}}},
    {"name": "all-alerts-off", "values": _disable_all()},
    *[{"name": f"off:{key}", "values": _disable(key)} for key in _settings_keys()],
]


@pytest.fixture(scope="session")
def rendered() -> dict[str, Case]:
    """Every case, linted and rendered by tests/helm_lint.py under .venv-helm."""
    assert HELM_PYTHON.exists(), f"{HELM_PYTHON} is missing: run `make helm-venv`"
    done = subprocess.run(
        [str(HELM_PYTHON), str(ROOT / "tests" / "helm_lint.py"), "--json"],
        input=json.dumps(EXTRA_CASES),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {case["name"]: case for case in json.loads(done.stdout)}


def _ok(rendered: dict[str, Case], name: str) -> Case:
    case = rendered[name]
    assert case["lint_failure"] is None, f"{name}: {case['lint_failure']}"
    assert case["render_error"] is None, f"{name}: {case['render_error']}"
    return case


def _objects(case: Case, kind: str) -> list[Manifest]:
    return [m for m in case["manifests"] if m["kind"] == kind]


def _one(case: Case, kind: str) -> Manifest:
    found = _objects(case, kind)
    assert len(found) == 1, f"{case['name']}: {len(found)} {kind} objects"
    return found[0]


def _workload(case: Case) -> Manifest:
    found = _objects(case, "Deployment") + _objects(case, "StatefulSet")
    assert len(found) == 1
    return found[0]


def _container(case: Case, name: str = "sni-exporter") -> dict[str, Any]:
    containers = _workload(case)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _ci_names() -> list[str]:
    return ["defaults"] + [f"ci/{p.name}" for p in sorted((CHART / "ci").glob("*-values.yaml"))]


def _defaults() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


class TestLint:
    def test_there_are_ci_values_files(self) -> None:
        """The chart carries several ci/*-values.yaml scenarios to lint."""
        assert len(_ci_names()) >= 6

    @pytest.mark.parametrize("name", _ci_names())
    def test_lints_and_renders(self, rendered: dict[str, Case], name: str) -> None:
        """Helm lints and renders the chart with this values file without an error."""
        case = _ok(rendered, name)
        assert case["lint"], "the linter reported nothing at all: was the chart linted?"
        assert case["manifests"]

    @pytest.mark.parametrize(
        ("name", "fragment"),
        [
            ("sharded-old-kube", "needs Kubernetes >= 1.28"),
            ("both-monitors", "enable one of them"),
            ("sharded-with-replicas", "set replicas to 1"),
            ("unknown-alert", "SNIRequried"),
            ("bad-threshold", "intervals"),
        ],
    )
    def test_refuses_bad_values(self, rendered: dict[str, Case], name: str, fragment: str) -> None:
        """Contradictory or invalid values stop the install with a message saying why."""
        error = rendered[name]["render_error"]
        assert error is not None
        assert fragment in error


class TestSchema:
    def _validator(self) -> jsonschema.Draft7Validator:
        schema = json.loads((CHART / "values.schema.json").read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
        return jsonschema.Draft7Validator(schema)

    @pytest.mark.parametrize("name", _ci_names())
    def test_values_files_are_valid(self, name: str) -> None:
        """The defaults and every ci values file, merged as Helm does, satisfy the schema."""
        override = {} if name == "defaults" else yaml.safe_load((CHART / name).read_text())
        errors = list(self._validator().iter_errors(merge_values(_defaults(), override)))
        assert not errors, [e.message for e in errors]

    @pytest.mark.parametrize(
        "override",
        [
            {"shards": 0},
            {"shards": "3"},
            {"replicas": -1},
            {"port": 70000},
            {"logLevel": "verbose"},
            {"imag": {}},
            {"image": {"digest": "latest"}},
            {"serviceMonitor": {"interval": "30 seconds"}},
            {"podDisruptionBudget": {"maxUnavailable": "half"}},
            {"prometheusRule": {"alerts": {"SNIRequired": {"enable": False}}}},
            {"prometheusRule": {"alerts": {"CertificateExpiringSoon": {"warning": {"days": 0}}}}},
            {"prometheusRule": {"alertExprOverrides": {"NoSuchAlert": "vector(1)"}}},
            {"config": {"targets": [{"port": 443}]}},
        ],
    )
    def test_bad_values_are_rejected(self, override: dict[str, Any]) -> None:
        """Typos, wrong types and out-of-range values fail schema validation."""
        assert list(self._validator().iter_errors(merge_values(_defaults(), override)))

    def test_every_value_is_in_the_schema(self) -> None:
        """Every key of values.yaml is declared in the schema (unknown keys are rejected)."""
        schema = json.loads((CHART / "values.schema.json").read_text())

        def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
            if node.get("additionalProperties") is not False:
                return  # a free-form object (resources, config, affinity, ...)
            properties = node["properties"]
            for key, value in values.items():
                assert key in properties, f"{path}{key} is not in values.schema.json"
                if isinstance(value, dict):
                    walk(value, properties[key], f"{path}{key}.")

        walk(_defaults(), schema, "")
        assert schema["additionalProperties"] is False


class TestWorkload:
    def test_unsharded_is_a_deployment_without_shard(self, rendered: dict[str, Case]) -> None:
        """With shards: 1 the exporter runs as a Deployment probing every target."""
        case = _ok(rendered, "defaults")
        assert _objects(case, "StatefulSet") == []
        deployment = _one(case, "Deployment")
        assert deployment["spec"]["replicas"] == 1
        args = _container(case)["args"]
        assert args[:2] == ["serve", "--config.file=/etc/sni-exporter/targets.yaml"]
        assert f"--web.listen-address=:{PORT}" in args
        assert not any(arg.startswith("--shard") for arg in args)

    def test_sharded_is_a_statefulset_taking_its_index_from_the_ordinal(
        self, rendered: dict[str, Case]
    ) -> None:
        """shards: 3 renders 3 StatefulSet pods started with --shard $(pod-index)/3."""
        case = _ok(rendered, "ci/sharded-values.yaml")
        assert _objects(case, "Deployment") == []
        statefulset = _one(case, "StatefulSet")
        assert statefulset["spec"]["replicas"] == 3
        assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
        assert statefulset["spec"]["serviceName"] == _one(case, "Service")["metadata"]["name"]
        container = _container(case)
        assert "--shard=$(SHARD_INDEX)/3" in container["args"]
        assert "--probe.concurrency=200" in container["args"]
        env = {e["name"]: e for e in container["env"]}
        field = env["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "metadata.labels['apps.kubernetes.io/pod-index']"

    @pytest.mark.parametrize("name", _ci_names())
    def test_the_exporter_accepts_the_rendered_arguments(
        self, rendered: dict[str, Case], name: str
    ) -> None:
        """The CLI parses the container's arguments, shard included (pod 1's expansion)."""
        case = _ok(rendered, name)
        argv = [arg.replace("$(SHARD_INDEX)", "1") for arg in _container(case)["args"]]
        args = cli.build_parser().parse_args(argv)
        assert args.command == "serve"
        shards = int(case["values"].get("shards", 1))
        expected = Shard(1, shards) if shards > 1 else WHOLE_FLEET
        assert parse_shard(args.shard) == expected

    @pytest.mark.parametrize("name", _ci_names())
    def test_pods_are_locked_down(self, rendered: dict[str, Case], name: str) -> None:
        """Every container runs non-root, read-only, without capabilities, under seccomp."""
        pod = _workload(_ok(rendered, name))["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert context["runAsNonRoot"] is True
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]["memory"]

    def test_probes_ports_and_image(self, rendered: dict[str, Case]) -> None:
        """Health probes hit /-/healthy and /-/ready on 9866; the image is the appVersion."""
        container = _container(_ok(rendered, "defaults"))
        assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}
        assert container["ports"] == [{"name": "metrics", "containerPort": PORT, "protocol": "TCP"}]
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        assert chart["apiVersion"] == "v2"
        assert chart["appVersion"] == exporter.__version__
        assert container["image"] == f"ghcr.io/sni-exporter/sni-exporter:{exporter.__version__}"

    def test_digest_pins_the_image(self, rendered: dict[str, Case]) -> None:
        """With image.digest set the image is pulled by digest."""
        container = _container(_ok(rendered, "ci/podmonitor-networkpolicy-values.yaml"))
        assert container["image"] == "ghcr.io/sni-exporter/sni-exporter@sha256:" + "0" * 64

    def test_labels_select_the_pods(self, rendered: dict[str, Case]) -> None:
        """The Service, PDB and workload select the pods by the chart's selector labels."""
        case = _ok(rendered, "defaults")
        workload = _workload(case)
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector == {
            "app.kubernetes.io/name": "sni-exporter",
            "app.kubernetes.io/instance": "demo",
        }
        assert selector.items() <= pod_labels.items()
        service = _one(case, "Service")
        assert service["spec"]["selector"] == selector
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["ports"][0]["port"] == PORT
        assert _one(case, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
        for manifest in case["manifests"]:
            assert selector.items() <= manifest["metadata"]["labels"].items(), manifest["kind"]


class TestConfig:
    def test_targets_are_rendered_into_the_configmap(self, rendered: dict[str, Case]) -> None:
        """`config` becomes targets.yaml in the mounted ConfigMap, as written."""
        case = _ok(rendered, "ci/default-values.yaml")
        configmap = next(
            m for m in _objects(case, "ConfigMap") if m["metadata"]["name"] == FULLNAME
        )
        text = configmap["data"]["targets.yaml"]
        values = yaml.safe_load((CHART / "ci" / "default-values.yaml").read_text())
        assert yaml.safe_load(text) == values["config"]
        pod = _workload(case)["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "config")
        assert volume["configMap"]["name"] == FULLNAME
        mount = next(m for m in _container(case)["volumeMounts"] if m["name"] == "config")
        # A directory mount: subPath mounts never see ConfigMap updates.
        assert mount == {"name": "config", "mountPath": "/etc/sni-exporter", "readOnly": True}

    @pytest.mark.parametrize(
        "name", ["defaults", "ci/default-values.yaml", "ci/sharded-values.yaml"]
    )
    def test_rendered_targets_file_is_accepted_by_the_exporter(
        self, rendered: dict[str, Case], name: str
    ) -> None:
        """The exporter's own config parser accepts the targets.yaml the chart renders."""
        from exporter.config import parse_config  # noqa: PLC0415 (config lands separately)

        case = _ok(rendered, name)
        configmap = next(
            m for m in _objects(case, "ConfigMap") if m["metadata"]["name"] == FULLNAME
        )
        parse_config(configmap["data"]["targets.yaml"], f"{name}: targets.yaml")

    def test_existing_configmap_is_mounted_instead(self, rendered: dict[str, Case]) -> None:
        """With existingConfigMap the chart creates no targets ConfigMap and mounts that one."""
        case = _ok(rendered, "ci/existing-configmap-values.yaml")
        names = [m["metadata"]["name"] for m in _objects(case, "ConfigMap")]
        assert FULLNAME not in names
        pod = _workload(case)["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "config")
        assert volume["configMap"] == {
            "name": "fleet-targets",
            "items": [{"key": "fleet.yaml", "path": "targets.yaml"}],
        }
        assert _workload(case)["spec"]["replicas"] == 2

    def test_reload_sidecar_posts_reload(self, rendered: dict[str, Case]) -> None:
        """By default a sidecar watching the config directory POSTs /-/reload; no rollout."""
        case = _ok(rendered, "defaults")
        reloader = _container(case, "config-reloader")
        assert "--volume-dir=/etc/sni-exporter" in reloader["args"]
        assert f"--webhook-url=http://127.0.0.1:{PORT}/-/reload" in reloader["args"]
        assert "--webhook-method=POST" in reloader["args"]
        template = _workload(case)["spec"]["template"]
        assert "checksum/config" not in template["metadata"].get("annotations", {})

    def test_without_sidecar_a_checksum_rolls_the_pods(self, rendered: dict[str, Case]) -> None:
        """With the sidecar off, the pod template's checksum follows the targets."""
        checksums = []
        for name in ("checksum-a", "checksum-b"):
            case = _ok(rendered, name)
            names = [c["name"] for c in _workload(case)["spec"]["template"]["spec"]["containers"]]
            assert names == ["sni-exporter"]
            checksums.append(
                _workload(case)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            )
        assert checksums[0] != checksums[1]


class TestMonitoring:
    def test_servicemonitor_scrapes_the_service(self, rendered: dict[str, Case]) -> None:
        """The default ServiceMonitor selects the Service and scrapes its metrics port."""
        case = _ok(rendered, "defaults")
        monitor = _one(case, "ServiceMonitor")
        service = _one(case, "Service")
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        endpoint = monitor["spec"]["endpoints"][0]
        assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
        assert endpoint["path"] == "/metrics"
        assert _objects(case, "PodMonitor") == []

    def test_podmonitor_replaces_servicemonitor(self, rendered: dict[str, Case]) -> None:
        """podMonitor.enabled with serviceMonitor off renders a PodMonitor only."""
        case = _ok(rendered, "ci/podmonitor-networkpolicy-values.yaml")
        assert _objects(case, "ServiceMonitor") == []
        monitor = _one(case, "PodMonitor")
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
        assert monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "60s"

    def test_everything_off_renders_only_the_exporter(self, rendered: dict[str, Case]) -> None:
        """With every option off: a Deployment, its Service and its ConfigMap."""
        case = _ok(rendered, "ci/all-off-values.yaml")
        assert sorted(m["kind"] for m in case["manifests"]) == [
            "ConfigMap",
            "Deployment",
            "Service",
        ]
        pod = _workload(case)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "default"

    def test_selected_by_the_operator_release_label(self, rendered: dict[str, Case]) -> None:
        """Extra labels reach the ServiceMonitor and PrometheusRule for the operator's selectors."""
        case = _ok(rendered, "ci/existing-configmap-values.yaml")
        for kind in ("ServiceMonitor", "PrometheusRule"):
            assert _one(case, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    def test_network_policy_and_disruption_budget(self, rendered: dict[str, Case]) -> None:
        """The NetworkPolicy admits scrapes and restricts egress; the PDB honours minAvailable."""
        case = _ok(rendered, "ci/podmonitor-networkpolicy-values.yaml")
        policy = _one(case, "NetworkPolicy")["spec"]
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        assert policy["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        assert policy["ingress"][0]["from"][0]["namespaceSelector"]
        dns, probes = policy["egress"]
        assert {p["port"] for p in dns["ports"]} == {53}
        assert [p["port"] for p in probes["ports"]] == [443, 8443]
        assert _one(case, "PodDisruptionBudget")["spec"] == {
            "selector": _workload(case)["spec"]["selector"],
            "minAvailable": 1,
        }
        defaults = _ok(rendered, "defaults")
        assert _objects(defaults, "NetworkPolicy") == []
        assert _one(defaults, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1

    def test_notes_say_how_it_runs(self, rendered: dict[str, Case]) -> None:
        """NOTES.txt renders and says whether the release is sharded."""
        assert "Sharded: a StatefulSet of 3 pods" in (
            _ok(rendered, "ci/sharded-values.yaml")["notes"] or ""
        )
        notes = _ok(rendered, "defaults")["notes"] or ""
        assert "No targets are configured yet" in notes
        assert f"port-forward svc/{FULLNAME} {PORT}" in notes


def _rule_file_expr(name: str) -> str:
    (expr,) = [
        r["expr"] for g in _rule_file()["groups"] for r in g["rules"] if r.get("alert") == name
    ]
    return str(expr)


def _alerts(case: Case) -> list[dict[str, Any]]:
    rule = _one(case, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]


def _promtool_check(groups: list[dict[str, Any]], tmp_path: Path) -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    path = tmp_path / "rendered.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _with_up_selector(groups: list[dict[str, Any]], selector: str) -> list[dict[str, Any]]:
    """``groups`` with the rule file's `up{...}` selector replaced by ``selector``."""
    out = copy.deepcopy(groups)
    for group in out:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace(RULE_FILE_UP, selector)
    return out


def _promtool_test(groups: list[dict[str, Any]], tests: dict[str, Any], tmp_path: Path) -> None:
    """Run ``tests`` (one promtool unit-test group) against the rendered ``groups``."""
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    (tmp_path / "rendered.rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    suite = {"rule_files": ["rendered.rules.yaml"], "evaluation_interval": "1m", "tests": [tests]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(suite))
    done = subprocess.run(
        [promtool, "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


class TestRules:
    def test_default_rules_equal_the_rule_file(self, rendered: dict[str, Case]) -> None:
        """With default values the PrometheusRule holds the repository's rule file, only
        SNIExporterDown's job set to the release's."""
        rule = _one(_ok(rendered, "defaults"), "PrometheusRule")
        assert RULE_FILE_UP in RULES.read_text()
        expected = _with_up_selector(_rule_file()["groups"], f'up{{job=~"{FULLNAME}"}}')
        assert rule["spec"]["groups"] == expected

    @pytest.mark.parametrize(
        ("name", "selector"),
        [
            # the operator names a ServiceMonitor's job after the Service: the full name
            ("defaults", f'up{{job=~"{FULLNAME}"}}'),
            # and a PodMonitor's NAMESPACE/NAME
            ("ci/podmonitor-networkpolicy-values.yaml", f'up{{job=~"{NAMESPACE}/{FULLNAME}"}}'),
            # prometheusRule.jobSelector wins, escaped as a PromQL string
            ("job-selector", 'up{job=~"(prod|staging)/tls-probe\\\\.v2"}'),
            # no monitor of the chart's: the rule file's own selector stays
            ("own-scrape-config", RULE_FILE_UP),
        ],
    )
    def test_exporter_down_watches_the_releases_job(
        self, rendered: dict[str, Case], name: str, selector: str
    ) -> None:
        """SNIExporterDown's `up` selector is the job the chart's monitor gives its pods."""
        (alert,) = [a for a in _alerts(_ok(rendered, name)) if a["alert"] == "SNIExporterDown"]
        assert alert["expr"] == _rule_file_expr("SNIExporterDown").replace(RULE_FILE_UP, selector)

    def test_job_selector_is_matched_as_written(
        self, rendered: dict[str, Case], tmp_path: Path
    ) -> None:
        """A jobSelector regex reaches Prometheus intact: its escaped dot matches only a dot."""
        groups = _one(_ok(rendered, "job-selector"), "PrometheusRule")["spec"]["groups"]
        down = {"alertname": "SNIExporterDown", "severity": "warning"}
        tests = {
            "interval": "1m",
            "input_series": [
                {"series": 'up{job="staging/tls-probe.v2", instance="a"}', "values": "0x10"},
                {"series": 'up{job="staging/tls-probe-v2", instance="b"}', "values": "0x10"},
                {"series": 'up{job="demo-sni-exporter", instance="c"}', "values": "0x10"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "SNIExporterDown",
                    "exp_alerts": [{"exp_labels": {**down, "job": "staging/tls-probe.v2"}}],
                }
            ],
        }
        # promtool compares annotations too: drop them, the labels are under test here.
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations", None)
        _promtool_test(groups, tests, tmp_path)

    @pytest.mark.parametrize("settings_key", _settings_keys())
    def test_each_alert_can_be_switched_off(
        self, rendered: dict[str, Case], settings_key: str
    ) -> None:
        """Disabling one alert removes exactly that rule and keeps every other."""
        expected = [
            (rule.name, rule.severity)
            for rule in helm_docs.alert_rules(RULES.read_text())
            if rule.settings_key != settings_key
        ]
        alerts = _alerts(_ok(rendered, f"off:{settings_key}"))
        assert [(a["alert"], a["labels"]["severity"]) for a in alerts] == expected

    def test_all_alerts_off_renders_no_rule(self, rendered: dict[str, Case]) -> None:
        """With every alert switched off no empty PrometheusRule is created."""
        assert _objects(_ok(rendered, "all-alerts-off"), "PrometheusRule") == []

    def test_thresholds_severity_and_for_are_values(
        self, rendered: dict[str, Case], tmp_path: Path
    ) -> None:
        """Threshold, severity, `for` and extra labels from values reach the rendered alerts."""
        case = _ok(rendered, "ci/sharded-values.yaml")
        alerts = _alerts(case)
        by_key = {(a["alert"], a["labels"]["severity"]): a for a in alerts}
        warning = by_key["CertificateExpiringSoon", "warning"]
        critical = by_key["CertificateExpiringSoon", "critical"]
        assert "< 21 * 86400" in warning["expr"]
        assert warning["for"] == "15m"
        assert "< 7 * 86400" in critical["expr"]
        assert critical["for"] == "30m"
        stale = by_key["ProbesStale", "critical"]
        assert "> 5 * max without (instance, pod) (sni_probe_interval_seconds)" in stale["expr"]
        assert "CertificateMismatch" not in {a["alert"] for a in alerts}
        assert all(a["labels"]["team"] == "platform" for a in alerts)
        groups = _one(case, "PrometheusRule")["spec"]["groups"]
        _promtool_check(groups, tmp_path)

    def test_expression_override(self, rendered: dict[str, Case], tmp_path: Path) -> None:
        """alertExprOverrides replaces one alert's expression and nothing else."""
        case = _ok(rendered, "expr-override")
        exprs = {a["alert"]: a["expr"] for a in _alerts(case)}
        assert exprs["SNIRequired"] == "vector(1)"
        original = {r["alert"]: r["expr"] for g in _rule_file()["groups"] for r in g["rules"]}
        assert exprs["ConfigReloadFailed"] == original["ConfigReloadFailed"]
        _promtool_check(_one(case, "PrometheusRule")["spec"]["groups"], tmp_path)

    def test_every_threshold_pattern_matches_its_rules_once(self) -> None:
        """Each threshold of thresholds.yaml is found exactly once in every rule of its alert."""
        thresholds = helm_docs.thresholds()
        rules = helm_docs.alert_rules(RULES.read_text())
        assert set(thresholds) <= {rule.name for rule in rules}
        for rule in rules:
            for name, spec in thresholds.get(rule.name, {}).items():
                matches = re.findall(spec["pattern"], rule.expr)
                assert len(matches) == 1, f"{rule.settings_key}.{name}: {len(matches)} matches"


class TestDashboards:
    def test_one_configmap_per_dashboard_for_the_sidecar(self, rendered: dict[str, Case]) -> None:
        """Each dashboards/*.json ships verbatim in a ConfigMap labelled grafana_dashboard=1."""
        sources = sorted((ROOT / "dashboards").glob("*.json"))
        assert sources, "dashboards/*.json: no dashboards to ship"
        case = _ok(rendered, "defaults")
        shipped = {}
        for configmap in _objects(case, "ConfigMap"):
            if configmap["metadata"]["labels"].get("grafana_dashboard") == "1":
                (name, text), *rest = configmap["data"].items()
                assert rest == []
                shipped[name] = json.loads(text)
        assert shipped == {path.name: json.loads(path.read_text()) for path in sources}

    def test_dashboards_can_go_to_grafanas_namespace(self, rendered: dict[str, Case]) -> None:
        """grafanaDashboards.namespace and annotations reach the dashboard ConfigMaps."""
        case = _ok(rendered, "ci/existing-configmap-values.yaml")
        dashboards = [
            m for m in _objects(case, "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]
        ]
        assert dashboards
        for configmap in dashboards:
            assert configmap["metadata"]["namespace"] == "monitoring"
            assert configmap["metadata"]["annotations"] == {"grafana_folder": "TLS"}


class TestOneSourceOfTruth:
    def test_chart_copies_equal_the_top_level_files(self) -> None:
        """files/ in the chart holds byte-equal copies of dashboards/*.json and the rule file."""
        copies = CHART / "files"
        sources = [*sorted((ROOT / "dashboards").glob("*.json")), RULES]
        for source in sources:
            sub = "dashboards" if source.suffix == ".json" else "rules"
            assert (copies / sub / source.name).read_bytes() == source.read_bytes(), source.name
        assert sorted(p.name for p in (copies / "dashboards").glob("*.json")) == sorted(
            p.name for p in sources if p.suffix == ".json"
        )

    def test_generated_parts_are_up_to_date(self) -> None:
        """README tables and the schema's alert part match their sources (helm_docs --write)."""
        stale = [str(path.relative_to(ROOT)) for path in helm_docs.out_of_date()]
        assert stale == [], "run: .venv/bin/python -m tests.helm_docs --write"

    def test_every_value_is_documented(self) -> None:
        """Every value in values.yaml has a `# --` description, itself or on its section."""
        docs, undocumented = helm_docs.value_docs((CHART / "values.yaml").read_text())
        assert undocumented == []
        assert len(docs) > 50
