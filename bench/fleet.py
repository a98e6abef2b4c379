"""The benchmark's TLS servers on loopback: nginx with N SNI names, and black holes.

nginx serves every endpoint name ``h00000.bench.test`` ... from a few server
blocks (virtual hosts) that share one wildcard ``*.bench.test`` certificate,
on a few ports; a default server on the same ports shows another certificate,
so the handshake without SNI succeeds with a different leaf (the commonest
SNI dependence in the field).  Certificates are ECDSA P-256 from
``exporter.demo.pki``: root -> intermediate -> leaf, the server sending leaf
and intermediate as real servers do.

Endpoint ``i`` is ``name(i)`` on ``ports[i % len(ports)]``, at 127.0.0.1.

A black hole accepts connections and never answers (it reads and discards, so
that closed connections are noticed and their descriptors freed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import resource
import selectors
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self

from exporter.demo.pki import CA

if TYPE_CHECKING:
    from collections.abc import Iterator

NAME_FORMAT = "h%05d.bench.test"
DEFAULT_NAME = "default.other.test"
ADDRESS = "127.0.0.1"


def name(index: int) -> str:
    """The SNI name of endpoint ``index``."""
    return NAME_FORMAT % index


def free_ports(count: int) -> list[int]:
    """Ports the kernel picks as free on 127.0.0.1 (released before return)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((ADDRESS, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclasses.dataclass(frozen=True, slots=True)
class Pki:
    ca_file: Path  # root CA bundle (PEM): what the exporter trusts
    wildcard: tuple[Path, Path]  # fullchain .crt, .key for *.bench.test
    default: tuple[Path, Path]  # for the default server (another name)
    wildcard_fingerprint: str  # sha256 hex of the leaf's DER
    default_fingerprint: str


def make_pki(directory: Path) -> Pki:
    root = CA.root("sni-exporter bench Root CA")
    inter = root.intermediate("sni-exporter bench Intermediate CA")
    wildcard = inter.leaf(dns_names=("*.bench.test",))
    default = inter.leaf(dns_names=(DEFAULT_NAME,))
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(root.bundle_pem)
    return Pki(
        ca_file=ca_file,
        wildcard=wildcard.write(directory, "wildcard"),
        default=default.write(directory, "default"),
        wildcard_fingerprint=hashlib.sha256(wildcard.der).hexdigest(),
        default_fingerprint=hashlib.sha256(default.der).hexdigest(),
    )


def nginx_config(
    state: Path, pki: Pki, ports: list[int], count: int, vhosts: int, nofile: int
) -> str:
    listens_default = "".join(f"    listen {ADDRESS}:{p} ssl default_server;\n" for p in ports)
    listens = "".join(f"    listen {ADDRESS}:{p} ssl;\n" for p in ports)
    blocks = []
    per_block = -(-count // vhosts)
    for b in range(vhosts):
        names = [name(i) for i in range(b * per_block, min(count, (b + 1) * per_block))]
        if not names:
            break
        # One name per line keeps nginx's line-length limit out of the way at 10k names.
        name_lines = "\n".join(f"        {n}" for n in names)
        blocks.append(
            "  server {\n"
            f"{listens}"
            f"    server_name\n{name_lines};\n"
            f"    ssl_certificate {pki.wildcard[0]};\n"
            f"    ssl_certificate_key {pki.wildcard[1]};\n"
            "    return 204;\n"
            "  }\n"
        )
    return (
        "worker_processes 1;\n"  # leaves the other core to the client being measured
        "daemon off;\n"
        "master_process on;\n"
        f"pid {state}/nginx.pid;\n"
        f"error_log {state}/error.log warn;\n"
        f"worker_rlimit_nofile {nofile};\n"
        f"events {{ worker_connections {nofile // 2}; }}\n"
        "http {\n"
        "  access_log off;\n"
        f"  client_body_temp_path {state}/body;\n"
        f"  proxy_temp_path {state}/proxy;\n"
        f"  fastcgi_temp_path {state}/fastcgi;\n"
        f"  uwsgi_temp_path {state}/uwsgi;\n"
        f"  scgi_temp_path {state}/scgi;\n"
        "  server_names_hash_max_size 65536;\n"
        "  server_names_hash_bucket_size 128;\n"
        "  ssl_protocols TLSv1.2 TLSv1.3;\n"
        "  server {\n"
        f"{listens_default}"
        f"    ssl_certificate {pki.default[0]};\n"
        f"    ssl_certificate_key {pki.default[1]};\n"
        "    return 204;\n"
        "  }\n"
        f"{''.join(blocks)}"
        "}\n"
    )


def _nginx_binary() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).exists():
        raise RuntimeError("nginx not found: run `make system-deps` (Debian package nginx-light)")
    return found


def stop_process(proc: subprocess.Popen[bytes], grace_seconds: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_seconds``."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wait_listening(
    port: int, deadline_seconds: float = 15.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll until ``port`` accepts; fail early when ``process`` (the server) exits."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            with socket.create_connection((ADDRESS, port), timeout=1):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling a server's port with a deadline, not synchronising


@dataclasses.dataclass
class Nginx:
    state: Path
    pki: Pki
    ports: list[int]
    count: int
    process: subprocess.Popen[bytes] | None = None

    def endpoint(self, index: int) -> tuple[str, int]:
        return name(index), self.ports[index % len(self.ports)]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@contextlib.contextmanager
def run_nginx(state: Path, count: int, ports: int = 4, vhosts: int = 16) -> Iterator[Nginx]:
    """Start nginx for ``count`` endpoint names; stop it on exit."""
    state.mkdir(parents=True, exist_ok=True)
    pki = make_pki(state / "pki")
    port_list = free_ports(ports)
    conf = state / "nginx.conf"
    # One descriptor per connection; the hard limit is what nginx may raise to.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    conf.write_text(nginx_config(state, pki, port_list, count, vhosts, nofile))
    binary = _nginx_binary()
    check = subprocess.run(
        [binary, "-t", "-q", "-e", str(state / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t failed: {check.stderr.strip()}")
    proc = subprocess.Popen([binary, "-e", str(state / "error.log"), "-c", str(conf)])
    server = Nginx(state=state, pki=pki, ports=port_list, count=count, process=proc)
    try:
        for p in port_list:
            wait_listening(p, process=proc)
        yield server
    finally:
        stop_process(proc)


def leaf_fingerprint(port: int, server_name: str | None) -> str:
    """One handshake with the stdlib, for the sanity check of the fleet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((ADDRESS, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def sanity_check(server: Nginx) -> None:
    """SNI names must reach the wildcard vhost; no SNI the default server."""
    for index in {0, server.count // 2, server.count - 1}:
        host, port = server.endpoint(index)
        if leaf_fingerprint(port, host) != server.pki.wildcard_fingerprint:
            raise RuntimeError(f"nginx: {host}:{port} did not serve the wildcard certificate")
        if leaf_fingerprint(port, None) != server.pki.default_fingerprint:
            raise RuntimeError(f"nginx: port {port} without SNI did not serve the default cert")


class BlackHole:
    """Accepts TCP connections on loopback and never answers (a thread with selectors)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((ADDRESS, 0))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="blackhole", daemon=True)
        self.accepted = 0

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self.listener:
                        with contextlib.suppress(BlockingIOError):
                            conn, _addr = sock.accept()
                            conn.setblocking(False)
                            sel.register(conn, selectors.EVENT_READ)
                            self.accepted += 1
                        continue
                    try:
                        data = sock.recv(65536)  # the ClientHello, discarded: never answered
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(sock)
                        sock.close()
        finally:
            for key in list(sel.get_map().values()):
                if key.fileobj is not self.listener:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    sock.close()
            sel.close()
