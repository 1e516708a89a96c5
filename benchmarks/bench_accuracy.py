"""Accuracy at equal compute on Burgers nu=0.01 (PDEBench protocol): UPS, FNO and U-Net trained on the same
data for the same wall-clock budget, side by side (``--parallel`` models at a time, one thread each), then
evaluated on the same test split: rollout from frame 0 over all frames, from frame 10, and at every cell.

Usage: python benchmarks/bench_accuracy.py [--budget SECONDS] [--budgets 300,900,1800] [--parallel N]
       [--models ups,fno] [--quick]   (prints one JSON object)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_common import Problem, run_problem  # noqa: E402

from ups.errors import UPSError  # noqa: E402

# FNO also at batch 8 (its config uses 32): at 300 s it scored 0.026 at batch 8 against 0.043 at 32, while UPS got
# worse at 8 (docs/PERFORMANCE.md, r6), so the verdict is taken against the better FNO
BURGERS = Problem(name="burgers1d", ups="burgers1d", peers={"fno": "fno_burgers1d", "unet": "unet_burgers1d"},
                  budget_s=900.0, variant_of={"fno_b8": "fno"},
                  variants={"fno_b8": ("data.batch_size=8",), "ups_compiled": ("training.compile=true",)})
QUICK_BUDGET_S = 2.0


def parse_budgets(text: str) -> list[float]:
    """``"300,900,1800"`` -> [300.0, 900.0, 1800.0]; a bad entry is a one-line error."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budgets wants seconds separated by commas, e.g. 300,900,1800; "
                                         f"got '{text}'") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"--budgets needs positive seconds, got '{text}'")
    return values


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    """``"ups_k2=stages.operator.rollout_steps=2;training.lr=0.002"`` -> ("ups_k2", (the two overrides)): a UPS
    variant trained beside the others (``--variant``); a bad entry is a one-line error."""
    name, _, rest = text.partition("=")
    overrides = tuple(o.strip() for o in rest.split(";") if o.strip())
    if not name.strip().isidentifier() or not overrides or not all("=" in o for o in overrides):
        raise argparse.ArgumentTypeError(f"--variant wants NAME=KEY=VALUE[;KEY=VALUE...], e.g. "
                                         f"ups_k2=stages.operator.rollout_steps=2; got '{text}'")
    return name.strip(), overrides


def default_parallel(quick: bool) -> int:
    """Models trained at a time: one per core (at most 2: UPS and FNO side by side); 1 in quick mode."""
    return 1 if quick else max(1, min(2, os.cpu_count() or 1))


def run_accuracy(problem: Problem, *, budget: float | None, quick: bool, budgets: list[float] | None = None,
                 parallel: int | None = None, models: list[str] | None = None, reuse: dict | None = None,
                 variants: dict[str, tuple[str, ...]] | None = None) -> dict:
    """``accuracy_common.run_problem`` in a temporary work folder, with the UPS/FNO verdict. variants: UPS variants
    (name -> config overrides, ``--variant``) trained beside the models, which they join."""
    t0 = time.perf_counter()
    if variants:
        clash = sorted(set(variants) & set(problem.configs()))  # UPS, the peers and their variants
        if clash:
            raise UPSError(f"--variant {clash[0]}: that name is taken by a model of this benchmark; choose another")
        models = list(dict.fromkeys([*(models or problem.default_models()), *variants]))  # named in both: once
        problem = replace(problem, variants={**problem.variants, **variants})
    if quick and budget is None:
        budget = QUICK_BUDGET_S
    with tempfile.TemporaryDirectory(prefix=f"ups-bench-{problem.name}-") as tmp:
        out = run_problem(problem, budget=budget, quick=quick, budgets=budgets, models=models, work=Path(tmp),
                          reuse=reuse, parallel=default_parallel(quick) if parallel is None else parallel)
    fnos = [f"ups_over_{k}" for k in ("fno", *problem.peer_variants(of="fno")) if f"ups_over_{k}" in out["ratios"]]
    if fnos:  # against the better FNO where it also ran as a variant (e.g. at UPS's batch size), or the one that ran
        fno = max(out["ratios"][k] for k in fnos)
        out["ratio_ups_over_fno_rollout_nrmse"] = fno
        out["ups_beats_fno"] = fno < 1.0
    out["threads"] = 1
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def run(budget: float | None = None, quick: bool = False, budgets: list[float] | None = None,
        parallel: int | None = None, models: list[str] | None = None, reuse: dict | None = None,
        variants: dict[str, tuple[str, ...]] | None = None) -> dict:
    """Train and score every model; ``budget`` seconds of training each (default 900, quick 2)."""
    return {"benchmark": "accuracy", **run_accuracy(BURGERS, budget=budget, quick=quick, budgets=budgets,
                                                    parallel=parallel, models=models, reuse=reuse,
                                                    variants=variants)}


def cli(run_fn, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(run_fn.__module__ or "").strip() or None)
    parser.add_argument("--budget", type=float, default=None, help="training seconds per model")
    parser.add_argument("--quick", action="store_true", help="tiny data and models, seconds")
    parser.add_argument("--budgets", type=parse_budgets, default=None,
                        help="comma-separated training budgets in seconds for the budget curve, e.g. 300,900,1800")
    parser.add_argument("--parallel", type=int, default=None, help="models trained at a time (default: cores, <= 2)")
    parser.add_argument("--models", default=None,
                        help="comma-separated subset, e.g. fno,unet (ups is always trained or reused)")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an earlier result JSON of this benchmark on the same data: what it holds is not trained "
                             "again, and new models train at --budget (and --budgets) only (extends a budget curve, "
                             "e.g. --budgets 1800 --reuse results/accuracy.json, or adds a variant at one budget)")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="NAME=OVERRIDES",
                        help="a UPS variant trained beside the models, e.g. ups_k2=stages.operator.rollout_steps=2 "
                             "(overrides separated by ';'; repeatable)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    reuse = json.loads(args.reuse.read_text()) if args.reuse else None
    print(json.dumps(run_fn(args.budget, args.quick, args.budgets, args.parallel, models, reuse=reuse,
                            variants=dict(args.variant) or None), indent=2))


if __name__ == "__main__":
    cli(run)
