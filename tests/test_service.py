"""The exporter as a user runs it: a process probing the real fleet, scraped over HTTP."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exporter.demo.fleet import Fleet, Scenario
from tests.exporter_proc import Exporter, cli, free_port, one_error_line, running, wait_for

pytestmark = pytest.mark.slow


def write_config(
    path: Path, fleet: Fleet, scenarios: list[Scenario], interval: str = "60s", timeout: str = "1s"
) -> Path:
    doc = {
        "defaults": {"interval": interval, "timeout": timeout, "ca_file": str(fleet.ca_file)},
        "targets": [
            {"host": s.host, "port": s.port, "address": s.address, "labels": {"scenario": s.name}}
            for s in scenarios
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def exporter(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    """One exporter over the whole fleet, ready (first round done)."""
    config = write_config(
        tmp_path_factory.mktemp("svc") / "targets.yaml", fleet, list(fleet.scenarios)
    )
    with running(config) as proc:
        yield proc


def name_of(s: Scenario) -> str:
    return s.target.name


class TestHeadlineGauges:
    def test_sni_required_for_every_scenario(self, exporter: Exporter, fleet: Fleet) -> None:
        """sni_required is exactly what each fleet scenario predicts."""
        got = exporter.by_target("sni_required")
        assert got == {name_of(s): float(s.sni_required) for s in fleet.scenarios}

    def test_mismatch_for_every_scenario(self, exporter: Exporter, fleet: Fleet) -> None:
        """sni_certificate_mismatch is exactly what each fleet scenario predicts."""
        got = exporter.by_target("sni_certificate_mismatch")
        assert got == {name_of(s): float(s.certificate_mismatch) for s in fleet.scenarios}

    def test_handshake_errors_for_every_scenario(self, exporter: Exporter, fleet: Fleet) -> None:
        """One sni_handshake_error series per (target, mode), with the predicted reason."""
        got = {
            (dict(k)["target"], dict(k)["sni"]): (dict(k)["reason"], v)
            for k, v in exporter.series("sni_handshake_error").items()
        }
        want = {}
        for s in fleet.scenarios:
            for mode, expected in (("true", s.sni), ("false", s.no_sni)):
                reason = str(expected.reason) if expected.reason else "none"
                want[(name_of(s), mode)] = (reason, 0.0 if reason == "none" else 1.0)
        assert got == want

    def test_configured_labels_on_every_series(self, exporter: Exporter, fleet: Fleet) -> None:
        """The target's configured labels are on each of its series."""
        scenario_of = {name_of(s): s.name for s in fleet.scenarios}
        for name, labels, _ in exporter.samples():
            if "target" in labels:
                assert labels.get("scenario") == scenario_of[labels["target"]], name

    def test_exporter_metrics(self, exporter: Exporter, fleet: Fleet) -> None:
        """The exporter's own metrics describe the fleet and the successful load."""
        assert exporter.value("sni_exporter_targets") == len(fleet.scenarios)
        assert exporter.value("sni_exporter_config_last_reload_successful") == 1
        assert exporter.value("sni_exporter_shard_info", index="0", count="1") == 1
        assert exporter.value("sni_exporter_build_info") == 1
        probes = sum(exporter.series("sni_exporter_probes_total").values())
        assert probes >= len(fleet.scenarios)
        refused = exporter.value("sni_exporter_handshakes_total", sni="false", result="refused")
        assert refused is not None
        assert refused >= 1
        assert (exporter.value("sni_exporter_render_duration_seconds") or 0) > 0
        assert (exporter.value("sni_exporter_exposition_bytes") or 0) > 1000


class TestEndpoints:
    def test_promtool_accepts_real_output(self, exporter: Exporter) -> None:
        """promtool check metrics finds no problem in a real scrape."""
        _, body, _ = exporter.get("/metrics")
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=body, capture_output=True, check=False
        )
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        assert not check.stdout.strip(), check.stdout.decode()

    def test_gzip(self, exporter: Exporter) -> None:
        """With Accept-Encoding: gzip, the body is gzip and decodes to the same families."""
        status, body, headers = exporter.get("/metrics", headers={"Accept-Encoding": "gzip"})
        assert status == 200
        assert headers["Content-Encoding"] == "gzip"
        # Exactly one gzip member: curl and browsers stop after the first.
        inflater = zlib.decompressobj(wbits=31)
        text = inflater.decompress(body).decode()
        assert inflater.eof
        assert not inflater.unused_data
        assert "sni_required{" in text
        assert "sni_exporter_targets " in text

    def test_health_ready_landing(self, exporter: Exporter) -> None:
        """/-/healthy and /-/ready answer 200, / links to the metrics, unknown paths 404."""
        assert exporter.get("/-/healthy")[0] == 200
        assert exporter.get("/-/ready")[0] == 200
        status, body, headers = exporter.get("/")
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        assert b'href="/metrics"' in body
        assert exporter.get("/nope")[0] == 404
        assert exporter.get("/-/reload")[0] == 405

    def test_client_reset_is_not_a_traceback(self, exporter: Exporter) -> None:
        """A client that resets mid-request is logged quietly; scrapes go on."""
        with socket.create_connection(("127.0.0.1", exporter.port)) as sock:
            sock.sendall(b"GET /metr")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_for("the reset to be logged", lambda: "client connection failed" in exporter.log())
        assert "Traceback" not in exporter.log()
        assert exporter.get("/metrics")[0] == 200

    def test_content_type(self, exporter: Exporter) -> None:
        """/metrics declares the text exposition format 0.0.4."""
        _, _, headers = exporter.get("/metrics")
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


class TestReload:
    def test_add_remove_change_and_broken(self, fleet: Fleet, tmp_path: Path) -> None:
        """Reload adds and removes targets, keeps unchanged schedules, survives a bad file."""
        scenarios = {s.name: s for s in fleet.scenarios}
        keep, drop, add = (
            scenarios["nginx-single"],
            scenarios["nginx-reject"],
            scenarios["haproxy-strict-sni"],
        )
        config = write_config(tmp_path / "targets.yaml", fleet, [keep, drop])
        with running(config) as proc:
            assert set(proc.by_target("sni_required")) == {name_of(keep), name_of(drop)}
            first_run = proc.by_target("sni_probe_last_run_timestamp_seconds")[name_of(keep)]

            write_config(config, fleet, [keep, add])
            status, body = proc.reload()
            assert status == 200, body
            want = {name_of(keep): 0.0, name_of(add): 1.0}
            wait_for("the reloaded target set", lambda: proc.by_target("sni_required") == want)
            # Unchanged: not probed again before its time (interval 60s).
            again = proc.by_target("sni_probe_last_run_timestamp_seconds")[name_of(keep)]
            assert again == first_run
            assert proc.value("sni_exporter_targets") == 2

            config.write_text("targets:\n  - host: a.test\n    prot: 443\n")
            status, body = proc.reload()
            assert status == 500
            assert "prot" in body
            assert proc.value("sni_exporter_config_last_reload_successful") == 0
            assert proc.by_target("sni_required") == want  # the last good config stays
            proc.alive()

            # SIGHUP reloads too: a fixed file brings the success gauge back.
            write_config(config, fleet, [keep])
            proc.proc.send_signal(signal.SIGHUP)
            wait_for(
                "SIGHUP reload",
                lambda: (
                    proc.value("sni_exporter_config_last_reload_successful") == 1
                    and set(proc.by_target("sni_required")) == {name_of(keep)}
                ),
            )

    def test_changed_labels_leave_no_stale_series(self, fleet: Fleet, tmp_path: Path) -> None:
        """Changing a target's labels replaces its series; the old label set vanishes."""
        s = next(x for x in fleet.scenarios if x.name == "nginx-single")
        config = write_config(tmp_path / "targets.yaml", fleet, [s])
        with running(config) as proc:
            doc = yaml.safe_load(config.read_text())
            doc["targets"][0]["labels"] = {"scenario": "renamed"}
            config.write_text(yaml.safe_dump(doc))
            assert proc.reload()[0] == 200
            wait_for(
                "relabelled series",
                lambda: (
                    {dict(k).get("scenario") for k in proc.series("sni_probe_success")}
                    == {"renamed"}
                ),
            )

    def test_verdict_change_is_logged(self, fleet: Fleet, tmp_path: Path) -> None:
        """Moving a target to an address where it fails logs one info line with the change."""
        s = next(x for x in fleet.scenarios if x.name == "nginx-single")
        config = write_config(tmp_path / "targets.yaml", fleet, [s])
        with running(config) as proc:
            assert "verdict changed" not in proc.log()
            doc = yaml.safe_load(config.read_text())
            doc["targets"][0]["address"] = "127.0.0.2"  # the fleet listens on 127.0.0.1 only
            config.write_text(yaml.safe_dump(doc))
            assert proc.reload()[0] == 200
            line = wait_for(
                "the change in the log",
                lambda: next((x for x in proc.log().splitlines() if "verdict changed" in x), None),
            )
            assert "level=info" in line
            assert f"target={s.target.name}" in line
            assert "sni=refused" in line
            assert "address=127.0.0.2" in line


class TestLifecycle:
    def test_sigterm_is_graceful(self, fleet: Fleet, tmp_path: Path) -> None:
        """SIGTERM stops the exporter with status 0 and a shutdown log line."""
        s = next(x for x in fleet.scenarios if x.name == "nginx-single")
        with running(write_config(tmp_path / "t.yaml", fleet, [s])) as proc:
            assert proc.stop() == 0
            assert "shutting down" in proc.log()

    @pytest.mark.parametrize(
        ("content", "args", "expect"),
        [
            ("targets:\n  - host: a.test\n    port: 70000\n", (), "t.yaml:3"),
            ("targets: [a.test]\n", ("--web.listen-address", "nonsense"), "listen-address"),
            ("targets: [a.test]\n", ("--shard", "3/2"), "shard index"),
            ("targets: [a.test]\n", ("--web.telemetry-path", "metrics"), "telemetry-path"),
        ],
        ids=["bad-port-in-file", "bad-listen-address", "bad-shard", "bad-telemetry-path"],
    )
    def test_bad_input_is_one_line(
        self, tmp_path: Path, content: str, args: tuple[str, ...], expect: str
    ) -> None:
        """Bad files and flags exit non-zero with one line that names the problem, no traceback."""
        config = tmp_path / "t.yaml"
        config.write_text(content)
        listen = f"127.0.0.1:{free_port()}"
        line = one_error_line(
            cli("serve", "--config.file", str(config), "--web.listen-address", listen, *args)
        )
        assert expect in line

    def test_busy_port_is_one_line(self, tmp_path: Path, fleet: Fleet) -> None:
        """A port already in use fails at start with one line naming it."""
        s = next(x for x in fleet.scenarios if x.name == "nginx-single")
        config = write_config(tmp_path / "t.yaml", fleet, [s])
        with running(config) as first:
            listen = f"127.0.0.1:{first.port}"
            done = cli("serve", "--config.file", str(config), "--web.listen-address", listen)
        assert listen in one_error_line(done)
