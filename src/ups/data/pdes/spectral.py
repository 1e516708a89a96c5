"""Fourier tools for periodic 1D fields on [0, L): physical coefficients, exact resampling, ETDRK4.

Conventions. A periodic field is ``u(x) = sum_m c_m exp(2 pi i m x / L)``; we keep the half spectrum
``c_0 .. c_K`` (``c_{-m} = conj(c_m)``), with the origin at ``x = 0`` whatever grid the samples lie on.
A grid of ``n`` points with offset ``s`` holds ``u`` at ``x_j = (j + s) L / n``: ``s = 0.5`` are the
cell centres used for every output of this package.
"""

from __future__ import annotations

import math

import torch

from ups.errors import UPSError


def _phase(n_modes: int, shift: float, n: int, *, sign: float) -> torch.Tensor:
    """``exp(sign * 2 pi i m shift / n)`` for m = 0 .. n_modes - 1.  # [n_modes] complex128"""
    m = torch.arange(n_modes, dtype=torch.float64)
    return torch.polar(torch.ones_like(m), sign * 2.0 * math.pi * m * shift / n)


def coefficients(u: torch.Tensor, *, offset: float = 0.5) -> torch.Tensor:
    """Physical Fourier coefficients of grid values.

    u: ``[B, n]`` real samples at ``x_j = (j + offset)/n``. Returns ``[B, n // 2 + 1]`` complex128 with
    the Nyquist mode (``n`` even) halved, so that evaluating on a finer grid interpolates exactly
    (band-limited, symmetric in +-n/2) and returns the input values at the input points.
    """
    n = u.shape[-1]
    c = torch.fft.rfft(u.to(torch.float64), dim=-1) / n
    c = c * _phase(c.shape[-1], offset, n, sign=-1.0)
    if n % 2 == 0:
        c[..., -1] = c[..., -1] * 0.5
    return c


def evaluate(c: torch.Tensor, n: int, *, offset: float = 0.5) -> torch.Tensor:
    """Evaluate coefficients ``c [B, K]`` on ``n`` points ``x_j = (j + offset)/n``.  # -> [B, n] float64

    Modes the grid cannot hold (``m >= n / 2``) are dropped: the result is the L2 projection of the
    field on the modes ``|m| < n / 2``, sampled exactly (no interpolation error).
    """
    keep = min(c.shape[-1], (n + 1) // 2)  # modes 0 .. keep-1, all strictly below n/2
    spec = torch.zeros(*c.shape[:-1], n // 2 + 1, dtype=torch.complex128, device=c.device)
    spec[..., :keep] = c[..., :keep] * n * _phase(keep, offset, n, sign=1.0).to(c.device)
    return torch.fft.irfft(spec, n=n, dim=-1)


def resample(u: torch.Tensor, n: int, *, offset: float = 0.5) -> torch.Tensor:
    """Spectral resampling of periodic cell-centred values ``u [B, m]`` to ``n`` points.  # -> [B, n]"""
    return evaluate(coefficients(u, offset=offset), n, offset=offset)


def fft_size(minimum: int) -> int:
    """The smallest ``2^a 3^b >= minimum`` (fast FFT sizes)."""
    if minimum < 1:
        raise UPSError(f"FFT size must be positive, got {minimum}")
    best = 1 << max(0, math.ceil(math.log2(minimum)))
    p3 = 1
    while p3 < best:
        p2 = p3
        while p2 < minimum:
            p2 *= 2
        best = min(best, p2)
        p3 *= 3
    return best


def etdrk4_coefficients(hl: torch.Tensor, h: float, *, points: int = 64) -> dict[str, torch.Tensor]:
    """Kassam-Trefethen ETDRK4 coefficients for a diagonal linear operator.

    hl: ``h * L`` (complex, any shape ``[..., K]``); h: the time step. The phi-functions are evaluated by
    the mean over ``points`` points of a unit circle around each ``h L`` (contour integral), which is
    accurate where the closed forms cancel catastrophically (``|h L|`` small). Returns E, E2, Q, f1, f2,
    f3, each shaped like ``hl`` (complex128).
    """
    hl = hl.to(torch.complex128)
    theta = 2.0 * math.pi * (torch.arange(points, dtype=torch.float64) + 0.5) / points
    r = torch.polar(torch.ones_like(theta), theta).to(hl.device)
    lr = hl.unsqueeze(-1) + r  # [..., K, points]
    ex = torch.exp(lr)
    q = h * torch.mean((torch.exp(lr / 2) - 1) / lr, dim=-1)
    f1 = h * torch.mean((-4 - lr + ex * (4 - 3 * lr + lr**2)) / lr**3, dim=-1)
    f2 = h * torch.mean((2 + lr + ex * (-2 + lr)) / lr**3, dim=-1)
    f3 = h * torch.mean((-4 - 3 * lr - lr**2 + ex * (4 - lr)) / lr**3, dim=-1)
    return {"E": torch.exp(hl), "E2": torch.exp(hl / 2), "Q": q, "f1": f1, "f2": f2, "f3": f3}


class QuadraticETDRK4:
    """ETDRK4 for ``w_t = L w - (w^2 / 2)_x`` on the coefficients ``w [B, K]`` of one internal grid.

    Shared by Burgers and Kuramoto-Sivashinsky (same nonlinearity, different ``L``).

    ``N(w) = g * S(w)`` with ``S(w)`` the retained modes of FFT(w^2) on the N-point grid and
    ``g = -i k / 2`` (times the grid scale); ``N`` only ever enters multiplied by the coefficients Q, f1,
    f2, f3, so ``g`` is folded into them once.
    """

    def __init__(self, *, lin: torch.Tensor, h: float, n: int, length: float, points: int):
        self.n = n
        self.k_modes = lin.shape[-1]
        m = torch.arange(self.k_modes, dtype=torch.float64)
        # grid values are irfft(w) * n, FFT(w^2) / n gives coefficients: the net scale n goes into g
        g = -0.5j * (2.0 * math.pi / length) * m * n
        co = etdrk4_coefficients(lin * h, h, points=points)
        self.E, self.E2 = co["E"], co["E2"]
        self.Qg, self.f1g, self.f3g = co["Q"] * g, co["f1"] * g, co["f3"] * g
        self.f2g2 = 2.0 * co["f2"] * g

    def product(self, w: torch.Tensor) -> torch.Tensor:
        """Retained modes of FFT(w^2) (dealiased; times 1/n).  # [B, K] -> [B, K]"""
        phys = torch.fft.irfft(w, n=self.n, dim=-1)
        return torch.fft.rfft(phys.square_(), dim=-1)[..., : self.k_modes]

    def step(self, w: torch.Tensor) -> torch.Tensor:
        """One ETDRK4 step.  # [B, K] -> [B, K]"""
        sw = self.product(w)
        e2w = self.E2 * w
        a = torch.addcmul(e2w, self.Qg, sw)
        sa = self.product(a)
        b = torch.addcmul(e2w, self.Qg, sa)
        sb = self.product(b)
        c = torch.addcmul(self.E2 * a, self.Qg, sb.mul(2.0).sub_(sw))
        sc = self.product(c)
        out = torch.addcmul(self.E * w, self.f1g, sw)
        out.addcmul_(self.f2g2, sa.add_(sb))
        return out.addcmul_(self.f3g, sc)
