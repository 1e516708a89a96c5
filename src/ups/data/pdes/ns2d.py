"""2D incompressible Navier-Stokes in vorticity form, in the convention of the FNO paper (Li et al. 2021).

Conventions (written to every generated file as ``solver_*`` attributes):

- Equation: ``w_t + u . grad w = nu lap w + f`` on the unit torus, ``u = (psi_y, -psi_x)`` with
  ``-lap psi = w``; forcing ``f = 0.1 (sin(2 pi (x + y)) + cos(2 pi (x + y)))`` (amplitude
  ``forcing_amp``); ``nu = 1e-3`` by default (the paper also uses 1e-4 and 1e-5).
- Output: 64 x 64 points at the nodes ``(i / 64, j / 64)`` (the FNO generator's grid
  ``linspace(0, 1, s + 1)[:-1]``; not cell centres: the forcing is not translation invariant), one frame
  per time unit, 51 frames ``t = 0 .. 50`` (frame 0 is ``w0``). File layout ``[N, T, X, Y, 1]``.
- Initial vorticity ``w0 ~ N(0, C)``, ``C = s^2 (-lap + 49 I)^{-2.5}`` with zero mean. Facts of the FNO
  data generator (``data_generation/navier_stokes/random_fields.py`` and ``ns_2d.py`` of
  neuraloperator/neuraloperator): the field is sampled on a 256 x 256 grid as the real part of the
  inverse FFT of complex Gaussian coefficients (``E|xi|^2 = 1``) times
  ``256^2 sqrt(2) sigma (4 pi^2 |k|^2 + tau^2)^{-alpha / 2}``, ``alpha = 2.5``, ``tau = 7``,
  ``sigma = tau^{(2 alpha - 2) / 2} = 7^{3/2}``, the mode 0 removed, and the saved 64 x 64 data are the
  256-grid solution taken at every 4th node. The covariance of that field is ``sigma^2 (...)^{-2.5}
  = 7^3 (...)^{-2.5}``, while the paper writes ``7^{3/2} (...)^{-2.5}``: ``ic_convention="fno_code"``
  (default) reproduces the data the paper's results were measured on (``s^2 = 7^3``),
  ``ic_convention="paper"`` the formula as printed (``s^2 = 7^{3/2}``). Sampled as FNO does on
  ``ic_resolution = 256`` points per axis, taken at the output nodes.
- Method. FNO's generator uses Crank-Nicolson for the viscous term, forward Euler for the advection
  (computed pseudo-spectrally, 2/3-rule mask on the nonlinear term), ``delta_t = 1e-4`` on 256 x 256.
  We solve the same PDE to higher accuracy per unit cost: Fourier-Galerkin with the 2/3 rule on an
  internal ``internal x internal`` grid (default 64, a multiple of the output size; the state holds
  ``|k_x|, |k_y| <= (internal - 1) // 3``, the product ``u . grad w`` is alias-free), ETDRK4
  (Kassam-Trefethen coefficients) with the viscous term exact and the forcing in the explicit part.
  Step: per frame interval, ``h <= cfl / (2 pi K max(|u| + |v|))`` (``K`` the largest retained
  wavenumber), a whole number of steps per frame. Output: the internal solution at the output nodes
  (every ``internal / 64``-th node, as FNO subsamples its 256 grid).
- Convergence measured at nu = 1e-3, T = 50, 2 samples (relative L2 of the last frame against
  ``internal = 256``): internal 64: 2.4e-9, 128: 9.3e-11, 192: 1.4e-11; halving the step at 64
  changes it by 1.4e-9. Hence the default 64 for nu = 1e-3; smaller viscosities (1e-4, 1e-5) make
  finer scales and need a larger ``internal`` (check with the same comparison).
- Batched torch (float64) on CPU. Exactness: a single Laplacian shell (Taylor-Green vortex) has
  ``u . grad w = 0`` and decays as ``exp(-nu 4 pi^2 |k|^2 t)`` up to rounding; the mean vorticity is
  the mode 0, which neither the alias-free product nor the forcing changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ups.data.pdes import PDES
from ups.data.pdes.base import PDE, Grid2D, Params2D, check_threads, torch_threads
from ups.data.pdes.spectral import etdrk4_coefficients
from ups.errors import ConfigError

GRF_ALPHA, GRF_TAU = 2.5, 7.0
IC_CHUNK = 16  # initial conditions are sampled this many at a time (bounded memory at 256^2)


@dataclass(frozen=True, kw_only=True)
class NSParams(Params2D):
    """Viscosity ``nu``, forcing amplitude and the output grid (nodes of the unit torus)."""

    resolution: int = 64
    frames: int = 51
    t_end: float = 50.0
    nu: float = 1e-3
    forcing_amp: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.nu) and self.nu > 0):
            raise ConfigError(f"nu={self.nu}: the viscosity must be a positive number")
        if self.length != 1.0:
            raise ConfigError(f"length={self.length}: ns2d is defined on the unit torus (length 1)")
        if not math.isfinite(self.forcing_amp):
            raise ConfigError(f"forcing_amp={self.forcing_amp}: must be a finite number")


def wavenumbers(n: int, length: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular wavenumbers of ``rfft2`` on an ``n x n`` grid.  # -> kx [n, 1], ky [1, n // 2 + 1]"""
    scale = 2.0 * math.pi / length
    kx = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64) * scale
    ky = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64) * scale
    return kx[:, None], ky[None, :]


def sample_grf(n: int, *, generator: torch.Generator, size: int, sigma: float) -> torch.Tensor:
    """FNO's Gaussian random field (alpha 2.5, tau 7) on ``size x size`` nodes.  # -> [n, size, size] float64"""
    k = torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64)
    lam = 4.0 * math.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2) + GRF_TAU**2
    sqrt_eig = size**2 * math.sqrt(2.0) * sigma * lam ** (-GRF_ALPHA / 2.0)
    sqrt_eig[0, 0] = 0.0
    xi = torch.randn(n, size, size, dtype=torch.complex128, generator=generator)  # E|xi|^2 = 1
    return torch.fft.ifft2(sqrt_eig * xi).real


class _VorticityETDRK4:
    """ETDRK4 for ``w_hat [B, N, N//2+1]`` (coefficients, ``w = sum w_hat e^{ik.x}``) on one internal grid."""

    def __init__(self, *, params: NSParams, n: int, h: float, points: int):
        self.n = n
        kx, ky = wavenumbers(n, params.length)
        limit = 2.0 * math.pi / params.length * ((n - 1) // 3)
        self.mask = ((kx.abs() <= limit + 1e-9) & (ky.abs() <= limit + 1e-9)).to(torch.float64)
        k2 = kx**2 + ky**2
        self.ikx, self.iky = 1j * kx, 1j * ky
        self.inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, 1.0), 0.0)
        nodes = torch.arange(n, dtype=torch.float64) * params.length / n
        s = 2.0 * math.pi * (nodes[:, None] + nodes[None, :]) / params.length
        force = params.forcing_amp * (torch.sin(s) + torch.cos(s))
        self.f_hat = torch.fft.rfft2(force) / n**2 * self.mask
        co = etdrk4_coefficients(-params.nu * k2 * h, h, points=points)
        self.E, self.E2, self.Q, self.f1, self.f2, self.f3 = (co[k] for k in ("E", "E2", "Q", "f1", "f2", "f3"))

    def physical(self, c: torch.Tensor) -> torch.Tensor:
        """Coefficients to values on the internal nodes.  # [B, N, N//2+1] -> [B, N, N]"""
        return torch.fft.irfft2(c, s=(self.n, self.n)) * self.n**2

    def velocity(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, v) = (psi_y, -psi_x)`` on the internal nodes.  # [B, N, N//2+1] -> 2 x [B, N, N]"""
        psi = w * self.inv_k2
        return self.physical(self.iky * psi), self.physical(-self.ikx * psi)

    def rhs(self, w: torch.Tensor) -> torch.Tensor:
        """Explicit part ``-P(u . grad w) + f``, alias-free.  # [B, N, N//2+1] -> same"""
        u, v = self.velocity(w)
        adv = u * self.physical(self.ikx * w) + v * self.physical(self.iky * w)
        return self.f_hat - torch.fft.rfft2(adv) / self.n**2 * self.mask

    def step(self, w: torch.Tensor) -> torch.Tensor:
        """One ETDRK4 step.  # [B, N, N//2+1] -> same"""
        nw = self.rhs(w)
        a = self.E2 * w + self.Q * nw
        na = self.rhs(a)
        b = self.E2 * w + self.Q * na
        nb = self.rhs(b)
        c = self.E2 * a + self.Q * (2.0 * nb - nw)
        nc = self.rhs(c)
        return self.E * w + self.f1 * nw + 2.0 * self.f2 * (na + nb) + self.f3 * nc


@PDES.register("ns2d")
class NavierStokes2D(PDE):
    """2D vorticity Navier-Stokes on the unit torus, FNO convention (module docstring)."""

    name = "ns2d"
    param_names = ("nu",)
    params_class = NSParams

    def __init__(self, *, internal: int = 64, cfl: float = 1.0, ic_resolution: int = 256,
                 ic_convention: str = "fno_code", contour_points: int = 32, max_steps_per_frame: int = 100_000,
                 threads: int | None = 1):
        if ic_convention not in ("fno_code", "paper"):
            raise ConfigError(f"ic_convention={ic_convention!r}: choose 'fno_code' or 'paper'")
        if not 0 < cfl <= 2.5:
            raise ConfigError(f"cfl={cfl}: choose a value in (0, 2.5] (ETDRK4's advective stability limit)")
        check_threads(threads)
        self.internal, self.cfl, self.ic_resolution = internal, cfl, ic_resolution
        self.ic_convention, self.contour_points = ic_convention, contour_points
        self.max_steps_per_frame, self.threads = max_steps_per_frame, threads
        self.last_run: dict = {}

    @property
    def ic_sigma(self) -> float:
        """Scale of the square-root eigenvalues: ``7^{3/2}`` (FNO's code) or ``7^{3/4}`` (paper's formula)."""
        return GRF_TAU ** (1.5 if self.ic_convention == "fno_code" else 0.75)

    def sample_initial(self, n: int, *, generator: torch.Generator, grid: Grid2D) -> torch.Tensor:
        """FNO's random vorticity, sampled on ``ic_resolution`` nodes, at ``grid``'s nodes.  # -> [n, X, X]"""
        if grid.offset != 0.0 or self.ic_resolution % grid.resolution:
            raise ConfigError(f"ns2d samples on nodes: need grid offset 0 and ic_resolution={self.ic_resolution} "
                              f"a multiple of the resolution {grid.resolution}")
        stride = self.ic_resolution // grid.resolution
        chunks = [sample_grf(min(IC_CHUNK, n - i), generator=generator, size=self.ic_resolution,
                             sigma=self.ic_sigma)[:, ::stride, ::stride] for i in range(0, n, IC_CHUNK)]
        return torch.cat(chunks) if chunks else torch.empty(0, grid.resolution, grid.resolution, dtype=torch.float64)

    def solver_settings(self) -> dict:
        return {
            "equation": "w_t + u.grad w = nu lap w + f, u = (psi_y, -psi_x), -lap psi = w, unit torus; "
                        "f = forcing_amp (sin(2 pi (x + y)) + cos(2 pi (x + y)))",
            "initial_condition": f"GRF alpha=2.5 tau=7 ({self.ic_convention}: covariance "
                                 f"{'7^3' if self.ic_convention == 'fno_code' else '7^1.5'} (-lap + 49)^-2.5), "
                                 f"sampled on {self.ic_resolution}^2 nodes",
            "grid": "nodes (i / resolution, j / resolution); tensor [N, T, X, Y, 1]",
            "scheme": "Fourier-Galerkin, 2/3 dealiasing, ETDRK4 (viscous term exact), CFL-adaptive step",
            "internal": self.internal,
            "cfl": self.cfl,
            "threads": self.threads or 0,
        }

    def _steps(self, stepper: _VorticityETDRK4, w: torch.Tensor, params: NSParams) -> int:
        """Steps for the next frame interval so that ``h max(|u| + |v|) 2 pi K <= cfl``."""
        u, v = stepper.velocity(w)
        speed = float((u.abs() + v.abs()).amax()) if w.shape[0] else 0.0
        k_max = 2.0 * math.pi / params.length * ((stepper.n - 1) // 3)
        steps = max(1, math.ceil(params.dt * speed * k_max / self.cfl - 1e-9))
        if steps > self.max_steps_per_frame:
            raise ConfigError(f"ns2d needs {steps} steps per frame (> max_steps_per_frame="
                              f"{self.max_steps_per_frame}): the flow is too fast for this grid")
        return steps

    def solve(self, u0: torch.Tensor, *, params: NSParams) -> torch.Tensor:
        """Solve from ``w0 [B, X, X]`` at the output nodes.  # -> [B, T, X, X] float64"""
        w0 = self.check_input(u0, params)
        n, res = self.internal, params.resolution
        if n % res or params.grid_offset != 0.0:
            raise ConfigError(f"internal={n} must be a multiple of the resolution {res} (nodes, offset 0)")
        w = _upsample(w0, n)
        out = torch.empty(w0.shape[0], params.frames, res, res, dtype=torch.float64)
        out[:, 0] = w0
        steppers: dict[int, _VorticityETDRK4] = {}
        most = 0
        with torch_threads(self.threads):
            probe = _VorticityETDRK4(params=params, n=n, h=params.dt, points=self.contour_points)
            w = w * probe.mask
            for frame in range(1, params.frames):
                k = self._steps(probe, w, params)
                if k not in steppers:
                    steppers[k] = _VorticityETDRK4(params=params, n=n, h=params.dt / k, points=self.contour_points)
                for _ in range(k):
                    w = steppers[k].step(w)
                out[:, frame] = steppers[k].physical(w)[:, :: n // res, :: n // res]
                most = max(most, k)
        self.last_run = {"internal_resolution": n, "steps_per_frame": most}
        return out


def _upsample(w: torch.Tensor, n: int) -> torch.Tensor:
    """Coefficients, on an ``n x n`` grid, of node values ``w [B, X, X]``.  # -> [B, n, n // 2 + 1] complex128

    The modes ``|k_x|, |k_y| < X / 2`` are kept; the Nyquist row and column of an even grid are dropped
    (for FNO's initial fields they carry amplitudes ~3e-5 of a field of size ~0.2, and decay in ~0.03
    time units at nu = 1e-3).
    """
    x = w.shape[-1]
    keep = (x - 1) // 2  # largest |k| strictly below x / 2
    c = torch.fft.rfft2(w) / x**2
    out = torch.zeros(w.shape[0], n, n // 2 + 1, dtype=torch.complex128)
    out[:, : keep + 1, : keep + 1] = c[:, : keep + 1, : keep + 1]
    out[:, n - keep :, : keep + 1] = c[:, x - keep :, : keep + 1]
    return out
