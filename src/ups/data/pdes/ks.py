"""Kuramoto-Sivashinsky, the chaotic long-rollout benchmark (PDE-Refiner's setting), ETDRK4 with 2/3 dealiasing.

Conventions (written to every generated file as ``solver_*`` attributes):

- Equation: ``u_t + u u_x + u_xx + u_xxxx = 0`` on the periodic domain ``[0, L)``; ``L = length`` is the
  PDE parameter (default 64; data sets sweep it in ``[0.9 * 64, 1.1 * 64]``).
- Output: 256 points at the cell centres ``x_j = (j + 1/2) L / 256`` (the package's convention; the
  equation and the initial-condition distribution are translation invariant, so the half-cell offset
  changes no statistic); frames every ``dt = 0.2``; train trajectories 140 frames (``t_end = 27.8``),
  test trajectories 640 frames (``t_end = 127.8``) -- the per-split frame counts live in the generate
  config.
- Initial state: ``u0(x) = sum_{j=1}^{10} A_j sin(2 pi l_j x / L + phi_j)`` with ``A_j ~ U(-0.5, 0.5)``,
  ``l_j`` uniform in ``{1, 2, 3}`` and ``phi_j ~ U(0, 2 pi)`` (a random smooth zero-mean field built
  from the lowest Fourier modes, as in the Lie-point-symmetry data generator that PDE-Refiner's KS data
  follow), integrated for ``burn_in = 100`` time units that are discarded: frame 0 of a trajectory is
  the state at ``t = burn_in`` (with ``burn_in = 0`` frame 0 is ``u0``).
- Method: Fourier-Galerkin with the 2/3 rule on an internal grid of ``N`` points (default the output
  grid, 256): the state holds the modes ``0 <= m <= (N - 1) // 3`` and ``u^2`` is formed on the N-point
  grid (alias-free). The stiff linear part ``k^2 - k^4`` is integrated exactly by ETDRK4 (Cox-Matthews,
  Kassam-Trefethen contour coefficients), the step is ``dt / steps_per_frame`` (default 0.025: halving
  it changes a 10-time-unit trajectory by 2.8e-7 relative L2; the burn-in is rounded to whole steps).
  The mean is the mode 0, untouched by the nonlinearity (its factor ``-i k / 2`` vanishes) and by ``L``:
  it is conserved exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ups.data.pdes import PDES
from ups.data.pdes.base import PDE, Grid1D, Params1D, check_threads, torch_threads
from ups.data.pdes.spectral import QuadraticETDRK4, coefficients, evaluate, fft_size
from ups.errors import ConfigError

KS_TERMS = 10  # sines in the initial condition
KS_MODES = (1, 2, 3)  # their wavenumbers l (in units of 2 pi / L)


@dataclass(frozen=True, kw_only=True)
class KSParams(Params1D):
    """Domain length ``length`` (= L), output grid, frame axis and the discarded burn-in."""

    resolution: int = 256
    frames: int = 140
    t_end: float = 27.8  # 139 intervals of dt = 0.2
    length: float = 64.0
    burn_in: float = 100.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.burn_in) and self.burn_in >= 0):
            raise ConfigError(f"burn_in={self.burn_in}: must be a non-negative number of time units")


def sample_ks_initial(n: int, *, generator: torch.Generator, x: torch.Tensor, length: float) -> torch.Tensor:
    """``n`` initial states ``sum_j A_j sin(2 pi l_j x / L + phi_j)`` at the points ``x [X]``.  # -> [n, X]"""
    f64 = {"dtype": torch.float64, "generator": generator}
    amp = torch.rand(n, KS_TERMS, **f64) - 0.5
    modes = torch.tensor(KS_MODES, dtype=torch.float64)[torch.randint(0, len(KS_MODES), (n, KS_TERMS),
                                                                      generator=generator)]
    phase = 2.0 * math.pi * torch.rand(n, KS_TERMS, **f64)
    arg = 2.0 * math.pi * modes[..., None] * x.to(torch.float64) / length + phase[..., None]
    return (amp[..., None] * torch.sin(arg)).sum(dim=1)


@PDES.register("ks1d")
class KuramotoSivashinsky1D(PDE):
    """``u_t + u u_x + u_xx + u_xxxx = 0``, periodic on ``[0, L)`` (conventions in the module docstring)."""

    name = "ks1d"
    param_names = ("length",)
    params_class = KSParams

    def __init__(self, *, steps_per_frame: int = 8, internal: int | None = None, contour_points: int = 64,
                 threads: int | None = 1):
        if steps_per_frame < 1:
            raise ConfigError(f"steps_per_frame={steps_per_frame}: must be at least 1")
        if internal is not None and internal < 8:
            raise ConfigError(f"internal={internal}: the internal grid needs at least 8 points")
        check_threads(threads)
        self.steps_per_frame = steps_per_frame
        self.internal = internal
        self.contour_points = contour_points
        self.threads = threads
        self.last_run: dict = {}

    def sample_initial(self, n: int, *, generator: torch.Generator, grid: Grid1D) -> torch.Tensor:
        """Random sums of the lowest sines (module docstring) at ``grid``'s cell centres.  # -> [n, X]"""
        return sample_ks_initial(n, generator=generator, x=grid.x, length=grid.length)

    def solver_settings(self) -> dict:
        return {
            "equation": "u_t + u u_x + u_xx + u_xxxx = 0, periodic on [0, length)",
            "initial_condition": "sum_{j=1..10} A_j sin(2 pi l_j x / L + phi_j), A~U(-0.5,0.5), l in {1,2,3}, "
                                 "phi~U(0,2pi); then burn_in time units discarded",
            "grid": "cell centres (j + 1/2) L / resolution",
            "scheme": "Fourier-Galerkin, 2/3 dealiasing, ETDRK4 (Kassam-Trefethen)",
            "steps_per_frame": self.steps_per_frame,
            "internal": self.internal or 0,
            "threads": self.threads or 0,
        }

    def _stepper(self, params: KSParams, n: int, h: float) -> QuadraticETDRK4:
        k_modes = (n - 1) // 3 + 1
        k = 2.0 * math.pi / params.length * torch.arange(k_modes, dtype=torch.float64)
        lin = (k**2 - k**4).to(torch.complex128)
        return QuadraticETDRK4(lin=lin, h=h, n=n, length=params.length, points=self.contour_points)

    def solve(self, u0: torch.Tensor, *, params: KSParams) -> torch.Tensor:
        """Burn in, then save ``params.frames`` frames from ``u0 [B, X]``.  # -> [B, T, X] float64"""
        u0 = self.check_input(u0, params)
        n = fft_size(max(self.internal or params.resolution, params.resolution))
        k_modes = (n - 1) // 3 + 1
        c0 = coefficients(u0)
        w = torch.zeros(u0.shape[0], k_modes, dtype=torch.complex128)
        keep = min(k_modes, c0.shape[-1])
        w[:, :keep] = c0[:, :keep]
        h = params.dt / self.steps_per_frame
        stepper = self._stepper(params, n, h)
        burn_steps = round(params.burn_in / h)
        out = torch.empty(u0.shape[0], params.frames, params.resolution, dtype=torch.float64)
        with torch_threads(self.threads):
            for _ in range(burn_steps):
                w = stepper.step(w)
            out[:, 0] = u0 if burn_steps == 0 else evaluate(w, params.resolution)
            for frame in range(1, params.frames):
                for _ in range(self.steps_per_frame):
                    w = stepper.step(w)
                out[:, frame] = evaluate(w, params.resolution)
        self.last_run = {"internal_resolution": n, "burn_in_steps": burn_steps}
        return out
