"""Data-generation throughput per PDE, end to end (initial conditions, solver, float32 HDF5 write).

Each PDE is timed on a few batches with :func:`ups.data.generate.generate_dataset` at its benchmark
setting (one solver thread):

- burgers1d: nu = 0.01, 1024 cells, 201 frames to t = 2 (PDEBench's setting); the top-level keys of
  the result keep this case (target: 1,000 samples in under 600 s on 2 cores);
- ks1d: L = 64, 256 points, a 640-frame test trajectory (dt = 0.2) after the 100-time-unit burn-in;
- diffusion_reaction1d: nu = 0.5, rho = 1, 1024 cells, 201 frames on [0, 1];
- ns2d: nu = 1e-3, 64 x 64, 51 frames (t = 0 .. 50), internal grid 64.

``pdes`` holds, per PDE, samples/s and the extrapolated seconds per 1,000 trajectories.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from ups.data.generate import generate_dataset
from ups.data.pdes import PDES

FULL = {
    "burgers1d": {"params": {"nu": 0.01}, "resolution": 1024, "frames": 201, "t_end": 2.0, "batch_size": 64,
                  "batches": 3},
    "ks1d": {"params": {"length": 64.0}, "resolution": 256, "frames": 640, "t_end": 127.8, "batch_size": 16,
             "batches": 1},
    "diffusion_reaction1d": {"params": {"nu": 0.5, "rho": 1.0}, "resolution": 1024, "frames": 201, "t_end": 1.0,
                             "batch_size": 64, "batches": 1},
    "ns2d": {"params": {"nu": 1e-3}, "resolution": 64, "frames": 51, "t_end": 50.0, "batch_size": 8, "batches": 1},
}
QUICK = {
    "burgers1d": {"params": {"nu": 0.1}, "resolution": 64, "frames": 6, "t_end": 0.1, "batch_size": 2, "batches": 1},
    "ks1d": {"params": {"length": 64.0}, "resolution": 64, "frames": 6, "t_end": 1.0, "batch_size": 2,
             "batches": 1, "solver": {"steps_per_frame": 2}},
    "diffusion_reaction1d": {"params": {"nu": 0.5, "rho": 1.0}, "resolution": 64, "frames": 6, "t_end": 0.1,
                             "batch_size": 2, "batches": 1},
    "ns2d": {"params": {"nu": 1e-3}, "resolution": 16, "frames": 3, "t_end": 2.0, "batch_size": 2, "batches": 1},
}
TARGET_SECONDS_1000 = 600.0
KEYS = ("params", "resolution", "frames", "t_end", "batch_size")


def _time_pde(pde: str, settings: dict, budget: float | None, tmp: Path) -> dict:
    """Time ``batches`` batches of ``pde`` (fewer if ``budget`` seconds run out; always at least one)."""
    elapsed, samples = 0.0, 0
    for i in range(settings["batches"]):
        t0 = time.perf_counter()
        generate_dataset(pde=pde, params=settings["params"], samples=settings["batch_size"], seed=i,
                         out=tmp / f"{pde}{i}.hdf5", resolution=settings["resolution"], frames=settings["frames"],
                         t_end=settings["t_end"], batch_size=settings["batch_size"], progress=False,
                         solver=settings.get("solver"))
        elapsed += time.perf_counter() - t0
        samples += settings["batch_size"]
        if budget is not None and elapsed * (i + 2) / (i + 1) > budget:
            break
    rate = samples / elapsed
    return {**{k: settings[k] for k in KEYS}, "samples": samples, "seconds": round(elapsed, 3),
            "samples_per_s": round(rate, 4), "seconds_for_1000": round(1000 / rate, 1),
            "solver": PDES.get(pde)(**settings.get("solver", {})).solver_settings()}


def run(budget: float | None = None, quick: bool = False) -> dict:
    """Every PDE of FULL (or QUICK), sharing ``budget`` seconds equally."""
    table = QUICK if quick else FULL
    share = None if budget is None else budget / len(table)
    with tempfile.TemporaryDirectory() as tmp:
        pdes = {pde: _time_pde(pde, settings, share, Path(tmp)) for pde, settings in table.items()}
    burgers = pdes["burgers1d"]
    return {
        "pde": "burgers1d",
        **{k: burgers[k] for k in (*KEYS, "samples", "seconds", "samples_per_s", "seconds_for_1000", "solver")},
        "quick": quick,
        "target_seconds_for_1000": TARGET_SECONDS_1000,
        "meets_target": bool(burgers["seconds_for_1000"] < TARGET_SECONDS_1000),
        "pdes": pdes,
        "torch_threads": torch.get_num_threads(),  # each solver runs on its own solver["threads"] threads
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch_version": torch.__version__,
    }
