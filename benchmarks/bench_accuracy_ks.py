"""Accuracy at equal compute on Kuramoto-Sivashinsky (L = 64, 256 points, dt = 0.2; issue 14's protocol at a
benchmark size that fits a 2-core machine): UPS, FNO and U-Net trained side by side for the same wall clock
on 256 training trajectories of 140 frames, scored on 32 test trajectories of 640 frames: rollout nRMSE and
the high-correlation time at 0.8 and 0.9, in steps and time units.

Usage: python benchmarks/bench_accuracy_ks.py [--budget SECONDS] [--parallel N] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_common import Problem  # noqa: E402
from bench_accuracy import cli, run_accuracy  # noqa: E402
from peers_common import ROOT  # noqa: E402

DATA = ROOT / "data" / "bench_ks1d"
KS = Problem(
    name="ks1d", ups="ks1d", peers={"fno": "fno_ks1d", "unet": "unet_ks1d"}, budget_s=300.0,
    data=tuple(f"data.{s}={DATA / f'{s}.h5'}" for s in ("train", "val", "test")) + (
        "data.generate.samples={train: 256, val: 8, test: 32}",
        "data.generate.frames={train: 140, val: 140, test: 640}", "data.max_samples={val: 8}"),
    quick_generate={"params": "{length: 64.0}", "resolution": 128, "frames": "{train: 8, val: 8, test: 12}",
                    "frame_dt": 0.2, "samples": "{train: 6, val: 2, test: 2}",
                    "seeds": "{train: 11, val: 12, test: 13}", "batch_size": 8},
)


def run(budget: float | None = None, quick: bool = False, budgets: list[float] | None = None,
        parallel: int | None = None, models: list[str] | None = None, reuse: dict | None = None,
        variants: dict[str, tuple[str, ...]] | None = None) -> dict:
    """UPS, FNO and U-Net on KS; ``budget`` seconds of training each (default 300, quick 2)."""
    return {"benchmark": "accuracy_ks", **run_accuracy(KS, budget=budget, quick=quick, budgets=budgets,
                                                       parallel=parallel, models=models, reuse=reuse,
                                                       variants=variants)}


if __name__ == "__main__":
    cli(run)
