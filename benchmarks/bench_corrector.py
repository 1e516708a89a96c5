"""Does the corrector earn its place? Issue 15's measurement, at equal total training compute.

For one problem (Kuramoto-Sivashinsky by default, Burgers too), two arms train side by side in worker
processes, one thread each, on the same files, for budgets in CPU seconds (``peers_common.compute_clock``):

- ``operator alone``: the UPS operator stage for ``B`` seconds;
- ``operator + corrector``: the operator for ``B - b``, then ``diff_residual`` (the physical-space refiner)
  for ``b`` on that operator's checkpoint, then ``consistency_distill`` for ``d`` more seconds (stated
  separately: the distilled sampler's total is ``B + d``).

Every variant is rebuilt from its run directory as ``ups eval`` does (``Simulator.from_run``, the corrector
of the checkpoint and the number of denoising levels validation picked) and scored by the one scorer
(``peers_common.evaluate_fn`` -> ``ups.eval.evaluate.evaluate_split``) on the whole test trajectories:
rollout nRMSE, high-correlation time at 0.8 and 0.9 in steps, corrector network calls per step, CPU ms per
rollout step and sample, and test-time compute (best-of-K over the corrector's stochastic samples, the
physics reward of ``ups.eval.ttc``) against the same corrected model without it.

Usage: python benchmarks/bench_corrector.py [--problem ks1d|burgers1d] [--budget B] [--corrector-s b]
       [--distill-s d] [--ttc K] [--set KEY=VALUE ...] [--out benchmarks/results/corrector.json] [--quick]
(``--out`` merges this problem's result into the file, so one file holds KS and Burgers.)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_common import Problem, data_summary, side_by_side  # noqa: E402
from bench_accuracy_ks import KS  # noqa: E402
from peers_common import QUICK_GENERATE, ROOT, Bench, compute_clock, evaluate_fn, train_for_budget  # noqa: E402
from summarize import ttc_verdict  # noqa: E402

from ups.data.prepare import prepare_data  # noqa: E402
from ups.errors import UPSError  # noqa: E402
from ups.eval.ttc import physics_reward, ttc_rollout_fn  # noqa: E402
from ups.io_utils import atomic_write_json  # noqa: E402
from ups.rollout import rollout_fn  # noqa: E402
from ups.simulator import Simulator  # noqa: E402

BURGERS_DATA = ROOT / "data" / "bench_burgers1d"
BURGERS = Problem(
    name="burgers1d", ups="burgers1d", peers={}, budget_s=300.0,
    data=tuple(f"data.{s}={BURGERS_DATA / f'{s}.h5'}" for s in ("train", "val", "test")) + (
        "data.generate.samples={train: 256, val: 20, test: 32}",),
    quick_generate=QUICK_GENERATE,
)


@dataclass(frozen=True)
class Setup:
    """One problem's corrector benchmark: its data and UPS config (``problem``), the total training budget
    ``budget_s`` of each arm, the corrector's share ``corrector_s`` of it, the distillation's extra seconds,
    the TTC candidates (best-of-K) and the config overrides both arms train with (``stages.*``, ``eval.*``)."""

    problem: Problem
    budget_s: float
    corrector_s: float
    distill_s: float
    ttc_candidates: int = 4
    ttc_samples: int = 4  # test trajectories TTC is scored on, with and without it (0: all)
    own_part: bool = False  # also score the corrected arm's operator without its corrector (one more evaluation)
    # CPU seconds kept free for the refiner's final validation (it picks the number of denoising levels on
    # validation rollouts, after the clock stops training): the refiner trains for B - (operator's measured
    # seconds) - reserve_s, so the corrected arm's measured total stays at B
    reserve_s: float = 0.0
    overrides: tuple[str, ...] = ()

    def config(self, *, quick: bool, work: Path):
        return self.problem.load(self.problem.ups, quick=quick, work=work, extra=self.overrides)


# The operator weights both arms are scored with and the refiner is trained on: the EMA weights at the end of the
# budget. Not ``best``: on KS a validation rollout of the operator that diverges makes every validation metric
# NaN, and ``best`` then stays the weights of the first validation.
OPERATOR_WEIGHTS = "ema"
BOTH_ARMS = (f"stages.diff_residual.operator_checkpoint=operator_{OPERATOR_WEIGHTS}",)
# KS, chosen by measurement (128 train / 8 val trajectories, operator 100 s + refiner 100 s; val correlation
# steps, operator alone 41): the default refiner (width 32, 3 pushforward steps, warm-up 100 steps) took 60
# steps in 100 s, learned little (level-0 loss 0.95) and kept 41; width 16, 2 pushforward steps, warm-up 10
# and lr 2e-3 took 82 steps and reached 56 (one-step error x0.59). Validation ranks by correlation time (the
# operator's validation rollouts diverge, so their nRMSE is NaN); the denoising levels, under-trained at this
# budget, shortened it (21 steps) and are trained on a quarter of the pairs.
KS_REFINER = BOTH_ARMS + (
    "stages.diff_residual.refiner.conserve_mean=true", "stages.diff_residual.refiner.width=16",
    "stages.diff_residual.refiner.denoise_fraction=0.25", "stages.diff_residual.pushforward_steps=2",
    "stages.diff_residual.select_by=corr_time", "stages.diff_residual.training={warmup_steps: 10, lr: 0.002}",
    "stages.consistency_distill.student_steps=1", "stages.consistency_distill.pushforward_steps=2")
SETUPS = {
    # reserve: the refiner's final validation on the 8 validation trajectories took 35 CPU s at load 8-10, about
    # 26 s on an idle machine (where 35 left the corrected arm 291 s against the operator alone's 307)
    "ks1d": Setup(problem=KS, budget_s=300.0, corrector_s=100.0, distill_s=30.0, reserve_s=35.0,
                  overrides=KS_REFINER),
    # Burgers: the KS refiner settings (a small refiner learns more in a short budget), ranked by rollout nRMSE;
    # 45 of the 300 s: with the spectral operator, which learns fast, 90 s for the refiner cost the operator more
    # than the refiner gave back (corrected / alone 1.02 with 90 s; 0.92, 0.94, 0.92 with 45 s in three seeds)
    "burgers1d": Setup(problem=BURGERS, budget_s=300.0, corrector_s=45.0, distill_s=30.0, reserve_s=5.0,
                       overrides=tuple(o for o in KS_REFINER if "select_by" not in o and "student_steps" not in o)
                       + ("stages.consistency_distill.student_steps=2",)),
}
QUICK = {"budget_s": 3.0, "corrector_s": 1.0, "distill_s": 1.0, "ttc_candidates": 2, "ttc_samples": 1, "own_part": True}
QUICK_REFINER = ("stages.diff_residual.refiner.width=8", "stages.diff_residual.refiner.depth=1")


class CpuTimed:
    """A rollout function that counts the CPU seconds (``compute_clock``) and sample-steps of its rollouts
    (calls of more than one step; the teacher-forced pass of the scorer calls it one step at a time)."""

    def __init__(self, fn):
        self.fn, self.cpu_s, self.sample_steps = fn, 0.0, 0

    def __call__(self, u0, coords, params, dt, steps):
        """u0 [B, N, C], coords [B, N, d], params [B, P], dt [B] -> [B, steps, N, C]."""
        if steps <= 1:
            return self.fn(u0, coords, params, dt, steps)
        c0 = compute_clock()
        out = self.fn(u0, coords, params, dt, steps)
        self.cpu_s += compute_clock() - c0
        self.sample_steps += steps * u0.shape[0]
        return out

    @property
    def ms_per_step(self) -> float:
        return round(1e3 * self.cpu_s / max(1, self.sample_steps), 3)


def corrector_calls(model, ttc_candidates: int = 1) -> int:
    """Corrector network calls per rollout step: the deterministic path's levels + 1, plus K - 1 stochastic
    samples through all K levels under best-of-K TTC; 0 without a corrector."""
    corrector = getattr(model, "corrector", None)
    if corrector is None:
        return 0
    det = (corrector.config.steps if model.steps is None else model.steps) + 1
    return det + (ttc_candidates - 1) * corrector.calls


def score(run: Path, bench: Bench, *, corrector: str = "none", ttc_candidates: int = 0, seed: int = 0,
          weights: str = OPERATOR_WEIGHTS) -> dict:
    """One variant of ``run`` rebuilt as ``ups eval`` does (the operator's ``weights`` checkpoint), scored on the
    test split (TTC best-of-K when ``ttc_candidates`` > 1)."""
    sim = Simulator.from_run(run, corrector=corrector, checkpoint=weights)
    if ttc_candidates > 1:
        ttc_cfg = bench.exp.eval.ttc.model_copy(update={"candidates": ttc_candidates})
        fn = ttc_rollout_fn(sim.model, bench.normalizer, physics_reward(bench.meta, ttc_cfg), ttc_cfg, seed=seed,
                            max_principle=sim.max_principle)
    else:
        fn = rollout_fn(sim.model.eval(), mode=sim.rollout_mode, max_principle=sim.max_principle)
    timed = CpuTimed(fn)
    m = evaluate_fn(timed, bench)
    hc = m.get("high_corr") or {}
    return {"rollout_nrmse": m["nrmse"], "one_step_nrmse": m["nrmse_one_step"],
            "corr_steps_0.8": hc.get("0.8", {}).get("steps"), "corr_steps_0.9": hc.get("0.9", {}).get("steps"),
            "corrector_calls": corrector_calls(sim.model, max(1, ttc_candidates)),
            "cpu_ms_per_step": timed.ms_per_step, "nrmse_per_step": m["nrmse_per_step"]}


def _train(bench: Bench, exp, stage: str, run: Path, budget: float) -> dict:
    _, summary = train_for_budget(bench, exp, stage, run, budget)
    return {"cpu_s": round(summary["cpu_s"], 2), "steps": summary["step"], "status": summary["status"],
            "best_val_metric": summary["best_metric"]}


def operator_arm(setup: Setup, *, quick: bool, work: Path) -> dict:
    """The operator alone for the whole budget (runs in a worker process)."""
    torch.set_num_threads(1)
    exp = setup.config(quick=quick, work=work)
    bench = Bench.open(exp)
    run = work / "runs" / "operator_alone"
    training = {"operator": _train(bench, exp, "operator", run, setup.budget_s)}
    return {"training": training, "variants": {"operator alone": {
        "train_cpu_s": training["operator"]["cpu_s"], **score(run, bench)}}}


def corrected_arm(setup: Setup, *, quick: bool, work: Path) -> dict:
    """The operator for ``B - b``, the refiner for ``b``, the distillation for ``d``; every variant scored."""
    torch.set_num_threads(1)
    exp = setup.config(quick=quick, work=work)
    bench = Bench.open(exp)
    run = work / "runs" / "operator_corrector"
    training = {"operator": _train(bench, exp, "operator", run, setup.budget_s - setup.corrector_s)}
    # the refiner gets what the operator left of B (its final validation may overrun B - b), less the reserve
    left = setup.budget_s - training["operator"]["cpu_s"] - setup.reserve_s
    training["diff_residual"] = _train(bench, exp, "diff_residual", run, max(1.0, left))
    if setup.distill_s:
        training["consistency_distill"] = _train(bench, exp, "consistency_distill", run, setup.distill_s)
    cpu = {k: v["cpu_s"] for k, v in training.items()}
    op, corrected = cpu["operator"], cpu["operator"] + cpu["diff_residual"]
    variants = {"operator + corrector": {"train_cpu_s": corrected, **score(run, bench, corrector="multi")}}
    if setup.own_part:
        variants["operator (its own part of the budget)"] = {"train_cpu_s": op, **score(run, bench)}
    if setup.distill_s:
        variants["operator + distilled corrector"] = {"train_cpu_s": corrected + cpu["consistency_distill"],
                                                      **score(run, bench, corrector="distilled")}
    if setup.ttc_candidates > 1:
        variants.update(ttc_variants(setup, run, bench, train_cpu_s=corrected, seed=exp.training.seed))
    return {"training": training, "variants": variants}


def ttc_variants(setup: Setup, run: Path, bench: Bench, *, train_cpu_s: float, seed: int) -> dict:
    """The corrected model with and without best-of-K TTC, on the first ``setup.ttc_samples`` test trajectories
    (all when 0: TTC costs about K times the corrected rollout)."""
    sub, where = bench, ""
    if setup.ttc_samples and setup.ttc_samples < len(bench.test):
        data = bench.exp.data.model_copy(update={"max_samples": {**bench.exp.data.max_samples,
                                                                 "test": setup.ttc_samples}})
        sub = Bench(exp=bench.exp.model_copy(update={"data": data}), normalizer=bench.normalizer,
                    bundle=prepare_data(data, splits=("test",), generate=False, progress=False))
        where = f" ({setup.ttc_samples} of {len(bench.test)} test trajectories)"
    k = setup.ttc_candidates
    return {f"operator + corrector{where}": {"train_cpu_s": train_cpu_s, **score(run, sub, corrector="multi")},
            f"operator + corrector + TTC best-of-{k}{where}": {"train_cpu_s": train_cpu_s, **score(
                run, sub, corrector="multi", ttc_candidates=k, seed=seed)}}


ARMS = {"operator alone": operator_arm, "operator + corrector": corrected_arm}


def run_arm(arm: str, setup: Setup, quick: bool, work: Path) -> dict:
    """One arm of ``ARMS`` by name (a picklable entry point for the worker processes)."""
    return ARMS[arm](setup, quick=quick, work=work)


def _arms(setup: Setup, *, quick: bool, work: Path, parallel: int) -> dict:
    """Both arms, side by side in spawned workers (``accuracy_common.side_by_side``), or one after the other."""
    jobs = {arm: {"arm": arm, "setup": setup, "quick": quick, "work": work} for arm in ARMS}
    return side_by_side(run_arm, jobs, parallel=min(parallel, len(ARMS)))


def _ratio(a, b) -> float | None:
    return None if a is None or b is None or not b else a / b


def _gain_kept(alone: float, teacher: float, student: float) -> float | None:
    """The share of the teacher's rollout nRMSE reduction (alone -> teacher) the student keeps; None without one."""
    if any(math.isnan(v) for v in (alone, teacher, student)) or teacher >= alone:
        return None
    return (alone - student) / (alone - teacher)


def verdict(variants: dict, setup: Setup) -> dict:
    """Issue 15's acceptance numbers: correlation-time and nRMSE ratios against the operator alone, the share of
    the corrector's correlation-time gain the distilled sampler keeps, and TTC against no TTC."""
    op, cor = variants["operator alone"], variants["operator + corrector"]
    dist = variants.get("operator + distilled corrector")
    ttc_key = next((k for k in variants if " + TTC " in k), None)
    ttc = None if ttc_key is None else variants[ttc_key]
    # the same corrected model on the same trajectories, without TTC
    base = None if ttc_key is None else variants[ttc_key.replace(f" + TTC best-of-{setup.ttc_candidates}", "")]
    gain = cor["corr_steps_0.8"] - op["corr_steps_0.8"]
    kept = None if dist is None or gain <= 0 else (dist["corr_steps_0.8"] - op["corr_steps_0.8"]) / gain
    out = {"train_cpu_ratio": _ratio(cor["train_cpu_s"], op["train_cpu_s"]),  # equal budgets: about 1
           "corr_ratio_0.8": _ratio(cor["corr_steps_0.8"], op["corr_steps_0.8"]),
           "corr_ratio_0.9": _ratio(cor["corr_steps_0.9"], op["corr_steps_0.9"]),
           "nrmse_ratio": _ratio(cor["rollout_nrmse"], op["rollout_nrmse"]),
           "distilled_corr_ratio_0.8": None if dist is None else _ratio(dist["corr_steps_0.8"], op["corr_steps_0.8"]),
           "distilled_nrmse_ratio": None if dist is None else _ratio(dist["rollout_nrmse"], op["rollout_nrmse"]),
           "distilled_gain_kept": kept, "distilled_calls": None if dist is None else dist["corrector_calls"],
           "distilled_nrmse_gain_kept": None if dist is None else _gain_kept(
               op["rollout_nrmse"], cor["rollout_nrmse"], dist["rollout_nrmse"])}
    if ttc is not None:
        out["ttc_nrmse_ratio"] = _ratio(ttc["rollout_nrmse"], base["rollout_nrmse"])
        out["ttc_corr_ratio_0.8"] = _ratio(ttc["corr_steps_0.8"], base["corr_steps_0.8"])
        out["ttc_helps"] = ttc_verdict(out["ttc_nrmse_ratio"], out["ttc_corr_ratio_0.8"]) == "helps"
        out["ttc_cost_ratio"] = _ratio(ttc["cpu_ms_per_step"], base["cpu_ms_per_step"])
    out["corrector_meets_1.2x"] = bool((out["corr_ratio_0.8"] or 0.0) >= 1.2)
    out["distilled_keeps_half"] = bool(kept is not None and kept >= 0.5 and (out["distilled_calls"] or 99) <= 2)
    ratio = out["nrmse_ratio"]  # NaN when a test rollout diverged in either arm: no verdict
    out["nrmse_no_worse"] = None if ratio is None or math.isnan(ratio) else bool(ratio <= 1.0)
    return out


def run_corrector(setup: Setup, *, quick: bool, parallel: int = 2) -> dict:
    """Both arms of ``setup`` in a temporary work folder; the variants, their training and the verdict."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"ups-bench-corrector-{setup.problem.name}-") as tmp:
        work = Path(tmp)
        bench = Bench.open(setup.config(quick=quick, work=work))  # generate missing files once, before the workers
        arms = _arms(setup, quick=quick, work=work, parallel=parallel)
    variants = {name: v for arm in arms.values() for name, v in arm["variants"].items()}
    training = {arm: res["training"] for arm, res in arms.items()}
    return {"problem": setup.problem.name, "quick": quick, "budget_s": setup.budget_s,
            "corrector_s": setup.corrector_s, "reserve_s": setup.reserve_s, "distill_s": setup.distill_s,
            "ttc_candidates": setup.ttc_candidates,
            "overrides": list(setup.overrides),
            "data": data_summary(bench) | {"rollout_steps": len(variants["operator alone"]["nrmse_per_step"])},
            "threads_per_arm": 1, "parallel": parallel, "training": training, "variants": variants,
            "verdict": verdict(variants, setup), "wall_s": round(time.perf_counter() - t0, 1)}


def make_setup(problem: str, *, quick: bool, budget: float | None = None, corrector_s: float | None = None,
               distill_s: float | None = None, ttc: int | None = None, overrides: list[str] | None = None,
               own_part: bool | None = None) -> Setup:
    """The setup of ``problem`` (SETUPS) with the given values replacing its defaults (quick: tiny ones); another
    ``budget`` keeps the default shares of the corrector and the distillation."""
    if problem not in SETUPS:
        raise UPSError(f"unknown problem '{problem}' (choose among {', '.join(SETUPS)})")
    setup = SETUPS[problem]
    if quick:
        setup = replace(setup, **QUICK, overrides=setup.overrides + QUICK_REFINER)
    if budget is not None:  # the corrector's and the distillation's shares of the default budget, unless given
        scale = budget / setup.budget_s
        corrector_s = setup.corrector_s * scale if corrector_s is None else corrector_s
        distill_s = setup.distill_s * scale if distill_s is None else distill_s
    given = {"budget_s": budget, "corrector_s": corrector_s, "distill_s": distill_s, "ttc_candidates": ttc,
             "own_part": own_part}
    setup = replace(setup, **{k: v for k, v in given.items() if v is not None},
                    overrides=setup.overrides + tuple(overrides or ()))
    if not 0 < setup.corrector_s < setup.budget_s:
        raise UPSError(f"corrector seconds {setup.corrector_s:g} must lie between 0 and the budget "
                       f"{setup.budget_s:g} (the operator trains for the rest)")
    return setup


def run(budget: float | None = None, quick: bool = False, problems: tuple[str, ...] = ("ks1d",),
        parallel: int | None = None, **kw) -> dict:
    """The corrector benchmark of each of ``problems`` (``budget``: each arm's total CPU seconds)."""
    par = (1 if quick else 2) if parallel is None else parallel
    out = {name: run_corrector(make_setup(name, quick=quick, budget=budget, **kw), quick=quick, parallel=par)
           for name in problems}
    return {"benchmark": "corrector", "problems": out}


def merge_into(path: Path, result: dict) -> dict:
    """``result``'s problems written into the JSON at ``path`` (its other problems kept), atomically."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    merged = {**result, "problems": {**old.get("problems", {}), **result["problems"]}}
    atomic_write_json(path, merged)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="ks1d", help=f"one of {', '.join(SETUPS)}")
    parser.add_argument("--budget", type=float, default=None, help="total training CPU seconds of each arm")
    parser.add_argument("--corrector-s", type=float, default=None, help="the corrector's share of the budget")
    parser.add_argument("--distill-s", type=float, default=None, help="distillation seconds (0: none)")
    parser.add_argument("--ttc", type=int, default=None, help="TTC candidates K (<= 1: no TTC)")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    parser.add_argument("--own-part", action="store_true", default=None,
                        help="also score the corrected arm's operator alone (its B - b seconds)")
    parser.add_argument("--parallel", type=int, default=None, help="arms trained at a time (1 or 2)")
    parser.add_argument("--out", type=Path, default=None, help="merge the result into this JSON file")
    parser.add_argument("--quick", action="store_true", help="tiny data and models, seconds")
    args = parser.parse_args(argv)
    try:
        result = run(args.budget, args.quick, problems=(args.problem,), parallel=args.parallel,
                     corrector_s=args.corrector_s, distill_s=args.distill_s, ttc=args.ttc, overrides=args.set,
                     own_part=args.own_part)
    except UPSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if args.out is not None:
        merge_into(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
