"""Forced diffusion with decay, a PDE with a non-trivial steady state (for the ``steady_prior`` stage).

    u_t = D u_xx - k u + f(x),   periodic on [0, L),   f(x) = A [sin(2 pi x / L) + 0.5 cos(6 pi x / L)]

Solved exactly in Fourier space: with ``u = sum_m c_m(t) exp(i kappa_m x)``, ``kappa_m = 2 pi m / L``,
``lambda_m = D kappa_m^2 + k`` and ``f_m`` the forcing's coefficients, every mode relaxes on its own::

    c_m(t) = s_m + (c_m(0) - s_m) exp(-lambda_m t),   s_m = f_m / lambda_m

The steady state is ``sum_m s_m exp(i kappa_m x)``; with ``k = 0`` the mean is conserved (``f`` has
none), so ``s_0 = c_0(0)`` and the steady state depends on the initial state through its mean. The
grid holds the modes ``|m| < X / 2`` exactly (``f`` needs X > 6), so the solution has no discretisation
error beyond rounding; the slowest mode decays at ``lambda_1`` (choose ``t_end`` a few times
``1 / lambda_1`` for data whose last frame is steady).
Initial condition: a random mean U(-1, 1) plus 4 sines with wavenumbers drawn from 1..4, amplitudes
U(0, 1) and phases U(0, 2 pi).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ups.data.pdes import PDES
from ups.data.pdes.base import PDE, Grid1D, Params1D
from ups.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ForcedDiffusionParams(Params1D):
    """Diffusivity ``D``, decay rate ``k``, forcing amplitude ``forcing_amp`` and the output grid."""

    frames: int = 101
    t_end: float = 5.0
    D: float = 0.05
    k: float = 0.0
    forcing_amp: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.D) and self.D > 0):
            raise ConfigError(f"D={self.D}: the diffusivity must be a positive number")
        if not (math.isfinite(self.k) and self.k >= 0):
            raise ConfigError(f"k={self.k}: the decay rate must be >= 0")
        if not math.isfinite(self.forcing_amp):
            raise ConfigError(f"forcing_amp={self.forcing_amp}: must be a finite number")
        if self.resolution <= 6:
            raise ConfigError(f"resolution={self.resolution}: forced diffusion needs more than 6 cells (mode 3)")


@PDES.register("forced_diffusion")
class ForcedDiffusion(PDE):
    """``u_t = D u_xx - k u + f(x)``, periodic, exact Fourier solution (see the module docstring)."""

    name = "forced_diffusion"
    param_names = ("D", "k", "forcing_amp")
    params_class = ForcedDiffusionParams

    @staticmethod
    def forcing(params: ForcedDiffusionParams) -> torch.Tensor:
        """f at the cell centres.  # [X] float64"""
        th = 2.0 * math.pi * params.x / params.length
        return params.forcing_amp * (torch.sin(th) + 0.5 * torch.cos(3.0 * th))

    def sample_initial(self, n: int, *, generator: torch.Generator, grid: Grid1D) -> torch.Tensor:
        """``n`` random initial conditions at ``grid``'s cell centres.  # -> [n, X] float64"""
        th = 2.0 * math.pi * grid.x / grid.length  # [X]
        modes = torch.randint(1, 5, (n, 4), generator=generator).double()
        amp = torch.rand(n, 4, generator=generator, dtype=torch.float64)
        phase = 2.0 * math.pi * torch.rand(n, 4, generator=generator, dtype=torch.float64)
        mean = 2.0 * torch.rand(n, 1, generator=generator, dtype=torch.float64) - 1.0
        return mean + (amp[..., None] * torch.sin(modes[..., None] * th + phase[..., None])).sum(1)

    @staticmethod
    def _rates(params: ForcedDiffusionParams) -> torch.Tensor:
        """lambda_m for the rfft modes m = 0 .. X // 2.  # [X // 2 + 1] float64"""
        m = torch.arange(params.resolution // 2 + 1, dtype=torch.float64)
        return params.D * (2.0 * math.pi * m / params.length) ** 2 + params.k

    def _steady_coefficients(self, c0: torch.Tensor, params: ForcedDiffusionParams) -> torch.Tensor:
        """Steady rfft coefficients given the initial ones c0 [B, K] (mode 0 from c0 when k = 0)."""
        lam = self._rates(params)
        f_hat = torch.fft.rfft(self.forcing(params))
        s = torch.zeros_like(c0) + f_hat / torch.where(lam > 0, lam, torch.ones_like(lam))
        if params.k == 0:
            s[:, 0] = c0[:, 0]
        return s

    def solve(self, u0: torch.Tensor, *, params: ForcedDiffusionParams) -> torch.Tensor:
        """u0 [B, X] -> [B, T, X] float64 at ``params.t``; frame 0 is u0."""
        u0 = self.check_input(u0, params)
        c0 = torch.fft.rfft(u0, dim=-1)  # [B, K]
        s = self._steady_coefficients(c0, params)
        decay = torch.exp(-self._rates(params)[None, :] * params.t[:, None])  # [T, K]
        c = s[:, None, :] + (c0 - s)[:, None, :] * decay[None]  # [B, T, K]
        out = torch.fft.irfft(c, n=params.resolution, dim=-1)
        out[:, 0] = u0
        return out

    def steady_state(self, u0: torch.Tensor, *, params: ForcedDiffusionParams) -> torch.Tensor:
        """The exact steady state reached from u0 [B, X].  # -> [B, X] float64"""
        u0 = self.check_input(u0, params)
        c0 = torch.fft.rfft(u0, dim=-1)
        return torch.fft.irfft(self._steady_coefficients(c0, params), n=params.resolution, dim=-1)

    def solver_settings(self) -> dict:
        return {"method": "exact_fourier"}
