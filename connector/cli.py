"""Commands: run, check, demo, sandbox. Argument parsing and exit codes only.

Exit status: 0 done; 2 invalid configuration or usage; 1 a fatal runtime error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from connector.errors import ConfigError, FatalError

log = logging.getLogger("connector")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="activity-connector", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every configured sink until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", required=True, type=Path)
    check = sub.add_parser("check", help="validate the configuration and print it with secrets redacted")
    check.add_argument("-c", "--config", required=True, type=Path)
    check.add_argument(
        "--connect", action="store_true", help="also reach Kafka and each destination (no writes)"
    )
    demo = sub.add_parser("demo", help="local Kafka + sandbox APIs + sample events, run until drained")
    demo.add_argument("--records", type=int, default=20_000)
    sandbox = sub.add_parser("sandbox", help="serve local simulators of every seeded API")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8080)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command == "run":
            from connector.app import run_app
            from connector.config import load_settings

            run_app(load_settings(args.config))
        elif args.command == "check":
            from connector.check import check

            return check(args.config, args.connect)
        elif args.command == "demo":
            from connector.demo import run_demo

            return run_demo(args.records)
        elif args.command == "sandbox":
            from connector.sandbox.server import run_sandbox

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
