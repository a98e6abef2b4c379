"""A/B of the service: CPU per endpoint of ``sni-exporter serve`` from several source trees.

One nginx (``bench.fleet``) serves N endpoints; each tree's exporter runs in
turn on the same targets file (``python -m exporter serve`` with the tree on
PYTHONPATH), and is measured as ``bench.run`` measures the service: after the
first round and one more interval, CPU from /proc over whole intervals ÷
probes made in them.  ``--rounds`` repeats the sequence, interleaved, so that
load from elsewhere hits every tree alike.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python -m bench.ab /tmp/before . [--count 10000] [--cycles 1] [--rounds 2]

For trying a change before the full ``make bench``; about 2.5 minutes per
tree and round at 10,000 targets.  Loopback only, like the rest of bench/.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench import fleet, measure, serve
from bench.run import BUILD, FULL_RATE


def measure_tree(tree: Path, config: str, args: argparse.Namespace) -> str:
    state = BUILD / "ab" / tree.resolve().name
    with serve.run_service(state, config, None, tree) as svc:
        svc.wait_ready(deadline_seconds=args.interval * 3 + 60)
        _, windows = serve.measure_intervals(svc, args.interval, args.cycles, 5.0, set())
        scrapes = serve.scrape_latencies(svc, 50, gzipped=True)
    p99 = measure.percentile([f.seconds for f in scrapes], 0.99)
    cpu = " ".join(f"{w.cpu_per_endpoint * 1e3:.3f}" for w in windows)
    last = windows[-1]
    return (
        f"{cpu} ms/endpoint, {last.cores:.3f} cores, {last.stale_targets} stale, "
        f"RSS {last.rss_bytes / 1e6:.0f} MB, gzip scrape p99 {p99 * 1e3:.1f} ms, "
        f"load {os.getloadavg()[0]:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("trees", nargs="+", type=Path, help="checkouts to compare")
    parser.add_argument("--count", "-n", type=int, default=10_000)
    parser.add_argument("--interval", type=float, help="default: the full scenario's rate")
    parser.add_argument("--cycles", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    args.interval = args.interval or args.count / FULL_RATE
    with fleet.run_nginx(BUILD / "ab" / "nginx", args.count) as server:
        endpoints = [serve.Endpoint(*server.endpoint(i)) for i in range(args.count)]
        config = serve.config_text(endpoints, args.interval, 5.0, server.pki.ca_file)
        for _ in range(args.rounds):
            for tree in args.trees:
                print(f"{tree}: {measure_tree(tree, config, args)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
