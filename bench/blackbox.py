"""blackbox_exporter doing the same work: two tcp+tls probes per endpoint.

Go's resolver would look the endpoint names up in DNS, so every target is the
IP literal ``127.0.0.1:PORT``: the module of endpoint ``i`` sets
``tls_config.server_name`` to its name (one module per endpoint, so each
handshake carries that endpoint's own SNI name), and the ``nosni`` module sets
none, so Go derives the server name from the IP literal and, by RFC 6066,
sends no SNI.  Verification is off as in our probe's handshake; blackbox still
parses the chain for its ``probe_ssl_*`` series.

The driver is a small thread pool of keep-alive ``http.client`` connections
(its own CPU is not counted: only blackbox's, from /proc/PID/stat).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import itertools
import shutil
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from bench import fleet, measure

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

BINARY = "/usr/bin/prometheus-blackbox-exporter"
_MODULE = """  {name}:
    prober: tcp
    timeout: {timeout}s
    tcp:
      tls: true
      tls_config:
        insecure_skip_verify: true
{server_name}"""


def config(count: int, timeout: float) -> str:
    modules = [_MODULE.format(name="nosni", timeout=timeout, server_name="")]
    modules += [
        _MODULE.format(
            name=f"s{i}", timeout=timeout, server_name=f"        server_name: {fleet.name(i)}\n"
        )
        for i in range(count)
    ]
    return "modules:\n" + "".join(modules)


def probe_paths(server: fleet.Nginx, indices: Sequence[int]) -> list[str]:
    """Two /probe requests per endpoint: with its SNI name, and without SNI."""
    paths = []
    for i in indices:
        _, port = server.endpoint(i)
        target = urllib.parse.quote(f"{fleet.ADDRESS}:{port}")
        paths.append(f"/probe?module=s{i}&target={target}")
        paths.append(f"/probe?module=nosni&target={target}")
    return paths


@dataclasses.dataclass
class Blackbox:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return measure.process_cpu_seconds(self.pid)


@contextlib.contextmanager
def run_blackbox(state: Path, count: int, timeout: float = 5.0) -> Iterator[Blackbox]:
    if not Path(BINARY).exists() and not shutil.which("prometheus-blackbox-exporter"):
        raise RuntimeError(f"{BINARY} not found: install the Debian package")
    state.mkdir(parents=True, exist_ok=True)
    conf = state / "blackbox.yml"
    conf.write_text(config(count, timeout))
    (port,) = fleet.free_ports(1)
    log = (state / "blackbox.log").open("wb")
    proc = subprocess.Popen(
        [
            BINARY,
            f"--config.file={conf}",
            f"--web.listen-address={fleet.ADDRESS}:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        fleet.wait_listening(port, deadline_seconds=30, process=proc)
        yield Blackbox(port=port, process=proc)
    finally:
        fleet.stop_process(proc)
        log.close()


@dataclasses.dataclass(frozen=True, slots=True)
class DriveResult:
    requests: int
    succeeded: int  # responses with probe_success 1
    wall_seconds: float


def drive(
    port: int,
    paths: Sequence[str],
    concurrency: int,
    deadline: float,
    rate: float | None = None,
) -> DriveResult:
    """GET every path with ``concurrency`` keep-alive connections; bounded by ``deadline``.

    With ``rate`` (requests per second) request k is sent no earlier than
    k / rate after the start, spreading the work evenly in time as a
    Prometheus scraping N probe targets on one interval does; without, as
    fast as the connections allow.
    """
    jobs = iter(enumerate(paths))
    lock = threading.Lock()
    succeeded = [0]
    start = time.monotonic()

    def worker() -> None:
        conn = http.client.HTTPConnection(fleet.ADDRESS, port, timeout=30)
        ok = 0
        try:
            while time.monotonic() < deadline:
                with lock:
                    index, path = next(jobs, (-1, ""))
                if index < 0:
                    break
                if rate:
                    # Pacing a load generator: waiting for a point in time is the point.
                    time.sleep(max(0.0, start + index / rate - time.monotonic()))
                conn.request("GET", path)
                body = conn.getresponse().read()
                ok += b"\nprobe_success 1" in body
        finally:
            conn.close()
            with lock:
                succeeded[0] += ok

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return DriveResult(len(paths), succeeded[0], time.monotonic() - start)


def fingerprint_check(box: Blackbox, server: fleet.Nginx) -> None:
    """blackbox must see the wildcard leaf with SNI and the default leaf without."""
    for path, expected in zip(
        probe_paths(server, [0]),
        itertools.cycle([server.pki.wildcard_fingerprint, server.pki.default_fingerprint]),
        strict=False,
    ):
        conn = http.client.HTTPConnection(fleet.ADDRESS, box.port, timeout=30)
        try:
            conn.request("GET", path + "&debug=false")
            body = conn.getresponse().read().decode()
        finally:
            conn.close()
        if f'fingerprint_sha256="{expected}"' not in body:
            raise RuntimeError(f"blackbox {path}: expected leaf {expected[:12]}…; got:\n{body}")
