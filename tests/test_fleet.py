"""The demo fleet itself: its table matches targets.yaml; it starts, stops, wraps a command."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from OpenSSL import SSL

from exporter.demo import fleet as fleet_module
from exporter.demo.fleet import SCENARIOS, Fleet, FleetError
from exporter.demo.hostile import client_hello_server_names

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parent.parent
TARGETS_YAML = REPO / "targets.yaml"


def _short_form(entry: str, port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` as (host, port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else port
    host, _, number = entry.partition(":")
    return host, int(number) if number else port


def _live_entries(document: dict[str, Any]) -> Iterator[tuple[str, int, str | None]]:
    """(host, port, address) of every target in the file, with ports inherited as config does."""
    default_port = int((document.get("defaults") or {}).get("port", 443))
    sections = [(document.get("targets") or [], default_port)]
    sections += [
        (group.get("targets") or [], int(group.get("port", default_port)))
        for group in document.get("groups") or []
    ]
    for targets, port in sections:
        for entry in targets:
            if isinstance(entry, str):
                yield (*_short_form(entry, port), None)
            else:
                yield entry["host"], int(entry.get("port", port)), entry.get("address")


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue  # the process ended while we looked
    return found


class TestScenarioTable:
    """The fixed-port table is what the repository's targets.yaml probes."""

    def test_targets_yaml_lists_exactly_the_fixed_scenarios(self) -> None:
        """targets.yaml's live entries and the fixed ports agree on (host, port, address)."""
        document = yaml.safe_load(TARGETS_YAML.read_text())
        entries = sorted(_live_entries(document))
        expected = sorted((s.host, s.port, s.address) for s in SCENARIOS)
        assert entries == expected

    def test_names_and_ports_are_unique(self) -> None:
        """No two scenarios share a name or an endpoint."""
        assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)
        assert len({(s.address, s.port) for s in SCENARIOS}) == len(SCENARIOS)

    def test_every_success_names_a_certificate_the_fleet_makes(self) -> None:
        """Each expected certificate exists in the fleet's PKI, each failure has none."""
        for scenario in SCENARIOS:
            for expected in (scenario.sni, scenario.no_sni):
                if expected.ok:
                    assert expected.certificate in fleet_module._CERTIFICATES
                else:
                    assert expected.certificate is None


class TestRunningFleet:
    """The session fleet: servers up, files in place."""

    def test_listening_ports_accept_and_refused_port_refuses(self, fleet: Fleet) -> None:
        """Every server accepts TCP; the ``refused`` port answers SYN with RST."""
        for scenario in fleet.scenarios:
            if scenario.listens:
                with socket.create_connection((scenario.address, scenario.port), timeout=5):
                    pass
            else:
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection((scenario.address, scenario.port), timeout=5)

    def test_ca_file_holds_both_roots(self, fleet: Fleet) -> None:
        """ca.pem trusts the web-PKI root and the internal-profile root."""
        assert fleet.ca_file == fleet.state_dir / "ca.pem"
        assert fleet.ca_file.read_bytes().count(b"-----BEGIN CERTIFICATE-----") == 2

    def test_generated_files_stay_in_the_state_dir(self, fleet: Fleet) -> None:
        """Every path in the server configs points into the state directory."""
        nginx = (fleet.state_dir / "nginx" / "nginx.conf").read_text()
        haproxy = (fleet.state_dir / "haproxy.cfg").read_text()
        paths = [word.rstrip(";") for word in (nginx + haproxy).split() if word.startswith("/")]
        assert paths
        assert all(Path(path).is_relative_to(fleet.state_dir) for path in paths)


class TestStartFailures:
    """A fleet that cannot start says why in one line and leaves nothing running."""

    def test_missing_program(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Without nginx the fleet refuses to start, naming the package to install."""
        monkeypatch.setattr(shutil, "which", lambda _name: None)
        monkeypatch.setattr(os, "access", lambda _path, _mode: False)
        with pytest.raises(FleetError, match=r"nginx not found.*apt-get install nginx-light"):
            Fleet().start(tmp_path)
        assert not (tmp_path / "ca.pem").exists()

    def test_busy_fixed_port(self, tmp_path: Path) -> None:
        """A fixed port already taken is reported before anything starts."""
        first = SCENARIOS[0]
        holder = socket.socket()
        try:
            try:
                holder.bind((first.address, first.port))
                holder.listen()
            except OSError:
                pass  # already busy (a `make run` fleet?): the fleet must refuse all the same
            with pytest.raises(FleetError, match=f"ports in use: .*{first.port}"):
                Fleet().start(tmp_path, ports="fixed")
        finally:
            holder.close()
        assert not (tmp_path / "ca.pem").exists()


class TestClientHelloParser:
    """The reset-no-sni server's view of a ClientHello, on real ClientHellos."""

    @staticmethod
    def _client_hello(server_name: bytes | None) -> bytes:
        connection = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        if server_name is not None:
            connection.set_tlsext_host_name(server_name)
        connection.set_connect_state()
        with pytest.raises(SSL.WantReadError):
            connection.do_handshake()
        return connection.bio_read(65536)

    def test_with_sni(self) -> None:
        """The host name sent as SNI is found."""
        hello = self._client_hello(b"legacy-lb.demo.test")
        assert client_hello_server_names(hello) == ["legacy-lb.demo.test"]

    def test_without_sni(self) -> None:
        """A ClientHello without the extension gives an empty list."""
        assert client_hello_server_names(self._client_hello(None)) == []

    def test_not_a_client_hello(self) -> None:
        """Other bytes are not mistaken for a ClientHello."""
        assert client_hello_server_names(b"GET / HTTP/1.1\r\n\r\n") is None
        assert client_hello_server_names(b"\x16\x03\x01") is None


def _demo(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter.demo", *args], cwd=REPO, text=True, **kwargs
    )


class TestCommandLine:
    """``python -m exporter.demo``: list, and run -- CMD."""

    def test_list(self) -> None:
        """``list`` prints one line per scenario with its fixed endpoint and host."""
        out = subprocess.run(
            [sys.executable, "-m", "exporter.demo", "list"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert len(out) == len(SCENARIOS)
        for line, scenario in zip(out, SCENARIOS, strict=True):
            assert line.startswith(scenario.name)
            assert f":{scenario.port}" in line
            assert scenario.host in line

    def test_run_needs_a_command(self, tmp_path: Path) -> None:
        """``run`` without a command is a usage error, and starts nothing."""
        proc = _demo("run", "--state-dir", str(tmp_path), stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2
        assert "give the command to run" in err
        assert not (tmp_path / "ca.pem").exists()

    def test_run_exits_with_the_command_and_stops_the_fleet(self, tmp_path: Path) -> None:
        """The command's exit status becomes run's, and no server outlives it."""
        state = tmp_path / "state"
        code = "import pathlib, sys; sys.exit(3 if pathlib.Path('ca.pem').exists() else 9)"
        proc = _demo(
            "run", "--ports", "free", "--state-dir", str(state), "--",
            sys.executable, "-c", f"import os; os.chdir({str(state)!r}); {code}",
        )  # fmt: skip
        assert proc.wait(timeout=120) == 3
        assert _processes_mentioning(str(state)) == []

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_run_forwards_signals(self, tmp_path: Path, signum: signal.Signals) -> None:
        """SIGTERM/SIGINT to run reach the command once; run then exits with its status."""
        state = tmp_path / "state"
        script = (
            "import signal, sys\n"
            "hits = []\n"
            "def handler(signum, frame):\n"
            "    hits.append(signum)\n"
            "    sys.exit(40 + len(hits))\n"
            "signal.signal(signal.SIGTERM, handler)\n"
            "signal.signal(signal.SIGINT, handler)\n"
            "print('ready', flush=True)\n"
            "while True:\n"
            "    signal.pause()\n"
        )
        proc = _demo(
            "run", "--ports", "free", "--state-dir", str(state), "--",
            sys.executable, "-c", script,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"  # the fleet is up, CMD runs
            assert _processes_mentioning(str(state)) != []
            proc.send_signal(signum)
            assert proc.wait(timeout=60) == 41  # the handler ran exactly once
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert _processes_mentioning(str(state)) == []
