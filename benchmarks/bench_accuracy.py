"""Accuracy at equal compute: UPS, FNO and U-Net trained on the same Burgers nu=0.01 data for the same
wall-clock budget, then evaluated on the same test split (rollout from frame 0 over all frames).

Usage: python benchmarks/bench_accuracy.py [--budget SECONDS] [--quick]   (prints one JSON object)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from ups.config import ExperimentConfig
from ups.errors import UPSError
from ups.models.persistence import Persistence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers_common import (  # noqa: E402
    DEFAULT_BUDGET_S,
    QUICK_BUDGET_S,
    Bench,
    evaluate,
    load_bench_config,
    n_params,
    same_data,
    stage_model,
    train_for_budget,
    ups_config,
)


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


PEERS = {"fno": ("fno_burgers1d", "baseline"), "unet": ("unet_burgers1d", "baseline")}


def _scores(model: torch.nn.Module, bench: Bench, rules: dict) -> dict:
    """Test rollouts from frame 0 (the headline), from frame 10, and at every cell of the data (1,024 points
    on Burgers) without retraining, where the model runs at another resolution (UPS, FNO; not the U-Net)."""
    head = evaluate(model, bench, **rules)
    out = {"rollout_nrmse": head["nrmse"], "one_step_nrmse": head["nrmse_one_step"], "corr_time": head["corr_time"],
           "valid_time": head["valid_time"], "nrmse_per_step": head["nrmse_per_step"]}
    frames = bench.meta.n_frames
    out["rollout_nrmse_from_10"] = evaluate(model, bench, start=10, **rules)["nrmse"] if frames > 12 else None
    try:
        full = evaluate(model, bench, spatial_stride=1, **rules)
        out["rollout_nrmse_full_resolution"] = full["nrmse"]
    except UPSError as err:  # a grid model bound to its training grid
        out["rollout_nrmse_full_resolution"] = None
        out["full_resolution_error"] = str(err)
    return out


def _train_and_score(bench: Bench, cfg: ExperimentConfig, stage: str, work: Path, budget: float) -> dict:
    same_data(bench.cfg, cfg)
    trained, summary = train_for_budget(bench, cfg, stage, work / "runs" / f"{cfg.name}_{budget:g}", budget)
    model = stage_model(trained)
    info = trained.checkpoint_meta()  # the rollout rules ups eval reads from the checkpoint
    rules = {"mode": info.get("rollout_mode", "reencode"), "max_principle": bool(info.get("max_principle", False))}
    return {"model": cfg.model.name, "params": n_params(model), "steps": summary["step"],
            "epochs": summary["epochs"], "train_wall_s": round(summary["wall_s"], 2),
            "ms_per_step": round(1e3 * summary["wall_s"] / max(1, summary["step"]), 1),
            "status": summary["status"], "best_val_rollout_nrmse": summary["best_metric"],
            **_scores(model, bench, rules)}


def _train_all(bench: Bench, work: Path, budget: float, quick: bool) -> dict:
    ups_cfg, ups_stage = ups_config(quick=quick, work=work)
    results = {"ups": _train_and_score(bench, ups_cfg, ups_stage, work, budget)}
    for name, (config, stage) in PEERS.items():
        cfg = load_bench_config(config, quick=quick, work=work)
        results[name] = _train_and_score(bench, cfg, stage, work, budget)
    return results


def run(budget: float | None = None, quick: bool = False, budgets: list[float] | None = None) -> dict:
    """Train and score every model; ``budget`` seconds of training each (default 900, quick 2). ``budgets``:
    also train every model at each of these budgets (the budget curve: how the error falls with compute)."""
    torch.set_num_threads(1)  # two threads on a shared 2-core machine spin against each other
    budget = float(budget if budget is not None else (QUICK_BUDGET_S if quick else DEFAULT_BUDGET_S))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ups-bench-acc-") as tmp:
        work = Path(tmp)
        bench = Bench.open(load_bench_config("fno_burgers1d", quick=quick, work=work))
        by_budget = {budget: _train_all(bench, work, budget, quick)}
        for b in sorted({float(x) for x in budgets or []} - {budget}):
            by_budget[b] = _train_all(bench, work, b, quick)
        persistence = evaluate(Persistence(), bench)
    results = by_budget[budget]
    results["persistence"] = {"rollout_nrmse": persistence["nrmse"], "one_step_nrmse": persistence["nrmse_one_step"],
                              "corr_time": persistence["corr_time"], "params": 0}
    ratio = results["ups"]["rollout_nrmse"] / results["fno"]["rollout_nrmse"]
    curve = {name: {f"{b:g}": {k: res[name][k] for k in ("rollout_nrmse", "rollout_nrmse_from_10", "steps")}
                    for b, res in sorted(by_budget.items())} for name in by_budget[budget] if name != "persistence"}
    return {"benchmark": "accuracy", "quick": quick, "budget_s": budget, "data": _data_summary(bench),
            "models": results, "ratio_ups_over_fno_rollout_nrmse": ratio,
            "ups_beats_fno": ratio < 1.0, "budgets": sorted(by_budget), "budget_curve": curve,
            "threads": torch.get_num_threads(), "wall_s": round(time.perf_counter() - t0, 2)}


def _data_summary(bench: Bench) -> dict:
    m = bench.meta
    return {"pde": m.pde, "params": dict(bench.cfg.data.generate.params) if bench.cfg.data.generate else {},
            "points": m.n_points, "frames": m.n_frames, "dt": m.dt, "train": len(bench.train),
            "val": len(bench.val), "test": len(bench.test), "rollout_steps": m.n_frames - 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=None, help="training seconds per model (default 900)")
    parser.add_argument("--quick", action="store_true", help="tiny data and models, seconds")
    parser.add_argument("--budgets", type=parse_budgets, default=None,
                        help="comma-separated training budgets in seconds for the budget curve, e.g. 300,900,1800")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.budget, args.quick, args.budgets), indent=2))


if __name__ == "__main__":
    main()
