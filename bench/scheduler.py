"""The scheduler's CPU in isolation: what starting a job costs, per run.

N jobs (default 2,000) every ``interval`` seconds (default 4 s, so 500 runs
a second), spread evenly, each a coroutine that does nothing; CPU per run
over ``--seconds`` of steady state, for:

- APScheduler's ``AsyncIOScheduler`` as it ships, set up as the service sets
  up its scheduler;
- ``service.LoopScheduler``, the service's subclass whose timer runs due
  jobs in place;
- a bare ``loop.call_at`` chain that starts a task at each tick: the floor,
  the wake-up and the task without any scheduler.

    .venv/bin/python -m bench.scheduler [-n 2000] [--interval 4] [--seconds 12] [--rounds 2]

Each figure includes the wake-up from epoll_wait that every run costs, as
in the service, where the same wake-up then starts the probe.  One process,
no sockets but the loop's own: a figure for comparing scheduling changes,
not a part of the service's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from exporter.service import LoopScheduler

WARM_SECONDS = 2.0


class Runs:
    """Counts runs; ``steady()`` measures CPU per run after a warm-up."""

    def __init__(self) -> None:
        self.count = 0

    async def job(self) -> None:
        self.count += 1

    async def steady(self, seconds: float) -> float:
        await asyncio.sleep(WARM_SECONDS)  # duration, not synchronisation: a measuring window
        runs, cpu = self.count, time.process_time()
        await asyncio.sleep(seconds)
        if self.count == runs:
            raise RuntimeError("no job ran")
        return (time.process_time() - cpu) / (self.count - runs)


async def with_apscheduler(
    cls: type[AsyncIOScheduler], jobs: int, interval: float, seconds: float
) -> float:
    runs = Runs()
    scheduler = cls(
        timezone=dt.UTC,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    scheduler.start(paused=True)
    first = time.time() + 1
    for i in range(jobs):
        start = dt.datetime.fromtimestamp(first + i * interval / jobs, dt.UTC)
        trigger = IntervalTrigger(seconds=interval, start_date=start, timezone=dt.UTC)
        scheduler.add_job(runs.job, trigger, id=str(i))
    scheduler.resume()
    try:
        return await runs.steady(seconds)
    finally:
        scheduler.shutdown(wait=False)


async def bare(jobs: int, interval: float, seconds: float) -> float:
    runs = Runs()
    loop = asyncio.get_running_loop()
    first = loop.time() + 1
    tasks: set[asyncio.Task[None]] = set()

    def tick(i: int) -> None:
        task = loop.create_task(runs.job())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        loop.call_at(first + (i + 1) * interval / jobs, tick, i + 1)

    handle = loop.call_at(first, tick, 0)
    try:
        return await runs.steady(seconds)
    finally:
        handle.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler", description=__doc__)
    parser.add_argument("--count", "-n", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    # asyncio.run cancels the job in flight when a variant ends; APScheduler
    # would log that as a failed job, which says nothing here.
    logging.getLogger("apscheduler").setLevel(logging.CRITICAL)
    variants: dict[str, Callable[[], float]] = {
        "APScheduler AsyncIOScheduler": lambda: asyncio.run(
            with_apscheduler(AsyncIOScheduler, args.count, args.interval, args.seconds)
        ),
        "service.LoopScheduler": lambda: asyncio.run(
            with_apscheduler(LoopScheduler, args.count, args.interval, args.seconds)
        ),
        "bare call_at + task": lambda: asyncio.run(bare(args.count, args.interval, args.seconds)),
    }
    rate = args.count / args.interval
    print(f"{args.count} jobs every {args.interval:g}s: {rate:.0f} runs/s, CPU per run")
    for _ in range(args.rounds):
        for name, run in variants.items():
            print(f"  {name:30} {run() * 1e6:6.1f} us", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
