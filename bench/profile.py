"""Where our CPU goes: py-spy over the probe engine or the whole service.

Starts the benchmark's nginx and then either the ``bench.engine`` worker
(warmed up, then sampled while it runs ``--cycles`` cycles of N endpoints) or
``sni-exporter serve`` on N targets (sampled for ``--seconds`` once ready,
with ``--threads`` so the publisher and HTTP threads show apart), with
``py-spy record --format raw`` (``--native`` adds the frames inside OpenSSL
and cryptography's Rust).  It prints the functions with the most self and
inclusive time; the collapsed stacks stay in bench/build/profile/ for
flame-graph tools.

    .venv/bin/python -m bench.profile -n 2000 [--native] [--cycles 3]
    .venv/bin/python -m bench.profile --service -n 10000 --interval 60 --seconds 60
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import fleet, serve
from bench.run import BUILD, HERE, engine_worker


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy missing: pip install -e '.[dev]'")
    return found


def frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: lines merged."""
    func, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{func} ({file})" if file else func


def summarise(raw: Path, top: int) -> None:
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        # With --threads the first frame is the thread ("thread (0x7f…)"): kept as is.
        # With --threads the first frame names the thread; it is kept as it is.
        frames = [frame_name(f) for f in stack.split(";")]
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        print("no samples")
        return
    print(f"\n{total} samples\n\n-- self time (top {top})")
    for name, count in self_time.most_common(top):
        print(f"  {count / total:6.1%}  {name}")
    print(f"\n-- inclusive time (top {top})")
    for name, count in inclusive.most_common(top):
        print(f"  {count / total:6.1%}  {name}")


def start_py_spy(pid: int, raw: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    argv = [py_spy(), "record", "--pid", str(pid), "--format", "raw"]
    argv += ["--rate", str(args.rate), "--output", str(raw)]
    # Native frames need the target stopped while sampled; Python-only sampling need not.
    argv += ["--native"] if args.native else ["--nonblocking"]
    argv += ["--threads"] if args.service else []
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches asynchronously; there is no event to wait on
    return spy


def stop_py_spy(spy: subprocess.Popen[bytes]) -> str:
    spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
    _, err = spy.communicate(timeout=120)
    return err.decode(errors="replace").strip()


def profile_engine(args: argparse.Namespace, server: fleet.Nginx, raw: Path) -> str:
    with engine_worker(server, args.count, args.inflight, 5.0, None) as engine:
        engine.ask(f"cycle {min(200, args.count)}", timeout=120)
        spy = start_py_spy(engine.proc.pid, raw, args)
        cpu = 0.0
        for _ in range(args.cycles):
            answer = engine.ask(f"cycle {args.count}", timeout=60 + args.count * 0.05)
            cpu += answer["cpu_seconds"]
        err = stop_py_spy(spy)
    each = cpu / args.cycles / args.count
    print(
        f"engine, {args.cycles} x {args.count} endpoints: {each * 1e3:.3f} ms CPU each (py-spy on)"
    )
    return err


def profile_service(args: argparse.Namespace, server: fleet.Nginx, raw: Path) -> str:
    endpoints = [serve.Endpoint(*server.endpoint(i)) for i in range(args.count)]
    config = serve.config_text(endpoints, args.interval, 5.0, server.pki.ca_file)
    with serve.run_service(BUILD / "profile" / "service", config, None) as svc:
        svc.wait_ready(deadline_seconds=args.interval * 3 + 60)
        time.sleep(args.interval)  # past the first round's burst, as bench.run measures
        cpu0, wall0 = svc.cpu_seconds(), time.monotonic()
        spy = start_py_spy(svc.pid, raw, args)
        time.sleep(args.seconds)  # the sampling window
        err = stop_py_spy(spy)
        cpu, wall = svc.cpu_seconds() - cpu0, time.monotonic() - wall0
    print(
        f"service, {args.count} targets every {args.interval:g}s: "
        f"{cpu / wall:.2f} cores over {wall:.0f}s (py-spy on)"
    )
    return err


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--count", "-n", type=int, default=2000)
    p.add_argument("--service", action="store_true", help="profile sni-exporter serve")
    p.add_argument("--cycles", type=int, default=3, help="engine cycles sampled")
    p.add_argument("--interval", type=float, default=12.0, help="service interval")
    p.add_argument("--seconds", type=float, default=24.0, help="service seconds sampled")
    p.add_argument("--inflight", type=int, default=50)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--native", action="store_true", help="include native (C/Rust) frames")
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args(argv)
    state = BUILD / "profile"
    what = "service" if args.service else "engine"
    raw = state / (f"{what}-native.txt" if args.native else f"{what}.txt")
    raw.unlink(missing_ok=True)
    with fleet.run_nginx(state / "nginx", args.count) as server:
        run = profile_service if args.service else profile_engine
        err = run(args, server, raw)
    if not raw.exists():
        print(f"py-spy wrote nothing: {err}", file=sys.stderr)
        return 1
    summarise(raw, args.top)
    print(f"\ncollapsed stacks: {raw.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
