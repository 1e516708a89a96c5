"""Accuracy at equal compute on 1D diffusion-reaction (PDEBench convention: u_t = nu u_xx + rho u (1 - u),
nu = 0.5, rho = 1, every 4th of 1024 cells, every 5th of 201 frames on [0, 1]; issue 14): UPS, FNO and
U-Net trained side by side for the same CPU seconds on 256 training trajectories, scored on 32 test
trajectories: rollout nRMSE from frame 0 over 40 steps, from frame 10, and at every cell.

Usage: python benchmarks/bench_accuracy_dr1d.py [--budget SECONDS] [--parallel N] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_common import Problem  # noqa: E402
from bench_accuracy import cli, run_accuracy  # noqa: E402
from peers_common import ROOT  # noqa: E402

DATA = ROOT / "data" / "bench_dr1d"
DR1D = Problem(
    name="dr1d", ups="diffusion_reaction1d",
    peers={"fno": "fno_diffusion_reaction1d", "unet": "unet_diffusion_reaction1d"}, budget_s=150.0,
    data=tuple(f"data.{s}={DATA / f'{s}.h5'}" for s in ("train", "val", "test")) + (
        "data.generate.samples={train: 256, val: 8, test: 32}", "data.max_samples={val: 8}"),
    quick_generate={"params": "{nu: 0.5, rho: 1.0}", "resolution": 64, "frames": 21, "t_end": 1.0,
                    "samples": "{train: 6, val: 2, test: 2}", "seeds": "{train: 21, val: 22, test: 23}"},
)


def run(budget: float | None = None, quick: bool = False, budgets: list[float] | None = None,
        parallel: int | None = None, models: list[str] | None = None, reuse: dict | None = None,
        variants: dict[str, tuple[str, ...]] | None = None) -> dict:
    """UPS, FNO and U-Net on diffusion-reaction; ``budget`` seconds of training each (default 150, quick 2)."""
    return {"benchmark": "accuracy_dr1d", **run_accuracy(DR1D, budget=budget, quick=quick, budgets=budgets,
                                                         parallel=parallel, models=models, reuse=reuse,
                                                         variants=variants)}


if __name__ == "__main__":
    cli(run)
