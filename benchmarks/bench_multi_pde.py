"""One model across PDEs against one model per PDE, at equal total compute (issue 14).

The mixture of ``configs/multi1d.yaml`` (Burgers, Kuramoto-Sivashinsky, diffusion-reaction; 1D, 256 points
each): one UPS model per PDE, trained on that PDE's member files alone for ``B`` CPU seconds, and one UPS
model trained on the mixture of all of them for ``M x B`` seconds (M = 3 members), so both sides spend the
same total compute. Every model trains on one thread in a spawned worker process, ``--parallel`` at a time,
by the benchmarks' trainer (``peers_common.train_for_budget``), and is scored per PDE on the same test
trajectories by the scorer of ``ups eval`` (``peers_common.evaluate``; the mixture per member, with that
member's own metadata, as ``ups eval`` scores a mixture run).

A single-PDE model is the mixture's model and training config on the member's data section (the mixture's
batch size), with two differences that the mixture's input forces: it sees its PDE's parameters through
``param_transform: log`` (the same log(value) the mixture feeds, without the one-hot identity), and its own
physical coordinates. Neither side clamps rollouts to the initial range (the mixture has no maximum
principle, so the single models are denied it too). Per PDE the result holds the test rollout nRMSE (and
how many rollouts diverged, with the nRMSE of the others), the one-step nRMSE, persistence, the
high-correlation time at 0.8 in steps, and each model's training steps and CPU seconds.

Usage: python benchmarks/bench_multi_pde.py [--budget B] [--parallel N] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from accuracy_common import side_by_side  # noqa: E402
from bench_accuracy import default_parallel  # noqa: E402
from peers_common import ROOT, Bench, evaluate, load_bench_config, n_params, scored_model, train_for_budget  # noqa: E402

from ups.config import SPLITS, ExperimentConfig  # noqa: E402
from ups.errors import UPSError  # noqa: E402
from ups.io_utils import atomic_write_json  # noqa: E402
from ups.models.persistence import Persistence  # noqa: E402

CONFIG, QUICK_CONFIG = "multi1d", "multi1d_quick"
MIXTURE = "mixture"  # the result key of the model trained on every member
DEFAULT_BUDGET_S, QUICK_BUDGET_S = 150.0, 1.0
QUICK_EXTRA = ["data.batch_size=4", "eval.batch_size=4", "training.health_every=1000"]
SHARED_DATA = ("batch_size", "num_workers", "early_oversample", "early_frames", "point_subset")


def _place(path: str | list[str], folder: Path | None, pde: str, split: str) -> str | list[str]:
    """A member's file: under ``folder/PDE/`` (quick mode), else relative paths from the repository root."""
    if folder is not None:
        return str(folder / pde / f"{split}.h5")
    if isinstance(path, list):
        return [_place(p, None, pde, split) for p in path]
    return path if Path(path).is_absolute() else str(ROOT / path)


def mixture_config(*, quick: bool, work: Path) -> ExperimentConfig:
    """``configs/multi1d.yaml`` (quick: ``multi1d_quick.yaml`` with its files under ``work``)."""
    exp = load_bench_config(QUICK_CONFIG if quick else CONFIG, quick=False, work=work,
                            extra=QUICK_EXTRA if quick else [])
    d = exp.model_dump()
    for member in d["data"]["mixture"]["members"]:
        for split in SPLITS:
            if member.get(split):
                member[split] = _place(member[split], work / "data" if quick else None, member["pde"], split)
    return ExperimentConfig.model_validate(d)


def single_config(mix: ExperimentConfig, pde: str) -> ExperimentConfig:
    """The mixture's experiment on member ``pde``'s data alone (module docstring: what differs and why)."""
    d = mix.model_dump()
    members = {m["pde"]: m for m in d["data"]["mixture"]["members"]}
    if pde not in members:
        raise UPSError(f"'{pde}' is not a member of {mix.name} (members: {', '.join(members)})")
    d["data"] = {**members[pde], **{k: d["data"][k] for k in SHARED_DATA}}
    d["name"] = f"{mix.name}_{pde}"
    d["model"]["params"]["param_transform"] = "log"
    d["stages"]["operator"]["max_principle"] = False
    return ExperimentConfig.model_validate(d)


def members(mix: ExperimentConfig) -> list[str]:
    return [m.pde for m in mix.data.mixture.members]


def _pde_scores(metrics: dict) -> dict:
    """The per-PDE figures of one model from ``peers_common.evaluate``'s metrics."""
    return {"rollout_nrmse": metrics["nrmse"], "rollout_nrmse_finite": metrics["nrmse_finite"],
            "diverged": metrics["diverged"], "samples": metrics["samples"],
            "one_step_nrmse": metrics["nrmse_one_step"], "high_corr": metrics["high_corr"],
            "nrmse_per_step": metrics["nrmse_per_step"]}


def train_and_score(key: str, *, quick: bool, work: Path, budget: float, t0: float) -> dict:
    """Train model ``key`` (``mixture`` or one member's PDE) for ``budget`` CPU seconds on one thread and score
    it on each PDE it knows (runs in a worker process; ``t0``: the benchmark's start, for the schedule)."""
    torch.set_num_threads(1)
    started = time.time() - t0
    mix = mixture_config(quick=quick, work=work)
    exp = mix if key == MIXTURE else single_config(mix, key)
    bench = Bench.open(exp)
    run_dir = work / "runs" / f"{exp.name}_{budget:g}"
    _, summary = train_for_budget(bench, exp, "operator", run_dir, budget)
    model, rules, checkpoint = scored_model(run_dir, "operator")  # what ups eval scores, by its rules
    pdes = members(mix) if key == MIXTURE else [key]
    scores = {pde: _pde_scores(evaluate(model, bench, member=pde if key == MIXTURE else None, **rules))
              for pde in pdes}
    return {"config": exp.name, "params": n_params(model), "budget_s": budget, "steps": summary["step"],
            "epochs": summary["epochs"], "train_cpu_s": round(summary["cpu_s"], 2),
            "train_wall_s": round(summary["wall_s"], 2), "status": summary["status"],
            "ms_per_step": round(1e3 * summary["cpu_s"] / max(1, summary["step"]), 1), "rollout_rules": rules,
            "checkpoint": checkpoint, "per_pde": scores,
            "started_s": round(started, 1), "finished_s": round(time.time() - t0, 1)}


def data_summary(bench: Bench) -> dict:
    """Each member's data: parameters, points, train frames (after strides), frame step, trajectories per split."""
    out = {}
    for member in bench.exp.data.mixture.members:
        b = bench.bundle.members[member.pde]
        out[member.pde] = {"params": dict(member.generate.params) if member.generate else {},
                           "points": b.meta.n_points, "train_frames": b.meta.n_frames, "dt": b.meta.dt,
                           **{s: len(b.splits[s]) for s in SPLITS}}
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else None


def compare(models: dict, persistence: dict) -> dict:
    """Per PDE: the mixture's and the single model's scores, persistence, and mixture / single nRMSE."""
    out = {}
    for pde, pers in persistence.items():
        mixed, alone = models[MIXTURE]["per_pde"][pde], models[pde]["per_pde"][pde]
        out[pde] = {"mixture": mixed, "single": alone, "persistence": pers,
                    "ratio_mixture_over_single": _ratio(mixed["rollout_nrmse"], alone["rollout_nrmse"])}
    return out


def run(budget: float | None = None, quick: bool = False, parallel: int | None = None, **_ignored) -> dict:
    """Train and score the single-PDE models (``budget`` CPU seconds each; default 150, quick 1) and the
    mixture model (members x ``budget``)."""
    budget = float(budget if budget is not None else QUICK_BUDGET_S if quick else DEFAULT_BUDGET_S)
    if not budget > 0:
        raise UPSError(f"--budget must be a positive number of CPU seconds, got {budget:g}")
    parallel = default_parallel(quick) if parallel is None else int(parallel)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="ups-bench-multi-pde-") as tmp:
        work = Path(tmp)
        bench = Bench.open(mixture_config(quick=quick, work=work))  # generates missing files once, here
        pdes = members(bench.exp)
        jobs = {MIXTURE: {"key": MIXTURE, "budget": len(pdes) * budget}}  # first: alongside the singles
        jobs |= {pde: {"key": pde, "budget": budget} for pde in pdes}
        common = {"quick": quick, "work": work, "t0": t0}
        models = side_by_side(train_and_score, {k: {**kw, **common} for k, kw in jobs.items()}, parallel=parallel)
        persistence = {pde: _pde_scores(evaluate(Persistence(), bench, member=pde)) for pde in pdes}
        data = data_summary(bench)
    for pde in pdes:
        data[pde]["rollout_steps"] = len(persistence[pde]["nrmse_per_step"])
    return {"benchmark": "multi_pde", "quick": quick, "budget_s": budget, "mixture_budget_s": len(pdes) * budget,
            "threads_per_model": 1, "parallel": parallel, "config": bench.exp.name, "data": data,
            "models": models, "per_pde": compare(models, persistence), "wall_s": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=None, help="CPU seconds per single-PDE model (default 150)")
    parser.add_argument("--quick", action="store_true", help="tiny data and models, seconds")
    parser.add_argument("--parallel", type=int, default=None, help="models trained at a time (default: cores, <= 2)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (atomically)")
    args = parser.parse_args(argv)
    try:
        out = run(args.budget, args.quick, args.parallel)
    except UPSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out is not None:
        atomic_write_json(args.out, out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
