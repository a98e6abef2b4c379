"""The publisher's CPU in isolation: ``metrics.Exposition`` fed at the service's rate.

N targets (default 10,000) are probed once per interval (60 s) in schedule
order; every ``window`` seconds of that stream the publisher applies the
results that came in, then renders the parts and the compressed parts, as
``service.Publisher.flush`` does.  Printed: CPU per second of probing and per
endpoint, for several flush windows, with the series in name order (no rank)
and in schedule order (``service.schedule_rank``), over 30 s of probing each.

    .venv/bin/python -m bench.publisher [-n 10000] [--seconds 30]

In-memory results (``tests.factories``), one CPU, no I/O: a figure for
comparing renderer changes, not a part of the service's figure.
"""

from __future__ import annotations

import argparse
import sys
import time

from exporter import metrics, service
from tests import factories


def publisher_cpu(count: int, window: float, seconds: float, ranked: bool) -> float:
    """CPU seconds per second of probing."""
    rank = service.schedule_rank if ranked else None
    results = [factories.probe_result(f"h{i:05d}.bench.test") for i in range(count)]
    exposition = metrics.Exposition(rank)
    for result in results:
        exposition.update(result)
    exposition.render_parts()
    exposition.render_deflated()
    # The order in which the schedule probes them: by phase.
    order = sorted(range(count), key=lambda i: service.schedule_rank(results[i].target))
    per_flush = round(count / 60.0 * window)
    cursor = 0
    started = time.process_time()
    for _ in range(round(seconds / window)):
        for _ in range(per_flush):
            i = order[cursor % count]
            cursor += 1
            results[i] = factories.next_probe(results[i])
            exposition.update(results[i])
        exposition.render_parts()
        exposition.render_deflated()
    return (time.process_time() - started) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publisher", description=__doc__)
    parser.add_argument("--count", "-n", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    rate = args.count / 60.0
    print(f"{args.count} targets, {rate:.0f} probes/s; publisher CPU per second of probing")
    for window in (0.5, 1.0, 2.0, 5.0):
        cells = []
        for ranked in (False, True):
            cpu = publisher_cpu(args.count, window, args.seconds, ranked)
            cells.append(f"{cpu * 1e3:5.1f} ms/s ({cpu / rate * 1e3:.3f} ms/endpoint)")
        print(f"  flush every {window:3g} s: by name {cells[0]}   by schedule {cells[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
