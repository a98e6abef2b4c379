"""The exporter service: targets on a schedule, results published as metrics.

Threads and loops:

- The asyncio loop (main thread) runs APScheduler's jobs, the probes, reloads
  and signal handling.  It never renders or serves HTTP.
- The HTTP server (``exporter.server``) answers in its own threads.
- A publisher thread turns new results into exposition bytes, at most once per
  ``RENDER_DEBOUNCE_SECONDS`` while results keep arriving, so a scrape always
  gets cached bytes (prometheus_client needs most of a second for 100k series;
  hynek/prometheus-async renders on the loop, which is what we avoid).

Scheduling: every target has one interval job whose grid is anchored at a
stable phase derived from its name, so 10,000 targets spread evenly over their
interval and keep their phase across restarts, reloads and replicas.  Jobs
use ``coalesce=True, max_instances=1, misfire_grace_time=None``: after a loop
stall a run is late, never silently dropped (the 3.x default drops it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
import platform
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Final

import prometheus_client
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from exporter import __version__, certs, config, metrics, probe, server
from exporter.reasons import SniExporterError

if TYPE_CHECKING:
    from exporter.certs import TrustStore
    from exporter.model import ProbeResult, Target
    from exporter.reasons import Reason
    from exporter.shard import Shard

log = logging.getLogger("sni_exporter")

RENDER_DEBOUNCE_SECONDS: Final = 0.5
# Between renders the publisher also waits this many times the last render's
# duration (at most RENDER_MAX_DEBOUNCE_SECONDS), so that publication takes at
# most about a tenth of a core however large the fleet.
RENDER_BACKOFF_FACTOR: Final = 10.0
RENDER_MAX_DEBOUNCE_SECONDS: Final = 5.0
_UTC = dt.UTC
# sni_exporter_probes_total's result label, by whether the handshake with SNI succeeded.
_PROBE_RESULTS: Final = {True: "success", False: "failure"}

# Own counters render without the _created series: one timestamp per label set
# doubles the exporter's own series for no use here.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class LoopScheduler(AsyncIOScheduler):  # type: ignore[misc] # APScheduler ships no types
    """APScheduler's asyncio scheduler, with its own timer running due jobs in place.

    ``AsyncIOScheduler.wakeup`` is thread-safe, so it always goes through
    ``call_soon_threadsafe``: a self-pipe write, one more loop iteration and
    two reads, even when its own timer calls it, which fires on the loop
    already.  The service's timer fires once per probe; the hop costs about
    8 us of CPU per run: ``python -m bench.scheduler``, 82-92 -> 69-81 us per
    run at 500 runs a second (a bare ``call_at`` chain: 34-39 us).
    ``wakeup`` itself (add_job, resume, other threads) keeps the safe path.
    ``_start_timer``, ``_stop_timer`` and ``_process_jobs`` are APScheduler
    3.x internals (the version is pinned below 4); ``tests/test_scheduling.py``
    checks that due jobs still run, without the self-pipe.
    """

    def _start_timer(self, wait_seconds: float | None) -> None:
        self._stop_timer()
        if wait_seconds is not None:
            self._timeout = self._eventloop.call_later(wait_seconds, self._due)

    def _due(self) -> None:
        self._stop_timer()
        self._start_timer(self._process_jobs())


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    config_file: str
    listen_address: str
    telemetry_path: str
    concurrency: int
    shard: Shard


def phase_seconds(name: str, interval: float) -> float:
    """A stable offset in [0, interval) for this target: spreads a fleet evenly in time.

    A digest, not ``hash()``, so it is the same in every process and replica.
    """
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * interval


def scheduled_start(name: str, interval: float, now: float) -> float:
    """The grid point of this target's schedule at or before ``now``."""
    phase = phase_seconds(name, interval)
    return phase + ((now - phase) // interval) * interval


def schedule_rank(target: Target) -> tuple[float, float]:
    """Where the target's series go in /metrics: in the order the schedule probes them.

    See ``metrics.Exposition``: neighbours in time are neighbours in the text,
    which keeps each render's recompression to a chunk or two per family.
    """
    return (target.interval, phase_seconds(target.name, target.interval))


def debounce_seconds(render_seconds: float) -> float:
    """How long the publisher waits after a render that took ``render_seconds``."""
    backoff = min(RENDER_MAX_DEBOUNCE_SECONDS, RENDER_BACKOFF_FACTOR * render_seconds)
    return max(RENDER_DEBOUNCE_SECONDS, backoff)


class OwnMetrics:
    """The exporter's own metrics (sni_exporter_*), plus process and platform collectors."""

    def __init__(self, shard: Shard) -> None:
        self.registry = CollectorRegistry()
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)
        r = self.registry
        Info(
            "sni_exporter_build", "Version of the running sni-exporter; always 1.", registry=r
        ).info({"version": __version__, "python_version": platform.python_version()})
        Gauge(
            "sni_exporter_shard_info",
            "The shard of the targets this instance probes (index of count); always 1.",
            ["index", "count"],
            registry=r,
        ).labels(str(shard.index), str(shard.count)).set(1)
        self.targets = Gauge(
            "sni_exporter_targets", "Targets this instance (shard) probes.", registry=r
        )
        self.reload_ok = Gauge(
            "sni_exporter_config_last_reload_successful",
            "1 when the last load of the targets file succeeded, 0 when it failed "
            "(the last good configuration stays in force).",
            registry=r,
        )
        self.reload_ts = Gauge(
            "sni_exporter_config_last_reload_success_timestamp_seconds",
            "When the targets file was last loaded successfully.",
            registry=r,
        )
        self.probes = Counter(
            "sni_exporter_probes",
            "Probes run, by result: success when the handshake with SNI succeeded.",
            ["result"],
            registry=r,
        )
        self.handshakes = Counter(
            "sni_exporter_handshakes",
            "Handshakes made, by mode (sni) and result: success or the failure reason.",
            ["sni", "result"],
            registry=r,
        )
        self.duration = Histogram(
            "sni_exporter_probe_duration_seconds",
            "Wall time of whole probes: resolution and both handshakes.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.lateness = Histogram(
            "sni_exporter_scheduler_lateness_seconds",
            "How late scheduled probes start: actual start (after waiting for a free "
            "concurrency slot) minus the scheduled time.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.in_flight = Gauge(
            "sni_exporter_probes_in_flight", "Probes running right now.", registry=r
        )
        self.render_seconds = Gauge(
            "sni_exporter_render_duration_seconds",
            "CPU-bound wall time of the last re-render of the target series "
            "(rendered once per batch of changes, not per scrape).",
            registry=r,
        )
        self.exposition_bytes = Gauge(
            "sni_exporter_exposition_bytes",
            "Size of the target series in the exposition, uncompressed.",
            registry=r,
        )
        # Children by outcome, looked up once: labels() validates and locks on
        # every call, three times per probe.  Reasons are a bounded vocabulary.
        self._probe_outcomes = {ok: self.probes.labels(r) for ok, r in _PROBE_RESULTS.items()}
        self._handshake_outcomes: dict[tuple[bool, Reason | None], Counter] = {}

    def record(self, result: ProbeResult) -> None:
        self._probe_outcomes[result.sni.handshake.ok].inc()
        for report in result.reports:
            hs = report.handshake
            key = (hs.sni, hs.reason)
            child = self._handshake_outcomes.get(key)
            if child is None:
                outcome = "success" if hs.ok else str(hs.reason)
                child = self.handshakes.labels("true" if hs.sni else "false", outcome)
                self._handshake_outcomes[key] = child
            child.inc()
        self.duration.observe(result.duration_seconds)


class Publisher:
    """Turns results into exposition bytes off the event loop, once per change.

    The loop only records what changed (a dict write under a lock).  The
    publisher thread applies the changes to the incremental renderer, renders,
    and compresses once; scrapes read the cached bytes.
    """

    def __init__(self, own: OwnMetrics, settled: Callable[[], bool] = lambda: True) -> None:
        self._own = own
        # Until ``settled()`` (the service's first round is published), the
        # thread waits the longest debounce between renders: the first round
        # adds every pair, and each render that adds pairs re-cuts and
        # recompresses every family.  At 10k targets, 500 pairs a render cost
        # 1.04 s of CPU against 0.31 s in one (in memory; 0.07 ms per
        # endpoint of the first round).
        self._settled = settled
        self._exposition = metrics.Exposition(schedule_rank)
        self._lock = threading.Lock()
        self._pending: dict[str, ProbeResult | None] = {}
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._render_lock = threading.Lock()  # one flush at a time keeps renders in order
        # The target series as metrics.Exposition renders them for serving: one
        # part per family (never joined into one 25 MB bytes), and the same
        # compressed family by family, for one gzip member per scrape.
        self._plain: tuple[bytes, ...] = ()
        self._deflated = metrics.Deflated()
        self.renders = 0
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        self._thread.join(timeout=5)

    def put(self, result: ProbeResult) -> None:
        with self._lock:
            self._pending[result.target.name] = result
        self._changed.set()

    def remove(self, name: str) -> None:
        with self._lock:
            self._pending[name] = None
        self._changed.set()

    def flush(self) -> None:
        """Apply pending changes now; the thread calls this, and so may tests."""
        with self._render_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return
            for name, result in pending.items():
                if result is None:
                    self._exposition.remove(name)
                else:
                    self._exposition.update(result)
            started = time.perf_counter()
            plain = self._exposition.render_parts()
            deflated = self._exposition.render_deflated()
            # One tuple assignment: a scrape sees either the old or the new pair.
            self._plain, self._deflated = plain, deflated
            self.renders += 1
            self._own.render_seconds.set(time.perf_counter() - started)
            self._own.exposition_bytes.set(deflated.size)  # the parts' total length

    def _run(self) -> None:
        while not self._stop.is_set():
            self._changed.wait()
            self._changed.clear()
            started = time.perf_counter()
            try:
                self.flush()
            except Exception:
                log.exception("rendering metrics failed; serving the previous exposition")
            # Debounce: while results stream in, render at most this often.
            self._stop.wait(self.pause(time.perf_counter() - started))

    def pause(self, render_seconds: float) -> float:
        """Seconds to wait after a render that took ``render_seconds``."""
        if not self._settled():
            return RENDER_MAX_DEBOUNCE_SECONDS
        return debounce_seconds(render_seconds)

    def body(self, gzipped: bool) -> tuple[bytes, ...]:
        """The whole /metrics body in parts: cached target series, then the exporter's own.

        With gzip, the parts make ONE gzip member (curl --compressed and browsers
        read no further than the first): the target families as compressed once
        per change, then only our own few kB compressed per scrape.
        """
        own = generate_latest(self._own.registry)
        if gzipped:
            return metrics.gzip_member(self._deflated, own)
        return (*self._plain, own)


class Service:
    """Owns the schedule, the latest results, and reloads."""

    def __init__(self, options: Options, *, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self._clock = clock
        self.own = OwnMetrics(options.shard)
        self.ready = threading.Event()
        self.publisher = Publisher(self.own, settled=self.ready.is_set)
        self._targets: dict[str, Target] = {}
        self._trust: dict[str | None, TrustStore] = {}
        self._awaiting_first: set[str] = set()
        self._last_start: dict[str, float] = {}
        self._running: set[str] = set()
        self._ran_early: set[str] = set()  # probed at once on add; see _skip_after_immediate
        self._states: dict[str, tuple[object, ...]] = {}  # last logged findings per target
        self._tasks: set[asyncio.Task[object]] = set()
        self._semaphore = asyncio.Semaphore(options.concurrency)
        self._scheduler = LoopScheduler(
            timezone=_UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._reload_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- configuration -------------------------------------------------------

    def _owned(self, targets: Iterable[Target]) -> dict[str, Target]:
        from exporter.shard import owns  # noqa: PLC0415

        return {t.name: t for t in targets if owns(self.options.shard, t.name)}

    @staticmethod
    def load(path: str) -> tuple[config.Config, dict[str | None, TrustStore]]:
        """Read and validate the targets file and every trust store it names (blocking I/O)."""
        cfg = config.load_config(path)
        trust = {
            ca: certs.load_trust_store(ca, reload=True) for ca in {t.ca_file for t in cfg.targets}
        }
        return cfg, trust

    async def reload(self) -> tuple[bool, str]:
        """Load the targets file again and apply the difference.  Never raises.

        On failure the last good configuration stays in force.
        """
        async with self._reload_lock:
            try:
                cfg, trust = await asyncio.to_thread(self.load, self.options.config_file)
            except SniExporterError as error:
                self.own.reload_ok.set(0)
                message = str(error).replace("\n", "; ")
                log.error(  # noqa: TRY400 (a bad file is expected input: no traceback)
                    "reload failed, keeping the last good configuration",
                    extra={"fields": {"err": message}},
                )
                return False, message
            except Exception as error:  # unexpected: still keep running
                self.own.reload_ok.set(0)
                log.exception("reload failed unexpectedly, keeping the last good configuration")
                return False, repr(error)
            summary = self.apply(cfg, trust)
            log.info("configuration reloaded", extra={"fields": summary})
            return True, " ".join(f"{k}={v}" for k, v in summary.items())

    def apply(self, cfg: config.Config, trust: dict[str | None, TrustStore]) -> dict[str, int]:
        """Make the schedule match ``cfg``: add, remove and change targets in place.

        Unchanged targets keep their job and next run time, so a reload does not
        probe them again before their time.
        """
        new = self._owned(cfg.targets)
        old = self._targets
        removed = [n for n in old if n not in new]
        added = [n for n in new if n not in old]
        changed = [n for n in new if n in old and new[n] != old[n]]
        self._trust = trust
        self._targets = new
        # A running scheduler wakes up for every add_job (a self-pipe write,
        # then a scan of the due jobs); paused, the whole batch costs one
        # wake-up on resume.  Scheduling 10k targets: 0.51 -> 0.38 s of CPU.
        batch = self._scheduler.state == STATE_RUNNING
        if batch:
            self._scheduler.pause()
        try:
            for name in removed:
                self._unschedule(name)
                self._states.pop(name, None)
                self.publisher.remove(name)
            for name in changed:
                # Its series may carry old labels: drop them until the new probe lands.
                self._unschedule(name)
                self.publisher.remove(name)
            for name in (*added, *changed):
                self._schedule(new[name], run_now=True)
        finally:
            if batch:
                self._scheduler.resume()
        self.own.targets.set(len(new))
        self.own.reload_ok.set(1)
        self.own.reload_ts.set(self._clock())
        return {
            "targets": len(new),
            "added": len(added),
            "removed": len(removed),
            "changed": len(changed),
            "unchanged": len(new) - len(added) - len(changed),
        }

    # --- scheduling ------------------------------------------------------------

    def _schedule(self, target: Target, *, run_now: bool) -> None:
        phase = phase_seconds(target.name, target.interval)
        trigger = IntervalTrigger(
            seconds=target.interval,
            start_date=dt.datetime.fromtimestamp(phase, _UTC),
            timezone=_UTC,
        )
        self._scheduler.add_job(
            self._scheduled_run,
            trigger,
            args=(target.name,),
            id=target.name,
            name=target.name,
            replace_existing=True,
        )
        if run_now:
            # First probe right away, outside the grid: a job's own first run would
            # re-anchor its interval on now and undo the phase spreading.
            self._ran_early.add(target.name)
            self._spawn(self._run(target.name, scheduled=None))

    def _unschedule(self, name: str) -> None:
        job = self._scheduler.get_job(name)
        if job is not None:
            job.remove()
        self._awaiting_first.discard(name)
        self._last_start.pop(name, None)
        self._ran_early.discard(name)

    def _spawn(self, coro: Coroutine[object, object, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _scheduled_run(self, name: str) -> None:
        target = self._targets.get(name)
        if target is None:
            return
        now = self._clock()
        if self._skip_after_immediate(name, target.interval, now):
            return
        await self._run(name, scheduled=scheduled_start(name, target.interval, now))

    def _skip_after_immediate(self, name: str, interval: float, now: float) -> bool:
        """Skip the first grid run when the immediate probe of a new target just ran.

        Only that run: a run that merely started late must not make the next
        one skip, or a saturated fleet would halve its own probe rate.
        """
        if name not in self._ran_early:
            return False
        self._ran_early.discard(name)
        last = self._last_start.get(name)
        return last is not None and now - last < interval / 2

    async def _run(self, name: str, *, scheduled: float | None) -> None:
        """One probe of one target.  Survives anything a target can do."""
        if name in self._running:  # never overlap runs of one target
            return
        self._running.add(name)
        try:
            async with self._semaphore:
                target = self._targets.get(name)
                if target is None:
                    return
                start = self._clock()
                if scheduled is not None:
                    self.own.lateness.observe(max(0.0, start - scheduled))
                self._last_start[name] = start
                self.own.in_flight.inc()
                try:
                    result = await probe.probe(target, self._trust[target.ca_file], now=self._clock)
                finally:
                    self.own.in_flight.dec()
            if self._targets.get(name) is not target:
                return  # removed or changed while probing: its result is obsolete
            self.own.record(result)
            self.publisher.put(result)
            self._log_verdict(name, result)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("probe crashed", extra={"fields": {"target": name}})
        finally:
            self._running.discard(name)
            self._first_done(name)

    def _log_verdict(self, name: str, result: ProbeResult) -> None:
        """Log a target's findings when they change: at info, so operators see transitions.

        The first verdict of each target is debug only: a fleet of 10,000 would
        otherwise log 10,000 lines at start.
        """
        v, sni, no_sni = result.verdict, result.sni.handshake, result.no_sni.handshake
        state = (v.sni_required, v.certificate_mismatch, sni.reason, no_sni.reason)
        previous = self._states.get(name)
        if state == previous:
            return
        self._states[name] = state
        fields = {
            "target": name,
            "address": result.address,
            "sni_required": int(v.sni_required),
            "mismatch": int(v.certificate_mismatch),
            "sni": sni.reason or "ok",
            "no_sni": no_sni.reason or "ok",
            "why": v.explanation,
        }
        level = logging.DEBUG if previous is None else logging.INFO
        log.log(
            level, "verdict" if previous is None else "verdict changed", extra={"fields": fields}
        )

    def _first_done(self, name: str) -> None:
        if name in self._awaiting_first:
            self._awaiting_first.discard(name)
            if not self._awaiting_first:
                self._spawn(self._become_ready())

    async def _become_ready(self) -> None:
        # Ready means the first round is visible in /metrics, not just finished:
        # render now rather than after the publisher's debounce.
        await asyncio.to_thread(self.publisher.flush)
        self.ready.set()
        log.info("first round of probes finished; ready")

    # --- lifecycle ---------------------------------------------------------------

    def request_reload(self) -> tuple[bool, str]:
        """Thread-safe: reload from another thread (the HTTP server) and wait for the result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(self.reload(), self.loop).result(timeout=60)

    def stop(self) -> None:
        self._stopping.set()

    async def run(
        self,
        cfg: config.Config,
        trust: dict[str | None, TrustStore],
        on_started: Callable[[], None],
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.publisher.start()
        self._scheduler.start()  # inside the running loop, as APScheduler 3 wants
        self._awaiting_first = set(self._owned(cfg.targets))
        if not self._awaiting_first:
            self.ready.set()
        summary = self.apply(cfg, trust)
        log.info("configuration loaded", extra={"fields": summary})
        for signum, handler in (
            (signal.SIGHUP, lambda: self._spawn(self.reload())),
            (signal.SIGTERM, self.stop),
            (signal.SIGINT, self.stop),
        ):
            self.loop.add_signal_handler(signum, handler)
        on_started()
        await self._stopping.wait()
        log.info("shutting down")
        self._scheduler.shutdown(wait=False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.publisher.stop()


def serve(options: Options) -> int:
    """Run the exporter until SIGTERM/SIGINT.

    Bad flags, a bad targets file or a busy port raise before anything runs,
    so the CLI prints one line and exits non-zero.
    """
    host, port = server.parse_listen_address(options.listen_address)
    server.check_telemetry_path(options.telemetry_path)
    cfg, trust = Service.load(options.config_file)
    service = Service(options)
    http = server.HTTPServer(
        (host, port),
        server.Routes(
            telemetry_path=options.telemetry_path,
            metrics=service.publisher.body,
            ready=service.ready.is_set,
            reload=service.request_reload,
        ),
    )

    def started() -> None:
        http.start()
        log.info(
            "listening",
            extra={
                "fields": {
                    "address": http.address,
                    "telemetry_path": options.telemetry_path,
                    "version": __version__,
                }
            },
        )

    try:
        asyncio.run(service.run(cfg, trust, started))
    finally:
        http.stop()
    return 0
