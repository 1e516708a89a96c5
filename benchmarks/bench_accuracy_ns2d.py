"""Accuracy at equal compute on 2D incompressible Navier-Stokes (FNO paper convention, nu = 1e-3, 64 x 64,
one frame per time unit, rollout from frame 10 over frames 11 .. 50), at a benchmark size that fits a 2-core
machine: UPS, FNO-2D and U-Net-2D trained side by side for the same wall clock on 96 training trajectories,
scored on 16 test trajectories: rollout nRMSE and the FNO paper's relative L2, and (super-resolution) on the
first 4 of them generated at 128 x 128 (the same initial conditions: they are drawn block by block from one
generator), the models unchanged.

Usage: python benchmarks/bench_accuracy_ns2d.py [--budget SECONDS] [--parallel N] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_common import Problem  # noqa: E402
from bench_accuracy import cli, run_accuracy  # noqa: E402
from peers_common import ROOT, UPS_QUICK  # noqa: E402

DATA = ROOT / "data" / "bench_ns2d"
NS2D = Problem(
    name="ns2d", ups="ns2d", peers={"fno": "fno_ns2d", "unet": "unet2d_ns2d"}, budget_s=600.0,
    data=tuple(f"data.{s}={DATA / f'{s}.h5'}" for s in ("train", "val", "test")) + (
        "data.generate.samples={train: 96, val: 8, test: 16}", "data.max_samples={val: 8}",
        # a few hundred steps fit the budget: the configs' 100 warm-up steps would take a third of them
        "training.warmup_steps=20"),
    quick_generate={"params": "{nu: 0.001}", "resolution": 16, "frames": 7, "t_end": 6.0,
                    "samples": "{train: 6, val: 2, test: 2}", "seeds": "{train: 31, val: 32, test: 33}",
                    "batch_size": 8},
    quick_eval=("eval.rollout_start=2",),
    # the first 4 test trajectories at 128^2 (generating and scoring all 16 there takes longer than training)
    data_dir=DATA, superres={"resolution": 128, "solver": "{internal: 128}", "samples": "{test: 4}"},
    quick_superres={"resolution": 32, "solver": "{internal: 32}"},
    # issue 14's point-cloud check (--models ups,ups_points50): UPS trained on its own random half of the grid
    # points per sample, scored on the full grid like every model
    # FNO-2D at UPS's batch size (4; the peers' configs use 16), so that UPS's smaller batch is not an advantage
    # only UPS was offered
    variants={"ups_points50": ("data.point_subset={fraction: 0.5, min_points: 64}",),
              "fno_b4": ("data.batch_size=4",)},
    variant_of={"fno_b4": "fno"},
    quick_models={"upt": {**UPS_QUICK, "num_supernodes": 16}, "fno": {"n_modes": 4, "hidden_channels": 8,
                                                                       "n_layers": 2}},
)


def run(budget: float | None = None, quick: bool = False, budgets: list[float] | None = None,
        parallel: int | None = None, models: list[str] | None = None, reuse: dict | None = None,
        variants: dict[str, tuple[str, ...]] | None = None) -> dict:
    """UPS, FNO-2D and U-Net-2D on Navier-Stokes; ``budget`` seconds of training each (default 600, quick 2)."""
    return {"benchmark": "accuracy_ns2d", **run_accuracy(NS2D, budget=budget, quick=quick, budgets=budgets,
                                                         parallel=parallel, models=models, reuse=reuse,
                                                         variants=variants)}


if __name__ == "__main__":
    cli(run)
