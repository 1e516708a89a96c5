"""Generate a trajectory data set with a registered PDE and write it in PDEBench's HDF5 layout.

File layout (see docs/ARCHITECTURE.md): dataset ``tensor`` float32 ``[N, T, X]`` (1D) or
``[N, T, X, Y, 1]`` (2D), ``x-coordinate`` ``[X]`` (and ``y-coordinate`` ``[Y]``), ``t-coordinate``
``[T]``; attributes ``pde``, one per physical parameter (e.g. ``nu``), ``seed``, ``generator_version``,
``ups_version``, every other field of the PDE's parameter dataclass (``resolution``, ``frames``,
``t_end``, ``length``, e.g. ``burn_in``), ``dt`` and the solver settings as ``solver_*`` (with the
conventions: equation, initial condition, grid) (with, for adaptive solvers, the largest internal
grid and step count any batch used, e.g. ``solver_internal_resolution_max``).

Reproducibility: one ``torch.Generator`` seeded with ``seed`` draws the initial conditions in blocks of
``IC_BLOCK`` samples, independently of ``batch_size``; the same call writes a byte-identical file.
The file is written beside ``out`` under a temporary name and renamed at the end, so an interrupted
or failed run never leaves a truncated file under the final name (an existing file stays intact).
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ups import __version__
from ups.data.pdes import PDES
from ups.data.pdes.base import PDE, Grid1D
from ups.errors import ConfigError, DataError
from ups.io_utils import atomic_path, check_free_disk

GENERATOR_VERSION = "1"  # bump when the solver or the initial-condition stream changes
IC_BLOCK = 256  # initial conditions are drawn in blocks of this size, whatever the batch size


class _InitialStream:
    """Initial conditions drawn block by block from one generator; ``take(k)`` returns the next k."""

    def __init__(self, pde: PDE, *, grid: Grid1D, generator: torch.Generator):
        self.pde, self.grid, self.generator = pde, grid, generator
        self.buffer = torch.empty(0, *getattr(grid, "shape", (grid.resolution,)), dtype=torch.float64)

    def take(self, k: int) -> torch.Tensor:
        """The next ``k`` initial conditions.  # -> [k, *spatial] float64"""
        while self.buffer.shape[0] < k:
            block = self.pde.sample_initial(IC_BLOCK, generator=self.generator, grid=self.grid)
            self.buffer = torch.cat([self.buffer, block.to(torch.float64)])
        out, self.buffer = self.buffer[:k], self.buffer[k:]
        return out


def _check_request(pde: PDE, params: dict, samples: int, batch_size: int) -> None:
    unknown = sorted(set(params) - set(pde.param_names))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for pde '{pde.name}' "
            f"(allowed: {', '.join(pde.param_names) or 'none'})"
        )
    if samples < 1:
        raise ConfigError(f"samples={samples}: ask for at least one sample")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be at least 1")


def file_attributes(pde: PDE, p, seed: int) -> dict:
    """Attributes written to a generated file (parameters, seed, versions, grid, solver settings)."""
    attrs = {"pde": pde.name, "seed": int(seed), "generator_version": GENERATOR_VERSION, "ups_version": __version__}
    attrs.update(p.physical(pde.param_names))
    attrs.update({k: v for k, v in p.to_dict().items() if k not in attrs})
    attrs["dt"] = p.dt
    attrs.update({f"solver_{k}": v for k, v in pde.solver_settings().items()})
    return attrs


def _write(tmp: Path, *, pde: PDE, p, samples: int, seed: int, batch_size: int, progress: bool) -> None:
    stream = _InitialStream(pde, grid=p.grid, generator=torch.Generator().manual_seed(int(seed)))
    frame = tuple(p.spatial_shape) + ((1,) if len(p.spatial_shape) > 1 else ())  # 2D files carry C = 1
    with h5py.File(tmp, "w", track_order=True) as f:
        ds = f.create_dataset("tensor", shape=(samples, p.frames, *frame), dtype="float32",
                              chunks=(1, p.frames, *frame), track_times=False)
        for name, axis in p.coordinates().items():
            f.create_dataset(name, data=axis.numpy().astype(np.float32), track_times=False)
        f.create_dataset("t-coordinate", data=p.t.numpy().astype(np.float32), track_times=False)
        for key, value in file_attributes(pde, p, seed).items():
            f.attrs[key] = value
        run_stats: dict[str, float] = {}  # the largest internal grid / step count any batch used
        with tqdm(total=samples, unit="sample", disable=not progress, desc=f"{pde.name}") as bar:
            for start in range(0, samples, batch_size):
                u0 = stream.take(min(batch_size, samples - start))
                u = pde.solve(u0, params=p)
                bad = (~torch.isfinite(u)).flatten(1).any(dim=1).nonzero()
                if len(bad):
                    raise DataError(
                        f"the solver produced NaN/inf for sample {start + int(bad[0])}: lower the solver cfl"
                    )
                ds[start : start + u.shape[0]] = u.to(torch.float32).reshape(u.shape[0], p.frames, *frame).numpy()
                bar.update(u.shape[0])
                for key, value in getattr(pde, "last_run", {}).items():
                    run_stats[key] = max(run_stats.get(key, value), value)
        for key, value in run_stats.items():
            f.attrs[f"solver_{key}_max"] = value


def generate_dataset(
    *,
    pde: str,
    params: dict,
    samples: int,
    seed: int,
    out: str | Path,
    resolution: int | None = None,
    frames: int | None = None,
    t_end: float | None = None,
    batch_size: int = 64,
    progress: bool = True,
    solver: dict | None = None,
) -> Path:
    """Solve ``samples`` trajectories of ``pde`` and write them to ``out`` (PDEBench layout); returns ``out``.

    params: the PDE's physical parameters (e.g. ``{"nu": 0.01}``; missing ones take their defaults);
    solver: keyword arguments of the PDE class (e.g. ``{"cfl": 0.5}``); resolution, frames, t_end: None
    keeps the PDE's defaults (burgers1d: 1024 cells, 201 frames, t_end 2; ks1d: 256, 140, 27.8; ...).
    """
    out = Path(out)
    model = PDES.get(pde)(**(solver or {}))
    _check_request(model, params, samples, batch_size)
    grid = {k: v for k, v in (("resolution", resolution), ("frames", frames), ("t_end", t_end)) if v is not None}
    p = model.make_params(**params, **grid)
    points = math.prod(p.spatial_shape)
    check_free_disk(out.parent, samples * p.frames * points * 4 + (1 << 20), f"{pde} data set")
    with atomic_path(out) as tmp:
        _write(tmp, pde=model, p=p, samples=samples, seed=seed, batch_size=batch_size, progress=progress)
    return out
