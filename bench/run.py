"""The benchmark of issue 6: our CPU per endpoint beside blackbox_exporter and a C floor.

One run, side by side, against one nginx on loopback (N SNI names on a
wildcard certificate, a default server with another certificate):

1. the C limit (bench/build/handshake_limit), blackbox_exporter and our probe
   engine in-process, interleaved per repeat so that load from elsewhere hits
   all three alike; ratios are taken per repeat, then summarised;
2. the full service (``sni-exporter serve``) over whole probe intervals:
   CPU per endpoint, cores, RSS, scheduler lateness, whether every endpoint was
   probed in every interval, /metrics scrape latency and validity;
3. the same service with a fraction of the targets black-holed.

Every figure is printed with PASS/MISS against its target and written as JSON
to bench/results/<timestamp>.json.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import selectors
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from bench import blackbox, fleet, measure, serve
from bench.measure import Summary

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"
LIMIT_BINARY = BUILD / "handshake_limit"
# The full scenario's probe rate: 10,000 endpoints every 60 s.
FULL_RATE = 10_000 / 60


@dataclasses.dataclass(frozen=True, slots=True)
class Figure:
    key: str
    label: str
    value: Summary | float | str
    unit: str = ""
    scale: float = 1.0
    target: str = ""
    passed: bool | None = None  # None: information only

    @property
    def status(self) -> str:
        return "" if self.passed is None else ("PASS" if self.passed else "MISS")

    def shown(self) -> str:
        if isinstance(self.value, Summary):
            spread = f" ±{self.value.spread / 2:.0%}" if len(self.value.samples) > 1 else ""
            return self.value.show(self.scale) + spread
        if isinstance(self.value, float):
            return f"{self.value * self.scale:.3f}"
        return self.value

    def as_json(self) -> dict[str, Any]:
        value: Any = self.value.as_json() if isinstance(self.value, Summary) else self.value
        return {
            "label": self.label,
            "value": value,
            "unit": self.unit,
            "scale": self.scale,
            "target": self.target,
            "status": self.status or None,
        }


class Report:
    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.notes: list[str] = []

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(
            f"  {figure.label:<58} {figure.shown():>30} {figure.unit:<6} "
            f"{figure.target:<10} {figure.status}",
            flush=True,
        )

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


# --- the three side by side ---------------------------------------------------


def run_limit(
    server: fleet.Nginx, count: int, inflight: int, timeout: float, rate: float | None = None
) -> dict[str, Any]:
    out = subprocess.run(
        [
            str(LIMIT_BINARY),
            "--address",
            fleet.ADDRESS,
            "--ports",
            ",".join(map(str, server.ports)),
            "--names",
            fleet.NAME_FORMAT,
            "--count",
            str(count),
            "--inflight",
            str(inflight),
            "--timeout",
            str(timeout),
            *(["--rate", str(rate)] if rate else []),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=max(120.0, count * 0.05) + (2 * count / rate if rate else 0),
    )
    if not out.stdout.strip():
        raise RuntimeError(f"handshake_limit failed: {out.stderr.strip()}")
    result: dict[str, Any] = json.loads(out.stdout)
    if result["failed"]:
        raise RuntimeError(f"handshake_limit: {result['failed']} handshakes failed: {result}")
    result["cpu_seconds"] = result["cpu_user_seconds"] + result["cpu_system_seconds"]
    return result


def run_blackbox(
    box: blackbox.Blackbox,
    paths: list[str],
    count: int,
    inflight: int,
    rate: float | None = None,
) -> dict[str, Any]:
    cpu0 = box.cpu_seconds()
    budget = count * 0.1 + 60 + (len(paths) / rate if rate else 0)
    result = blackbox.drive(box.port, paths, inflight, time.monotonic() + budget, rate)
    cpu = box.cpu_seconds() - cpu0
    if result.succeeded != len(paths):
        raise RuntimeError(f"blackbox: {result.succeeded} of {len(paths)} probes succeeded")
    return {"cpu_seconds": cpu, "wall_seconds": result.wall_seconds, "probes": len(paths)}


class Engine:
    """The ``bench.engine`` worker process, driven line by line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def ask(self, command: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = _readline(self.proc.stdout, timeout)
        if not line:
            raise RuntimeError(f"engine worker died on {command!r} (rc {self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer


def _readline(stream: IO[str], timeout: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"engine worker gave no answer within {timeout:g}s")
    return stream.readline()


@contextlib.contextmanager
def engine_worker(
    server: fleet.Nginx, count: int, concurrency: int, timeout: float, profile: str | None
) -> Iterator[Engine]:
    argv = [
        sys.executable,
        "-m",
        "bench.engine",
        "--ports",
        ",".join(map(str, server.ports)),
        "--count",
        str(count),
        "--ca-file",
        str(server.pki.ca_file),
        "--concurrency",
        str(concurrency),
        "--timeout",
        str(timeout),
    ]
    if profile:
        argv += ["--profile", profile]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE.parent
    )
    try:
        yield Engine(proc)
    finally:
        if proc.stdin:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write("quit\n")
                proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def check_engine_cycle(answer: dict[str, Any]) -> None:
    if answer["healthy_as_expected"] != answer["healthy"]:
        raise RuntimeError(
            f"engine: {answer['healthy'] - answer['healthy_as_expected']} of {answer['healthy']}"
            " healthy probes did not see two good handshakes with different leaves"
        )


def side_by_side(args: argparse.Namespace, server: fleet.Nginx, report: Report) -> dict[str, Any]:
    n = args.count
    section(
        f"CPU per endpoint, {n} endpoints x 2 handshakes, {args.inflight} in flight, "
        f"{args.repeats} repeats interleaved (ms; median [min-max] ±half-spread)"
    )
    paths = blackbox.probe_paths(server, range(n))
    limit, box_runs, ours = [], [], []
    renders: list[dict[str, Any]] = []
    with (
        blackbox.run_blackbox(args.state / "blackbox", n, args.timeout) as box,
        engine_worker(server, n, args.inflight, args.timeout, None) as engine,
    ):
        blackbox.fingerprint_check(box, server)
        # Warm-ups, not counted: first connections, Go's heap, our certificate
        # cache and client context, the C program's page cache.
        warm = min(n, 200)
        run_limit(server, warm, args.inflight, args.timeout)
        run_blackbox(box, paths[: 2 * warm], warm, args.inflight)
        check_engine_cycle(engine.ask(f"cycle {warm}", timeout=120))
        for r in range(args.repeats):
            limit.append(run_limit(server, n, args.inflight, args.timeout))
            box_runs.append(run_blackbox(box, paths, n, args.inflight))
            answer = engine.ask(f"cycle {n}", timeout=60 + n * 0.05)
            check_engine_cycle(answer)
            ours.append(answer)
            print(
                f"  repeat {r + 1}: C {limit[-1]['cpu_seconds'] / n * 1e3:.3f}  "
                f"blackbox {box_runs[-1]['cpu_seconds'] / n * 1e3:.3f}  "
                f"ours {answer['cpu_seconds'] / n * 1e3:.3f} ms/endpoint",
                flush=True,
            )
            render_file = args.state / "engine-exposition.txt"
            renders.append(engine.ask(f"render {render_file}", timeout=120))
        bb_rss = measure.process_memory(box.pid).get("VmHWM", 0)

    per = {
        "limit": Summary.of([x["cpu_seconds"] / n for x in limit]),
        "blackbox": Summary.of([x["cpu_seconds"] / n for x in box_runs]),
        "engine": Summary.of([x["cpu_seconds"] / n for x in ours]),
    }
    report.add(
        Figure("limit_cpu_per_endpoint", "C limit: CPU per endpoint", per["limit"], "ms", 1e3)
    )
    report.add(
        Figure(
            "blackbox_cpu_per_endpoint",
            "blackbox_exporter: CPU per endpoint",
            per["blackbox"],
            "ms",
            1e3,
        )
    )
    report.add(
        Figure(
            "engine_cpu_per_endpoint",
            "ours, probe engine in-process: CPU/endpoint",
            per["engine"],
            "ms",
            1e3,
        )
    )
    vs_box = Summary.of(
        [o["cpu_seconds"] / b["cpu_seconds"] for o, b in zip(ours, box_runs, strict=True)]
    )
    vs_lim = Summary.of(
        [o["cpu_seconds"] / c["cpu_seconds"] for o, c in zip(ours, limit, strict=True)]
    )
    report.add(
        Figure(
            "engine_vs_blackbox",
            "ours (engine) ÷ blackbox",
            vs_box,
            "x",
            target="<= 0.90",
            passed=vs_box.median <= 0.90,
        )
    )
    report.add(
        Figure(
            "engine_vs_limit",
            "ours (engine) ÷ C limit",
            vs_lim,
            "x",
            target="<= 1.15",
            passed=vs_lim.median <= 1.15,
        )
    )
    report.add(
        Figure(
            "limit_wall",
            "C limit: wall time of a full cycle",
            Summary.of([x["wall_seconds"] for x in limit]),
            "s",
        )
    )
    report.add(
        Figure(
            "blackbox_wall",
            "blackbox_exporter: wall time of a full cycle",
            Summary.of([x["wall_seconds"] for x in box_runs]),
            "s",
        )
    )
    report.add(
        Figure(
            "engine_wall",
            "ours (engine): wall time of a full cycle",
            Summary.of([x["wall_seconds"] for x in ours]),
            "s",
        )
    )
    report.add(
        Figure(
            "engine_rss",
            "ours (engine): peak RSS",
            float(max(x["max_rss_bytes"] for x in ours)),
            "MB",
            1e-6,
        )
    )
    report.add(
        Figure(
            "engine_gc_share",
            "ours (engine): share of its CPU in the cyclic GC",
            Summary.of([sum(x["gc_seconds"]) / x["cpu_seconds"] for x in ours]),
            "%",
            100,
        )
    )
    report.add(Figure("blackbox_rss", "blackbox_exporter: peak RSS", float(bb_rss), "MB", 1e-6))
    if renders:
        changed = Summary.of([x["changed_render_seconds"] for x in renders])
        report.add(
            Figure(
                "render_changed",
                f"render after a full round of changes ({n} targets; parts + compressed)",
                changed,
                "ms",
                1e3,
                "< 150",
                changed.median < 0.150,
            )
        )
        report.add(
            Figure(
                "render_deflate",
                "  of which compressing the changed chunks",
                Summary.of([x["deflate_seconds"] for x in renders]),
                "ms",
                1e3,
            )
        )
        report.add(
            Figure(
                "render_cold",
                "  cold render (new renderer)",
                Summary.of([x["cold_render_seconds"] for x in renders]),
                "ms",
                1e3,
            )
        )
        report.add(
            Figure(
                "render_series",
                "  series / bytes rendered",
                f"{renders[-1]['series']} / {renders[-1]['bytes']}",
            )
        )
    return {
        "per_endpoint": per,
        "raw": {"limit": limit, "blackbox": box_runs, "engine": ours, "render": renders},
    }


# --- the full service ---------------------------------------------------------


def validate_exposition(body: bytes, report: Report, key: str) -> None:
    problems = []
    try:
        families = list(text_string_to_metric_families(body.decode()))
    except Exception as error:
        problems.append(f"prometheus_client parser: {error}")
        families = []
    promtool = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, check=False, timeout=120
    )
    if promtool.returncode != 0:
        text = (promtool.stdout + promtool.stderr).decode(errors="replace").strip()
        problems.append("promtool: " + " | ".join(text.splitlines()[:5]))
    verdict = "ok" if not problems else "; ".join(problems)
    report.add(
        Figure(
            key,
            f"exposition valid ({len(families)} families; promtool, parser)",
            verdict,
            target="ok",
            passed=not problems,
        )
    )


def measure_service(
    args: argparse.Namespace,
    server: fleet.Nginx,
    hole_port: int | None,
    label: str,
) -> dict[str, Any]:
    """Run the service for warm-up + ``cycles`` intervals; figures per interval."""
    endpoints, holes = [], set()
    step = round(1 / args.blackhole_fraction) if hole_port else 0
    for i in range(args.count):
        host, port = server.endpoint(i)
        if step and i % step == step - 1:
            port = hole_port or port
            holes.add(f"{host}:{port}".encode())
        endpoints.append(serve.Endpoint(host, port))
    config = serve.config_text(endpoints, args.interval, args.timeout, server.pki.ca_file)
    state = args.state / f"service-{label}"
    # Without black holes, as many probes in flight as the other clients have,
    # for the first round's burst (the steady state never has that many).
    # With them, the service's default: 10 % of 10k targets taking the 5 s
    # timeout need 83 in flight on average, and at 50 the schedule falls behind
    # (measured: healthy cycle +68 %, lateness p99 60 s).
    concurrency = args.concurrency or (None if hole_port else args.inflight)
    with serve.run_service(state, config, concurrency) as svc:
        ready = svc.wait_ready(deadline_seconds=args.interval * 3 + 60)
        first_round_cpu = svc.cpu_seconds() - svc.listening_cpu_seconds
        snaps, windows = serve.measure_intervals(
            svc, args.interval, args.cycles, args.allowed_lateness, holes
        )
        healthy_periods = serve.periods(snaps[0], snaps[-1], args.cycles, holes)
        extra: dict[str, Any] = {}
        if not hole_port:
            plain = serve.scrape_latencies(svc, args.scrapes, gzipped=False)
            gz = serve.scrape_latencies(svc, args.scrapes, gzipped=True)
            extra = {"scrape_plain": plain, "scrape_gzip": gz, "body": svc.get("/metrics").body}
        memory = svc.memory()
    return {
        "ready_seconds": ready,
        # The first round probes every target at once (a burst, like the
        # side-by-side clients) through the whole exporter: scheduling,
        # probing, certificates, verdict and the first (cold) render.
        "first_round_cpu_per_endpoint": first_round_cpu / args.count,
        "windows": windows,
        # Healthy targets' cycle time: the window's length x healthy targets ÷
        # successful probes in it (every healthy probe succeeds here, every
        # black-holed one fails), which has no edge effects; and the median of
        # the per-target periods between the first and last snapshot.
        "healthy_cycle": (snaps[-1].at - snaps[0].at)
        * (args.count - len(holes))
        / max(1.0, snaps[-1].successes - snaps[0].successes),
        "healthy_period_median": statistics.median(healthy_periods)
        if healthy_periods
        else math.nan,
        "healthy_targets": args.count - len(holes),
        "memory": memory,
        **extra,
    }


#: Seconds of paced work per repeat: enough for a steady state, short enough for the budget.
PACED_SECONDS = 20.0


def paced(args: argparse.Namespace, server: fleet.Nginx) -> dict[str, Summary]:
    """The C limit, blackbox_exporter and our engine with the work spread evenly in time.

    The service probes at a steady pace, not in a burst, and a client that
    wakes up for every handshake costs more per handshake than one kept busy
    (the C program too: more epoll_wait calls, colder caches).  So the
    service is compared with both driven at its pace: N endpoints per
    interval, as Prometheus scraping N probe targets would drive blackbox;
    over at most PACED_SECONDS at that rate.  Our engine alone at that pace
    splits the service's figure in two: the probing, and what the service
    adds (scheduling, publication, its own metrics).
    """
    per_second = args.count / args.interval
    n = min(args.count, max(200, round(per_second * PACED_SECONDS)))
    section(f"paced like the service: {per_second:.0f} endpoints/s, {n} endpoints per repeat")
    paths = blackbox.probe_paths(server, range(n))
    limit, box_samples, ours = [], [], []
    with (
        blackbox.run_blackbox(args.state / "blackbox-paced", n, args.timeout) as box,
        engine_worker(server, n, args.inflight, args.timeout, None) as engine,
    ):
        run_blackbox(box, paths[:400], 200, args.inflight)
        check_engine_cycle(engine.ask(f"cycle {min(n, 200)}", timeout=120))
        for r in range(args.repeats):
            c = run_limit(server, n, args.inflight, args.timeout, rate=2 * per_second)
            limit.append(c["cpu_seconds"] / n)
            b = run_blackbox(box, paths, n, args.inflight, rate=2 * per_second)
            box_samples.append(b["cpu_seconds"] / n)
            e = engine.ask(f"paced {n} {per_second!r}", timeout=60 + 2 * n / per_second)
            check_engine_cycle(e)
            ours.append(e["cpu_seconds"] / n)
            print(
                f"  repeat {r + 1}: C {limit[-1] * 1e3:.3f}  blackbox {box_samples[-1] * 1e3:.3f}"
                f"  ours (engine) {ours[-1] * 1e3:.3f} ms/endpoint",
                flush=True,
            )
    return {
        "limit_paced": Summary.of(limit),
        "blackbox_paced": Summary.of(box_samples),
        "engine_paced": Summary.of(ours),
    }


def service_figures(
    args: argparse.Namespace, base: dict[str, Any], per: dict[str, Summary], report: Report
) -> None:
    n = args.count
    section(
        f"the service: sni-exporter serve, {n} targets every {args.interval:g}s, "
        f"{args.cycles} intervals measured"
    )
    ws: list[serve.Window] = base["windows"]
    cpu = Summary.of([w.cpu_per_endpoint for w in ws])
    report.add(
        Figure("service_cpu_per_endpoint", "ours, service: CPU per endpoint", cpu, "ms", 1e3)
    )
    for key, label in (
        ("limit_paced", "C limit"),
        ("blackbox_paced", "blackbox_exporter"),
        ("engine_paced", "ours, probe engine in-process"),
    ):
        report.add(
            Figure(
                f"{key}_cpu_per_endpoint", f"{label}, paced: CPU per endpoint", per[key], "ms", 1e3
            )
        )
    engine = per["engine_paced"].median
    report.add(
        Figure(
            "engine_paced_vs_limit_paced",
            "ours (engine) ÷ C limit, both paced",
            engine / per["limit_paced"].median,
            "x",
        )
    )
    report.add(
        Figure(
            "service_overhead_cpu_per_endpoint",
            "what the service adds to the engine paced alike: CPU per endpoint",
            cpu.median - engine,
            "ms",
            1e3,
        )
    )
    for key, label, target in (
        ("blackbox_paced", "blackbox paced alike", 0.90),
        ("limit_paced", "C limit paced alike", 1.15),
    ):
        ratio = cpu.median / per[key].median
        report.add(
            Figure(
                f"service_vs_{key}",
                f"ours (service) ÷ {label} (medians)",
                ratio,
                "x",
                target=f"<= {target:.2f}",
                passed=ratio <= target,
            )
        )
    burst = float(base["first_round_cpu_per_endpoint"])
    report.add(
        Figure(
            "service_first_round_cpu_per_endpoint",
            f"ours, service, first round (all {n} at once, {args.concurrency or args.inflight} "
            "in flight): CPU per endpoint",
            burst,
            "ms",
            1e3,
        )
    )
    for key, label, target in (
        ("blackbox", "blackbox in a burst", 0.90),
        ("limit", "C limit in a burst", 1.15),
    ):
        if math.isnan(per[key].median):  # the side-by-side part did not run
            continue
        ratio = burst / per[key].median
        report.add(
            Figure(
                f"service_first_round_vs_{key}",
                f"ours (service, first round) ÷ {label}",
                ratio,
                "x",
                target=f"<= {target:.2f}",
                passed=ratio <= target,
            )
        )
    probed = Summary.of([w.probes / n for w in ws])
    stale = max(w.stale_targets for w in ws)
    report.add(Figure("service_probes_per_interval", "probes per interval ÷ targets", probed, "x"))
    report.add(
        Figure(
            "service_every_endpoint",
            "every endpoint probed in every interval",
            f"{stale} stale",
            target="0 stale",
            passed=stale == 0,
        )
    )
    late = Summary.of([w.lateness_p99 for w in ws])
    report.add(
        Figure(
            "service_lateness_p99",
            "scheduler lateness p99 (per interval)",
            late,
            "s",
            target="< 5",
            passed=late.high < 5,
        )
    )
    cores = Summary.of([w.cores for w in ws])
    report.add(
        Figure(
            "service_cores",
            "exporter CPU, cores on average",
            cores,
            "cores",
            target="< 1",
            passed=cores.high < 1,
        )
    )
    rss = float(max(w.rss_bytes for w in ws))
    report.add(
        Figure(
            "service_rss",
            f"RSS with {n} targets (max over intervals)",
            rss,
            "MB",
            1e-6,
            "< 200",
            rss < 200e6,
        )
    )
    report.add(
        Figure(
            "service_rss_peak",
            "  peak RSS (VmHWM)",
            float(base["memory"].get("VmHWM", 0)),
            "MB",
            1e-6,
        )
    )
    for kind in ("gzip", "plain"):
        scrapes: list[serve.Fetched] = base[f"scrape_{kind}"]
        total = [f.seconds for f in scrapes]
        first = [f.headers_seconds for f in scrapes]
        p50, p99 = measure.percentile(total, 0.5), measure.percentile(total, 0.99)
        size = scrapes[-1].wire_bytes / 1e6
        head = f"/metrics scrape, {kind} ({size:.1f} MB), {len(scrapes)} scrapes:"
        report.add(Figure(f"scrape_{kind}_p50", f"{head} p50", p50, "ms", 1e3))
        gate = kind == "gzip"  # what Prometheus asks for
        report.add(
            Figure(
                f"scrape_{kind}_p99",
                "  p99",
                p99,
                "ms",
                1e3,
                "< 10" if gate else "",
                p99 < 0.010 if gate else None,
            )
        )
        report.add(
            Figure(
                f"scrape_{kind}_headers_p99",
                "  p99 until the headers (server latency)",
                measure.percentile(first, 0.99),
                "ms",
                1e3,
            )
        )
    validate_exposition(base["body"], report, "service_exposition_valid")


def blackhole_figures(
    args: argparse.Namespace, base: dict[str, Any], holed: dict[str, Any], report: Report
) -> None:
    section(
        f"{args.blackhole_fraction:.0%} of the targets black-holed (accept, never answer), "
        f"{args.timeout:g}s timeout"
    )
    growth = holed["healthy_cycle"] / base["healthy_cycle"] - 1
    report.add(
        Figure(
            "blackhole_healthy_cycle",
            "healthy targets' cycle time, without -> with black holes",
            f"{base['healthy_cycle']:.3f} -> {holed['healthy_cycle']:.3f}",
            "s",
        )
    )
    report.add(
        Figure(
            "blackhole_healthy_period_median",
            "  median per-target period, without -> with",
            f"{base['healthy_period_median']:.3f} -> {holed['healthy_period_median']:.3f}",
            "s",
        )
    )
    report.add(
        Figure(
            "blackhole_cycle_growth",
            "healthy targets' cycle time growth",
            growth,
            "%",
            100,
            "< 10%",
            growth < 0.10,
        )
    )
    ws: list[serve.Window] = holed["windows"]
    late = Summary.of([w.lateness_p99 for w in ws])
    stale = max(w.stale_targets for w in ws)
    report.add(
        Figure(
            "blackhole_lateness_p99",
            "  scheduler lateness p99",
            late,
            "s",
            target="< 5",
            passed=late.high < 5,
        )
    )
    report.add(
        Figure(
            "blackhole_cores",
            "  exporter CPU, cores on average",
            Summary.of([w.cores for w in ws]),
            "cores",
        )
    )
    report.add(
        Figure(
            "blackhole_stale",
            "  healthy targets not probed within interval + 5 s",
            f"{stale} stale",
            target="0 stale",
            passed=stale == 0,
        )
    )


# The figures with targets that a failed service run leaves unmeasured.
SERVICE_FIGURES = (
    ("service_vs_blackbox_paced", "ours (service) ÷ blackbox paced alike"),
    ("service_vs_limit_paced", "ours (service) ÷ C limit paced alike"),
    ("service_every_endpoint", "every endpoint probed in every interval"),
    ("service_lateness_p99", "scheduler lateness p99"),
    ("service_cores", "exporter CPU, cores on average"),
    ("service_rss", "RSS"),
    ("scrape_gzip_p99", "/metrics scrape p99"),
    ("service_exposition_valid", "exposition valid"),
)
BLACKHOLE_FIGURES = (("blackhole_cycle_growth", "healthy targets' cycle time growth"),)


def not_measured(report: Report, figures: tuple[tuple[str, str], ...], error: Exception) -> None:
    section("not measured")
    report.note(f"not measured: {error}")
    for key, label in figures:
        report.add(Figure(key, label, "not measured", passed=False))


# --- main ---------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--count", "-n", type=int, default=None, help="endpoints (default 1000; full 10000)"
    )
    p.add_argument("--full", action="store_true", help="the full scenario: 60 s interval, 10k")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--inflight",
        type=int,
        default=50,
        help="handshakes/probes in flight (C, blackbox driver, engine)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=None,
        help="service interval (default: the full scenario's rate, 10k per 60 s; > timeout)",
    )
    p.add_argument("--cycles", type=int, default=3, help="service intervals measured")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--allowed-lateness", type=float, default=5.0)
    p.add_argument("--blackhole-fraction", type=float, default=0.1)
    p.add_argument("--concurrency", type=int, default=None, help="--probe.concurrency of serve")
    p.add_argument("--scrapes", type=int, default=50)
    p.add_argument("--ports", type=int, default=4, help="nginx ports")
    p.add_argument("--vhosts", type=int, default=16, help="nginx server blocks sharing the names")
    p.add_argument("--only", default="all", help="comma list: side,service,blackhole")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument(
        "--keep-state",
        action="store_true",
        help="keep bench/build/state-<timestamp> (configs, certificates, logs) after a run",
    )
    args = p.parse_args(argv)
    if args.count is None:
        args.count = 10_000 if args.full else 1000
    if args.interval is None:
        # The config wants the timeout below the interval.
        quick = max(args.timeout + 1.0, round(args.count / FULL_RATE, 1))
        args.interval = 60.0 if args.full else quick
    args.only = (
        set(args.only.split(",")) if args.only != "all" else {"side", "service", "blackhole"}
    )
    return args


def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=HERE,
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "exporter"],
        capture_output=True,
        text=True,
        check=False,
        cwd=HERE.parent,
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _timed(what: str, fn: Callable[[], Any]) -> Any:
    start = time.monotonic()
    out = fn()
    print(f"  ({what}: {time.monotonic() - start:.0f}s)", flush=True)
    return out


def service_part(
    args: argparse.Namespace,
    server: fleet.Nginx,
    hole_port: int,
    per: dict[str, Summary],
    report: Report,
    raw: dict[str, Any],
) -> None:
    """The service without and with black holes; a failed run is reported, not raised."""
    base = None
    if "service" in args.only or "blackhole" in args.only:
        try:
            per.update(_timed("paced", lambda: paced(args, server)))
            base = _timed("service", lambda: measure_service(args, server, None, "base"))
        except RuntimeError as error:
            not_measured(report, SERVICE_FIGURES, error)
        else:
            service_figures(args, base, per, report)
            raw["service"] = _jsonable({k: v for k, v in base.items() if k != "body"})
    if "blackhole" not in args.only:
        return
    if base is None:
        not_measured(report, BLACKHOLE_FIGURES, RuntimeError("no baseline service run"))
        return
    try:
        holed = _timed("black holes", lambda: measure_service(args, server, hole_port, "blackhole"))
    except RuntimeError as error:
        not_measured(report, BLACKHOLE_FIGURES, error)
    else:
        blackhole_figures(args, base, holed, report)
        raw["blackhole"] = _jsonable(holed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not LIMIT_BINARY.exists():
        print(
            f"error: {LIMIT_BINARY} missing: build it with `make -C bench build`", file=sys.stderr
        )
        return 2
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.state = BUILD / f"state-{stamp}"
    report = Report()
    commit = git_commit()  # at the start: others may commit while it runs
    started = time.monotonic()
    load_before = os.getloadavg()
    print(
        f"bench: {args.count} endpoints, {args.repeats} repeats, interval {args.interval:g}s, "
        f"{os.cpu_count()} cores, load {load_before[0]:.2f}",
        flush=True,
    )
    raw: dict[str, Any] = {}
    with (
        fleet.run_nginx(args.state / "nginx", args.count, args.ports, args.vhosts) as server,
        fleet.BlackHole() as hole,
    ):
        fleet.sanity_check(server)
        per: dict[str, Summary] | None = None
        if "side" in args.only:
            side = _timed("side by side", lambda: side_by_side(args, server, report))
            per, raw["side_by_side"] = side["per_endpoint"], side["raw"]
        if per is None:
            per = {k: Summary.of([math.nan]) for k in ("limit", "blackbox", "engine")}
        service_part(args, server, hole.port, per, report, raw)
    elapsed = time.monotonic() - started
    misses = [f.label for f in report.figures if f.passed is False]
    section(f"{len(report.figures)} figures, {len(misses)} MISS, {elapsed:.0f}s")
    out = {
        "timestamp": stamp,
        "commit": commit,
        "machine": {
            "cores": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "python": platform.python_version(),
        },
        "parameters": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },
        "elapsed_seconds": elapsed,
        "figures": {f.key: f.as_json() for f in report.figures},
        "notes": report.notes,
        "raw": raw,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{stamp}.json"
    path.write_text(json.dumps(out, indent=1, default=_default) + "\n")
    print(f"results: {path}")
    if report.notes:  # something could not be measured: keep its logs, fail the run
        print(f"state kept for the logs: {args.state}")
        return 1
    if not args.keep_state:
        # Configs for 10k targets, certificates, logs: kept only when asked (or on a crash).
        shutil.rmtree(args.state, ignore_errors=True)
    return 0


def _default(value: object) -> object:
    if isinstance(value, Summary):
        return value.as_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_default))


if __name__ == "__main__":
    sys.exit(main())
