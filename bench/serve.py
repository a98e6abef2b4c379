"""The full service: ``sni-exporter serve`` over N targets, measured from outside.

CPU comes from /proc/PID/stat over whole probe intervals, so it includes
scheduling, probing, certificate checks, publication and the exporter's own
metrics.  Everything else is read from /metrics with a small line scanner (the
harness must not spend a core parsing 100k series next to the service).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import http.client
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench import fleet, measure

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

_LAST_RUN = b"sni_probe_last_run_timestamp_seconds{"
_LATENESS = b"sni_exporter_scheduler_lateness_seconds_bucket{"
_PROBES = b"sni_exporter_probes_total{"


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


def config_text(
    endpoints: Sequence[Endpoint], interval: float, timeout: float, ca_file: Path
) -> str:
    """A targets file for ``endpoints``, every one with ``address: 127.0.0.1``."""
    lines = [
        "defaults:",
        f"  interval: {interval:g}s",
        f"  timeout: {timeout:g}s",
        f"  ca_file: {ca_file}",
        "targets:",
    ]
    lines += [
        f"  - {{host: {e.host}, port: {e.port}, address: {fleet.ADDRESS}}}" for e in endpoints
    ]
    return "\n".join(lines) + "\n"


def binary() -> str:
    return str(Path(sys.executable).parent / "sni-exporter")


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    status: int
    body: bytes  # decompressed
    wire_bytes: int
    headers_seconds: float  # until the status line and headers were read
    seconds: float  # until the whole body was read


@dataclasses.dataclass
class Service:
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    # The process's CPU when its port first answered: the targets file is
    # loaded by then (it is read before the port is bound), and the first
    # round of probes is about to start.
    listening_cpu_seconds: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return measure.process_cpu_seconds(self.pid)

    def memory(self) -> dict[str, int]:
        return measure.process_memory(self.pid)

    def get(self, path: str, *, gzipped: bool = False) -> Fetched:
        """GET ``path`` on a new connection (as Prometheus's scrapes mostly are)."""
        conn = http.client.HTTPConnection(fleet.ADDRESS, self.port, timeout=30)
        headers = {"Accept-Encoding": "gzip"} if gzipped else {}
        try:
            start = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            first = time.perf_counter()
            body = response.read()
            done = time.perf_counter()
        finally:
            conn.close()
        wire = len(body)
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return Fetched(response.status, body, wire, first - start, done - start)

    def wait_ready(self, deadline_seconds: float) -> float:
        """Poll /-/ready until 200 (after the first round of probes); seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < deadline_seconds:
            if self.process.poll() is not None:
                raise RuntimeError(f"sni-exporter exited: see {self.log}")
            with contextlib.suppress(OSError):
                if self.get("/-/ready").status == 200:
                    return time.monotonic() - start
            time.sleep(0.2)  # polling with a deadline
        raise RuntimeError(f"sni-exporter not ready after {deadline_seconds:g}s: see {self.log}")


@contextlib.contextmanager
def run_service(
    state: Path, config: str, concurrency: int | None, tree: Path | None = None
) -> Iterator[Service]:
    """``sni-exporter serve`` on ``config``: this checkout's, or ``python -m exporter``
    from the checkout ``tree`` (for comparing checkouts, ``bench.ab``)."""
    state.mkdir(parents=True, exist_ok=True)
    conf = state / "targets.yaml"
    conf.write_text(config)
    (port,) = fleet.free_ports(1)
    log_path = state / "sni-exporter.log"
    command = [binary()] if tree is None else [sys.executable, "-m", "exporter"]
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree.resolve())}
    argv = [
        *command,
        "serve",
        "--config.file",
        str(conf),
        "--web.listen-address",
        f"{fleet.ADDRESS}:{port}",
        "--log.level",
        "warn",
    ]
    if concurrency:
        argv += ["--probe.concurrency", str(concurrency)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tree)
        try:
            try:
                fleet.wait_listening(port, deadline_seconds=60, process=proc)
            except RuntimeError:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(f"sni-exporter serve failed: {' '.join(tail)}") from None
            cpu = measure.process_cpu_seconds(proc.pid)
            yield Service(port=port, process=proc, log=log_path, listening_cpu_seconds=cpu)
        finally:
            fleet.stop_process(proc, grace_seconds=15)  # SIGTERM: the graceful stop


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape tells, with the process counters read next to it."""

    at: float  # time.time() just before the scrape
    cpu_seconds: float
    rss_bytes: int
    last_run: dict[bytes, float]  # target label value -> last run (POSIX s)
    lateness: dict[float, float]  # bucket upper bound -> cumulative count
    probes: float  # sni_exporter_probes_total, all results
    successes: float  # sni_exporter_probes_total{result="success"}: the SNI handshake worked


def _le(line: bytes) -> float:
    value = line.split(b'le="', 1)[1].split(b'"', 1)[0]
    return float("inf") if value == b"+Inf" else float(value)


def _target(line: bytes) -> bytes:
    return line.split(b'target="', 1)[1].split(b'"', 1)[0]


def snapshot(service: Service) -> Snapshot:
    at = time.time()
    cpu = service.cpu_seconds()
    rss = service.memory().get("VmRSS", 0)
    fetched = service.get("/metrics")
    if fetched.status != 200:
        raise RuntimeError(f"/metrics answered {fetched.status}")
    body = fetched.body
    last_run: dict[bytes, float] = {}
    lateness: dict[float, float] = {}
    probes = successes = 0.0
    for line in body.split(b"\n"):
        if line.startswith(_LAST_RUN):
            last_run[_target(line)] = float(line.rsplit(b" ", 1)[1])
        elif line.startswith(_LATENESS):
            lateness[_le(line)] = float(line.rsplit(b" ", 1)[1])
        elif line.startswith(_PROBES):
            value = float(line.rsplit(b" ", 1)[1])
            probes += value
            if b'result="success"' in line:
                successes += value
    return Snapshot(at, cpu, rss, last_run, lateness, probes, successes)


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """Figures of the interval between two snapshots."""

    seconds: float
    cpu_seconds: float
    probes: float
    successes: float
    lateness_p99: float
    # Black-holed targets are excluded: their results (and last-run times) are
    # published only after their timeout.
    max_age_seconds: float  # oldest last run at the end, relative to the end
    stale_targets: int  # last run older than interval + allowed lateness at the end
    rss_bytes: int

    @property
    def cpu_per_endpoint(self) -> float:
        return self.cpu_seconds / self.probes if self.probes else float("nan")

    @property
    def cores(self) -> float:
        return self.cpu_seconds / self.seconds


def window(
    a: Snapshot, b: Snapshot, interval: float, allowed_lateness: float, exclude: set[bytes]
) -> Window:
    """Figures between two snapshots; ages only of targets not in ``exclude``."""
    bounds = sorted(set(a.lateness) | set(b.lateness))
    deltas = [(le, b.lateness.get(le, 0.0) - a.lateness.get(le, 0.0)) for le in bounds]
    ages = [b.at - t for name, t in b.last_run.items() if name not in exclude]
    return Window(
        seconds=b.at - a.at,
        cpu_seconds=b.cpu_seconds - a.cpu_seconds,
        probes=b.probes - a.probes,
        successes=b.successes - a.successes,
        lateness_p99=measure.histogram_quantile(0.99, deltas),
        max_age_seconds=max(ages, default=float("nan")),
        stale_targets=sum(age > interval + allowed_lateness for age in ages),
        rss_bytes=b.rss_bytes,
    )


def measure_intervals(
    service: Service, interval: float, cycles: int, allowed_lateness: float, exclude: set[bytes]
) -> tuple[list[Snapshot], list[Window]]:
    """After one more interval (the first round starts in a burst), a snapshot at
    the start and the end of each of ``cycles`` intervals, and their windows."""
    time.sleep(interval)  # a fixed measurement window, not synchronisation
    snaps = [snapshot(service)]
    for _ in range(cycles):
        time.sleep(max(0.0, snaps[-1].at + interval - time.time()))
        snaps.append(snapshot(service))
    windows = [
        window(a, b, interval, allowed_lateness, exclude) for a, b in itertools.pairwise(snaps)
    ]
    return snaps, windows


def periods(a: Snapshot, b: Snapshot, cycles: int, exclude: set[bytes]) -> list[float]:
    """Each target's realised probe period over ``cycles`` intervals (excluding some).

    A result is published a little after its probe started, so a target probed
    just before a snapshot may show its previous run: single periods are off
    by up to one interval ÷ cycles at the edges.  Their median is robust to
    that; ``Window.successes`` counts healthy probes exactly.
    """
    return [
        (b.last_run[t] - a.last_run[t]) / cycles
        for t in b.last_run
        if t in a.last_run and t not in exclude
    ]


def scrape_latencies(service: Service, count: int, *, gzipped: bool) -> list[Fetched]:
    """``count`` scrapes of /metrics, 20 ms apart (bodies dropped)."""
    out = []
    for _ in range(count):
        fetched = service.get("/metrics", gzipped=gzipped)
        out.append(dataclasses.replace(fetched, body=b""))
        time.sleep(0.02)  # spacing scrapes, as a scraper would; not synchronising
    return out
