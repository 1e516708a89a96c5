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


def _cmd_data_info(args: argparse.Namespace) -> int:
    import json

    from ups.data.info import file_info, format_info

    info = file_info(args.file)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _add_data_parser(sub) -> argparse._SubParsersAction:
    """The ``ups data ...`` group; returns its subparsers so other commands can join it."""
    data = sub.add_parser("data", help="generate and inspect trajectory files")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("info", help="shapes, attributes, coordinates, value range and NaN/inf of a file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_data_info)
    return dsub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ups", description="Universal Physics Stack")
    parser.add_argument("--version", action="version", version=f"ups {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="validate a config and print it resolved")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=_cmd_config)
    _add_data_parser(sub)
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
