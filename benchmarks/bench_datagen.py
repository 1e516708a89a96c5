"""Data-generation throughput: Burgers nu = 0.01, 1024 cells, 201 frames to t = 2 (PDEBench's setting).

Generates a few batches end to end with :func:`ups.data.generate.generate_dataset` (initial conditions,
solver, float32 HDF5 write) and extrapolates the time for 1,000 samples. Target: under 600 s on 2 cores.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from ups.data.generate import generate_dataset
from ups.data.pdes import PDES

FULL = {"params": {"nu": 0.01}, "resolution": 1024, "frames": 201, "t_end": 2.0, "batch_size": 64, "batches": 3}
QUICK = {"params": {"nu": 0.1}, "resolution": 64, "frames": 6, "t_end": 0.1, "batch_size": 2, "batches": 1}
TARGET_SECONDS_1000 = 600.0


def run(budget: float | None = None, quick: bool = False) -> dict:
    """Time ``batches`` batches (fewer if ``budget`` seconds run out; always at least one)."""
    cfg = QUICK if quick else FULL
    elapsed, samples = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(cfg["batches"]):
            t0 = time.perf_counter()
            generate_dataset(pde="burgers1d", params=cfg["params"], samples=cfg["batch_size"], seed=i,
                             out=Path(tmp) / f"batch{i}.hdf5", resolution=cfg["resolution"], frames=cfg["frames"],
                             t_end=cfg["t_end"], batch_size=cfg["batch_size"], progress=False)
            elapsed += time.perf_counter() - t0
            samples += cfg["batch_size"]
            if budget is not None and elapsed * (i + 2) / (i + 1) > budget:
                break
    rate = samples / elapsed
    return {
        "pde": "burgers1d",
        **{k: cfg[k] for k in ("params", "resolution", "frames", "t_end", "batch_size")},
        "quick": quick,
        "samples": samples,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(rate, 4),
        "seconds_for_1000": round(1000 / rate, 1),
        "target_seconds_for_1000": TARGET_SECONDS_1000,
        "meets_target": bool(1000 / rate < TARGET_SECONDS_1000),
        "solver": PDES.get("burgers1d")().solver_settings(),
        "torch_threads": torch.get_num_threads(),  # the solver itself runs on solver["threads"] threads
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch_version": torch.__version__,
    }
