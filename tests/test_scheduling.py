"""Scheduling decisions of the service, and the scheduler that carries them out."""

from __future__ import annotations

import asyncio
import collections

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from hypothesis import given
from hypothesis import strategies as st

from exporter.service import (
    LoopScheduler,
    Options,
    Service,
    debounce_seconds,
    phase_seconds,
    scheduled_start,
)
from exporter.shard import WHOLE_FLEET


class TestPhase:
    def test_stable_and_in_range(self) -> None:
        """A target's phase is the same every time and lies within its interval."""
        assert phase_seconds("a.test:443", 60) == phase_seconds("a.test:443", 60)
        assert 0 <= phase_seconds("a.test:443", 60) < 60

    def test_fleet_spreads_evenly(self) -> None:
        """10,000 targets fill the 60 one-second slots of a minute evenly (within 25%)."""
        slots = collections.Counter(
            int(phase_seconds(f"h{i:05d}.test:443", 60.0)) for i in range(10_000)
        )
        assert len(slots) == 60
        mean = 10_000 / 60
        assert all(abs(n - mean) < 0.25 * mean for n in slots.values()), slots

    @given(
        name=st.text(min_size=1, max_size=40),
        interval=st.floats(min_value=1, max_value=7 * 86400),
        now=st.floats(min_value=1e9, max_value=4e9),
    )
    def test_scheduled_start_is_the_last_grid_point(
        self, name: str, interval: float, now: float
    ) -> None:
        """The scheduled start is on the grid, at or before now, less than an interval ago."""
        start = scheduled_start(name, interval, now)
        assert now - interval < start <= now + 1e-6
        steps = (start - phase_seconds(name, interval)) / interval
        assert steps == pytest.approx(round(steps), abs=1e-6)


class TestSkipAfterImmediate:
    @pytest.fixture
    def service(self) -> Service:
        return Service(Options("t.yaml", ":0", "/metrics", 8, WHOLE_FLEET))

    def test_first_grid_run_right_after_the_immediate_probe_is_skipped(
        self, service: Service
    ) -> None:
        """A new target probed at once does not run again at a grid point seconds later."""
        service._ran_early.add("a:443")
        service._last_start["a:443"] = 1000.0
        assert service._skip_after_immediate("a:443", 60.0, 1010.0)

    def test_only_that_run_is_skipped(self, service: Service) -> None:
        """A later run soon after a late one still runs: lateness never halves the rate."""
        service._ran_early.add("a:443")
        service._last_start["a:443"] = 1000.0
        service._skip_after_immediate("a:443", 60.0, 1010.0)
        service._last_start["a:443"] = 1045.0  # a run that started 35 s late
        assert not service._skip_after_immediate("a:443", 60.0, 1070.0)

    def test_grid_run_far_from_the_immediate_probe_runs(self, service: Service) -> None:
        """When the first grid point is more than half an interval away, it runs."""
        service._ran_early.add("a:443")
        service._last_start["a:443"] = 1000.0
        assert not service._skip_after_immediate("a:443", 60.0, 1040.0)


class TestRenderCadence:
    def test_debounce_grows_with_render_time(self) -> None:
        """Fast renders wait the base debounce; slow ones wait ten times longer, up to a cap."""
        assert debounce_seconds(0.001) == 0.5
        assert debounce_seconds(0.2) == pytest.approx(2.0)
        assert debounce_seconds(3.0) == 5.0

    def test_the_longest_pause_until_the_first_round_is_published(self) -> None:
        """While the first round adds every pair, renders are as rare as the cap allows;
        once the service is ready, they follow the render time again."""
        service = Service(Options("t.yaml", ":0", "/metrics", 8, WHOLE_FLEET))
        assert not service.ready.is_set()
        assert service.publisher.pause(0.001) == 5.0
        service.ready.set()
        assert service.publisher.pause(0.001) == 0.5
        assert service.publisher.pause(0.2) == pytest.approx(2.0)


class TestLoopScheduler:
    @staticmethod
    async def hops_per_run(scheduler: AsyncIOScheduler) -> list[int]:
        """Self-pipe hops (call_soon_threadsafe) between successive runs of a 20 ms job."""
        loop = asyncio.get_running_loop()
        runs: asyncio.Queue[int] = asyncio.Queue()
        hops = 0
        real = loop.call_soon_threadsafe

        def counting(*args: object, **kwargs: object) -> asyncio.Handle:
            nonlocal hops
            hops += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        async def job() -> None:
            runs.put_nowait(hops)

        scheduler.start()
        try:
            scheduler.add_job(job, IntervalTrigger(seconds=0.02), id="j")
            await asyncio.wait_for(runs.get(), 5)  # after add_job's own (thread-safe) wake-up
            loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
            seen = [await asyncio.wait_for(runs.get(), 5) for _ in range(4)]
        finally:
            del loop.call_soon_threadsafe
            scheduler.shutdown(wait=False)
        return seen

    async def test_due_jobs_run_without_the_self_pipe(self) -> None:
        """The timer runs due jobs in place: no self-pipe write per run, unlike in APScheduler."""
        assert (await self.hops_per_run(LoopScheduler()))[-1] == 0
        assert (await self.hops_per_run(AsyncIOScheduler()))[-1] >= 3  # the hop it saves

    async def test_wakeup_from_another_thread_still_works(self) -> None:
        """add_job from a thread (a reload does this) still wakes the loop up."""
        scheduler = LoopScheduler()
        scheduler.start()
        ran = asyncio.Event()

        async def job() -> None:
            ran.set()

        try:
            await asyncio.to_thread(scheduler.add_job, job)  # a date trigger: run now
            await asyncio.wait_for(ran.wait(), 5)
        finally:
            scheduler.shutdown(wait=False)
