"""Linear advection ``u_t + beta u_x = 0`` on the periodic domain ``[0, L)``, solved exactly.

The solution is the shifted initial condition ``u(x, t) = u0(x - beta t)``. We shift the band-limited
(trigonometric) interpolant of ``u0``: each Fourier coefficient is multiplied by
``exp(-2 pi i m beta t / L)``, which is exact for any shift, not only whole cells. Frame 0 is ``u0``; the
later frames are the L2 projection onto the modes ``|m| < X / 2`` (the Nyquist mode of a grid function
has no unique shift). Initial conditions: PDEBench's sine sums (its advection data use the same sampler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ups.data.pdes import PDES
from ups.data.pdes.base import PDE, Grid1D, Params1D
from ups.data.pdes.initial_conditions import sample_pdebench_sines
from ups.data.pdes.spectral import coefficients, evaluate
from ups.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class AdvectionParams(Params1D):
    """Advection speed ``beta`` (PDEBench uses 0.1 .. 7.0)."""

    beta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.beta):
            raise ConfigError(f"beta={self.beta}: the advection speed must be a finite number")


@PDES.register("advection1d")
class Advection1D(PDE):
    """1D periodic linear advection with its exact (spectral shift) solution."""

    name = "advection1d"
    param_names = ("beta",)
    params_class = AdvectionParams
    maximum_principle = True  # min u0 <= u(t) <= max u0 for all t

    def sample_initial(self, n: int, *, generator: torch.Generator, grid: Grid1D) -> torch.Tensor:
        """PDEBench sine-sum initial conditions on the cell centres of ``grid``.  # -> [n, X] float64"""
        return sample_pdebench_sines(n, generator=generator, x=grid.x, length=grid.length)

    def solver_settings(self) -> dict:
        return {"scheme": "exact solution: Fourier shift of the band-limited initial condition"}

    def solve(self, u0: torch.Tensor, *, params: AdvectionParams) -> torch.Tensor:
        """Shift ``u0 [B, X]`` by ``beta t`` for every saved time.  # -> [B, T, X] float64"""
        u0 = self.check_input(u0, params)
        c = coefficients(u0)  # [B, K]
        m = torch.arange(c.shape[-1], dtype=torch.float64)
        out = torch.empty(u0.shape[0], params.frames, params.resolution, dtype=torch.float64)
        out[:, 0] = u0
        for frame, t in enumerate(params.t.tolist()[1:], start=1):
            shift = torch.polar(torch.ones_like(m), -2.0 * math.pi * m * params.beta * t / params.length)
            out[:, frame] = evaluate(c * shift, params.resolution)
        return out
