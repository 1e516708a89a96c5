"""Generate a trajectory data set with a registered PDE and write it in PDEBench's HDF5 layout.

File layout (see docs/ARCHITECTURE.md): dataset ``tensor`` float32 ``[N, T, X]``, ``x-coordinate`` ``[X]``,
``t-coordinate`` ``[T]``; attributes ``pde``, one per physical parameter (e.g. ``nu``), ``seed``,
``generator_version``, ``ups_version``, the grid (``resolution``, ``frames``, ``t_end``, ``dt``,
``length``) and the solver settings as ``solver_*``.

Reproducibility: one ``torch.Generator`` seeded with ``seed`` draws the initial conditions in blocks of
``IC_BLOCK`` samples, independently of ``batch_size``; the same call writes a byte-identical file.
The file is written beside ``out`` under a temporary name and renamed at the end, so an interrupted
or failed run never leaves a truncated file under the final name (an existing file stays intact).
"""

from __future__ import annotations

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
        self.buffer = torch.empty(0, grid.resolution, dtype=torch.float64)

    def take(self, k: int) -> torch.Tensor:
        """The next ``k`` initial conditions.  # -> [k, X] float64"""
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
    attrs.update(resolution=p.resolution, frames=p.frames, t_end=p.t_end, dt=p.dt, length=p.length)
    attrs.update({f"solver_{k}": v for k, v in pde.solver_settings().items()})
    return attrs


def _write(tmp: Path, *, pde: PDE, p, samples: int, seed: int, batch_size: int, progress: bool) -> None:
    stream = _InitialStream(pde, grid=p.grid, generator=torch.Generator().manual_seed(int(seed)))
    shape = (samples, p.frames, p.resolution)
    with h5py.File(tmp, "w", track_order=True) as f:
        ds = f.create_dataset("tensor", shape=shape, dtype="float32", chunks=(1, p.frames, p.resolution),
                              track_times=False)
        f.create_dataset("x-coordinate", data=p.x.numpy().astype(np.float32), track_times=False)
        f.create_dataset("t-coordinate", data=p.t.numpy().astype(np.float32), track_times=False)
        for key, value in file_attributes(pde, p, seed).items():
            f.attrs[key] = value
        with tqdm(total=samples, unit="sample", disable=not progress, desc=f"{pde.name}") as bar:
            for start in range(0, samples, batch_size):
                u0 = stream.take(min(batch_size, samples - start))
                u = pde.solve(u0, params=p)
                bad = (~torch.isfinite(u)).flatten(1).any(dim=1).nonzero()
                if len(bad):
                    raise DataError(
                        f"the solver produced NaN/inf for sample {start + int(bad[0])}: lower the solver cfl"
                    )
                ds[start : start + u.shape[0]] = u.to(torch.float32).numpy()
                bar.update(u.shape[0])


def generate_dataset(
    *,
    pde: str,
    params: dict,
    samples: int,
    seed: int,
    out: str | Path,
    resolution: int = 1024,
    frames: int = 201,
    t_end: float = 2.0,
    batch_size: int = 64,
    progress: bool = True,
    solver: dict | None = None,
) -> Path:
    """Solve ``samples`` trajectories of ``pde`` and write them to ``out`` (PDEBench layout); returns ``out``.

    params: the PDE's physical parameters (e.g. ``{"nu": 0.01}``; missing ones take their defaults);
    solver: keyword arguments of the PDE class (e.g. ``{"cfl": 0.5}``).
    """
    out = Path(out)
    model = PDES.get(pde)(**(solver or {}))
    _check_request(model, params, samples, batch_size)
    p = model.make_params(**params, resolution=resolution, frames=frames, t_end=t_end)
    check_free_disk(out.parent, samples * p.frames * p.resolution * 4 + (1 << 20), f"{pde} data set")
    with atomic_path(out) as tmp:
        _write(tmp, pde=model, p=p, samples=samples, seed=seed, batch_size=batch_size, progress=progress)
    return out
