"""The ``ups`` command line: a thin layer that parses arguments and calls the library.

Every user-facing problem is a :class:`ups.errors.UPSError`, printed as one ``error:`` line
(exit status 2).
"""

from __future__ import annotations

import argparse
import sys

from ups import __version__
from ups.errors import UPSError


def _cmd_config(args: argparse.Namespace) -> int:
    from ups.config import load_config

    cfg = load_config(args.config, args.overrides)
    print(cfg.to_yaml(), end="")
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from ups.config import RunConfig
    from ups.eval.leaderboard import Leaderboard

    board = Leaderboard(args.file or RunConfig().leaderboard)
    if not board.exists():
        raise UPSError(f"no leaderboard at {board.path} (evaluations add rows to it: run `ups pipeline CONFIG` "
                       "first, or pass --file CSV)")
    print(board.format_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ups", description="Universal Physics Stack")
    parser.add_argument("--version", action="version", version=f"ups {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="validate a config and print it resolved")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("leaderboard", help="print the leaderboard CSV as a table")
    p.add_argument("--file", default=None, help="leaderboard CSV (default: run.leaderboard, runs/leaderboard.csv)")
    p.set_defaults(func=_cmd_leaderboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UPSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
