"""Our probe engine in-process: ``exporter.probe.probe`` over N targets, CPU per endpoint.

Run as a worker process by ``bench.run`` so that only the engine's work is in
its CPU counters: it reads one command per line on stdin and answers one JSON
line on stdout.

- ``cycle COUNT [BLACKHOLE_PORT FRACTION]``: probe the first COUNT targets
  once with ``--concurrency`` probes in flight (optionally with a fraction of
  them pointed at a black hole) and report the CPU (``time.process_time``,
  all threads) and the wall time around it.  Includes what ``probe`` does: both
  handshakes, certificate facts, chain checks and the verdict.
- ``paced COUNT RATE``: probe the first COUNT targets once each, started
  evenly at RATE probes per second, every one as soon as its time comes (as
  the service's scheduler starts them), and report the CPU as ``cycle``
  does.  This is the engine at the service's pace: a wake-up per event costs
  more than in a burst, where every wake-up finds several events.
- ``render FILE``: time ``exporter.metrics.Exposition`` over the results of
  the last cycle, as the service's publisher renders (``render_parts()``
  and ``render_deflated()``, series in schedule order): a cold render, then
  a re-render after every target got a new result (the same findings one
  interval later with other durations, as a real next round brings), which
  is what the publisher does after a full round; the body is written to
  FILE for validation.

Like the service, the worker keeps the latest round of results alive between
cycles (its size is part of the garbage collector's work and of the RSS).
- ``quit``.

The first cycle of a worker parses the two distinct certificates and builds
the client context; the runner discards a warm-up cycle so that the figures
are the steady state of a long-running exporter.

With ``--profile FILE`` each cycle also runs under cProfile and writes the
stats to FILE (overwritten per cycle; cProfile inflates CPU, so such cycles
are for where-the-time-goes only, never for the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import gzip
import json
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench import fleet
from exporter import certs, metrics, probe, service
from exporter.model import Target
from tests import factories

if TYPE_CHECKING:
    from exporter.model import ProbeResult


def targets(ports: list[int], count: int, timeout: float) -> list[Target]:
    return [
        Target(
            host=fleet.name(i),
            port=ports[i % len(ports)],
            address=fleet.ADDRESS,
            timeout=timeout,
        )
        for i in range(count)
    ]


def blackholed(
    fleet_targets: list[Target], port: int, fraction: float
) -> tuple[list[Target], set[str]]:
    """Every 1/fraction-th target moved to the black hole; returns them and their names."""
    step = round(1 / fraction) if fraction > 0 else 0
    out, holes = [], set()
    for i, t in enumerate(fleet_targets):
        if step and i % step == step - 1:
            out.append(Target(host=t.host, port=port, address=t.address, timeout=t.timeout))
            holes.add(t.name)
        else:
            out.append(t)
    return out, holes


async def cycle(
    cycle_targets: list[Target], trust: certs.TrustStore, concurrency: int
) -> tuple[list[ProbeResult], dict[str, float]]:
    """Probe every target once with ``concurrency`` workers; record when each one finished."""
    results: list[ProbeResult] = []
    finished: dict[str, float] = {}
    pending = iter(cycle_targets)
    start = time.monotonic()

    async def worker() -> None:
        for target in pending:
            results.append(await probe.probe(target, trust))
            finished[target.name] = time.monotonic() - start

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, finished


async def paced(
    cycle_targets: list[Target], trust: certs.TrustStore, rate: float
) -> tuple[list[ProbeResult], dict[str, float]]:
    """Start one probe every 1/``rate`` seconds, each on its own; wait for all of them.

    One timer at a time, each start scheduling the next, as the service's
    scheduler keeps one timer for its next due job.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    finished: dict[str, float] = {}
    tasks: list[asyncio.Task[ProbeResult]] = []
    all_started = loop.create_future()

    async def one(target: Target) -> ProbeResult:
        result = await probe.probe(target, trust)
        finished[target.name] = loop.time() - start
        return result

    def begin(i: int) -> None:
        tasks.append(loop.create_task(one(cycle_targets[i])))
        if i + 1 < len(cycle_targets):
            loop.call_at(start + (i + 1) / rate, begin, i + 1)
        else:
            all_started.set_result(None)

    if cycle_targets:
        loop.call_at(start, begin, 0)
        await all_started
    return list(await asyncio.gather(*tasks)), finished


def summarise(
    results: list[ProbeResult], finished: dict[str, float], holes: set[str]
) -> dict[str, object]:
    healthy = [r for r in results if r.target.name not in holes]
    expected = sum(
        r.sni.handshake.ok and r.no_sni.handshake.ok and r.verdict.certificate_mismatch
        for r in healthy
    )
    return {
        "probes": len(results),
        "healthy": len(healthy),
        # nginx's default server shows another certificate: both handshakes
        # succeed and the leaves differ.  Anything else is a broken run.
        "healthy_as_expected": expected,
        "healthy_cycle_seconds": max(
            (finished[r.target.name] for r in healthy), default=float("nan")
        ),
    }


def render(older: list[ProbeResult], out: Path) -> dict[str, object]:
    """What the service's publisher does (``Publisher.flush``), timed: updates, then
    ``render_parts()`` and ``render_deflated()``, the serving path's two forms."""
    newer = [factories.next_probe(r) for r in older]
    exposition = metrics.Exposition(service.schedule_rank)
    for result in older:
        exposition.update(result)
    t0 = time.perf_counter()
    exposition.render_parts()
    exposition.render_deflated()
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for result in newer:
        exposition.update(result)
    parts = exposition.render_parts()
    t1 = time.perf_counter()
    deflated = exposition.render_deflated()
    t2 = time.perf_counter()
    changed, deflate_seconds = t2 - t0, t2 - t1
    t0 = time.perf_counter()
    again = exposition.render_parts()
    unchanged = time.perf_counter() - t0
    body = b"".join(parts)
    assert gzip.decompress(b"".join(metrics.gzip_member(deflated))) == body
    out.write_bytes(body)
    return {
        "targets": len(newer),
        "bytes": len(body),
        "series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
        "cold_render_seconds": cold,
        "changed_render_seconds": changed,
        "deflate_seconds": deflate_seconds,
        "unchanged_render_seconds": unchanged,
        "unchanged_is_cached": again is parts,
    }


class GcClock:
    """Time spent in the cyclic garbage collector, per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.thread_time() - self._start
            self.collections[generation] += 1

    def reset(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ports", required=True, help="comma-separated nginx ports")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--profile", default=None)
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",")]
    base = targets(ports, args.count, args.timeout)
    trust = certs.load_trust_store(args.ca_file)
    latest: list[ProbeResult] = []
    gc_clock = GcClock()
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "render":
            print(json.dumps(render(latest, Path(words[1]))), flush=True)
            continue
        cycle_targets, holes = base[: int(words[1])], set[str]()
        if words[0] == "paced":
            work = paced(cycle_targets, trust, float(words[2]))
        else:
            if len(words) == 4:
                cycle_targets, holes = blackholed(cycle_targets, int(words[2]), float(words[3]))
            work = cycle(cycle_targets, trust, args.concurrency)
        profiler = cProfile.Profile() if args.profile else None
        gc_clock.reset()
        cpu0, wall0 = time.process_time(), time.monotonic()
        if profiler:
            profiler.enable()
        results, finished = asyncio.run(work)
        if profiler:
            profiler.disable()
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        if profiler:
            profiler.dump_stats(args.profile)
        if not holes:
            latest = results
        answer = {
            "endpoints": len(cycle_targets),
            "cpu_seconds": cpu,
            "wall_seconds": wall,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "gc_seconds": gc_clock.seconds,
            "gc_collections": gc_clock.collections,
            **summarise(results, finished, holes),
        }
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
