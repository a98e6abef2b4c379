"""The demo/test fleet: real TLS servers on loopback, one per SNI behaviour.

``Fleet().start(state_dir, ports="fixed")`` writes a fresh PKI (one web-PKI
CA, one internal-profile CA, both in ``state_dir/ca.pem``), configures and
starts nginx, haproxy, ``openssl s_server`` and the small stdlib servers of
``exporter.demo.hostile`` as child processes, and returns once every server
accepts TCP connections.  ``ports="fixed"`` uses the ports of the table in
``SCENARIOS`` (what ``make run`` and targets.yaml use); ``ports="free"`` picks
unused ports (what the tests use, so they never collide with a running demo).

Every scenario carries what a probe must see against it, per handshake, so
the tests and the demo share one statement of the expected behaviour.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Literal, Self

from exporter.demo import pki
from exporter.demo.haproxy import Frontend, haproxy_config
from exporter.demo.nginx import Site, nginx_config
from exporter.model import Target
from exporter.reasons import Reason, SniExporterError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

__all__ = ["SCENARIOS", "Expected", "Fleet", "FleetError", "Scenario"]

Ports = Literal["fixed", "free"]
Server = Literal["nginx", "haproxy", "s_server", "stdlib", "none"]

LOOPBACK: Final = "127.0.0.1"
LOOPBACK6: Final = "::1"
TLS13: Final = "TLSv1.3"

_READY_TIMEOUT: Final = 20.0  # seconds for every server to accept connections
_STOP_TIMEOUT: Final = 5.0  # seconds for one server to exit after SIGTERM


class FleetError(SniExporterError):
    """The fleet could not start: a missing program, a busy port, a server that died."""


@dataclasses.dataclass(frozen=True, slots=True)
class Expected:
    """What one handshake against a scenario sees.

    ``reason`` None means the handshake succeeds.  ``certificate`` names the
    leaf served (``Fleet.certificate(name)``).  The certificate judgements
    are None where the handshake fails, or where the answer depends on a
    policy choice this table does not pin.
    """

    reason: Reason | None = None
    certificate: str | None = None
    chain_length: int = 0
    tls_version: str | None = None
    hostname_match: bool | None = None
    chain_valid: bool | None = None
    chain_strict_valid: bool | None = None
    expired: bool | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """One endpoint of the fleet and the verdict a probe must reach on it."""

    name: str
    server: Server
    host: str  # the SNI name
    port: int
    address: str
    summary: str
    sni: Expected
    no_sni: Expected
    sni_required: bool
    certificate_mismatch: bool

    @property
    def target(self) -> Target:
        return Target(host=self.host, port=self.port, address=self.address)

    @property
    def listens(self) -> bool:
        """Whether a server accepts connections on the port (all but ``refused``)."""
        return self.server != "none"


def _ok(
    certificate: str,
    *,
    chain_length: int = 2,
    hostname_match: bool = True,
    chain_valid: bool = True,
    chain_strict_valid: bool | None = True,
    expired: bool = False,
) -> Expected:
    return Expected(
        reason=None,
        certificate=certificate,
        chain_length=chain_length,
        tls_version=TLS13,
        hostname_match=hostname_match,
        chain_valid=chain_valid,
        chain_strict_valid=chain_strict_valid,
        expired=expired,
    )


def _fail(reason: Reason) -> Expected:
    return Expected(reason=reason)


def _scenario(
    name: str,
    server: Server,
    port: int,
    host: str,
    summary: str,
    sni: Expected,
    no_sni: Expected,
    *,
    sni_required: bool,
    mismatch: bool = False,
    address: str = LOOPBACK,
) -> Scenario:
    return Scenario(
        name=name,
        server=server,
        host=host,
        port=port,
        address=address,
        summary=summary,
        sni=sni,
        no_sni=no_sni,
        sni_required=sni_required,
        certificate_mismatch=mismatch,
    )


#: The fleet on its fixed ports (``make run``; the repository's targets.yaml lists the same).
SCENARIOS: Final[tuple[Scenario, ...]] = (
    _scenario(
        "nginx-default-cert", "nginx", 19441, "shop.demo.test",
        "nginx: vhost for the name, default_server with another name's certificate",
        _ok("shop"), _ok("fallback", hostname_match=False),
        sni_required=True, mismatch=True,
    ),
    _scenario(
        "nginx-reject", "nginx", 19442, "api.demo.test",
        "nginx: vhost for the name, default_server with ssl_reject_handshake on",
        _ok("api"), _fail(Reason.UNRECOGNIZED_NAME),
        sni_required=True,
    ),
    _scenario(
        "nginx-single", "nginx", 19443, "www.demo.test",
        "nginx: one certificate for the name, no SNI dependence",
        _ok("www"), _ok("www"),
        sni_required=False,
    ),
    _scenario(
        "nginx-default-covers", "nginx", 19444, "portal.demo.test",
        "nginx: the default server's different (wildcard) certificate also covers the name",
        _ok("portal"), _ok("wildcard"),
        sni_required=False, mismatch=True,
    ),
    _scenario(
        "haproxy-strict-sni", "haproxy", 19445, "pay.demo.test",
        "haproxy: strict-sni rejects handshakes without a known SNI",
        _ok("pay"), _fail(Reason.UNRECOGNIZED_NAME),
        sni_required=True,
    ),
    _scenario(
        "s-server-cert2", "s_server", 19446, "legacy.demo.test",
        "openssl s_server: -servername legacy.demo.test -cert2, another default -cert",
        _ok("legacy", chain_length=1),
        _ok("s-server-default", chain_length=1, hostname_match=False),
        sni_required=True, mismatch=True,
    ),
    _scenario(
        "alert-no-sni", "stdlib", 19447, "cdn.demo.test",
        "stdlib ssl: fatal handshake_failure alert (40) when there is no SNI",
        _ok("cdn"), _fail(Reason.HANDSHAKE_FAILURE),
        sni_required=True,
    ),
    _scenario(
        "reset-no-sni", "stdlib", 19448, "legacy-lb.demo.test",
        "stdlib: reads the ClientHello, TCP reset when it has no SNI (errno=54)",
        _ok("legacy-lb"), _fail(Reason.RESET),
        sni_required=True,
    ),
    _scenario(
        "reset-on-accept", "stdlib", 19449, "reset.demo.test",
        "stdlib: TCP reset right after accept",
        _fail(Reason.RESET), _fail(Reason.RESET),
        sni_required=False,
    ),
    _scenario(
        "stall", "stdlib", 19450, "stall.demo.test",
        "stdlib: accepts and never answers",
        _fail(Reason.TIMEOUT), _fail(Reason.TIMEOUT),
        sni_required=False,
    ),
    _scenario(
        "plain-http", "stdlib", 19451, "http.demo.test",
        "stdlib: plain HTTP on the port",
        _fail(Reason.NOT_TLS), _fail(Reason.NOT_TLS),
        sni_required=False,
    ),
    _scenario(
        "refused", "none", 19452, "closed.demo.test",
        "nothing listens on the port",
        _fail(Reason.REFUSED), _fail(Reason.REFUSED),
        sni_required=False,
    ),
    _scenario(
        "ipv6", "nginx", 19453, "v6.demo.test",
        "nginx on [::1]: vhost for the name, default certificate for another name",
        _ok("v6"), _ok("fallback", hostname_match=False),
        sni_required=True, mismatch=True, address=LOOPBACK6,
    ),
    _scenario(
        "expired", "nginx", 19454, "expired.demo.test",
        "nginx: an expired certificate for the name, with and without SNI",
        _ok("expired", chain_valid=False, chain_strict_valid=False, expired=True),
        _ok("expired", chain_valid=False, chain_strict_valid=False, expired=True),
        sni_required=False,
    ),
    _scenario(
        "wrong-host", "nginx", 19455, "wrong.demo.test",
        "nginx: a certificate for another name only",
        _ok("wrong", hostname_match=False, chain_strict_valid=None),
        _ok("wrong", hostname_match=False, chain_strict_valid=None),
        sni_required=False,
    ),
    _scenario(
        "internal-pki", "nginx", 19456, "internal.demo.test",
        "nginx: chain from an internal-profile CA (no keyUsage, no AKI), CA in ca.pem",
        _ok("internal", chain_strict_valid=False), _ok("internal", chain_strict_valid=False),
        sni_required=False,
    ),
    _scenario(
        "untrusted", "nginx", 19457, "self.demo.test",
        "nginx: a self-signed certificate for the name",
        _ok("self", chain_length=1, chain_valid=False, chain_strict_valid=False),
        _ok("self", chain_length=1, chain_valid=False, chain_strict_valid=False),
        sni_required=False,
    ),
)  # fmt: skip

# nginx server blocks per scenario: (server_name, certificate); server_name
# None is the default_server, certificate None means ssl_reject_handshake.
_NGINX_SITES: Final[Mapping[str, tuple[tuple[str | None, str | None], ...]]] = {
    "nginx-default-cert": ((None, "fallback"), ("shop.demo.test", "shop")),
    "nginx-reject": ((None, None), ("api.demo.test", "api")),
    "nginx-single": ((None, "www"),),
    "nginx-default-covers": ((None, "wildcard"), ("portal.demo.test", "portal")),
    "ipv6": ((None, "fallback"), ("v6.demo.test", "v6")),
    "expired": ((None, "expired"),),
    "wrong-host": ((None, "wrong"),),
    "internal-pki": ((None, "internal"),),
    "untrusted": ((None, "self"),),
}

# Leaf certificates: name -> (issuer, DNS names).  Issuers: "web" is the
# intermediate of the web-PKI root (chain of 2 as served), "root" the root
# itself (s_server cannot send a chain for -cert2, so its leaves need none),
# "internal" the internal-profile intermediate, "self" self-signed, and
# "expired" the web intermediate with validity in the past.
_CERTIFICATES: Final[Mapping[str, tuple[str, tuple[str, ...]]]] = {
    "fallback": ("web", ("fallback.demo.test",)),
    "shop": ("web", ("shop.demo.test",)),
    "api": ("web", ("api.demo.test",)),
    "www": ("web", ("www.demo.test",)),
    "portal": ("web", ("portal.demo.test",)),
    "wildcard": ("web", ("*.demo.test",)),
    "pay": ("web", ("pay.demo.test",)),
    "legacy": ("root", ("legacy.demo.test",)),
    "s-server-default": ("root", ("s-server.demo.test",)),
    "cdn": ("web", ("cdn.demo.test",)),
    "legacy-lb": ("web", ("legacy-lb.demo.test",)),
    "v6": ("web", ("v6.demo.test",)),
    "expired": ("expired", ("expired.demo.test",)),
    "wrong": ("web", ("other.demo.test",)),
    "internal": ("internal", ("internal.demo.test",)),
    "self": ("self", ("self.demo.test",)),
}


def _make_pki() -> tuple[dict[str, pki.Issued], tuple[pki.CA, ...]]:
    """Fresh certificates for every scenario, and the roots to trust."""
    root = pki.CA.root("sni-exporter Demo Root CA")
    web = root.intermediate("sni-exporter Demo Intermediate CA")
    internal_root = pki.CA.root("sni-exporter Demo Internal Root", profile="internal")
    internal = internal_root.intermediate("sni-exporter Demo Internal Issuing CA")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    issued: dict[str, pki.Issued] = {}
    for name, (issuer, dns_names) in _CERTIFICATES.items():
        if issuer == "self":
            issued[name] = pki.self_signed(dns_names)
        elif issuer == "expired":
            issued[name] = web.leaf(
                dns_names,
                not_before=now - dt.timedelta(days=90),
                not_after=now - dt.timedelta(days=1),
            )
        else:
            ca = {"web": web, "root": root, "internal": internal}[issuer]
            issued[name] = ca.leaf(dns_names)
    return issued, (root, internal_root)


def _find_program(name: str) -> str:
    found = shutil.which(name) or next(
        (
            str(p)
            for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name)
            if os.access(p, os.X_OK)
        ),
        None,
    )
    if found is None:
        raise FleetError(
            f"{name} not found on PATH or in /usr/sbin: install it (Debian: apt-get install "
            f"{'nginx-light' if name == 'nginx' else name}); `make test` does this"
        )
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # PR_SET_PDEATHSIG: the kernel sends SIGTERM to the server if the process
    # that started it dies without stopping the fleet (a killed test run).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _bindable(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _free_ports(addresses: list[str]) -> list[int]:
    """One unused port per address, all distinct (held together while choosing)."""
    held: list[socket.socket] = []
    try:
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((address, 0))
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


@dataclasses.dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:])
        return ""


class Fleet:
    """The demo servers as child processes.  Use as a context manager, or start()/stop()."""

    def __init__(self) -> None:
        self.scenarios: tuple[Scenario, ...] = ()
        self.state_dir = Path()
        self.ca_file = Path()
        self._certificates: dict[str, pki.Issued] = {}
        self._processes: list[_Process] = []
        self._refused: socket.socket | None = None

    # -- public --------------------------------------------------------------

    def scenario(self, name: str) -> Scenario:
        for scenario in self.scenarios:
            if scenario.name == name:
                return scenario
        raise KeyError(name)

    def certificate(self, name: str) -> pki.Issued:
        """The certificate (with key and chain) the fleet serves under ``name``."""
        return self._certificates[name]

    def start(self, state_dir: str | os.PathLike[str], ports: Ports = "fixed") -> Self:
        """Write the PKI and configs under ``state_dir``, start every server, wait until ready."""
        if self._processes:
            raise FleetError("the fleet is already running")
        programs = {name: _find_program(name) for name in ("nginx", "haproxy", "openssl")}
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.scenarios = self._place(ports)
        try:
            self._write_pki()
            self._hold_refused_port()
            self._start_nginx(programs["nginx"])
            self._start_haproxy(programs["haproxy"])
            self._start_s_server(programs["openssl"])
            self._start_hostile()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL after a grace period).  Idempotent."""
        for process in self._processes:
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in self._processes:
            try:
                process.popen.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
            process.log.close()
        self._processes = []
        if self._refused is not None:
            self._refused.close()
            self._refused = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- setup ---------------------------------------------------------------

    def _place(self, ports: Ports) -> tuple[Scenario, ...]:
        if ports == "free":
            numbers = _free_ports([s.address for s in SCENARIOS])
            return tuple(
                dataclasses.replace(s, port=port)
                for s, port in zip(SCENARIOS, numbers, strict=True)
            )
        if ports != "fixed":
            raise FleetError(f"ports must be 'fixed' or 'free', not {ports!r}")
        busy = [f"{s.address}:{s.port}" for s in SCENARIOS if not _bindable(s.address, s.port)]
        if busy:
            raise FleetError(
                f"ports in use: {', '.join(busy)}; stop whatever holds them "
                "(another demo fleet?) or use free ports"
            )
        return SCENARIOS

    def _write_pki(self) -> None:
        self._certificates, roots = _make_pki()
        directory = self.state_dir / "certs"
        for name, issued in self._certificates.items():
            issued.write(directory, name)
            combined = directory / f"{name}.pem"
            combined.write_bytes(issued.combined_pem())
            combined.chmod(0o600)
        self.ca_file = self.state_dir / "ca.pem"
        self.ca_file.write_bytes(b"".join(root.bundle_pem for root in roots))

    def _cert_paths(self, name: str) -> tuple[Path, Path]:
        directory = self.state_dir / "certs"
        return directory / f"{name}.crt", directory / f"{name}.key"

    def _hold_refused_port(self) -> None:
        # A bound socket that never listens: connections to it are refused,
        # and no other program can take the port while the fleet runs.
        for scenario in self.scenarios:
            if scenario.server == "none":
                family = socket.AF_INET6 if ":" in scenario.address else socket.AF_INET
                self._refused = socket.socket(family, socket.SOCK_STREAM)
                self._refused.bind((scenario.address, scenario.port))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.state_dir / f"{name}.log"
        log = log_path.open("wb")
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                # Own session: a Ctrl-C in the terminal reaches the command
                # that `python -m exporter.demo run` wraps, not the servers.
                start_new_session=True,
                # PDEATHSIG follows the thread that forks; only the main thread lives long enough.
                preexec_fn=(  # noqa: PLW1509 - only calls prctl
                    _die_with_parent
                    if threading.current_thread() is threading.main_thread()
                    else None
                ),
            )
        except OSError as error:
            log.close()
            raise FleetError(f"cannot start {name} ({argv[0]}): {error}") from None
        self._processes.append(_Process(name, popen, log_path, log))

    def _start_nginx(self, program: str) -> None:
        directory = self.state_dir / "nginx"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (directory / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        sites = [
            Site(
                address=scenario.address,
                port=scenario.port,
                server_name=server_name,
                certificate=self._cert_paths(cert) if cert is not None else None,
            )
            for scenario in self.scenarios
            if scenario.server == "nginx"
            for server_name, cert in _NGINX_SITES[scenario.name]
        ]
        conf = directory / "nginx.conf"
        conf.write_text(nginx_config(directory, sites))
        error_log = directory / "error.log"
        self._spawn(
            "nginx", [program, "-p", f"{directory}/", "-c", str(conf), "-e", str(error_log)]
        )

    def _start_haproxy(self, program: str) -> None:
        frontends = [
            Frontend(
                name=scenario.name,
                address=scenario.address,
                port=scenario.port,
                pem=self.state_dir / "certs" / f"{scenario.sni.certificate}.pem",
            )
            for scenario in self.scenarios
            if scenario.server == "haproxy"
        ]
        conf = self.state_dir / "haproxy.cfg"
        conf.write_text(haproxy_config(frontends))
        self._spawn("haproxy", [program, "-db", "-f", str(conf)])

    def _start_s_server(self, program: str) -> None:
        for scenario in self.scenarios:
            if scenario.server != "s_server":
                continue
            default, named = scenario.no_sni.certificate, scenario.sni.certificate
            if default is None or named is None:
                raise FleetError(f"{scenario.name}: s_server needs a certificate for both modes")
            crt, key = self._cert_paths(default)
            crt2, key2 = self._cert_paths(named)
            host = f"[{scenario.address}]" if ":" in scenario.address else scenario.address
            self._spawn(
                scenario.name,
                [
                    program, "s_server", "-quiet", "-www",
                    "-accept", f"{host}:{scenario.port}",
                    "-cert", str(crt), "-key", str(key),
                    "-servername", scenario.host, "-cert2", str(crt2), "-key2", str(key2),
                    "-no_ticket", "-num_tickets", "0",
                ],
            )  # fmt: skip

    def _start_hostile(self) -> None:
        kinds = {"reset-on-accept", "stall", "plain-http", "alert-no-sni", "reset-no-sni"}
        specs: list[dict[str, object]] = []
        for scenario in self.scenarios:
            if scenario.server != "stdlib":
                continue
            if scenario.name not in kinds:
                raise FleetError(f"no stdlib server for scenario {scenario.name}")
            spec: dict[str, object] = {
                "kind": scenario.name,
                "address": scenario.address,
                "port": scenario.port,
                "names": [scenario.host],
            }
            if scenario.sni.certificate is not None:
                crt, key = self._cert_paths(scenario.sni.certificate)
                spec |= {"cert": str(crt), "key": str(key)}
            specs.append(spec)
        spec_path = self.state_dir / "hostile.json"
        spec_path.write_text(json.dumps(specs, indent=2))
        self._spawn("stdlib", [sys.executable, "-m", "exporter.demo.hostile", str(spec_path)])

    def _owner(self, scenario: Scenario) -> _Process:
        name = {"nginx": "nginx", "haproxy": "haproxy", "stdlib": "stdlib"}.get(
            scenario.server, scenario.name
        )
        return next(p for p in self._processes if p.name == name)

    def _wait_ready(self) -> None:
        """Poll each listening port until it accepts a connection, or fail naming the server."""
        deadline = time.monotonic() + _READY_TIMEOUT
        for scenario in self.scenarios:
            if not scenario.listens:
                continue
            owner = self._owner(scenario)
            while not _accepts(scenario.address, scenario.port):
                if owner.popen.poll() is not None:
                    raise FleetError(
                        f"{owner.name} exited with status {owner.popen.returncode} before "
                        f"{scenario.address}:{scenario.port} was ready: {owner.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise FleetError(
                        f"{owner.name} did not accept connections on "
                        f"{scenario.address}:{scenario.port} within {_READY_TIMEOUT:g}s: "
                        f"{owner.log_tail()}"
                    )
                # The pause between polls doubles as a wait for the server's exit.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    owner.popen.wait(0.02)
        for process in self._processes:
            if process.popen.poll() is not None:
                raise FleetError(
                    f"{process.name} exited with status {process.popen.returncode}: "
                    f"{process.log_tail()}"
                )


def describe(scenario: Scenario) -> str:
    """One line: where, what, and the expected outcome."""
    host = f"[{scenario.address}]" if ":" in scenario.address else scenario.address

    def mode(expected: Expected) -> str:
        return "ok" if expected.ok else str(expected.reason)

    return (
        f"{scenario.name:<21} {host}:{scenario.port:<5} {scenario.host:<20} "
        f"sni={mode(scenario.sni):<10} no_sni={mode(scenario.no_sni):<17} "
        f"sni_required={int(scenario.sni_required)} mismatch={int(scenario.certificate_mismatch)}"
        f"  {scenario.summary}"
    )


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False
