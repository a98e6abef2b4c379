"""``python -m exporter.demo``: run a command beside the demo fleet, or list the scenarios.

    python -m exporter.demo run [--state-dir .demo] [--ports fixed|free] -- CMD [ARGS...]
    python -m exporter.demo list

``run`` starts the fleet on its fixed ports (those of targets.yaml), runs
CMD, forwards SIGINT/SIGTERM/SIGHUP to it, stops the fleet when CMD exits and
exits with CMD's status.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from exporter.demo.fleet import SCENARIOS, Fleet, FleetError, Ports, describe

if TYPE_CHECKING:
    from types import FrameType

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.demo", description="The sni-exporter demo fleet."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="start the fleet on its fixed ports, run CMD, then stop the fleet"
    )
    run.add_argument(
        "--state-dir", default=".demo", help="where certificates, configs and logs go (.demo)"
    )
    run.add_argument(
        "--ports",
        choices=("fixed", "free"),
        default="fixed",
        help="fixed: the ports of targets.yaml (default); free: any unused ports (tests)",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    commands.add_parser("list", help="print the scenarios and their fixed ports")
    return parser


def _run(state_dir: str, ports: Ports, cmd: list[str]) -> int:
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("error: give the command to run after --, e.g. run -- sleep 60", file=sys.stderr)
        return 2
    with Fleet().start(state_dir, ports=ports) as fleet:
        print(
            f"demo fleet: {len(fleet.scenarios)} scenarios on loopback ports "
            f"{min(s.port for s in fleet.scenarios)}-{max(s.port for s in fleet.scenarios)}, "
            f"CA bundle {fleet.ca_file}",
            file=sys.stderr,
            flush=True,
        )
        try:
            # Own process group: the terminal's Ctrl-C reaches this process
            # only, and is forwarded once (not twice) to the command.
            child = subprocess.Popen(cmd, process_group=0)
        except OSError as error:
            print(f"error: cannot run {cmd[0]}: {error}", file=sys.stderr)
            return 127

        def forward(signum: int, _frame: FrameType | None) -> None:
            child.send_signal(signum)

        previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
        try:
            status = child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    # Like a shell: a command killed by signal N exits 128 + N.
    return status if status >= 0 else 128 - status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        for scenario in SCENARIOS:
            print(describe(scenario))
        return 0
    try:
        return _run(args.state_dir, args.ports, args.cmd)
    except FleetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
