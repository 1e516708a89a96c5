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

PEERS = {"fno": ("fno_burgers1d", "baseline"), "unet": ("unet_burgers1d", "baseline")}


def _train_and_score(bench: Bench, cfg: ExperimentConfig, stage: str, work: Path, budget: float) -> dict:
    same_data(bench.cfg, cfg)
    trained, summary = train_for_budget(bench, cfg, stage, work / "runs" / cfg.name, budget)
    model = stage_model(trained)
    info = trained.checkpoint_meta()  # the rollout rules ups eval reads from the checkpoint
    metrics = evaluate(model, bench, mode=info.get("rollout_mode", "reencode"),
                       max_principle=bool(info.get("max_principle", False)))
    return {"model": cfg.model.name, "params": n_params(model), "steps": summary["step"],
            "epochs": summary["epochs"], "train_wall_s": round(summary["wall_s"], 2),
            "status": summary["status"], "best_val_rollout_nrmse": summary["best_metric"],
            "rollout_nrmse": metrics["nrmse"], "one_step_nrmse": metrics["nrmse_one_step"],
            "corr_time": metrics["corr_time"], "valid_time": metrics["valid_time"],
            "nrmse_per_step": metrics["nrmse_per_step"]}


def run(budget: float | None = None, quick: bool = False) -> dict:
    """Train and score every model; ``budget`` seconds of training each (default 900, quick 2)."""
    torch.set_num_threads(1)  # two threads on a shared 2-core machine spin against each other
    budget = float(budget if budget is not None else (QUICK_BUDGET_S if quick else DEFAULT_BUDGET_S))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ups-bench-acc-") as tmp:
        work = Path(tmp)
        bench = Bench.open(load_bench_config("fno_burgers1d", quick=quick, work=work))
        results = {}
        ups_cfg, ups_stage = ups_config(quick=quick, work=work)
        results["ups"] = _train_and_score(bench, ups_cfg, ups_stage, work, budget)
        for name, (config, stage) in PEERS.items():
            cfg = load_bench_config(config, quick=quick, work=work)
            results[name] = _train_and_score(bench, cfg, stage, work, budget)
        persistence = evaluate(Persistence(), bench)
    results["persistence"] = {"rollout_nrmse": persistence["nrmse"], "one_step_nrmse": persistence["nrmse_one_step"],
                              "corr_time": persistence["corr_time"], "params": 0}
    ratio = results["ups"]["rollout_nrmse"] / results["fno"]["rollout_nrmse"]
    return {"benchmark": "accuracy", "quick": quick, "budget_s": budget, "data": _data_summary(bench),
            "models": results, "ratio_ups_over_fno_rollout_nrmse": ratio,
            "ups_beats_fno": ratio < 1.0,
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
    args = parser.parse_args(argv)
    print(json.dumps(run(args.budget, args.quick), indent=2))


if __name__ == "__main__":
    main()
