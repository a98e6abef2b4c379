"""The command line: ``check``, ``validate`` and ``serve``.

Flags follow Go exporters (``--config.file``, ``--web.listen-address``, ...).
Exit codes: 0 nothing found, 1 something found (check) or a runtime failure,
2 bad usage or bad input.  Bad input always gives one line on stderr and never
a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from typing import NoReturn

from exporter import __version__
from exporter.model import ProbeResult, Target
from exporter.reasons import SniExporterError, UsageError

EXIT_OK = 0
EXIT_FOUND = 1
EXIT_USAGE = 2

DEFAULT_LISTEN = (
    ":9866"  # free of 9115 (blackbox), 9219 (ssl_exporter), 9793 (x509-certificate-exporter)
)


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and exit 2, like every other bad input here."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):  # also rejects NaN
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sni-exporter",
        description="Tell which TLS endpoints need SNI, before a client that sends none breaks.",
    )
    parser.add_argument("--version", action="version", version=f"sni-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser(
        "check",
        help="probe endpoints once and print the verdict",
        description="Make two handshakes per endpoint (with and without SNI) and compare them. "
        "Exit 0 when nothing was found, 1 when something was, 2 on bad usage.",
    )
    check.add_argument(
        "targets",
        nargs="+",
        metavar="HOST[:PORT]",
        help="e.g. api.example.com, api.example.com:8443, [2001:db8::1]:443",
    )
    check.add_argument(
        "--address",
        help="connect to this IP instead of resolving the host (only with a single target)",
    )
    check.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        help="per-handshake timeout in seconds (default 5)",
    )
    check.add_argument("--ca-file", help="extra trusted CA certificates (PEM) for the chain check")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.add_argument(
        "--concurrency", type=_positive_int, default=64, help="targets probed at once (default 64)"
    )

    validate = sub.add_parser("validate", help="check a targets file and do nothing else")
    validate.add_argument("file", metavar="FILE")

    serve = sub.add_parser("serve", help="probe targets on a schedule and serve Prometheus metrics")
    serve.add_argument(
        "--config.file",
        dest="config_file",
        required=True,
        metavar="FILE",
        help="targets file (see targets.yaml)",
    )
    serve.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN})",
    )
    serve.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        metavar="PATH",
        help="path of the metrics (default /metrics)",
    )
    serve.add_argument(
        "--log.level", dest="log_level", default="info", choices=["debug", "info", "warn", "error"]
    )
    serve.add_argument(
        "--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"]
    )
    serve.add_argument(
        "--probe.concurrency",
        dest="concurrency",
        type=_positive_int,
        default=256,
        metavar="N",
        help="probes in flight at most (default 256)",
    )
    serve.add_argument(
        "--shard",
        default="0/1",
        metavar="INDEX/COUNT",
        help="probe only this shard of the targets, e.g. 0/3 (default 0/1: all)",
    )
    return parser


def _run_check(args: argparse.Namespace) -> int:
    from exporter import certs, config, probe, report  # noqa: PLC0415 (keeps --help fast)

    if args.address is not None and len(args.targets) != 1:
        raise UsageError("--address applies to a single target; give one HOST[:PORT]")
    targets = [
        config.target_from_spec(
            spec, address=args.address, timeout=args.timeout, ca_file=args.ca_file
        )
        for spec in args.targets
    ]
    trust = certs.load_trust_store(args.ca_file)

    async def run() -> list[ProbeResult]:
        # An unknown host is bad input: say so before probing anything.
        unresolved = [t for t in targets if t.address is None]
        errors: list[str] = []
        resolved: dict[str, str] = {}
        for t, outcome in zip(
            unresolved,
            await asyncio.gather(
                *(probe.resolve(t.host, t.port, t.timeout) for t in unresolved),
                return_exceptions=True,
            ),
            strict=True,
        ):
            if isinstance(outcome, BaseException):
                errors.append(f"cannot resolve {t.host!r}: {outcome}")
            else:
                resolved[t.name] = outcome
        if errors:
            raise UsageError("; ".join(errors))
        semaphore = asyncio.Semaphore(args.concurrency)

        async def one(t: Target) -> ProbeResult:
            if t.name in resolved:
                t = dataclasses.replace(t, address=resolved[t.name])
            async with semaphore:
                return await probe.probe(t, trust)

        return list(await asyncio.gather(*(one(t) for t in targets)))

    results = asyncio.run(run())
    if args.json:
        docs = [report.to_json(r) for r in results]
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    else:
        print(report.table(results, time.time()), end="")
    return EXIT_FOUND if any(report.findings(r) for r in results) else EXIT_OK


def _run_validate(args: argparse.Namespace) -> int:
    from exporter import config  # noqa: PLC0415

    cfg = config.load_config(args.file)
    print(f"{args.file}: ok, {len(cfg.targets)} targets")
    return EXIT_OK


def _run_serve(args: argparse.Namespace) -> int:
    from exporter import logs, service, shard  # noqa: PLC0415

    logs.configure(args.log_level, args.log_format)
    options = service.Options(
        config_file=args.config_file,
        listen_address=args.listen_address,
        telemetry_path=args.telemetry_path,
        concurrency=args.concurrency,
        shard=shard.parse_shard(args.shard),
    )
    return service.serve(options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runners = {"check": _run_check, "validate": _run_validate, "serve": _run_serve}
    try:
        return runners[args.command](args)
    except SniExporterError as error:
        # One line per problem, never a traceback.  Config errors are already
        # "FILE:LINE:COL: what to fix", one per line, the way compilers speak.
        prefix = "" if type(error).__name__ == "ConfigError" else "sni-exporter: error: "
        for line in str(error).splitlines() or [type(error).__name__]:
            print(f"{prefix}{line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
