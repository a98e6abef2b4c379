"""The probe against real servers: nginx, haproxy, openssl s_server and stdlib oddities.

Every scenario of the demo fleet states what each handshake must see and what
the verdict must be; these tests hold the probe to that table, then pin the
properties the table cannot show: the timeout bound, no leaked descriptors
or readers, IPv6, no SNI for IP literals, no session resumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import queue
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from exporter import probe
from exporter.demo.fleet import SCENARIOS, Expected, Fleet, Scenario
from exporter.model import Handshake, Target
from exporter.reasons import Reason, ResolveError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from exporter.certs import TrustStore
    from exporter.model import HandshakeReport

SCENARIO_NAMES = [scenario.name for scenario in SCENARIOS]
STALL_TIMEOUT = 0.5  # for scenarios that time out: keeps the suite fast
TIMEOUT = 5.0  # for everything else: generous, a loaded CI machine is slow


def _timeout(scenario: Scenario) -> float:
    return STALL_TIMEOUT if scenario.sni.reason is Reason.TIMEOUT else TIMEOUT


def _assert_handshake(fleet: Fleet, shake: Handshake, expected: Expected) -> None:
    assert (shake.ok, shake.reason) == (expected.ok, expected.reason), shake.detail
    assert shake.tls_version == expected.tls_version
    assert len(shake.chain_der) == expected.chain_length
    if expected.certificate is None:
        assert shake.chain_der == ()
        assert shake.cipher is None
        assert shake.detail  # a failure always says why
    else:
        served = fleet.certificate(expected.certificate)
        assert shake.leaf_der == served.der
        assert shake.chain_der == served.chain_der
        assert shake.cipher
        assert shake.detail == ""  # no warning alert either
    assert shake.connect_seconds >= 0
    assert shake.handshake_seconds >= 0


def _assert_report(report: HandshakeReport, expected: Expected) -> None:
    certificate = report.certificate
    if expected.certificate is None:
        assert certificate is None
        return
    assert certificate is not None
    assert certificate.hostname_match is expected.hostname_match
    assert certificate.chain.valid is expected.chain_valid, certificate.chain.error
    if expected.chain_strict_valid is not None:
        assert certificate.chain.strict_valid is expected.chain_strict_valid
    assert certificate.expired is expected.expired


def _open_fds() -> set[tuple[str, str]]:
    """This process's open descriptors as (number, what it points at)."""
    gc.collect()  # what an earlier test dropped is closed now, not during the measurement
    fds: set[tuple[str, str]] = set()
    for entry in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the fd that listed the directory is gone
            fds.add((entry.name, str(entry.readlink())))
    return fds


class TestHandshakePerScenario:
    """``handshake()`` per mode against every server of the fleet."""

    @pytest.mark.parametrize("name", SCENARIO_NAMES)
    async def test_with_sni(self, fleet: Fleet, name: str) -> None:
        """With SNI = host, the handshake sees the reason, version and chain the table states."""
        scenario = fleet.scenario(name)
        shake = await probe.handshake(
            scenario.address, scenario.port, scenario.host, _timeout(scenario)
        )
        assert shake.sni is True
        assert shake.server_name == scenario.host
        assert (shake.address, shake.port) == (scenario.address, scenario.port)
        _assert_handshake(fleet, shake, scenario.sni)

    @pytest.mark.parametrize("name", SCENARIO_NAMES)
    async def test_without_sni(self, fleet: Fleet, name: str) -> None:
        """Without SNI, the handshake sees the reason, version and chain the table states."""
        scenario = fleet.scenario(name)
        shake = await probe.handshake(scenario.address, scenario.port, None, _timeout(scenario))
        assert shake.sni is False
        assert shake.server_name is None
        assert (shake.address, shake.port) == (scenario.address, scenario.port)
        _assert_handshake(fleet, shake, scenario.no_sni)


class TestProbeVerdict:
    """``probe()`` end to end: both handshakes, certificate judgements and the verdict."""

    @pytest.mark.parametrize("name", SCENARIO_NAMES)
    async def test_scenario(self, fleet: Fleet, fleet_trust: TrustStore, name: str) -> None:
        """The verdict, the reasons and the certificate judgements match the scenario table."""
        scenario = fleet.scenario(name)
        target = dataclasses.replace(scenario.target, timeout=_timeout(scenario))
        before = time.time()
        result = await probe.probe(target, fleet_trust)
        assert result.target == target
        assert result.address == scenario.address
        assert before <= result.started_at <= time.time()
        assert result.duration_seconds > 0
        assert (result.sni.handshake.sni, result.no_sni.handshake.sni) == (True, False)
        assert result.sni.handshake.reason is scenario.sni.reason
        assert result.no_sni.handshake.reason is scenario.no_sni.reason
        _assert_report(result.sni, scenario.sni)
        _assert_report(result.no_sni, scenario.no_sni)
        assert result.verdict.sni_required is scenario.sni_required
        assert result.verdict.certificate_mismatch is scenario.certificate_mismatch
        assert result.verdict.explanation

    async def test_clock_is_injected(self, fleet: Fleet, fleet_trust: TrustStore) -> None:
        """``now`` sets started_at and the time certificates are judged at (expiry)."""
        scenario = fleet.scenario("nginx-single")
        far_future = time.time() + 10 * 365 * 86400
        result = await probe.probe(scenario.target, fleet_trust, now=lambda: far_future)
        assert result.started_at == far_future
        assert result.sni.certificate is not None
        assert result.sni.certificate.expired is True


class TestTimeout:
    """The timeout bounds connect + handshake, whatever the server does."""

    async def test_stall_costs_at_most_the_timeout(self, fleet: Fleet) -> None:
        """A server that accepts and never answers returns ``timeout`` after about the timeout."""
        scenario = fleet.scenario("stall")
        started = time.perf_counter()
        shake = await probe.handshake(scenario.address, scenario.port, scenario.host, 0.5)
        elapsed = time.perf_counter() - started
        assert shake.reason is Reason.TIMEOUT
        assert 0.45 <= elapsed < 2.0
        assert 0.45 <= shake.duration_seconds < 2.0

    async def test_stalls_in_parallel_do_not_add_up(self, fleet: Fleet) -> None:
        """Twenty concurrent stalled handshakes all end within one timeout, not twenty."""
        scenario = fleet.scenario("stall")
        started = time.perf_counter()
        shakes = await asyncio.gather(
            *(probe.handshake(scenario.address, scenario.port, None, 0.5) for _ in range(20))
        )
        assert {shake.reason for shake in shakes} == {Reason.TIMEOUT}
        assert time.perf_counter() - started < 3.0

    async def test_whole_probe_is_bounded(self, fleet: Fleet, fleet_trust: TrustStore) -> None:
        """``probe()`` runs its two handshakes concurrently: a stall costs one timeout."""
        scenario = fleet.scenario("stall")
        started = time.perf_counter()
        result = await probe.probe(dataclasses.replace(scenario.target, timeout=0.5), fleet_trust)
        assert result.no_sni.handshake.reason is Reason.TIMEOUT
        assert time.perf_counter() - started < 2.0


class TestResources:
    """Every path closes its socket and removes its readiness callbacks."""

    async def test_no_descriptor_or_reader_leak(self, fleet: Fleet) -> None:
        """Hundreds of failing and succeeding handshakes leave fds and the selector as they were."""
        names = ["refused", "reset-on-accept", "reset-no-sni", "plain-http", "nginx-reject"]
        names += ["alert-no-sni", "haproxy-strict-sni", "nginx-single", "stall"]
        scenarios = [fleet.scenario(name) for name in names]
        loop = asyncio.get_running_loop()
        selector_map = loop._selector.get_map()  # type: ignore[attr-defined]
        await probe.handshake(scenarios[-2].address, scenarios[-2].port, None, TIMEOUT)  # warm up
        fds, registered = _open_fds(), len(selector_map)
        shakes = await asyncio.gather(
            *(
                probe.handshake(s.address, s.port, None if i % 2 else s.host, 0.2)
                for i in range(30)
                for s in scenarios
            )
        )
        assert len({shake.reason for shake in shakes}) >= 6  # really many different paths
        assert _open_fds() - fds == set()
        assert len(selector_map) == registered

    async def test_cancelled_handshake_closes_its_socket(
        self, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Cancelling a handshake mid-way (e.g. on shutdown) still closes the socket."""
        scenario = fleet.scenario("stall")
        waiting = asyncio.Event()
        connected = probe._Exchange._connected

        def spy(exchange: probe._Exchange) -> None:
            connected(exchange)  # sends the ClientHello and starts reading
            waiting.set()

        monkeypatch.setattr(probe._Exchange, "_connected", spy)
        fds = _open_fds()
        task = asyncio.create_task(probe.handshake(scenario.address, scenario.port, None, 30))
        await asyncio.wait_for(waiting.wait(), 5)  # the ClientHello is out, the answer awaited
        assert len(_open_fds() - fds) == 1  # the handshake's socket
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _open_fds() - fds == set()

    async def test_probe_leaves_no_reference_cycles(
        self, fleet: Fleet, fleet_trust: TrustStore
    ) -> None:
        """Nothing a probe made waits for the cyclic GC: its SSL objects go when it ends.

        The native memory of SSL objects in garbage cycles waits for a
        collection, and the GC's thresholds do not see it: at 10k targets a
        cycle per probe took the service's RSS from 184 to 332 MB.
        """
        names = ["nginx-single", "refused", "reset-no-sni", "plain-http", "alert-no-sni"]
        names += ["nginx-reject", "stall"]
        targets = [dataclasses.replace(fleet.scenario(n).target, timeout=0.3) for n in names]
        await probe.probe(targets[0], fleet_trust)  # warm up: caches and the client context
        gc.collect()
        gc.disable()
        try:
            results = [await probe.probe(target, fleet_trust) for target in targets]
            assert len({r.no_sni.handshake.reason for r in results}) >= 5  # many paths
            assert gc.collect() == 0
        finally:
            gc.enable()


class TestAddressing:
    """IPv6, IP literals and what is sent as SNI."""

    async def test_ipv6_loopback(self, fleet: Fleet) -> None:
        """An IPv6 address is connected over AF_INET6 and the handshake completes."""
        scenario = fleet.scenario("ipv6")
        shake = await probe.handshake("::1", scenario.port, scenario.host, TIMEOUT)
        assert shake.ok, shake.detail
        assert shake.address == "::1"
        assert shake.leaf_der == fleet.certificate("v6").der

    async def test_ip_literal_sends_no_sni(self, fleet: Fleet) -> None:
        """An IP literal as server name sends no SNI at all (RFC 6066), not a wrong one."""
        scenario = fleet.scenario("alert-no-sni")
        # This server answers a missing SNI with alert 40 and an unknown one with 112.
        literal = await probe.handshake(scenario.address, scenario.port, "127.0.0.1", TIMEOUT)
        unknown = await probe.handshake(scenario.address, scenario.port, "x.demo.test", TIMEOUT)
        assert (literal.sni, literal.server_name) == (True, None)
        assert literal.reason is Reason.HANDSHAKE_FAILURE
        assert unknown.reason is Reason.UNRECOGNIZED_NAME

    async def test_ip_literal_target(self, fleet: Fleet, fleet_trust: TrustStore) -> None:
        """A target whose host is an IP literal is probed without DNS and without SNI."""
        scenario = fleet.scenario("alert-no-sni")
        result = await probe.probe(Target(host="127.0.0.1", port=scenario.port), fleet_trust)
        assert result.address == "127.0.0.1"
        assert result.sni.handshake.server_name is None
        assert result.sni.handshake.reason is Reason.HANDSHAKE_FAILURE
        assert result.verdict.sni_required is False

    async def test_trailing_dot_is_not_sent(self, fleet: Fleet) -> None:
        """An absolute name ``host.`` is sent as ``host`` (RFC 6066 forbids the dot)."""
        scenario = fleet.scenario("alert-no-sni")
        shake = await probe.handshake(scenario.address, scenario.port, "cdn.demo.test.", TIMEOUT)
        assert shake.ok, shake.detail
        assert shake.server_name == "cdn.demo.test"

    async def test_address_must_be_an_ip(self) -> None:
        """A host name passed as address fails at once with ``other``; it is never resolved."""
        shake = await probe.handshake("www.demo.test", 443, "www.demo.test", TIMEOUT)
        assert shake.reason is Reason.OTHER
        assert "not an IP address" in shake.detail

    async def test_port_out_of_range(self) -> None:
        """A port beyond 65535 is a failed handshake, not an exception."""
        shake = await probe.handshake("127.0.0.1", 70000, None, TIMEOUT)
        assert shake.reason is Reason.OTHER


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def old_version_servers(fleet: Fleet) -> Iterator[dict[str, int]]:
    """``openssl s_server`` limited to one old protocol version each: version -> port."""
    crt, key = fleet.state_dir / "certs" / "www.crt", fleet.state_dir / "certs" / "www.key"
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for version, flag in (("TLSv1.2", "-tls1_2"), ("TLSv1", "-tls1")):
            port = _free_port()
            servers[version] = port, subprocess.Popen(
                ["openssl", "s_server", "-quiet", "-www", "-accept", f"127.0.0.1:{port}",
                 "-cert", str(crt), "-key", str(key), flag, "-cipher", "DEFAULT:@SECLEVEL=0",
                 # An unknown SNI gets a warning unrecognized_name alert (TLS 1.2 only).
                 "-servername", "www.demo.test", "-cert2", str(crt), "-key2", str(key)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        for port, server in servers.values():
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                assert server.poll() is None, "openssl s_server exited"
                assert time.monotonic() < deadline, "openssl s_server did not start"
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.wait(0.02)  # the pause between polls
        yield {version: port for version, (port, _) in servers.items()}
    finally:
        for _, server in servers.values():
            server.terminate()
            server.wait()


class TestProtocolVersions:
    """Old servers are still probed: the client offers every version OpenSSL implements."""

    @pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1"])
    async def test_old_version_only_server(
        self, fleet: Fleet, old_version_servers: dict[str, int], version: str
    ) -> None:
        """A server that speaks only an old version completes the handshake, and says which."""
        shake = await probe.handshake(
            "127.0.0.1", old_version_servers[version], "www.demo.test", TIMEOUT
        )
        assert shake.ok, shake.detail
        assert shake.tls_version == version
        assert shake.leaf_der == fleet.certificate("www").der
        assert shake.detail == ""

    async def test_warning_alert_is_reported_not_fatal(
        self, old_version_servers: dict[str, int]
    ) -> None:
        """A TLS 1.2 warning unrecognized_name leaves the handshake ok but is named in detail."""
        port = old_version_servers["TLSv1.2"]
        shake = await probe.handshake("127.0.0.1", port, "unknown.demo.test", TIMEOUT)
        assert shake.ok, shake.detail
        assert "warning alert 112 (unrecognized_name)" in shake.detail


class TestResolve:
    """Name resolution, bounded and mapped to ``dns``; no real DNS traffic in tests."""

    async def test_ip_literals_are_returned_as_is(self) -> None:
        """IPv4 and IPv6 literals need no lookup."""
        assert await probe.resolve("127.0.0.1", 443, 1.0) == "127.0.0.1"
        assert await probe.resolve("::1", 443, 1.0) == "::1"

    async def test_localhost(self) -> None:
        """A name from /etc/hosts resolves to a loopback address."""
        assert await probe.resolve("localhost", 443, 5.0) in {"127.0.0.1", "::1"}

    async def test_unknown_name(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A resolver error is a ResolveError with reason ``dns``."""

        async def fail(*_args: object, **_kwargs: object) -> list[object]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fail)
        with pytest.raises(ResolveError) as caught:
            await probe.resolve("nowhere.demo.test", 443, 1.0)
        assert caught.value.reason is Reason.DNS

    async def test_slow_resolver_is_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A resolver that never answers costs at most the timeout."""

        async def hang(*_args: object, **_kwargs: object) -> list[object]:
            await asyncio.Event().wait()
            return []

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", hang)
        started = time.perf_counter()
        with pytest.raises(ResolveError):
            await probe.resolve("slow.demo.test", 443, 0.3)
        assert time.perf_counter() - started < 2.0

    async def test_dns_failure_fails_both_handshakes(
        self, monkeypatch: pytest.MonkeyPatch, fleet_trust: TrustStore
    ) -> None:
        """A target that does not resolve yields two ``dns`` failures with no address."""

        async def fail(*_args: object, **_kwargs: object) -> list[object]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fail)
        result = await probe.probe(Target(host="nowhere.demo.test"), fleet_trust)
        assert result.address == ""
        for report in result.reports:
            assert report.handshake.reason is Reason.DNS
            assert report.handshake.address == ""
            assert report.certificate is None
        assert result.sni.handshake.server_name == "nowhere.demo.test"
        assert result.verdict.sni_required is False


class _ClosingServer:
    """Reads the ClientHello, then closes with a FIN: a server that hangs up without an alert."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.recv(65536)


class TestEof:
    """A server that closes without an alert."""

    async def test_fin_without_alert_is_eof(self) -> None:
        """FIN after the ClientHello, no alert: reason ``eof``."""
        server = _ClosingServer()
        try:
            shake = await probe.handshake("127.0.0.1", server.port, "eof.demo.test", TIMEOUT)
        finally:
            server.sock.close()
        assert shake.reason is Reason.EOF


class _ResumingServer:
    """A TLS 1.3 server that issues tickets and records, per handshake, whether it resumed."""

    def __init__(self, fleet: Fleet) -> None:
        crt, key = fleet.state_dir / "certs" / "www.crt", fleet.state_dir / "certs" / "www.key"
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(crt, key)
        self.context.num_tickets = 2
        self.resumed: queue.Queue[bool] = queue.Queue()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                conn.settimeout(5)
                with (
                    contextlib.suppress(OSError),
                    self.context.wrap_socket(conn, server_side=True) as tls,
                ):
                    self.resumed.put(bool(tls.session_reused))
                    tls.sendall(b"x")  # sends the tickets, then one byte


@pytest.fixture
def resuming_server(fleet: Fleet) -> Iterator[_ResumingServer]:
    server = _ResumingServer(fleet)
    yield server
    server.sock.close()


class TestNoResumption:
    """Each handshake is a full one: a resumed session would hide what the server serves."""

    def test_server_does_resume_a_client_that_asks(self, resuming_server: _ResumingServer) -> None:
        """Control: a client that keeps its session gets it resumed by this server."""
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        session = None
        for _ in range(2):
            address = ("127.0.0.1", resuming_server.port)
            with (
                socket.create_connection(address, timeout=5) as raw,
                client.wrap_socket(raw, session=session) as tls,
            ):
                tls.recv(1)  # reads the tickets too
                session = tls.session
        assert [resuming_server.resumed.get(timeout=5) for _ in range(2)] == [False, True]

    async def test_consecutive_probes_never_resume(
        self, resuming_server: _ResumingServer, fleet_trust: TrustStore
    ) -> None:
        """Two probes in a row (four handshakes) are all full handshakes."""
        target = Target(host="www.demo.test", port=resuming_server.port, address="127.0.0.1")
        for _ in range(2):
            result = await probe.probe(target, fleet_trust)
            assert result.sni.handshake.ok, result.sni.handshake.detail
        seen = [resuming_server.resumed.get(timeout=5) for _ in range(4)]
        assert seen == [False] * 4
