"""The ``ups`` command line: a thin layer that parses arguments and calls the library.

Every user-facing problem is a :class:`ups.errors.UPSError`, printed as one ``error:`` line
(exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ups import __version__
from ups.allocator import retain_freed_memory
from ups.errors import ConfigError, UPSError


def _cmd_config(args: argparse.Namespace) -> int:
    from ups.config import load_config

    exp = load_config(args.config, args.overrides)
    print(exp.to_yaml(), end="")
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    import json

    from ups.data.info import file_info, format_info, refusal
    from ups.errors import DataError

    info = file_info(args.file)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    if args.strict and info["nonfinite"]["samples"]:
        raise DataError(refusal(info))
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


def _torchrun(args: argparse.Namespace, command: str) -> int | None:
    """``--nproc N`` outside torchrun: relaunch this command under torchrun (None: run it here)."""
    from ups.training import distributed

    if not args.nproc or distributed.launched_by_torchrun():
        return None
    argv = [command, *([args.config] if getattr(args, "config", None) else []), *args.overrides]
    for flag in ("stage", "resume", "run_dir"):
        value = getattr(args, flag, None)
        if value is not None and not (flag == "stage" and value == "all"):
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    return distributed.launch(args.nproc, argv)


def _cmd_train(args: argparse.Namespace) -> int:
    from ups.config import load_config
    from ups.training.distributed import env_rank
    from ups.training.launch import train
    from ups.training.runs import TrainingInterrupted

    code = _torchrun(args, "train")
    if code is not None:
        return code
    exp = load_config(args.config, args.overrides)
    try:
        run = train(exp, stage=args.stage, resume=args.resume, run_dir=args.run_dir)
    except TrainingInterrupted as stop:
        if env_rank() == 0:
            print(str(stop).replace("CONFIG", args.config), file=sys.stderr)
        return stop.exit_code
    if env_rank() == 0:
        print(f"trained: {run}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1")
    return value


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
    t_end = args.t_end
    if args.dt is not None:
        if args.t_end is not None or args.frames is None:
            raise ConfigError("--dt needs --frames and replaces --t-end (t_end = dt * (frames - 1)): drop --t-end")
        t_end = args.dt * (args.frames - 1)
    out = generate_dataset(
        pde=args.pde, params=params, samples=args.samples, seed=args.seed, out=args.out,
        resolution=args.resolution, frames=args.frames, t_end=t_end, batch_size=args.batch_size,
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
    p.add_argument("--resolution", type=int, default=None,
                   help="points per axis (default: the PDE's own, e.g. burgers1d 1024, ks1d 256, ns2d 64)")
    p.add_argument("--frames", type=int, default=None, help="saved frames including t=0 (default: the PDE's)")
    p.add_argument("--t-end", type=float, default=None, help="final time (default: the PDE's, burgers1d 2.0)")
    p.add_argument("--dt", type=float, default=None,
                   help="time between frames instead of --t-end: t_end = dt * (frames - 1) (e.g. ks1d: 0.2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_data_generate)


def _add_data_parser(sub) -> argparse._SubParsersAction:
    """The ``data`` command group; returns its sub-parsers so each data command adds itself."""
    data = sub.add_parser("data", help="generate and inspect trajectory data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    _add_data_generate(data_sub)
    p = data_sub.add_parser("info", help="shapes, attributes, coordinates, value range and NaN/inf of a file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--strict", action="store_true", help="exit non-zero when the file holds NaN/inf")
    p.set_defaults(func=_cmd_data_info)
    return data_sub


def _cmd_eval(args: argparse.Namespace) -> int:
    from ups.eval.run_eval import evaluate_run, write_outputs
    from ups.pipeline import format_summary

    result = evaluate_run(args.run_dir, data=args.data, split=args.split, ttc=args.ttc, corrector=args.corrector,
                          out=args.out, max_samples=args.max_samples, overrides=args.overrides, peers=args.peer)
    report = write_outputs(args.run_dir, result)
    for name, res in result.get("per_pde", {"": result}).items():  # a data-mixture run: one table per PDE
        print(f"{name}:\n{format_summary(res)}" if name else format_summary(res))
        if name:
            print(f"report: {Path(res['out_dir']) / 'report.html'}")
    if "per_pde" in result:
        print(f"mean nRMSE over the PDEs: {result['metrics']['nrmse_mean_over_pdes']:.4g}")
    else:
        print(f"report: {report}")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from ups.eval.infer import infer

    out = infer(args.run_dir, input=args.input, steps=args.steps, out=args.out, points=args.points, start=args.start,
                params=dict(args.param or []) or None, compile=args.compile)
    print(f"wrote {out}")
    return 0


def _cmd_pipeline(args: argparse.Namespace, exp=None) -> int:
    from ups.config import load_config
    from ups.pipeline import format_summary, pipeline

    code = _torchrun(args, "pipeline" if exp is None else "demo")
    if code is not None:
        return code
    result = pipeline(exp if exp is not None else load_config(args.config, args.overrides), run_dir=args.run_dir)
    if result is None:  # a rank > 0 under torchrun: rank 0 evaluates and reports
        return 0
    print(format_summary(result))
    print(f"report: {result['report']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ups.pipeline import demo_config

    return _cmd_pipeline(args, demo_config(args.overrides))


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one ``error:`` line naming the command's ``--help`` (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ups", description="Universal Physics Stack")
    parser.add_argument("--version", action="version", version=f"ups {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="validate a config and print it resolved")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=_cmd_config)
    _add_data_parser(sub)

    p = sub.add_parser("train", help="train the stages of a config in one run directory")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--stage", default="all", help="a stage name, or 'all' (pipeline order; default)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--run-dir", default=None, help="write the run here instead of run.out_dir/<name>")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train in N processes on this machine (runs torchrun; data.batch_size is the global batch)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a run in physical space: JSON, plots, report.html")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="overrides of the run's config, e.g. data.spatial_stride=1")
    p.add_argument("--data", default=None, help="another HDF5 file (ours, or PDEBench's: its split is used)")
    p.add_argument("--peer", action="append", default=[], metavar="PEER_RUN",
                   help="a trained peer run (FNO, U-Net, another UPS run) scored beside the model; repeatable")
    p.add_argument("--split", default=None, choices=["train", "val", "test", "all"],
                   help="default: eval.split; 'all': every sample of --data FILE")
    p.add_argument("--ttc", action="store_true", help="also evaluate best-of-K test-time compute")
    p.add_argument("--corrector", default="auto", choices=["auto", "none", "multi", "distilled"])
    p.add_argument("--max-samples", type=_positive, default=None, help="evaluate at most this many samples")
    p.add_argument("--out", default=None, help="folder for the JSON, plots and report (default: with --data, "
                   "RUN_DIR/eval_<file stem>_<split>/; else RUN_DIR)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("infer", help="roll out from the initial frames of an HDF5 file, write the same layout")
    p.add_argument("run_dir")
    p.add_argument("--input", required=True, help="HDF5 file in the PDEBench layout (ours or PDEBench's)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--points", default=None, help=".npy query coordinates [Q] or [Q, d] (default: input points)")
    p.add_argument("--start", type=int, default=0, help="initial frame (default 0)")
    p.add_argument("--param", type=_parse_param, action="append",
                   help="a PDE parameter as name=value, for input files that carry none")
    p.add_argument("--out", required=True, help="output .hdf5 (written atomically)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the surrogate first (faster rollouts of many samples; seconds to compile)")
    p.set_defaults(func=_cmd_infer)

    for name, helptext in (("pipeline", "check, train all stages, gate, evaluate, leaderboard"),
                           ("demo", "the pipeline on the embedded small Burgers default")):
        p = sub.add_parser(name, help=helptext)
        if name == "pipeline":
            p.add_argument("config")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        p.add_argument("--run-dir", default=None)
        p.add_argument("--nproc", type=int, default=None, metavar="N", help="train in N processes (torchrun)")
        p.set_defaults(func=_cmd_pipeline if name == "pipeline" else _cmd_demo)

    p = sub.add_parser("leaderboard", help="print the leaderboard CSV as a table")
    p.add_argument("--file", default=None, help="leaderboard CSV (default: run.leaderboard, runs/leaderboard.csv)")
    p.set_defaults(func=_cmd_leaderboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # dotted key=value overrides are accepted anywhere on the line, also after options
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        command = " ".join(str(getattr(args, k)) for k in ("command", "data_command") if getattr(args, k, None))
        print(f"error: unrecognized arguments: {' '.join(stray)} (see `ups {command} --help`)", file=sys.stderr)
        return 2
    if extra:
        args.overrides = [*args.overrides, *extra]
    retain_freed_memory()  # training steps and rollouts reuse big buffers: no page faults (ups.allocator)
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
