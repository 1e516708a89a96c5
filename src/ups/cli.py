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


def _parse_param(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--param {text!r}: expected name=number, e.g. nu=0.01") from None


def _cmd_data_generate(args: argparse.Namespace) -> int:
    from ups.data.generate import generate_dataset

    params = dict(args.param or [])
    for name in ("nu", "beta"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    out = generate_dataset(
        pde=args.pde, params=params, samples=args.samples, seed=args.seed, out=args.out,
        resolution=args.resolution, frames=args.frames, t_end=args.t_end, batch_size=args.batch_size,
        progress=not args.quiet,
    )
    print(f"wrote {args.samples} {args.pde} samples to {out}")
    return 0


def _add_data_generate(data_sub) -> None:
    p = data_sub.add_parser("generate", help="solve a PDE for random initial conditions, write PDEBench HDF5")
    p.add_argument("--pde", default="burgers1d", help="registered PDE name (default burgers1d)")
    p.add_argument("--nu", type=float, default=None, help="Burgers viscosity as PDEBench labels it")
    p.add_argument("--beta", type=float, default=None, help="advection speed")
    p.add_argument("--param", type=_parse_param, action="append", help="any PDE parameter as name=value")
    p.add_argument("--samples", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output .hdf5 file (written atomically)")
    p.add_argument("--resolution", type=int, default=1024, help="cells on [0, 1) (default 1024)")
    p.add_argument("--frames", type=int, default=201, help="saved frames including t=0 (default 201)")
    p.add_argument("--t-end", type=float, default=2.0, help="final time (default 2.0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_data_generate)


def _add_data_parser(sub) -> argparse._SubParsersAction:
    """The ``ups data ...`` group; returns its subparsers so other commands can join it."""
    data = sub.add_parser("data", help="generate and inspect trajectory files")
    dsub = data.add_subparsers(dest="data_command", required=True)
    _add_data_generate(dsub)
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
