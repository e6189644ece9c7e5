"""The command line: argument parsing and exit codes only.

Exit status: 0 done; 2 invalid configuration or usage; 1 a fatal runtime error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from connector import __version__
from connector.errors import ConfigError, FatalError
from connector.logs import LEVELS, setup_logging

log = logging.getLogger("connector")

DESCRIPTION = (
    "Kafka activity events to SaaS bulk-import APIs (Rally UXR, Rally CRM, mediarithmics, any JSON/NDJSON "
    "bulk endpoint), at least once, with a dead-letter topic and Prometheus metrics."
)
EPILOG = (
    "Exit status: 0 done, 2 invalid configuration or usage, 1 fatal runtime error. Docs: README.md, docs/."
)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        choices=LEVELS,
        default=argparse.SUPPRESS,
        help="log level (default: the configuration's logging.level, else info)",
    )
    parser = argparse.ArgumentParser(
        prog="activity-connector", description=DESCRIPTION, epilog=EPILOG, parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"activity-connector {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "the YAML configuration file"
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run every configured sink until SIGTERM/SIGINT",
        description="Run every configured sink until SIGTERM/SIGINT; then flush, settle, commit and exit 0.",
    )
    run.add_argument("-c", "--config", required=True, type=Path, help=config_help)
    check = sub.add_parser(
        "check",
        parents=[common],
        help="validate the configuration and print it, secrets as ***",
        description="Validate the configuration (librdkafka's properties included) and print the effective "
        "configuration, secrets as ***; the output loads back as a configuration file.",
    )
    check.add_argument("-c", "--config", required=True, type=Path, help=config_help)
    check.add_argument(
        "--connect", action="store_true", help="also reach Kafka and each destination (nothing is written)"
    )
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="local Kafka + sandbox APIs + sample events, run until drained",
        description="Start a local Kafka broker and the sandbox APIs, produce sample events (some bad), run "
        "the connector until everything is delivered or dead-lettered, print a summary.",
    )
    demo.add_argument("--records", type=int, default=20_000, help="sample events to produce (default 20000)")
    sandbox = sub.add_parser(
        "sandbox",
        parents=[common],
        help="serve local simulators of every seeded API",
        description="Serve local simulators of every seeded API under one port (see docs/sandbox.md).",
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sandbox.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    dlq = sub.add_parser(
        "dlq",
        parents=[common],
        help="dead-letter topics: replay",
        description="Work with a sink's dead-letter topic.",
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="DLQ_COMMAND")
    replay = dlq_sub.add_parser(
        "replay",
        parents=[common],
        help="re-publish dead letters to their original topic",
        description="Re-publish a sink's dead-lettered records to their original topic with their original "
        "key, value and headers (error headers removed, __activity.replayed counting replays), exactly once: "
        "records and progress are committed together. Prints counts per reason.",
    )
    replay.add_argument("-c", "--config", required=True, type=Path, help=config_help)
    replay.add_argument("--sink", required=True, help="the sink whose dead-letter topic is replayed")
    replay.add_argument(
        "--reason", action="append", default=[], help="only dead letters of this reason (repeatable)"
    )
    replay.add_argument("--since", help="only dead letters written since: 2026-11-30T12:00:00Z, or 6h (ago)")
    replay.add_argument("--limit", type=int, help="replay at most this many records")
    replay.add_argument("--rate", type=float, help="at most this many records a second")
    replay.add_argument("--dry-run", action="store_true", help="only count what would be replayed")
    return parser


def _sandbox_missing(exc: ModuleNotFoundError) -> int:
    """`demo` and `sandbox` need the test rigs, a package of their own that the image does not carry."""
    if exc.name is None or not exc.name.startswith("connector_sandbox"):
        raise exc
    print(
        "usage error: `demo` and `sandbox` need the activity-connector-sandbox package, which is not "
        "installed (from the repository: pip install ./sandbox; make demo installs it)",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level: str | None = getattr(args, "log_level", None)
    setup_logging("text", level or "info")
    try:
        if args.command == "run":
            from connector.app import run_app
            from connector.config import load_settings

            settings = load_settings(args.config)
            setup_logging(settings.log_format, level or settings.log_level)
            run_app(settings)
        elif args.command == "check":
            from connector.check import check

            return check(args.config, args.connect)
        elif args.command == "demo":
            try:
                from connector_sandbox.demo import run_demo
            except ModuleNotFoundError as exc:
                return _sandbox_missing(exc)
            return run_demo(args.records)
        elif args.command == "dlq":
            from connector.config import load_settings
            from connector.replay import find_sink, parse_since, replay

            settings = load_settings(args.config)
            setup_logging(settings.log_format, level or settings.log_level)
            if args.limit is not None and args.limit < 1:
                raise ConfigError("--limit", "must be at least 1")
            if args.rate is not None and args.rate <= 0:
                raise ConfigError("--rate", "must be above 0")
            replay(
                settings,
                find_sink(settings, args.sink),
                reasons=args.reason,
                since=parse_since(args.since) if args.since else None,
                limit=args.limit,
                dry_run=args.dry_run,
                rate=args.rate,
            )
        elif args.command == "sandbox":
            try:
                from connector_sandbox.server import run_sandbox
            except ModuleNotFoundError as exc:
                return _sandbox_missing(exc)
            run_sandbox(args.host, args.port)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except FatalError as exc:
        log.error("fatal: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
